"""Issue figures for fetch/package, each a ratio against the reference tool in the same run.

1. `model-pull fetch` of a ~1 GB synthetic repo vs `hf download` of the same files from the
   same loopback DevHub server (a separate process): wall-time ratio, target <= 1.10.
2. `model-pull hash` vs `nix hash path` on the same 2 GB directory: ratio <= 1.10, same hash.
3. Disk: a `dual` entry's size / the weights' size, target <= 1.001.

    .venv/bin/python bench/fetch_and_hash.py [--gb 1] [--hash-gb 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model_pull.devhub import DevHub
from model_pull.tinymodels import synthetic_weights, tiny_llama_files

VENV_BIN = Path(sys.executable).parent


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, p.stdout


def du_bytes(path: Path) -> int:
    """Allocated bytes, counting each inode once (like du -s --bytes on blocks)."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames + ["."]:
            st = os.lstat(Path(dirpath) / n)
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += st.st_blocks * 512
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--hash-gb", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mp-bench-", dir=os.environ.get("BENCH_DIR")))
    results: dict[str, object] = {}
    try:
        # --- 1. fetch vs hf download ---------------------------------------------------
        weights = work / "weights"
        synthetic_weights(weights, int(args.gb * (1 << 30)), files=4)
        files: dict[str, bytes | Path] = dict(tiny_llama_files())
        files.pop("model.safetensors")
        for p in weights.iterdir():
            files[p.name] = p
        hub = DevHub(work / "hub")
        hub.add_repo("bench/synthetic", files)
        port_file = work / "port"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "model_pull.devhub",
                "serve",
                str(work / "hub"),
                "--port-file",
                str(port_file),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            while not port_file.exists() or not port_file.read_text().strip():
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port_file.read_text().strip()}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
            env.update(
                HF_ENDPOINT=url,
                HF_HUB_DISABLE_TELEMETRY="1",
                HF_HUB_DISABLE_PROGRESS_BARS="1",
                HF_HOME=str(work / "hfhome"),
            )
            hf_times, mp_times = [], []
            entry = None
            for i in range(args.runs):
                # Alternate which tool goes first, so neither always meets a warmer machine.
                for tool in ("hf", "mp") if i % 2 == 0 else ("mp", "hf"):
                    if tool == "hf":
                        cache = work / f"hf-{i}"
                        t, _ = timed(
                            [
                                str(VENV_BIN / "hf"),
                                "download",
                                "bench/synthetic",
                                "--cache-dir",
                                str(cache),
                            ],
                            env,
                        )
                        hf_times.append(t)
                        shutil.rmtree(cache)
                        continue
                    root = work / f"mp-{i}"
                    t, out = timed(
                        [
                            sys.executable,
                            "-m",
                            "model_pull",
                            "fetch",
                            "bench/synthetic",
                            "--root",
                            str(root),
                            "--json",
                        ],
                        env,
                    )
                    mp_times.append(t)
                    entry = json.loads(out)
                    if i < args.runs - 1:
                        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
                        shutil.rmtree(root)
            assert entry is not None
            weights_size = sum(f["size"] for f in entry["files"])
            entry_disk = du_bytes(Path(entry["path"]))
            results["fetch"] = {
                "bytes": weights_size,
                "hf_download_s": hf_times,
                "model_pull_fetch_s": mp_times,
                "ratio_median": statistics.median(mp_times) / statistics.median(hf_times),
            }
            results["disk"] = {
                "entry_allocated": entry_disk,
                "weights": weights_size,
                "ratio": entry_disk / weights_size,
            }
        finally:
            server.terminate()
            server.wait()
        shutil.rmtree(work / "hub")

        # --- 2. hash vs nix hash path ----------------------------------------------------
        big = work / "hashdir"
        synthetic_weights(big, int(args.hash_gb * (1 << 30)), files=4, seed=7)
        nenv = dict(
            os.environ,
            NIX_CONFIG="experimental-features = nix-command",
            NIX_STATE_DIR=str(work / "nixstate"),
        )
        nix_t, mp_t = [], []
        nix_hash = mp_hash = ""
        for _ in range(args.runs):
            t, out = timed(["nix", "hash", "path", str(big)], nenv)
            nix_t.append(t)
            nix_hash = out.strip()
            t, out = timed([sys.executable, "-m", "model_pull", "hash", str(big)], nenv)
            mp_t.append(t)
            mp_hash = out.splitlines()[0]
        results["hash"] = {
            "bytes": int(args.hash_gb * (1 << 30)),
            "nix_hash_path_s": nix_t,
            "model_pull_hash_s": mp_t,
            "same_hash": nix_hash == mp_hash,
            "ratio_median": statistics.median(mp_t) / statistics.median(nix_t),
        }
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
