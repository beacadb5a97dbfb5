"""From pull to serving: the units the NixOS modules render, in a real systemd, driven by
`model-pull` with no arguments reading the manifest the modules write.

One container for the whole module (host `rtx5090-workstation` of tests/nix/golden.json, whose
llama-server instances are served on demand); the steps run in order and build on each other:
1. before any pull, the socket is skipped (ConditionPathExists) and the port refuses;
2. `model-pull` pulls the declared GGUFs and starts the socket: a request starts the runtime,
   which serves the pulled entry;
3. stopped by the admin (its socket), it stays stopped across a pull with nothing new;
4. a pull killed mid-download changes nothing; the next one installs and restarts the runtime
   that runs;
5. a corrupted download is refused and the runtime keeps serving the old entry.
(tests/systemd/test_on_demand.py has the rest of on-demand serving: idle stop, the queue.)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from container import unavailable_reason
from serving_world import World, package_dir, serving_world

from model_pull.devhub import DevHub
from model_pull.errors import ExitCode
from model_pull.tinymodels import DRAFT_GGUF_SHAPE, write_tiny_gguf
from real_runtimes import llama_server_binary

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

HOST = "rtx5090-workstation"
UNIT = "llama-server-main.service"
SOCKET = "llama-server-main.socket"
PORT = 11435  # the socket's port
MAIN, DRAFT = "qwopus-27b", "qwen3-1_7b-draft"
MAIN_REPO = "Jackrong/Qwopus3.6-27B-v1-preview-GGUF"
MAIN_FILE = "Qwopus3.6-27B-v1-preview-Q4_K_M.gguf"
DRAFT_REPO, DRAFT_FILE = "lmstudio-community/Qwen3-1.7B-GGUF", "Qwen3-1.7B-Q4_K_M.gguf"
CODER_REPO = "lmstudio-community/Qwen3-Coder-30B-A3B-Instruct-GGUF"
CODER_FILE = "Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf"
MAIN_GGUF = f"/var/lib/inference/models/{MAIN}/share/models/gguf/{MAIN_FILE}"  # its -m
DEADLINE = 60.0

# The rendered unit runs unchanged: every line is what NixOS writes.


def add_main(hub: DevHub, base: Path, seed: int) -> str:
    gguf = write_tiny_gguf(base / f"main-{seed}.gguf", seed=seed)
    return hub.add_repo(MAIN_REPO, {MAIN_FILE: gguf})


def setup_hub(base: Path) -> object:
    def setup(hub: DevHub) -> None:
        add_main(hub, base, seed=1)
        draft = write_tiny_gguf(base / "draft.gguf", seed=2, shape=DRAFT_GGUF_SHAPE)
        hub.add_repo(DRAFT_REPO, {DRAFT_FILE: draft})
        hub.add_repo(CODER_REPO, {CODER_FILE: write_tiny_gguf(base / "coder.gguf", seed=5)})

    return setup


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("pull-to-serving")
    llama_cpp = package_dir(base, "llama-cpp", {"bin/llama-server": llama_server_binary()})
    with serving_world(base, HOST, {"llama-cpp": llama_cpp}, hub_setup=setup_hub(base)) as w:
        yield w


def wait_for(pred, what: str, timeout: float = DEADLINE):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def serves(w: World) -> list[str]:
    """The model ids llama-server lists, after asserting it answers a completion."""
    status, body = w.ct.wait_http(f"http://127.0.0.1:{PORT}/v1/models")
    assert status == 200, body
    ids = [m["id"] for m in json.loads(body)["data"]]
    status, body = w.ct.post_json(
        f"http://127.0.0.1:{PORT}/v1/completions",
        json.dumps({"prompt": "Hello", "max_tokens": 6, "ignore_eos": True, "temperature": 0}),
    )
    assert status == 200, body
    answer = json.loads(body)
    assert answer["usage"]["completion_tokens"] == 6, answer
    assert answer["choices"][0]["text"], answer
    return ids


def served_entry(w: World, pid: str) -> str:
    """The store entry the unit's main process has open as its main model."""
    cmdline = w.ct.run(["cat", f"/proc/{pid}/cmdline"]).stdout.split("\0")
    model = cmdline[cmdline.index("-m") + 1]
    return w.ct.run(["readlink", "-e", model]).stdout.strip().split("/share/")[0]


def refused(w: World) -> bool:
    probe = w.ct.python(
        f"import socket\nsocket.create_connection(('127.0.0.1', {PORT}), timeout=5)\n", check=False
    )
    return "ConnectionRefusedError" in probe.stderr


def test_1_unit_is_skipped_before_any_pull(world: World) -> None:
    world.ct.run(["systemctl", "start", SOCKET])  # as at boot (WantedBy=sockets.target)
    state = world.unit(SOCKET)
    assert (state["ActiveState"], state["ConditionResult"]) == ("inactive", "no"), state
    assert "unmet condition check (ConditionPathExists=" in world.ct.journal(SOCKET)
    assert refused(world)
    world.ct.run(["systemctl", "start", UNIT])  # by hand: skipped the same way
    state = world.unit(UNIT)
    assert (state["ActiveState"], state["ConditionResult"]) == ("inactive", "no"), state


def test_2_model_pull_installs_and_the_unit_serves(world: World) -> None:
    proc = world.model_pull()
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout + proc.stderr
    assert f"{MAIN}: installed" in out and f"{DRAFT}: installed" in out, out
    assert world.unit(SOCKET)["ActiveState"] == "active", world.ct.journal(SOCKET)
    assert world.unit(UNIT)["ActiveState"] == "inactive"  # the first request starts it
    assert serves(world) == [MAIN_GGUF]
    state = world.unit(UNIT)
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), (
        f"{state}\n{world.ct.journal(UNIT)}"
    )
    assert (
        served_entry(world, state["MainPID"])
        == f"/var/lib/inference/store/{Path(world.link(MAIN)).name}"
    )


def test_3_stopped_stays_stopped_across_a_pull_with_nothing_new(world: World) -> None:
    world.ct.run(["systemctl", "stop", SOCKET])
    # the runtime goes with its socket (its proxy is part of the socket, and nothing else
    # needs the runtime)
    wait_for(lambda: world.unit(UNIT)["ActiveState"] == "inactive", "the runtime to stop")
    assert refused(world)
    proc = world.model_pull()
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout + proc.stderr
    assert f"{MAIN}: up to date" in out and f"{DRAFT}: up to date" in out, out
    assert world.unit(SOCKET)["ActiveState"] == "inactive"
    assert refused(world)


def test_4_killed_pull_changes_nothing_and_the_next_one_restarts(world: World) -> None:
    world.ct.run(["systemctl", "start", SOCKET])
    serves(world)
    before = world.unit(UNIT)
    assert before["ActiveState"] == "active", before
    link, store = world.link(MAIN), world.store()

    add_main(world.hub, world.base, seed=3)
    # ~0.6 MB at 20 kB/s: half a minute of download to be killed in
    world.hub.inject(MAIN_REPO, MAIN_FILE, throttle_bps=20_000)
    world.ct.start_service(
        "killed-pull.service",
        [sys.executable, "-m", "model_pull", "-v"],
        env=world.ct.python_env(world.pull_env),
    )
    cache = world.state / "cache"
    wait_for(lambda: any(cache.rglob("*.incomplete")), "the download to start")
    world.ct.run(["systemctl", "kill", "--signal=SIGKILL", "killed-pull.service"])
    wait_for(
        lambda: world.unit("killed-pull.service")["ActiveState"] in ("inactive", "failed"),
        "the killed pull to be gone",
    )
    assert "installed" not in world.ct.journal("killed-pull.service")

    after = world.unit(UNIT)
    assert (after["ActiveState"], after["MainPID"]) == ("active", before["MainPID"]), after
    assert (world.link(MAIN), world.store()) == (link, store)
    serves(world)

    world.hub.clear_faults(MAIN_REPO)
    proc = world.model_pull()
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert f"{MAIN}: installed" in proc.stdout + proc.stderr
    restarted = world.unit(UNIT)
    assert restarted["ActiveState"] == "active", restarted
    assert restarted["MainPID"] != before["MainPID"]
    assert world.link(MAIN) != link
    serves(world)
    assert (
        served_entry(world, restarted["MainPID"])
        == f"/var/lib/inference/store/{Path(world.link(MAIN)).name}"
    )


def test_5_corrupt_download_is_refused_and_the_unit_keeps_serving(world: World) -> None:
    before = world.unit(UNIT)
    assert before["ActiveState"] == "active", before
    link, store = world.link(MAIN), world.store()

    add_main(world.hub, world.base, seed=4)
    world.hub.inject(MAIN_REPO, MAIN_FILE, corrupt=True)
    proc = world.model_pull()
    assert proc.returncode == ExitCode.HASH_MISMATCH, proc.stderr + proc.stdout
    assert MAIN_FILE in proc.stderr, proc.stderr

    after = world.unit(UNIT)
    assert (after["ActiveState"], after["MainPID"]) == ("active", before["MainPID"]), after
    assert (world.link(MAIN), world.store()) == (link, store)
    assert serves(world) == [MAIN_GGUF]
