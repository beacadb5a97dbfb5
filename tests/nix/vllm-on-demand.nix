# NOT an example machine: a test host, evaluated like those in hosts/ and kept in the golden
# file under "vllm-on-demand", for tests/systemd/test_on_demand_vllm.py: one vLLM instance
# served on demand, so that the socket, proxy, GPU lock and readiness gate run with the real
# vLLM. The model is the tiny llama the test's loopback Hub serves under this repo name.
{ ... }:
{
  networking.hostName = "vllm-on-demand";

  services.inference = {
    models.tiny-llama = {
      repo = "model-pull-tests/tiny-llama";
      revision = "main";
      layout = "hf";
    };

    vllm.instances.tiny = {
      model = "tiny-llama";
      port = 8000;
      onDemand = {
        enable = true;
        idleTimeout = 15;
      };
      settings = {
        max-model-len = 4096;
        served-model-name = [ "tiny" ];
      };
    };
  };
}
