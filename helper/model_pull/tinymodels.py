"""Tiny reproducible models: a llama-like HF repo, a llama GGUF, and big synthetic weights.

Same arguments and seed => byte-identical files (no timestamps, sorted JSON, weights from a
seeded hash stream). The HF repo is written by hand (safetensors header + raw bf16/fp8 bytes;
tokenizer.json as plain JSON) so this module needs no numpy, torch or tokenizers; the GGUF
uses the ``gguf`` package (a runtime dependency) and numpy (which ``gguf`` depends on).

Both share one SentencePiece-style vocabulary: ``<unk>``, ``<s>``, ``</s>``, the 256 byte
tokens ``<0x00>``..``<0xFF>``, ``▁`` and the printable ASCII characters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SPIECE_SPACE = "\u2581"  # '▁', SentencePiece's word boundary marker


@dataclass(frozen=True)
class LlamaShape:
    """The tiny llama's dimensions (shared by the HF repo and the GGUF)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    context: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# Head size 32, the smallest vLLM's CPU attention runs (32, 64, 80, 96, 112, 128, ...; with head
# size 16 the engine starts, lists the model, and dies on the first completion) and the
# smallest llama-server's `-ctk q8_0` takes.
# Its context is as long as the contexts the example hosts give the real models (vLLM refuses a
# --max-model-len beyond the model's max_position_embeddings); it costs nothing until used.
HF_SHAPE = LlamaShape(hidden=128, layers=2, heads=4, kv_heads=2, ffn=256, context=32768)
# The FP8 variant: vLLM's block-wise FP8 (`weight_block_size` [128, 128]) loads only when every
# quantized projection (q/k/v/o, gate/up/down) is a whole number of 128x128 blocks: hidden 256,
# head size 64, K/V 2 x 64 = 128, ffn 512.
FP8_SHAPE = LlamaShape(hidden=256, layers=2, heads=4, kv_heads=2, ffn=512, context=32768)
GGUF_SHAPE = LlamaShape(hidden=128, layers=2, heads=4, kv_heads=2, ffn=256)
# A smaller draft model for speculative decoding (`-md`): same vocabulary, head size 32.
DRAFT_GGUF_SHAPE = LlamaShape(hidden=64, layers=1, heads=2, kv_heads=1, ffn=128)

FP8_QUANTIZATION_CONFIG: dict[str, Any] = {
    "quant_method": "fp8",
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "weight_block_size": [128, 128],
}


def vocabulary() -> list[str]:
    """The shared vocabulary, in id order: unk=0, bos=1, eos=2, bytes, '▁', printable ASCII."""
    tokens = ["<unk>", "<s>", "</s>"]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    tokens.append(SPIECE_SPACE)
    tokens += [chr(c) for c in range(0x21, 0x7F)]
    return tokens


# ---- deterministic bytes -------------------------------------------------------------------


def _stream(seed: int, label: str, n: int) -> bytes:
    """n pseudo-random bytes for (seed, label); SHAKE-256, so any length in one call."""
    return hashlib.shake_256(f"tinymodels:{seed}:{label}".encode()).digest(n)


def _bf16_weights(seed: int, label: str, count: int) -> bytes:
    """Small finite bf16 values (|x| in [2^-8, 2^-4)), random sign and mantissa."""
    raw = _stream(seed, label, 2 * count)
    out = bytearray(2 * count)
    for i in range(count):
        r0, r1 = raw[2 * i], raw[2 * i + 1]
        bits = ((r0 & 0x80) << 8) | ((119 + (r0 & 3)) << 7) | (r1 & 0x7F)
        out[2 * i : 2 * i + 2] = bits.to_bytes(2, "little")
    return bytes(out)


def _fp8_e4m3_weights(seed: int, label: str, count: int) -> bytes:
    """Finite float8_e4m3fn values (exponent field 1..14, never the NaN pattern)."""
    raw = _stream(seed, label, count)
    return bytes((b & 0x80) | ((1 + (b >> 3) % 14) << 3) | (b & 0x07) for b in raw)


def _bf16_ones(count: int) -> bytes:
    return b"\x80\x3f" * count


def _f32(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


# ---- safetensors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes


def safetensors_bytes(tensors: list[_Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file: u64 LE header length, JSON header (space-padded to 8), raw data."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(t.data)],
        }
        offset += len(t.data)
    blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + b"".join(t.data for t in tensors)


def _llama_tensors(shape: LlamaShape, vocab: int, seed: int, fp8: bool) -> list[_Tensor]:
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    tensors: list[_Tensor] = []

    def matrix(name: str, rows: int, cols: int, quantized: bool) -> None:
        if quantized:
            tensors.append(
                _Tensor(name, "F8_E4M3", (rows, cols), _fp8_e4m3_weights(seed, name, rows * cols))
            )
            blocks = (-(-rows // 128), -(-cols // 128))
            scale = _f32([1.0 / 448.0] * (blocks[0] * blocks[1]))
            tensors.append(_Tensor(f"{name}_scale_inv", "F32", blocks, scale))
        else:
            tensors.append(
                _Tensor(name, "BF16", (rows, cols), _bf16_weights(seed, name, rows * cols))
            )

    def norm(name: str) -> None:
        tensors.append(_Tensor(name, "BF16", (h,), _bf16_ones(h)))

    matrix("model.embed_tokens.weight", vocab, h, quantized=False)
    for i in range(shape.layers):
        p = f"model.layers.{i}"
        norm(f"{p}.input_layernorm.weight")
        norm(f"{p}.post_attention_layernorm.weight")
        matrix(f"{p}.self_attn.q_proj.weight", h, h, fp8)
        matrix(f"{p}.self_attn.k_proj.weight", kv, h, fp8)
        matrix(f"{p}.self_attn.v_proj.weight", kv, h, fp8)
        matrix(f"{p}.self_attn.o_proj.weight", h, h, fp8)
        matrix(f"{p}.mlp.gate_proj.weight", shape.ffn, h, fp8)
        matrix(f"{p}.mlp.up_proj.weight", shape.ffn, h, fp8)
        matrix(f"{p}.mlp.down_proj.weight", h, shape.ffn, fp8)
    norm("model.norm.weight")
    matrix("lm_head.weight", vocab, h, quantized=False)
    return tensors


# ---- the HF repo ---------------------------------------------------------------------------


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _tokenizer_json(tokens: list[str]) -> dict[str, Any]:
    """A Llama-2-style tokenizer.json: BPE with byte fallback, no merges."""
    specials = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, tok in enumerate(tokens[:3])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": specials,
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": SPIECE_SPACE},
                {"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_SPACE},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<s>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": SPIECE_SPACE}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": [],
        },
    }


def tiny_llama_files(*, seed: int = 0, quantization: str | None = None) -> dict[str, bytes]:
    """The files of the tiny llama repo, in memory (name -> bytes)."""
    if quantization not in (None, "fp8"):
        raise ValueError(f"unknown quantization {quantization!r}; use None or 'fp8'")
    shape, tokens = FP8_SHAPE if quantization == "fp8" else HF_SHAPE, vocabulary()
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.ffn,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": shape.context,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "vocab_size": len(tokens),
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if quantization == "fp8":
        config["quantization_config"] = dict(FP8_QUANTIZATION_CONFIG)
    generation = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False, "max_length": 64}
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    tokenizer_config = {
        **special,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": shape.context,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
    }
    tensors = _llama_tensors(shape, len(tokens), seed, fp8=quantization == "fp8")
    return {
        "config.json": _dump(config),
        "generation_config.json": _dump(generation),
        "special_tokens_map.json": _dump(special),
        "tokenizer.json": _dump(_tokenizer_json(tokens)),
        "tokenizer_config.json": _dump(tokenizer_config),
        "model.safetensors": safetensors_bytes(tensors, {"format": "pt"}),
    }


def write_tiny_llama(
    dst: Path, *, seed: int = 0, quantization: str | None = None
) -> dict[str, Path]:
    """Write a llama-like HF repo (config, tokenizer, model.safetensors) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, data in tiny_llama_files(seed=seed, quantization=quantization).items():
        path = dst / name
        path.write_bytes(data)
        written[name] = path
    logger.debug("wrote tiny llama (seed %d, %s) to %s", seed, quantization, dst)
    return written


# ---- GGUF ----------------------------------------------------------------------------------


def write_tiny_gguf(
    path: Path, *, seed: int = 0, name: str = "tiny", shape: LlamaShape = GGUF_SHAPE
) -> Path:
    """A llama-architecture GGUF with random F16 weights that llama-server loads (~0.6 MB)."""
    import gguf
    import numpy as np

    tokens = vocabulary()
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (len(tokens) - len(types))
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]

    rng = np.random.default_rng(seed)
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim

    def weight(rows: int, cols: int) -> Any:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def ones() -> Any:
        return np.ones(h, dtype=np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(h)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    writer.add_tensor("token_embd.weight", weight(len(tokens), h))
    for i in range(shape.layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones())
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(h, h))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv, h))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv, h))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(h, h))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones())
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(shape.ffn, h))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(shape.ffn, h))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(h, shape.ffn))
    writer.add_tensor("output_norm.weight", ones())
    writer.add_tensor("output.weight", weight(len(tokens), h))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    logger.debug("wrote tiny gguf %s (seed %d)", path, seed)
    return path


# ---- big synthetic weights -----------------------------------------------------------------

_BLOCK = 1024 * 1024


def _blocks(seed: int, label: str, n: int) -> Iterator[bytes]:
    """n bytes: one random 1 MiB block, each repeat stamped with its counter (not dedupable)."""
    block = bytearray(_stream(seed, label, _BLOCK))
    counter = 0
    while n > 0:
        block[:8] = counter.to_bytes(8, "little")
        take = min(n, _BLOCK)
        yield bytes(block[:take]) if take < _BLOCK else bytes(block)
        n -= take
        counter += 1


def _u8_header(tensor: str, n: int) -> bytes:
    meta = {"__metadata__": {}, tensor: {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}
    blob = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob


def synthetic_weights(
    dst: Path, total_bytes: int, files: int = 1, *, seed: int = 0
) -> dict[str, Path]:
    """Write ``files`` valid safetensors files (one U8 tensor each) of about total_bytes in all.

    For benchmarks: about 1 GB/s, content deterministic and different per block and per file.
    With several files a ``model.safetensors.index.json`` maps each tensor to its file.
    """
    if files < 1 or total_bytes < files * 64:
        raise ValueError("need files >= 1 and at least 64 bytes per file")
    dst.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    weight_map: dict[str, str] = {}
    per_file = total_bytes // files
    for i in range(files):
        fname = (
            "model.safetensors" if files == 1 else f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        )
        tensor = f"synthetic.{i}"
        size = per_file + (total_bytes - per_file * files if i == files - 1 else 0)
        # The header's length depends on the digits of the data size: iterate to a fixed point.
        data_len = size
        header = _u8_header(tensor, data_len)
        while len(header) + data_len != size and data_len > 0:
            data_len = max(size - len(header), 0)
            header = _u8_header(tensor, data_len)
        path = dst / fname
        with path.open("wb") as f:
            f.write(header)
            for chunk in _blocks(seed, fname, data_len):
                f.write(chunk)
        written[fname] = path
        weight_map[tensor] = fname
    if files > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        index_path = dst / "model.safetensors.index.json"
        index_path.write_bytes(_dump(index))
        written[index_path.name] = index_path
    return written
