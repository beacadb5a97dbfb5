"""A model's quantization, detected from its metadata only (config.json, hf_quant_config.json,
the GGUF header). What is not recognised is reported as unknown, never guessed.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from model_pull.ggufmeta import GgufInfo
from model_pull.output import QuantizationJson

logger = logging.getLogger(__name__)


class Method(enum.Enum):
    """How the checkpoint is stored: the loader a runtime must have."""

    NONE = "none"  # plain floating-point checkpoint
    FP8 = "fp8"  # quantization_config.quant_method "fp8" (HF / vLLM fp8)
    FBGEMM_FP8 = "fbgemm_fp8"
    COMPRESSED_TENSORS = "compressed-tensors"  # llm-compressor
    MODELOPT = "modelopt"  # NVIDIA Model Optimizer unified checkpoint (hf_quant_config.json)
    AWQ = "awq"
    GPTQ = "gptq"
    BITSANDBYTES = "bitsandbytes"
    TORCHAO = "torchao"
    MXFP4 = "mxfp4"  # gpt-oss
    GGUF = "gguf"
    UNKNOWN = "unknown"


class Scheme(enum.Enum):
    """What the kernels compute: the thing the GPU generation decides."""

    F32 = "fp32"
    F16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8-w8a8"  # FP8 weights and activations
    W8A16 = "w8a16"  # 8-bit weights (int or fp8), 16-bit activations
    INT8 = "int8-w8a8"
    INT4 = "int4-w4a16"  # AWQ / GPTQ / INT4_AWQ / compressed-tensors W4A16
    W4A8 = "int4-w4a8"
    NVFP4 = "nvfp4"
    MXFP4 = "mxfp4"
    BNB = "bitsandbytes"
    GGUF = "gguf"  # llama.cpp block formats (Q8_0, Q4_K_M, F16 ...)
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Quantization:
    method: Method
    scheme: Scheme
    algo: str  # the name the metadata uses: "NVFP4_AWQ", "awq", "Q4_K_M", "bfloat16" ...
    source: str  # the file it was read from
    weight_bits: int | None = None
    activation_bits: int | None = None
    dtype: str | None = None  # torch_dtype / dtype of the unquantized parts
    kv_cache: str | None = None  # a KV-cache quantization the checkpoint declares (e.g. "fp8")
    details: tuple[tuple[str, str], ...] = field(default=())

    def to_json(self) -> QuantizationJson:
        return {
            "method": self.method.value,
            "scheme": self.scheme.value,
            "algo": self.algo,
            "weightBits": self.weight_bits,
            "activationBits": self.activation_bits,
            "dtype": self.dtype,
            "kvCache": self.kv_cache,
            "source": self.source,
            "details": dict(self.details),
        }


_DTYPES = {
    "bfloat16": Scheme.BF16,
    "bf16": Scheme.BF16,
    "float16": Scheme.F16,
    "fp16": Scheme.F16,
    "half": Scheme.F16,
    "float32": Scheme.F32,
    "fp32": Scheme.F32,
    "float": Scheme.F32,
}

# modelopt quant_algo -> (scheme, weight bits, activation bits): the formats and bits of NVIDIA
# Model Optimizer's support matrix
# (https://nvidia.github.io/TensorRT-Model-Optimizer/guides/0_support_matrix.html).
_MODELOPT: dict[str, tuple[Scheme, int, int | None]] = {
    "FP8": (Scheme.FP8, 8, 8),
    "FP8_PB": (Scheme.FP8, 8, 8),  # per-block scaling
    "FP8_PB_WO": (Scheme.W8A16, 8, None),
    "FP8_PER_CHANNEL_PER_TOKEN": (Scheme.FP8, 8, 8),
    "NVFP4": (Scheme.NVFP4, 4, 4),
    "NVFP4_AWQ": (Scheme.NVFP4, 4, 4),
    "INT4_AWQ": (Scheme.INT4, 4, None),
    "W4A8_AWQ": (Scheme.W4A8, 4, 8),
    "INT8_SQ": (Scheme.INT8, 8, 8),
}


def _dtype_of(config: Mapping[str, Any] | None) -> str | None:
    if not config:
        return None
    for cfg in (config, config.get("text_config") or {}):
        for key in ("torch_dtype", "dtype"):
            value = cfg.get(key) if isinstance(cfg, Mapping) else None
            if isinstance(value, str):
                return value.removeprefix("torch.")
    return None


def _unknown(algo: str, source: str, dtype: str | None, why: str) -> Quantization:
    return Quantization(
        Method.UNKNOWN, Scheme.UNKNOWN, algo, source, dtype=dtype, details=(("why", why),)
    )


def _modelopt(q: Mapping[str, Any], source: str, dtype: str | None) -> Quantization:
    algo = q.get("quant_algo")
    kv = q.get("kv_cache_quant_algo")
    kv_name = str(kv).lower() if kv else None
    details = tuple((k, str(q[k])) for k in ("group_size",) if k in q)
    if algo is None:  # only the KV cache is quantized; weights keep their dtype
        base = _DTYPES.get((dtype or "").lower())
        if base is None:
            return _unknown("modelopt", source, dtype, "no quant_algo and no torch_dtype")
        return Quantization(Method.MODELOPT, base, "none", source, dtype=dtype, kv_cache=kv_name)
    name = str(algo).upper()
    if name not in _MODELOPT:
        return _unknown(
            f"modelopt {algo}",
            source,
            dtype,
            f"modelopt quant_algo {algo!r} is not one this tool knows",
        )
    scheme, wbits, abits = _MODELOPT[name]
    return Quantization(
        Method.MODELOPT, scheme, name, source, wbits, abits, dtype, kv_name, details
    )


def _ct_scheme(group: Mapping[str, Any]) -> tuple[Scheme, int | None, int | None]:
    w = group.get("weights") or {}
    a = group.get("input_activations") or None
    wbits, wtype = w.get("num_bits"), w.get("type")
    abits = a.get("num_bits") if a else None
    atype = a.get("type") if a else None
    table: dict[tuple[Any, Any, Any, Any], Scheme] = {
        (8, "float", 8, "float"): Scheme.FP8,
        (8, "float", None, None): Scheme.W8A16,
        (8, "int", 8, "int"): Scheme.INT8,
        (8, "int", None, None): Scheme.W8A16,
        (4, "int", None, None): Scheme.INT4,
        (4, "int", 8, "int"): Scheme.W4A8,
        (4, "int", 8, "float"): Scheme.W4A8,
        (4, "float", 4, "float"): Scheme.NVFP4,
        (4, "float", None, None): Scheme.NVFP4,
    }
    return table.get((wbits, wtype, abits, atype), Scheme.UNKNOWN), wbits, abits


def _compressed_tensors(q: Mapping[str, Any], source: str, dtype: str | None) -> Quantization:
    groups = q.get("config_groups") or {}
    found = {_ct_scheme(g) for g in groups.values() if isinstance(g, Mapping)}
    kv = q.get("kv_cache_scheme")
    kv_name = None
    if isinstance(kv, Mapping) and kv.get("num_bits") == 8:
        kv_name = "fp8" if kv.get("type") == "float" else "int8"
    fmt = str(q.get("format", ""))
    if len(found) != 1:
        what = (
            "no config_groups"
            if not found
            else "several schemes: " + ", ".join(sorted(s.value for s, _, _ in found))
        )
        return _unknown(f"compressed-tensors {fmt}".strip(), source, dtype, what)
    scheme, wbits, abits = found.pop()
    if scheme is Scheme.UNKNOWN:
        return _unknown(
            f"compressed-tensors {fmt}".strip(),
            source,
            dtype,
            f"weights {wbits} bits / activations {abits} bits is not a known scheme",
        )
    return Quantization(
        Method.COMPRESSED_TENSORS,
        scheme,
        fmt or "compressed-tensors",
        source,
        wbits,
        abits,
        dtype,
        kv_name,
    )


_TORCHAO_FP8 = ("float8", "fp8")


def _torchao(q: Mapping[str, Any], source: str, dtype: str | None) -> Quantization:
    qt = q.get("quant_type")
    # {"default": {"_type": "Float8DynamicActivationFloat8WeightConfig", ...}} or a plain name
    if isinstance(qt, Mapping):
        inner = qt.get("default", next(iter(qt.values()), {}))
        name = str(inner.get("_type", "")) if isinstance(inner, Mapping) else str(inner)
    else:
        name = str(qt or "")
    low = name.lower()
    if any(t in low for t in _TORCHAO_FP8):
        scheme = Scheme.W8A16 if "weightonly" in low.replace("_", "") else Scheme.FP8
        abits = None if scheme is Scheme.W8A16 else 8
        return Quantization(Method.TORCHAO, scheme, name, source, 8, abits, dtype)
    if "int4" in low and "weight" in low and "activation" not in low:
        return Quantization(Method.TORCHAO, Scheme.INT4, name, source, 4, None, dtype)
    if "int8" in low:
        both = "activation" in low
        return Quantization(
            Method.TORCHAO,
            Scheme.INT8 if both else Scheme.W8A16,
            name,
            source,
            8,
            8 if both else None,
            dtype,
        )
    return _unknown(f"torchao {name}".strip(), source, dtype, "torchao quant_type not recognised")


def detect(
    config: Mapping[str, Any] | None,
    hf_quant_config: Mapping[str, Any] | None = None,
) -> Quantization:
    """Quantization of a Hugging Face style checkpoint from its parsed metadata files."""
    dtype = _dtype_of(config)
    if hf_quant_config:
        q = hf_quant_config.get("quantization", hf_quant_config)
        if isinstance(q, Mapping):
            return _modelopt(q, "hf_quant_config.json", dtype)
    qc = (config or {}).get("quantization_config")
    if isinstance(qc, Mapping):
        src = "config.json quantization_config"
        method = str(qc.get("quant_method", "")).lower().replace("_", "-")
        bits = qc.get("bits")
        if method == "fp8":
            details = (
                (("weight_block_size", str(qc["weight_block_size"])),)
                if qc.get("weight_block_size")
                else ()
            )
            return Quantization(Method.FP8, Scheme.FP8, "fp8", src, 8, 8, dtype, details=details)
        if method == "fbgemm-fp8":
            return Quantization(Method.FBGEMM_FP8, Scheme.FP8, "fbgemm_fp8", src, 8, 8, dtype)
        if method in ("awq", "awq-marlin"):
            if bits not in (None, 4):
                return _unknown(f"awq {bits}-bit", src, dtype, "AWQ checkpoints are 4-bit")
            return Quantization(
                Method.AWQ,
                Scheme.INT4,
                "awq",
                src,
                4,
                None,
                dtype,
                details=(("group_size", str(qc.get("group_size"))),),
            )
        if method in ("gptq", "gptq-marlin"):
            scheme = {4: Scheme.INT4, 8: Scheme.W8A16}.get(bits or 4)
            if scheme is None:
                return _unknown(f"gptq {bits}-bit", src, dtype, "only 4- and 8-bit GPTQ are known")
            return Quantization(
                Method.GPTQ,
                scheme,
                "gptq",
                src,
                bits or 4,
                None,
                dtype,
                details=(("group_size", str(qc.get("group_size"))),),
            )
        if method == "bitsandbytes":
            four = bool(qc.get("load_in_4bit"))
            eight = bool(qc.get("load_in_8bit"))
            if four == eight:
                return _unknown("bitsandbytes", src, dtype, "neither load_in_4bit nor load_in_8bit")
            algo = f"bnb 4-bit {qc.get('bnb_4bit_quant_type', 'fp4')}" if four else "bnb 8-bit"
            return Quantization(
                Method.BITSANDBYTES, Scheme.BNB, algo, src, 4 if four else 8, None, dtype
            )
        if method == "compressed-tensors":
            return _compressed_tensors(qc, src, dtype)
        if method == "modelopt":
            return _modelopt(qc, src, dtype)
        if method == "torchao":
            return _torchao(qc, src, dtype)
        if method == "mxfp4":
            return Quantization(Method.MXFP4, Scheme.MXFP4, "mxfp4", src, 4, None, dtype)
        return _unknown(
            str(qc.get("quant_method", "?")),
            src,
            dtype,
            f"quant_method {qc.get('quant_method')!r} is not one this tool knows",
        )
    if config is None:
        return _unknown("?", "-", None, "no config.json")
    base = _DTYPES.get((dtype or "").lower())
    if base is None:
        why = "config.json has no torch_dtype/dtype" if dtype is None else f"dtype {dtype!r}"
        return _unknown(dtype or "?", "config.json", dtype, why)
    return Quantization(Method.NONE, base, dtype or "", "config.json", None, None, dtype)


def detect_gguf(info: GgufInfo) -> Quantization:
    """Quantization of a GGUF file: general.file_type, and the tensor types actually present."""
    types = ", ".join(f"{name} x{count}" for name, count, _ in info.tensor_types)
    details = (("tensor_types", types),)
    if info.file_type is not None:
        return Quantization(
            Method.GGUF, Scheme.GGUF, info.file_type, "GGUF general.file_type", details=details
        )
    if not info.tensor_types:
        return Quantization(Method.GGUF, Scheme.UNKNOWN, "?", "GGUF header", details=details)
    # No general.file_type: name the type holding most of the bytes (a fact, not a guess).
    main = max(info.tensor_types, key=lambda t: t[2])[0]
    return Quantization(Method.GGUF, Scheme.GGUF, main, "GGUF tensor types", details=details)
