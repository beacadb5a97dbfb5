"""The GPU runtimes' units (vLLM, Triton, SGLang) of host h100-server, gated and started by
`model-pull`.

vLLM, Triton and SGLang cannot run here (no GPU): their store paths hold
tests/systemd/runtime_probe.py, a PROBE that says so loudly, resolves the model exactly as the
runtime would from the unit's own environment (HF_HUB_CACHE + HF_HUB_OFFLINE for vLLM and
SGLang; the repository that the unit's real ExecStartPre, triton-assemble, builds for Triton),
fails when it cannot, and then listens on the unit's port. For SGLang the probe is the
`bin/python` of the SGLang environment (golden["packages"]["sglang-env"]), which the unit runs
as `python -m sglang.launch_server`. Everything else is the unit NixOS renders
(tests/nix/golden.json).

The probe's interpreter: the test venv's Python lives under /root/.pyenv, which the units'
ProtectHome=true hides, so the probe runs on Debian's /usr/bin/python3 (the same 3.11) with the
venv's site-packages on PYTHONPATH; the units keep ProtectHome=true.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from container import PROJECT, unavailable_reason
from serving_world import World, package_dir, probe, serving_world, vllm_config

from model_pull.devhub import DevHub
from model_pull.tinymodels import tiny_llama_files

sys.path.insert(0, str(PROJECT / "tests" / "nix"))
from render_units import load_golden, render, store_paths

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

HOST = "h100-server"
UNITS = {"vllm-qwen.service": 8000, "triton.service": 8010, "sglang-qwen.service": 30000}
MODEL = "qwen3_5-2b"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("gpu-units")
    golden = load_golden()
    host = golden["hosts"][HOST]
    declared = host["manifest"]["models"][MODEL]
    commit = DevHub(base / "hub").add_repo(declared["repo"], tiny_llama_files(seed=5))

    pkgs: dict[str, Path] = {
        "vllm": package_dir(base, "vllm", {"bin/vllm": probe("vllm")}),
        "triton-inference-server": package_dir(
            base, "triton", {"bin/tritonserver": probe("triton")}),
        "sglang-env": package_dir(base, "sglang-env", {"bin/python": probe("sglang")}),
    }
    (assemble,) = [p for p in store_paths(render(HOST, "triton.service"))
                   if p.endswith("-triton-assemble")]
    script = (PROJECT / "nixos" / "triton-assemble.sh").read_text()
    # writeShellApplication: bash + the script, with jq and coreutils on PATH (the host's here)
    pkgs[assemble] = package_dir(base, "triton-assemble",
                                 {"bin/triton-assemble": "#!/bin/bash\n" + script})
    pkgs |= vllm_config(base, HOST, "qwen")
    # the declared revision is a commit of the real repo; the loopback Hub has the tiny one
    with serving_world(base, HOST, pkgs, revisions={MODEL: commit}) as w:
        yield w


def test_units_are_skipped_before_the_pull(world: World) -> None:
    for unit in UNITS:
        world.ct.run(["systemctl", "start", unit])
        state = world.unit(unit)
        assert (state["ActiveState"], state["ConditionResult"]) == ("inactive", "no"), state


def test_model_pull_starts_them_and_they_resolve_the_model(world: World) -> None:
    proc = world.model_pull()
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert f"{MODEL}: installed" in proc.stdout + proc.stderr
    entry = f"/var/lib/inference/store/{Path(world.link(MODEL)).name}"
    for unit, port in UNITS.items():
        state = world.unit(unit)
        assert state["ActiveState"] == "active", f"{state}\n{world.ct.journal(unit)}"
        status, body = world.ct.wait_http(f"http://127.0.0.1:{port}/")
        assert status == 200, body
        assert world.wait_journal(unit, "THIS IS A TEST PROBE")
        info = json.loads(body)
        assert info["probe"] is True
        if unit.startswith(("vllm", "sglang")):
            assert info["model"]["repo"] == "Qwen/Qwen3.5-2B"
            assert info["model"]["model_type"] == "llama"
            snapshot = world.ct.run(["readlink", "-e", info["model"]["snapshot"]]).stdout
            assert snapshot.startswith(entry + "/"), snapshot
        if unit.startswith("vllm"):
            assert info["config"]["served-model-name"] == ["qwen3.5-2b"]
        elif unit.startswith("sglang"):
            assert info["runtime"] == "sglang"
            assert info["args"]["served-model-name"] == "qwen3.5-2b"
            assert info["args"]["mem-fraction-static"] == "0.3"
        else:
            (model,) = info["models"]
            assert model["name"] == "qwen3_5_2b" and model["model_type"] == "llama"
            assert model["weights"].startswith(entry + "/"), model
            assert model["model_json"]["gpu_memory_utilization"] == 0.3  # the unit's override
