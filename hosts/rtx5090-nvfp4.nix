# A workstation with one RTX 5090 (Blackwell consumer, SM 12.0, 32 GB) serving NVIDIA's NVFP4
# checkpoint of Qwen3-32B (a Model Optimizer unified checkpoint: hf_quant_config.json says
# quant_algo NVFP4, kv_cache_quant_algo FP8) with TensorRT-LLM's trtllm-serve. Its PyTorch
# backend loads the checkpoint as it is: no conversion, no engine build
# (https://nvidia.github.io/TensorRT-LLM/features/quantization.html).
#
# Does it fit? `model-pull check nvidia/Qwen3-32B-NVFP4 --runtime trtllm --gpu "RTX 5090"`
# reads the repository's metadata (never its weights) and answers: NVFP4 runs natively on
# Blackwell (SM 10.x/12.x only: an L4 or an H100 is refused before any download); about
# 19.3 GiB of weights (4-bit linear layers with an FP8 scale per 16 values, embeddings and
# lm_head in BF16), ~1.5 GiB of runtime overhead, and a KV cache of 128 KiB per token in FP8
# (64 layers x 8 KV heads x 128 x 2), which gets 90 % of the ~11 GiB the weights leave
# (free_gpu_memory_fraction): the model's whole context, 40960 tokens, needs 25.75 GiB of the
# 30.73 GiB TensorRT-LLM can use, and two sequences fit at up to 40908 tokens each, so the
# in-flight batches share ~80000 tokens of KV cache. The figures are the check's estimate; the
# repository's exact sizes come from the Hub when it runs.
#
# nixpkgs has no TensorRT-LLM: this machine's configuration provides it (an overlay or another
# flake, e.g. a package of NVIDIA's wheel):
#
#   services.inference.trtllm.package = inputs.my-trtllm.packages.x86_64-linux.tensorrt-llm;
#
# Until then evaluation stops with one line naming the option. The flake's host check
# evaluates this file with a stand-in (tests/nix/standins.nix).
{ ... }:
{
  networking.hostName = "rtx5090-nvfp4";

  nixpkgs.config = {
    allowUnfree = true;
    cudaSupport = true;
    cudaCapabilities = [ "12.0" ];
  };

  services.inference = {
    autoPull = true;

    models.qwen3-32b-nvfp4 = {
      repo = "nvidia/Qwen3-32B-NVFP4";
      # No release tags: "main" warns at evaluation that the deployment is not reproducible.
      # Pin it with the commit `model-pull` reports after the first pull.
      revision = "main";
      layout = "hf";
    };

    trtllm.instances.qwen = {
      model = "qwen3-32b-nvfp4";
      port = 8000;
      servedModelName = "qwen3-32b";
      settings = {
        # trtllm-serve's own flags: the whole context, as `check` planned it; more requests
        # than two long ones share the KV cache when they are shorter.
        max_seq_len = 40960;
        max_batch_size = 8;
        # LLM API arguments, in the YAML file of --extra_llm_api_options: the FP8 KV cache
        # the checkpoint was calibrated for, and the share of free memory it may take.
        kv_cache_config = {
          dtype = "fp8";
          free_gpu_memory_fraction = 0.9;
        };
      };
    };
  };
}
