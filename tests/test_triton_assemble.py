"""nixos/triton-assemble.sh (triton.service's ExecStartPre) run with real bash and jq on a
dual entry laid out as docs/ARCHITECTURE.md says."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "nixos" / "triton-assemble.sh"
COMMIT = "15852e8c16360a2fea060d615a32b45270f8a8fc"
CONFIG = 'backend: "vllm"\nmax_batch_size: 0\nmodel_transaction_policy { decoupled: true }\n'

pytestmark = pytest.mark.skipif(shutil.which("jq") is None, reason="jq not installed")


def dual_entry(root: Path, name: str = "qwen3_5-2b", triton: str = "qwen3_5_2b") -> Path:
    """A dual entry under root/store and its root/models/<name> link; returns the link."""
    entry = root / "store" / f"0123456789abcdfghijklmnpqrsvwxyz-{name}"
    hub = entry / "share/models/hub/models--Qwen--Qwen3.5-2B"
    snap = hub / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (hub / "refs").mkdir()
    (hub / "refs/main").write_text(COMMIT)
    tdir = entry / "share/models" / triton
    tdir.mkdir()
    (tdir / "config.pbtxt").write_text(CONFIG)
    defaults = {"gpu_memory_utilization": 0.85, "max_model_len": 4096, "dtype": "auto"}
    (tdir / "model-defaults.json").write_text(json.dumps(defaults))
    (tdir / "weights").symlink_to(f"../hub/models--Qwen--Qwen3.5-2B/snapshots/{COMMIT}")
    (root / "models").mkdir()
    link = root / "models" / name
    link.symlink_to(f"../store/{entry.name}")
    return link


def assemble(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), str(out), *args], capture_output=True, text=True, check=False
    )


def test_model_json_is_defaults_plus_weights_plus_overrides(tmp_path: Path) -> None:
    link = dual_entry(tmp_path / "state")
    out = tmp_path / "run"
    result = assemble(out, "qwen3_5_2b", str(link), '{"gpu_memory_utilization": 0.4}')
    assert result.returncode == 0, result.stderr

    model_dir = out / "models/qwen3_5_2b"
    assert (model_dir / "config.pbtxt").read_text() == CONFIG
    model_json = json.loads((model_dir / "1/model.json").read_text())
    entry = link.resolve()
    assert model_json == {
        "gpu_memory_utilization": 0.4,
        "max_model_len": 4096,
        "dtype": "auto",
        # The resolved entry, not the models/ link: a later pull does not move a running server.
        "model": f"{entry}/share/models/qwen3_5_2b/weights",
    }
    assert (Path(model_json["model"]) / "config.json").is_file()
    # HF_HUB_CACHE=<out>/hub resolves the repo offline.
    hub_repo = out / "hub/models--Qwen--Qwen3.5-2B"
    assert (hub_repo / "refs/main").read_text() == COMMIT


def test_a_restart_replaces_the_previous_repository(tmp_path: Path) -> None:
    link = dual_entry(tmp_path / "state")
    out = tmp_path / "run"
    stale = out / "models/removed_model"
    stale.mkdir(parents=True)
    assert assemble(out, "qwen3_5_2b", str(link), "{}").returncode == 0
    assert sorted(p.name for p in (out / "models").iterdir()) == ["qwen3_5_2b"]


def test_a_missing_triton_directory_fails_with_its_path(tmp_path: Path) -> None:
    link = dual_entry(tmp_path / "state")
    result = assemble(tmp_path / "run", "other_name", str(link), "{}")
    assert result.returncode == 1
    assert "share/models/other_name/config.pbtxt is missing" in result.stderr


def test_a_missing_entry_fails(tmp_path: Path) -> None:
    result = assemble(tmp_path / "run", "qwen3_5_2b", str(tmp_path / "nope"), "{}")
    assert result.returncode != 0


def test_wrong_argument_count_is_a_usage_error(tmp_path: Path) -> None:
    result = assemble(tmp_path / "run", "qwen3_5_2b", "/x")
    assert result.returncode == 2
    assert "usage:" in result.stderr
