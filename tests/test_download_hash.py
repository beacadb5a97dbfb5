"""The SHA-256 computed while a download is written equals the SHA-256 of the file it leaves.

Driven by huggingface_hub's own `http_get` against a real loopback HTTP server, including the
two cases where bytes were on disk before the download started: a resume the server honours
(206) and one it ignores (200 with the whole body: the library truncates the file and starts over).
Both with the library's own 10 MiB re-chunking and with the transport's chunks written as they
arrive (`hub.chunks_as_received`, what `fetch` uses). Per-file hashes taken during the NAR read
(`nar_hash(on_file=...)`, for files not hashed while written) are checked here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import pytest
from huggingface_hub import file_download

from model_pull import hub
from model_pull.hashing import CHUNK, Hasher, Sha256Appender, nar_hash

BODY = bytes(range(256)) * 4096 + b"tail"


class _Handler(http.server.BaseHTTPRequestHandler):
    honour_range = True

    def do_GET(self) -> None:
        start = 0
        rng = self.headers.get("Range")
        if rng and self.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
        body = BODY[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/blob", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("as_received", [False, True])
@pytest.mark.parametrize(
    ("prefix", "honour_range"),
    [
        (b"", True),  # a fresh download
        (BODY[:100_000], True),  # resumed: the server sends the rest
        (b"x" * 100_000, False),  # the server ignores Range: the stale prefix is dropped
    ],
)
def test_hash_while_writing_matches_the_file(
    server: tuple[str, type[_Handler]],
    tmp_path: Path,
    prefix: bytes,
    honour_range: bool,
    as_received: bool,
) -> None:
    url, handler = server
    handler.honour_range = honour_range
    part = tmp_path / "blob.incomplete"
    part.write_bytes(prefix)
    with contextlib.ExitStack() as stack:
        if as_received:
            stack.enter_context(hub.chunks_as_received())
        with Sha256Appender(part) as out:
            file_download.http_get(
                url,
                cast(BinaryIO, out),  # writes, tells, seeks and truncates like a file
                resume_size=len(prefix),
                expected_size=len(BODY),
            )
    assert part.read_bytes() == BODY
    assert out.sha256.hexdigest() == hashlib.sha256(BODY).hexdigest()


def test_chunks_as_received_puts_the_library_setting_back() -> None:
    from huggingface_hub import constants

    before = constants.DOWNLOAD_CHUNK_SIZE
    with pytest.raises(RuntimeError), hub.chunks_as_received():
        raise RuntimeError("a failed download")
    assert before == constants.DOWNLOAD_CHUNK_SIZE


def test_per_file_hashes_in_the_nar_read_cover_every_chunk(tmp_path: Path) -> None:
    files = {"a/big.bin": os.urandom(3 * CHUNK + 4097), "a/small": b"tokenizer", "b/empty": b""}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    seen: dict[str, hashlib._Hash] = {}

    def on_file(rel: str, size: int) -> list[Hasher]:
        assert size == len(files[rel])
        seen[rel] = hashlib.sha256()
        return [seen[rel]]

    nar = nar_hash(tmp_path, on_file)
    assert {rel: h.hexdigest() for rel, h in seen.items()} == {
        rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()
    }
    assert nar == nar_hash(tmp_path)  # the per-file hashers do not change the NAR hash
