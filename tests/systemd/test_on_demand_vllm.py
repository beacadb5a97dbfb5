"""vLLM served on demand, with the real vLLM (its CPU build), in a real systemd: the units NixOS
renders for the test host tests/nix/vllm-on-demand.nix (vllm-tiny on port 8000, idleTimeout
15 s), as rendered, plus the CPU drop-in on the runtime (serving_world.cpu_dropin).

The steps build on each other (one container, one vLLM start):
1. before the pull the socket does not listen: a client is refused;
2. `model-pull` starts the socket, not vLLM; the first request waits while vLLM loads (the
   readiness gate on /health) and is answered, by a vLLM on loopback in a network namespace of
   its own;
3. idleTimeout after the last connection vLLM stops: every process of the unit is gone with
   its memory, and the socket still listens.
tests/systemd/test_on_demand.py covers the rest with llama-server (swaps, failures, streams).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from container import PROJECT, unavailable_reason
from serving_world import (
    World,
    cpu_dropin,
    cpu_tools,
    path_packages,
    runtime_binds,
    serving_world,
    vllm_package,
)

from model_pull.devhub import DevHub
from model_pull.tinymodels import tiny_llama_files

pytestmark = [pytest.mark.systemd, pytest.mark.slow]
logger = logging.getLogger(__name__)

HOST = "vllm-on-demand"
UNIT, PROXY, SOCKET = "vllm-tiny.service", "vllm-tiny-proxy.service", "vllm-tiny.socket"
MODEL, REPO, SERVED, PORT, IDLE = "tiny-llama", "model-pull-tests/tiny-llama", "tiny", 8000, 15
CLIENTS = PROJECT / "tests" / "systemd" / "http_clients.py"
COMPLETION = {
    "model": SERVED,
    "prompt": "Hello",
    "max_tokens": 6,
    "ignore_eos": True,
    "temperature": 0,
}
GiB = 1 << 30
# what step 2 saw of the running vLLM, for step 3: {pid: RSS bytes}
SERVING: dict[int, int] = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("vllm-on-demand")
    DevHub(base / "hub").add_repo(REPO, tiny_llama_files(seed=8))
    pkgs: dict[str, Path] = {"vllm": vllm_package(base), **path_packages(base)}
    with serving_world(
        base,
        HOST,
        pkgs,
        dropins={UNIT: cpu_dropin(HOST, UNIT)},
        binds=[*runtime_binds(), *cpu_tools(base)],
    ) as w:
        yield w


def request(w: World, timeout: float = 60) -> dict[str, Any]:
    """One completion on the public port (tests/systemd/http_clients.py in the container)."""
    spec = {"port": PORT, "body": COMPLETION, "timeout": timeout}
    proc = w.ct.run([sys.executable, str(CLIENTS)], input=json.dumps([spec]), timeout=timeout + 60)
    (result,) = json.loads(proc.stdout)
    return dict(result)


def test_1_before_the_pull_the_port_refuses(world: World) -> None:
    world.ct.run(["systemctl", "start", SOCKET])  # as at boot (sockets.target)
    props = world.unit(SOCKET)
    assert (props["ActiveState"], props["ConditionResult"]) == ("inactive", "no"), props
    result = request(world)
    assert (result["error"] or "").startswith("ConnectionRefusedError"), result


def test_2_the_first_request_waits_for_vllm_and_is_answered(world: World) -> None:
    proc = world.model_pull()
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert world.unit(SOCKET)["ActiveState"] == "active"
    assert world.unit(UNIT)["ActiveState"] == "inactive"  # the socket, not vLLM

    t0 = time.monotonic()
    cold = request(world, timeout=900)  # vLLM's CPU start: about a minute
    logger.info("cold request answered in %.1f s", time.monotonic() - t0)
    assert cold["status"] == 200, (cold, world.ct.journal(UNIT, lines=80))
    answer = json.loads(cold["body"])
    assert answer["model"] == SERVED and answer["usage"]["completion_tokens"] == 6, answer
    runtime = world.unit(UNIT)
    assert (runtime["ActiveState"], runtime["NRestarts"]) == ("active", "0"), runtime
    SERVING.update(world.unit_processes(UNIT))  # within idleTimeout of the answer
    # vLLM listens on loopback in its own network namespace, which only its proxy joins
    pid = runtime["MainPID"]
    assert (
        world.ct.run(["readlink", f"/proc/{pid}/ns/net"]).stdout
        != world.ct.run(["readlink", "/proc/1/ns/net"]).stdout
    )

    status = json.loads(world.model_pull("status", "--json").stdout)
    (unit,) = [u for m in status["models"] for u in m["units"] if u["unit"] == UNIT]
    assert (unit["onDemand"], unit["idleTimeout"], unit["serving"]) == (True, IDLE, "running")


def test_3_idle_stop_ends_every_process_and_frees_the_memory(world: World) -> None:
    rss = sum(SERVING.values())
    logger.info("%s: %d processes, %.2f GiB RSS while serving", UNIT, len(SERVING), rss / GiB)
    assert len(SERVING) >= 2 and rss > GiB / 2, SERVING  # vLLM's front end and engine core
    deadline = time.monotonic() + IDLE + 120
    while (world.unit(UNIT)["ActiveState"], world.unit(PROXY)["ActiveState"]) != (
        "inactive",
        "inactive",
    ):
        assert time.monotonic() < deadline, (world.unit(UNIT), world.unit(PROXY))
        time.sleep(0.5)
    state = world.unit(UNIT)
    assert (state["MainPID"], state["Result"]) == ("0", "success"), state
    assert world.unit_processes(UNIT) == {}
    assert world.alive(list(SERVING)) == []
    props = world.unit(SOCKET)
    assert (props["ActiveState"], props["Result"]) == ("active", "success"), props
