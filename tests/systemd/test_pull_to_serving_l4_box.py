"""Host l4-box's vLLM unit (an FP8 checkpoint, layout `hf`, FP8 KV cache), gated, started by
`model-pull`, serving, and stopped, in a real systemd, with the real vLLM (its CPU build).

The unit is as rendered (tests/nix/golden.json); what must differ without a GPU is in a drop-in,
each line explained (serving_world.cpu_dropin). The model is the tiny llama in block-wise FP8
(every projection a whole number of 128x128 scale blocks), under the declared repo's name.
model-pull's GPU check finds no GPU here, says so, and packages the model anyway (the check
belongs to the target, `model-pull check --gpu`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from container import unavailable_reason
from serving_world import (
    World,
    cpu_dropin,
    cpu_tools,
    path_packages,
    runtime_binds,
    serving_world,
    vllm_package,
)

from model_pull.devhub import DevHub
from model_pull.tinymodels import tiny_llama_files

pytestmark = [pytest.mark.systemd, pytest.mark.slow]
logger = logging.getLogger(__name__)

HOST = "l4-box"
UNIT = "vllm-qwen3-8b.service"
MODEL, REPO, SERVED = "qwen3-8b-fp8", "Qwen/Qwen3-8B-FP8", "qwen3-8b"
GiB = 1 << 30


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("l4-box")
    # the host pins the branch "main", which the loopback Hub has: no revision to substitute
    DevHub(base / "hub").add_repo(REPO, tiny_llama_files(seed=6, quantization="fp8"))
    pkgs: dict[str, Path] = {"vllm": vllm_package(base), **path_packages(base)}
    with serving_world(
        base,
        HOST,
        pkgs,
        dropins={UNIT: cpu_dropin(HOST, UNIT)},
        binds=[*runtime_binds(), *cpu_tools(base)],
    ) as w:
        yield w


def test_1_unit_is_skipped_before_the_pull(world: World) -> None:
    world.ct.run(["systemctl", "start", UNIT])
    state = world.unit(UNIT)
    assert (state["ActiveState"], state["ConditionResult"]) == ("inactive", "no"), state


def test_2_fp8_model_is_pulled_without_a_gpu_and_vllm_serves_it(world: World) -> None:
    proc = world.model_pull()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"{MODEL}: installed" in out
    assert f"warning: {MODEL}:" in out and "packaging without a GPU check" in out, out
    entry = f"/var/lib/inference/store/{Path(world.link(MODEL)).name}"
    # layout hf: the HF cache tree only
    assert sorted(
        p.name for p in (world.state / "store" / Path(entry).name / "share" / "models").iterdir()
    ) == ["hub"]

    answer = world.complete(UNIT, 8000, SERVED)  # the unit listens on 0.0.0.0:8000
    assert answer["model"] == SERVED and answer["usage"]["completion_tokens"] == 6, answer
    status, body = world.ct.wait_http("http://127.0.0.1:8000/v1/models")
    (card,) = json.loads(body)["data"]
    assert (status, card["id"], card["max_model_len"]) == (200, SERVED, 16384), body
    journal = world.ct.journal(UNIT, lines=5000)
    # the FP8 weights and the FP8 KV cache, from the checkpoint and --kv-cache-dtype fp8
    snapshot = f"{entry}/share/models/hub/models--Qwen--Qwen3-8B-FP8/snapshots/"
    assert f"model='{snapshot}" in journal
    assert "quantization=fp8" in journal and "kv_cache_dtype=fp8" in journal
    env = world.ct.run(["systemctl", "show", UNIT, "-p", "Environment", "--value"]).stdout
    assert "CUDA_VISIBLE_DEVICES=0" in env.split()


def test_3_stop_ends_every_process_and_frees_the_memory(world: World) -> None:
    before = world.unit_processes(UNIT)
    rss = sum(before.values())
    logger.info("%s: %d processes, %.2f GiB RSS before stop", UNIT, len(before), rss / GiB)
    assert len(before) >= 2 and rss > GiB / 2, before
    world.ct.run(["systemctl", "stop", UNIT], timeout=180)
    state = world.unit(UNIT)
    assert (state["ActiveState"], state["MainPID"]) == ("inactive", "0"), state
    assert world.unit_processes(UNIT) == {}
    assert world.alive(list(before)) == []
