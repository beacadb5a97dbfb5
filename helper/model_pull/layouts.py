"""The trees each runtime reads (seed 000, made to really work), built from verified files.

Weights are hardlinked (downloads) or copied (`package` of someone else's directory) into a
staging tree; generated files (`refs/main`, `config.pbtxt`, `model-defaults.json`, the entry
manifest) are written deterministically: same inputs, same bytes, no timestamps, no absolute paths.
"""

from __future__ import annotations

import enum
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_pull import __version__
from model_pull.engine_args import parse_engine_args as parse_engine_args  # for the CLI
from model_pull.engine_args import validate_engine_args
from model_pull.errors import ExitCode, ModelPullError
from model_pull.store import ENTRY_MANIFEST

TRITON_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
TOKENIZER_CONFIG = "tokenizer_config.json"


class Layout(enum.StrEnum):
    DUAL = "dual"  # HF cache tree for vLLM/SGLang + Triton model dir, one copy of the bytes
    SINGLE = "single"  # Triton model dir with weights/ (Triton only)
    HF = "hf"  # HF cache tree only (SGLang, vLLM)
    GGUF = "gguf"  # .gguf files for llama-server


@dataclass(frozen=True)
class Placed:
    """A file of the model and where its verified bytes are on disk."""

    path: str  # relative, as in the repo
    source: Path
    size: int
    sha256: str  # from the Hub's LFS listing, or computed up front for small files


@dataclass(frozen=True)
class Spec:
    """What to build: everything that determines the entry's bytes."""

    name: str
    repo: str
    revision: str
    layout: Layout
    triton_name: str | None = None
    engine_defaults: Mapping[str, Any] = field(default_factory=dict)
    patch_tokenizer: bool = False

    @property
    def slug(self) -> str:
        return "models--" + self.repo.replace("/", "--")


def config_pbtxt(triton_name: str) -> str:
    """Triton's model config for the vLLM backend (notes/runtimes.md): decoupled, KIND_MODEL."""
    return (
        f'name: "{triton_name}"\n'
        'backend: "vllm"\n'
        "max_batch_size: 0\n"
        "model_transaction_policy {\n  decoupled: true\n}\n"
        "instance_group [\n  {\n    count: 1\n    kind: KIND_MODEL\n  }\n]\n"
    )


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def patch_tokenizer_config(data: bytes) -> bytes | None:
    """Seed 000: SGLang 0.5.x ships transformers 4.57, which lacks TokenizersBackend."""
    if b"TokenizersBackend" not in data:
        return None
    return data.replace(b'"TokenizersBackend"', b'"PreTrainedTokenizerFast"')


def _place(src: Path, dst: Path, *, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.link(src, dst)
    else:
        shutil.copyfile(src, dst)


def default_triton_name(spec: Spec) -> str:
    base = spec.repo.split("/")[-1]
    return re.sub(r"[^A-Za-z0-9_]", "_", base).lower()


def build(
    staging: Path, spec: Spec, files: Sequence[Placed], *, link: bool,
    include: Sequence[str] = (), exclude: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Lay out `files` under `staging` for `spec.layout`; returns the manifest's file records."""
    layout = spec.layout
    triton = spec.triton_name or default_triton_name(spec)
    if layout in (Layout.DUAL, Layout.SINGLE) and not TRITON_NAME_RE.match(triton):
        raise ModelPullError(ExitCode.BAD_INPUT, f"invalid Triton model name {triton!r}",
                             hint="use letters, digits, '_', '.', '-'")
    models = staging / "share" / "models"
    hub_snapshot = models / "hub" / spec.slug / "snapshots" / spec.revision
    records: list[dict[str, Any]] = []

    if layout in (Layout.DUAL, Layout.HF):
        refs = models / "hub" / spec.slug / "refs" / "main"
        refs.parent.mkdir(parents=True)
        refs.write_text(spec.revision)  # 40 hex, no newline: a newline breaks resolution
        dest_dir = hub_snapshot
    elif layout is Layout.SINGLE:
        dest_dir = models / triton / "weights"
    else:
        dest_dir = models / "gguf"

    for f in sorted(files, key=lambda f: f.path):
        dst = dest_dir / f.path
        record: dict[str, Any] = {"path": f.path, "size": f.size, "sha256": f.sha256}
        patched = (
            patch_tokenizer_config(f.source.read_bytes())
            if spec.patch_tokenizer and Path(f.path).name == TOKENIZER_CONFIG
            else None
        )
        if patched is not None:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(patched)
            record["patched"] = "TokenizersBackend -> PreTrainedTokenizerFast"
        else:
            _place(f.source, dst, link=link)
        records.append(record)

    if layout in (Layout.DUAL, Layout.SINGLE):
        tdir = models / triton
        tdir.mkdir(parents=True, exist_ok=True)
        (tdir / "config.pbtxt").write_text(config_pbtxt(triton))
        validate_engine_args(spec.engine_defaults)
        (tdir / "model-defaults.json").write_bytes(_json_bytes(dict(spec.engine_defaults)))
        if layout is Layout.DUAL:
            os.symlink(Path("..") / "hub" / spec.slug / "snapshots" / spec.revision,
                       tdir / "weights")

    manifest = {
        "tool": f"model-pull {__version__}",
        "name": spec.name,
        "repo": spec.repo,
        "revision": spec.revision,
        "layout": str(layout),
        "tritonName": triton if layout in (Layout.DUAL, Layout.SINGLE) else None,
        "engineDefaults": dict(spec.engine_defaults),
        "patchTokenizer": spec.patch_tokenizer,
        "include": list(include),
        "exclude": list(exclude),
        "files": records,
    }
    path = staging / ENTRY_MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_json_bytes(manifest))
    return records


def entry_file_paths(spec: Spec, rel: str) -> str:
    """Where a repo file `rel` lands inside the entry (relative to the entry root)."""
    triton = spec.triton_name or default_triton_name(spec)
    match spec.layout:
        case Layout.DUAL | Layout.HF:
            return f"share/models/hub/{spec.slug}/snapshots/{spec.revision}/{rel}"
        case Layout.SINGLE:
            return f"share/models/{triton}/weights/{rel}"
        case Layout.GGUF:
            return f"share/models/gguf/{rel}"
