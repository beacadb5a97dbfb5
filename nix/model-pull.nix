# The model-pull helper, built from pyproject.toml. A Python package (so tests and the VM can
# import model_pull); flake.nix exposes the application with toPythonApplication.
{
  lib,
  buildPythonPackage,
  setuptools,
  huggingface-hub,
  hf-xet,
  click,
  tqdm,
  gguf,
  nvidia-ml-py,
  pydbus,
  pygobject3,
}:
buildPythonPackage {
  pname = "model-pull";
  version = (lib.importTOML ../pyproject.toml).project.version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../helper
      (lib.fileset.maybeMissing ../README.md)
    ];
  };

  build-system = [ setuptools ];
  dependencies = [
    huggingface-hub
    hf-xet
    click
    tqdm
    gguf
    nvidia-ml-py
    pydbus
    pygobject3
  ];
  # The pins in pyproject.toml are minimums for pip; nixpkgs decides the versions here.
  pythonRelaxDeps = true;

  pythonImportsCheck = [ "model_pull" ];
  # The test suite needs systemd containers, a llama-server build and the network namespace
  # of the CI machines; the flake's VM tests cover the packaged helper.
  doCheck = false;

  meta = {
    description = "Fetch, verify and package Hugging Face weights for NixOS inference units";
    license = lib.licenses.mit;
    mainProgram = "model-pull";
    platforms = lib.platforms.linux;
  };
}
