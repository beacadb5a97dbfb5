# All of services.inference: the declared models and model-pull, plus every runtime.
{
  imports = [
    ./common.nix
    ./llama-server.nix
    ./vllm.nix
    ./sglang.nix
    ./triton.nix
    ./trtllm.nix
  ];
}
