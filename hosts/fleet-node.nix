# A node of the fleet (with fleet-puller.nix): it takes its pinned models from the puller's
# binary cache, verified by Nix against the declared narHash, and asks the Hub only when the
# cache does not have them (or is unreachable, or serves something else).
{ ... }:
{
  networking.hostName = "fleet-node";

  nixpkgs.config = {
    allowUnfree = true;
    cudaSupport = true;
    cudaCapabilities = [ "8.9" ];
  };

  services.inference = {
    autoPull = true;
    caches.urls = [ "http://fleet-puller:5000" ];

    # As on fleet-puller, under the same name.
    models.qwen3-8b = {
      repo = "Qwen/Qwen3-8B-GGUF";
      revision = "main";
      layout = "gguf";
      include = [ "Qwen3-8B-Q4_K_M.gguf" ];
      narHash = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    };

    llama-server.instances.main = {
      model = {
        name = "qwen3-8b";
        file = "Qwen3-8B-Q4_K_M.gguf";
      };
      contextSize = 32768;
      port = 11435;
    };
  };
}
