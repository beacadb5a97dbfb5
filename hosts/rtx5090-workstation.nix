# A workstation with one RTX 5090 (Blackwell consumer, SM 12.0, 32 GB): a Qwen-based 27B GGUF
# on llama-server with a small draft model. Everything this project needs for
# the machine is in this file; the flake adds the hardware boilerplate.
{ ... }:
{
  networking.hostName = "rtx5090-workstation";

  # CUDA packages (llama-cpp included, through cudaSupport) are built for SM 12.0 only.
  nixpkgs.config = {
    allowUnfree = true;
    cudaSupport = true;
    cudaCapabilities = [ "12.0" ];
  };

  services.inference = {
    models = {
      # These repositories publish no release tags; "main" warns at evaluation time that the
      # deployment is not reproducible. Pin them with the commit `model-pull` reports after the
      # first pull (the `revision` in /var/lib/inference/state/pulls.jsonl).
      qwopus-27b = {
        repo = "Jackrong/Qwopus3.6-27B-v1-preview-GGUF";
        revision = "main";
        layout = "gguf";
        include = [ "Qwopus3.6-27B-v1-preview-Q4_K_M.gguf" ];
      };
      qwen3-1_7b-draft = {
        repo = "lmstudio-community/Qwen3-1.7B-GGUF";
        revision = "main";
        layout = "gguf";
        include = [ "Qwen3-1.7B-Q4_K_M.gguf" ];
      };
    };

    llama-server.instances.main = {
      model = {
        name = "qwopus-27b";
        file = "Qwopus3.6-27B-v1-preview-Q4_K_M.gguf";
      };
      draft = {
        name = "qwen3-1_7b-draft";
        file = "Qwen3-1.7B-Q4_K_M.gguf";
      };
      # Native 262K context, q4_0 KV cache (needs flash attention), one slot so the
      # KV cache is not multiplied by 4, metrics on, loopback only.
      contextSize = 262144;
      kvQuant = "q4_0";
      gpuLayers = 99;
      flashAttention = "on";
      parallel = 1;
      metrics = true;
      host = "127.0.0.1";
      port = 11435;
      settings = {
        # current llama.cpp names (--draft-max/--draft-min were removed upstream)
        spec-draft-n-max = 16;
        spec-draft-n-min = 4;
        draft-p-min = 0.75;
      };
    };
  };
}
