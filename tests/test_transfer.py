"""Ranged downloads (transfer.py) against a real HTTP server on loopback: what is hashed while a
file arrives is what ends on disk, whether the server honours Range or not, fresh or resumed.

Ranges are made small here (64 KiB) so that a 1 MiB body has sixteen of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_pull import transfer
from model_pull.hashing import CHUNK, Hasher, file_hashes, nar_hash

BODY = os.urandom((1 << 20) + 4321)
RANGE = 64 << 10
BIG = os.urandom(40 << 20)  # the connection tests: 40 ranges of 1 MiB
BIG_RANGE = 1 << 20


class _Pace:
    """Bytes per second for one connection, or shared by all (a saturated link)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.free_at = 0.0

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            until = self.free_at = max(now, self.free_at) + n / self.rate
        time.sleep(max(0.0, until - now))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = BODY
    honour_range = True
    per_connection: float | None = None  # bytes/s each connection gets
    link: _Pace | None = None  # bytes/s all connections share
    asked: list[str | None] = []  # noqa: RUF012 (one list per server, see the fixture)

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        self.asked.append(rng)
        start, end = 0, len(self.body) - 1
        if rng and self.honour_range:
            a, _, b = rng.removeprefix("bytes=").partition("-")
            start, end = int(a), int(b) if b else len(self.body) - 1
        body = memoryview(self.body)[start : end + 1]
        partial = bool(rng and self.honour_range)
        self.send_response(206 if partial else 200)
        self.send_header("Content-Length", str(len(body)))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(self.body)}")
        self.end_headers()
        own = _Pace(self.per_connection) if self.per_connection else None
        for i in range(0, len(body), 64 << 10):
            piece = body[i : i + (64 << 10)]
            for pace in (own, self.link):
                if pace is not None:
                    pace.take(len(piece))
            self.wfile.write(piece)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serving(handler: type[_Handler]) -> Iterator[str]:
    """`handler` on loopback: the URL of its body."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/blob"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"asked": []})
    with _serving(handler) as url:
        yield url, handler


def job_for(url: str, tmp_path: Path) -> transfer.Job:
    part = transfer.Part(tmp_path, "etag", len(BODY), RANGE)
    part.open()
    return transfer.Job("blob", len(BODY), url, {}, part)


def run_and_hash(job: transfer.Job, connections: int) -> str:
    """Download on `connections` connections while the main thread hashes the file in
    order, the way pull.py does; the hash computed while the bytes arrived."""
    run = transfer.Transfer([job], connections)
    with transfer.running(run):
        sha256, _ = file_hashes(job.reader(run.cancel), job.size)
        run.wait()
    job.part.close()
    return sha256


@pytest.mark.parametrize("connections", [1, 4])
def test_ranges_in_parallel_hashed_in_order(server, tmp_path, connections):
    url, handler = server
    job = job_for(url, tmp_path)
    assert run_and_hash(job, connections) == hashlib.sha256(BODY).hexdigest()
    assert (tmp_path / "etag").read_bytes() == BODY
    assert not (tmp_path / "etag.incomplete").exists() and not (tmp_path / "etag.ranges").exists()
    assert len(handler.asked) == len(BODY) // RANGE + 1 and all(handler.asked)


def _plant(tmp_path: Path, done: dict[int, int], *, counters: bool) -> None:
    """What a killed run leaves: some bytes of some ranges, and (or not) their counters."""
    data = bytearray(len(BODY))
    for index, n in done.items():
        data[index * RANGE : index * RANGE + n] = BODY[index * RANGE : index * RANGE + n]
    end = max(i * RANGE + n for i, n in done.items())
    (tmp_path / "etag.incomplete").write_bytes(bytes(data[:end]))
    if counters:
        ranges = len(BODY) // RANGE + 1
        raw = struct.pack("<16sQQ", b"mp-ranges-v1\0\0\0\0", len(BODY), RANGE)
        raw += b"".join(struct.pack("<Q", done.get(i, 0)) for i in range(ranges))
        (tmp_path / "etag.ranges").write_bytes(raw)


def test_a_resume_asks_only_for_what_is_missing(server, tmp_path):
    url, handler = server
    _plant(tmp_path, {0: RANGE, 1: 1000, 5: RANGE, 6: 7}, counters=True)
    job = job_for(url, tmp_path)
    assert run_and_hash(job, 3) == hashlib.sha256(BODY).hexdigest()
    asked = sorted(handler.asked, key=lambda r: int(str(r).split("=")[1].split("-")[0]))
    assert f"bytes={RANGE + 1000}-{2 * RANGE - 1}" in asked
    assert f"bytes={6 * RANGE + 7}-{7 * RANGE - 1}" in asked
    assert not any(r.startswith(("bytes=0-", f"bytes={5 * RANGE}-")) for r in asked if r)
    assert (tmp_path / "etag").read_bytes() == BODY


def test_a_prefix_without_counters_is_resumed(server, tmp_path):
    """What an older model-pull (one stream, no counters) left: a prefix."""
    url, handler = server
    _plant(tmp_path, {0: RANGE, 1: RANGE, 2: 100}, counters=False)
    job = job_for(url, tmp_path)
    assert run_and_hash(job, 2) == hashlib.sha256(BODY).hexdigest()
    assert not any(r and r.startswith("bytes=0-") for r in handler.asked)


@pytest.mark.parametrize("stale", [False, True])
def test_a_server_that_ignores_range_gets_one_connection(server, tmp_path, stale):
    """Bytes on disk are never written twice: what is hashed is what is on disk, even when
    they were wrong (the pull's hash check then refuses the file)."""
    url, handler = server
    handler.honour_range = False
    _plant(tmp_path, {0: 1000}, counters=True)
    if stale:
        with (tmp_path / "etag.incomplete").open("r+b") as f:
            f.write(b"x" * 1000)
    job = job_for(url, tmp_path)
    got = run_and_hash(job, 4)
    on_disk = (tmp_path / "etag").read_bytes()
    assert got == hashlib.sha256(on_disk).hexdigest()
    assert (on_disk == BODY) is not stale
    assert len(handler.asked) == 1


def test_the_nar_of_a_tree_still_arriving_equals_the_nar_of_the_tree(server, tmp_path):
    """pull.py hashes the staging tree while its big file downloads (a hardlink to the
    download): the NAR hash is the one of the finished tree."""
    url, _ = server
    cache = tmp_path / "cache"
    cache.mkdir()
    job = job_for(url, cache)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.json").write_text("{}")
    os.link(cache / "etag.incomplete", tree / "sub" / "blob")
    run = transfer.Transfer([job], 4)
    ino = os.fstat(job.part.fd).st_ino
    with transfer.running(run):
        growing = nar_hash(
            tree,
            source=lambda path, st: (
                (job.size, job.reader(run.cancel)) if st.st_ino == ino else None
            ),
        )
        run.wait()
    job.part.close()
    assert (tree / "sub" / "blob").read_bytes() == BODY
    assert growing == nar_hash(tree)


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


# --- how many connections: as many as pay -------------------------------------------------


def _download_while_hashing(tmp_path: Path, **throttle: object) -> transfer.Transfer:
    """Up to 16 connections to a server of BIG throttled so, hashed while it arrives (as
    pull.py does)."""
    handler = type("Throttled", (_Handler,), {"asked": [], "body": BIG, **throttle})
    with _serving(handler) as url:
        part = transfer.Part(tmp_path, "big", len(BIG), BIG_RANGE)
        part.open()
        job = transfer.Job("big", len(BIG), url, {}, part)
        run = transfer.Transfer([job], 16, lead=transfer.LEAD)
        with transfer.running(run):
            sha256, _ = file_hashes(job.reader(run.cancel), job.size)
            run.wait()
        part.close()
    assert sha256 == hashlib.sha256(BIG).hexdigest()
    return run


def test_connections_are_added_while_each_brings_its_share(tmp_path):
    """A server that gives each connection 4 MB/s (as a CDN limits each): every doubling
    doubles the bytes per second, so the download goes up to all 16 connections."""
    assert _download_while_hashing(tmp_path, per_connection=4e6).peak == 16


def test_a_saturated_link_is_not_given_more_connections(tmp_path):
    """16 MB/s shared by every connection (the link, or the CPU, is the limit): a doubling
    brings nothing and is undone; the download never opens all 16 connections."""
    run = _download_while_hashing(tmp_path, link=_Pace(16e6))
    assert run.peak <= 8
