"""`model-pull push NAME|PATH --to URL`: publish an entry into a Nix binary cache.

The path it gets is `/nix/store/<hash>-<name>`, `<name>` being the model name (the entry's own,
or `--name`): the machines that substitute it compute the same path from the model name they
declare and its narHash (substitute.py), so publish under the name the fleet declares.

- `file://DIR` (uncompressed, the default): written here (binary_cache.write_to_directory), the
  NAR streamed from the entry into `DIR/nar/` once, hashed on the way, with flat memory and no
  other copy; signed with `nix store sign` when a key is given.
- any other store URL `nix copy --to` accepts (`s3://`, `ssh://`, `http://` with uploads, a local
  store, `file://` with compression): the entry is served to `nix copy` from a binary cache on
  loopback that streams its NAR (no Nix store needed here), and Nix uploads it, signing it with
  `secret-key=` when given. For binary caches Nix 2.8 writes the (compressed) NAR to `$TMPDIR`
  before uploading it: `$TMPDIR` is then under the state root's `staging/`, on the entries' disk.

An entry whose bytes no longer match its content address is refused, never published.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from model_pull import binary_cache, nix
from model_pull.binary_cache import NarInfo, StoreUrl
from model_pull.errors import ExitCode, ModelPullError
from model_pull.hashing import NarResult, nar_hash, valid_store_name
from model_pull.output import PushJson
from model_pull.store import Entry, StateRoot, remove_tree

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    path: Path  # the entry's directory
    name: str  # the model name it is published under
    recorded_nar: str | None  # what state/pulls.jsonl says its narHash is
    root: StateRoot | None  # the state root it is in, if any


@dataclass(frozen=True)
class Pushed:
    to: str
    narinfo: NarInfo
    written: bool  # False: the cache had it already
    signed: bool

    def to_json(self) -> PushJson:
        return {
            "to": self.to,
            "storePath": self.narinfo.store_path,
            "narHash": self.narinfo.nar_hash,
            "narSize": self.narinfo.nar_size,
            "written": self.written,
            "signed": self.signed,
        }


def source(root: StateRoot, target: str, name: str | None) -> Source:
    """NAME (the entry models/NAME points at) or PATH (an entry directory, or a link to one)."""
    if "/" in target or (Path(target).exists() and root.current(target) is None):
        path = Path(os.path.realpath(target))
        if not path.is_dir():
            raise ModelPullError(
                ExitCode.NOT_INSTALLED,
                f"{target} is not a directory",
                hint="give a model name or an entry directory (model-pull list)",
            )
    else:
        entry = root.current(target)
        if entry is None:
            raise ModelPullError(
                ExitCode.NOT_INSTALLED,
                f"no model named {target!r} in {root.path}",
                hint="see model-pull list, or give the entry's path",
            )
        path = entry.path
    head, sep, own = path.name.partition("-")
    named = bool(sep and binary_cache.STORE_HASH_RE.match(head) and valid_store_name(own))
    publish = name or (own if named else path.name)
    if not valid_store_name(publish):
        raise ModelPullError(
            ExitCode.BAD_INPUT,
            f"{publish!r} cannot be a store name",
            hint="use --name with letters, digits and + - . _ ? =",
        )
    owner = StateRoot(path.parent.parent) if path.parent.name == "store" else None
    recorded = owner.nar_hash_of(Entry(path)) if owner is not None else None
    return Source(path, publish, recorded, owner)


def push(src: Source, to: str, secret_key: Path | None) -> Pushed:
    url = binary_cache.publish_url(to, secret_key)
    directory = url.local_directory
    if binary_cache.written_natively(url) and directory is not None:
        written = binary_cache.write_to_directory(
            directory, src.path, src.name, expected_nar=src.recorded_nar
        )
        if secret_key is not None:
            nix.require()
            nix.sign(f"file://{directory}", secret_key, written.narinfo.store_path)
        return Pushed(to, written.narinfo, not written.already, secret_key is not None)
    nix.require()
    return _nix_copy(src, url, to, secret_key)


def _nix_copy(src: Source, url: StoreUrl, to: str, secret_key: Path | None) -> Pushed:
    nar = nar_hash(src.path)  # the narinfo comes before the NAR: hash it once first
    binary_cache.refuse_changed(src.path, nar, src.recorded_nar)
    narinfo = NarInfo.for_entry(nar, src.name)
    with _scratch(src) as tmp, serve_entry(src.path, narinfo) as loopback:
        env = {**os.environ, "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(tmp / "xdg")}
        result = nix.copy_path(
            narinfo.store_path,
            src=loopback,
            dst=str(url),
            settings={"narinfo-cache-negative-ttl": "0"},
            env=env,
        )
    if result.returncode != 0:
        raise ModelPullError(
            ExitCode.NIX,
            f"nix copy to {to} failed: {nix.failure_reason(result)}",
            hint="check the URL and that this machine may write there",
        )
    return Pushed(to, narinfo, True, secret_key is not None)


@contextlib.contextmanager
def _scratch(src: Source) -> Iterator[Path]:
    """A temporary directory on the entries' disk (under staging/, holding the root's lock so no
    pull removes it), else the system's."""
    if src.root is None:
        with tempfile.TemporaryDirectory(prefix="model-pull-push.") as system_tmp:
            yield Path(system_tmp)
        return
    with src.root.lock(wait=True):
        scratch = Path(tempfile.mkdtemp(prefix=f"{src.name}.push.", dir=src.root.staging))
        try:
            yield scratch
        finally:
            remove_tree(scratch)


@contextlib.contextmanager
def serve_entry(entry: Path, narinfo: NarInfo) -> Iterator[str]:
    """A binary cache with one path on 127.0.0.1 (an ephemeral port), for `nix copy --from`:
    its nix-cache-info, its narinfo, and its NAR, generated from the entry as it is sent."""
    files = {
        f"/{binary_cache.CACHE_INFO}": b"StoreDir: /nix/store\n",
        f"/{binary_cache.hash_part(narinfo.store_path)}.narinfo": narinfo.text().encode(),
    }
    nar_path = f"/{narinfo.nar_url}"

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, *, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            size = len(files[path]) if path in files else narinfo.nar_size
            if path not in files and path != nar_path:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if not body:
                return
            try:
                if path in files:
                    self.wfile.write(files[path])
                else:
                    sent = nar_hash(entry, out=self.wfile.write)
                    _same(sent, narinfo)
            except (BrokenPipeError, ConnectionResetError):
                logger.info("nix copy closed the connection")

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("loopback cache: " + format, *args)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _same(sent: NarResult, narinfo: NarInfo) -> None:
    if sent.sri != narinfo.nar_hash:
        # Nix refuses the NAR (hash mismatch); say which side changed.
        logger.warning(
            "the entry changed while it was pushed: %s, not %s", sent.sri, narinfo.nar_hash
        )
