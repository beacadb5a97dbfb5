"""On-demand serving, timed in one real-systemd container (host rtx5090-workstation of
tests/nix/golden.json: llama-server-main and llama-server-coder on one GPU, both on demand; a
real llama-server; the rendered units, with idleTimeout IDLE seconds instead of 900 and 300).

(a) cold start: from a completion request on the public port, with nothing running, to its
    answer (socket, proxy, GPU lock, sandbox, load, readiness gate), against the runtime's own
    start: the same unit as an always-on one (the rendered service without the gate, on the
    host's network), started by `systemctl start` and polled until it answers the same
    request. The difference is what the on-demand path adds (goal: under 50 ms); where it
    goes is shown from systemd's timestamps: request to the runtime's fork, the runtime's
    readiness to the proxy's fork, the proxy's fork to the answer.
(b) warm: GET /health on a new connection each time, through the socket and the proxy, against
    the same request sent to the runtime directly, from inside its network namespace. The
    difference of the medians is the proxy's cost per request (goal: under 1 ms).
(c) idle stop: from the moment the last client closed its connection to the moment systemd
    recorded the runtime stopped, less IDLE (goal: within 0.5 s).
(d) swap: the coding model requested while the main model is loaded and idle: from the main
    runtime's stop (the GPU lock released) to the coding model's answer, against the coding
    model's cold start with the GPU free; and the whole wait of that request (IDLE + swap).

    PYTHONPATH=helper LLAMA_SERVER=... python bench/on_demand.py [--runs 9]

Prints one JSON object. Needs root, systemd-nspawn (see tests/systemd/container.py). The
container's clock is the host's CLOCK_MONOTONIC, which systemd's *TimestampMonotonic use too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT / "tests" / "systemd"), str(PROJECT / "tests"), str(PROJECT / "helper")]

from serving_world import World, package_dir, serving_world  # noqa: E402
from test_on_demand import CODER, HOST, MAIN, PORTS, setup_hub  # noqa: E402

from real_runtimes import llama_server_binary  # noqa: E402

IDLE = 2
COMPLETION = {"prompt": "Hello", "max_tokens": 4, "ignore_eos": True, "temperature": 0}
DIRECT_PORT = 18555

# Inside the container: one completion on PORT, connecting until something answers (a runtime
# started by hand refuses connections until it listens); prints CLOCK_MONOTONIC at the start
# and at the answer.
TIMED_COMPLETION = """
import http.client, json, sys, time
port, body, poll = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "poll"
t0 = time.monotonic()
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse(); data = r.read(); c.close()
        if r.status == 200:
            break
        if not poll:
            sys.exit(f"status {r.status}: {data[:200]}")
    except OSError as e:
        if not poll:
            sys.exit(f"no answer: {e}")
    time.sleep(0.002)
print(t0, time.monotonic())
"""

# Inside the container (optionally in the runtime's network namespace): N sequential GETs of
# /health, each on a new connection; prints each one's seconds.
TIMED_HEALTH = """
import http.client, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
out = []
for _ in range(n):
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/health"); r = c.getresponse(); r.read(); c.close()
    assert r.status == 200, r.status
    out.append(time.perf_counter() - t0)
print(" ".join(map(str, out)))
"""


# Inside the container: a connection to PORT, open and silent until stopped.
HOLD = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
time.sleep(3600)
"""


def run(w: World, code: str, *args: str, netns_of: str | None = None) -> list[float]:
    argv = [sys.executable, "-c", code, *args]
    if netns_of is not None:
        argv = ["nsenter", f"--net=/proc/{netns_of}/ns/net", *argv]
    proc = w.ct.run(argv, env=w.ct.python_env(), timeout=600)
    return [float(x) for x in proc.stdout.split()]


def prop(w: World, unit: str, name: str) -> str:
    return w.ct.unit_property(unit, name)


def monotonic(w: World, unit: str, name: str) -> float:
    return int(prop(w, unit, name)) / 1e6


def wait_idle(w: World, unit: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (
        prop(w, f"{unit}.service", "ActiveState") != "inactive"
        or prop(w, f"{unit}-proxy.service", "ActiveState") != "inactive"
    ):
        if time.monotonic() > deadline:
            sys.exit(f"{unit} did not go idle")
        time.sleep(0.05)


def completion(w: World, port: int, *, poll: bool = False) -> tuple[float, float]:
    start, end = run(
        w, TIMED_COMPLETION, str(port), json.dumps(COMPLETION), "poll" if poll else "once"
    )
    return start, end


def always_on(w: World) -> str:
    """The runtime's unit as an always-on one, on DIRECT_PORT of the host's network: the
    rendered service without what on-demand adds (the gate, the cleanup, its own network,
    stopping when unneeded); same hardening, same GPU lock, same command line."""
    text = w.ct.run(["systemctl", "cat", f"{MAIN}.service"]).stdout
    keep = [
        line
        for line in text.splitlines()
        if not line.startswith(
            ("#", "ExecStartPost=", "ExecStopPost=", "PrivateNetwork=", "StopWhenUnneeded=")
        )
    ]
    unit = "\n".join(keep).replace('"--port" "11435"', f'"--port" "{DIRECT_PORT}"') + "\n"
    w.ct.install_unit("always-on.service", unit, enable=False)
    return "always-on.service"


def summary(xs: list[float], digits: int = 4) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(xs), digits),
        "runs_s": [round(x, digits) for x in xs],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    limit = {"StartLimitIntervalSec=600\n": f"StartLimitIntervalSec={5 * IDLE}\n"}
    overrides = {
        f"{MAIN}-proxy.service": {'"900s"': f'"{IDLE}s"'},
        f"{CODER}-proxy.service": {'"300s"': f'"{IDLE}s"'},
        f"{MAIN}.service": limit,
        f"{CODER}.service": limit,
    }
    with tempfile.TemporaryDirectory(prefix="bench-on-demand.") as tmp:
        base = Path(tmp)
        llama_cpp = package_dir(base, "llama-cpp", {"bin/llama-server": llama_server_binary()})

        def good_coder(hub: Any) -> None:
            setup_hub(base)(hub)
            from test_on_demand import CODER_FILE, CODER_REPO

            from model_pull.tinymodels import write_tiny_gguf

            hub.add_repo(CODER_REPO, {CODER_FILE: write_tiny_gguf(base / "c.gguf", seed=3)})

        with serving_world(
            base, HOST, {"llama-cpp": llama_cpp}, hub_setup=good_coder, overrides=overrides
        ) as w:
            pull = w.model_pull()
            if pull.returncode != 0:
                sys.exit(f"pull failed: {pull.stdout}{pull.stderr}")
            main_port, coder_port = PORTS[MAIN], PORTS[CODER]

            # (a) cold start, on demand and by hand, alternating which goes first
            on_demand, by_hand, to_fork, to_proxy, to_answer = [], [], [], [], []
            reference = always_on(w)
            for i in range(args.runs):
                order = ("on demand", "always on")
                for which in order if i % 2 == 0 else order[::-1]:
                    wait_idle(w, MAIN)  # the GPU (lock) and the memory are free
                    if which == "always on":
                        w.ct.run(["systemctl", "reset-failed", reference], check=False)
                        w.ct.run(["systemctl", "start", "--no-block", reference])
                        start, end = completion(w, DIRECT_PORT, poll=True)
                        w.ct.run(["systemctl", "stop", reference])
                        by_hand.append(end - start)
                        continue
                    start, end = completion(w, main_port)
                    on_demand.append(end - start)
                    unit, proxy = f"{MAIN}.service", f"{MAIN}-proxy.service"
                    fork = monotonic(w, unit, "ExecMainStartTimestampMonotonic")
                    ready = monotonic(w, unit, "ActiveEnterTimestampMonotonic")
                    proxy_fork = monotonic(w, proxy, "ExecMainStartTimestampMonotonic")
                    to_fork.append(fork - start)
                    to_proxy.append(proxy_fork - ready)
                    to_answer.append(end - proxy_fork)

            # (b) warm, through the proxy and directly; an open connection keeps it loaded
            completion(w, main_port)
            w.ct.start_service("holder.service", [sys.executable, "-c", HOLD, str(main_port)])
            pid = prop(w, f"{MAIN}.service", "MainPID")
            proxied = run(w, TIMED_HEALTH, str(main_port), str(args.requests))
            straight = run(w, TIMED_HEALTH, str(main_port), str(args.requests), netns_of=pid)
            w.ct.run(["systemctl", "stop", "holder.service"])
            if prop(w, f"{MAIN}.service", "MainPID") != pid:
                sys.exit("the runtime restarted during the warm runs")

            # (c) idle stop: the last client closed at `end`
            late = []
            for _ in range(args.runs):
                _, end = completion(w, main_port)
                wait_idle(w, MAIN)
                stopped = monotonic(w, f"{MAIN}.service", "InactiveEnterTimestampMonotonic")
                late.append(stopped - end - IDLE)

            # (d) swap: CODER requested while MAIN is loaded and idle
            swaps, waits, coder_cold = [], [], []
            for _ in range(args.runs):
                wait_idle(w, CODER)
                completion(w, main_port)
                start, end = completion(w, coder_port)
                released = monotonic(w, f"{MAIN}.service", "InactiveEnterTimestampMonotonic")
                swaps.append(end - released)
                waits.append(end - start)
                wait_idle(w, CODER)
                wait_idle(w, MAIN)
                start, end = completion(w, coder_port)
                coder_cold.append(end - start)
            sockets = {u: prop(w, f"{u}.socket", "Result") for u in (MAIN, CODER)}

    cold_overhead = statistics.median(on_demand) - statistics.median(by_hand)
    warm_overhead = statistics.median(proxied) - statistics.median(straight)
    print(
        json.dumps(
            {
                "container": "systemd-nspawn, systemd 252 as PID 1, the rendered units of "
                f"{HOST}, idleTimeout {IDLE} s, a real llama-server and tiny GGUFs",
                "cold_start_on_demand": summary(on_demand),
                "cold_start_always_on_unit": summary(by_hand),
                "cold_start_overhead_s": round(cold_overhead, 4),
                "cold_start_overhead_goal_s": 0.05,
                "on_demand_request_to_runtime_fork": summary(to_fork),
                "on_demand_runtime_ready_to_proxy_fork": summary(to_proxy),
                "on_demand_proxy_fork_to_answer": summary(to_answer),
                "warm_health_through_proxy": {"median_s": round(statistics.median(proxied), 6)},
                "warm_health_direct": {"median_s": round(statistics.median(straight), 6)},
                "warm_overhead_s": round(warm_overhead, 6),
                "warm_overhead_goal_s": 0.001,
                "idle_stop_after_timeout": summary(late),
                "idle_stop_goal_s": 0.5,
                "swap_from_main_stopped_to_coder_answer": summary(swaps),
                "coder_cold_start_gpu_free": summary(coder_cold),
                "coder_request_while_main_idle_total_wait": summary(waits),
                "socket_results": sockets,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
