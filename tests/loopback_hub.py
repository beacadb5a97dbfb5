"""The loopback Hub the tests use: model_pull.devhub's server, plus what only tests need.

- Faults, per file or per repo (`inject`): serve bytes of the right size that do not match the
  listed hash (every byte inverted), throttle a body to N bytes/second, or close the connection
  after N body bytes of a download from offset 0 (a Range request that resumes is served in
  full). They are kept in `faults/<org>/<name>.json` under the hub's directory and read on
  every request, so a server in another process (`python tests/loopback_hub.py serve DIR`, as
  the real-systemd tests run it inside a container) applies them too.
- Request recording (`requests`, `api_requests`, `bytes_served`, `reset_counters`): what the
  server in this process was asked and sent, so a test can prove that a resumed download asked
  for a Range and did not get the first bytes again, or that a pull made no request at all.
- Listings with names a client must refuse (`add_repo(..., allow_unsafe_names=True)`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import sys
import time
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


class TestHub(DevHub):
    """A DevHub that can misbehave on purpose and remembers what it was asked."""

    __test__ = False  # not a pytest test class

    def __init__(self, data_dir: Path, **kw: Any) -> None:
        super().__init__(data_dir, **kw)
        self._allow_unsafe = False
        self._records: list[RequestRecord] = []
        self._api_paths: list[str] = []
        self._served: dict[tuple[str, str], int] = {}

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

    def inject(
        self,
        repo_id: str,
        path: str | None = None,
        *,
        corrupt: bool = False,
        throttle_bps: int | None = None,
        drop_after: int | None = None,
    ) -> None:
        """Make `path` (or every file of the repo, with path=None) misbehave; a new fault for
        the same path replaces the old one."""
        if self.get_repo(repo_id) is None:
            raise KeyError(f"no repo {repo_id!r}")
        faults = [f for f in self.faults(repo_id) if f.path != path]
        fault = Fault(path, corrupt, throttle_bps, drop_after)
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

    def fault_for(self, repo_id: str, path: str) -> Fault | None:
        faults = self.faults(repo_id)
        return next((f for f in faults if f.path == path), None) or next(
            (f for f in faults if f.path is None), None
        )

    # ---- what the server in this process was asked -------------------------------------------

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

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


class FaultyHandler(Handler):
    """Sends a file's bytes as its fault says, counting them; records every request."""

    @property
    def test_hub(self) -> TestHub:
        hub = self.hub
        assert isinstance(hub, TestHub)
        return hub

    def log_request_done(self, record: RequestRecord) -> None:
        self.test_hub.record(record)

    def log_api_request(self, path: str) -> None:
        self.test_hub.record_api(path)

    def send_file(self, blob: BinaryIO, start: int, length: int, repo_id: str, path: str) -> int:
        fault = self.test_hub.fault_for(repo_id, path)
        if fault is None or fault == Fault(fault.path):
            sent = super().send_file(blob, start, length, repo_id, path)
            self.test_hub.count(repo_id, path, sent)
            return sent
        blob.seek(start)
        limit = length
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
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        if sent < length:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        return sent


TestHub.handler = FaultyHandler

if __name__ == "__main__":
    sys.exit(main(hub_class=TestHub))
