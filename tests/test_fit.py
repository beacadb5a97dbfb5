"""The memory estimate: KV cache arithmetic, KV dtypes, parallel, and the largest context."""

from __future__ import annotations

from typing import Any

import gguf
import pytest

from _check_models import LLAMA_8B, gguf_model
from model_pull.datamodel import Runtime
from model_pull.errors import ExitCode, ModelPullError
from model_pull.fit import GIB, Architecture, estimate, kv_bytes_per_element
from model_pull.ggufmeta import read_gguf


def test_kv_cache_formula_llama_8b():
    arch = Architecture.from_hf_config(LLAMA_8B)
    assert arch is not None
    # 32 layers x 8 KV heads x 128 head dim x 2 (K and V) = 65536 elements per token
    assert arch.kv_elements(1) == 32 * 8 * 128 * 2
    assert arch.max_context == 131072


def test_gguf_llama_keys(tmp_path):
    info = read_gguf(
        gguf_model(
            tmp_path / "m.gguf",
            gguf.GGMLQuantizationType.F16,
            file_type=gguf.LlamaFileType.MOSTLY_F16,
            layers=3,
            context=2048,
            head_count=4,
            head_count_kv=2,
            embd=128,
        )
    )
    arch = Architecture.from_gguf(info)
    assert arch is not None
    assert (arch.layers, arch.kv_heads, arch.head_dim, arch.max_context) == (3, 2, 32, 2048)


def test_hybrid_and_sliding_layers():
    cfg = {
        **LLAMA_8B,
        "num_hidden_layers": 4,
        "sliding_window": 1024,
        "layer_types": [
            "sliding_attention",
            "full_attention",
            "sliding_attention",
            "linear_attention",
        ],
    }
    arch = Architecture.from_hf_config(cfg)
    assert arch is not None
    per = 8 * 128 * 2
    assert arch.kv_elements(8192) == per * (1 * 8192 + 2 * 1024)


@pytest.mark.parametrize(
    ("name", "per_elem"), [("f16", 2.0), ("q8_0", 34 / 32), ("q4_0", 18 / 32), ("f32", 4.0)]
)
def test_llama_server_kv_dtypes(name, per_elem):
    assert kv_bytes_per_element(Runtime.LLAMA_SERVER, name) == (name, per_elem)


def test_vllm_fp8_kv_and_bad_names():
    assert kv_bytes_per_element(Runtime.VLLM, "fp8") == ("fp8", 1.0)
    assert kv_bytes_per_element(Runtime.VLLM, None) == ("auto", 2.0)
    with pytest.raises(ModelPullError) as err:
        kv_bytes_per_element(Runtime.VLLM, "q4_0")
    assert err.value.code is ExitCode.USAGE


def test_parallel_4_multiplies_kv_by_4_and_does_not_fit_32gb():
    # A 27B Q4 GGUF (~16 GiB) on an RTX 5090 (32 GB) with a big context.
    arch = Architecture(layers=64, kv_heads=4, head_dim=256, value_dim=256, max_context=262144)
    avail = 32 * GIB
    common: dict[str, Any] = dict(
        context=65536, kv_per_element=18 / 32, kv_dtype="q4_0", model_max_context=262144
    )
    one = estimate(arch, 16 * GIB, Runtime.LLAMA_SERVER, avail, parallel=1, **common)
    four = estimate(arch, 16 * GIB, Runtime.LLAMA_SERVER, avail, parallel=4, **common)
    assert four.kv_cache == 4 * one.kv_cache
    assert one.fits and not four.fits
    assert four.max_context < 65536 <= one.max_context


def test_max_context_is_the_largest_that_fits():
    arch = Architecture.from_hf_config(LLAMA_8B)
    assert arch is not None
    f = estimate(
        arch,
        8 * GIB,
        Runtime.VLLM,
        20 * GIB,
        context=131072,
        parallel=1,
        kv_per_element=2.0,
        kv_dtype="auto",
        model_max_context=131072,
    )
    per_token = arch.kv_elements(1) * 2
    budget = 20 * GIB - 8 * GIB - 2 * GIB
    assert f.max_context == budget // per_token
    assert f.headroom == budget - 131072 * per_token < 0


def test_max_context_capped_at_model_maximum_and_zero_when_weights_do_not_fit():
    arch = Architecture.from_hf_config(LLAMA_8B)
    roomy = estimate(
        arch,
        GIB,
        Runtime.VLLM,
        200 * GIB,
        context=1024,
        parallel=1,
        kv_per_element=2.0,
        kv_dtype="auto",
        model_max_context=131072,
    )
    assert roomy.max_context == 131072
    full = estimate(
        arch,
        30 * GIB,
        Runtime.VLLM,
        20 * GIB,
        context=1024,
        parallel=1,
        kv_per_element=2.0,
        kv_dtype="auto",
        model_max_context=131072,
    )
    assert full.max_context == 0 and not full.fits
