# A small inference box with one L4 (Ada, SM 8.9, 24 GB): an FP8 (W8A8) checkpoint on vLLM.
# SM 8.9 is the oldest architecture with native FP8 tensor cores.
{ ... }:
{
  networking.hostName = "l4-box";

  nixpkgs.config = {
    allowUnfree = true;
    cudaSupport = true;
    cudaCapabilities = [ "8.9" ];
  };

  services.inference = {
    models.qwen3-8b-fp8 = {
      repo = "Qwen/Qwen3-8B-FP8";
      # Pin to a commit for a reproducible deployment (evaluation warns about a branch).
      revision = "main";
      layout = "hf";
      exclude = [ "*.pth" ];
    };

    vllm.instances.qwen3-8b = {
      model = "qwen3-8b-fp8";
      host = "0.0.0.0";
      port = 8000;
      openFirewall = true;
      gpus = [ "0" ];
      settings = {
        gpu-memory-utilization = 0.9;
        max-model-len = 16384;
        kv-cache-dtype = "fp8";
        served-model-name = [ "qwen3-8b" ];
      };
    };
  };
}
