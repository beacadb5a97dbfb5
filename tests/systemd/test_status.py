"""`model-pull status` against a real systemd: declared models, entries, units, GPU memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from container import SystemdContainer

from machine import nvidia_driver
from model_pull import render, status, systemd
from model_pull.manifest import Manifest

pytestmark = pytest.mark.systemd

REV = "0123456789abcdef0123456789abcdef01234567"
NAR = "sha256-1B2M2Y8AsgTpgAmY7PhCfg/+tiny+/0="
ENTRY = "b3qv4ys9xrf1k8nz0b5m6kq1rr2j7g4a-tiny"


def setup_state(root: Path, manifest_path: Path) -> Path:
    """`tiny` installed (entry, models/ link, two pulls.jsonl lines), `big` declared only."""
    entry = root / "store" / ENTRY
    (entry / "share/model-pull").mkdir(parents=True)
    (entry / "share/model-pull/manifest.json").write_text(
        json.dumps(
            {
                "tool": "model-pull 0.1.0",
                "name": "tiny",
                "repo": "org/tiny",
                "revision": REV,
                "layout": "gguf",
                "files": [],
            }
        )
    )
    (entry / "share/models/gguf").mkdir(parents=True)
    (entry / "share/models/gguf/tiny.gguf").write_bytes(b"GGUF")
    (root / "models").mkdir()
    (root / "models/tiny").symlink_to(Path("../store", ENTRY))
    (root / "state").mkdir()
    (root / "state/pulls.jsonl").write_text(
        json.dumps(
            {
                "time": "2026-01-01T00:00:00Z",
                "name": "tiny",
                "repo": "org/tiny",
                "revision": REV,
                "narHash": NAR,
                "entry": f"{root}/store/{ENTRY}",
            }
        )
        + "\n"
        + "garbage line from a crash\n"
        + json.dumps(
            {
                "time": "2026-01-02T00:00:00Z",
                "name": "tiny",
                "repo": "org/tiny",
                "revision": "f" * 40,
                "narHash": "sha256-other",
                "entry": f"{root}/store/zzzz-tiny",
            }
        )
        + "\n"  # rolled back since
    )
    manifest_path.write_text(
        json.dumps(
            {
                "version": 1,
                "root": str(root),
                "endpoint": None,
                "tokenFile": None,
                "models": {
                    "tiny": {
                        "repo": "org/tiny",
                        "revision": REV,
                        "layout": "gguf",
                        "units": ["tiny.service"],
                    },
                    "big": {
                        "repo": "org/big",
                        "revision": "main",
                        "layout": "hf",
                        "units": ["big.service"],
                    },
                },
                "units": {
                    "tiny.service": {"runtime": "llama-server", "models": ["tiny"]},
                    "big.service": {"runtime": "vllm", "models": ["big"]},
                },
            }
        )
    )
    return entry


def unit(gate: Path) -> str:
    return (
        f"[Unit]\nConditionPathExists={gate}\n[Service]\nExecStart=/usr/bin/sleep infinity\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


@pytest.fixture
def state(container: SystemdContainer, tmp_path: Path) -> tuple[SystemdContainer, Path, Path]:
    root, manifest = tmp_path / "inference", tmp_path / "models.json"
    entry = setup_state(root, manifest)
    container.install_unit("tiny.service", unit(root / "models/tiny/share/models/gguf/tiny.gguf"))
    container.install_unit("big.service", unit(root / "models/big/share/models/hub"))
    container.run(["systemctl", "start", "tiny.service", "big.service"])
    return container, manifest, entry


def test_status_inside_the_machine(state: tuple[SystemdContainer, Path, Path]):
    ct, manifest, entry = state
    env = {"MODEL_PULL_MANIFEST": str(manifest)}

    proc = ct.model_pull(["status", "--json"], env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    tiny, big = report["models"]
    assert (tiny["name"], tiny["present"], tiny["entry"]) == ("tiny", True, str(entry))
    assert tiny["installedRevision"] == REV and not tiny["pinDiffers"]
    assert tiny["narHash"] == NAR  # from the pulls.jsonl line of this entry, not the newest
    (tiny_unit,) = tiny["units"]
    assert (tiny_unit["activeState"], tiny_unit["subState"]) == ("active", "running")
    assert tiny_unit["mainPID"] in tiny_unit["pids"]
    if report["gpuError"] is None:  # NVML works in the container: a machine with a driver
        assert nvidia_driver() and tiny_unit["gpuBytes"] == 0  # sleep holds no GPU memory
    else:
        assert tiny_unit["gpuBytes"] is None and report["gpuError"].startswith("no NVML")
    assert (big["present"], big["entry"], big["narHash"]) == (False, None, None)
    (big_unit,) = big["units"]
    assert big_unit["activeState"] == "inactive" and big_unit["conditionResult"] is False

    text = ct.model_pull(["status"], env=env)
    assert text.returncode == 0, text.stderr
    assert f"tiny  present  {entry}" in text.stdout
    assert "tiny.service  active (running)" in text.stdout
    assert "big  missing" in text.stdout
    assert (
        f"big.service  waiting: ConditionPathExists={manifest.parent}"
        "/inference/models/big/share/models/hub"
    ) in text.stdout
    if report["gpuError"] is not None:
        assert "GPU memory per unit: no NVML" in text.stdout


class FakeNvmlProcessMemory:
    """Stands in for gpu.process_memory (NVML), which needs an NVIDIA driver, and on a machine
    with one would show no process of the container's units."""

    def __init__(self, used: dict[int, int]) -> None:
        self.used = used
        self.calls = 0

    def __call__(self) -> dict[int, int]:
        self.calls += 1
        return self.used


def test_gpu_memory_is_summed_per_unit(
    state: tuple[SystemdContainer, Path, Path], monkeypatch: pytest.MonkeyPatch
):
    ct, manifest, _entry = state
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", ct.bus_address)
    main_pid = systemd.unit_states(["tiny.service"])["tiny.service"].main_pid
    nvml = FakeNvmlProcessMemory({main_pid: 3 << 30, 999_999: 5 << 30})  # + someone else's

    report = status.collect(Manifest.load(manifest), manifest.parent / "inference", gpu_memory=nvml)

    assert nvml.calls == 1
    tiny, big = report.models
    assert tiny.units[0].gpu_bytes == 3 << 30
    assert big.units[0].gpu_bytes == 0
    assert "tiny.service  active (running)  GPU 3.0 GiB" in render.status_text(report)
