"""Content hashes: SHA-256, git blob SHA-1, the NAR serialisation and Nix store names.

`nar_hash(path)` equals `nix hash path PATH` (SHA-256 of the Nix ARchive of PATH), and
`store_name(nar, name)` equals the basename `nix-store --add PATH` gives (a recursive, sha256
fixed-output import: `makeFixedOutputPath` -> `makeStorePath("source", hash, name)`).
`nar_hash(path, out=f.write)` also writes the NAR itself, byte for byte what `nix-store --dump`
prints, while it hashes it (`model-pull push` streams it into a binary cache that way).

The NAR walk streams every regular file once; callers that also need per-file hashes (to verify
downloads against the Hub's listing) pass `on_file` and get those in the same read.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

NIX_STORE_DIR = "/nix/store"
NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
STORE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-._?=")
CHUNK = 4 << 20  # large reads: hashlib releases the GIL on them


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def git_blob_hasher(size: int) -> hashlib._Hash:
    """The git object id of a blob of `size` bytes (what the Hub lists as `oid` for non-LFS
    files), fed with the bytes as they come."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % size)
    return h


def file_hashes(f: Readable, size: int) -> tuple[str, str]:
    """(SHA-256, git blob SHA-1) of `size` bytes read in order from `f`, in 4 MiB pieces."""
    sha256 = hashlib.sha256()
    sha1 = git_blob_hasher(size)
    buf = bytearray(min(CHUNK, max(size, 1)))
    got = 0
    while got < size and (n := f.readinto(buf)):
        view = memoryview(buf)[:n]
        sha256.update(view)
        sha1.update(view)
        got += n
    if got != size:
        raise OSError(f"expected {size} bytes, read {got}")
    return sha256.hexdigest(), sha1.hexdigest()


def nix32(digest: bytes) -> str:
    """Nix's base-32 encoding (least significant 5-bit group first, own alphabet)."""
    n_chars = (len(digest) * 8 - 1) // 5 + 1
    out = []
    for n in range(n_chars - 1, -1, -1):
        b = n * 5
        i, j = divmod(b, 8)
        c = digest[i] >> j
        if i + 1 < len(digest):
            c |= digest[i + 1] << (8 - j)
        out.append(NIX32_ALPHABET[c & 0x1F])
    return "".join(out)


def sri(digest: bytes) -> str:
    return "sha256-" + base64.b64encode(digest).decode()


def _compress(digest: bytes, size: int) -> bytes:
    out = bytearray(size)
    for i, byte in enumerate(digest):
        out[i % size] ^= byte
    return bytes(out)


def valid_store_name(name: str) -> bool:
    return (
        0 < len(name) <= 211
        and not name.startswith(".")
        and all(c in STORE_NAME_CHARS for c in name)
    )


def store_basename(nar_digest: bytes, name: str) -> str:
    """`<hash>-<name>`: the basename of `nix-store --add` for a directory with this NAR hash."""
    if not valid_store_name(name):
        raise ValueError(f"invalid Nix store name: {name!r}")
    fingerprint = f"source:sha256:{nar_digest.hex()}:{NIX_STORE_DIR}:{name}"
    inner = hashlib.sha256(fingerprint.encode()).digest()
    return f"{nix32(_compress(inner, 20))}-{name}"


# --- NAR serialisation -------------------------------------------------------------------


def _str(s: bytes) -> bytes:
    pad = (8 - len(s) % 8) % 8
    return struct.pack("<Q", len(s)) + s + b"\0" * pad


_MAGIC = _str(b"nix-archive-1")
_OPEN, _CLOSE = _str(b"("), _str(b")")
_TYPE = _str(b"type")
_REGULAR, _SYMLINK, _DIRECTORY = _str(b"regular"), _str(b"symlink"), _str(b"directory")
_EXECUTABLE, _EMPTY, _CONTENTS = _str(b"executable"), _str(b""), _str(b"contents")
_TARGET, _ENTRY, _NAME, _NODE = _str(b"target"), _str(b"entry"), _str(b"name"), _str(b"node")

# Called for each regular file with its path relative to the root ("" for a root file) and size;
# returns the hashers that should see its bytes too (or none).
OnFile = Callable[[str, int], list[Hasher]]


@dataclass(frozen=True)
class NarResult:
    digest: bytes
    size: int  # bytes of NAR

    @property
    def sri(self) -> str:
        return sri(self.digest)


class Readable(Protocol):
    def readinto(self, buf: bytearray | memoryview, /) -> int | None: ...


# For a regular file met in the walk: its size and a reader of its bytes in order, when they
# do not come from the file as it is on disk now (a download still arriving), else None.
Source = Callable[[Path, os.stat_result], "tuple[int, Readable] | None"]

MAX_DEPTH = 256  # directories below the top; deeper is refused, not a RecursionError


class UnsupportedFileError(ValueError):
    """A node NAR cannot hold (a FIFO, a socket, a device), or a tree nested too deep."""


# Where the NAR's bytes go besides the hash (a file's `write`), in order.
NarOut = Callable[[bytes | memoryview], object]


class _Sink:
    """Feeds the NAR hash. File contents are read ahead on a second thread while the NAR hash
    takes the current chunk, and go to the extra (per-file) hashers on a third: each byte is read
    once, and the copy out of the page cache and both hashes run side by side. With `out`, every
    NAR byte is also written there, in order: file contents on the third thread, with the extra
    hashers (each file's last write is waited for before the next NAR bytes)."""

    def __init__(self, pool: ThreadPoolExecutor, out: NarOut | None = None) -> None:
        self.h = hashlib.sha256()
        self.size = 0
        self.pool = pool
        self.out = out

    def meta(self, data: bytes) -> None:
        self.h.update(data)
        if self.out is not None:
            self.out(data)
        self.size += len(data)

    def contents(self, f: Readable, size: int, extra: list[Hasher], what: Path) -> None:
        self.meta(struct.pack("<Q", size))
        got = 0
        # Three buffers: one being read into, one being hashed, one still with the extra hashers.
        bufs = [bytearray(min(CHUNK, max(size, 1))) for _ in range(3)]
        reading: Future[int | None] = self.pool.submit(f.readinto, bufs[0])
        pending: Future[None] | None = None
        i = 0
        while n := reading.result():
            chunk = memoryview(bufs[i % 3])[:n]
            i += 1
            if got + n > size:
                raise OSError(f"{what} grew while hashing ({size} -> more bytes)")
            reading = self.pool.submit(f.readinto, bufs[i % 3])
            if pending is not None:
                pending.result()
                pending = None
            if extra or self.out is not None:
                pending = self.pool.submit(_update_all, extra, chunk, self.out)
            self.h.update(chunk)
            got += n
        if pending is not None:
            pending.result()
        if got != size:
            raise OSError(f"{what} changed size while hashing ({size} -> {got} bytes)")
        self.size += got
        pad = (8 - got % 8) % 8
        if pad:
            self.meta(b"\0" * pad)


def _update_all(hashers: list[Hasher], chunk: memoryview, out: NarOut | None = None) -> None:
    for h in hashers:
        h.update(chunk)
    if out is not None:
        out(chunk)


def _walk(
    sink: _Sink,
    path: Path,
    rel: str,
    on_file: OnFile | None,
    source: Source | None,
    depth: int = 0,
) -> None:
    st = path.lstat()
    sink.meta(_OPEN + _TYPE)
    if stat.S_ISREG(st.st_mode):
        sink.meta(_REGULAR)
        if st.st_mode & stat.S_IXUSR:
            sink.meta(_EXECUTABLE + _EMPTY)
        sink.meta(_CONTENTS)
        given = source(path, st) if source else None
        size = given[0] if given else st.st_size
        extra = on_file(rel, size) if on_file else []
        if given:
            sink.contents(given[1], size, extra, path)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb", buffering=0) as f:
                sink.contents(f, size, extra, path)
    elif stat.S_ISLNK(st.st_mode):
        sink.meta(_SYMLINK + _TARGET + _str(os.fsencode(os.readlink(path))))
    elif stat.S_ISDIR(st.st_mode):
        if depth >= MAX_DEPTH:
            raise UnsupportedFileError(f"{path}: directories nested deeper than {MAX_DEPTH}")
        sink.meta(_DIRECTORY)
        names = sorted(os.fsencode(n) for n in os.listdir(path))
        for name in names:
            child = os.fsdecode(name)
            sink.meta(_ENTRY + _OPEN + _NAME + _str(name) + _NODE)
            _walk(
                sink, path / child, f"{rel}/{child}" if rel else child, on_file, source, depth + 1
            )
            sink.meta(_CLOSE)
    else:
        raise UnsupportedFileError(f"{path}: not a regular file, symlink or directory")
    sink.meta(_CLOSE)


def nar_hash(
    path: Path,
    on_file: OnFile | None = None,
    source: Source | None = None,
    *,
    out: NarOut | None = None,
) -> NarResult:
    """SHA-256 of the NAR of `path`, reading each file once (see module docstring); with `out`,
    the NAR itself goes there too.

    `source` gives the bytes of files that are still arriving (pull.py hashes a download while
    it downloads); without it every file is read as it is on disk."""
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="nar")
    failed = True
    try:
        sink = _Sink(pool, out)
        sink.meta(_MAGIC)
        _walk(sink, path, "", on_file, source)
        failed = False
        return NarResult(sink.h.digest(), sink.size)
    finally:
        # On a failure (Ctrl-C too) do not wait for a read that waits for a download.
        pool.shutdown(wait=not failed, cancel_futures=True)
