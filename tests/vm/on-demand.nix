# NixOS VM test (needs KVM; `nix flake check`, or
# `nix build .#checks.x86_64-linux.vm-on-demand`): two llama-server instances served on demand,
# taking turns on one GPU (gpus = null: the same lock). Before the pull the ports refuse; after
# `model-pull` the sockets listen and nothing runs; a request starts its runtime, which stops
# after idleTimeout; a request for the other model waits for the first to go idle; the sockets
# never fail; `model-pull status` says on demand, idle or running, since when.
#
# runNixOSTest makes the node's nixpkgs read-only (node.pkgs): the node sets no nixpkgs.*
# option, and gets the helper from services.inference.package's default.
{ self }:
{ pkgs, ... }:
let
  # model_pull for the test's own programs: the Hub-compatible server and the model generator.
  python = pkgs.python3.withPackages (ps: [ (ps.callPackage ../../nix/model-pull.nix { }) ]);
  instance = name: port: {
    model = {
      inherit name;
      file = "${name}.gguf";
    };
    inherit port;
    contextSize = 256;
    gpuLayers = 0;
    flashAttention = "off";
    onDemand = {
      enable = true;
      idleTimeout = 5;
    };
  };
in
{
  name = "inference-on-demand";

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
        # The devhub commits are made inside the VM, so branches are pinned here (and warn).
        models = {
          one = {
            repo = "test/one-GGUF";
            revision = "main";
            layout = "gguf";
            include = [ "*.gguf" ];
          };
          two = {
            repo = "test/two-GGUF";
            revision = "main";
            layout = "gguf";
            include = [ "*.gguf" ];
          };
        };
        llama-server.instances = {
          one = instance "one" 8081;
          two = instance "two" 8082;
        };
      };
    };

  testScript = ''
    import json

    def complete(port, tokens=6):
        request = json.dumps(
            {"prompt": "Hello", "max_tokens": tokens, "ignore_eos": True, "temperature": 0}
        )
        return (
            "curl -sf --max-time 120 -H 'Content-Type: application/json' "
            f"-d '{request}' http://127.0.0.1:{port}/v1/completions"
        )

    def active(unit):
        return machine.succeed(f"systemctl show -P ActiveState {unit}").strip()

    machine.wait_for_unit("multi-user.target")

    with subtest("before the pull the sockets are skipped and the ports refuse"):
        for name in ("one", "two"):
            socket = f"llama-server-{name}.socket"
            machine.succeed(f"test \"$(systemctl show -P ConditionResult {socket})\" = no")
        machine.fail("curl -s http://127.0.0.1:8081/health")

    with subtest("model-pull fetches both and starts the sockets, not the runtimes"):
        machine.succeed(
            "python3 -c 'from pathlib import Path; "
            "from model_pull.devhub import DevHub; "
            "from model_pull.tinymodels import write_tiny_gguf; "
            "hub = DevHub(Path(\"/srv/hub\")); "
            "[hub.add_repo(f\"test/{n}-GGUF\", {f\"{n}.gguf\": "
            "write_tiny_gguf(Path(f\"/tmp/{n}.gguf\"), seed=s)}) for n, s in ((\"one\", 1), (\"two\", 2))]'"
        )
        machine.succeed(
            "systemd-run --unit devhub python3 -m model_pull.devhub serve /srv/hub --port 8090"
        )
        machine.wait_for_open_port(8090)
        machine.succeed("model-pull >&2")
        for name in ("one", "two"):
            assert active(f"llama-server-{name}.socket") == "active"
            assert active(f"llama-server-{name}.service") == "inactive"

    with subtest("a request starts the runtime; idle, it stops"):
        answer = json.loads(machine.succeed(complete(8081)))
        assert answer["usage"]["completion_tokens"] == 6, answer
        assert active("llama-server-one.service") == "active"
        status = json.loads(machine.succeed("model-pull status --json"))
        units = {u["unit"]: u for m in status["models"] for u in m["units"]}
        record = units["llama-server-one.service"]
        assert (record["onDemand"], record["idleTimeout"], record["serving"]) == (True, 5, "running")
        machine.wait_until_succeeds(
            "test \"$(systemctl show -P ActiveState llama-server-one.service)\" = inactive"
        )

    with subtest("the other model waits for the first to go idle: a queue"):
        # an open connection keeps `one` busy until it is closed
        machine.succeed(
            "systemd-run --unit hold python3 -c 'import socket, time; "
            "s = socket.create_connection((\"127.0.0.1\", 8081)); time.sleep(600)'"
        )
        machine.wait_until_succeeds(
            "test \"$(systemctl show -P ActiveState llama-server-one.service)\" = active"
        )
        machine.succeed(f"{complete(8082)} > /tmp/two.json 2>/dev/null &")
        machine.wait_until_succeeds(
            "test \"$(systemctl show -P ActiveState llama-server-two.service)\" = activating"
        )
        machine.sleep(10)  # longer than idleTimeout: `one` is busy, `two` keeps waiting
        assert active("llama-server-one.service") == "active"
        assert active("llama-server-two.service") == "activating"
        machine.succeed("systemctl stop hold")
        machine.wait_until_succeeds("test -s /tmp/two.json")
        assert json.loads(machine.succeed("cat /tmp/two.json"))["usage"]["completion_tokens"] == 6
        assert active("llama-server-one.service") == "inactive"
        for name in ("one", "two"):
            assert active(f"llama-server-{name}.socket") == "active"
  '';
}
