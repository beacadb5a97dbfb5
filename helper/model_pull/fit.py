"""The memory estimate: weights + KV cache + a stated runtime overhead, against the share of the
GPU's memory the runtime takes.

KV cache = attention layers x KV heads x (key dim + value dim) x bytes per element x context x
parallel sequences (key dim = value dim = head dim for most models: the "x 2" of the usual formula).
Sliding-window layers hold at most the window; linear-attention/SSM layers hold no KV cache.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from model_pull.datamodel import Runtime
from model_pull.errors import ExitCode, ModelPullError
from model_pull.ggufmeta import GgufInfo
from model_pull.output import ArchitectureJson, FitJson

logger = logging.getLogger(__name__)

GIB = 1024**3


@dataclass(frozen=True)
class Architecture:
    """The attention shape that sizes the KV cache."""

    layers: int  # layers holding a full-context KV cache
    kv_heads: int
    head_dim: int  # key dim (value dim below when it differs)
    value_dim: int
    max_context: int | None
    sliding_layers: int = 0
    sliding_window: int | None = None
    mla_dim: int | None = None  # DeepSeek MLA: one latent of this size per token and layer

    def kv_elements(self, context: int) -> int:
        """KV-cache elements for ONE sequence of `context` tokens."""
        if self.mla_dim is not None:
            return (self.layers + self.sliding_layers) * self.mla_dim * context
        per_layer = self.kv_heads * (self.head_dim + self.value_dim)
        window = min(context, self.sliding_window or context)
        return per_layer * (self.layers * context + self.sliding_layers * window)

    def to_json(self) -> ArchitectureJson:
        return {
            "layers": self.layers,
            "kvHeads": self.kv_heads,
            "headDim": self.head_dim,
            "valueDim": self.value_dim,
            "maxContext": self.max_context,
            "slidingLayers": self.sliding_layers,
            "slidingWindow": self.sliding_window,
            "mlaDim": self.mla_dim,
        }

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> Architecture | None:
        cfg = config
        if "num_hidden_layers" not in cfg and isinstance(cfg.get("text_config"), Mapping):
            cfg = cfg["text_config"]
        try:
            n_layers = int(cfg["num_hidden_layers"])
            heads = int(cfg["num_attention_heads"])
            kv_heads = int(cfg.get("num_key_value_heads") or heads)
            head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None
        max_ctx = cfg.get("max_position_embeddings")
        window = cfg.get("sliding_window")
        layer_types = cfg.get("layer_types")
        full, sliding = n_layers, 0
        if isinstance(layer_types, list) and len(layer_types) == n_layers:
            full = sum(1 for t in layer_types if t == "full_attention")
            sliding = sum(1 for t in layer_types if t == "sliding_attention")
        elif cfg.get("full_attention_interval"):  # hybrid linear attention (Qwen3-Next style)
            full = n_layers // int(cfg["full_attention_interval"])
        mla = None
        if cfg.get("kv_lora_rank"):
            mla = int(cfg["kv_lora_rank"]) + int(cfg.get("qk_rope_head_dim") or 0)
        value_dim = int(cfg.get("v_head_dim") or head_dim)
        return cls(
            full,
            kv_heads,
            head_dim,
            value_dim,
            int(max_ctx) if max_ctx else None,
            sliding,
            int(window) if (window and sliding) else None,
            mla,
        )

    @classmethod
    def from_gguf(cls, info: GgufInfo) -> Architecture | None:
        """From the `<arch>.*` keys (llama.block_count, llama.attention.head_count_kv, ...)."""
        try:
            layers = int(info.key("block_count"))
            heads = info.key("attention.head_count")
            heads = max(heads) if isinstance(heads, list) else int(heads)
            kv = info.key("attention.head_count_kv")
            per_layer_kv: list[int] = kv if isinstance(kv, list) else [int(kv if kv else heads)]
            embd = int(info.key("embedding_length"))
        except (TypeError, ValueError):
            return None
        head_dim = int(info.key("attention.key_length") or embd // heads)
        value_dim = int(info.key("attention.value_length") or head_dim)
        ctx = info.key("context_length")
        if len(per_layer_kv) > 1:  # per-layer list: 0 for layers without attention (hybrids)
            attn = [k for k in per_layer_kv if k]
            return cls(
                len(attn), max(attn) if attn else 0, head_dim, value_dim, int(ctx) if ctx else None
            )
        return cls(layers, per_layer_kv[0], head_dim, value_dim, int(ctx) if ctx else None)


# Bytes per KV element. llama.cpp block types: Q8_0 = 34 bytes / 32, Q4_0 = 18/32, Q4_1 = 20/32,
# Q5_0 = 22/32, Q5_1 = 24/32, IQ4_NL = 18/32 (ggml-common.h). vLLM fp8 = 1 byte.
KV_DTYPES: dict[str, float] = {
    "f32": 4.0,
    "float32": 4.0,
    "f16": 2.0,
    "float16": 2.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "bfloat16": 2.0,
    "auto": 2.0,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
    "fp8_inc": 1.0,
    "int8": 1.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}
LLAMA_KV = frozenset({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"})
VLLM_KV = frozenset({"auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc"})


@dataclass(frozen=True)
class RuntimeMemory:
    fraction: float  # share of total GPU memory the runtime may use
    fraction_source: str
    overhead: int  # bytes beyond weights and KV cache (CUDA context, activations, graphs)
    overhead_source: str
    default_kv: str
    default_parallel: int


# The stated planning figures. Overheads are estimates for the non-weight, non-KV memory a
# runtime holds at its defaults: CUDA context (~0.3-0.5 GiB), activation peak of the profiling
# run, CUDA graphs. They are printed with every answer.
RUNTIME_MEMORY: dict[Runtime, RuntimeMemory] = {
    Runtime.LLAMA_SERVER: RuntimeMemory(
        1.0,
        "llama-server allocates what it needs, no fraction (-ngl 99: all layers on the GPU)",
        int(0.75 * GIB),
        "CUDA context + compute buffers at the default batch sizes (estimate)",
        "f16",
        4,
    ),  # llama-server's default --parallel (-np) is 4 slots
    Runtime.VLLM: RuntimeMemory(
        0.9,
        "vLLM gpu_memory_utilization default 0.9",
        2 * GIB,
        "CUDA context + profiling-run activations + CUDA graphs (estimate)",
        "auto",
        1,
    ),
    Runtime.TRITON: RuntimeMemory(
        0.9,
        "vLLM backend: gpu_memory_utilization default 0.9 (model.json)",
        2 * GIB,
        "as vLLM, plus Triton's own context (estimate)",
        "auto",
        1,
    ),
    Runtime.SGLANG: RuntimeMemory(
        0.85,
        "SGLang mem_fraction_static (its default depends on the GPU; 0.85 planned)",
        2 * GIB,
        "CUDA context + activations + CUDA graphs (estimate)",
        "auto",
        1,
    ),
    Runtime.TRTLLM: RuntimeMemory(
        0.9,
        "TensorRT-LLM KvCacheConfig free_gpu_memory_fraction default 0.9",
        int(1.5 * GIB),
        "CUDA context + engine activations (estimate)",
        "auto",
        1,
    ),
}


def kv_bytes_per_element(runtime: Runtime, kv_dtype: str | None) -> tuple[str, float]:
    """The KV dtype actually used, and its bytes per element. Bad names are usage errors."""
    name = (kv_dtype or RUNTIME_MEMORY[runtime].default_kv).lower()
    allowed = LLAMA_KV if runtime is Runtime.LLAMA_SERVER else VLLM_KV
    if name not in allowed:
        raise ModelPullError(
            ExitCode.USAGE,
            f"--kv-cache-dtype {name!r} is not one {runtime.value} accepts",
            hint="use one of " + ", ".join(sorted(allowed)),
        )
    return name, KV_DTYPES[name]


@dataclass(frozen=True)
class Fit:
    weights: int
    kv_cache: int
    overhead: int
    available: int
    headroom: int  # available - needed; negative: does not fit
    max_context: int  # the largest context that fits with this parallel count (0: none)
    context: int
    parallel: int
    kv_dtype: str
    kv_per_token: float  # bytes per token per sequence

    @property
    def fits(self) -> bool:
        return self.headroom >= 0

    def to_json(self) -> FitJson:
        return {
            "weights": self.weights,
            "kvCache": self.kv_cache,
            "overhead": self.overhead,
            "available": self.available,
            "headroom": self.headroom,
            "maxContext": self.max_context,
            "context": self.context,
            "parallel": self.parallel,
            "kvCacheDtype": self.kv_dtype,
            "kvBytesPerToken": round(self.kv_per_token, 2),
            "fits": self.fits,
        }


def available_bytes(runtime: Runtime, total: int, free: int | None) -> int:
    """Memory the runtime may use: its fraction of the total, never more than what is free now."""
    share = int(total * RUNTIME_MEMORY[runtime].fraction)
    return min(share, free) if free is not None else share


def estimate(
    arch: Architecture | None,
    weights: int,
    runtime: Runtime,
    available: int,
    *,
    context: int,
    parallel: int,
    kv_per_element: float,
    kv_dtype: str,
    model_max_context: int | None,
) -> Fit:
    overhead = RUNTIME_MEMORY[runtime].overhead
    if arch is None:
        kv, per_token = 0, 0.0
    else:
        kv = int(arch.kv_elements(context) * kv_per_element * parallel)
        per_token = arch.kv_elements(1) * kv_per_element
    headroom = available - weights - overhead - kv
    budget = available - weights - overhead
    max_ctx = _max_context(arch, budget, parallel, kv_per_element, model_max_context)
    return Fit(
        weights, kv, overhead, available, headroom, max_ctx, context, parallel, kv_dtype, per_token
    )


def _max_context(
    arch: Architecture | None, budget: int, parallel: int, per_elem: float, cap: int | None
) -> int:
    if budget <= 0 or arch is None:
        return 0
    ceiling = cap or 1 << 24

    def fits(ctx: int) -> bool:
        return arch.kv_elements(ctx) * per_elem * parallel <= budget

    if fits(ceiling):
        return ceiling
    lo, hi = 0, ceiling  # kv_elements is monotonic in the context: bisect
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
