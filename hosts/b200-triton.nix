# A server with one B200 (Blackwell, SM 10.0, 180 GB): Triton Inference Server serving NVIDIA's
# NVFP4 checkpoint of Qwen3-32B through TensorRT-LLM's backend, the alternative to the vLLM
# backend that Triton offers per model (services.inference.triton.models.<name>.backend).
# TensorRT-LLM's LLM API model loads the ModelOpt unified checkpoint from the entry's snapshot
# (PyTorch backend): no engine build
# (https://github.com/NVIDIA/TensorRT-LLM/tree/main/triton_backend).
#
# `model-pull check nvidia/Qwen3-32B-NVFP4 --runtime trtllm --gpu B200 --context 40960
# --parallel 16` plans ~19.3 GiB of weights and 80 GiB of FP8 KV cache for sixteen full-length
# sequences, 100.75 GiB of the 163 GiB TensorRT-LLM can use: it fits, with room to spare.
#
# nixpkgs has neither Triton Inference Server nor TensorRT-LLM: this machine's configuration
# provides Triton with TensorRT-LLM in its Python backend (NVIDIA's tritonserver *-trtllm-python
# build), and the LLM API model of that same TensorRT-LLM release:
#
#   services.inference.triton.package = inputs.my-triton.packages.x86_64-linux.tritonserver-trtllm;
#
# The flake's host check evaluates this file with a stand-in (tests/nix/standins.nix).
{ ... }:
{
  networking.hostName = "b200-triton";

  nixpkgs.config = {
    allowUnfree = true;
    cudaSupport = true;
    cudaCapabilities = [ "10.0" ];
  };

  services.inference = {
    autoPull = true;

    models.qwen3-32b-nvfp4 = {
      repo = "nvidia/Qwen3-32B-NVFP4";
      # No release tags: "main" warns at evaluation that the deployment is not reproducible.
      revision = "main";
      layout = "hf";
      tritonName = "qwen3_32b";
    };

    triton = {
      enable = true;
      # triton_backend/all_models/llmapi/tensorrt_llm of the TensorRT-LLM Triton runs (in
      # NVIDIA's container: /app/all_models/llmapi/tensorrt_llm).
      llmapiModel = "/opt/tensorrt-llm/triton_backend/all_models/llmapi/tensorrt_llm";
      models.qwen3-32b-nvfp4 = {
        backend = "tensorrtllm";
        overrides = {
          max_seq_len = 40960;
          max_batch_size = 16;
          kv_cache_config = {
            dtype = "fp8";
            free_gpu_memory_fraction = 0.9;
          };
          # streaming responses need Triton's decoupled transaction policy
          triton_config.decoupled = true;
        };
      };
    };
  };
}
