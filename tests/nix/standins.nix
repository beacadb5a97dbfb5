# STAND-INS for the runtime packages nixpkgs does not have (SGLang, Triton Inference Server,
# TensorRT-LLM), so that a host that uses them (hosts/h100-server.nix, hosts/rtx5090-nvfp4.nix,
# hosts/b200-triton.nix) evaluates in the flake's host checks and in tests/nix/eval.nix. A
# machine sets its own packages; these lose to any definition.
# Each is a program that says what it is and fails: a system built with one does not serve.
{ lib, pkgs, ... }:
let
  standIn =
    program: option:
    pkgs.writeShellScriptBin program ''
      echo "${program}: a stand-in from model-pull's tests/nix/standins.nix, not a runtime; set ${option}" >&2
      exit 1
    '';
in
{
  services.inference.sglang.package = lib.mkDefault (
    standIn "python" "services.inference.sglang.package"
  );
  services.inference.triton.package = lib.mkDefault (
    standIn "tritonserver" "services.inference.triton.package"
  );
  services.inference.trtllm.package = lib.mkDefault (
    standIn "trtllm-serve" "services.inference.trtllm.package"
  );
}
