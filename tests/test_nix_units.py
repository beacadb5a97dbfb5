"""Unit files rendered from tests/nix/golden.json (the evaluated hosts), checked by systemd's own
tools: `systemd-analyze verify` and `systemd-analyze security --offline=yes`. No Nix needed;
tests/test_nixos_eval.py keeps the golden file equal to a live evaluation."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "nix"))
import render_units

GOLDEN = render_units.load_golden()
RUNTIME_LIMITS = {"llama-server": 2.0, "vllm": 3.0, "sglang": 3.0, "triton": 3.0}

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


# Unit settings newer than some systemd the tests run on, with the release that added them
# (systemd's NEWS). NixOS ships a newer systemd; an older local systemd-analyze reports them as
# unknown, and only then is that report expected.
NEWER_KEYS = {"RestartSteps": 254, "RestartMaxDelaySec": 254}


def systemd_version() -> int:
    out = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, out
    return int(match.group(1))


def unknown_to_this_systemd(line: str) -> bool:
    """A verify line about a key this (older) systemd does not know yet but NixOS's does."""
    match = re.search(r"Unknown key '(\w+)'", line)
    return match is not None and systemd_version() < NEWER_KEYS.get(match.group(1), 0)


def runtime_units() -> list[tuple[str, str, str]]:
    found = []
    for host, data in sorted(GOLDEN["hosts"].items()):
        for unit, info in sorted((data["manifest"] or {}).get("units", {}).items()):
            found.append((host, unit, info["runtime"]))
    return found


def all_units() -> list[tuple[str, str]]:
    return [(h, u) for h, d in sorted(GOLDEN["hosts"].items()) for u in sorted(d["units"])]


def stub_binaries(text: str, where: Path) -> dict[str, str]:
    """Map every store path of the unit to a directory whose bin/* are /bin/true."""
    subs = {}
    where.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(sorted(render_units.store_paths(text))):
        target = where / f"pkg{i}"
        for program in re.findall(re.escape(path) + r"/bin/([A-Za-z0-9._-]+)", text):
            (target / "bin").mkdir(parents=True, exist_ok=True)
            link = target / "bin" / program
            if not link.exists():
                link.symlink_to("/bin/true")
        if not target.exists():  # a script path used as the command itself
            target.symlink_to("/bin/true")
        subs[path] = str(target)
    return subs


def write_unit(host: str, unit: str, where: Path) -> Path:
    text = render_units.render(host, unit)
    rendered = render_units.render(host, unit, stub_binaries(text, where / f"{unit}.stubs"))
    path = where / unit
    path.write_text(rendered)
    return path


def test_every_host_has_runtime_units() -> None:
    assert {h for h, _, _ in runtime_units()} == set(GOLDEN["hosts"])


@pytest.mark.parametrize(("host", "unit"), all_units())
def test_systemd_accepts_the_unit(host: str, unit: str, tmp_path: Path) -> None:
    # Every unit of the host beside it: systemd-analyze loads the units it refers to (a
    # socket's service) from the same directory.
    for other in GOLDEN["hosts"][host]["units"]:
        if other != unit:
            write_unit(host, other, tmp_path)
    path = write_unit(host, unit, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        # The stub binaries are /bin/true; the inference user exists only on NixOS.
        if (unit in line or "Unknown" in line or "Failed" in line)
        and not unknown_to_this_systemd(line)
    ]
    assert result.returncode == 0 and not problems, result.stderr


def exposure(path: Path) -> float:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert match, out
    return float(match.group(1))


@pytest.mark.parametrize(("host", "unit", "runtime"), runtime_units())
def test_exposure_within_the_issue_limit(
    host: str, unit: str, runtime: str, tmp_path: Path
) -> None:
    path = write_unit(host, unit, tmp_path)
    limit = RUNTIME_LIMITS[runtime]
    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            f"--threshold={int(limit * 10)}",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"{unit} on {host}: exposure {exposure(path)} > {limit}"
    assert exposure(path) <= limit


@pytest.mark.parametrize(("host", "unit", "runtime"), runtime_units())
def test_the_gpu_stays_reachable(host: str, unit: str, runtime: str) -> None:
    text = render_units.render(host, unit)
    assert "PrivateDevices=false" in text
    assert "DevicePolicy=closed" in text
    for device in ("nvidiactl", "nvidia-caps", "nvidia-frontend", "nvidia", "nvidia-uvm"):
        assert f"DeviceAllow=char-{device} rw" in text.splitlines()
    assert ("MemoryDenyWriteExecute=true" in text) == (runtime == "llama-server")


def test_render_keeps_lists_as_lines_and_quotes_environment() -> None:
    text = render_units.render_unit(
        {
            "description": "x",
            "after": ["network.target", "b.service"],
            "unitConfig": {"ConditionPathExists": ["/a", "/b"]},
            "environment": {"HF_HUB_OFFLINE": "1", "Q": 'say "hi"'},
            "serviceConfig": {
                "CapabilityBoundingSet": [""],
                "PrivateUsers": True,
                "ExecStart": "/nix/store/x",
            },
            "wantedBy": ["multi-user.target"],
        },
        {"/nix/store/x": "/bin/true"},
    )
    assert text.splitlines() == [
        "[Unit]",
        "Description=x",
        "After=network.target b.service",
        "ConditionPathExists=/a",
        "ConditionPathExists=/b",
        "",
        "[Service]",
        'Environment="HF_HUB_OFFLINE=1"',
        'Environment="Q=say \\"hi\\""',
        "CapabilityBoundingSet=",
        "PrivateUsers=true",
        "ExecStart=/bin/true",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
