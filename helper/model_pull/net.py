"""Every HTTP request model-pull makes, under rules a server cannot bend.

One client (httpx2, huggingface_hub's own HTTP library), installed as huggingface_hub's session
(`set_client_factory`), so the library's calls obey the same rules as ours:

- The token goes to the Hub's own origin only (scheme, host and port of the endpoint): an event
  hook drops `Authorization` from every request, redirects included, to any other origin.
  huggingface_hub's `hf_hub_download` does the same for a CDN; here it holds for every request,
  metadata reads too.
- Every request has a connect and a read timeout (`MODEL_PULL_TIMEOUT`, seconds, default 10),
  whatever timeout a caller asks for; a body must keep coming (`Pace`: at least `MIN_RATE`
  bytes per second over every window of the read timeout), so a trickling body ends too.
- A `Retry-After` (or `RateLimit` reset) beyond `RETRY_AFTER_MAX` seconds is an error at once,
  not a day's sleep.
- Bodies read into memory are capped (`read_body`), error bodies at 64 KiB.
- Nothing the server sends is printed raw (`redact.clean`).
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from model_pull import redact
from model_pull.errors import ExitCode, ModelPullError

if TYPE_CHECKING:
    import httpx2

DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT_ENV = "MODEL_PULL_TIMEOUT"
DEFAULT_READ_TIMEOUT = 10.0  # seconds without a byte (huggingface_hub's own default)
CONNECT_TIMEOUT = 10.0
MIN_RATE = 8 << 10  # bytes/s a body must average over every read-timeout window
RETRY_AFTER_MAX = 60  # seconds; a server asking for longer is an error
MAX_REDIRECTS = 5
ERROR_BODY_MAX = 64 << 10
API_ATTEMPTS = 2  # a metadata request that times out is tried once more

_lock = threading.Lock()
_installed = False
_hub_origin: tuple[str, str, int] | None = None
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, the scheme's port when none is given."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return (
        parts.scheme.lower(),
        (parts.hostname or "").lower(),
        port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0),
    )


def read_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_READ_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise ModelPullError(
            ExitCode.USAGE,
            f"{TIMEOUT_ENV}={redact.name(raw)} is not a number of seconds between 0 and 3600",
            hint=f"unset it for the default of {DEFAULT_READ_TIMEOUT:g} s",
        )
    return value


def endpoint_url(endpoint: str | None) -> str:
    """The Hub's base URL: the given endpoint, else $HF_ENDPOINT, else huggingface.co."""
    url = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https") or not origin(url)[1]:
        raise ModelPullError(
            ExitCode.USAGE,
            f"the Hub endpoint {redact.name(url)} is not an http(s) URL",
            hint="set HF_ENDPOINT (or the manifest's endpoint) to e.g. https://huggingface.co",
        )
    return url


def configure(endpoint: str) -> None:
    """Send the token to `endpoint`'s origin only, and make huggingface_hub use this client."""
    global _installed, _hub_origin
    from huggingface_hub import set_client_factory

    read_timeout()  # a bad MODEL_PULL_TIMEOUT is refused before any request
    with _lock:
        _hub_origin = origin(endpoint)
        if not _installed:
            set_client_factory(_client)
            _installed = True


def session() -> httpx2.Client:
    from huggingface_hub import get_session

    if not _installed:
        configure(endpoint_url(None))
    return get_session()


_ssl: Any = None


def ssl_context() -> Any:
    """The TLS context (certifi's roots, as httpx2 makes it), made once per process: loading
    the roots costs a fifth of a second."""
    global _ssl
    if _ssl is None:
        import httpx2

        _ssl = httpx2.create_ssl_context()
    return _ssl


# Bytes asked of the socket per read of a response body. httpcore reads 64 KiB at a time
# (HTTP11Connection.READ_NUM_BYTES; its maintainers measured the cost per byte falling with the
# size, encode/httpcore#135); a 1 GiB download then passes 16384 chunks through h11, each
# its Python overhead. 256 KiB cuts a CPU-bound 1 GiB fetch by about a seventh (bench/line_rate.py).
READ_SIZE = 256 << 10


def _larger_reads() -> None:
    with contextlib.suppress(ImportError, AttributeError):
        from httpcore2._sync.http11 import HTTP11Connection

        if isinstance(HTTP11Connection.READ_NUM_BYTES, int):
            HTTP11Connection.READ_NUM_BYTES = max(HTTP11Connection.READ_NUM_BYTES, READ_SIZE)


def _client() -> httpx2.Client:
    import httpx2

    _larger_reads()

    hooks: list[Any] = []
    with contextlib.suppress(ImportError):  # the library's own: offline mode, request ids
        from huggingface_hub.utils._http import hf_request_event_hook

        hooks.append(hf_request_event_hook)
    hooks += [_bound_timeouts, _token_for_the_hub_only]
    read = read_timeout()
    return httpx2.Client(
        event_hooks={"request": hooks, "response": [_refuse_long_waits]},
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        verify=ssl_context(),
        timeout=httpx2.Timeout(read, connect=min(CONNECT_TIMEOUT, read)),
        limits=httpx2.Limits(max_connections=256, max_keepalive_connections=64),
    )


def _bound_timeouts(request: httpx2.Request) -> None:
    """Whatever a caller asked for (huggingface_hub passes None in places), never wait longer
    than the read timeout for a byte."""
    read = read_timeout()
    want = {"connect": min(CONNECT_TIMEOUT, read), "read": read, "write": read, "pool": read}
    got = dict(request.extensions.get("timeout") or {})
    for key, limit in want.items():
        value = got.get(key)
        if value is None or value > limit:
            got[key] = limit
    request.extensions["timeout"] = got


def _token_for_the_hub_only(request: httpx2.Request) -> None:
    """Drop credentials from any request that leaves the Hub's origin (redirect hops too)."""
    if origin(str(request.url)) != _hub_origin:
        for header in ("authorization", "cookie", "proxy-authorization"):
            request.headers.pop(header, None)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a response asks to wait (Retry-After, seconds or a date; or RateLimit's t=)."""
    value = (headers.get("retry-after") or "").strip()
    if value:
        if value.isdigit():
            return float(value)
        with contextlib.suppress(TypeError, ValueError, IndexError):
            when = email.utils.parsedate_to_datetime(value)
            return max(when.timestamp() - time.time(), 0.0)
        return None
    limit = headers.get("ratelimit") or ""
    for part in limit.split(";"):
        key, _, val = part.strip().partition("=")
        if key == "t" and val.strip().isdigit():
            return float(val)
    return None


def _refuse_long_waits(response: httpx2.Response) -> None:
    if response.status_code not in (429, 503):
        return
    wait = retry_after(response.headers)
    if wait is not None and wait > RETRY_AFTER_MAX:
        host = origin(str(response.request.url))[1]
        raise ModelPullError(
            ExitCode.UNREACHABLE,
            f"{host} answered HTTP {response.status_code} and asks to retry after {wait:.0f} s, "
            f"more than {RETRY_AFTER_MAX} s",
            hint="try again later (the downloaded bytes are kept)",
        )


# --- bodies -------------------------------------------------------------------------------


class Pace:
    """A body that trickles is ended: in every window of the read timeout at least
    `MIN_RATE * window` bytes (or all that was left) must arrive."""

    def __init__(self, what: str, remaining: int | None = None) -> None:
        self.what = what
        self.window = read_timeout()
        self.remaining = remaining
        self.start = time.monotonic()
        self.got = 0

    def update(self, n: int) -> None:
        self.got += n
        if self.remaining is not None:
            self.remaining -= n
        now = time.monotonic()
        if now - self.start < self.window:
            return
        need = MIN_RATE * self.window
        if self.remaining is not None:
            need = min(need, self.got + self.remaining)
        if self.got < need:
            raise ModelPullError(
                ExitCode.UNREACHABLE,
                f"{self.what}: the server sent {self.got} bytes in {now - self.start:.0f} s, "
                f"less than {MIN_RATE // 1024} KiB/s",
                hint="check the network, or set HF_ENDPOINT to another mirror",
            )
        self.start, self.got = now, 0


def read_body(response: httpx2.Response, limit: int, what: str) -> bytes:
    """The body, at most `limit` bytes (more is an error), read at a sane pace."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_big(what, limit)
    pace = Pace(what)
    chunks: list[bytes] = []
    got = 0
    for chunk in response.iter_bytes():
        got += len(chunk)
        if got > limit:
            raise too_big(what, limit)
        chunks.append(chunk)
        pace.update(len(chunk))
    return b"".join(chunks)


def too_big(what: str, limit: int) -> ModelPullError:
    return ModelPullError(
        ExitCode.UNSAFE_LISTING,
        f"{what}: the server sent more than {limit} bytes",
        hint="nothing was written; check HF_ENDPOINT, or report the mirror",
    )


def server_message(response: httpx2.Response, body: bytes) -> str:
    """What the server says went wrong, as one clean line (never the raw text)."""
    import json

    said = response.headers.get("x-error-message") or ""
    if not said and body:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            said = data["error"]
        elif data is None:
            said = body[:1000].decode("utf-8", errors="replace")
    return redact.clean(said)


def raise_for_status(response: httpx2.Response) -> None:
    """huggingface_hub's error for a failed response (RepositoryNotFoundError, GatedRepoError
    ...), from at most 64 KiB of its body."""
    if response.status_code < 400:
        return
    import httpx2
    from huggingface_hub import hf_raise_for_status

    body = b""
    with contextlib.suppress(httpx2.HTTPError, ModelPullError):
        body = read_body(response, ERROR_BODY_MAX, "an error response")
    copy = httpx2.Response(
        response.status_code,
        headers={k: v for k, v in response.headers.items() if k.lower() != "content-encoding"},
        content=body,
        request=response.request,
    )
    hf_raise_for_status(copy)


@contextlib.contextmanager
def transport_errors(what: str, where: str) -> Iterator[None]:
    """httpx2's exceptions as one clean line (UNREACHABLE)."""
    import httpx2

    try:
        yield
    except httpx2.TimeoutException as exc:
        # What the last try met (a metadata request is tried API_ATTEMPTS times, so the whole
        # wait can be longer: the message does not promise a total).
        said = (
            f"could not connect to {where} in {min(CONNECT_TIMEOUT, read_timeout()):g} s"
            if isinstance(exc, httpx2.ConnectTimeout)
            else f"{where} sent no byte for {read_timeout():g} s"
        )
        raise ModelPullError(
            ExitCode.UNREACHABLE,
            f"{what}: {said}",
            hint=f"check the network or the mirror; {TIMEOUT_ENV} sets the timeout",
        ) from exc
    except httpx2.TooManyRedirects as exc:
        raise ModelPullError(
            ExitCode.UNREACHABLE,
            f"{what}: {where} redirected more than {MAX_REDIRECTS} times",
            hint="check HF_ENDPOINT",
        ) from exc
    except ConnectionError as exc:  # HF_HUB_OFFLINE=1 (huggingface_hub's request hook)
        raise ModelPullError(
            ExitCode.UNREACHABLE,
            f"{what}: cannot reach {where}: {redact.clean(str(exc) or type(exc).__name__)}",
            hint="unset HF_HUB_OFFLINE, or check the network",
        ) from exc
    except httpx2.RequestError as exc:  # not HTTPStatusError: huggingface_hub names those
        raise ModelPullError(
            ExitCode.UNREACHABLE,
            f"{what}: cannot reach {where}: {redact.clean(str(exc) or type(exc).__name__)}",
            hint="check the network, or set HF_ENDPOINT to a reachable mirror",
        ) from exc
