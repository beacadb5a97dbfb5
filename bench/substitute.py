"""Figures for a fleet: substituting an entry from a binary cache on loopback, each a ratio
against a reference measured in the same run, on random bytes (the synthetic test weights
compress ~250x and would flatter any compression).

For each size (default 1 and 4 GiB), one model of random bytes on the loopback Hub
(`python -m model_pull.devhub serve`, its own process), then:

1. `model-pull push NAME --to file://CACHE` from the puller's state root (time, peak RSS), vs
   `nix copy --to 'file://REF?compression=none'` of the same entry from a chroot Nix store
   (the reference; it writes the whole NAR to $TMPDIR first);
2. a static HTTP server over CACHE (`python -m http.server`, its own process);
3. `curl -o FILE` of the entry's NAR from it: the reference (the same bytes over the same
   server, onto the same disk, no verification);
4. `model-pull` (the bare pull of a node whose manifest pins the model and lists the cache,
   Hub unreachable): substitutes it, Nix verifying it (time, peak RSS) -> ratio to curl,
   goal <= 1.5;
5. `model-pull` of the same declaration without the cache, from the loopback Hub -> ratio.

Peak RSS is the largest of model-pull and the programs it ran (nix copy), from wait4.

    .venv/bin/python bench/substitute.py [--gib 1 4] [--runs 1]
    BENCH_DIR=/big/disk ...     (needs ~7x the largest size free)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from model_pull.devhub import DevHub
from model_pull.tinymodels import tiny_llama_files

NAME = "bench-model"
REPO = "bench/random"


def random_file(path: Path, size: int) -> None:
    chunk = 16 << 20
    with path.open("wb") as f:
        left = size
        while left > 0:
            f.write(os.urandom(min(chunk, left)))
            left -= chunk


def run(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes (of the process and the children it waited for), stdout."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    elapsed = time.perf_counter() - t0
    # RUSAGE_CHILDREN: the largest RSS of every descendant waited for so far (in_fresh_process
    # makes that this one command and what it ran).
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} -> {p.returncode}\n{err.decode()[-3000:]}")
    return elapsed, rss, out.decode()


def in_fresh_process(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """`run` in a child Python, so the RSS maximum is this command's own (it never resets)."""
    here = str(Path(__file__).parent)
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); from substitute import run; "
        "print(json.dumps(run(json.loads(sys.argv[1]), json.loads(sys.argv[2]))))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, json.dumps(argv), json.dumps(env)],
        capture_output=True,
        text=True,
        check=False,
    )
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:] + p.stdout[-3000:])
    elapsed, rss, out = json.loads(p.stdout)
    return float(elapsed), int(rss), str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def manifest(path: Path, root: Path, nar: str, commit: str, caches: list[str]) -> Path:
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "root": str(root),
                "models": {
                    NAME: {
                        "repo": REPO,
                        "revision": commit,
                        "layout": "hf",
                        "narHash": nar,
                        "units": [],
                    }
                },
                "units": {},
                "caches": {"urls": caches},
            }
        )
    )
    return path


def nix_copy_reference(work: Path, puller: Path, env: dict[str, str]) -> tuple[float, int]:
    """`nix copy --to file://` of the puller's entry, from a chroot store it is added to."""
    (entry,) = (puller / "store").iterdir()
    view = work / "view" / NAME
    view.parent.mkdir()
    shutil.copytree(entry, view, symlinks=True)
    nenv = dict(env, NIX_CONFIG="experimental-features = nix-command", TMPDIR=str(work))
    _, _, out = run(["nix-store", "--store", str(work / "chroot"), "--add", str(view)], nenv)
    subprocess.run(["chmod", "-R", "u+w", str(view.parent)], check=True)
    shutil.rmtree(view.parent)
    path = out.strip()
    to = f"file://{work / 'ref-cache'}?compression=none"
    t, rss, _ = in_fresh_process(
        ["nix", "copy", "--store", str(work / "chroot"), "--to", to, path], nenv
    )
    for d in ("chroot", "ref-cache"):
        subprocess.run(["chmod", "-R", "u+w", str(work / d)], check=True)
        shutil.rmtree(work / d)
    return t, rss


def one_size(work: Path, gib: float, runs: int, base_env: dict[str, str]) -> dict[str, Any]:
    size = int(gib * (1 << 30))
    files: dict[str, bytes | Path] = dict(tiny_llama_files())
    files.pop("model.safetensors")
    weights = work / "weights.bin"
    random_file(weights, size)
    files["weights.bin"] = weights
    hub = DevHub(work / "hub")
    commit = hub.add_repo(REPO, files)
    weights.unlink()
    port_file = work / "hub-port"
    hub_proc = subprocess.Popen(
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
    cache_port = free_port()
    cache = work / "cache"
    cache.mkdir()
    static = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(cache_port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(cache),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not port_file.exists() or not port_file.read_text().strip():
            time.sleep(0.05)
        hub_url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        cache_url = f"http://127.0.0.1:{cache_port}"
        wait_port(cache_port)
        env = dict(base_env, HF_ENDPOINT=hub_url, HF_HOME=str(work / "hf-home"))
        mp = [sys.executable, "-m", "model_pull"]
        puller = work / "puller"
        _, _, out = run(
            [
                *mp,
                "fetch",
                REPO,
                "--revision",
                commit,
                "--layout",
                "hf",
                "--name",
                NAME,
                "--root",
                str(puller),
                "--json",
            ],
            env,
        )
        nar = json.loads(out)["narHash"]
        push_t, push_rss, out = in_fresh_process(
            [*mp, "push", NAME, "--to", f"file://{cache}", "--root", str(puller), "--json"], env
        )
        pushed = json.loads(out)
        (nar_file,) = (cache / "nar").iterdir()
        nix_copy_t, nix_copy_rss = nix_copy_reference(work, puller, env)
        curl_t, subst_t, subst_rss, hub_t = [], [], [], []
        dead = dict(env, HF_ENDPOINT="http://127.0.0.1:9")
        for i in range(runs):
            order = ("curl", "subst", "hub") if i % 2 == 0 else ("hub", "subst", "curl")
            for tool in order:
                if tool == "curl":
                    dest = work / "curl.nar"
                    t, _, _ = run(
                        ["curl", "-sf", "-o", str(dest), f"{cache_url}/nar/{nar_file.name}"], env
                    )
                    assert dest.stat().st_size == pushed["narSize"]
                    dest.unlink()
                    curl_t.append(t)
                elif tool == "subst":
                    root = work / f"node-{i}"
                    m = manifest(work / f"subst-{i}.json", root, nar, commit, [cache_url])
                    t, rss, out = in_fresh_process(
                        [*mp, "--no-restart"], dict(dead, MODEL_PULL_MANIFEST=str(m))
                    )
                    assert f"{NAME}: substituted" in out, out
                    subst_t.append(t)
                    subst_rss.append(rss)
                    subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
                    shutil.rmtree(root)
                else:
                    root = work / f"hub-{i}"
                    m = manifest(work / f"hub-{i}.json", root, nar, commit, [])
                    t, _, out = run([*mp, "--no-restart"], dict(env, MODEL_PULL_MANIFEST=str(m)))
                    assert f"{NAME}: installed" in out, out
                    hub_t.append(t)
                    subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
                    shutil.rmtree(root)
        return {
            "narSize": pushed["narSize"],
            "push_s": push_t,
            "push_peak_rss": push_rss,
            "nix_copy_to_file_s": nix_copy_t,
            "nix_copy_to_file_peak_rss": nix_copy_rss,
            "push_vs_nix_copy": push_t / nix_copy_t,
            "curl_s": curl_t,
            "substitute_s": subst_t,
            "substitute_peak_rss": max(subst_rss),
            "hub_pull_s": hub_t,
            "substitute_vs_curl": statistics.median(subst_t) / statistics.median(curl_t),
            "substitute_vs_hub_pull": statistics.median(subst_t) / statistics.median(hub_t),
        }
    finally:
        for proc in (hub_proc, static):
            proc.terminate()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, nargs="+", default=[1.0, 4.0])
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    if shutil.which("nix") is None or shutil.which("curl") is None:
        raise SystemExit("needs nix (nix-bin) and curl")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODEL_PULL"))}
    base_env.update(
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        DBUS_SYSTEM_BUS_ADDRESS="unix:path=/nonexistent",
    )
    results: dict[str, Any] = {}
    for gib in args.gib:
        work = Path(tempfile.mkdtemp(prefix="mp-bench-fleet-", dir=os.environ.get("BENCH_DIR")))
        base_env["MODEL_PULL_MANIFEST"] = str(work / "none.json")
        try:
            results[f"{gib:g} GiB"] = one_size(work, gib, args.runs, dict(base_env))
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps({f"{gib:g} GiB": results[f"{gib:g} GiB"]}, indent=2), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
