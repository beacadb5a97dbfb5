"""A Hugging Face Hub-compatible HTTP server for loopback: tests, the demo, local mirrors.

Stdlib only (``http.server.ThreadingHTTPServer``, HTTP/1.1 keep-alive). It serves the endpoints
the real ``huggingface_hub`` client uses (the Hub's HTTP API, https://huggingface.co/docs/hub/api,
as huggingface_hub 2.x calls it):

- ``GET /api/models/{org}/{name}[/revision/{rev}][?blobs=true]`` -> model info (id, sha, siblings)
- ``GET /api/models/{org}/{name}/tree/{rev}[/{path}]?recursive=...`` -> listing, paginated with
  ``Link: <url>; rel="next"`` every ``page_size`` entries
- ``HEAD``/``GET /{org}/{name}/resolve/{rev}/{path}`` -> file bytes with ``X-Repo-Commit``,
  ``X-Linked-Etag`` (sha256 for LFS files, git blob sha1 otherwise), ``X-Linked-Size``, ``ETag``,
  ``Content-Length``, ``Accept-Ranges``; ``Range: bytes=N-[M]`` answers 206 + ``Content-Range``.

It never opts in to Xet (no ``X-Xet-Hash``, no ``xetHash``): the client uses plain HTTP.

Errors, and the exception huggingface_hub 2.4 raises for each (checked with the real client in
tests/test_devhub.py):

============================  ===========================  ====================================
case                          status + ``X-Error-Code``    huggingface_hub raises
============================  ===========================  ====================================
unknown repo                  404 ``RepoNotFound``         ``RepositoryNotFoundError``
unknown revision              404 ``RevisionNotFound``     ``RevisionNotFoundError``
missing file                  404 ``EntryNotFound``        ``RemoteEntryNotFoundError`` (an
                                                           ``EntryNotFoundError``)
gated, no token               401 ``GatedRepo``            ``GatedRepoError``
gated, wrong token            403 ``GatedRepo``            ``GatedRepoError``
range past the end            416                          ``HfHubHTTPError``
============================  ===========================  ====================================

``GatedRepo`` is checked before ``RepoNotFound`` by the client, so a 401 with ``GatedRepo`` is
a ``GatedRepoError`` (a subclass of ``RepositoryNotFoundError``). As on the real Hub, a gated
repo's metadata (model info, tree) is public; only ``resolve`` needs the token.

What the real client does with what this server sends (huggingface_hub 2.4, measured in
tests/test_devhub.py): it resumes a dropped body in the same process with a Range request, but
never across processes; it checks sizes, not content; `snapshot_download` refuses absolute and
'..' names and writes names with a backslash. Check a listing before downloading.

State lives in ``data_dir``: ``blobs/<sha256>`` (content-addressed bytes) and
``repos/<org>/<name>.json`` (commits, refs, gating). The JSON on disk is the source of truth and
is re-read when it changes, so ``python -m model_pull.devhub serve DIR`` in another process sees
repos added later with :meth:`DevHub.add_repo`.

Tests extend it (tests/loopback_hub.py) through three methods of the request handler:
``intercept`` (answer a request some other way), ``send_file`` (how a file's bytes are sent) and
``log_request_done`` (what was asked and sent).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import hashlib
import http.server
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, BinaryIO, Self

logger = logging.getLogger(__name__)

LFS_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.gguf",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.onnx",
    "*.msgpack",
    "*.h5",
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
DEFAULT_PAGE_SIZE = 1000
CHUNK = 1024 * 1024
_HEX40 = re.compile(r"[0-9a-f]{40}")
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
# An LFS pointer file: what `pointerSize` measures.
_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"


class ErrorCode(enum.StrEnum):
    """Values of the ``X-Error-Code`` header, as the real Hub sends them."""

    REPO_NOT_FOUND = "RepoNotFound"
    REVISION_NOT_FOUND = "RevisionNotFound"
    ENTRY_NOT_FOUND = "EntryNotFound"
    GATED_REPO = "GatedRepo"


@dataclass(frozen=True)
class FileEntry:
    """One file of one commit."""

    path: str
    size: int
    sha256: str
    git_sha1: str
    lfs: bool

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileEntry:
        return cls(
            path=str(data["path"]),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            git_sha1=str(data["git_sha1"]),
            lfs=bool(data["lfs"]),
        )

    @property
    def etag(self) -> str:
        """What the client names the blob after: sha256 for LFS files, git blob sha1 otherwise."""
        return self.sha256 if self.lfs else self.git_sha1

    @property
    def pointer_size(self) -> int:
        return len(_POINTER.format(sha256=self.sha256, size=self.size).encode())


@dataclass(frozen=True)
class Repo:
    """A repo as stored in ``repos/<org>/<name>.json``."""

    repo_id: str
    refs: Mapping[str, str]
    commits: Mapping[str, tuple[FileEntry, ...]]
    gated: bool = False
    token_sha256: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "refs": dict(self.refs),
            "commits": {c: [f.to_json() for f in fs] for c, fs in self.commits.items()},
            "gated": self.gated,
            "token_sha256": list(self.token_sha256),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Repo:
        return cls(
            repo_id=str(data["repo_id"]),
            refs={str(k): str(v) for k, v in data["refs"].items()},
            commits={
                str(c): tuple(FileEntry.from_json(f) for f in fs)
                for c, fs in data["commits"].items()
            },
            gated=bool(data.get("gated", False)),
            token_sha256=tuple(str(t) for t in data.get("token_sha256", ())),
        )

    def resolve(self, revision: str) -> str | None:
        """A branch/tag name or a full commit sha -> the commit sha, or None."""
        if revision in self.refs:
            return self.refs[revision]
        if _HEX40.fullmatch(revision) and revision in self.commits:
            return revision
        return None


@dataclass(frozen=True)
class RequestRecord:
    """One resolve request as the server answered it (`_Handler.log_request_done`)."""

    method: str
    repo_id: str
    path: str
    range: str | None
    status: int
    body_bytes: int


def git_blob_sha1_and_sha256(source: bytes | Path) -> tuple[str, str, int]:
    """(git blob sha1, sha256, size) of bytes or a file, streaming files in 1 MiB chunks."""
    if isinstance(source, bytes):
        size = len(source)
        g = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
        g.update(source)
        return g.hexdigest(), hashlib.sha256(source).hexdigest(), size
    size = source.stat().st_size
    g = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    s = hashlib.sha256()
    with source.open("rb") as f:
        while chunk := f.read(CHUNK):
            g.update(chunk)
            s.update(chunk)
    return g.hexdigest(), s.hexdigest(), size


def is_unsafe_name(name: str) -> bool:
    """True for names a client must refuse: absolute, '..', empty parts, NUL, backslash."""
    if not name or "\0" in name or "\\" in name or name.startswith("/"):
        return True
    parts = name.split("/")
    return any(p in ("", ".", "..") for p in parts)


def commit_sha(files: Sequence[FileEntry]) -> str:
    """sha1 over the sorted listing: the same files give the same commit."""
    h = hashlib.sha1(usedforsecurity=False)
    for f in sorted(files, key=lambda e: e.path):
        h.update(f"{f.path}\0{f.size}\0{f.git_sha1}\0{f.sha256}\0{int(f.lfs)}\n".encode())
    return h.hexdigest()


class DevHub:
    """Repos on disk under ``data_dir``; :meth:`serve` exposes them over HTTP."""

    def __init__(self, data_dir: Path, *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self.data_dir = Path(data_dir)
        self.page_size = page_size
        (self.data_dir / "blobs").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "repos").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, Repo]] = {}

    # ---- repos -------------------------------------------------------------------------

    def _repo_file(self, repo_id: str) -> Path:
        org, _, name = repo_id.partition("/")
        if not (_REPO_PART.fullmatch(org) and _REPO_PART.fullmatch(name)):
            raise ValueError(f"repo id must be 'org/name', got {repo_id!r}")
        return self.data_dir / "repos" / org / f"{name}.json"

    def blob_path(self, sha256: str) -> Path:
        return self.data_dir / "blobs" / sha256

    def get_repo(self, repo_id: str) -> Repo | None:
        """The repo as currently on disk (re-read when its JSON changed), or None."""
        try:
            path = self._repo_file(repo_id)
        except ValueError:
            return None
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        with self._lock:
            cached = self._cache.get(repo_id)
            if cached is not None and cached[0] == mtime:
                return cached[1]
        repo = Repo.from_json(json.loads(path.read_text()))
        with self._lock:
            self._cache[repo_id] = (mtime, repo)
        return repo

    def repo_ids(self) -> list[str]:
        root = self.data_dir / "repos"
        return sorted(f"{p.parent.name}/{p.stem}" for p in root.glob("*/*.json"))

    def _save(self, repo: Repo) -> None:
        path = self._repo_file(repo.repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(repo.to_json(), f, indent=1, sort_keys=True)
        # A fresh mtime even within the same clock tick, so readers notice the change.
        previous = path.stat().st_mtime_ns if path.exists() else 0
        now = max(time.time_ns(), previous + 1)
        os.utime(tmp, ns=(now, now))
        Path(tmp).replace(path)
        with self._lock:
            self._cache.pop(repo.repo_id, None)

    def _store_blob(self, source: bytes | Path) -> tuple[str, str, int]:
        git_sha1, sha256, size = git_blob_sha1_and_sha256(source)
        dst = self.blob_path(sha256)
        if dst.exists():
            return git_sha1, sha256, size
        fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=".tmp-")
        os.close(fd)
        tmp = Path(tmp_name)
        if isinstance(source, bytes):
            tmp.write_bytes(source)
        else:
            tmp.unlink()
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        tmp.replace(dst)
        return git_sha1, sha256, size

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        *,
        branch: str = "main",
        gated: bool = False,
        tokens: Sequence[str] = (),
        lfs_patterns: Sequence[str] = LFS_PATTERNS,
        lfs_size_threshold: int = LFS_SIZE_THRESHOLD,
        keep_existing: bool = False,
    ) -> str:
        """Commit ``files`` (the whole tree) to ``branch`` and return the commit sha.

        With ``keep_existing`` the branch's current files stay unless ``files`` replaces them.
        Earlier commits stay resolvable by sha. Path inputs are hardlinked into the blob store
        when possible (do not modify them afterwards), else copied; never read into memory.
        ``gated`` repos serve files only to ``Authorization: Bearer <one of tokens>``.
        Unsafe names (absolute, '..', NUL, backslash) raise ValueError (`check_name`).
        """
        entries: dict[str, FileEntry] = {}
        existing = self.get_repo(repo_id)
        if keep_existing and existing is not None and branch in existing.refs:
            entries = {f.path: f for f in existing.commits[existing.refs[branch]]}
        for name, source in files.items():
            self.check_name(name)
            git_sha1, sha256, size = self._store_blob(source)
            base = PurePosixPath(name).name
            lfs = size > lfs_size_threshold or any(fnmatch(base, p) for p in lfs_patterns)
            entries[name] = FileEntry(name, size, sha256, git_sha1, lfs)
        listing = tuple(sorted(entries.values(), key=lambda e: e.path))
        commit = commit_sha(listing)
        commits = dict(existing.commits) if existing else {}
        commits[commit] = listing
        refs = dict(existing.refs) if existing else {}
        refs[branch] = commit
        token_hashes = tuple(hashlib.sha256(t.encode()).hexdigest() for t in tokens)
        if existing is not None and not tokens:
            token_hashes = existing.token_sha256
        repo = Repo(
            repo_id=repo_id,
            refs=refs,
            commits=commits,
            gated=gated,
            token_sha256=token_hashes,
        )
        self._save(repo)
        logger.debug("added %s@%s (%s) with %d files", repo_id, branch, commit, len(listing))
        return commit

    def tag(self, repo_id: str, name: str, commit: str) -> None:
        """Point a ref (tag or branch) ``name`` at an existing commit."""
        repo = self._require(repo_id)
        if commit not in repo.commits:
            raise ValueError(f"{repo_id} has no commit {commit}")
        self._save(dataclasses.replace(repo, refs={**repo.refs, name: commit}))

    def _require(self, repo_id: str) -> Repo:
        repo = self.get_repo(repo_id)
        if repo is None:
            raise KeyError(f"no repo {repo_id!r}")
        return repo

    def check_name(self, name: str) -> None:
        """ValueError for a file name a client must refuse (absolute, '..', NUL, backslash)."""
        if is_unsafe_name(name):
            raise ValueError(f"unsafe file name {name!r}")

    # ---- serving -----------------------------------------------------------------------

    handler: type[Handler]  # set below, after the class

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> ServerHandle:
        """Start serving in a background thread."""
        server = _Server((host, port), self.handler, self)
        thread = threading.Thread(target=server.serve_forever, name="devhub", daemon=True)
        thread.start()
        handle = ServerHandle(server, thread)
        logger.info("devhub serving %s on %s", self.data_dir, handle.url)
        return handle


class ServerHandle:
    """A running server: ``.url``, ``.port``, ``.close()``; a context manager."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        self.url = f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        hub: DevHub,
    ) -> None:
        self.hub = hub
        super().__init__(address, handler)


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _repo_id(parts: list[str]) -> str:
    return "/".join(urllib.parse.unquote(p) for p in parts)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=N-`` or ``bytes=N-M`` -> (start, end inclusive); None if unsatisfiable."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix: last N bytes
        n = int(m.group(2))
        return (max(size - n, 0), size - 1) if n and size else None
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    end = min(end, size - 1)
    if start >= size or end < start:
        return None
    return start, end


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "devhub/0.1"
    # Headers and body go out in separate writes: without TCP_NODELAY the body of a small
    # file waits for the client's delayed ACK (40 ms a response).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    @property
    def hub(self) -> DevHub:
        return self.server.hub

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    # ---- routing -----------------------------------------------------------------------

    def _dispatch(self, *, head: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        parts = url.path.split("/")[1:]
        try:
            if len(parts) >= 3 and parts[0] == "api" and parts[1] == "models":
                self.log_api_request(urllib.parse.unquote(url.path))
                kind = "tree" if len(parts) >= 6 and parts[4] == "tree" else "revision"
                if not self.intercept(kind, _repo_id(parts[2:4]), None, head=head):
                    self._api_models(parts[2:], query, url.path, head=head)
            elif len(parts) >= 4 and parts[2] == "resolve":
                filename = urllib.parse.unquote("/".join(parts[4:]))
                if not self.intercept("resolve", _repo_id(parts[:2]), filename, head=head):
                    self._resolve(parts, head=head)
            else:
                raise _HttpError(404, f"no route for {url.path}")
        except _HttpError as err:
            self._send_error(err, head=head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _repo_and_commit(self, org: str, name: str, rev_raw: str) -> tuple[Repo, str]:
        repo_id = f"{urllib.parse.unquote(org)}/{urllib.parse.unquote(name)}"
        repo = self.hub.get_repo(repo_id)
        if repo is None:
            raise _HttpError(404, f"Repository {repo_id} not found", ErrorCode.REPO_NOT_FOUND)
        revision = urllib.parse.unquote(rev_raw)
        commit = repo.resolve(revision)
        if commit is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", ErrorCode.REVISION_NOT_FOUND)
        return repo, commit

    def _api_models(
        self, parts: list[str], query: dict[str, list[str]], raw_path: str, *, head: bool
    ) -> None:
        if len(parts) < 2:
            raise _HttpError(404, "no route")
        org, name, rest = parts[0], parts[1], parts[2:]
        if not rest:
            rest = ["revision", "main"]
        if rest[0] == "revision" and len(rest) >= 2:
            repo, commit = self._repo_and_commit(org, name, "/".join(rest[1:]))
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            self._send_json(self._model_info(repo, commit, blobs=blobs), head=head)
        elif rest[0] == "tree" and len(rest) >= 2:
            repo, commit = self._repo_and_commit(org, name, rest[1])
            prefix = urllib.parse.unquote("/".join(rest[2:])).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            cursor = int(query.get("cursor", ["0"])[0])
            self._tree(repo, commit, prefix, recursive, cursor, query, raw_path, head=head)
        else:
            raise _HttpError(404, "no route")

    # ---- API -----------------------------------------------------------------------------

    @staticmethod
    def _model_info(repo: Repo, commit: str, *, blobs: bool) -> dict[str, Any]:
        siblings: list[dict[str, Any]] = []
        for f in repo.commits[commit]:
            sib: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                sib["size"] = f.size
                sib["blobId"] = f.git_sha1
                if f.lfs:
                    sib["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(sib)
        return {
            "_id": commit[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }

    def _tree(
        self,
        repo: Repo,
        commit: str,
        prefix: str,
        recursive: bool,
        cursor: int,
        query: dict[str, list[str]],
        raw_path: str,
        *,
        head: bool,
    ) -> None:
        files = repo.commits[commit]
        entries: list[dict[str, Any]] = []
        dirs: set[str] = set()
        base = f"{prefix}/" if prefix else ""
        for f in files:
            if prefix and not f.path.startswith(base):
                continue
            rel = f.path[len(base) :]
            rel_parts = rel.split("/")
            # Directory entries for every parent below the prefix (the real Hub lists them).
            depth = len(rel_parts) - 1 if recursive else min(len(rel_parts) - 1, 1)
            for i in range(1, depth + 1):
                dirs.add(base + "/".join(rel_parts[:i]))
            if not recursive and len(rel_parts) > 1:
                continue
            entry: dict[str, Any] = {
                "type": "file",
                "oid": f.git_sha1,
                "size": f.size,
                "path": f.path,
            }
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            entries.append(entry)
        if prefix and not entries and not dirs:
            raise _HttpError(404, f"{prefix} does not exist", ErrorCode.ENTRY_NOT_FOUND)
        for d in dirs:
            oid = hashlib.sha1(f"{commit}:{d}".encode(), usedforsecurity=False).hexdigest()
            entries.append({"type": "directory", "oid": oid, "size": 0, "path": d})
        entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        page_size = max(self.hub.page_size, 1)
        page = entries[cursor : cursor + page_size]
        headers: dict[str, str] = {}
        if cursor + page_size < len(entries):
            params = {k: v[0] for k, v in query.items() if k != "cursor"}
            params["cursor"] = str(cursor + page_size)
            host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_port}"
            next_url = f"http://{host}{raw_path}?{urllib.parse.urlencode(params)}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        self._send_json(page, head=head, extra=headers)

    # ---- resolve ---------------------------------------------------------------------------

    def _authorized(self, repo: Repo) -> None:
        if not repo.gated:
            return
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise _HttpError(
                401,
                f"Access to model {repo.repo_id} is restricted. You must have access to it "
                "and be authenticated to access it. Please log in.",
                ErrorCode.GATED_REPO,
            )
        token_hash = hashlib.sha256(auth.removeprefix("Bearer ").strip().encode()).hexdigest()
        if token_hash not in repo.token_sha256:
            raise _HttpError(
                403,
                f"Access to model {repo.repo_id} is restricted and you are not in the "
                "authorized list.",
                ErrorCode.GATED_REPO,
            )

    def _resolve(self, parts: list[str], *, head: bool) -> None:
        repo_id = f"{urllib.parse.unquote(parts[0])}/{urllib.parse.unquote(parts[1])}"
        filename = urllib.parse.unquote("/".join(parts[4:]))
        range_header = self.headers.get("Range")
        method = "HEAD" if head else "GET"
        try:
            repo, commit = self._repo_and_commit(parts[0], parts[1], parts[3])
            self._authorized(repo)
            entry = next((f for f in repo.commits[commit] if f.path == filename), None)
            if entry is None:
                raise _HttpError(
                    404, f"{filename} does not exist at {commit}", ErrorCode.ENTRY_NOT_FOUND
                )
        except _HttpError as err:
            self.log_request_done(
                RequestRecord(method, repo_id, filename, range_header, err.status, 0)
            )
            raise
        status, start, end = 200, 0, entry.size - 1
        if range_header:
            parsed = _parse_range(range_header, entry.size)
            if parsed is None:
                self.log_request_done(
                    RequestRecord(method, repo_id, filename, range_header, 416, 0)
                )
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{entry.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, (start, end) = 206, parsed
        length = end - start + 1 if entry.size else 0
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{entry.etag}"')
        self.send_header("X-Repo-Commit", commit)
        self.send_header("X-Linked-Etag", f'"{entry.etag}"')
        self.send_header("X-Linked-Size", str(entry.size))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        self.end_headers()
        sent = 0
        try:
            if not head and length:
                with self.hub.blob_path(entry.sha256).open("rb") as blob:
                    sent = self.send_file(blob, start, length, repo_id, filename)
        finally:
            self.log_request_done(
                RequestRecord(method, repo_id, filename, range_header, status, sent)
            )

    def send_file(self, blob: BinaryIO, start: int, length: int, repo_id: str, path: str) -> int:
        """Send `length` bytes of `blob` from `start` (sendfile); the bytes sent."""
        self.wfile.flush()
        sock: socket.socket = self.connection
        sent = 0
        try:
            while sent < length:
                n = sock.sendfile(blob, start + sent, min(length - sent, 64 * CHUNK))
                if n == 0:
                    break
                sent += n
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        return sent

    def intercept(self, kind: str, repo_id: str, path: str | None, *, head: bool) -> bool:
        """Answer a request some other way before it is routed ("revision", "tree" or
        "resolve"); True when it was answered. The tests' Hub misbehaves here."""
        return False

    def log_request_done(self, record: RequestRecord) -> None:
        """A resolve request was answered (debug log; tests record them)."""
        logger.debug("%s", record)

    def log_api_request(self, path: str) -> None:
        """An API request (model info, tree listing) arrived (debug log; tests record them)."""
        logger.debug("api %s", path)

    # ---- responses -------------------------------------------------------------------------

    def _send_json(
        self, payload: Any, *, head: bool, status: int = 200, extra: Mapping[str, str] = {}
    ) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_error(self, err: _HttpError, *, head: bool) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code is not None:
            headers["X-Error-Code"] = err.code.value
        self._send_json({"error": err.message}, head=head, status=err.status, extra=headers)


DevHub.handler = Handler


# ---- command line --------------------------------------------------------------------------


@contextlib.contextmanager
def _serving(hub: DevHub, host: str, port: int) -> Iterator[ServerHandle]:
    handle = hub.serve(host, port)
    try:
        yield handle
    finally:
        handle.close()


def main(argv: Sequence[str] | None = None, hub_class: type[DevHub] = DevHub) -> int:
    """``python -m model_pull.devhub serve DIR [--host H] [--port P] [--port-file F]``."""
    parser = argparse.ArgumentParser(prog="python -m model_pull.devhub")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the repos saved in DIR")
    serve.add_argument("data_dir", type=Path)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--port-file", type=Path, default=None)
    serve.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="devhub: %(message)s")
    if not args.data_dir.is_dir():
        print(
            f"error: {args.data_dir} is not a directory (create it with DevHub.add_repo)",
            file=sys.stderr,
        )
        return 2
    hub = hub_class(args.data_dir, page_size=args.page_size)
    with _serving(hub, args.host, args.port) as handle:
        print(handle.url, flush=True)
        if args.port_file is not None:
            tmp = args.port_file.with_name(args.port_file.name + ".tmp")
            tmp.write_text(str(handle.port))
            tmp.replace(args.port_file)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(1.0):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
