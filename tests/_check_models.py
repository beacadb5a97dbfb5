"""Synthetic models for the check tests: HF-style directories and real GGUFs (gguf.GGUFWriter)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np

LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_size": 4096,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
}


def hf_model(
    path: Path,
    quantization_config: dict[str, Any] | None = None,
    *,
    hf_quant_config: dict[str, Any] | None = None,
    weight_bytes: int = 1 << 20,
    **overrides: Any,
) -> Path:
    """A model directory: config.json (+ hf_quant_config.json) and a sparse safetensors file."""
    path.mkdir(parents=True, exist_ok=True)
    config = {**LLAMA_8B, **overrides}
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (path / "config.json").write_text(json.dumps(config))
    if hf_quant_config is not None:
        (path / "hf_quant_config.json").write_text(json.dumps(hf_quant_config))
    with (path / "model.safetensors").open("wb") as fh:
        fh.truncate(weight_bytes)  # sparse: the check reads sizes, never weights
    return path


def gguf_model(
    path: Path,
    tensor_type: gguf.GGMLQuantizationType,
    *,
    file_type: gguf.LlamaFileType | None,
    layers: int = 2,
    context: int = 4096,
    head_count: int = 4,
    head_count_kv: int = 2,
    embd: int = 128,
    vocab_tokens: int = 0,
) -> Path:
    """A llama-architecture GGUF with real tensors of `tensor_type` (norms stay F32)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(context)
    w.add_embedding_length(embd)
    w.add_block_count(layers)
    w.add_feed_forward_length(256)
    w.add_head_count(head_count)
    w.add_head_count_kv(head_count_kv)
    w.add_layer_norm_rms_eps(1e-5)
    if file_type is not None:
        w.add_file_type(file_type)
    if vocab_tokens:
        w.add_tokenizer_model("llama")
        w.add_token_list([f"tok{i:06d}" for i in range(vocab_tokens)])
    rng = np.random.default_rng(0)
    for i in range(layers):
        for name in ("attn_q", "attn_output"):
            data = rng.standard_normal((embd, embd), dtype=np.float32)
            if tensor_type == gguf.GGMLQuantizationType.F16:
                w.add_tensor(f"blk.{i}.{name}.weight", data.astype(np.float16))
            else:
                q = gguf.quants.quantize(data, tensor_type)
                w.add_tensor(f"blk.{i}.{name}.weight", q, raw_dtype=tensor_type)
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(embd, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
