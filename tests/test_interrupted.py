"""kill -9 and a full disk at each file operation of a pull, a gc and a rollback, for real.

tests/fault_driver.py runs the command again and again in its own mount namespace, on a small
tmpfs, stopping it at operation 1, 2, ... N (every operation the command makes) with SIGKILL or
with the file system filled to the brim, and checks the state root after each run: no half-made
entry visible, models/NAME on the old or the new entry and that entry intact, a switched model
with its history, "no space" only when nothing was switched, one error line, and the next run
finishing the job (a pull resuming its download).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from model_pull.tinymodels import tiny_llama_files

DRIVER = Path(__file__).with_name("fault_driver.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None,
        reason="needs root and unshare to mount a small tmpfs",
    ),
]


def drive(model_pull: Any, tmp_path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    tmpfs, work = tmp_path / "tmpfs", tmp_path / "work"
    tmpfs.mkdir()
    work.mkdir()
    spec.update(tmpfs=str(tmpfs), work=str(work), kinds=["kill", "enospc"])
    (work / "spec.json").write_text(json.dumps(spec))
    script = (
        f"mount -t tmpfs -o size=16m,nr_inodes=2048,mode=0755 none {tmpfs} && "
        f"exec {sys.executable} {DRIVER} {work / 'spec.json'}"
    )
    p = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        env=model_pull.env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    report: dict[str, Any] = json.loads(p.stdout.splitlines()[-1])
    return report


@pytest.fixture
def two_commits(new_repo: Any, devhub: Any) -> dict[str, str]:
    files = tiny_llama_files(seed=41)
    repo = new_repo(files)
    v2 = devhub.hub.add_repo(repo.repo, dict(files, **{"README.md": b"v2\n"}))
    return {"repo": repo.repo, "v1": repo.commit, "v2": v2}


@pytest.mark.parametrize("scenario", ["pull", "gc", "rollback"])
def test_interrupted_at_every_file_operation(model_pull, tmp_path, two_commits, scenario):
    report = drive(model_pull, tmp_path, {"scenario": scenario, **two_commits})
    assert report["ops"] >= {"pull": 40, "gc": 3, "rollback": 2}[scenario], report
    assert report["runs"] == 2 * report["ops"]
    assert report["failures"] == [], json.dumps(report["failures"][:5], indent=1)
