"""Read what the check needs from a GGUF header with the `gguf` package: the architecture keys
(`<arch>.block_count`, `<arch>.attention.head_count_kv` ...), general.file_type, and each tensor's
type. Works on a whole file or on the first bytes of one (fetched with an HTTP range request).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_pull.errors import ExitCode, ModelPullError

logger = logging.getLogger(__name__)

# The keys kept from the header (after the "<arch>." prefix), plus general.* ones.
_ARCH_KEYS = (
    "context_length", "block_count", "embedding_length", "attention.head_count",
    "attention.head_count_kv", "attention.key_length", "attention.value_length",
    "attention.sliding_window", "attention.kv_lora_rank", "rope.dimension_count",
)


@dataclass(frozen=True)
class GgufInfo:
    architecture: str | None
    file_type: str | None  # "Q4_K_M", "F16", ... from general.file_type
    tensor_types: tuple[tuple[str, int, int], ...]  # (type name, tensor count, bytes), most first
    tensor_bytes: int
    keys: tuple[tuple[str, Any], ...]  # the architecture keys, prefix removed

    def key(self, name: str) -> Any:
        return dict(self.keys).get(name)


class HeaderIncompleteError(Exception):
    """The bytes given end before the header does; read at least `needed` bytes."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"GGUF header needs at least {needed} bytes")
        self.needed = needed


def _value(field: Any) -> Any:
    value = field.contents()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int | float)] or None
    return value


def _info(reader: Any) -> GgufInfo:
    import gguf

    fields: Mapping[str, Any] = reader.fields
    arch_field = fields.get("general.architecture")
    arch = str(arch_field.contents()) if arch_field is not None else None
    keys: list[tuple[str, Any]] = []
    if arch:
        for k in _ARCH_KEYS:
            f = fields.get(f"{arch}.{k}")
            if f is not None:
                keys.append((k, _value(f)))
    file_type = None
    ft = fields.get("general.file_type")
    if ft is not None:
        raw = int(ft.contents())
        try:
            file_type = gguf.LlamaFileType(raw).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            file_type = f"file_type {raw}"
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for t in reader.tensors:
        name = t.tensor_type.name
        counts[name] += 1
        sizes[name] += int(t.n_bytes)
    types = tuple(sorted(((n, counts[n], sizes[n]) for n in counts), key=lambda x: -x[2]))
    return GgufInfo(arch, file_type, types, sum(sizes.values()), tuple(keys))


def read_gguf(path: Path) -> GgufInfo:
    """The header of a local GGUF file (tensor data is memory-mapped, never read)."""
    import gguf

    try:
        return _info(gguf.GGUFReader(path, "r"))
    except (ValueError, KeyError, OSError) as exc:
        raise ModelPullError(ExitCode.BAD_INPUT, f"{path} is not a readable GGUF file: {exc}",
                             hint="check the file is complete (sizes match the repo)") from exc


def read_gguf_header(head: bytes, file_size: int) -> GgufInfo:
    """Parse a GGUF header from its first bytes. Raises HeaderIncompleteError when they are too few.

    The bytes go into a sparse temporary file of the real size, so GGUFReader can map the tensor
    data region (zeros, never read) without downloading it.
    """
    import gguf

    if head[:4] != b"GGUF":
        raise ModelPullError(ExitCode.BAD_INPUT, "not a GGUF file (no GGUF magic)")
    fd, name = tempfile.mkstemp(prefix="model-pull-gguf-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(head)
            fh.truncate(max(file_size, len(head)))
        try:
            reader = gguf.GGUFReader(name, "r")
        except (ValueError, KeyError, IndexError, OverflowError) as exc:
            if len(head) < file_size:
                raise HeaderIncompleteError(min(file_size, len(head) * 4)) from exc
            raise ModelPullError(ExitCode.BAD_INPUT, f"not a readable GGUF header: {exc}") from exc
        if reader.data_offset > len(head) and len(head) < file_size:
            # Parsed into the zero padding: the real header is longer than what we have.
            raise HeaderIncompleteError(min(file_size, reader.data_offset + 4096))
        return _info(reader)
    finally:
        Path(name).unlink(missing_ok=True)
