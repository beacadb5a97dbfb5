"""The trees each runtime reads, built from verified files (docs/ARCHITECTURE.md, "An entry").

Weights are hardlinked (downloads) or copied (`package` of someone else's directory) into a
staging tree; generated files (`refs/main`, `config.pbtxt`, `model-defaults.json`, the entry
manifest) are written deterministically: same inputs, same bytes, no timestamps, no absolute paths.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_pull.datamodel import (
    JSON_MAX_DEPTH,
    EntryManifest,
    EntrySpec,
    FileRecord,
    Layout,
    json_bytes,
    json_depth,
    validate_triton_name,
)
from model_pull.errors import ExitCode, ModelPullError

TOKENIZER_CONFIG = "tokenizer_config.json"


# vLLM's EngineArgs/AsyncEngineArgs fields accepted in model-defaults.json (Triton's vLLM backend
# passes 1/model.json to AsyncEngineArgs(**json): an unknown key fails the model load).
# "model" is not accepted: whoever knows where the entry lives (the Triton unit) adds it.
VLLM_ENGINE_ARGS = frozenset(
    {
        "tokenizer",
        "tokenizer_mode",
        "trust_remote_code",
        "download_dir",
        "load_format",
        "config_format",
        "dtype",
        "kv_cache_dtype",
        "seed",
        "max_model_len",
        "distributed_executor_backend",
        "pipeline_parallel_size",
        "tensor_parallel_size",
        "data_parallel_size",
        "enable_expert_parallel",
        "max_parallel_loading_workers",
        "block_size",
        "enable_prefix_caching",
        "swap_space",
        "cpu_offload_gb",
        "gpu_memory_utilization",
        "max_num_batched_tokens",
        "max_num_seqs",
        "max_logprobs",
        "disable_log_stats",
        "revision",
        "code_revision",
        "rope_scaling",
        "rope_theta",
        "hf_overrides",
        "tokenizer_revision",
        "quantization",
        "enforce_eager",
        "disable_custom_all_reduce",
        "limit_mm_per_prompt",
        "mm_processor_kwargs",
        "enable_lora",
        "max_loras",
        "max_lora_rank",
        "max_cpu_loras",
        "enable_chunked_prefill",
        "speculative_config",
        "served_model_name",
        "compilation_config",
        "kv_transfer_config",
        "calculate_kv_scales",
        "generation_config",
        "override_generation_config",
        "enable_sleep_mode",
        "model_impl",
        "async_scheduling",
        "skip_tokenizer_init",
        "enable_prompt_embeds",
        "num_gpu_blocks_override",
        "max_num_partial_prefills",
        "long_prefill_token_threshold",
        "scheduling_policy",
        "reasoning_parser",
        "structured_outputs_config",
        "disable_log_requests",
        "enable_log_requests",
        "max_cudagraph_capture_size",
        "hf_config_path",
        "allowed_local_media_path",
        "disable_sliding_window",
        "disable_cascade_attn",
        "logits_processors",
        "attention_backend",
        "kv_cache_memory_bytes",
        "max_seq_len_to_capture",
    }
)


@dataclass(frozen=True)
class Placed:
    """A file of the model and where its verified bytes are on disk."""

    path: str  # relative, as in the repo
    source: Path
    size: int
    sha256: str  # from the Hub's LFS listing, or computed up front for small files


def parse_engine_args(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs (`--vllm-arg`): VALUE is JSON when it parses, else a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ModelPullError(
                ExitCode.USAGE,
                f"--vllm-arg {pair!r} is not KEY=VALUE",
                hint="e.g. --vllm-arg gpu_memory_utilization=0.85",
            )
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
        except RecursionError:
            out[key] = None
        if not json_depth(out[key]):
            raise ModelPullError(
                ExitCode.USAGE,
                f"--vllm-arg {key}: the value nests deeper than {JSON_MAX_DEPTH}",
            )
    validate_engine_args(out)
    return out


def validate_engine_args(args: Mapping[str, Any]) -> None:
    for key in args:
        if key == "model":
            raise ModelPullError(
                ExitCode.BAD_INPUT,
                "model-defaults.json must not set 'model'",
                hint="the Triton unit adds the absolute weights path itself",
            )
        if key not in VLLM_ENGINE_ARGS:
            close = difflib.get_close_matches(key, VLLM_ENGINE_ARGS, n=1)
            raise ModelPullError(
                ExitCode.BAD_INPUT,
                f"{key!r} is not an argument vLLM's AsyncEngineArgs accepts",
                hint=f"did you mean {close[0]!r}?" if close else "see vLLM's engine arguments",
            )


def config_pbtxt(triton_name: str) -> str:
    """Triton's model config for the vLLM backend: decoupled, KIND_MODEL (the backend's README,
    https://github.com/triton-inference-server/vllm_backend)."""
    return (
        f'name: "{triton_name}"\n'
        'backend: "vllm"\n'
        "max_batch_size: 0\n"
        "model_transaction_policy {\n  decoupled: true\n}\n"
        "instance_group [\n  {\n    count: 1\n    kind: KIND_MODEL\n  }\n]\n"
    )


def patch_tokenizer_config(data: bytes) -> bytes | None:
    """SGLang 0.5.x ships transformers 4.57, which has no TokenizersBackend class."""
    if b"TokenizersBackend" not in data:
        return None
    return data.replace(b'"TokenizersBackend"', b'"PreTrainedTokenizerFast"')


PATCH_MAX = 64 << 20  # a tokenizer_config.json read into memory to patch it


def _place(src: Path, dst: Path, *, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.link(src, dst, follow_symlinks=False)
    else:
        shutil.copyfile(src, dst)


def build(staging: Path, spec: EntrySpec, files: Sequence[Placed], *, link: bool) -> None:
    """Lay out `files` under `staging` for `spec.layout`, with the entry manifest."""
    layout = spec.layout
    triton = spec.triton_name
    if triton is not None and (why := validate_triton_name(triton)):
        raise ModelPullError(ExitCode.BAD_INPUT, f"invalid Triton model name {triton!r}", hint=why)
    models = staging / "share" / "models"
    records: list[FileRecord] = []

    if layout in (Layout.DUAL, Layout.HF):
        refs = models / "hub" / spec.slug / "refs" / "main"
        refs.parent.mkdir(parents=True)
        refs.write_text(spec.revision)  # 40 hex, no newline: a newline breaks resolution

    for f in sorted(files, key=lambda f: f.path):
        dst = staging / spec.file_path(f.path)
        record: FileRecord = {"path": f.path, "size": f.size, "sha256": f.sha256}
        patched = None
        if spec.patch_tokenizer and Path(f.path).name == TOKENIZER_CONFIG:
            if f.size > PATCH_MAX:
                raise ModelPullError(
                    ExitCode.BAD_INPUT,
                    f"{f.path} is {f.size} bytes: too big to be a tokenizer config",
                    hint="drop --patch-tokenizer, or report the repository",
                )
            patched = patch_tokenizer_config(f.source.read_bytes())
        if patched is not None:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(patched)
            record["patched"] = "TokenizersBackend -> PreTrainedTokenizerFast"
        else:
            _place(f.source, dst, link=link)
        records.append(record)

    if triton is not None:
        tdir = models / triton
        tdir.mkdir(parents=True, exist_ok=True)
        (tdir / "config.pbtxt").write_text(config_pbtxt(triton))
        validate_engine_args(spec.engine_defaults)
        (tdir / "model-defaults.json").write_bytes(json_bytes(dict(spec.engine_defaults)))
        if layout is Layout.DUAL:
            os.symlink(
                Path("..") / "hub" / spec.slug / "snapshots" / spec.revision, tdir / "weights"
            )

    EntryManifest(spec, tuple(records)).write(staging)
