"""A server that misbehaves, for real, on loopback: model-pull stays safe and says what happened.

The session's loopback Hub (tests/loopback_hub.py) redirects to a second origin, holds requests
without answering, trickles bodies, echoes the request's headers (the token among them) in its
error bodies, sends bodies longer or shorter than listed, ignores Range, asks to wait a day,
and serves hostile listings. Each failure is one `error:` line with its exit code; the token
never reaches another origin and is never printed; nothing half-made is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from loopback_hub import TestHub
from model_pull import transfer
from model_pull.devhub import ServerHandle
from model_pull.tinymodels import tiny_llama_files

if TYPE_CHECKING:
    from conftest import DevHubServer, HubRepo

TOKEN = "hf_hostileTestToken0123456789"
FAST = {"MODEL_PULL_TIMEOUT": "2"}  # seconds without a byte: the tests' hung servers


@pytest.fixture(scope="session")
def cdn(devhub: DevHubServer) -> Iterator[TestHub]:
    """A second origin (another port) serving the same repos to anyone: where the Hub
    redirects downloads, like its CDN."""
    hub = TestHub(devhub.hub.data_dir, cdn=True)
    handle: ServerHandle = hub.serve("127.0.0.1", 0)
    hub.url = handle.url  # type: ignore[attr-defined]
    try:
        yield hub
    finally:
        hub.release()
        handle.close()


@pytest.fixture
def released(devhub: DevHubServer) -> Iterator[TestHub]:
    """The Hub; requests it holds (`hang`) are let go when the test ends."""
    hub = devhub.hub
    hub._released.clear()
    try:
        yield hub
    finally:
        hub.release()


def partial_bytes(cache: Path) -> int:
    """Bytes of the downloads under way (allocated: ranges land at their offsets); a file
    renamed (complete) between the listing and the stat counts for nothing."""
    total = 0
    for part in cache.glob("*.incomplete"):
        with contextlib.suppress(FileNotFoundError):
            total += part.stat().st_blocks * 512
    return total


def one_line(p: subprocess.CompletedProcess[str], code: int) -> str:
    assert p.returncode == code, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def printable(text: str) -> bool:
    return not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u200e\u200f\u202a-\u202e\u2066-\u2069]", text)


def nothing_installed(root: Path) -> None:
    for top in ("store", "models", "by-hash"):
        assert not (root / top).exists() or not list((root / top).iterdir()), top
    assert not (root / "staging").exists() or not list((root / "staging").iterdir())


def auth(headers: dict[str, str]) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == "authorization"), None)


def gated(new_repo: Any, **kw: Any) -> HubRepo:
    repo: HubRepo = new_repo(tiny_llama_files(seed=21), gated=True, tokens=(TOKEN,), **kw)
    return repo


# --- tokens ---------------------------------------------------------------------------------


def test_the_token_never_goes_to_another_origin(model_pull, new_repo, released, cdn, tmp_path):
    repo = gated(new_repo)
    released.inject(repo.repo, None, on="resolve", redirect=cdn.url)  # type: ignore[attr-defined]
    released.reset_counters()
    cdn.reset_counters()
    root = tmp_path / "root"
    out = model_pull.json("fetch", repo.repo, "--root", str(root), env={"HF_TOKEN": TOKEN})
    assert Path(out["path"]).is_dir()  # the bytes came from the other origin
    at_cdn = [(kind, method, h) for kind, method, h in cdn.headers_seen() if kind == "resolve"]
    assert any(method == "GET" for _, method, _ in at_cdn)
    assert all(auth(h) is None for _, _, h in at_cdn), at_cdn
    at_hub = [h for kind, _, h in released.headers_seen() if kind == "resolve"]
    assert at_hub and all(auth(h) == f"Bearer {TOKEN}" for h in at_hub)
    # The metadata reads of the GPU check follow the same rule.
    cdn.reset_counters()
    checked = model_pull.run("check", repo.repo, "--gpu", "L4", env={"HF_TOKEN": TOKEN})
    assert checked.returncode == 0, checked.stderr
    seen = cdn.headers_seen()
    assert seen and all(auth(h) is None for _, _, h in seen)


def test_an_api_redirect_to_another_origin_drops_the_token(
    model_pull, new_repo, released, cdn, tmp_path
):
    repo = gated(new_repo)
    released.inject(repo.repo, None, on="revision", redirect=cdn.url)  # type: ignore[attr-defined]
    cdn.reset_counters()
    model_pull.json("fetch", repo.repo, "--root", str(tmp_path / "r"), env={"HF_TOKEN": TOKEN})
    seen = [h for kind, _, h in cdn.headers_seen() if kind == "revision"]
    assert seen and all(auth(h) is None for h in seen)


@pytest.mark.parametrize(
    "how", ["file with two lines", "HF_TOKEN with a newline", "HF_TOKEN with a space"]
)
def test_a_token_that_is_not_one_token_is_refused_unprinted(
    model_pull, new_repo, released, tmp_path, how
):
    repo = gated(new_repo)
    env: dict[str, str] = {}
    args = ["fetch", repo.repo, "--root", str(tmp_path / "root")]
    second = "hf_secondLineSecret987654"
    if how == "file with two lines":
        (tmp_path / "token").write_text(f"{TOKEN}\n{second}\n")
        args += ["--token-file", str(tmp_path / "token")]
    elif how == "HF_TOKEN with a newline":
        env["HF_TOKEN"] = f"{TOKEN}\n{second}"
    else:
        env["HF_TOKEN"] = f"{TOKEN} {second}"
    released.reset_counters()
    p = model_pull.run(*args, env=env)
    line = one_line(p, 12)
    assert TOKEN not in p.stderr + p.stdout and second not in p.stderr + p.stdout
    assert TOKEN[:12] not in line
    assert released.api_requests(repo.repo) == [] and released.requests(repo.repo) == []


@pytest.mark.parametrize("on", ["tree", "resolve"])
def test_a_server_echoing_the_request_gets_nothing_printed_raw(
    model_pull, new_repo, released, tmp_path, on
):
    repo = gated(new_repo)
    released.inject(repo.repo, None, on=on, status=400, echo=True)
    p = model_pull.run(
        "fetch", repo.repo, "--root", str(tmp_path / "root"), env={"HF_TOKEN": TOKEN, **FAST}
    )
    assert p.returncode != 0
    line = one_line(p, p.returncode)
    assert TOKEN not in p.stderr + p.stdout
    assert printable(p.stderr), repr(p.stderr)
    assert len(line) < 2100
    nothing_installed(tmp_path / "root")


# --- time -----------------------------------------------------------------------------------


@pytest.mark.parametrize("on", ["revision", "tree", "resolve"])
def test_a_server_that_stops_answering_is_given_up(model_pull, new_repo, released, tmp_path, on):
    repo = new_repo(tiny_llama_files(seed=22))
    released.inject(repo.repo, None, on=on, hang=600)
    root = tmp_path / "root"
    p = model_pull.run("fetch", repo.repo, "--root", str(root), "--gpu", "L4", env=FAST)
    line = one_line(p, 18)
    assert "no byte for 2 s" in line, line
    nothing_installed(root)


def test_a_download_that_stops_is_asked_again_then_given_up(
    model_pull, new_repo, released, tmp_path
):
    repo = new_repo(tiny_llama_files(seed=29))
    released.inject(repo.repo, "model.safetensors", stall_after=1000)
    released.reset_counters()
    root = tmp_path / "root"
    p = model_pull.run("fetch", repo.repo, "--root", str(root), "--gpu", "L4", env=FAST)
    line = one_line(p, 18)
    assert "no byte for 2 s" in line and "3 tries" in line, line
    assert released.bytes_served(repo.repo, "model.safetensors") == 1000  # asked from byte 1000
    nothing_installed(root)


def test_a_trickling_body_is_given_up(model_pull, new_repo, released, tmp_path):
    repo = new_repo(tiny_llama_files(seed=23))
    released.inject(repo.repo, None, on="tree", trickle_bps=200)
    p = model_pull.run("fetch", repo.repo, "--root", str(tmp_path / "root"), env=FAST)
    assert "KiB/s" in one_line(p, 18)


def test_a_trickling_download_is_given_up_and_kept(model_pull, new_repo, released, tmp_path):
    files = tiny_llama_files(seed=24)
    repo = new_repo(files)
    released.inject(repo.repo, "model.safetensors", throttle_bps=2000)
    root = tmp_path / "root"
    p = model_pull.run("fetch", repo.repo, "--root", str(root), "--gpu", "L4", env=FAST)
    assert "KiB/s" in one_line(p, 18)
    nothing_installed(root)
    released.clear_faults(repo.repo)
    model_pull.json("fetch", repo.repo, "--root", str(root), "--gpu", "L4")


def test_a_retry_after_beyond_the_cap_is_an_error_not_a_wait(
    model_pull, new_repo, released, tmp_path
):
    repo = new_repo(tiny_llama_files(seed=25))
    released.inject(repo.repo, None, on="resolve", status=429, retry_after="86400")
    p = model_pull.run("fetch", repo.repo, "--root", str(tmp_path / "r"), "--gpu", "L4")
    assert "86400 s" in one_line(p, 18)


def test_ctrl_c_stops_and_keeps_the_partial_download(model_pull, new_repo, released, tmp_path):
    base = tiny_llama_files(seed=26)
    big = os.urandom(40 << 20)
    repo = new_repo(dict(base, **{"big.safetensors": big}))
    released.inject(repo.repo, "big.safetensors", throttle_bps=4 << 20)
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "model_pull", "fetch", repo.repo, "--root", str(root)]
    proc = subprocess.Popen(
        [*cmd, "--gpu", "L4"], env=model_pull.env, stderr=subprocess.PIPE, text=True
    )
    cache = root / "cache" / ("models--" + repo.repo.replace("/", "--"))
    deadline = time.time() + 60
    while partial_bytes(cache) < (4 << 20):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: interrupted"
    ]
    assert partial_bytes(cache) >= 4 << 20
    nothing_installed(root)
    released.clear_faults(repo.repo)
    released.reset_counters()
    out = model_pull.json("fetch", repo.repo, "--root", str(root), "--gpu", "L4")
    assert released.bytes_served(repo.repo, "big.safetensors") < len(big)  # resumed
    assert (Path(out["path"]) / "share/models/hub").is_dir()


# --- bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code"),
    [({"extra_bytes": 1000}, 14), ({"short_bytes": 1000}, 18)],
    ids=["longer", "shorter"],
)
def test_a_body_longer_or_shorter_than_listed(
    model_pull, new_repo, released, tmp_path, fault, code
):
    repo = new_repo(tiny_llama_files(seed=27))
    released.inject(repo.repo, "model.safetensors", **fault)
    root = tmp_path / "root"
    p = model_pull.run("fetch", repo.repo, "--root", str(root), "--gpu", "L4")
    assert "model.safetensors" in one_line(p, code)
    nothing_installed(root)


def weights_of(out: dict[str, Any], name: str) -> Path:
    return next(Path(out["path"]).glob(f"share/models/hub/*/snapshots/*/{name}"))


def test_a_server_without_ranges_gets_one_connection(model_pull, new_repo, released, tmp_path):
    data = os.urandom(40 << 20)
    repo = new_repo({"config.json": b"{}", "w.safetensors": data})
    released.inject(repo.repo, "w.safetensors", ignore_range=True)
    released.reset_counters()
    out = model_pull.json("fetch", repo.repo, "--root", str(tmp_path / "root"), "--gpu", "L4")
    gets = [r for r in released.requests(repo.repo, "w.safetensors") if r.method == "GET"]
    assert len(gets) == 1 and gets[0].status == 200
    assert weights_of(out, "w.safetensors").read_bytes() == data


def test_a_big_file_comes_over_several_connections(model_pull, new_repo, released, tmp_path):
    data = os.urandom(50 << 20)
    repo = new_repo({"config.json": b"{}", "w.safetensors": data})
    released.reset_counters()
    out = model_pull.json("fetch", repo.repo, "--root", str(tmp_path / "root"), "--gpu", "L4")
    gets = [r for r in released.requests(repo.repo, "w.safetensors") if r.method == "GET"]
    ranges = -(-len(data) // transfer.RANGE_SIZE)
    assert ranges > 1 and len(gets) == ranges and all(r.status == 206 and r.range for r in gets)
    assert sum(r.body_bytes for r in gets) == len(data)
    assert weights_of(out, "w.safetensors").read_bytes() == data


def test_two_paths_with_the_same_bytes_are_downloaded_once(
    model_pull, new_repo, released, tmp_path
):
    data = os.urandom(20 << 20)
    repo = new_repo({"config.json": b"{}", "a.safetensors": data, "sub/b.safetensors": data})
    released.reset_counters()
    out = model_pull.json("fetch", repo.repo, "--root", str(tmp_path / "root"), "--gpu", "L4")
    served = sum(
        released.bytes_served(repo.repo, p) for p in ("a.safetensors", "sub/b.safetensors")
    )
    assert served == len(data)
    a, b = weights_of(out, "a.safetensors"), weights_of(out, "sub/b.safetensors")
    assert a.read_bytes() == data and a.samefile(b)


# --- listings -------------------------------------------------------------------------------

SHA1 = "a" * 40
SHA256 = "b" * 64


def _file(path: Any, size: Any = 10, oid: Any = SHA1, **kw: Any) -> dict[str, Any]:
    return {"type": "file", "path": path, "size": size, "oid": oid, **kw}


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth  # sent as it is: JSON no parser should recurse into


HOSTILE_LISTINGS: dict[str, Any] = {
    "control character": [_file("config.json"), _file("a\x1b[2Jb.json")],
    "bidirectional override": [_file("config.json"), _file("evil\u202etxt.json")],
    "zero-width character": [_file("config.json"), _file("con\u200bfig.json")],
    "duplicate": [_file("config.json"), _file("config.json")],
    "file and directory": [_file("config.json"), _file("a"), _file("a/b.json")],
    "negative size": [_file("config.json", size=-1)],
    "absurd size": [_file("config.json", size=1 << 62)],
    "size as text": [_file("config.json", size="10")],
    "size as bool": [_file("config.json", size=True)],
    "oid that is a path": [_file("config.json", oid="../../../etc/passwd")],
    "lfs oid that is not sha256": [_file("w.bin", lfs={"oid": "../x", "size": 10})],
    "lfs with another size": [_file("w.bin", lfs={"oid": SHA256, "size": 11})],
    "no path": [{"type": "file", "size": 1, "oid": SHA1}],
    "unknown type": [{"type": "socket", "path": "x"}],
    "name too long": [_file("a" * 300 + ".json")],
    "path too long": [_file("/".join(["d" * 200] * 8) + "/x.json")],
    "not a list": {"files": []},
    "deeply nested": _nested(100_000),
    "absolute path": [_file("/etc/passwd")],
    "dot dot": [_file("a/../../x")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LISTINGS))
def test_a_hostile_listing_is_refused_before_any_byte(
    model_pull, new_repo, released, tmp_path, case
):
    repo = new_repo(tiny_llama_files(seed=28))
    released.inject(repo.repo, None, on="tree", listing=HOSTILE_LISTINGS[case])
    released.reset_counters()
    root = tmp_path / "root"
    p = model_pull.run("fetch", repo.repo, "--root", str(root), "--gpu", "L4")
    line = one_line(p, 15)
    assert printable(line)
    assert released.requests(repo.repo) == []  # no file was asked for, not even a HEAD
    nothing_installed(root)
    assert not (root / "cache").exists() or not any((root / "cache").iterdir())


# --- memory -----------------------------------------------------------------------------------


def peak_rss(argv: list[str], env: dict[str, str]) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Bytes of peak RSS of `argv` (a child of a fresh process, so only its own counts)."""
    probe = (
        "import json, resource, subprocess, sys; "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, "
        "p.returncode, p.stdout, p.stderr]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *argv], env=env, capture_output=True, text=True, check=True
    )
    rss, code, stdout, stderr = json.loads(out.stdout)
    return rss, subprocess.CompletedProcess(argv, code, stdout, stderr)


def test_a_big_file_listed_as_non_lfs_is_hashed_streaming(model_pull, devhub, new_repo, tmp_path):
    size = 384 << 20
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    repo = new_repo(
        {"config.json": b"{}", "big.bin": big}, lfs_patterns=(), lfs_size_threshold=1 << 40
    )
    rss, p = peak_rss(
        [
            sys.executable,
            "-m",
            "model_pull",
            "fetch",
            repo.repo,
            "--root",
            str(tmp_path / "root"),
            "--gpu",
            "L4",
            "--json",
        ],
        model_pull.env,
    )
    assert p.returncode == 0, p.stderr
    listed = {f["path"]: f for f in json.loads(p.stdout)["files"]}
    assert listed["big.bin"]["size"] == size
    assert rss < size // 2, f"peak RSS {rss >> 20} MiB for a {size >> 20} MiB file"


def test_the_gpu_checks_metadata_reads_are_capped(model_pull, new_repo):
    repo = new_repo({"config.json": b" " * (20 << 20) + b"{}", "model.safetensors": b"x"})
    p = model_pull.run("check", repo.repo, "--gpu", "L4")
    assert "larger than 16 MiB" in one_line(p, 25)
