"""The compatibility table against the public tables it follows (vLLM's supported hardware, NVIDIA
Model Optimizer's support matrix), and builds compiled for some SMs."""

from __future__ import annotations

import pytest

from model_pull.compat import TABLE, PackageArch, Support, code_sm, decide
from model_pull.datamodel import Runtime
from model_pull.gpu import Sm
from model_pull.quant import Method, Scheme

N, E, X, U = Support.NATIVE, Support.EMULATED, Support.UNSUPPORTED, Support.UNKNOWN
SMS = ["7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0"]

# vLLM's supported-hardware and FP8 pages, Transformer Engine (BF16) and Model Optimizer (NVFP4),
# read row by row (FP8 W8A8 / AWQ / GPTQ / INT8 / FP16 / BF16 / NVFP4).
HARDWARE: dict[tuple[Method, Scheme, str], list[Support]] = {
    (Method.FP8, Scheme.FP8, "fp8"): [E, E, E, N, N, N, N],
    (Method.AWQ, Scheme.INT4, "awq"): [N, N, N, N, N, N, N],
    (Method.GPTQ, Scheme.INT4, "gptq"): [N, N, N, N, N, N, N],
    (Method.COMPRESSED_TENSORS, Scheme.INT8, "int-quantized"): [N, N, N, N, N, N, N],
    (Method.NONE, Scheme.F16, "float16"): [N, N, N, N, N, N, N],
    (Method.NONE, Scheme.BF16, "bfloat16"): [E, N, N, N, N, N, N],
    (Method.MODELOPT, Scheme.NVFP4, "NVFP4"): [X, X, X, X, X, N, N],
}


@pytest.mark.parametrize("key", list(HARDWARE), ids=[k[2] for k in HARDWARE])
@pytest.mark.parametrize("runtime", [Runtime.VLLM, Runtime.SGLANG, Runtime.TRITON])
def test_hardware_table_for_vllm_kernels(key, runtime):
    method, scheme, algo = key
    got = [decide(runtime, method, scheme, algo, Sm.parse(s)).support for s in SMS]
    assert got == HARDWARE[key]


def test_fp8_on_ampere_says_marlin_w8a16():
    d = decide(Runtime.VLLM, Method.FP8, Scheme.FP8, "fp8", Sm(8, 6))
    assert d.support is E and "Marlin" in d.how
    assert "https://docs.vllm.ai/en/stable/features/quantization/fp8/" in d.source


def test_torchao_fp8_needs_sm89_no_marlin_fallback():
    assert decide(Runtime.VLLM, Method.TORCHAO, Scheme.FP8, "x", Sm(8, 6)).support is X
    assert decide(Runtime.VLLM, Method.TORCHAO, Scheme.FP8, "x", Sm(8, 9)).support is N


@pytest.mark.parametrize(("sm", "want"), [("8.6", X), ("8.9", N), ("9.0", N), ("10.0", N)])
def test_w4a8_awq_needs_ada_on_trtllm(sm, want):
    assert (
        decide(Runtime.TRTLLM, Method.MODELOPT, Scheme.W4A8, "W4A8_AWQ", Sm.parse(sm)).support
        is want
    )


@pytest.mark.parametrize("algo", ["INT4_AWQ", "W4A8_AWQ", "NVFP4_AWQ", "INT8_SQ", "FP8_PB"])
def test_modelopt_formats_vllm_does_not_serve(algo):
    d = decide(Runtime.VLLM, Method.MODELOPT, Scheme.INT4, algo, Sm(10, 0))
    assert d.support is X and "deployment/3_unified_hf.html" in d.source


def test_modelopt_fp8_served_by_vllm_and_trtllm_on_hopper():
    for rt in (Runtime.VLLM, Runtime.SGLANG, Runtime.TRTLLM):
        assert decide(rt, Method.MODELOPT, Scheme.FP8, "FP8", Sm(9, 0)).support is N


def test_trtllm_fp8_before_ada_is_unsupported_not_emulated():
    assert decide(Runtime.TRTLLM, Method.MODELOPT, Scheme.FP8, "FP8", Sm(8, 0)).support is X


def test_llama_server_refuses_safetensors_and_runs_gguf_everywhere():
    assert decide(Runtime.LLAMA_SERVER, Method.NONE, Scheme.BF16, "bf16", Sm(9, 0)).support is X
    assert decide(Runtime.LLAMA_SERVER, Method.UNKNOWN, Scheme.UNKNOWN, "?", Sm(9, 0)).support is X
    for s in SMS:
        assert (
            decide(Runtime.LLAMA_SERVER, Method.GGUF, Scheme.GGUF, "Q4_0", Sm.parse(s)).support is N
        )


def test_unknown_quantization_and_missing_rows_are_unknown():
    assert decide(Runtime.VLLM, Method.UNKNOWN, Scheme.UNKNOWN, "hqq", Sm(9, 0)).support is U
    assert decide(Runtime.VLLM, Method.NONE, Scheme.BF16, "bf16", Sm(6, 1)).support is U
    assert decide(Runtime.TRTLLM, Method.AWQ, Scheme.INT4, "awq", Sm(9, 0)).support is U


def test_every_row_names_its_public_source():
    assert all(r.source == "-" or "(https://" in r.source for r in TABLE)


A = PackageArch.parse


@pytest.mark.parametrize(
    ("gpu", "arches", "fwd", "code"),
    [
        ("9.0", "9.0", True, "9.0"),  # exact cubin
        ("8.6", "8.0", True, "8.0"),  # same major: sm_80 cubin runs on 8.6
        ("8.9", "8.0,8.6", True, "8.6"),
        ("12.0", "8.9,9.0", True, "9.0"),  # PTX compute_90 JIT on Blackwell
        ("8.6", "8.9,9.0", True, None),  # PTX does not run downward
        ("12.0", "8.9,9.0", False, None),  # no PTX without cudaForwardCompat
        ("9.0", "9.0a", True, "9.0"),
        ("10.3", "10.0f", True, "10.0"),  # family-specific
        ("10.3", "10.0a", True, None),  # arch-specific: exact SM only, no PTX
    ],
)
def test_code_sm(gpu, arches, fwd, code):
    got = code_sm(Sm.parse(gpu), tuple(A(a) for a in arches.split(",")), fwd)
    assert got.sm == (Sm.parse(code) if code else None)
    assert got.how
