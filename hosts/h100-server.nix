# A server with one H100 (Hopper, SM 9.0, 80 GB): standalone vLLM, Triton (vLLM backend) and
# SGLang serve the same `dual` entry of Qwen3.5-2B, one copy of the weights on disk.
#
# nixpkgs has vLLM, but no Triton Inference Server and no SGLang (python3Packages.sglang is
# https://github.com/NixOS/nixpkgs/pull/525141, not merged): this machine's own configuration
# provides those two, e.g. from an overlay or another flake:
#
#   services.inference.triton.package = inputs.my-triton.packages.x86_64-linux.tritonserver;
#   services.inference.sglang.package = pkgs.python3.withPackages (ps: [ ps.sglang ]);
#
# Until then evaluation stops with one line naming the option to set. The flake's host check
# evaluates this file with stand-ins for the two (tests/nix/standins.nix).
{ ... }:
{
  networking.hostName = "h100-server";

  nixpkgs.config = {
    allowUnfree = true;
    cudaSupport = true;
    cudaCapabilities = [ "9.0" ];
  };

  services.inference = {
    # Pull at boot, in the background; the units start when their entry is installed.
    autoPull = true;

    models.qwen3_5-2b = {
      repo = "Qwen/Qwen3.5-2B";
      # A pinned commit of the repository.
      revision = "15852e8c16360a2fea060d615a32b45270f8a8fc";
      layout = "dual";
      tritonName = "qwen3_5_2b";
      exclude = [ "*.pth" ];
      # model-defaults.json of the entry; Triton's 1/model.json starts from it.
      engineDefaults = {
        gpu_memory_utilization = 0.85;
        max_model_len = 4096;
        dtype = "auto";
      };
    };

    # The three servers share the GPU: each takes 30 % of its memory.
    vllm.instances.qwen = {
      model = "qwen3_5-2b";
      port = 8000;
      settings = {
        gpu-memory-utilization = 0.3;
        max-model-len = 4096;
        served-model-name = [ "qwen3.5-2b" ];
      };
    };

    triton = {
      enable = true;
      models.qwen3_5-2b.overrides = {
        gpu_memory_utilization = 0.3;
      };
      httpPort = 8010;
      grpcPort = 8011;
      metricsPort = 8012;
    };

    # SGLang reads the HF cache tree of the same entry (HF_HUB_CACHE, offline).
    sglang.instances.qwen = {
      model = "qwen3_5-2b";
      port = 30000;
      settings = {
        # Weights plus KV cache pool: 30 % of the GPU, like the others.
        mem-fraction-static = 0.3;
        context-length = 4096;
        served-model-name = "qwen3.5-2b";
        enable-metrics = true;
      };
    };
  };
}
