"""Host b200-triton's Triton unit, whose model goes through TensorRT-LLM's backend: gated on the
entry's snapshot, started by `model-pull`, its repository assembled at start by the real
ExecStartPre (nixos/triton-assemble.sh), in a real systemd.

Neither Triton Inference Server nor TensorRT-LLM can run here (no registry ships Triton;
TensorRT-LLM's PyPI package is a stub that downloads from pypi.nvidia.com, and it needs a GPU).
`tritonserver` is tests/systemd/runtime_probe.py, which says loudly that it is a probe: it
parses each model's config.pbtxt with Triton's own ModelConfig protobuf and reads
`1/model.yaml` as TensorRT-LLM's LLM API model.py does, up to creating the LLM, then reads the
checkpoint it names. The LLM API model itself (triton_backend/all_models/llmapi/tensorrt_llm:
config.pbtxt, 1/model.py) is a STAND-IN directory bound where the host says it is.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from container import PROJECT, unavailable_reason
from serving_world import (
    World,
    package_dir,
    path_packages,
    probe,
    runtime_binds,
    serving_world,
    shell_application,
)

from model_pull.devhub import DevHub
from model_pull.tinymodels import tiny_llama_files

sys.path.insert(0, str(PROJECT / "tests" / "nix"))
from render_units import load_golden, render, store_paths

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

HOST = "b200-triton"
UNIT = "triton.service"
MODEL, REPO, TRITON_NAME = "qwen3-32b-nvfp4", "nvidia/Qwen3-32B-NVFP4", "qwen3_32b"
LLMAPI = "/opt/tensorrt-llm/triton_backend/all_models/llmapi/tensorrt_llm"
HQC = {
    "producer": {"name": "modelopt", "version": "0.35.0"},
    "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16},
}


def llmapi_standin(base: Path) -> Path:
    """A STAND-IN for TensorRT-LLM's LLM API model directory: its config.pbtxt names the model
    "tensorrt_llm" and uses the Python backend; its 1/model.py is TensorRT-LLM's code."""
    return package_dir(
        base,
        "llmapi-standin",
        {
            "config.pbtxt": 'name: "tensorrt_llm"\nbackend: "python"\nmax_batch_size: 0\n',
            "1/model.py": "# STAND-IN for TensorRT-LLM's LLM API model.py\n",
            "1/helpers.py": "# STAND-IN for its helpers.py\n",
        },
        mode=0o644,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("triton-trtllm")
    golden = load_golden()
    files = tiny_llama_files(seed=17)
    files["hf_quant_config.json"] = json.dumps(HQC).encode()
    DevHub(base / "hub").add_repo(REPO, files)  # the host declares "main"
    pkgs: dict[str, Path] = {
        "triton-inference-server": package_dir(
            base, "triton", {"bin/tritonserver": probe("triton")}
        ),
        **path_packages(base),
    }
    (assemble,) = [p for p in store_paths(render(HOST, UNIT)) if p.endswith("-triton-assemble")]
    pkgs[assemble] = shell_application(
        base,
        "triton-assemble",
        (PROJECT / "nixos" / "triton-assemble.sh").read_text(),
        [golden["packages"]["coreutils"], golden["packages"]["jq"]],
    )
    binds = [*runtime_binds(), (str(llmapi_standin(base)), LLMAPI, True)]
    with serving_world(base, HOST, pkgs, binds=binds) as w:
        yield w


def test_1_unit_is_skipped_before_the_pull(world: World) -> None:
    world.ct.run(["systemctl", "start", UNIT])
    state = world.unit(UNIT)
    assert (state["ActiveState"], state["ConditionResult"]) == ("inactive", "no"), state


def test_2_model_pull_installs_and_starts_triton(world: World) -> None:
    proc = world.model_pull()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"{MODEL}: installed" in out
    state = world.unit(UNIT)
    assert state["ActiveState"] == "active", f"{state}\n{world.ct.journal(UNIT)}"


def test_3_the_llmapi_model_names_the_entrys_snapshot(world: World) -> None:
    _, body = world.wait_serving(UNIT, "http://127.0.0.1:8000/", timeout=300)
    assert world.wait_journal(UNIT, "THIS IS A TEST PROBE, NOT TRITON INFERENCE SERVER")
    (model,) = json.loads(body)["models"]
    assert (model["name"], model["backend"]) == (TRITON_NAME, "tensorrtllm")
    entry = f"/var/lib/inference/store/{Path(world.link(MODEL)).name}"
    hub = (
        world.state
        / "store"
        / Path(entry).name
        / "share/models/hub/models--nvidia--Qwen3-32B-NVFP4"
    )
    snapshot = (
        f"{entry}/share/models/hub/models--nvidia--Qwen3-32B-NVFP4/snapshots/"
        f"{(hub / 'refs/main').read_text()}"
    )
    assert model["model_yaml"] == {
        "backend": "pytorch",
        "model": snapshot,
        "max_seq_len": 40960,
        "max_batch_size": 16,
        "kv_cache_config": {"dtype": "fp8", "free_gpu_memory_fraction": 0.9},
        "triton_config": {"decoupled": True, "max_batch_size": 0},
    }
    checkpoint = model["checkpoint"]
    assert checkpoint["realpath"] == snapshot
    assert checkpoint["quantization"]["quant_algo"] == "NVFP4" and checkpoint["tensors"] > 0
