"""The Nix binary cache format for entries: store paths, narinfo files, `file://` caches.

An entry `<hash>-<name>` is the store path of a recursive, sha256, fixed-output import of its
tree (`nix-store --add`), so its store path follows from its narHash and its name alone
(`nix-store --print-fixed-path --recursive sha256 NARHASH NAME`), and every Nix binary cache can
carry it: https://nix.dev/manual/nix/2.28/protocols/store-path and
https://nix.dev/manual/nix/2.28/store/types/http-binary-cache-store.

A cache holds, per path, `<hashpart>.narinfo` and the NAR it names (`nar/<filehash>.nar`);
`nix-cache-info` says which store directory its paths are for. The narinfo of an entry carries
`CA: fixed:r:sha256:<narHash>`: with it Nix accepts the path unsigned (the path is computed from
the content it checks), without it only with a signature from a trusted key.

`write_to_directory` writes an entry into a `file://` cache the way `nix copy --to
'file://DIR?compression=none'` does, byte for byte except the `Sig:` lines (`nix store sign`
adds those), but streaming: the NAR goes from the entry into `nar/` once, hashed on the way, with
no temporary copy of it elsewhere and flat memory (Nix 2.8 writes the whole NAR to `$TMPDIR`
first).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from model_pull.errors import ExitCode, ModelPullError
from model_pull.hashing import (
    NIX32_ALPHABET,
    NIX_STORE_DIR,
    NarResult,
    nar_hash,
    nix32,
    valid_store_name,
)
from model_pull.hashing import store_basename as _store_basename

CACHE_INFO = "nix-cache-info"
STORE_HASH_RE = re.compile(f"^[{NIX32_ALPHABET}]{{32}}$")
SRI_SHA256_RE = re.compile(r"^sha256-[A-Za-z0-9+/]{43}=$")
# Store URL schemes whose NARs can be compressed: https://nix.dev/manual/nix/2.28/store/types/
COMPRESSING_SCHEMES = ("file", "http", "https", "s3")


def nar_digest(nar_sri: str) -> bytes:
    """The 32 bytes of a narHash in SRI form (sha256-<base64>); ValueError otherwise."""
    if not SRI_SHA256_RE.match(nar_sri):
        raise ValueError(f"{nar_sri!r} is not a sha256 narHash in SRI form (sha256-...=)")
    try:
        digest = base64.b64decode(nar_sri.removeprefix("sha256-"), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"{nar_sri!r}: {exc}") from None
    if len(digest) != 32:
        raise ValueError(f"{nar_sri!r} is not 32 bytes")
    return digest


def store_basename(nar_sri: str, name: str) -> str:
    """`<hash>-<name>`: the entry with this narHash under this model name (ValueError when
    `name` cannot be a store name)."""
    return _store_basename(nar_digest(nar_sri), name)


def store_path(nar_sri: str, name: str) -> str:
    """`/nix/store/<hash>-<name>`, the path caches are asked for."""
    return f"{NIX_STORE_DIR}/{store_basename(nar_sri, name)}"


def content_address(nar_sri: str) -> str:
    """The CA field of an entry: a recursive (`r:`) sha256 fixed-output path."""
    return f"fixed:r:sha256:{nix32(nar_digest(nar_sri))}"


def hash_part(path: str) -> str:
    """The 32 characters of `/nix/store/<hash>-<name>` a narinfo is named after."""
    return Path(path).name.split("-", 1)[0]


@dataclass(frozen=True)
class NarInfo:
    """One `.narinfo` file, as Nix writes it (`NarInfo::to_string`), uncompressed NARs only."""

    store_path: str
    nar_hash: str  # SRI
    nar_size: int
    ca: str | None
    sigs: tuple[str, ...] = ()
    compression: str = "none"
    url: str | None = None  # default: nar/<nix32 of the NAR hash>.nar

    @property
    def nar_url(self) -> str:
        return self.url or f"nar/{nix32(nar_digest(self.nar_hash))}.nar"

    def text(self) -> str:
        h = "sha256:" + nix32(nar_digest(self.nar_hash))
        lines = [
            f"StorePath: {self.store_path}",
            f"URL: {self.nar_url}",
            f"Compression: {self.compression}",
            f"FileHash: {h}",
            f"FileSize: {self.nar_size}",
            f"NarHash: {h}",
            f"NarSize: {self.nar_size}",
            "References: ",
            *(f"Sig: {s}" for s in self.sigs),
            *([f"CA: {self.ca}"] if self.ca else []),
        ]
        return "\n".join(lines) + "\n"

    @classmethod
    def for_entry(cls, nar: NarResult, name: str) -> NarInfo:
        return cls(store_path(nar.sri, name), nar.sri, nar.size, content_address(nar.sri))


def parse_narinfo(text: str) -> dict[str, list[str]]:
    """The fields of a narinfo (`Key: value` lines), each with all its values in order."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields.setdefault(key, []).append(value)
    return fields


# --- store URLs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreUrl:
    """A Nix store URL: `scheme://rest?param=value&...` (https://nix.dev/manual/nix/2.28/store/types/),
    or a bare path (a local chroot store)."""

    base: str  # everything before '?'
    params: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, url: str) -> StoreUrl:
        base, _, query = url.partition("?")
        return cls(base, tuple(parse_qsl(query, keep_blank_values=True)))

    @property
    def scheme(self) -> str:
        scheme, sep, _ = self.base.partition("://")
        return scheme if sep else ""

    @property
    def local_directory(self) -> Path | None:
        """The directory of a `file://` cache."""
        return Path(self.base[len("file://") :]) if self.scheme == "file" else None

    def param(self, key: str) -> str | None:
        found = [v for k, v in self.params if k == key]
        return found[-1] if found else None

    def with_params(self, extra: Mapping[str, str]) -> StoreUrl:
        kept = tuple((k, v) for k, v in self.params if k not in extra)
        return StoreUrl(self.base, kept + tuple(extra.items()))

    def __str__(self) -> str:
        return self.base + ("?" + urlencode(self.params, safe="/:") if self.params else "")


def publish_url(url: str, secret_key: Path | None) -> StoreUrl:
    """The URL `push` writes to: uncompressed unless it says otherwise (real weights shrink
    little and xz, Nix's default, runs at ~1 MB/s), signed with `secret_key` when given."""
    parsed = StoreUrl.parse(url)
    extra: dict[str, str] = {}
    if parsed.scheme in COMPRESSING_SCHEMES and parsed.param("compression") is None:
        extra["compression"] = "none"
    if secret_key is not None:
        extra["secret-key"] = str(secret_key)
    return parsed.with_params(extra)


def written_natively(url: StoreUrl) -> bool:
    """A `file://` cache with uncompressed NARs: model-pull writes it itself (streaming)."""
    allowed = {"compression", "secret-key"}
    return (
        url.scheme == "file"
        and url.param("compression") == "none"
        and all(k in allowed for k, _ in url.params)
    )


# --- writing a file:// cache ----------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    narinfo: NarInfo
    already: bool  # the cache had it: nothing was written


def cached(directory: Path, path: str) -> NarInfo | None:
    """The entry `path` as the `file://` cache at `directory` holds it (its narinfo names a NAR
    of the right size), else None."""
    try:
        fields = parse_narinfo((directory / f"{hash_part(path)}.narinfo").read_text())
        nar_hash_field = fields["NarHash"][0]
        size = int(fields["NarSize"][0])
        url = fields["URL"][0]
        if fields["StorePath"][0] != path or fields["Compression"][0] != "none":
            return None
        nar_sri = _sri_of_nix_hash(nar_hash_field)
        if (directory / url).stat().st_size != size or "/" in url.removeprefix("nar/"):
            return None
    except (OSError, KeyError, IndexError, ValueError):
        return None
    return NarInfo(path, nar_sri, size, fields.get("CA", [None])[0], tuple(fields.get("Sig", [])))


def write_to_directory(
    directory: Path, entry: Path, name: str, *, expected_nar: str | None = None
) -> Written:
    """Write the entry at `entry`, under the store name `name`, into the `file://` cache at
    `directory`: the NAR first (under a temporary name, renamed when complete), the narinfo last,
    so a reader never sees a narinfo without its whole NAR. The NAR is hashed as it is written;
    an entry whose bytes no longer match its own `<hash>-<name>` (or `expected_nar`, the narHash
    recorded when it was installed) is refused, not published. With `expected_nar`, a cache that
    already holds the path is left as it is."""
    nar_dir = directory / "nar"
    nar_dir.mkdir(parents=True, exist_ok=True)
    info_file = directory / CACHE_INFO
    if not info_file.exists():
        _atomic_write(info_file, f"StoreDir: {NIX_STORE_DIR}\n".encode())
    if expected_nar is not None:
        have = cached(directory, store_path(expected_nar, name))
        if have is not None and have.nar_hash == expected_nar:
            return Written(have, already=True)
    tmp = nar_dir / f".model-pull-{os.getpid()}-{secrets.token_hex(4)}.nar.tmp"
    try:
        with tmp.open("xb") as out:
            nar = nar_hash(entry, out=out.write)
            out.flush()
            os.fsync(out.fileno())
        refuse_changed(entry, nar, expected_nar)
        narinfo = NarInfo.for_entry(nar, name)
        os.rename(tmp, directory / narinfo.nar_url)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _atomic_write(directory / f"{hash_part(narinfo.store_path)}.narinfo", narinfo.text().encode())
    return Written(narinfo, already=False)


def refuse_changed(entry: Path, nar: NarResult, expected_nar: str | None) -> None:
    """VERIFY_FAILED when the entry's bytes are not what its name (`<hash>-<name>`) or its
    recorded narHash say: a changed entry is never published."""
    head, sep, own_name = entry.name.partition("-")
    named = bool(sep and STORE_HASH_RE.match(head) and valid_store_name(own_name))
    if (expected_nar is None or nar.sri == expected_nar) and (
        not named or _store_basename(nar.digest, own_name) == entry.name
    ):
        return
    raise ModelPullError(
        ExitCode.VERIFY_FAILED,
        f"{entry} no longer matches its content address: its bytes hash to {nar.sri}; "
        "nothing was published",
        hint="model-pull verify names the file that changed; pull the model again",
    )


def _sri_of_nix_hash(value: str) -> str:
    """`sha256:<nix32>` (or SRI) as SRI."""
    if value.startswith("sha256-"):
        nar_digest(value)
        return value
    algo, _, text = value.partition(":")
    if algo != "sha256" or len(text) != 52:
        raise ValueError(f"unsupported hash {value!r}")
    return "sha256-" + base64.b64encode(_nix32_decode(text)).decode()


def _nix32_decode(text: str) -> bytes:
    out = bytearray(32)
    for n, c in enumerate(reversed(text)):
        digit = NIX32_ALPHABET.index(c)
        b = n * 5
        i, j = divmod(b, 8)
        out[i] |= (digit << j) & 0xFF
        if i + 1 < 32:
            out[i + 1] |= digit >> (8 - j)
        elif digit >> (8 - j):
            raise ValueError(f"{text!r} is not a sha256 in Nix's base 32")
    return bytes(out)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def key_names(keys: Sequence[str]) -> list[str]:
    """The names of public keys (`name:base64`), for messages."""
    return [k.split(":", 1)[0] for k in keys]
