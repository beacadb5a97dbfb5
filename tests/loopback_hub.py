"""The loopback Hub the tests use: model_pull.devhub's server, plus what only tests need.

- Faults, per file or per repo (`inject`), kept in `faults/<org>/<name>.json` under the hub's
  directory and read on every request, so a server in another process (`python
  tests/loopback_hub.py serve DIR`, as the real-systemd tests run it inside a container) applies
  them too. A hostile or broken server, for real, on loopback:
  - bodies: bytes of the right size that do not match the listed hash (`corrupt`), throttled
    to N bytes/second (`throttle_bps`), cut after N bytes of a download from offset 0
    (`drop_after`), silent from file offset N on with the connection open (`stall_after`),
    longer than listed without a Content-Length (`extra_bytes`), shorter than the
    Content-Length says (`short_bytes`), the whole file for every Range (`ignore_range`);
  - any request kind (`on`: "revision", "tree" or "resolve"): held without an answer for N
    seconds (`hang`, released by `release()`), answered with an error status (`status`, with
    `retry_after`, and with the request's own headers echoed in its body: `echo`), written at N
    bytes/second headers and all (`trickle_bps`), redirected to another origin (`redirect`: a
    base URL; on "resolve" the HEAD carries the X-Linked-* headers, as the Hub's own redirects to
    its CDN do); the tree answered with any JSON (`listing`).
- `TestHub(..., cdn=True)`: a second origin serving the same data, to every client (the CDN
  behind a redirect).
- Request recording (`requests`, `api_requests`, `bytes_served`, `headers_seen`,
  `reset_counters`): what the server in this process was asked and sent, so a test can prove
  that a resumed download asked for a Range and did not get the first bytes again, that a pull
  made no request at all, or that no request to this origin carried a token.
- Listings with names a client must refuse (`add_repo(..., allow_unsafe_names=True)`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from model_pull.devhub import CHUNK, DevHub, Handler, RequestRecord, main

_INVERT = bytes(b ^ 0xFF for b in range(256))


@dataclass(frozen=True)
class Fault:
    """Misbehaviour for one file (`path`) or a whole repo (`path=None`)."""

    path: str | None = None
    corrupt: bool = False
    throttle_bps: int | None = None
    drop_after: int | None = None
    extra_bytes: int = 0
    short_bytes: int = 0
    stall_after: int | None = None
    ignore_range: bool = False
    on: str | None = None  # "revision", "tree", "resolve": what the faults below apply to
    hang: float | None = None
    status: int | None = None
    retry_after: str | None = None
    echo: bool = False
    trickle_bps: int | None = None
    redirect: str | None = None
    listing: Any = None

    @property
    def body_only(self) -> bool:
        """Only the bytes of a file misbehave (send_file), not its request."""
        return not (
            self.hang
            or self.status
            or self.trickle_bps
            or self.redirect
            or self.listing is not None
        )


class TestHub(DevHub):
    """A DevHub that can misbehave on purpose and remembers what it was asked."""

    __test__ = False  # not a pytest test class

    def __init__(self, data_dir: Path, *, cdn: bool = False, **kw: Any) -> None:
        super().__init__(data_dir, **kw)
        self.cdn = cdn
        self._allow_unsafe = False
        self._records: list[RequestRecord] = []
        self._api_paths: list[str] = []
        self._served: dict[tuple[str, str], int] = {}
        self._headers: list[tuple[str, str, dict[str, str]]] = []
        self._released = threading.Event()

    # ---- repos with unsafe names -----------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        *,
        allow_unsafe_names: bool = False,
        **kw: Any,
    ) -> str:
        self._allow_unsafe = allow_unsafe_names
        try:
            return super().add_repo(repo_id, files, **kw)
        finally:
            self._allow_unsafe = False

    def check_name(self, name: str) -> None:
        if not self._allow_unsafe:
            super().check_name(name)

    # ---- faults ----------------------------------------------------------------------------

    def _faults_file(self, repo_id: str) -> Path:
        org, _, name = repo_id.partition("/")
        return self.data_dir / "faults" / org / f"{name}.json"

    def faults(self, repo_id: str) -> list[Fault]:
        try:
            data = json.loads(self._faults_file(repo_id).read_text())
        except FileNotFoundError:
            return []
        return [Fault(**f) for f in data]

    def inject(self, repo_id: str, path: str | None = None, **how: Any) -> None:
        """Make `path` (or every file of the repo, with path=None) misbehave as `how` (the
        fields of `Fault`) says; a new fault for the same path replaces the old one."""
        if self.get_repo(repo_id) is None:
            raise KeyError(f"no repo {repo_id!r}")
        faults = [f for f in self.faults(repo_id) if f.path != path]
        fault = Fault(path, **how)
        if fault != Fault(path):
            faults.append(fault)
        target = self._faults_file(repo_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps([dataclasses.asdict(f) for f in faults]))
        tmp.replace(target)

    def clear_faults(self, repo_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._faults_file(repo_id).unlink()

    def release(self) -> None:
        """Let every request held by `hang` go (the end of a test)."""
        self._released.set()

    def hold(self, seconds: float) -> None:
        self._released.wait(seconds)

    def fault_for(self, repo_id: str, path: str) -> Fault | None:
        faults = self.faults(repo_id)
        return next((f for f in faults if f.path == path), None) or next(
            (f for f in faults if f.path is None), None
        )

    # ---- what the server in this process was asked -------------------------------------------

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def record_headers(self, kind: str, method: str, headers: dict[str, str]) -> None:
        with self._lock:
            self._headers.append((kind, method, headers))

    def headers_seen(self) -> list[tuple[str, str, dict[str, str]]]:
        """(kind, method, headers) of every request this server was sent, oldest first."""
        with self._lock:
            return list(self._headers)

    def record_api(self, path: str) -> None:
        with self._lock:
            self._api_paths.append(path)

    def count(self, repo_id: str, path: str, n: int) -> None:
        with self._lock:
            self._served[(repo_id, path)] = self._served.get((repo_id, path), 0) + n

    def requests(self, repo_id: str | None = None, path: str | None = None) -> list[RequestRecord]:
        """Resolve requests seen so far (HEAD and GET), oldest first, optionally filtered."""
        with self._lock:
            records = list(self._records)
        return [
            r
            for r in records
            if (repo_id is None or r.repo_id == repo_id) and (path is None or r.path == path)
        ]

    def api_requests(self, repo_id: str | None = None) -> list[str]:
        """URL paths of the API requests seen so far (model info, tree listings), oldest
        first, optionally only those about one repo."""
        prefix = f"/api/models/{repo_id}/" if repo_id else "/api/"
        with self._lock:
            return [p for p in self._api_paths if p.startswith(prefix)]

    def bytes_served(self, repo_id: str, path: str) -> int:
        """Body bytes written so far for this file (all requests, all revisions; live)."""
        with self._lock:
            return self._served.get((repo_id, path), 0)

    def reset_counters(self) -> None:
        with self._lock:
            self._records.clear()
            self._api_paths.clear()
            self._served.clear()
            self._headers.clear()


class _Trickle:
    """A response writer that sends `bps` bytes per second, a few bytes at a time."""

    def __init__(self, out: Any, bps: int, hub: TestHub) -> None:
        self.out, self.bps, self.hub = out, bps, hub

    def write(self, data: bytes) -> int:
        step = max(self.bps // 10, 1)
        for i in range(0, len(data), step):
            self.out.write(data[i : i + step])
            self.out.flush()
            self.hub.hold(step / self.bps)
        return len(data)

    def flush(self) -> None:
        self.out.flush()

    @property
    def closed(self) -> bool:  # socketserver asks when the request ends
        return bool(self.out.closed)


class FaultyHandler(Handler):
    """Sends a file's bytes as its fault says, counting them; records every request; answers
    requests some other way when a fault says so (`intercept`)."""

    @property
    def test_hub(self) -> TestHub:
        hub = self.hub
        assert isinstance(hub, TestHub)
        return hub

    def log_request_done(self, record: RequestRecord) -> None:
        self.test_hub.record(record)

    def log_api_request(self, path: str) -> None:
        self.test_hub.record_api(path)

    def _authorized(self, repo: Any) -> None:
        if not self.test_hub.cdn:
            super()._authorized(repo)

    def intercept(self, kind: str, repo_id: str, path: str | None, *, head: bool) -> bool:
        hub = self.test_hub
        hub.record_headers(kind, self.command, dict(self.headers.items()))
        fault = hub.fault_for(repo_id, path) if path is not None else None
        if fault is None or fault.body_only:
            fault = next((f for f in hub.faults(repo_id) if f.path is None and f.on == kind), fault)
        if fault is None or fault.body_only or fault.on not in (None, kind):
            return False
        if hub.cdn:
            return False
        if fault.hang:
            hub.hold(fault.hang)
            self.close_connection = True
            return True
        if fault.status:
            body = {"error": "the server is unhappy"}
            headers = {"X-Error-Message": "the server is unhappy"}
            if fault.echo:
                sent = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
                body["error"] = f"\x1b[31mbad request\u202e you sent:\n{sent}"
                headers["X-Error-Message"] = f"bad request \u202e you sent: {sent}"
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            self._send_json(body, head=head, status=fault.status, extra=headers)
            return True
        if fault.redirect:
            return self._redirect(fault.redirect, kind, repo_id, path, head=head)
        if fault.trickle_bps:
            self.wfile = _Trickle(self.wfile, fault.trickle_bps, hub)  # type: ignore[assignment]
            return False  # answered as usual, slowly
        if kind == "tree" and fault.listing is not None:
            if isinstance(fault.listing, str):  # raw text, e.g. JSON too deep to build here
                raw = fault.listing.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if not head:
                    self.wfile.write(raw)
            else:
                self._send_json(fault.listing, head=head)
            return True
        return False

    def _redirect(
        self, base: str, kind: str, repo_id: str, path: str | None, *, head: bool
    ) -> bool:
        self.send_response(302)
        self.send_header("Location", base.rstrip("/") + self.path)
        if kind == "resolve" and path is not None:
            repo = self.hub.get_repo(repo_id)
            parts = self.path.split("/")
            commit = repo.resolve(urllib.parse.unquote(parts[4])) if repo else None
            entry = (
                next((f for f in repo.commits[commit] if f.path == path), None)
                if repo and commit
                else None
            )
            if entry is not None and commit is not None:
                self.send_header("X-Repo-Commit", commit)
                self.send_header("X-Linked-Etag", f'"{entry.etag}"')
                self.send_header("X-Linked-Size", str(entry.size))
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def send_file(self, blob: BinaryIO, start: int, length: int, repo_id: str, path: str) -> int:
        fault = self.test_hub.fault_for(repo_id, path)
        if fault is None or fault == Fault(fault.path) or not fault.body_only:
            sent = super().send_file(blob, start, length, repo_id, path)
            self.test_hub.count(repo_id, path, sent)
            return sent
        blob.seek(start)
        limit = length - fault.short_bytes
        if fault.stall_after is not None:  # a file offset: no request gets past it
            limit = min(limit, max(0, fault.stall_after - start))
        if fault.drop_after is not None and start == 0:
            limit = min(length, fault.drop_after)
            self.close_connection = True
        chunk = max(fault.throttle_bps // 20, 1) if fault.throttle_bps is not None else CHUNK
        sent = 0
        t0 = time.monotonic()
        try:
            while sent < limit:
                data = blob.read(min(chunk, limit - sent))
                if not data:
                    break
                if fault.corrupt:
                    data = data.translate(_INVERT)
                self.wfile.write(data)
                sent += len(data)
                self.test_hub.count(repo_id, path, len(data))
                if fault.throttle_bps is not None:
                    delay = t0 + sent / fault.throttle_bps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            if fault.extra_bytes:
                self.wfile.write(b"\0" * fault.extra_bytes)
                self.close_connection = True
            if fault.stall_after is not None:
                self.wfile.flush()
                self.test_hub.hold(600)  # the connection stays open, silent
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        if sent < length or fault.extra_bytes:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        return sent

    def send_header(self, keyword: str, value: str) -> None:
        """Faults that change what a file's response says about its length."""
        fault = getattr(self, "_body_fault", None)
        if fault is not None and keyword == "Content-Length" and fault.extra_bytes:
            return  # the body runs until the connection closes
        super().send_header(keyword, value)

    def _resolve(self, parts: list[str], *, head: bool) -> None:
        repo_id = f"{urllib.parse.unquote(parts[0])}/{urllib.parse.unquote(parts[1])}"
        filename = urllib.parse.unquote("/".join(parts[4:]))
        fault = self.test_hub.fault_for(repo_id, filename)
        self._body_fault = fault if fault is not None and fault.body_only else None
        if (
            self._body_fault is not None
            and self._body_fault.ignore_range
            and "Range" in self.headers
        ):
            del self.headers["Range"]
        try:
            super()._resolve(parts, head=head)
        finally:
            self._body_fault = None


TestHub.handler = FaultyHandler

if __name__ == "__main__":
    sys.exit(main(hub_class=TestHub))
