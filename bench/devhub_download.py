"""How fast the real huggingface_hub client downloads a big file from the loopback devhub.

Runs the server as its own process (`python -m model_pull.devhub serve`) so it does not share
the client's GIL, then times, on the same file in the same run:
  curl to /dev/null (the server alone), curl to disk (reference: a plain HTTP client),
  and hf_hub_download (the real client).

    PYTHONPATH=helper python bench/devhub_download.py [--size-mb 1024]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    args = parser.parse_args()
    size = args.size_mb * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="devhub-bench-"))
    os.environ.update(
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HOME=str(work / "hf"),
    )
    os.environ.pop("HF_TOKEN", None)
    sys.path.insert(0, str(ROOT / "helper"))
    from model_pull.devhub import DevHub
    from model_pull.tinymodels import synthetic_weights

    try:
        t = time.monotonic()
        weights = synthetic_weights(work / "src", size, files=1)["model.safetensors"]
        print(f"synthetic_weights: {size / 2**20:.0f} MiB in {time.monotonic() - t:.1f} s")
        t = time.monotonic()
        DevHub(work / "hub").add_repo("bench/big", {"model.safetensors": weights})
        print(f"add_repo (hash + hardlink): {time.monotonic() - t:.1f} s")
        port_file = work / "port"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "helper")}
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
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            while not port_file.exists():
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port_file.read_text()}"
            file_url = f"{url}/bench/big/resolve/main/model.safetensors"
            t = time.monotonic()
            subprocess.run(["curl", "-sf", "-o", "/dev/null", file_url], check=True)
            null_s = time.monotonic() - t
            t = time.monotonic()
            subprocess.run(["curl", "-sf", "-o", str(work / "curl.out"), file_url], check=True)
            curl_s = time.monotonic() - t
            (work / "curl.out").unlink()
            os.environ["HF_ENDPOINT"] = url
            from huggingface_hub import hf_hub_download

            t = time.monotonic()
            got = Path(hf_hub_download("bench/big", "model.safetensors", cache_dir=work / "c"))
            hf_s = time.monotonic() - t
            assert got.stat().st_size == size
        finally:
            server.terminate()
            server.wait()
        mib = size / 2**20
        print(f"curl > /dev/null:{null_s:6.2f} s  {mib / null_s:7.0f} MiB/s  (the server alone)")
        print(f"curl:            {curl_s:6.2f} s  {mib / curl_s:7.0f} MiB/s")
        print(
            f"hf_hub_download: {hf_s:6.2f} s  {mib / hf_s:7.0f} MiB/s  ({hf_s / curl_s:.2f}x curl)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
