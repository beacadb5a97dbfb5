"""`check --runtime trtllm` and the GPU check of a pull for TensorRT-LLM: ModelOpt unified
checkpoints (hf_quant_config.json, or config.json's quantization_config with quant_method
"modelopt"), TensorRT-LLM's hardware matrix, and the FP8 KV cache they declare.

The pulls are the real huggingface_hub client against the loopback Hub (tests/conftest.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from _check_models import hf_model
from model_pull.tinymodels import tiny_llama_files
from test_check_cli import GIB, as_json, run
from test_fetch import error_lines, mp, snapshot

NVFP4_HQC = {
    "producer": {"name": "modelopt", "version": "0.35.0"},
    "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16},
}


@pytest.fixture
def env(model_pull: Any) -> dict[str, str]:
    return dict(model_pull.env)


@pytest.fixture
def nvfp4_repo(new_repo: Any) -> str:
    """A tiny unified checkpoint: a llama with an hf_quant_config.json saying NVFP4 + FP8 KV."""
    files = tiny_llama_files(seed=16)
    files["hf_quant_config.json"] = json.dumps(NVFP4_HQC).encode()
    repo: str = new_repo(files).repo
    return repo


@pytest.mark.parametrize("gpu", ["L4", "H100"])
def test_nvfp4_is_refused_on_ada_and_hopper_before_any_weight_byte(
    gpu: str, nvfp4_repo: str, devhub: Any, env: dict[str, str], tmp_path: Any
) -> None:
    devhub.hub.reset_counters()
    root = tmp_path / "root"
    p = mp(
        env,
        "fetch",
        nvfp4_repo,
        "--runtime",
        "trtllm",
        "--gpu",
        gpu,
        "--root",
        str(root),
        check=False,
    )
    assert p.returncode == 31, p.stderr
    (line,) = error_lines(p.stderr)
    assert "TensorRT-LLM runs NVFP4 on Blackwell only" in line, line
    assert devhub.hub.bytes_served(nvfp4_repo, "model.safetensors") == 0
    assert snapshot(root) == {}


@pytest.mark.parametrize("gpu", ["RTX 5090", "B200"])
def test_nvfp4_passes_on_blackwell_and_is_installed(
    gpu: str, nvfp4_repo: str, env: dict[str, str], tmp_path: Any
) -> None:
    root = tmp_path / "root"
    p = mp(
        env,
        "fetch",
        nvfp4_repo,
        "--runtime",
        "trtllm",
        "--gpu",
        gpu,
        "--layout",
        "hf",
        "--root",
        str(root),
    )
    assert "installed" in p.stdout, p.stdout + p.stderr
    assert not error_lines(p.stderr)


def test_the_report_cites_tensorrt_llms_hardware_matrix(tmp_path: Any) -> None:
    m = hf_model(tmp_path / "nv", hf_quant_config=NVFP4_HQC, weight_bytes=GIB)
    r = run(str(m), "--runtime", "trtllm", "--gpu", "H100", "--context", "4096")
    assert r.returncode == 31
    assert "https://nvidia.github.io/TensorRT-LLM/features/quantization.html" in r.stdout


@pytest.mark.parametrize(("gpu", "code"), [("L4", 31), ("H100", 31), ("RTX 5090", 0), ("B200", 0)])
def test_modelopt_in_config_json_is_recognised(gpu: str, code: int, tmp_path: Any) -> None:
    """A unified checkpoint saved by newer ModelOpt: no hf_quant_config.json, config.json's
    quantization_config says quant_method "modelopt" (and its KV-cache quantization)."""
    m = hf_model(
        tmp_path / "nv",
        {
            "quant_method": "modelopt",
            "quant_algo": "NVFP4",
            "kv_cache_quant_algo": "FP8",
            "group_size": 16,
        },
        weight_bytes=GIB,
    )
    got, out = as_json(str(m), "--runtime", "trtllm", "--gpu", gpu, "--context", "4096")
    assert got == code, out
    q = out["quantization"]
    assert (q["method"], q["algo"], q["kvCache"]) == ("modelopt", "NVFP4", "fp8"), q
    assert out["memory"]["kvCacheDtype"] == "fp8"


def test_an_fp8_kv_cache_halves_the_kv_estimate(tmp_path: Any) -> None:
    """TensorRT-LLM keeps the KV cache in the dtype the checkpoint was calibrated for
    (kv_cache_quant_algo FP8): one byte per element instead of BF16's two."""
    fp8_kv = hf_model(
        tmp_path / "a",
        hf_quant_config={"quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}},
        weight_bytes=4 * GIB,
    )
    bf16_kv = hf_model(
        tmp_path / "b",
        hf_quant_config={"quantization": {"quant_algo": "FP8"}},
        weight_bytes=4 * GIB,
    )
    args = ("--runtime", "trtllm", "--gpu", "H100", "--context", "32768")
    (c1, with_fp8), (c2, without) = as_json(str(fp8_kv), *args), as_json(str(bf16_kv), *args)
    assert (c1, c2) == (0, 0)
    assert with_fp8["memory"]["kvCacheDtype"] == "fp8"
    assert with_fp8["memory"]["kvCache"] * 2 == without["memory"]["kvCache"]
    assert with_fp8["memory"]["kvBytesPerToken"] * 2 == without["memory"]["kvBytesPerToken"]
    # the largest context that fits doubles too (up to the model's own maximum)
    assert with_fp8["memory"]["maxContext"] >= without["memory"]["maxContext"]


def test_tensorrt_llms_memory_fraction_is_of_what_the_weights_leave(tmp_path: Any) -> None:
    """free_gpu_memory_fraction (0.9) is a share of the memory still free after the weights and
    the activations: the weights count whole, not against 90 % of the card as for vLLM."""
    m = hf_model(
        tmp_path / "m",
        hf_quant_config={"quantization": {"quant_algo": "FP8"}},
        weight_bytes=20 * GIB,
    )
    code, out = as_json(str(m), "--runtime", "trtllm", "--gpu", "12.0:32GiB", "--context", "4096")
    assert code == 0, out
    mem, total = out["memory"], out["gpus"][0]["gpu"]["totalBytes"]
    left = total - mem["weights"] - mem["overhead"]
    assert mem["available"] == mem["weights"] + mem["overhead"] + int(left * 0.9)
    _, vllm = as_json(str(m), "--runtime", "vllm", "--gpu", "12.0:32GiB", "--context", "4096")
    assert vllm["memory"]["available"] == int(total * 0.9) < mem["available"]
