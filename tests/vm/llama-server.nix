# NixOS VM test (needs KVM; `nix flake check` or `nix build .#checks.x86_64-linux.vm-llama-server`):
# the llama-server unit is skipped before the pull, model-pull fetches a tiny GGUF from a
# Hub-compatible server inside the VM, restarts the unit, and the server answers /v1/models.
{ self }:
{ pkgs, lib, ... }:
let
  python = pkgs.python3.withPackages (ps: [
    ps.model-pull
    ps.numpy
  ]);
in
{
  name = "inference-llama-server";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];
      nixpkgs.overlays = [ self.overlays.default ];
      virtualisation.memorySize = 2048;
      environment.systemPackages = [
        python
        pkgs.curl
      ];

      services.inference = {
        endpoint = "http://127.0.0.1:8090";
        # The devhub commit is made inside the VM, so a branch is pinned here (and warns).
        models.tiny = {
          repo = "test/tiny-GGUF";
          revision = "main";
          layout = "gguf";
          include = [ "*.gguf" ];
        };
        llama-server.instances.main = {
          model = {
            name = "tiny";
            file = "tiny.gguf";
          };
          port = 8080;
          contextSize = 256;
          gpuLayers = 0;
          flashAttention = "off";
        };
      };
    };

  testScript = ''
    unit = "llama-server-main.service"
    machine.wait_for_unit("multi-user.target")

    with subtest("skipped, not failed, before the first pull"):
        machine.succeed(f"test \"$(systemctl show -P ConditionResult {unit})\" = no")
        machine.succeed(f"test \"$(systemctl show -P ActiveState {unit})\" = inactive")

    with subtest("systemctl cat shows the hardening"):
        text = machine.succeed(f"systemctl cat {unit}")
        for line in [
            "User=inference",
            "DevicePolicy=closed",
            "PrivateDevices=false",
            "DeviceAllow=char-nvidia rw",
            "DeviceAllow=char-nvidia-uvm rw",
            "MemoryDenyWriteExecute=true",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=",
            "Restart=on-failure",
            "ConditionPathExists=/var/lib/inference/models/tiny/share/models/gguf/tiny.gguf",
        ]:
            assert line in text.splitlines(), f"{line!r} not in:\n{text}"

    with subtest("model-pull fetches from a Hub-compatible server in the VM"):
        machine.succeed(
            "python3 -c 'from pathlib import Path; "
            "from model_pull.devhub import DevHub; "
            "from model_pull.tinymodels import write_tiny_gguf; "
            "g = write_tiny_gguf(Path(\"/tmp/tiny.gguf\")); "
            "print(DevHub(Path(\"/srv/hub\")).add_repo(\"test/tiny-GGUF\", {\"tiny.gguf\": g}))'"
        )
        machine.succeed("systemd-run --unit devhub python3 -m model_pull.devhub serve /srv/hub --port 8090")
        machine.wait_for_open_port(8090)
        machine.succeed("model-pull >&2")

    with subtest("the unit is active and serves the model"):
        machine.wait_for_unit(unit)
        machine.wait_for_open_port(8080)
        machine.wait_until_succeeds("curl -sf http://127.0.0.1:8080/v1/models | grep -q tiny", timeout=60)

    with subtest("systemctl stop leaves it stopped"):
        machine.succeed(f"systemctl stop {unit}")
        machine.sleep(15)
        machine.succeed(f"test \"$(systemctl show -P ActiveState {unit})\" = inactive")
  '';
}
