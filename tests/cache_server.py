"""Binary caches on loopback for the fleet tests: a static HTTP server over a `file://` cache
directory (what "a static server over a pushed directory" is: Python's http.server, the same
GET/HEAD semantics as any static server), and a server that accepts connections and never
answers (a cache that hangs).

    with StaticCache(directory) as cache:      # cache.url, cache.requests
        ...
    with HangingServer() as hang:              # hang.url
        ...
"""

from __future__ import annotations

import contextlib
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self


class StaticCache:
    """Serves `directory` read-only on 127.0.0.1 (an ephemeral port); records each path asked."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests: list[str] = []
        recorded = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def send_head(self) -> Any:
                recorded.append(self.path)
                return super().send_head()

            def log_message(self, format: str, *args: object) -> None:
                pass

        directory.mkdir(parents=True, exist_ok=True)
        self._server = ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(Handler, directory=str(directory))
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class HangingServer:
    """Accepts connections on 127.0.0.1 and never sends a byte (until closed)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = self._sock.accept()
                self._held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
