"""From pull to serving with the real vLLM (its CPU build), timed in one real-systemd container:
host l4-box of tests/nix/golden.json, the rendered vllm-qwen3-8b.service with the CPU drop-in
of tests/systemd/serving_world.py, the tiny FP8 llama.

Each run:
(a) `model-pull --no-restart` installs a new revision; then, timed inside the container,
    `systemd.restart_waiting_units` (what `model-pull` does after installing) until the new
    process answers its first completion: the end of the pull to serving, on an entry this
    vLLM has not started on before;
(b) `systemctl restart` of the same unit on the same entry, until the first completion:
    vLLM's own start;
(c) (a)'s restart again on the same entry: what model-pull's restart adds is (c) - (b).
(b) and (c) alternate which goes first. vLLM's start varies by several seconds on a shared
machine, so (b) and (c) are also timed to the moment systemd started the new main process,
which is all a restart request decides. Also: the unit's processes and RSS once serving.

    PYTHONPATH=helper VLLM_VENV=... SGLANG_PATH=... python bench/pull_to_serving_vllm.py [--runs 3]

Prints one JSON object. Needs root, systemd-nspawn (see tests/systemd/container.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT / "tests" / "systemd"), str(PROJECT / "tests"), str(PROJECT / "helper")]

from serving_world import (  # noqa: E402
    World,
    cpu_dropin,
    cpu_tools,
    path_packages,
    runtime_binds,
    serving_world,
    vllm_package,
)
from test_pull_to_serving_l4_box import HOST, REPO, SERVED, UNIT  # noqa: E402

from model_pull.devhub import DevHub  # noqa: E402
from model_pull.tinymodels import tiny_llama_files  # noqa: E402

PORT = 8000

# Runs inside the container: MODE "pull" (restart_waiting_units, as model-pull does) or
# "systemctl" (systemctl restart). Prints the seconds until the NEW process answers a
# completion (polled from a thread once the old main process is gone), until the restart
# call returned (model-pull's restart watches a started unit for 2 s, so a crash right after
# start is reported), until systemd started the new main process (the part a restart
# request controls; the rest is vLLM's own start), and until the old main process was gone
# (vLLM's own stop).
TIMED_RESTART = """
import json, os, subprocess, sys, threading, time, urllib.request
from model_pull import systemd, units
mode, unit, url, served = sys.argv[1:5]
# restarts in a row would hit the unit's StartLimitBurst=5: reset the counter, untimed
subprocess.run(["systemctl", "reset-failed", unit], check=True)
old = int(subprocess.run(["systemctl", "show", unit, "-p", "MainPID", "--value"],
                         check=True, capture_output=True, text=True).stdout)
body = json.dumps({"model": served, "prompt": "Hello", "max_tokens": 6, "ignore_eos": True,
                   "temperature": 0}).encode()
answered, gone = [], []
def poll():
    deadline = time.perf_counter() + 900
    while old and os.path.exists(f"/proc/{old}"):
        time.sleep(0.002)
    gone.append(time.perf_counter())
    while time.perf_counter() < deadline:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                if r.status == 200 and json.loads(r.read())["usage"]["completion_tokens"] == 6:
                    answered.append(time.perf_counter()); return
        except OSError:
            pass
        time.sleep(0.01)
t0 = time.perf_counter()
poller = threading.Thread(target=poll); poller.start()
if mode == "pull":
    units.raise_for_failed(systemd.restart_waiting_units([unit]))
else:
    subprocess.run(["systemctl", "restart", unit], check=True)
returned = time.perf_counter()
poller.join()
if not answered:
    sys.exit("no completion from " + url)
# when systemd started the new main process (CLOCK_MONOTONIC, as time.monotonic())
started = int(subprocess.run(["systemctl", "show", unit, "-p", "ExecMainStartTimestampMonotonic",
                              "--value"], check=True, capture_output=True, text=True).stdout)
t0_mono = time.monotonic() - (time.perf_counter() - t0)
print(answered[0] - t0, returned - t0, started / 1e6 - t0_mono, gone[0] - t0)
"""


def timed(w: World, mode: str) -> list[float]:
    url = f"http://127.0.0.1:{PORT}/v1/completions"
    proc = w.ct.run(
        [sys.executable, "-c", TIMED_RESTART, mode, UNIT, url, SERVED],
        env=w.ct.python_env(w.pull_env),
        timeout=1200,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"{mode} restart failed: {proc.stdout}{proc.stderr}\n{w.ct.journal(UNIT)}")
    return [float(x) for x in proc.stdout.strip().splitlines()[-1].split()]


def summary(xs: list[float]) -> dict[str, object]:
    return {"median_s": round(statistics.median(xs), 3), "runs_s": [round(x, 3) for x in xs]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pull-to-serving-vllm.") as tmp:
        base = Path(tmp)
        hub = DevHub(base / "hub")
        hub.add_repo(REPO, tiny_llama_files(seed=100, quantization="fp8"))
        pkgs = {"vllm": vllm_package(base), **path_packages(base)}
        with serving_world(
            base,
            HOST,
            pkgs,
            dropins={UNIT: cpu_dropin(HOST, UNIT)},
            binds=[*runtime_binds(), *cpu_tools(base)],
        ) as w:
            first = w.model_pull("--no-restart")
            if first.returncode != 0:
                sys.exit(f"first pull failed: {first.stdout}{first.stderr}")
            first_start = timed(w, "pull")[0]  # cold: nothing compiled yet
            processes = w.unit_processes(UNIT)
            new_entry: list[float] = []
            new_entry_returned: list[float] = []
            own_start: list[float] = []
            pull_same_entry: list[float] = []
            exec_started: dict[str, list[float]] = {"pull": [], "systemctl": []}
            old_gone: dict[str, list[float]] = {"pull": [], "systemctl": []}
            for i in range(args.runs):
                hub.add_repo(REPO, tiny_llama_files(seed=101 + i, quantization="fp8"))
                proc = w.model_pull("--no-restart")
                if proc.returncode != 0 or "installed" not in proc.stdout + proc.stderr:
                    sys.exit(f"pull {i} did not install: {proc.stdout}{proc.stderr}")
                answered, returned, _, _ = timed(w, "pull")
                new_entry.append(answered)
                new_entry_returned.append(returned)
                for mode in ("systemctl", "pull") if i % 2 == 0 else ("pull", "systemctl"):
                    answered, _, started, stopped = timed(w, mode)
                    (own_start if mode == "systemctl" else pull_same_entry).append(answered)
                    exec_started[mode].append(started)
                    old_gone[mode].append(stopped)
    b, c = statistics.median(own_start), statistics.median(pull_same_entry)
    print(
        json.dumps(
            {
                "container": "systemd-nspawn, systemd as PID 1, rendered vllm-qwen3-8b.service "
                "(l4-box) + CPU drop-in, vLLM 0.32.0 CPU build, tiny FP8 llama",
                "first_start_cold_compile_cache_s": round(first_start, 2),
                "pull_to_first_completion_new_entry": summary(new_entry),
                "pull_restart_call_returned": summary(new_entry_returned),
                "systemctl_restart_to_first_completion": summary(own_start),
                "model_pull_restart_same_entry_to_first_completion": summary(pull_same_entry),
                "added_by_model_pull_s": round(c - b, 2),
                "target_added_s": 1.0,
                "systemctl_restart_to_new_process_started": summary(exec_started["systemctl"]),
                "model_pull_restart_to_new_process_started": summary(exec_started["pull"]),
                "systemctl_restart_to_old_process_gone": summary(old_gone["systemctl"]),
                "model_pull_restart_to_old_process_gone": summary(old_gone["pull"]),
                "serving_processes": len(processes),
                "serving_rss_gib": round(sum(processes.values()) / (1 << 30), 2),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
