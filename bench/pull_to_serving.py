"""From pull to serving, timed in one real-systemd container (host rtx5090-workstation of
tests/nix/golden.json, the rendered llama-server-main.service, a real llama-server).

(a) restart after a pull: `model-pull --no-restart` installs a new revision of the main model
    while the unit runs (it is served on demand: a request first starts it), then, timed
    inside the container, `systemd.start_on_demand` (what `model-pull` does after installing:
    restart the running unit, start its socket) until the first 200 from /v1/models, through
    the socket, of the new process that lists the model (and, apart, until the call returns:
    it watches the units 2 s for a crash). Against it, the same unit restarted with
    `systemctl restart` on a model already present, timed the same way: llama-server's own
    start. The difference is what model-pull adds.
(b) `model-pull` with nothing to do (3 declared models present), the whole process.

    PYTHONPATH=helper LLAMA_SERVER=... python bench/pull_to_serving.py [--runs 5]

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

from serving_world import World, package_dir, serving_world  # noqa: E402
from test_pull_to_serving import (  # noqa: E402
    HOST,
    PORT,
    SOCKET,
    UNIT,
    add_main,
    setup_hub,
)

from real_runtimes import llama_server_binary  # noqa: E402

# Runs inside the container: MODE is "pull" (restart_waiting_units, as model-pull does) or
# "systemctl" (systemctl restart). Prints two figures: seconds until /v1/models of the NEW
# process answers 200 with a model (polled from a thread as soon as the old main process is
# gone), and seconds until the restart call returned (model-pull's restart watches a started
# unit for `settle` = 2 s, so a crash right after start is reported, not missed).
TIMED_RESTART = """
import json, os, subprocess, sys, threading, time, urllib.request
from model_pull import systemd, units
mode, unit, socket, url = sys.argv[1:5]
# 10 restarts in a row would hit the unit's StartLimitBurst=5 (a manual or D-Bus restart
# counts too): reset the counter, untimed
subprocess.run(["systemctl", "reset-failed", unit], check=True)
# on demand: a request (untimed) makes sure the unit runs, as it does when a pull restarts it
urllib.request.urlopen(url, timeout=120).read()
old = int(subprocess.run(["systemctl", "show", unit, "-p", "MainPID", "--value"],
                         check=True, capture_output=True, text=True).stdout)
answered = []
def poll():
    deadline = time.perf_counter() + 120
    while old and os.path.exists(f"/proc/{old}"):
        time.sleep(0.002)
    while time.perf_counter() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200 and json.loads(r.read())["data"]:
                    answered.append(time.perf_counter()); return
        except OSError:
            pass
        time.sleep(0.005)
t0 = time.perf_counter()
poller = threading.Thread(target=poll); poller.start()
if mode == "pull":
    units.raise_for_failed(systemd.start_on_demand({unit: [socket]}))
else:
    subprocess.run(["systemctl", "restart", unit], check=True)
returned = time.perf_counter()
poller.join()
if not answered:
    sys.exit("no answer from " + url)
print(answered[0] - t0, returned - t0)
"""

# Runs inside the container: the whole `model-pull` process, nothing to do.
TIMED_NOOP = """
import subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.run([sys.executable, "-m", "model_pull"], capture_output=True, text=True)
dt = time.perf_counter() - t0
if proc.returncode != 0 or proc.stdout.count("up to date") != 3:
    sys.exit(f"model-pull did not find everything up to date: {proc.stdout}{proc.stderr}")
print(dt)
"""


def timed(w: World, code: str, *args: str) -> list[float]:
    proc = w.ct.run(
        [sys.executable, "-c", code, *args], env=w.ct.python_env(w.pull_env), timeout=300
    )
    return [float(x) for x in proc.stdout.strip().splitlines()[-1].split()]


def summary(xs: list[float]) -> dict[str, object]:
    return {"median_s": round(statistics.median(xs), 4), "runs_s": [round(x, 4) for x in xs]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{PORT}/v1/models"
    with tempfile.TemporaryDirectory(prefix="bench-pull-to-serving.") as tmp:
        base = Path(tmp)
        llama_cpp = package_dir(base, "llama-cpp", {"bin/llama-server": llama_server_binary()})
        with serving_world(base, HOST, {"llama-cpp": llama_cpp}, hub_setup=setup_hub(base)) as w:
            first = w.model_pull()
            if first.returncode != 0:
                sys.exit(f"first pull failed: {first.stdout}{first.stderr}")
            after_pull, after_pull_returned, own_start = [], [], []
            for i in range(args.runs):
                add_main(w.hub, base, seed=100 + i)
                proc = w.model_pull("--no-restart")
                if proc.returncode != 0 or "installed" not in proc.stdout + proc.stderr:
                    sys.exit(f"pull {i} did not install: {proc.stdout}{proc.stderr}")
                answered, returned = timed(w, TIMED_RESTART, "pull", UNIT, SOCKET, url)
                after_pull.append(answered)
                after_pull_returned.append(returned)
                own_start.append(timed(w, TIMED_RESTART, "systemctl", UNIT, SOCKET, url)[0])
            noop = [timed(w, TIMED_NOOP)[0] for _ in range(args.runs)]
    a, b = statistics.median(after_pull), statistics.median(own_start)
    print(
        json.dumps(
            {
                "container": "systemd-nspawn, systemd as PID 1, rendered llama-server-main.service "
                "(on demand, through its socket)",
                "restart_after_pull_to_v1_models": summary(after_pull),
                "restart_after_pull_call_returned": summary(after_pull_returned),
                "systemctl_restart_to_v1_models": summary(own_start),
                "added_by_model_pull_s": round(a - b, 4),
                "noop_model_pull_3_models": summary(noop),
                "noop_target_s": 0.5,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
