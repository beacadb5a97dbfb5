# ruff: noqa: E501  (Nix snippets and store paths are long literals)
"""`onDemand` of the runtime modules, evaluated with nixpkgs' lib (as tests/test_nixos_eval.py):
the socket, the proxy and the runtime each runtime module renders through lib.nix's
onDemandUnits, and the assertions and warnings around them. That these units behave is shown
in a real systemd by tests/systemd/test_on_demand.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from test_nixos_eval import (
    DUAL_MODEL,
    GGUF_MODEL,
    SGLANG_PACKAGE,
    TRITON_PACKAGE,
    checks,
    evaluate,
    evaluator,
    golden,  # noqa: F401  (the module-scoped fixture)
    nix_eval,
    run_nix_eval,
)
from test_nixos_eval import pytestmark as eval_marks

pytestmark = eval_marks

LLAMA = f"""{GGUF_MODEL}
  services.inference.llama-server.instances.a = {{
    model = {{ name = "g"; file = "m.gguf"; }};
    port = 9000;
    onDemand = {{ enable = true; idleTimeout = 30; }};
  }};"""


def on_demand_llama(tmp_path: Path, extra: str = "") -> dict[str, Any]:
    return evaluate(f"{{ {LLAMA} {extra} }}", tmp_path)


def test_a_runtime_on_demand_is_a_socket_a_proxy_and_a_runtime(tmp_path: Path) -> None:
    result = on_demand_llama(tmp_path)
    units = result["units"]
    assert sorted(units) == [
        "llama-server-a-proxy.service",
        "llama-server-a.service",
        "llama-server-a.socket",
    ]
    gate = ["/var/lib/inference/models/g/share/models/gguf/m.gguf"]

    socket = units["llama-server-a.socket"]
    assert socket["listenStreams"] == ["127.0.0.1:9000"]
    assert socket["socketConfig"] == {"Service": "llama-server-a-proxy.service"}
    assert socket["wantedBy"] == ["sockets.target"]
    assert socket["unitConfig"]["ConditionPathExists"] == gate  # no model: not listening

    proxy = units["llama-server-a-proxy.service"]
    # never Requires= (a failed start would end in the socket's trigger-limit-hit)
    assert (proxy["wants"], proxy["after"], proxy["requires"]) == (
        ["llama-server-a.service"],
        ["llama-server-a.service"],
        [],
    )
    assert proxy["partOf"] == ["llama-server-a.socket"]
    assert proxy["unitConfig"] == {
        "JoinsNamespaceOf": "llama-server-a.service",
        "StopPropagatedFrom": "llama-server-a.service",
        "StartLimitIntervalSec": 0,
    }
    psc = proxy["serviceConfig"]
    proxyd = f"{result_packages(tmp_path)['systemd']}/lib/systemd/systemd-socket-proxyd"
    assert psc["ExecStart"].endswith(
        f'"proxy" "http://127.0.0.1:9000/health" "30s" "{proxyd}" "127.0.0.1:9000"'
    )
    assert (psc["PrivateNetwork"], psc["PrivateDevices"], psc["Restart"]) == (True, True, "no")
    # switch-to-configuration finds its socket by Sockets= (it is not llama-server-a-proxy.socket)
    assert psc["Sockets"] == "llama-server-a.socket"
    assert "DeviceAllow" not in psc and "ReadOnlyPaths" not in psc
    assert psc["User"] == "inference" and psc["CapabilityBoundingSet"] == [""]

    runtime = units["llama-server-a.service"]
    assert runtime["wantedBy"] == []  # started by a request, not at boot
    uc = runtime["unitConfig"]
    assert uc["StopWhenUnneeded"] is True
    assert uc["ConditionPathExists"] == gate
    assert (uc["StartLimitBurst"], uc["StartLimitIntervalSec"]) == (5, 150)  # 5 x idleTimeout
    sc = runtime["serviceConfig"]
    assert (sc["Type"], sc["Restart"], sc["PrivateNetwork"]) == ("exec", "no", True)
    assert "ExecStopPost" not in sc  # StopPropagatedFrom= takes the proxy along
    assert sc["ReadWritePaths"] == ["/run/inference/gpu-locks"]
    assert sc["ExecStart"].startswith(
        f'"{result_packages(tmp_path)["util-linux"]}/bin/flock" "--no-fork" "--exclusive" "/run/inference/gpu-locks/all" "'
    )
    # inside its own network namespace, on the same port
    assert '"--host" "127.0.0.1" "--port" "9000"' in sc["ExecStart"]
    assert sc["ExecStartPost"].endswith('"ready" "http://127.0.0.1:9000/health"')
    # the rest of the hardening is the always-on unit's
    assert sc["DeviceAllow"] and sc["MemoryDenyWriteExecute"] is True

    assert result["manifest"]["units"]["llama-server-a.service"]["onDemand"] == {
        "idleTimeout": 30,
        "sockets": ["llama-server-a.socket"],
    }
    assert "d /run/inference/gpu-locks 0770 root inference -" in result["tmpfiles"]
    assert result["assertions"] == [] and result["warnings"] == []


def result_packages(tmp_path: Path) -> dict[str, str]:
    """The stub store paths of the packages (systemd, util-linux, ...)."""
    packages: dict[str, str] = nix_eval(f"{evaluator()}.packages", tmp_path)
    return packages


def test_always_on_is_unchanged(tmp_path: Path) -> None:
    result = evaluate(
        f'{{ {GGUF_MODEL} services.inference.llama-server.instances.a = {{ model = {{ name = "g"; file = "m.gguf"; }}; host = "0.0.0.0"; }}; }}',
        tmp_path,
    )
    assert sorted(result["units"]) == ["llama-server-a.service"]
    unit = result["units"]["llama-server-a.service"]
    assert unit["wantedBy"] == ["multi-user.target"]
    assert "flock" not in unit["serviceConfig"]["ExecStart"]
    assert '"--host" "0.0.0.0"' in unit["serviceConfig"]["ExecStart"]
    assert "onDemand" not in result["manifest"]["units"]["llama-server-a.service"]
    assert result["tmpfiles"] == ["d /var/lib/inference 0755 root root -"]


@pytest.mark.parametrize(
    ("gpus", "locks"),
    [
        ("null", '"--exclusive" "/run/inference/gpu-locks/all"'),
        (
            '[ "1" "0" "1" ]',
            '"--shared" "/run/inference/gpu-locks/all" "{flock}" "--no-fork" "--exclusive" "/run/inference/gpu-locks/gpu-0" "{flock}" "--no-fork" "--exclusive" "/run/inference/gpu-locks/gpu-1"',
        ),
    ],
)
def test_gpu_locks_follow_gpus_in_one_order(gpus: str, locks: str, tmp_path: Path) -> None:
    result = on_demand_llama(
        tmp_path, f"services.inference.llama-server.instances.a.gpus = {gpus};"
    )
    flock = f"{result_packages(tmp_path)['util-linux']}/bin/flock"
    exec_start = result["units"]["llama-server-a.service"]["serviceConfig"]["ExecStart"]
    assert exec_start.startswith(f'"{flock}" "--no-fork" ' + locks.format(flock=flock) + ' "')


def test_the_public_address_is_the_socket(tmp_path: Path) -> None:
    result = on_demand_llama(tmp_path, 'services.inference.llama-server.instances.a.host = "::1";')
    units = result["units"]
    assert units["llama-server-a.socket"]["listenStreams"] == ["[::1]:9000"]
    assert '"--host" "127.0.0.1"' in units["llama-server-a.service"]["serviceConfig"]["ExecStart"]


def test_the_start_limit_stays_ten_minutes_for_long_idle_timeouts(tmp_path: Path) -> None:
    result = evaluate(
        "{ " + LLAMA.replace("idleTimeout = 30;", "idleTimeout = 900;") + " }", tmp_path
    )
    assert result["units"]["llama-server-a.service"]["unitConfig"]["StartLimitIntervalSec"] == 600


def test_vllm_and_sglang_on_demand_bind_loopback_and_gate_on_their_health(tmp_path: Path) -> None:
    result = evaluate(
        f"""{{ pkgs, ... }}: {{ {DUAL_MODEL} {SGLANG_PACKAGE}
        services.inference.vllm.instances.v = {{ model = "d"; host = "0.0.0.0"; onDemand.enable = true; }};
        services.inference.sglang.instances.s = {{ model = "d"; port = 30001; onDemand.enable = true; }}; }}""",
        tmp_path,
    )
    units = result["units"]
    assert units["vllm-v.socket"]["listenStreams"] == ["0.0.0.0:8000"]
    vllm = units["vllm-v.service"]["serviceConfig"]
    assert '"--host" "127.0.0.1" "--port" "8000"' in vllm["ExecStart"]
    assert vllm["ExecStartPost"].endswith('"ready" "http://127.0.0.1:8000/health"')
    sglang = units["sglang-s.service"]["serviceConfig"]
    # 503 until SGLang's warmup has generated; then it generates a token itself
    assert sglang["ExecStartPost"].endswith('"ready" "http://127.0.0.1:30001/health_generate"')
    assert units["sglang-s.service"]["unitConfig"]["StartLimitIntervalSec"] == 600  # default 300 s
    for unit in ("vllm-v.service", "sglang-s.service"):
        assert result["manifest"]["units"][unit]["onDemand"]["idleTimeout"] == 300
    assert result["assertions"] == []


def test_triton_on_demand_has_a_socket_for_http_and_one_for_grpc(tmp_path: Path) -> None:
    result = evaluate(
        f"""{{ pkgs, ... }}: {{ {DUAL_MODEL}
        services.inference.triton = {{ enable = true; {TRITON_PACKAGE} models.d = {{ }};
          httpPort = 8100; grpcPort = 8101; onDemand.enable = true; }}; }}""",
        tmp_path,
    )
    units = result["units"]
    assert units["triton.socket"]["listenStreams"] == ["127.0.0.1:8100"]
    assert units["triton-grpc.socket"]["listenStreams"] == ["127.0.0.1:8101"]
    assert units["triton-grpc.socket"]["socketConfig"] == {"Service": "triton-grpc-proxy.service"}
    assert units["triton-grpc-proxy.service"]["serviceConfig"]["ExecStart"].endswith(
        '"127.0.0.1:8101"'
    )
    # both proxies join Triton's namespace and check its HTTP readiness
    for proxy in ("triton-proxy.service", "triton-grpc-proxy.service"):
        assert units[proxy]["unitConfig"]["JoinsNamespaceOf"] == "triton.service"
        assert (
            '"http://127.0.0.1:8100/v2/health/ready"' in units[proxy]["serviceConfig"]["ExecStart"]
        )
    sc = units["triton.service"]["serviceConfig"]
    assert '"--http-address=127.0.0.1"' in sc["ExecStart"]
    assert '"--grpc-address=127.0.0.1"' in sc["ExecStart"]
    assert result["manifest"]["units"]["triton.service"]["onDemand"]["sockets"] == [
        "triton.socket",
        "triton-grpc.socket",
    ]


def test_exclusive_gpu_and_on_demand_do_not_mix(tmp_path: Path) -> None:
    result = checks(f"{{ {LLAMA} services.inference.exclusiveGpu = true; }}", tmp_path)
    assert result["assertions"] == [
        "services.inference.exclusiveGpu cannot be combined with on-demand runtimes "
        "(llama-server-a.service): on-demand runtimes on one GPU already wait for each other; "
        "set exclusiveGpu = false."
    ]


def test_metrics_on_demand_warns_that_a_scrape_keeps_the_model_loaded(tmp_path: Path) -> None:
    result = checks(
        f"{{ {LLAMA} services.inference.llama-server.instances.a.metrics = true; }}", tmp_path
    )
    assert result["warnings"] == [
        "services.inference.llama-server.instances.a: metrics with onDemand: a scrape of /metrics "
        "is a request, which starts the model and keeps it loaded."
    ]


def test_an_idle_timeout_of_zero_is_refused(tmp_path: Path) -> None:
    module = LLAMA.replace("idleTimeout = 30;", "idleTimeout = 0;")
    result = run_nix_eval(f"{evaluator()}.evalConfig ({{ {module} }})", tmp_path)
    assert result.returncode != 0
    assert "services.inference.llama-server.instances.a.onDemand.idleTimeout" in result.stderr
    assert "positive integer" in result.stderr


def test_the_example_host_shares_its_gpu_on_demand(golden: dict[str, Any]) -> None:  # noqa: F811
    host = golden["hosts"]["rtx5090-workstation"]
    units = host["manifest"]["units"]
    assert units["llama-server-main.service"]["onDemand"]["idleTimeout"] == 900
    assert units["llama-server-coder.service"]["onDemand"]["idleTimeout"] == 300
    # the same GPU (gpus = null): the same lock
    for unit in ("llama-server-main.service", "llama-server-coder.service"):
        assert (
            '"--exclusive" "/run/inference/gpu-locks/all"'
            in host["units"][unit]["serviceConfig"]["ExecStart"]
        )
    assert host["assertions"] == []
    assert not [w for w in host["warnings"] if "metrics" in w]
