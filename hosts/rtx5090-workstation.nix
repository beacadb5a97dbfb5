# A workstation with one RTX 5090 (Blackwell consumer, SM 12.0, 32 GB): a Qwen-based 27B GGUF
# on llama-server with a small draft model, and a coding model; the two do not fit the GPU
# together, so both are served on demand and take turns. Everything this project needs for
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
      qwen3-coder-30b = {
        repo = "lmstudio-community/Qwen3-Coder-30B-A3B-Instruct-GGUF";
        revision = "main";
        layout = "gguf";
        include = [ "Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf" ];
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
      # KV cache is not multiplied by 4, loopback only.
      contextSize = 262144;
      kvQuant = "q4_0";
      gpuLayers = 99;
      flashAttention = "on";
      parallel = 1;
      host = "127.0.0.1";
      port = 11435;
      # Loaded by the first request, unloaded after 15 idle minutes; it takes turns on the
      # GPU with the coding model below (no metrics: a scrape would keep it loaded).
      onDemand = {
        enable = true;
        idleTimeout = 900;
      };
      settings = {
        # current llama.cpp names (--draft-max/--draft-min were removed upstream)
        spec-draft-n-max = 16;
        spec-draft-n-min = 4;
        draft-p-min = 0.75;
      };
    };

    # The second model: its own port; a request for it while the main model is loaded waits
    # until the main one has been idle for 15 minutes (and the other way round: a queue, not
    # pre-emption). Clients of either must allow for that wait plus a load.
    llama-server.instances.coder = {
      model = {
        name = "qwen3-coder-30b";
        file = "Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf";
      };
      contextSize = 65536;
      kvQuant = "q8_0";
      gpuLayers = 99;
      flashAttention = "on";
      host = "127.0.0.1";
      port = 11436;
      onDemand = {
        enable = true;
        idleTimeout = 300;
      };
    };
  };
}
