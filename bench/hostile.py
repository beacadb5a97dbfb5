"""Issue figures for "a hostile world": memory, giving up, and the file operations of a pull.

1. Peak RSS of `model-pull fetch` of a 1 GiB file listed as LFS, of the same bytes listed as a
   regular (non-LFS) file (hashed streaming, never read whole), and of `model-pull verify` of
   the entry; with `hf download` of the LFS file as the reference, in the same run.
2. The time to give up on a server that stops answering, with the default timeouts: the
   revision request, a file's HEAD, and a download whose body stops.
3. How many file operations a pull, a gc and a rollback make (tests/fault_driver.py counts
   them; tests/test_interrupted.py stops each command at every one of them), when run as root
   with unshare available.

    .venv/bin/python bench/hostile.py [--gib 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from line_rate import Bench, measured  # noqa: E402
from model_pull.tinymodels import tiny_llama_files  # noqa: E402


def give_up(bench: Bench, repo: str, **fault: Any) -> dict[str, Any]:
    """Seconds until `fetch` gives up on a server that holds `fault` (and its last line)."""
    bench.hub.inject(repo, fault.pop("path", None), **fault)
    root = bench.work / f"hung-{len(fault)}-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "model_pull", "fetch", repo, "--root", str(root), "--gpu", "L4"],
        env=bench.env,
        capture_output=True,
        text=True,
        check=False,
    )
    secs = time.perf_counter() - t0
    bench.hub.clear_faults(repo)
    shutil.rmtree(root, ignore_errors=True)
    return {"s": round(secs, 1), "exit": p.returncode, "said": p.stderr.strip().splitlines()[-1]}


def ctrl_c(bench: Bench, repo: str, **fault: Any) -> dict[str, Any]:
    """Seconds from SIGINT to the end of a fetch that is downloading `repo` (with `fault`)."""
    bench.hub.inject(repo, fault.pop("path", None), **fault)
    root = bench.work / f"ctrl-c-{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_pull", "fetch", repo, "--root", str(root), "--gpu", "L4"],
        env=bench.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    secs = time.perf_counter() - t0
    bench.hub.clear_faults(repo)
    kept = sum(p.stat().st_blocks * 512 for p in root.glob("cache/*/*.incomplete"))
    shutil.rmtree(root, ignore_errors=True)
    return {"s": round(secs, 2), "exit": proc.returncode, "kept_bytes": kept, "said": err.strip()}


def file_operations(env: dict[str, str], work: Path, repo: str, v1: str, v2: str) -> Any:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare"
    counts = {}
    for scenario in ("pull", "gc", "rollback"):
        tmpfs, wdir = work / f"ops-{scenario}", work / f"opsw-{scenario}"
        tmpfs.mkdir()
        wdir.mkdir()
        spec: dict[str, Any] = {"scenario": scenario, "repo": repo, "v1": v1, "v2": v2}
        spec.update(tmpfs=str(tmpfs), work=str(wdir), kinds=[])
        (wdir / "spec.json").write_text(json.dumps(spec))
        script = (
            f"mount -t tmpfs -o size=16m,nr_inodes=2048,mode=0755 none {tmpfs} && "
            f"exec {sys.executable} {ROOT / 'tests' / 'fault_driver.py'} {wdir / 'spec.json'}"
        )
        p = subprocess.run(
            ["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True
        )
        ok = p.returncode == 0
        counts[scenario] = json.loads(p.stdout.splitlines()[-1])["ops"] if ok else p.stderr[-300:]
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mp-hostile-", dir=os.environ.get("BENCH_DIR")))
    results: dict[str, Any] = {}
    bench = Bench(work, 64)
    try:
        lfs = bench.repo("lfs", args.gib, 1)
        weights = next((work / "w-lfs").iterdir())
        plain = "bench/plain"
        bench.hub.add_repo(
            plain,
            {"config.json": b"{}", "weights.bin": weights},
            lfs_patterns=(),
            lfs_size_threshold=1 << 50,
        )
        root = work / "kept"
        fetch = [sys.executable, "-m", "model_pull", "fetch"]
        results["1_peak_rss_mib"] = {
            "hf_download_lfs": bench.hf(lfs)["rss_mib"],
            "fetch_lfs": measured([*fetch, lfs, "--root", str(root), "--gpu", "L4"], bench.env)[
                "rss_mib"
            ],
            "fetch_non_lfs": measured(
                [*fetch, plain, "--root", str(work / "plain-root"), "--gpu", "L4"], bench.env
            )["rss_mib"],
            "verify": measured(
                [sys.executable, "-m", "model_pull", "verify", "--root", str(root)], bench.env
            )["rss_mib"],
        }
        files = tiny_llama_files(seed=9)
        hung = "bench/hung"
        v1 = bench.hub.add_repo(hung, files)
        results["2_give_up_on_a_hung_server"] = {
            "timeout_s": 10,
            "revision": give_up(bench, hung, on="revision", hang=600),
            "head": give_up(bench, hung, on="resolve", hang=600),
            "body_stops": give_up(bench, hung, path="model.safetensors", stall_after=1000),
        }
        bench.hub.release()
        results["2_ctrl_c"] = {
            "downloading": ctrl_c(bench, lfs, throttle_bps=64_000_000),
            "server_silent": ctrl_c(bench, hung, path="model.safetensors", stall_after=1000),
        }
        v2 = bench.hub.add_repo(hung, dict(files, **{"README.md": b"v2\n"}))
        results["3_file_operations"] = file_operations(bench.env, work, hung, v1, v2)
    finally:
        bench.close()
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
