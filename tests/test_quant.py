"""Quantization detection from metadata files, for every family the check knows."""

from __future__ import annotations

import gguf
import pytest

from _check_models import LLAMA_8B, gguf_model
from model_pull.ggufmeta import read_gguf
from model_pull.quant import Method, Scheme, detect, detect_gguf


def ct(weights, acts=None, kv=None):
    group = {"targets": ["Linear"], "weights": weights, "input_activations": acts}
    out = {"quant_method": "compressed-tensors", "format": "x", "config_groups": {"group_0": group}}
    if kv:
        out["kv_cache_scheme"] = kv
    return out


CASES = [
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, Method.FP8, Scheme.FP8),
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, Method.FP8, Scheme.FP8),
    ({"quant_method": "fbgemm_fp8"}, Method.FBGEMM_FP8, Scheme.FP8),
    (
        {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"},
        Method.AWQ,
        Scheme.INT4,
    ),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, Method.GPTQ, Scheme.INT4),
    ({"quant_method": "gptq", "bits": 8}, Method.GPTQ, Scheme.W8A16),
    (
        {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
        Method.BITSANDBYTES,
        Scheme.BNB,
    ),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, Method.BITSANDBYTES, Scheme.BNB),
    (
        ct({"num_bits": 8, "type": "float"}, {"num_bits": 8, "type": "float"}),
        Method.COMPRESSED_TENSORS,
        Scheme.FP8,
    ),
    (
        ct({"num_bits": 8, "type": "int"}, {"num_bits": 8, "type": "int"}),
        Method.COMPRESSED_TENSORS,
        Scheme.INT8,
    ),
    (ct({"num_bits": 4, "type": "int"}), Method.COMPRESSED_TENSORS, Scheme.INT4),
    (
        ct({"num_bits": 4, "type": "float"}, {"num_bits": 4, "type": "float"}),
        Method.COMPRESSED_TENSORS,
        Scheme.NVFP4,
    ),
    (
        {
            "quant_method": "torchao",
            "quant_type": {"default": {"_type": "Float8DynamicActivationFloat8WeightConfig"}},
        },
        Method.TORCHAO,
        Scheme.FP8,
    ),
    ({"quant_method": "torchao", "quant_type": "int4_weight_only"}, Method.TORCHAO, Scheme.INT4),
    ({"quant_method": "mxfp4"}, Method.MXFP4, Scheme.MXFP4),
    ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, Method.MODELOPT, Scheme.NVFP4),
]


@pytest.mark.parametrize(
    ("qc", "method", "scheme"), CASES, ids=[f"{c[0]['quant_method']}-{c[2].value}" for c in CASES]
)
def test_config_quantization_config(qc, method, scheme):
    q = detect({**LLAMA_8B, "quantization_config": qc})
    assert (q.method, q.scheme) == (method, scheme)
    assert q.dtype == "bfloat16"


def test_compressed_tensors_kv_cache_scheme_is_reported():
    q = detect(
        {
            **LLAMA_8B,
            "quantization_config": ct(
                {"num_bits": 8, "type": "float"},
                {"num_bits": 8, "type": "float"},
                kv={"num_bits": 8, "type": "float"},
            ),
        }
    )
    assert q.kv_cache == "fp8"


@pytest.mark.parametrize(
    ("algo", "scheme", "bits"),
    [
        ("FP8", Scheme.FP8, (8, 8)),
        ("FP8_PB", Scheme.FP8, (8, 8)),
        ("NVFP4", Scheme.NVFP4, (4, 4)),
        ("NVFP4_AWQ", Scheme.NVFP4, (4, 4)),
        ("INT4_AWQ", Scheme.INT4, (4, None)),
        ("W4A8_AWQ", Scheme.W4A8, (4, 8)),
        ("INT8_SQ", Scheme.INT8, (8, 8)),
    ],
)
def test_hf_quant_config_modelopt(algo, scheme, bits):
    hqc = {
        "producer": {"name": "modelopt", "version": "0.35.0"},
        "quantization": {"quant_algo": algo, "kv_cache_quant_algo": "FP8", "group_size": 16},
    }
    q = detect(LLAMA_8B, hqc)
    assert (q.method, q.scheme, q.algo) == (Method.MODELOPT, scheme, algo)
    assert (q.weight_bits, q.activation_bits) == bits
    assert q.kv_cache == "fp8"
    assert q.source == "hf_quant_config.json"


@pytest.mark.parametrize(
    ("dtype", "scheme"),
    [("bfloat16", Scheme.BF16), ("float16", Scheme.F16), ("float32", Scheme.F32)],
)
def test_unquantized_from_torch_dtype_or_dtype(dtype, scheme):
    assert detect({**LLAMA_8B, "torch_dtype": dtype}).scheme is scheme
    cfg = {k: v for k, v in LLAMA_8B.items() if k != "torch_dtype"}
    assert detect({**cfg, "dtype": dtype}).scheme is scheme  # transformers 5 spelling


@pytest.mark.parametrize(
    "config",
    [
        {**LLAMA_8B, "quantization_config": {"quant_method": "hqq"}},
        {**LLAMA_8B, "quantization_config": {"quant_method": "gptq", "bits": 3}},
        {**LLAMA_8B, "quantization_config": ct({"num_bits": 2, "type": "int"})},
        {k: v for k, v in LLAMA_8B.items() if k != "torch_dtype"},
    ],
)
def test_unknown_formats_are_unknown_not_guessed(config):
    q = detect(config)
    assert q.scheme is Scheme.UNKNOWN
    assert dict(q.details)["why"]


def test_unknown_modelopt_algo_is_unknown():
    q = detect(LLAMA_8B, {"quantization": {"quant_algo": "MIXED_PRECISION"}})
    assert q.scheme is Scheme.UNKNOWN


@pytest.mark.parametrize(
    ("ttype", "ftype", "expect"),
    [
        (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16, "F16"),
        (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0, "Q8_0"),
        (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0, "Q4_0"),
        (
            gguf.GGMLQuantizationType.Q4_0,
            None,
            "Q4_0",
        ),  # no general.file_type: the tensor types say
    ],
)
def test_gguf_file_type_and_tensor_types(tmp_path, ttype, ftype, expect):
    info = read_gguf(gguf_model(tmp_path / "m.gguf", ttype, file_type=ftype))
    q = detect_gguf(info)
    assert (q.method, q.scheme, q.algo) == (Method.GGUF, Scheme.GGUF, expect)
    assert f"{ttype.name} x4" in dict(q.details)["tensor_types"]
    assert "F32 x2" in dict(q.details)["tensor_types"]
