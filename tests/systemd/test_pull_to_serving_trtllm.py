"""Host rtx5090-nvfp4's TensorRT-LLM unit (a ModelOpt unified checkpoint, layout `hf`), gated,
started by `model-pull`, and reading what it was given, in a real systemd.

TensorRT-LLM cannot run or even be imported here (no GPU, and PyPI has only a stub that
downloads from pypi.nvidia.com: tests/systemd/trtllm_serve_standin.py). Its `trtllm-serve` is
tests/systemd/runtime_probe.py, which says loudly that it is a probe: it parses the unit's
command line with the named stand-in of trtllm-serve's click parser, reads the YAML options
file, the checkpoint (config.json, hf_quant_config.json, safetensors headers, tokenizer) and
writes into each cache directory of the unit's environment. The unit file, its ExecStart
launcher (nixos/trtllm-serve-snapshot.sh) and its YAML file are as NixOS renders them
(tests/nix/golden.json). The model is a tiny llama with an hf_quant_config.json saying NVFP4
with an FP8 KV cache, under the declared repo's name; model-pull's GPU check finds no GPU here,
says so, and packages it (the check belongs to the target: `model-pull check --gpu`).
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

HOST = "rtx5090-nvfp4"
UNIT = "trtllm-qwen.service"
MODEL, REPO, SERVED, PORT = "qwen3-32b-nvfp4", "nvidia/Qwen3-32B-NVFP4", "qwen3-32b", 8000
CACHE = "/var/cache/inference/trtllm-qwen"
HQC = {
    "producer": {"name": "modelopt", "version": "0.35.0"},
    "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("trtllm")
    golden = load_golden()
    files = tiny_llama_files(seed=16)
    files["hf_quant_config.json"] = json.dumps(HQC).encode()
    # the host declares the branch "main", which the loopback Hub has
    DevHub(base / "hub").add_repo(REPO, files)
    pkgs: dict[str, Path] = {
        "tensorrt-llm": package_dir(base, "tensorrt-llm", {"bin/trtllm-serve": probe("trtllm")}),
        **path_packages(base),
    }
    paths = store_paths(render(HOST, UNIT))
    (launcher,) = [p for p in paths if p.endswith("-trtllm-serve-snapshot")]
    pkgs[launcher] = shell_application(
        base,
        "trtllm-serve-snapshot",
        (PROJECT / "nixos" / "trtllm-serve-snapshot.sh").read_text(),
        [golden["packages"]["coreutils"]],
    )
    # the YAML file of --extra_llm_api_options (pkgs.formats.yaml; JSON is YAML)
    (options,) = [p for p in paths if p.endswith("-llm-api-options.yaml")]
    yaml_file = base / "llm-api-options.yaml"
    yaml_file.write_text(json.dumps(golden["hosts"][HOST]["trtllmLlmApiOptions"]["qwen"]))
    yaml_file.chmod(0o444)
    pkgs[options] = yaml_file
    with serving_world(base, HOST, pkgs, binds=runtime_binds()) as w:
        yield w


def test_1_unit_is_skipped_before_the_pull(world: World) -> None:
    world.ct.run(["systemctl", "start", UNIT])
    state = world.unit(UNIT)
    assert (state["ActiveState"], state["ConditionResult"]) == ("inactive", "no"), state


def test_2_model_pull_installs_the_unified_checkpoint_and_starts_the_unit(world: World) -> None:
    proc = world.model_pull()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"{MODEL}: installed" in out
    state = world.unit(UNIT)
    assert state["ActiveState"] == "active", f"{state}\n{world.ct.journal(UNIT)}"


def test_3_trtllm_serve_reads_the_snapshot_its_flags_and_its_yaml(world: World) -> None:
    _, body = world.wait_serving(UNIT, f"http://127.0.0.1:{PORT}/", timeout=300)
    assert world.wait_journal(UNIT, "THIS IS A TEST PROBE, NOT TENSORRT-LLM")
    info = json.loads(body)
    args, model = info["args"], info["model"]
    entry = f"/var/lib/inference/store/{Path(world.link(MODEL)).name}"
    # the launcher resolved the entry once and passed the snapshot refs/main names
    commit = (
        world.state
        / "store"
        / Path(entry).name
        / "share/models/hub"
        / "models--nvidia--Qwen3-32B-NVFP4/refs/main"
    ).read_text()
    snapshot = f"{entry}/share/models/hub/models--nvidia--Qwen3-32B-NVFP4/snapshots/{commit}"
    assert args["model"] == snapshot and model["realpath"] == snapshot
    assert (args["host"], args["port"], args["served_model_name"]) == ("127.0.0.1", PORT, SERVED)
    assert (args["max_seq_len"], args["max_batch_size"]) == (40960, 8)
    assert args["llm_api_options"] == {
        "kv_cache_config": {"dtype": "fp8", "free_gpu_memory_fraction": 0.9}
    }
    # the unified checkpoint as TensorRT-LLM reads it
    assert model["quantization"]["quant_algo"] == "NVFP4"
    assert model["quantization"]["kv_cache_quant_algo"] == "FP8"
    assert model["model_type"] == "llama" and model["tensors"] > 0 and model["tokenizer"]
    # every cache in the unit's CacheDirectory, writable: no /homeless-shelter
    for var, path in info["caches"].items():
        assert path == CACHE or path.startswith(CACHE + "/"), (var, path)
    assert world.unit(UNIT)["NRestarts"] == "0"


def test_4_stop_ends_the_unit(world: World) -> None:
    world.ct.run(["systemctl", "stop", UNIT], timeout=120)
    state = world.unit(UNIT)
    assert (state["ActiveState"], state["MainPID"]) == ("inactive", "0"), state
