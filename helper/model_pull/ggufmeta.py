"""Read what the check needs from a GGUF header with the `gguf` package: the architecture keys
(`<arch>.block_count`, `<arch>.attention.head_count_kv` ...), general.file_type, and each tensor's
type. Works on a whole file or on the first bytes of one (fetched with an HTTP range request).
The walk follows the GGUF spec with the `gguf` package's type tables (GGMLQuantizationType,
GGML_QUANT_SIZES, LlamaFileType); GGUFReader itself is exact but takes seconds on a real
vocabulary, and the check must answer in well under one.
"""

from __future__ import annotations

import logging
import mmap
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_pull.errors import ExitCode, ModelPullError

logger = logging.getLogger(__name__)

# The keys kept from the header (after the "<arch>." prefix), plus general.* ones.
_ARCH_KEYS = (
    "context_length",
    "block_count",
    "embedding_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.sliding_window",
    "attention.kv_lora_rank",
    "rope.dimension_count",
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


_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}  # GGUFValueType -> struct format (8 string, 9 array)
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Walks a GGUF header (format: ggml/docs/gguf.md) without building arrays for skipped
    values: a 150k-token vocabulary costs milliseconds, not the seconds GGUFReader takes."""

    def __init__(self, data: bytes | memoryview, complete: bool) -> None:
        self.data = data
        self.pos = 0
        self.complete = complete

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.data):
            if self.complete:
                raise ValueError("file ends inside the GGUF header")
            raise HeaderIncompleteError(max(2 * len(self.data), self.pos + n + 4096))

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self._need(size)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        self._need(n)
        raw = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise ValueError(f"unknown GGUF value type {vtype}")
        etype, count = self.scalar("<I"), self.scalar("<Q")
        if etype in _SCALARS and not keep:
            size = struct.calcsize(_SCALARS[etype]) * count
            self._need(size)
            self.pos += size
            return None
        items = [self.value(etype, keep) for _ in range(count)]
        return items if keep else None


def _parse(data: bytes | memoryview, complete: bool) -> GgufInfo:
    import gguf

    c = _Cursor(data, complete)
    c._need(4)
    if bytes(data[:4]) != b"GGUF":
        raise ValueError("no GGUF magic")
    c.pos = 4
    version = c.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported")
    n_tensors, n_kv = c.scalar("<Q"), c.scalar("<Q")
    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key = c.string()
        vtype = c.scalar("<I")
        keep = key.startswith("general.") or not key.startswith("tokenizer.")
        kv[key] = c.value(vtype, keep)
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for _ in range(n_tensors):
        c.string()
        dims = [c.scalar("<Q") for _ in range(c.scalar("<I"))]
        ttype = c.scalar("<I")
        c.scalar("<Q")  # offset
        try:
            qt = gguf.GGMLQuantizationType(ttype)
        except ValueError:
            counts[f"type {ttype}"] += 1
            continue
        block, type_size = gguf.GGML_QUANT_SIZES[qt]
        n = 1
        for d in dims:
            n *= d
        counts[qt.name] += 1
        sizes[qt.name] += n // block * type_size
    arch = kv.get("general.architecture")
    arch = arch if isinstance(arch, str) else None
    keys = tuple((k, kv[f"{arch}.{k}"]) for k in _ARCH_KEYS if arch and f"{arch}.{k}" in kv)
    file_type = None
    raw = kv.get("general.file_type")
    if isinstance(raw, int):
        try:
            file_type = gguf.LlamaFileType(raw).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            file_type = f"file_type {raw}"
    types = tuple(sorted(((n, counts[n], sizes[n]) for n in counts), key=lambda x: -x[2]))
    return GgufInfo(arch, file_type, types, sum(sizes.values()), keys)


def read_gguf(path: Path) -> GgufInfo:
    """The header of a local GGUF file (read through mmap: tensor data is never touched)."""
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                return _parse(view, complete=True)
            finally:
                view.release()
    except (ValueError, OSError, struct.error) as exc:
        raise ModelPullError(
            ExitCode.BAD_INPUT,
            f"{path} is not a readable GGUF file: {exc}",
            hint="check the file is complete (sizes match the repo)",
        ) from exc


def read_gguf_header(head: bytes, file_size: int) -> GgufInfo:
    """Parse a GGUF header from the first bytes of a file of `file_size` bytes.

    Raises HeaderIncompleteError(needed) when the bytes end before the header does.
    """
    try:
        return _parse(head, complete=len(head) >= file_size)
    except (ValueError, struct.error) as exc:
        raise ModelPullError(ExitCode.BAD_INPUT, f"not a readable GGUF header: {exc}") from exc
