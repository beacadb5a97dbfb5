"""A small disk, for real: a tmpfs of its own, in a mount namespace held open for the test.

A resume on a tight disk counts the bytes already downloaded (and gc keeps them); a disk full
before the state root even has its lock file is one line, exit 16, for fetch and for gc.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from model_pull.tinymodels import tiny_llama_files

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None,
    reason="needs root, unshare and nsenter to mount a small tmpfs",
)

MODEL_PULL = [sys.executable, "-m", "model_pull"]


@dataclass
class SmallDisk:
    """`path` is a tmpfs of `size` bytes in the mount namespace of process `pid`."""

    path: Path
    pid: int
    env: dict[str, str]

    @property
    def seen(self) -> Path:
        """The tmpfs as this process sees it (through the holder's root)."""
        return Path(f"/proc/{self.pid}/root") / self.path.relative_to("/")

    def argv(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", *MODEL_PULL, *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), env=self.env, capture_output=True, text=True, timeout=300
        )

    def free(self) -> int:
        st = os.statvfs(self.seen)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> None:
        """Write a ballast file so that about `leave` bytes stay free."""
        with (self.seen / "ballast").open("ab") as f:
            while self.free() > leave + (1 << 20):
                f.write(b"\0" * min(1 << 20, self.free() - leave))
                f.flush()
        with contextlib.suppress(OSError), (self.seen / "ballast").open("ab") as f:
            while self.free() > leave:
                f.write(b"\0" * 4096)
                f.flush()
        if leave == 0:  # full: no inode left either (a directory on tmpfs takes no block)
            (self.seen / "inodes").mkdir()
            with contextlib.suppress(OSError):
                for i in range(10**7):
                    (self.seen / "inodes" / str(i)).touch()


@pytest.fixture
def small_disk(model_pull: Any, tmp_path: Path) -> Iterator[Any]:
    def make(size: str) -> SmallDisk:
        mnt = tmp_path / "disk"
        mnt.mkdir(exist_ok=True)
        inodes = ",nr_inodes=1024" if size == "4m" else ""
        holder = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"mount -t tmpfs -o size={size}{inodes},mode=0755 none {mnt} && echo ready && "
                "exec sleep 600",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        holders.append(holder)
        return SmallDisk(mnt, holder.pid, model_pull.env)

    holders: list[subprocess.Popen[str]] = []
    try:
        yield make
    finally:
        for h in holders:
            h.kill()
            h.wait()


def one_line(p: subprocess.CompletedProcess[str], code: int) -> str:
    assert p.returncode == code, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_a_resume_on_a_tight_disk_counts_what_is_downloaded(small_disk, new_repo, devhub):
    disk = small_disk("48m")
    big = os.urandom(24 << 20)
    repo = new_repo(dict(tiny_llama_files(seed=51), **{"big.safetensors": big}))
    devhub.hub.inject(repo.repo, "big.safetensors", throttle_bps=8 << 20)
    root = disk.path / "root"
    proc = subprocess.Popen(
        disk.argv("fetch", repo.repo, "--root", str(root), "--gpu", "L4"),
        env=disk.env,
        stderr=subprocess.DEVNULL,
    )
    cache = disk.seen / "root" / "cache" / ("models--" + repo.repo.replace("/", "--"))
    deadline = time.time() + 60
    while sum(p.stat().st_blocks * 512 for p in cache.glob("*.incomplete")) < (16 << 20):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    devhub.hub.clear_faults(repo.repo)
    # gc keeps the partial download; then less is free than the whole file, more than the rest.
    assert disk.run("gc", "--root", str(root)).returncode == 0
    assert list(cache.glob("*.incomplete"))
    disk.fill(leave=12 << 20)
    assert disk.free() < len(big)
    p = disk.run("fetch", repo.repo, "--root", str(root), "--gpu", "L4", "--json")
    assert p.returncode == 0, p.stderr
    # and the check is still there: with less free than what is missing, one line, exit 16
    (disk.seen / "ballast").unlink()
    other = new_repo({"config.json": b"{}", "w.safetensors": os.urandom(20 << 20)})
    disk.fill(leave=8 << 20)
    line = one_line(disk.run("fetch", other.repo, "--root", str(root), "--gpu", "L4"), 16)
    assert "the download needs" in line


@pytest.mark.parametrize("command", ["fetch", "gc"])
def test_a_disk_full_before_the_lock_exists(small_disk, hub_repos, command):
    disk = small_disk("4m")
    root = disk.path / "root"
    if command == "gc":
        (disk.seen / "root").mkdir()  # gc refuses a root that does not exist (exit 20)
    disk.fill(leave=0)
    args = ["fetch", hub_repos.tiny_gguf.repo, "--layout", "gguf", "--gpu", "L4"]
    p = disk.run(*(args if command == "fetch" else ["gc"]), "--root", str(root))
    assert "no space left" in one_line(p, 16)
