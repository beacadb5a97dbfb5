"""Every .nix file of the project parses (nix-instantiate --parse; no nixpkgs needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "node_modules", "build", "result"}

pytestmark = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None,
    reason="nix-instantiate not installed (apt-get install nix-bin)",
)


def nix_files() -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith("result")]
        found += [Path(dirpath, f) for f in filenames if f.endswith(".nix")]
    return sorted(found)


def test_the_project_has_its_nix_files() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in nix_files()}
    for expected in (
        "flake.nix",
        "nixos/default.nix",
        "hosts/h100-server.nix",
        "tests/nix/eval.nix",
    ):
        assert expected in names


@pytest.mark.parametrize("path", nix_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_parses(path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "NIX_STATE_DIR": str(tmp_path)}
    result = subprocess.run(
        ["nix-instantiate", "--parse", str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
