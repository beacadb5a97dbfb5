"""The trees each runtime reads, built from verified files (docs/ARCHITECTURE.md, "An entry").

Weights are hardlinked (downloads) or copied (`package` of someone else's directory) into a
staging tree; generated files (`refs/main`, `config.pbtxt`, `model-defaults.json`, the entry
manifest) are written deterministically: same inputs, same bytes, no timestamps, no absolute paths.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from model_pull.datamodel import (
    EntryManifest,
    EntrySpec,
    FileRecord,
    Layout,
    json_bytes,
    validate_triton_name,
)
from model_pull.engine_args import parse_engine_args as parse_engine_args  # for the CLI
from model_pull.engine_args import validate_engine_args
from model_pull.errors import ExitCode, ModelPullError

TOKENIZER_CONFIG = "tokenizer_config.json"


@dataclass(frozen=True)
class Placed:
    """A file of the model and where its verified bytes are on disk."""

    path: str  # relative, as in the repo
    source: Path
    size: int
    sha256: str  # from the Hub's LFS listing, or computed up front for small files


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
