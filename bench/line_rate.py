"""Issue figures for "pull at line rate, ready at the last byte", each a ratio against
`hf download` (huggingface_hub's own command line) measured in the same run, on the same files,
from the same loopback Hub (tests/loopback_hub.py, its own process).

With a throttle of 64 MB/s per connection (what a CDN or a mirror allows one connection):
1. one 1 GiB file: model-pull fetch / hf download (goal <= 0.25, below 0.5 in any case);
2. four 256 MiB shards: model-pull fetch / hf download (<= 1.02);
3. the tail, from the last byte received to models/NAME switched, for 1 GiB and 4 GiB (model-pull
   logs it with -v): under 0.3 s, the same for both sizes.
Unthrottled (CPU-bound on a small machine):
4. one 1 GiB file and four shards: model-pull fetch / hf download (<= 1.0).
Peak RSS of every run (getrusage of a wrapper process: the run's own peak), and for model-pull the
most connections it opened (it adds them only while they bring more bytes per second).

    .venv/bin/python bench/line_rate.py [--gib 1] [--tail-gib 4] [--runs 3] [--mbps 64]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from loopback_hub import TestHub  # noqa: E402
from model_pull.tinymodels import synthetic_weights, tiny_llama_files  # noqa: E402

VENV_BIN = Path(sys.executable).parent
TAIL_RE = re.compile(r"switched ([0-9.]+) s after the last byte arrived")
CONNECTIONS_RE = re.compile(r"\(up to ([0-9]+) connections\)")
_PROBE = (
    "import json, resource, subprocess, sys, time; t = time.perf_counter(); "
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "t = time.perf_counter() - t; "
    "print(json.dumps([t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, "
    "p.returncode, p.stdout, p.stderr]))"
)


def measured(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Wall time, peak RSS and output of one run."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], env=env, capture_output=True, text=True, check=True
    )
    secs, rss, code, _, stderr = json.loads(out.stdout)
    if code != 0:
        raise RuntimeError(f"{argv[:4]} -> {code}: {stderr[-2000:]}")
    tail = TAIL_RE.search(stderr)
    connections = CONNECTIONS_RE.search(stderr)
    return {
        "s": round(secs, 3),
        "rss_mib": round(rss / (1 << 20), 1),
        "tail_s": float(tail.group(1)) if tail else None,
        "connections": int(connections.group(1)) if connections else None,
    }


class Bench:
    def __init__(self, work: Path, mbps: int) -> None:
        self.work = work
        self.hub = TestHub(work / "hub")
        self.mbps = mbps
        port_file = work / "port"
        self.server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "loopback_hub.py"),
                "serve",
                str(work / "hub"),
                "--port-file",
                str(port_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not port_file.exists() or not port_file.read_text().strip():
            time.sleep(0.05)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODEL_"))}
        self.env.update(
            HF_ENDPOINT=f"http://127.0.0.1:{port_file.read_text().strip()}",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HOME=str(work / "hfhome"),
            MODEL_PULL_MANIFEST=str(work / "no-manifest.json"),
        )
        self.n = 0

    def close(self) -> None:
        self.server.terminate()
        self.server.wait()

    def repo(self, name: str, gib: float, files: int) -> str:
        weights = self.work / f"w-{name}"
        synthetic_weights(weights, int(gib * (1 << 30)), files=files, seed=len(name))
        content: dict[str, bytes | Path] = dict(tiny_llama_files())
        content.pop("model.safetensors")
        for p in weights.iterdir():
            content[p.name] = p
        repo = f"bench/{name}"
        self.hub.add_repo(repo, content)
        return repo

    def throttle(self, repo: str, on: bool) -> None:
        if on:
            self.hub.inject(repo, None, throttle_bps=self.mbps * 1_000_000)
        else:
            self.hub.clear_faults(repo)

    def hf(self, repo: str) -> dict[str, Any]:
        self.n += 1
        cache = self.work / f"hf-{self.n}"
        try:
            return measured(
                [str(VENV_BIN / "hf"), "download", repo, "--cache-dir", str(cache)], self.env
            )
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    def mp(self, repo: str) -> dict[str, Any]:
        self.n += 1
        root = self.work / f"mp-{self.n}"
        try:
            return measured(
                [
                    sys.executable,
                    "-m",
                    "model_pull",
                    "-v",
                    "fetch",
                    repo,
                    "--root",
                    str(root),
                    "--gpu",
                    "L4",
                ],
                self.env,
            )
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
            shutil.rmtree(root, ignore_errors=True)

    def compare(self, repo: str, runs: int) -> dict[str, Any]:
        hf: list[dict[str, Any]] = []
        mp: list[dict[str, Any]] = []
        for i in range(runs):
            # Alternate which tool goes first, so neither always meets a warmer machine.
            for tool in ("hf", "mp") if i % 2 == 0 else ("mp", "hf"):
                (hf if tool == "hf" else mp).append(
                    self.hf(repo) if tool == "hf" else self.mp(repo)
                )
        hf_s = statistics.median(r["s"] for r in hf)
        mp_s = statistics.median(r["s"] for r in mp)
        return {
            "hf_download": hf,
            "model_pull": mp,
            "ratio_median": round(mp_s / hf_s, 3),
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--tail-gib", type=float, default=4.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mbps", type=int, default=64, help="per-connection throttle, MB/s")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mp-line-rate-", dir=os.environ.get("BENCH_DIR")))
    results: dict[str, Any] = {"mbps_per_connection": args.mbps}
    bench = Bench(work, args.mbps)
    try:
        one = bench.repo("one", args.gib, 1)
        four = bench.repo("four", args.gib, 4)
        bench.throttle(one, True)
        bench.throttle(four, True)
        results["1_one_file_throttled"] = bench.compare(one, args.runs)
        results["2_four_shards_throttled"] = bench.compare(four, args.runs)
        big = bench.repo("big", args.tail_gib, 1)
        bench.throttle(big, True)
        results["3_tail"] = {
            f"{args.gib:g}_gib": [
                r["tail_s"] for r in results["1_one_file_throttled"]["model_pull"]
            ],
            f"{args.tail_gib:g}_gib": [bench.mp(big) for _ in range(max(1, args.runs - 1))],
        }
        bench.throttle(one, False)
        bench.throttle(four, False)
        results["4_unthrottled_one_file"] = bench.compare(one, args.runs)
        results["4_unthrottled_four_shards"] = bench.compare(four, args.runs)
    finally:
        bench.close()
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
