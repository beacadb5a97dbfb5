# The model-pull helper, built from pyproject.toml. A Python package (so tests and the VM can
# import model_pull); the NixOS modules and flake.nix use the application (toPythonApplication).
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
  glib,
}:
let
  # pydbus imports Gio through PyGObject, which loads the GLib, GObject and Gio typelibs from
  # GI_TYPELIB_PATH. Since GLib 2.80 they are in glib's lib/girepository-1.0, and nothing puts
  # them on the path of a Python program: without it `from gi.repository import Gio` fails
  # ("introspection typelib not found", https://github.com/NixOS/nixpkgs/issues/420899 and
  # https://github.com/NixOS/nixpkgs/issues/341038), so every restart over D-Bus would.
  giTypelibPath = lib.makeSearchPathOutput "out" "lib/girepository-1.0" [ glib ];
in
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

  # The same as wrapGAppsNoGuiHook would collect for these typelibs, without GTK's settings.
  makeWrapperArgs = [
    "--prefix"
    "GI_TYPELIB_PATH"
    ":"
    giTypelibPath
  ];

  pythonImportsCheck = [ "model_pull" ];
  # The test suite needs systemd containers, a llama-server build and the network namespace
  # of the CI machines; the flake's VM tests cover the packaged helper.
  doCheck = false;

  # flake.nix checks the wrapper with nix/model-pull-gio.nix.
  passthru = { inherit giTypelibPath; };

  meta = {
    description = "Fetch, verify and package Hugging Face weights for NixOS inference units";
    license = lib.licenses.mit;
    mainProgram = "model-pull";
    platforms = lib.platforms.linux;
  };
}
