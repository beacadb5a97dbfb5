# NixOS VM test (needs KVM; `nix flake check`, or
# `nix build .#checks.x86_64-linux.vm-llama-server`): the user's whole loop on one machine.
# After the switch (boot) the llama-server unit is skipped, not failed; `model-pull` fetches a
# tiny GGUF from a Hub-compatible server inside the VM and starts the unit over D-Bus; the
# unit answers a completion; `systemctl stop` keeps it stopped, also across another pull;
# `model-pull status` reads it over D-Bus.
#
# runNixOSTest makes the node's nixpkgs read-only (node.pkgs): the node sets no nixpkgs.*
# option, and gets the helper from services.inference.package's default.
{ self }:
{ pkgs, ... }:
let
  # model_pull for the test's own programs: the Hub-compatible server and the model generator.
  python = pkgs.python3.withPackages (ps: [ (ps.callPackage ../../nix/model-pull.nix { }) ]);
in
{
  name = "inference-llama-server";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];
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
    import json

    unit = "llama-server-main.service"
    machine.wait_for_unit("multi-user.target")

    with subtest("after the switch the unit is skipped, not failed"):
        machine.succeed(f"test \"$(systemctl show -P ConditionResult {unit})\" = no")
        machine.succeed(f"test \"$(systemctl show -P ActiveState {unit})\" = inactive")

    with subtest("systemctl cat shows the hardening and the gate"):
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
        machine.succeed(
            "systemd-run --unit devhub python3 -m model_pull.devhub serve /srv/hub --port 8090"
        )
        machine.wait_for_open_port(8090)
        # Exit 0 includes the restart of the waiting unit over D-Bus (pydbus, Gio typelibs).
        machine.succeed("model-pull >&2")

    with subtest("the unit is active and answers a completion"):
        machine.wait_for_unit(unit)
        machine.wait_for_open_port(8080)
        request = json.dumps(
            {"prompt": "Hello", "max_tokens": 6, "ignore_eos": True, "temperature": 0}
        )
        answer = json.loads(
            machine.wait_until_succeeds(
                "curl -sf -H 'Content-Type: application/json' "
                f"-d '{request}' http://127.0.0.1:8080/v1/completions",
                timeout=120,
            )
        )
        assert answer["usage"]["completion_tokens"] == 6, answer
        assert answer["choices"][0]["text"], answer

    with subtest("systemctl stop leaves it stopped, also across a pull with nothing new"):
        machine.succeed(f"systemctl stop {unit}")
        machine.succeed("model-pull >&2")
        machine.succeed(f"test \"$(systemctl show -P ActiveState {unit})\" = inactive")

    with subtest("model-pull status reads the unit over D-Bus"):
        status = json.loads(machine.succeed("model-pull status --json"))
        assert status["busError"] is None, status
        (model,) = status["models"]
        assert model["name"] == "tiny" and model["present"], model
        (state,) = model["units"]
        assert (state["unit"], state["activeState"]) == (unit, "inactive"), state
  '';
}
