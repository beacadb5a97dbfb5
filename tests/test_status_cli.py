"""`model-pull status` without a system bus: it still shows the models, then exits 40."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HELPER = Path(__file__).resolve().parents[1] / "helper"


def test_status_without_bus_shows_models_and_exits_no_bus(tmp_path: Path):
    manifest = tmp_path / "models.json"
    manifest.write_text(
        json.dumps(
            {
                "version": 1,
                "root": str(tmp_path / "inference"),
                "models": {
                    "tiny": {
                        "repo": "org/tiny",
                        "revision": "main",
                        "layout": "gguf",
                        "units": ["llama-server-main.service"],
                    }
                },
                "units": {
                    "llama-server-main.service": {"runtime": "llama-server", "models": ["tiny"]}
                },
            }
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(HELPER),
        "MODEL_PULL_MANIFEST": str(manifest),
        "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "model_pull", "status"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 40
    assert f"tiny  missing  (nothing at {tmp_path}/inference/models/tiny)" in proc.stdout
    assert "llama-server-main.service  unknown (no bus)" in proc.stdout
    assert proc.stderr == (
        f"error: cannot reach systemd on the system bus: no socket at "
        f"{tmp_path}/no-bus (is D-Bus running? systemctl status dbus.socket; "
        "DBUS_SYSTEM_BUS_ADDRESS names another bus)\n"
    )


def test_status_with_a_bad_manifest_exits_bad_manifest(tmp_path: Path):
    (tmp_path / "models.json").write_text('{"version": 1}')
    env = {
        **os.environ,
        "PYTHONPATH": str(HELPER),
        "MODEL_PULL_MANIFEST": str(tmp_path / "models.json"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "model_pull", "status"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 23
    assert proc.stderr.startswith(f"error: manifest {tmp_path}/models.json: models is missing")
