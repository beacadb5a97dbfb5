"""On-demand serving: the units NixOS renders for hosts/rtx5090-workstation.nix (two llama-server
instances on one GPU, both `onDemand`), in a real systemd, with a real llama-server, driven by
`model-pull` and by clients on the sockets.

One container for the whole module; the steps run in order and build on each other:
1. before any pull the sockets do not listen: a client is refused;
2. `model-pull` starts the sockets (not the runtimes); a cold request is answered;
3. after idleTimeout without a connection the runtime stops: its process and memory are gone,
   its GPU lock is free, the socket still listens;
4. concurrent cold requests are all answered by one start;
5. a stream the runtime is still sending after idleTimeout keeps it up, and arrives whole;
6. a runtime killed in use takes its proxy along, and the next request starts a new one;
7. a model llama-server cannot load fails fast (the gate notices), every next request tries
   again until the start limit, and the socket never fails;
8. the pull of a good model resets that and serves;
9. requests for both models, overlapping from both sides, are all answered, with never two
   runtimes loaded at once, and no socket fails.

The one change to the rendered units: idleTimeout is 4 s here instead of the host's 900 s and
300 s, so that the steps do not wait minutes: the proxies' --exit-idle-time, and the runtimes'
StartLimitIntervalSec, which the modules derive from it (5 x idleTimeout, 600 s at most).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from container import PROJECT, unavailable_reason
from serving_world import World, package_dir, serving_world

from model_pull.devhub import DevHub
from model_pull.tinymodels import DRAFT_GGUF_SHAPE, GGUF_SHAPE, write_tiny_gguf
from real_runtimes import llama_server_binary

sys.path.insert(0, str(PROJECT / "tests" / "nix"))
from render_units import render

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

HOST = "rtx5090-workstation"
IDLE = 4  # seconds, instead of the host's 900 and 300
MAIN, CODER = "llama-server-main", "llama-server-coder"
PORTS = {MAIN: 11435, CODER: 11436}
MAIN_REPO = "Jackrong/Qwopus3.6-27B-v1-preview-GGUF"
MAIN_FILE = "Qwopus3.6-27B-v1-preview-Q4_K_M.gguf"
DRAFT_REPO, DRAFT_FILE = "lmstudio-community/Qwen3-1.7B-GGUF", "Qwen3-1.7B-Q4_K_M.gguf"
CODER_REPO = "lmstudio-community/Qwen3-Coder-30B-A3B-Instruct-GGUF"
CODER_FILE = "Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf"
LOCK = "/run/inference/gpu-locks/all"  # gpus = null on both: the lock of every GPU
CLIENTS = PROJECT / "tests" / "systemd" / "http_clients.py"
DEADLINE = 60.0
COMPLETION = {"prompt": "Hello", "max_tokens": 6, "ignore_eos": True, "temperature": 0}


def broken_gguf(base: Path) -> Path:
    """A GGUF whose header and tensor list are whole (model-pull reads them to check the fit)
    but whose tensor data is cut off: llama-server refuses to load it."""
    good = write_tiny_gguf(base / "coder-good.gguf", seed=7)
    data = good.read_bytes()
    broken = base / "coder-broken.gguf"
    broken.write_bytes(data[: len(data) // 3])
    return broken


# A context long enough for the long answers of steps 5 and 9.
MAIN_SHAPE = replace(GGUF_SHAPE, context=8192)
# Step 5's answer: 3000 tokens with the 100 likeliest tokens of each, ~14 MB of events. That is
# more than all the buffers between the runtime and a client that reads nothing can hold: the
# send buffers of the runtime's and of the proxy's socket (each at most tcp_wmem's maximum, 4 MB
# by default, https://docs.kernel.org/networking/ip-sysctl.html), the proxy's pipe (256 KiB,
# https://github.com/systemd/systemd/blob/main/src/socket-proxy/socket-proxyd.c) and the receive
# buffers of the proxy and the client (tcp_rmem's default, 128 KiB: a socket nobody reads from
# does not grow). The runtime therefore cannot be done sending it before the client reads.
LONG_ANSWER = {"max_tokens": 3000, "n_probs": 100}


def setup_hub(base: Path) -> Any:
    def setup(hub: DevHub) -> None:
        main = write_tiny_gguf(base / "main.gguf", seed=1, shape=MAIN_SHAPE)
        hub.add_repo(MAIN_REPO, {MAIN_FILE: main})
        draft = write_tiny_gguf(base / "draft.gguf", seed=2, shape=DRAFT_GGUF_SHAPE)
        hub.add_repo(DRAFT_REPO, {DRAFT_FILE: draft})
        hub.add_repo(CODER_REPO, {CODER_FILE: broken_gguf(base)})

    return setup


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("on-demand")
    llama_cpp = package_dir(base, "llama-cpp", {"bin/llama-server": llama_server_binary()})
    limit = {"StartLimitIntervalSec=600\n": f"StartLimitIntervalSec={5 * IDLE}\n"}
    overrides = {
        f"{MAIN}-proxy.service": {'"900s"': f'"{IDLE}s"'},
        f"{CODER}-proxy.service": {'"300s"': f'"{IDLE}s"'},
        f"{MAIN}.service": limit,
        f"{CODER}.service": limit,
    }
    for unit, subs in overrides.items():  # each substitution finds its text
        assert all(old in render(HOST, unit) for old in subs), (unit, subs)
    with serving_world(
        base, HOST, {"llama-cpp": llama_cpp}, hub_setup=setup_hub(base), overrides=overrides
    ) as w:
        yield w


# ------------------------------------------------------------------------------- helpers


def requests(w: World, specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the requests concurrently inside the container (tests/systemd/http_clients.py)."""
    proc = w.ct.run([sys.executable, str(CLIENTS)], input=json.dumps(list(specs)), timeout=600)
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    return results


def complete(unit: str, **extra: Any) -> dict[str, Any]:
    return {"port": PORTS[unit], "body": COMPLETION, **extra}


def answered(result: dict[str, Any]) -> bool:
    """A completion with its 6 tokens."""
    if result["status"] != 200:
        return False
    return bool(json.loads(result["body"])["usage"]["completion_tokens"] == 6)


def wait_for(pred, what: str, timeout: float = DEADLINE):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def state(w: World, unit: str) -> str:
    return w.unit(unit)["ActiveState"]


def wait_idle(w: World, unit: str) -> None:
    """Until the runtime and its proxy have stopped (idleTimeout after the last connection)."""
    wait_for(
        lambda: (
            state(w, f"{unit}.service") in ("inactive", "failed")
            and state(w, f"{unit}-proxy.service") == "inactive"
        ),
        f"{unit} to go idle",
    )


def starts(w: World, unit: str) -> int:
    """How many times systemd has started the runtime (its journal's "Starting" lines)."""
    return sum(
        line.startswith(f"Starting {unit}.service")
        for line in w.ct.journal(f"{unit}.service", lines=2000).splitlines()
    )


def sockets_healthy(w: World) -> None:
    for unit in (MAIN, CODER):
        props = w.unit(f"{unit}.socket")
        assert (props["ActiveState"], props["Result"]) == ("active", "success"), (unit, props)


def stopped_at(w: World, unit: str) -> float:
    """When the runtime last stopped, in seconds of CLOCK_MONOTONIC."""
    usec = w.ct.unit_property(f"{unit}.service", "InactiveEnterTimestampMonotonic")
    return int(usec) / 1e6


def journals(w: World) -> str:
    """Both runtimes' and proxies' journals, for failure messages."""
    units = [f"--unit={u}{kind}" for u in (MAIN, CODER) for kind in (".service", "-proxy.service")]
    return w.ct.run(
        [
            "journalctl",
            "--no-pager",
            "-o",
            "short-monotonic",
            *units,
            "--grep",
            "systemd|inference-on-demand|error|failed",
        ],
        check=False,
    ).stdout


def status_of(w: World, unit: str) -> dict[str, Any]:
    """The unit's record in `model-pull status --json`, run inside the container."""
    proc = w.model_pull("status", "--json")
    assert proc.returncode == 0, proc.stderr
    units = [u for m in json.loads(proc.stdout)["models"] for u in m["units"]]
    record: dict[str, Any] = next(u for u in units if u["unit"] == f"{unit}.service")
    return record


def container_now(w: World) -> datetime:
    return datetime.fromtimestamp(float(w.ct.run(["date", "+%s.%N"]).stdout), UTC)


def connections(w: World, pid: str, port: int) -> int:
    """How many TCP connections to `port` are open in the network namespace of process `pid`
    (its /proc/PID/net/tcp: state 01 is ESTABLISHED); 0 when the process is gone."""
    proc = w.ct.run(["cat", f"/proc/{pid}/net/tcp"], check=False)
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    return sum(r[1].endswith(f":{port:04X}") and r[3] == "01" for r in rows)


def rss_kib(w: World, pid: str) -> int:
    return int(w.ct.run(["ps", "-o", "rss=", "-p", pid]).stdout.strip())


# --------------------------------------------------------------------------------- steps


def test_1_before_any_pull_the_port_refuses(world: World) -> None:
    for unit in (MAIN, CODER):
        world.ct.run(["systemctl", "start", f"{unit}.socket"])  # as at boot (sockets.target)
        props = world.unit(f"{unit}.socket")
        assert (props["ActiveState"], props["ConditionResult"]) == ("inactive", "no"), props
    results = requests(world, [complete(MAIN), complete(CODER)])
    for r in results:
        assert r["error"] and r["error"].startswith("ConnectionRefusedError"), r
    status = status_of(world, MAIN)
    assert (status["onDemand"], status["idleTimeout"], status["serving"]) == (True, 900, "waiting")
    assert status["sockets"] == [
        {"unit": f"{MAIN}.socket", "activeState": "inactive", "subState": "dead"}
    ]


def test_2_the_pull_starts_the_sockets_and_a_cold_request_is_answered(world: World) -> None:
    proc = world.model_pull()
    assert proc.returncode == 0, proc.stderr + proc.stdout
    sockets_healthy(world)
    # the pull starts the sockets, not the runtimes
    assert state(world, f"{MAIN}.service") == "inactive"
    assert state(world, f"{CODER}.service") == "inactive"

    (cold,) = requests(world, [complete(MAIN)])
    assert answered(cold), (cold, journals(world))
    runtime = world.unit(f"{MAIN}.service")
    assert (runtime["ActiveState"], runtime["SubState"]) == ("active", "running"), runtime
    # the runtime listens on loopback in its own network namespace, not on the host's
    cmdline = world.ct.run(["cat", f"/proc/{runtime['MainPID']}/cmdline"]).stdout.split("\0")
    assert cmdline[cmdline.index("--host") + 1] == "127.0.0.1"
    host_ns = world.ct.run(["readlink", "/proc/1/ns/net"]).stdout
    assert world.ct.run(["readlink", f"/proc/{runtime['MainPID']}/ns/net"]).stdout != host_ns

    status = status_of(world, MAIN)
    assert (status["serving"], status["mainPID"]) == ("running", int(runtime["MainPID"]))
    since = datetime.fromisoformat(status["since"])
    assert timedelta(0) <= container_now(world) - since < timedelta(minutes=1), status
    assert status["sockets"][0]["activeState"] == "active"
    assert status_of(world, CODER)["serving"] == "idle"  # listening, not started


def test_3_idle_stop_frees_the_process_and_its_memory(world: World) -> None:
    runtime = world.unit(f"{MAIN}.service")
    pid = runtime["MainPID"]
    assert runtime["ActiveState"] == "active", runtime
    since_running = datetime.fromisoformat(status_of(world, MAIN)["since"])
    rss = rss_kib(world, pid)
    assert rss > 0
    # while it runs it holds the GPU lock
    held = world.ct.run(["flock", "--nonblock", LOCK, "true"], check=False)
    assert held.returncode != 0, "the running runtime does not hold the GPU lock"

    wait_idle(world, MAIN)
    assert world.unit(f"{MAIN}.service")["Result"] == "success"
    gone = world.ct.run(["ps", "-o", "rss=", "-p", pid], check=False)
    assert gone.returncode != 0 and not gone.stdout.strip(), (
        f"pid {pid} ({rss} KiB resident before) is still there"
    )
    assert world.ct.run(["flock", "--nonblock", LOCK, "true"], check=False).returncode == 0
    sockets_healthy(world)
    status = status_of(world, MAIN)
    assert (status["serving"], status["pids"]) == ("idle", []), status
    assert datetime.fromisoformat(status["since"]) > since_running
    # (listed under each of its models: the main one and the draft)
    line = next(x for x in world.model_pull("status").stdout.splitlines() if f"{MAIN}.service" in x)
    assert line.startswith(f"  {MAIN}.service  inactive (dead)  "), line
    assert "  on demand, idle timeout 900 s: idle since " in line, line
    print(f"idle stop freed pid {pid}: {rss} KiB resident before, no process after")


def test_4_concurrent_cold_requests_are_answered_by_one_start(world: World) -> None:
    assert state(world, f"{MAIN}.service") == "inactive"
    before = starts(world, MAIN)
    results = requests(world, [complete(MAIN) for _ in range(8)])
    assert all(answered(r) for r in results), results
    assert starts(world, MAIN) == before + 1


def test_5_a_stream_still_being_sent_keeps_the_runtime_up(world: World) -> None:
    wait_idle(world, MAIN)
    before = starts(world, MAIN)
    # The client sends its request and reads nothing of the answer until told to (`hold`): the
    # buffers fill, and the runtime is still sending the stream when the idle timeout has passed
    # twice. (A client that reads slowly proves nothing here: the kernel takes megabytes of an
    # answer off the runtime's hands, which is then done long before the client is, stops
    # idleTimeout later, and the client still reads the rest, whole.)
    go = "/run/on-demand-test-read"
    world.ct.run(["rm", "-f", go])
    body = {
        "prompt": "Hello",
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        **LONG_ANSWER,
    }
    spec = {"port": PORTS[MAIN], "body": body, "hold": go}
    done: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: done.extend(requests(world, [spec])))
    reader.start()
    try:
        pid = wait_for(
            lambda: (
                (u := world.unit(f"{MAIN}.service"))["ActiveState"] == "active" and u["MainPID"]
            ),
            "the runtime to start",
        )
        time.sleep(2 * IDLE)
        midway = world.unit(f"{MAIN}.service")
        sending = connections(world, pid, PORTS[MAIN])
    finally:
        world.ct.run(["touch", go])
        reader.join()
    (stream,) = done
    assert stream["status"] == 200, stream
    whole = stream["body"].rstrip().endswith("data: [DONE]")
    assert whole, (len(stream["body"]), stream["error"], stream["body"][-300:], journals(world))
    assert (midway["ActiveState"], midway["MainPID"]) == ("active", pid), (midway, journals(world))
    assert sending, (
        f"test setup: after {2 * IDLE}s the runtime had no connection left; its answer "
        f"({len(stream['body'])} bytes) fit in the buffers: make it longer"
    )
    # one start for the whole stream
    assert starts(world, MAIN) == before + 1
    print(
        f"the runtime was still sending {len(stream['body'])} bytes after {2 * IDLE}s "
        f"with a {IDLE}s idle timeout"
    )


def test_6_a_crash_in_use_is_cleared_for_the_next_request(world: World) -> None:
    (r,) = requests(world, [complete(MAIN)])
    assert answered(r), r
    crashed = world.unit(f"{MAIN}.service")["MainPID"]
    proxy = f"{MAIN}-proxy.service"
    stops = world.ct.journal(proxy, lines=2000).count(f"Stopped {proxy}")
    world.ct.run(["kill", "-KILL", crashed])
    wait_for(lambda: state(world, proxy) == "inactive", "the proxy of the crashed runtime to stop")
    assert world.unit(f"{MAIN}.service")["Result"] == "signal"
    # stopped with it (StopPropagatedFrom=), not left to forward to nothing until it idles out
    assert world.ct.journal(proxy, lines=2000).count(f"Stopped {proxy}") == stops + 1
    (r,) = requests(world, [complete(MAIN)])
    assert answered(r), (r, journals(world))
    assert world.unit(f"{MAIN}.service")["MainPID"] not in ("0", crashed)
    sockets_healthy(world)


def test_7_a_broken_model_fails_fast_and_every_next_request_tries_again(world: World) -> None:
    # CODER's entry is the cut-off GGUF; StartLimitBurst=5 within 5 x IDLE
    for attempt in range(1, 6):
        wait_for(
            lambda: state(world, f"{CODER}-proxy.service") == "inactive",
            "the proxy of the failed start to exit",
        )
        (r,) = requests(world, [complete(CODER)])
        assert r["status"] is None and r["error"], r  # a reset (or an empty reply), no answer
        assert starts(world, CODER) == attempt
    journal = world.ct.journal(f"{CODER}.service", lines=2000)
    # the gate saw the runtime exit, rather than waiting for TimeoutStartSec
    assert journal.count("exited before http://127.0.0.1:11436/health answered") == 5, journal

    # the start limit: the runtime is not started again, the requests still get an answer
    wait_for(lambda: state(world, f"{CODER}-proxy.service") == "inactive", "the proxy to exit")
    results = requests(world, [complete(CODER, at=i * 0.05) for i in range(30)])
    assert all(r["status"] is None for r in results), results
    assert starts(world, CODER) == 5
    assert "Start request repeated too quickly" in world.ct.journal(f"{CODER}.service")
    sockets_healthy(world)


def test_8_the_pull_of_a_good_model_serves_it(world: World) -> None:
    world.hub.add_repo(CODER_REPO, {CODER_FILE: write_tiny_gguf(world.base / "coder.gguf", seed=3)})
    proc = world.model_pull()
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "qwen3-coder-30b: installed" in proc.stdout + proc.stderr
    (r,) = requests(world, [complete(CODER)])
    assert answered(r), (r, journals(world))
    sockets_healthy(world)


def test_9_two_models_on_one_gpu_take_turns(world: World) -> None:
    wait_idle(world, CODER)
    wait_idle(world, MAIN)
    # how many llama-server processes run at once (a runtime waiting for the lock is `flock`;
    # one that has exited but is not reaped yet does not count)
    watch = world.base / "loaded.log"
    world.ct.start_service(
        "gpu-watch.service",
        [
            "/bin/sh",
            "-c",
            f"while :; do ps -C llama-server -o stat= | grep -vc Z >> {watch}; sleep 0.02; done",
        ],
    )
    slow = {
        "prompt": "Hello",
        "max_tokens": 4000,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    specs = [
        {"port": PORTS[MAIN], "body": slow, "pause": 0.02, "read": 4096},  # busy for a while
        complete(CODER, at=0.5),
        complete(MAIN, at=1.0),
        complete(CODER, at=1.5),
        complete(MAIN, at=2.0),
        complete(CODER, at=2.5),
    ]
    results = requests(world, specs)
    stream, coders, mains = results[0], results[1::2], results[2::2]
    assert stream["status"] == 200 and stream["body"].rstrip().endswith("data: [DONE]"), stream
    assert all(answered(r) for r in mains + coders), (results, journals(world))
    # queued, not pre-empted: MAIN's stream is whole, and CODER answered only once MAIN had
    # stopped (both clocks are the container's CLOCK_MONOTONIC)
    assert min(r["end"] for r in coders) > stopped_at(world, MAIN) > stream["start"]
    assert state(world, f"{CODER}.service") == "active"

    # and the other way round: CODER now holds the GPU, MAIN waits for it to go idle (and
    # `model-pull status` says so meanwhile)
    done: list[dict[str, Any]] = []
    specs = [complete(MAIN), complete(CODER, at=0.3), complete(CODER, at=0.6)]
    batch = threading.Thread(target=lambda: done.extend(requests(world, specs)))
    batch.start()
    try:
        queued = wait_for(
            lambda: (s := status_of(world, MAIN))["serving"] == "starting" and s,
            "MAIN to wait for the GPU",
        )
        assert status_of(world, CODER)["serving"] == "running"
    finally:
        batch.join()
    assert queued["pids"], queued  # its process is there, waiting for the lock
    results = done
    world.ct.run(["systemctl", "stop", "gpu-watch.service"])
    assert all(answered(r) for r in results), (results, journals(world))
    assert results[0]["end"] > stopped_at(world, CODER) > max(r["end"] for r in results[1:])

    counts = [int(line) for line in watch.read_text().split()]
    assert counts and max(counts) == 1, f"llama-server processes at once: max {max(counts)}"
    sockets_healthy(world)
