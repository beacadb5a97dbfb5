"""Downloads over several connections, each file resumable per range and readable in order.

A file is cut into ranges of `RANGE_SIZE` bytes. `connections` workers take the next range of
the next file, in the order the files are given (the order the entry's NAR hash reads them),
never more than `LEAD` bytes ahead of the hashing, and write it with `pwrite` into
`<etag>.incomplete`; `<etag>.ranges` keeps, per range, how many
bytes are on disk (a counter written after the bytes: a kill -9 at any moment leaves it at or
below the truth). The next run continues each range where it stopped. A server that ignores
Range requests (`200` instead of `206`) gets one connection for the file, which skips what is
already on disk. Bytes once counted are never written again in the same run.

`Job.reader()` reads a file in order while it downloads: it waits until the bytes it asks for
have arrived. That is how every hash is computed while the bytes arrive (pull.py).

Bodies are checked against what was asked: a `206` must carry the Content-Range asked for, a
`200` the listed size, and a body never runs past its range. A body that ends early is asked
again from where it ended (`ATTEMPTS` times without progress); a server asking to wait is
waited for up to `net.RETRY_AFTER_MAX` seconds. Files that the Hub serves through Xet go
through hf-xet instead (`Job.xet`), which is parallel itself.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from model_pull import net, redact, safefs
from model_pull.errors import ExitCode, ModelPullError

if TYPE_CHECKING:
    import httpx2

logger = logging.getLogger(__name__)

RANGE_SIZE = 8 << 20
# How far the downloads may run ahead of the hashing (pull.py reads each file in order while
# it arrives): what is left to hash after the last byte. At most LEAD bytes, and no more than
# the hashing does in TAIL_TARGET seconds (measured while it runs), whatever the model's size.
LEAD = 160 << 20
TAIL_TARGET = 0.15
_MEASURED_AFTER = 32 << 20  # bytes hashed before the hashing's speed is trusted
CONNECTIONS_ENV = "MODEL_PULL_CONNECTIONS"
# 20 connections at the 64 MB/s a CDN commonly allows one connection fill a 10 Gb/s link.
DEFAULT_CONNECTIONS = 20
MAX_CONNECTIONS = 128
# Connections are opened as they pay: a download starts with MIN_CONNECTIONS and doubles them
# every TUNE_EVERY seconds, up to the configured number, while each doubling brings more bytes
# per second (GAIN of what the new connections would add if each got what the others get).
# Where the CPU, not the network, is the limit, more connections only take CPU from the hashing
# and the receiving (a 2-core machine pulls 1 GiB from loopback fastest over 1-2 connections).
MIN_CONNECTIONS = 2
TUNE_EVERY = 0.25
GAIN = 0.25
PROBE_EVERY = 2.0  # after a doubling that did not pay, how often another is tried
ATTEMPTS = 3  # requests in a row that bring no byte before a range is given up
_MAGIC = b"mp-ranges-v1\0\0\0\0"
_HEADER = struct.Struct("<16sQQ")
_COUNT = struct.Struct("<Q")


def connections_from_env() -> int:
    raw = os.environ.get(CONNECTIONS_ENV)
    if not raw:
        return DEFAULT_CONNECTIONS
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_CONNECTIONS:
        raise ModelPullError(
            ExitCode.USAGE,
            f"{CONNECTIONS_ENV}={redact.name(raw)} is not a number of connections "
            f"from 1 to {MAX_CONNECTIONS}",
            hint=f"unset it for the default of {DEFAULT_CONNECTIONS}",
        )
    return int(raw)


class CancelledError(Exception):
    """The transfer was stopped (Ctrl-C, or another file failed)."""


@dataclass
class Range:
    index: int
    start: int
    end: int  # exclusive
    done: int = 0  # bytes on disk from `start`
    taken: bool = False

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def complete(self) -> bool:
        return self.done >= self.length


class Part:
    """A file being downloaded: `<etag>.incomplete` and its per-range counters `<etag>.ranges`;
    `<etag>` once complete. Never follows a link (safefs)."""

    def __init__(self, directory: Path, etag: str, size: int, range_size: int) -> None:
        self.final = directory / etag
        self.data = directory / f"{etag}.incomplete"
        self.counters = directory / f"{etag}.ranges"
        self.size = size
        self.ranges = [
            Range(i, start, min(start + range_size, size))
            for i, start in enumerate(range(0, size, range_size))
        ]
        self.range_size = range_size
        self.fd = -1
        self._counters_fd = -1
        self.complete = False

    def open(self) -> None:
        """Open what an earlier run left (a complete file, or ranges to continue), or start."""
        if safefs.is_regular(self.final):
            fd = safefs.open_file(self.final, os.O_RDONLY)
            if os.fstat(fd).st_size == self.size:
                self.fd, self.complete = fd, True
                for r in self.ranges:
                    r.done = r.length
                return
            os.close(fd)
            safefs.unlink(self.final)
        self.fd = safefs.open_file(self.data, os.O_RDWR | os.O_CREAT, 0o600)
        on_disk = os.fstat(self.fd).st_size
        done = self._read_counters()
        if done is None:  # no counters: the bytes on disk are a prefix (a single-stream run)
            done = [max(0, min(on_disk - r.start, r.length)) for r in self.ranges]
        for r, d in zip(self.ranges, done, strict=True):
            r.done = max(0, min(d, r.length, on_disk - r.start))
        self._counters_fd = safefs.open_file(self.counters, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._counters_fd, 0)
        header = _HEADER.pack(_MAGIC, self.size, self.range_size)
        body = b"".join(_COUNT.pack(r.done) for r in self.ranges)
        os.pwrite(self._counters_fd, header + body, 0)
        if not self.ranges:
            self.finish()

    def _read_counters(self) -> list[int] | None:
        try:
            raw = safefs.read_bytes(self.counters, _HEADER.size + 8 * len(self.ranges) + 1)
        except FileNotFoundError:
            return None
        if len(raw) != _HEADER.size + 8 * len(self.ranges):
            return None
        magic, size, range_size = _HEADER.unpack_from(raw)
        if (magic, size, range_size) != (_MAGIC, self.size, self.range_size):
            return None
        return [_COUNT.unpack_from(raw, _HEADER.size + 8 * i)[0] for i in range(len(self.ranges))]

    @property
    def path(self) -> Path:
        """Where the bytes are now (ask under `Transfer.paused()`: a worker renames it)."""
        return self.final if self.complete else self.data

    @property
    def bytes_on_disk(self) -> int:
        return sum(r.done for r in self.ranges)

    def write(self, r: Range, data: bytes | memoryview) -> None:
        """Append `data` to range `r` on disk, then count it."""
        view = memoryview(data)
        offset = r.start + r.done
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n
        r.done += len(data)
        os.pwrite(self._counters_fd, _COUNT.pack(r.done), _HEADER.size + 8 * r.index)

    def finish(self) -> None:
        """All bytes are there: `<etag>.incomplete` becomes `<etag>`."""
        safefs.rename(self.data, self.final)
        with contextlib.suppress(OSError):
            os.close(self._counters_fd)
        self._counters_fd = -1
        safefs.unlink(self.counters)
        self.complete = True

    def close(self) -> None:
        for fd in (self.fd, self._counters_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self._counters_fd = -1


@dataclass
class Job:
    """One file: where to GET it, where it goes, and how far it is."""

    rel: str  # the path in the repository (for messages)
    size: int
    location: str  # where GET requests go (the Hub, or where it redirected the HEAD)
    headers: Mapping[str, str]
    part: Part
    xet: Callable[[], Path] | None = None  # hf-xet download to a local path, when the Hub opts in
    mode: str = "unknown"  # "ranges", "single" (the server ignores Range), "xet"
    error: BaseException | None = None
    hashed: int = 0  # bytes from offset 0 its reader has read
    on_hashed: Callable[[int, float], None] | None = None  # (bytes read, seconds waited)
    front: int = 0  # index of the first range that is not complete
    wanted: int = 0  # the offset a waiting reader needs on disk (0: nobody waits for bytes)
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def available(self) -> int:
        """Bytes from offset 0 that are on disk."""
        ranges = self.part.ranges
        if self.front >= len(ranges):
            return self.size
        r = ranges[self.front]
        return r.start + r.done

    def advanced(self) -> None:
        """Bytes arrived at the front: wake the reader once what it waits for is there (not at
        every chunk), and whoever waits for the file at its end."""
        with self.cond:
            ranges = self.part.ranges
            while self.front < len(ranges) and ranges[self.front].complete:
                self.front += 1
            if self.front >= len(ranges) or (self.wanted and self.available >= self.wanted):
                self.cond.notify_all()

    def reader(self, cancel: threading.Event) -> JobReader:
        return JobReader(self, cancel)


class JobReader:
    """Reads a job's bytes in order, waiting for each to arrive (`readinto`, like a file)."""

    def __init__(self, job: Job, cancel: threading.Event) -> None:
        self.job = job
        self.cancel = cancel
        self.offset = 0

    def readinto(self, buf: bytearray | memoryview) -> int:
        job = self.job
        want = min(len(buf), job.size - self.offset)
        if want <= 0:
            return 0
        waited = 0.0
        with job.cond:
            if job.available < self.offset + want:
                t0 = time.monotonic()
                job.wanted = self.offset + want
                try:
                    while job.available < self.offset + want:
                        if job.error is not None or self.cancel.is_set():
                            raise CancelledError(job.rel)
                        job.cond.wait(0.2)
                finally:
                    job.wanted = 0
                waited = time.monotonic() - t0
        n = os.preadv(job.part.fd, [memoryview(buf)[:want]], self.offset)
        if n <= 0:
            raise OSError(errno.EIO, f"{job.rel}: short read at byte {self.offset}")
        self.offset += n
        job.hashed = self.offset
        if job.on_hashed is not None:
            job.on_hashed(n, waited)
        return n


class _RetryableError(Exception):
    """A request that may work when tried again (connection lost, body cut, 5xx)."""


class Transfer:
    """Runs `jobs` on up to `connections` worker threads (daemons: Ctrl-C never waits for
    them). With a `lead` (someone hashes the bytes as they arrive), a tuner thread sets how
    many run, from `MIN_CONNECTIONS` up, by what each doubling brings (`_tune`)."""

    def __init__(
        self,
        jobs: Sequence[Job],
        connections: int,
        *,
        on_bytes: Callable[[int], None] = lambda n: None,
        on_file: Callable[[Job], None] = lambda job: None,
        lead: int | None = None,
    ) -> None:
        """`lead`: ranges start at most this many bytes (in the jobs' order) beyond what the
        jobs' readers have read; None: no limit (nobody reads while they download)."""
        self.jobs = list(jobs)
        self.connections = connections
        self.lead = lead
        self._starts: list[int] = []
        at = 0
        for job in self.jobs:
            self._starts.append(at)
            at += job.size
            if lead is not None:
                job.on_hashed = self._hashed
        self._hash_t0: float | None = None
        self._hash_bytes = 0
        self._hash_waited = 0.0
        self._blocked_at: int | None = None  # where a range waits for the hashing to catch up
        self._lead_waited = 0.0  # seconds workers spent waiting for the hashing, summed
        self._active = connections if lead is None else min(connections, MIN_CONNECTIONS)
        self._live = 0  # workers running
        self.peak = 0  # the most workers that ran at once
        self.cancel = threading.Event()
        self.on_bytes = on_bytes
        self.on_file = on_file
        self._lock = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self.last_byte_at: float | None = None  # time.monotonic() of the last byte written

    # --- scheduling -----------------------------------------------------------------------

    def start(self) -> None:
        for job in self.jobs:
            if not job.part.complete and all(r.complete for r in job.part.ranges):
                job.part.finish()  # an earlier run was stopped between its last byte and this
            job.advanced()  # past the ranges an earlier run completed
            if job.part.complete:
                self.on_file(job)
        with self._lock:
            self._spawn()
        if self._active < self.connections and self._untaken():
            threading.Thread(target=self._tune, name="download-tuner", daemon=True).start()

    def _untaken(self) -> int:
        """Ranges neither complete nor taken (call under the lock, or before start)."""
        return sum(
            1
            for job in self.jobs
            if not job.part.complete and job.error is None
            for r in _open_ranges(job)
        )

    def _spawn(self) -> None:
        """Start workers up to the number wanted now (under the lock)."""
        want = min(self._active, self._live + self._untaken())
        while self._live < want:
            t = threading.Thread(
                target=self._worker, name=f"download-{len(self._threads)}", daemon=True
            )
            self._threads.append(t)
            self._live += 1
            t.start()
        self.peak = max(self.peak, self._live)

    def _tune(self) -> None:
        """Every TUNE_EVERY seconds, judge the bytes per second. A step up (doubling) is kept
        when it brought at least GAIN of what its connections would bring if each added its
        share, else the workers go back to the number before. Steps follow each other until
        one does not pay, then one is tried every PROBE_EVERY seconds. No step while the
        workers wait for the hashing: more bytes could not be used."""
        growing = True
        before: tuple[int, float] | None = None  # (workers, rate) before the step being judged
        then = last_step = time.monotonic()
        got, waited = self._on_disk(), self._lead_waited
        while not self.cancel.wait(TUNE_EVERY):
            with self._lock:
                if not self._untaken():
                    return
                now, on_disk = time.monotonic(), self._on_disk()
                rate = (on_disk - got) / max(now - then, 1e-3)
                held = self._lead_waited - waited > 0.5 * (now - then)
                got, waited, then = on_disk, self._lead_waited, now
                n = self._active
                if before is not None:
                    n_was, rate_was = before
                    before = None
                    if rate >= rate_was * (1 + GAIN * (n / n_was - 1)):
                        growing = True
                    else:
                        n, growing = n_was, False
                elif (
                    (growing or now - last_step >= PROBE_EVERY)
                    and n < self.connections
                    and not held
                ):
                    before, last_step = (n, rate), now
                    n = min(self.connections, 2 * n)
                if n != self._active:
                    logger.debug("connections: %d -> %d (%.0f MB/s)", self._active, n, rate / 1e6)
                self._active = n
                if self._live > n:
                    self._lock.notify_all()  # waiting workers beyond the number leave now
                self._spawn()

    def _on_disk(self) -> int:
        return sum(job.part.bytes_on_disk for job in self.jobs)

    def _next(self) -> tuple[Job, list[Range]] | None:
        """The next work in order: a range, a whole file (a server without ranges, Xet), or
        None when nothing is left. Waits while the only work left belongs to a file whose
        first response has not said yet whether its server honours ranges."""
        with self._lock:
            while True:
                if self.cancel.is_set() or self._live > self._active:
                    self._live -= 1
                    self._lock.notify()  # pass on a wake-up this worker will not use
                    return None
                waiting = lead_bound = False
                lead = self._lead()
                limit = self._read_up_to() + lead if lead is not None else None
                for job, start in zip(self.jobs, self._starts, strict=True):
                    if job.part.complete or job.error is not None:
                        continue
                    todo = _open_ranges(job)
                    first = next(todo, None)
                    if first is None:
                        continue
                    if limit is not None and job.xet is None and start + first.start >= limit:
                        waiting = lead_bound = True  # far enough ahead of the hashing for now
                        self._blocked_at = start + first.start
                        break
                    if job.xet is not None or job.mode == "single":
                        whole = [first, *todo]
                        for r in whole:
                            r.taken = True
                        return job, whole
                    if job.mode == "unknown" and any(
                        r.taken for r in job.part.ranges if not r.complete
                    ):
                        waiting = True  # its first request is out: wait for the answer
                        continue
                    first.taken = True
                    if next(todo, None) is not None:
                        self._lock.notify()  # a waiting worker may find the next range open
                    return job, [first]
                if not waiting:
                    self._live -= 1
                    return None
                t0 = time.monotonic()
                self._lock.wait(0.2)
                if lead_bound:
                    self._lead_waited += time.monotonic() - t0

    def _hashed(self, n: int, waited: float) -> None:
        """A reader read `n` bytes after waiting `waited` seconds for them. Wakes one worker
        when the lead now reaches a range that one had to leave for later (it wakes the next)."""
        with self._lock:
            now = time.monotonic()
            if self._hash_t0 is None:
                self._hash_t0 = now - waited
            self._hash_bytes += n
            self._hash_waited += waited
            lead = self._lead()
            if self._blocked_at is not None and (
                lead is None or self._read_up_to() + lead > self._blocked_at
            ):
                self._blocked_at = None
                self._lock.notify()

    def _lead(self) -> int | None:
        """How far ahead of the readers a range may start now: LEAD, or what the readers
        get through in TAIL_TARGET seconds once their speed is known (time they spent waiting
        for bytes does not count)."""
        if self.lead is None or self._hash_t0 is None or self._hash_bytes < _MEASURED_AFTER:
            return self.lead
        busy = time.monotonic() - self._hash_t0 - self._hash_waited
        if busy <= 0:
            return self.lead
        speed = self._hash_bytes / busy
        return int(min(self.lead, max(2 * RANGE_SIZE, speed * TAIL_TARGET)))

    def _read_up_to(self) -> int:
        """Where the readers are, in bytes from the first job's offset 0."""
        for job, start in zip(self.jobs, self._starts, strict=True):
            if job.hashed < job.size:
                return start + job.hashed
        return self._starts[-1] + self.jobs[-1].size if self.jobs else 0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No file is completed (renamed) while the block runs."""
        with self._lock:
            yield

    def _release(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _worker(self) -> None:
        from model_pull.hub import hub_errors_for

        while (work := self._next()) is not None:
            job, ranges = work
            try:
                with hub_errors_for(job.rel):
                    if job.xet is not None:
                        self._xet(job)
                    else:
                        self._fetch(job, ranges)
            except BaseException as exc:
                for r in ranges:
                    r.taken = False
                self._fail(job, exc)
                with self._lock:
                    self._live -= 1
                return
            for r in ranges:
                r.taken = False
            if job.front >= len(job.part.ranges) and not job.part.complete:
                self._complete(job)

    def _complete(self, job: Job) -> None:
        with self._lock:
            if job.part.complete:
                return
            try:
                job.part.finish()
            except BaseException as exc:
                self._fail(job, exc)
                return
        job.advanced()
        self.on_file(job)

    def _fail(self, job: Job, exc: BaseException) -> None:
        with self._lock:
            if self.error is None and not isinstance(exc, CancelledError):
                self.error = exc
            job.error = exc
            self.cancel.set()
            self._lock.notify_all()
        for j in self.jobs:
            with j.cond:
                j.cond.notify_all()

    def stop(self) -> None:
        """Stop every worker at its next read (Ctrl-C): what is on disk stays for the resume."""
        self.cancel.set()
        self._release()
        for j in self.jobs:
            with j.cond:
                j.cond.notify_all()

    def wait_for(self, jobs: Sequence[Job]) -> None:
        """Until `jobs` are complete (CancelledError if the transfer failed or was stopped)."""
        for job in jobs:
            with job.cond:
                while not job.part.complete:
                    if job.error is not None or self.cancel.is_set():
                        raise CancelledError(job.rel)
                    job.cond.wait(0.2)

    def wait(self) -> None:
        """Until every file is complete; the first error as it was raised."""
        while True:
            with self._lock:  # the tuner may start workers until the last range is taken
                running = [t for t in self._threads if t.is_alive()]
            if not running:
                break
            running[0].join(0.2)
        if self.error is not None:
            raise self.error
        if self.cancel.is_set():
            raise CancelledError("stopped")
        for job in self.jobs:
            if not job.part.complete:
                raise ModelPullError(ExitCode.ERROR, f"{job.rel}: the download did not finish")

    # --- one request ----------------------------------------------------------------------

    def _xet(self, job: Job) -> None:
        assert job.xet is not None
        local = job.xet()
        job.part.close()
        safefs.unlink(job.part.data)
        safefs.unlink(job.part.counters)
        os.replace(local, job.part.final)
        job.part.fd = safefs.open_file(job.part.final, os.O_RDONLY)
        if os.fstat(job.part.fd).st_size != job.size:
            raise _size_error(job, os.fstat(job.part.fd).st_size)
        for r in job.part.ranges:
            r.done = r.length
        with job.cond:
            job.part.complete = True
        self.on_bytes(job.size)
        job.advanced()
        self.on_file(job)

    def _fetch(self, job: Job, ranges: list[Range]) -> None:
        """Bring `ranges` (consecutive, in order) to disk, asking again while bytes come."""
        failures = 0
        while not all(r.complete for r in ranges):
            if self.cancel.is_set():
                raise CancelledError(job.rel)
            before = sum(r.done for r in ranges)
            try:
                self._request(job, ranges)
            except _RetryableError as exc:
                progressed = sum(r.done for r in ranges) > before
                failures = 1 if progressed else failures + 1
                if failures >= ATTEMPTS:
                    raise ModelPullError(
                        ExitCode.UNREACHABLE,
                        f"{redact.name(job.rel)}: {exc} ({ATTEMPTS} tries without a byte)",
                        hint="check the network or the mirror; the bytes so far are kept",
                    ) from exc
                logger.info("%s: %s; asking again", redact.clean(job.rel), exc)
                if self.cancel.wait(min(2.0 ** (failures - 1), 8.0)):
                    raise CancelledError(job.rel) from exc

    def _request(self, job: Job, ranges: list[Range]) -> None:
        import httpx2

        first = next(r for r in ranges if not r.complete)
        offset = first.start + first.done
        end = ranges[-1].end  # exclusive
        headers = dict(job.headers)
        headers["Accept-Encoding"] = "identity"
        headers["Range"] = f"bytes={offset}-{end - 1}"
        try:
            with net.session().stream("GET", job.location, headers=headers) as response:
                body_start = self._check_response(job, response, offset, end)
                whole = response.status_code == 200
                with self._lock:
                    if whole and job.mode == "unknown" and len(job.part.ranges) > 1:
                        # Range is ignored: this body is the whole file; one connection takes it.
                        job.mode = "single"
                        mine = {r.index for r in ranges}
                        for r in job.part.ranges:
                            if not r.complete and not r.taken:
                                r.taken = True
                                mine.add(r.index)
                        ranges[:] = [job.part.ranges[i] for i in sorted(mine)]
                    elif job.mode == "unknown":
                        job.mode = "ranges"
                    self._lock.notify_all()
                self._consume(job, response, ranges, body_start, whole=whole)
        except httpx2.TransportError as exc:  # timeouts, resets, a body cut short
            raise _RetryableError(_transport_text(exc)) from exc

    def _check_response(self, job: Job, response: httpx2.Response, offset: int, end: int) -> int:
        """Where the body starts in the file; a failure to retry, or an error."""
        status = response.status_code
        if status in (429, 503) or status >= 500:
            wait = net.retry_after(response.headers)  # beyond the cap: refused by the client
            if wait is not None and self.cancel.wait(wait):
                raise CancelledError(job.rel)
            raise _RetryableError(f"the server answered HTTP {status}")
        if status == 416:
            raise _size_error(job, None)
        if status >= 400:
            net.raise_for_status(response)
        length = _int_header(response.headers.get("content-length"))
        if status == 206:
            got = _content_range(response.headers.get("content-range"))
            if got != (offset, end - 1, job.size):
                sent = redact.clean(response.headers.get("content-range") or "no range")
                raise ModelPullError(
                    ExitCode.HASH_MISMATCH,
                    f"{redact.name(job.rel)}: asked for bytes {offset}-{end - 1} of {job.size}, "
                    f"the server sent {sent}",
                    hint="nothing was installed; report the mirror if it repeats",
                )
            if length is not None and length != end - offset:
                raise _size_error(job, None)
            return offset
        if status == 200:
            if length is not None and length != job.size:
                raise _size_error(job, length)
            return 0
        raise ModelPullError(
            ExitCode.UNREACHABLE,
            f"{redact.name(job.rel)}: the server answered HTTP {status}",
            hint="check HF_ENDPOINT",
        )

    def _consume(
        self,
        job: Job,
        response: httpx2.Response,
        ranges: list[Range],
        position: int,
        *,
        whole: bool,
    ) -> None:
        """Write the body (which starts at file offset `position`) into `ranges`, skipping
        bytes already on disk and bytes of ranges others hold. A whole-file body is left once
        `ranges` are complete; a range body that runs past its range is an error."""
        pace = net.Pace(redact.clean(job.rel), remaining=ranges[-1].end - position)
        index = 0
        for data in response.iter_bytes():
            if self.cancel.is_set():
                raise CancelledError(job.rel)
            pace.update(len(data))
            view = memoryview(data)
            while view:
                while index < len(ranges) and ranges[index].end <= position:
                    index += 1
                if index >= len(ranges):
                    if whole and position < job.size:
                        return  # the rest of the file belongs to other ranges
                    raise _size_error(job, None, longer=True)
                r = ranges[index]
                if position < r.start:  # bytes of a range this request does not hold
                    skip = min(len(view), r.start - position)
                elif position < r.start + r.done:  # already on disk: never written twice
                    skip = min(len(view), r.start + r.done - position)
                else:
                    skip = 0
                if skip:
                    view, position = view[skip:], position + skip
                    continue
                n = min(len(view), r.end - position)
                job.part.write(r, view[:n])
                self.last_byte_at = time.monotonic()
                self.on_bytes(n)
                view, position = view[n:], position + n
                if r.index == job.front or r.complete:
                    job.advanced()
        if not all(r.complete for r in ranges):
            raise _RetryableError(f"the body ended at byte {position} of {ranges[-1].end}")


def _open_ranges(job: Job) -> Iterator[Range]:
    """A job's ranges neither complete nor taken, in order. Those before the front are complete
    and ranges are taken in order, so the first comes within `connections` of the front."""
    return (
        r
        for r in itertools.islice(job.part.ranges, job.front, None)
        if not r.complete and not r.taken
    )


def _size_error(job: Job, got: int | None, *, longer: bool = False) -> ModelPullError:
    said = (
        "more bytes than listed"
        if longer
        else f"{got} bytes"
        if got is not None
        else "a length that differs from the listing"
    )
    return ModelPullError(
        ExitCode.HASH_MISMATCH,
        f"{redact.name(job.rel)}: the listing says {job.size} bytes, the server sent {said}",
        hint="nothing was installed; report the mirror if it repeats",
    )


def _int_header(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _content_range(value: str | None) -> tuple[int, int, int] | None:
    """`bytes A-B/N` -> (A, B, N)."""
    if not value:
        return None
    unit, _, rest = value.strip().partition(" ")
    span, _, total = rest.partition("/")
    a, _, b = span.partition("-")
    if unit != "bytes" or not (a.isdigit() and b.isdigit() and total.isdigit()):
        return None
    return int(a), int(b), int(total)


def _transport_text(exc: httpx2.TransportError) -> str:
    import httpx2

    if isinstance(exc, httpx2.TimeoutException):
        return f"no byte for {net.read_timeout():g} s"
    return redact.clean(str(exc) or type(exc).__name__)


_T = TypeVar("_T")
_R = TypeVar("_R")


def map_parallel(fn: Callable[[_T], _R], items: Sequence[_T], workers: int) -> list[_R]:
    """[fn(item) for item in items] on up to `workers` daemon threads (Ctrl-C does not wait
    for them); the first exception, as raised."""
    results: list[_R | None] = [None] * len(items)
    errors: list[BaseException] = []
    lock = threading.Lock()
    todo = iter(range(len(items)))

    def run() -> None:
        while True:
            with lock:
                i = next(todo, None)
                if i is None or errors:
                    return
            try:
                results[i] = fn(items[i])
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return

    threads = [
        threading.Thread(target=run, daemon=True, name=f"map-{i}")
        for i in range(max(1, min(workers, len(items))))
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


@contextlib.contextmanager
def running(transfer: Transfer) -> Iterator[Transfer]:
    """Start `transfer`; on the way out by an exception (Ctrl-C too) stop it at once."""
    transfer.start()
    try:
        yield transfer
    except BaseException:
        transfer.stop()
        raise
