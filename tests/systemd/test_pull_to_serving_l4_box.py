"""Host l4-box's vLLM unit (an FP8 checkpoint, layout `hf`), gated and started by `model-pull`.

vLLM cannot run here (no GPU): the vllm store path holds tests/systemd/runtime_probe.py, a PROBE
that says so loudly, resolves the model from the unit's own HF_HUB_CACHE with HF_HUB_OFFLINE=1
as vLLM would, and then listens on the unit's address and port (0.0.0.0:8000 here). Everything
else is the unit NixOS renders (tests/nix/golden.json); see test_pull_to_serving_gpu_units.py
for the probe's interpreter.

The model is FP8: model-pull's GPU check finds no GPU on this machine, says so, and packages
the model anyway (the check belongs to the target, `model-pull check --gpu`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from container import unavailable_reason
from serving_world import World, package_dir, probe, serving_world, vllm_config

from model_pull.devhub import DevHub
from model_pull.tinymodels import tiny_llama_files

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

HOST = "l4-box"
UNIT = "vllm-qwen3-8b.service"
MODEL = "qwen3-8b-fp8"
REPO = "Qwen/Qwen3-8B-FP8"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("l4-box")
    # the host pins the branch "main", which the loopback Hub has: no revision to substitute
    DevHub(base / "hub").add_repo(REPO, tiny_llama_files(seed=6, quantization="fp8"))
    pkgs: dict[str, Path] = {
        "vllm": package_dir(base, "vllm", {"bin/vllm": probe("vllm")}),
        **vllm_config(base, HOST, "qwen3-8b"),
    }
    with serving_world(base, HOST, pkgs) as w:
        yield w


def test_unit_is_skipped_before_the_pull(world: World) -> None:
    world.ct.run(["systemctl", "start", UNIT])
    state = world.unit(UNIT)
    assert (state["ActiveState"], state["ConditionResult"]) == ("inactive", "no"), state


def test_fp8_model_is_pulled_without_a_gpu_and_the_unit_serves_it(world: World) -> None:
    proc = world.model_pull()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"{MODEL}: installed" in out
    assert f"warning: {MODEL}:" in out and "packaging without a GPU check" in out, out
    entry = f"/var/lib/inference/store/{Path(world.link(MODEL)).name}"
    # layout hf: the HF cache tree only
    assert sorted(p.name for p in (world.state / "store" / Path(entry).name / "share" / "models")
                  .iterdir()) == ["hub"]

    state = world.unit(UNIT)
    assert state["ActiveState"] == "active", f"{state}\n{world.ct.journal(UNIT)}"
    status, body = world.ct.wait_http("http://127.0.0.1:8000/")
    assert status == 200, body
    assert world.wait_journal(UNIT, "THIS IS A TEST PROBE")
    info = json.loads(body)
    assert info["probe"] is True
    model = info["model"]
    assert (model["repo"], model["model_type"], model["quant_method"]) == (REPO, "llama", "fp8")
    assert model["cuda_visible_devices"] == "0"
    snapshot = world.ct.run(["readlink", "-e", model["snapshot"]]).stdout
    assert snapshot.startswith(entry + "/"), snapshot
    assert info["config"]["served-model-name"] == ["qwen3-8b"]
    assert info["config"]["kv-cache-dtype"] == "fp8"
