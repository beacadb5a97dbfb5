# A fleet's puller (with fleet-node.nix): the one machine that pulls from the Hub. Its entries
# also go into /nix/store (nixStore, GC-rooted under /var/lib/inference/gcroots), and harmonia
# serves /nix/store as a Nix binary cache, with each entry's content address: the nodes
# substitute the pinned models from it, verified by Nix, and need no signing key.
# Without harmonia: `model-pull push qwen3-8b --to file:///srv/models-cache` after each pull,
# and any static HTTP server over that directory.
{ ... }:
{
  networking.hostName = "fleet-puller";

  nixpkgs.config = {
    allowUnfree = true;
    cudaSupport = true;
    cudaCapabilities = [ "8.9" ];
  };

  services.inference = {
    autoPull = true;
    nixStore = true;

    # The same declaration, under the same name, on every machine of the fleet: the cache path
    # is /nix/store/<hash>-qwen3-8b, computed from the name and the narHash.
    models.qwen3-8b = {
      repo = "Qwen/Qwen3-8B-GGUF";
      # Pin both with what `model-pull prefetch Qwen/Qwen3-8B-GGUF --layout gguf --include
      # Qwen3-8B-Q4_K_M.gguf` prints; until then the pull fails with the right narHash (exit 22).
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

  services.harmonia = {
    enable = true;
    settings.bind = "[::]:5000";
  };
  networking.firewall.allowedTCPPorts = [ 5000 ];
}
