"""The Hugging Face Hub: resolve a revision, list a commit's files, plan their downloads, read
metadata. Every request goes through net.py (timeouts, the token for the Hub's origin only).

The Hub's HTTP API as huggingface_hub calls it (https://huggingface.co/docs/hub/api): the
revision (`GET /api/models/{repo}/revision/{rev}`), the listing (`GET /api/models/{repo}/tree/
{commit}?recursive=true&expand=false`, paginated with `Link: rel="next"`) and each file
(`HEAD`/`GET /{repo}/resolve/{commit}/{path}`). The listing is read and checked here, not by
huggingface_hub: a server is hostile input, and every entry is validated before the first byte
of any file is fetched (`validate_listing`). huggingface_hub still names the errors
(`hf_raise_for_status`), reads a file's metadata (`get_hf_file_metadata`) and downloads what
the Hub serves through Xet (hf-xet). huggingface_hub reads its settings when imported, so it is
imported lazily. Library exceptions become one-line `ModelPullError`s in `hub_errors()`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

from model_pull import net, redact
from model_pull.datamodel import repo_problem
from model_pull.errors import ExitCode, ModelPullError

logger = logging.getLogger(__name__)

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TOKEN_HINT = "give a token with --token-file FILE or the HF_TOKEN environment variable"
TOKEN_MAX = 1024
API_BODY_MAX = 16 << 20  # one page of a listing, the revision's JSON
LISTING_MAX_BYTES = 256 << 20  # all pages together
LISTING_MAX_FILES = 100_000
LISTING_MAX_PAGES = 10_000
PATH_MAX_BYTES = 1024  # a file's path in the repository
NAME_MAX_BYTES = 255  # one component (what a Linux file system allows)
PATH_MAX_DEPTH = 32
FILE_MAX_SIZE = 1 << 50  # 1 PiB: a listed size beyond is absurd
SMALL_READ_MAX = 16 << 20  # config.json and friends, read into memory by the GPU check


@dataclass(frozen=True)
class RemoteFile:
    """One file of a commit, as the Hub lists it (validated: `validate_listing`)."""

    path: str
    size: int
    git_sha1: str  # the git blob id (for LFS files: of the pointer file)
    sha256: str | None  # LFS files only: sha256 of the content

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def etag(self) -> str:
        """What the Hub names the file's bytes by: sha256 for LFS files, else the git blob id."""
        return self.sha256 or self.git_sha1


@dataclass(frozen=True)
class Remote:
    """Where and as whom to talk to the Hub. The token is never logged or printed."""

    endpoint: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        return f"Remote(endpoint={self.endpoint!r}, token={'***' if self.token else None})"

    @property
    def url(self) -> str:
        """The endpoint's base URL (HF_ENDPOINT when none is given), checked."""
        return net.endpoint_url(self.endpoint)

    def ready(self) -> str:
        """Configure the HTTP client for this endpoint; returns its base URL."""
        url = self.url
        net.configure(url)
        return url

    def headers(self) -> dict[str, str]:
        """huggingface_hub's headers (user agent), with the token when there is one; net.py
        drops it from requests to any other origin."""
        from huggingface_hub.utils._headers import build_hf_headers

        return dict(build_hf_headers(token=self.token or False))


def read_token(token_file: Path | None) -> str | None:
    """The HF token from a file, else HF_TOKEN, else none: one line, no spaces or controls.

    A value that is not one token (two lines, a newline inside) is refused without printing
    it; every line of it is masked in whatever model-pull prints from then on."""
    if token_file is not None:
        try:
            raw = token_file.read_bytes()[: TOKEN_MAX * 4].decode("utf-8", errors="replace")
        except OSError as exc:
            raise ModelPullError(
                ExitCode.AUTH,
                f"cannot read the token file {redact.name(str(token_file))}: {exc.strerror}",
                hint=TOKEN_HINT,
            ) from exc
        where = f"the token file {redact.name(str(token_file))}"
    else:
        raw = os.environ.get("HF_TOKEN") or ""
        if not raw:
            return None
        where = "HF_TOKEN"
    redact.add_secret(raw)
    token = raw.strip()
    if not token:
        raise ModelPullError(ExitCode.AUTH, f"{where} is empty", hint=TOKEN_HINT)
    lines = len(token.splitlines())
    if lines > 1:
        raise ModelPullError(
            ExitCode.AUTH,
            f"{where} has {lines} lines; a token is one line",
            hint="keep only the token in it (nothing of it was sent or printed)",
        )
    if len(token) > TOKEN_MAX or not all(33 <= ord(c) < 127 for c in token):
        raise ModelPullError(
            ExitCode.AUTH,
            f"{where} is not a token: spaces, control or non-ASCII characters, or longer than "
            f"{TOKEN_MAX}",
            hint="copy the token again from https://huggingface.co/settings/tokens",
        )
    return token


def _server_said(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if response is None:
        return ""
    try:
        body = response.content
    except Exception:  # a streamed response that was not read: nothing to say
        body = b""
    said = net.server_message(response, body)
    return f": {said}" if said else ""


@contextlib.contextmanager
def hub_errors(repo: str, revision: str | None, remote: Remote) -> Iterator[None]:
    """Turn huggingface_hub's and the transport's exceptions into one clear line each."""
    from huggingface_hub import errors as hf

    where = net.endpoint_url(remote.endpoint)
    shown = redact.name(repo)
    try:
        with net.transport_errors(shown, where):
            yield
    except hf.GatedRepoError as exc:
        raise ModelPullError(
            ExitCode.AUTH,
            f"{shown} is gated: your token is missing or has no access to it",
            hint=f"accept its terms on the Hub, then {TOKEN_HINT}",
        ) from exc
    except hf.RevisionNotFoundError as exc:
        raise ModelPullError(
            ExitCode.REVISION_NOT_FOUND,
            f"revision {redact.name(revision or '')} not found in {shown}",
            hint="give a branch, tag or 40-hex commit that exists",
        ) from exc
    except hf.RepositoryNotFoundError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401 and remote.token:
            raise ModelPullError(
                ExitCode.AUTH,
                f"the Hub refused the token for {shown} (HTTP 401)",
                hint=TOKEN_HINT,
            ) from exc
        raise ModelPullError(
            ExitCode.REPO_NOT_FOUND,
            f"repository {shown} not found on {where}",
            hint="check the name; a private repo also needs a token: " + TOKEN_HINT,
        ) from exc
    except hf.EntryNotFoundError as exc:
        raise ModelPullError(
            ExitCode.REPO_NOT_FOUND, f"a listed file is missing from {shown}{_server_said(exc)}"
        ) from exc
    except hf.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise ModelPullError(
                ExitCode.AUTH,
                f"the Hub refused access to {shown} (HTTP {status})",
                hint=TOKEN_HINT,
            ) from exc
        raise ModelPullError(
            ExitCode.UNREACHABLE,
            f"the Hub at {where} answered HTTP {status} for {shown}{_server_said(exc)}",
            hint="try again later, or set HF_ENDPOINT to another mirror",
        ) from exc


@contextlib.contextmanager
def hub_errors_for(rel: str) -> Iterator[None]:
    """hub_errors for one file's download (the worker threads of transfer.py)."""
    with hub_errors(rel, None, Remote()):
        yield


def _get_json(
    url: str, remote: Remote, what: str, *, attempts: int = net.API_ATTEMPTS
) -> tuple[Any, str | None]:
    """GET a JSON document from the Hub (at most API_BODY_MAX bytes), once more after a
    timeout or a lost connection. Returns (data, the response's next-page URL or None)."""
    import httpx2

    for attempt in range(attempts):
        try:
            with net.session().stream("GET", url, headers=remote.headers()) as response:
                wait = net.retry_after(response.headers)  # at most RETRY_AFTER_MAX: net.py
                if response.status_code in (429, 503) and attempt + 1 < attempts:
                    logger.info("%s: HTTP %d, asking again", what, response.status_code)
                    time.sleep(wait if wait is not None else 1.0)
                    continue
                net.raise_for_status(response)
                body = net.read_body(response, API_BODY_MAX, what)
                link = response.links.get("next", {}).get("url")
                next_url = urljoin(url, link) if link else None
            break
        except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError):
            if attempt + 1 >= attempts:
                raise
            logger.info("%s: no answer, asking once more", what)
    try:
        return json.loads(body), next_url
    except RecursionError:
        raise ModelPullError(
            ExitCode.UNSAFE_LISTING, f"{what}: the Hub sent JSON nested too deeply"
        ) from None
    except ValueError:
        raise ModelPullError(
            ExitCode.UNREACHABLE,
            f"{what}: the Hub did not answer with JSON",
            hint="check HF_ENDPOINT: it must be a Hugging Face Hub or a mirror of it",
        ) from None


def resolve_revision(repo: str, revision: str, remote: Remote) -> str:
    """The 40-hex commit a branch, tag or commit names."""
    _check_repo(repo)
    base = remote.ready()
    url = f"{base}/api/models/{repo}/revision/{quote(revision, safe='')}"
    with hub_errors(repo, revision, remote):
        info, _ = _get_json(url, remote, f"{redact.name(repo)}@{redact.name(revision)}")
    sha = info.get("sha") if isinstance(info, dict) else None
    if not isinstance(sha, str) or not COMMIT_RE.match(sha):
        raise ModelPullError(
            ExitCode.REVISION_NOT_FOUND,
            f"the Hub gave no commit for {redact.name(repo)}@{redact.name(revision)}",
        )
    return sha


def _check_repo(repo: str) -> None:
    if (why := repo_problem(repo)) is not None:
        raise ModelPullError(
            ExitCode.USAGE,
            f"{redact.name(repo)} is not a repository id: {why}",
            hint="e.g. org/name",
        )


def list_files(repo: str, commit: str, remote: Remote) -> list[RemoteFile]:
    """Every file of the commit, with the hashes the Hub lists for it, validated."""
    _check_repo(repo)
    base = remote.ready()
    url: str | None = f"{base}/api/models/{repo}/tree/{quote(commit, safe='')}"
    url = f"{url}?recursive=true&expand=false"
    what = f"the listing of {redact.name(repo)}@{commit[:12]}"
    items: list[Any] = []
    pages = 0
    with hub_errors(repo, commit, remote):
        while url is not None:
            if net.origin(url) != net.origin(base):
                raise ModelPullError(
                    ExitCode.UNSAFE_LISTING,
                    f"{what}: its next page is on another server ({net.origin(url)[1]})",
                    hint="nothing was downloaded; check HF_ENDPOINT",
                )
            pages += 1
            if pages > LISTING_MAX_PAGES:
                raise _listing_error(what, f"more than {LISTING_MAX_PAGES} pages")
            page, url = _get_json(url, remote, what)
            if not isinstance(page, list):
                raise _listing_error(what, "a page is not a JSON list")
            items.extend(page)
            if len(items) > LISTING_MAX_FILES * 2:
                raise _listing_error(what, f"more than {LISTING_MAX_FILES} files")
    return validate_listing(items, what)


def _listing_error(what: str, why: str) -> ModelPullError:
    return ModelPullError(
        ExitCode.UNSAFE_LISTING,
        f"refusing {what}: {why}",
        hint="nothing was downloaded; report the repository or the mirror",
    )


def validate_listing(items: Sequence[Any], what: str = "the listing") -> list[RemoteFile]:
    """Every entry checked before anything is fetched: types, hashes, sizes, safe and unique
    names, no path that is both a file and a directory."""
    files: list[RemoteFile] = []
    dirs: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or item.get("type") not in ("file", "directory"):
            raise _listing_error(what, f"an entry is not a file or a directory: {_show(item)}")
        path = item.get("path")
        if not isinstance(path, str):
            raise _listing_error(what, f"an entry has no path: {_show(item)}")
        if (why := check_safe_path(path)) is not None:
            raise ModelPullError(
                ExitCode.UNSAFE_LISTING,
                f"refusing {what}: unsafe file name {redact.name(path)} ({why})",
                hint="nothing was written; report the repository",
            )
        if item["type"] == "directory":
            dirs.add(path)
            continue
        files.append(_remote_file(item, path, what))
    if len(files) > LISTING_MAX_FILES:
        raise _listing_error(what, f"more than {LISTING_MAX_FILES} files")
    seen: set[str] = set()
    for f in files:
        if f.path in seen:
            raise _listing_error(what, f"{redact.name(f.path)} is listed twice")
        seen.add(f.path)
    parents = {p for f in files for p in _parents(f.path)} | dirs
    for f in files:
        if f.path in parents:
            raise _listing_error(what, f"{redact.name(f.path)} is both a file and a directory")
    return files


def _remote_file(item: dict[str, Any], path: str, what: str) -> RemoteFile:
    size, oid, lfs = item.get("size"), item.get("oid"), item.get("lfs")
    shown = redact.name(path)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= FILE_MAX_SIZE:
        raise _listing_error(what, f"{shown} has an absurd size: {_show(size)}")
    if not isinstance(oid, str) or not COMMIT_RE.match(oid):
        raise _listing_error(what, f"{shown} has no git blob id (40 hex): {_show(oid)}")
    sha256 = None
    if lfs is not None:
        if not isinstance(lfs, dict):
            raise _listing_error(what, f"{shown}: its lfs entry is not an object")
        sha256 = lfs.get("oid", lfs.get("sha256"))
        if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
            raise _listing_error(what, f"{shown} has no LFS sha256 (64 hex): {_show(sha256)}")
        if lfs.get("size", size) != size:
            raise _listing_error(what, f"{shown} is listed with two sizes")
    return RemoteFile(path=path, size=size, git_sha1=oid, sha256=sha256)


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return redact.clean(text, 80)


def _parents(path: str) -> Iterator[str]:
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def check_safe_path(path: str) -> str | None:
    """Why a listed file name is unsafe to write or to show, or None when it is fine."""
    if not path or "\0" in path or "\\" in path:
        return "empty, NUL or backslash in the name"
    if path.startswith("/"):
        return "absolute path"
    parts = path.split("/")
    if any(p in ("..", ".", "") for p in parts):
        return "'..', '.' or empty path component"
    if any(redact.unsafe_char(c) for c in path):
        return "control, bidirectional or invisible character in the name"
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8"
    if len(encoded) > PATH_MAX_BYTES or len(parts) > PATH_MAX_DEPTH:
        return f"longer than {PATH_MAX_BYTES} bytes or deeper than {PATH_MAX_DEPTH} directories"
    if any(len(p.encode()) > NAME_MAX_BYTES for p in parts):
        return f"a component longer than {NAME_MAX_BYTES} bytes"
    return None


# --- downloads ----------------------------------------------------------------------------


def resolve_url(base: str, repo: str, commit: str, path: str) -> str:
    """`{endpoint}/{repo}/resolve/{commit}/{path}`, quoted as huggingface_hub's hf_hub_url."""
    return f"{base}/{repo}/resolve/{quote(commit, safe='')}/{quote(path)}"


@dataclass(frozen=True)
class FileLocation:
    """Where a file's bytes are: a URL to GET (after the Hub's redirect), or Xet."""

    url: str
    xet: bool


def locate(repo: str, commit: str, f: RemoteFile, remote: Remote) -> FileLocation:
    """HEAD the file (huggingface_hub's get_hf_file_metadata: redirects on the Hub followed,
    one to another origin not) and check that what the Hub says matches its listing."""
    from huggingface_hub import get_hf_file_metadata

    base = remote.ready()
    url = resolve_url(base, repo, commit, f.path)
    with hub_errors(repo, commit, remote):
        meta = get_hf_file_metadata(url, token=remote.token or False, endpoint=base)
    shown = redact.name(f.path)
    if meta.etag is not None and meta.etag != f.etag:
        raise ModelPullError(
            ExitCode.HASH_MISMATCH,
            f"{shown}: the Hub serves {redact.clean(meta.etag, 80)}, its listing says {f.etag}",
            hint="nothing was installed; report the mirror if it repeats",
        )
    if meta.size is not None and meta.size != f.size:
        raise ModelPullError(
            ExitCode.HASH_MISMATCH,
            f"{shown}: the Hub serves {meta.size} bytes, its listing says {f.size}",
            hint="nothing was installed; report the mirror if it repeats",
        )
    location = meta.location or url
    if not location.startswith(("http://", "https://")):
        location = url
    return FileLocation(location, meta.xet_file_data is not None and xet_available())


def xet_download(repo: str, commit: str, f: RemoteFile, dest: Path, remote: Remote) -> Path:
    """hf_hub_download (hf-xet) of one file into `dest`; the path of its bytes."""
    from huggingface_hub import hf_hub_download

    with hub_errors(repo, commit, remote):
        local = hf_hub_download(
            repo,
            f.path,
            revision=commit,
            cache_dir=dest,
            token=remote.token or False,
            endpoint=remote.url,
        )
    real = Path(os.path.realpath(local))
    if not real.is_relative_to(Path(os.path.realpath(dest))):
        raise ModelPullError(
            ExitCode.UNSAFE_LISTING, f"{redact.name(f.path)}: hf-xet wrote outside the cache"
        )
    return real


def xet_available() -> bool:
    try:
        from huggingface_hub.utils import is_xet_available
    except ImportError:
        return False
    return bool(is_xet_available())


# --- metadata reads (used by check) ---
# List a repo with sizes, read one small file, read the first bytes of a file by an HTTP Range
# request. No weights are downloaded, nothing is written to any cache.


def list_files_with_sizes(
    repo: str, revision: str | None, remote: Remote | None = None
) -> tuple[str, list[tuple[str, int]]]:
    """(commit sha, [(path, size)]) of every file in the repo at `revision`."""
    remote = remote or Remote(token=read_token(None))
    commit = resolve_revision(repo, revision or "main", remote)
    return commit, [(f.path, f.size) for f in list_files(repo, commit, remote)]


def read_small_file(repo: str, path: str, revision: str, remote: Remote | None = None) -> bytes:
    """The bytes of one small metadata file (config.json ...) at `revision` (a commit), at most
    SMALL_READ_MAX of them."""
    return read_file_head(repo, path, revision, None, remote)


def read_file_head(
    repo: str, path: str, revision: str, length: int | None, remote: Remote | None = None
) -> bytes:
    """The first `length` bytes of a repo file (all of it, up to SMALL_READ_MAX, for None), by
    an HTTP Range request. A server that ignores Range answers 200 with the whole body: the
    stream stops after `length`."""
    remote = remote or Remote(token=read_token(None))
    base = remote.ready()
    url = resolve_url(base, repo, revision, path)
    headers = remote.headers()
    limit = SMALL_READ_MAX if length is None else length
    if length is not None:
        headers["Range"] = f"bytes=0-{length - 1}"
    what = f"{redact.name(repo)}/{redact.name(path)}"
    chunks: list[bytes] = []
    got = 0
    with (
        hub_errors(repo, revision, remote),
        net.session().stream("GET", url, headers=headers) as response,
    ):
        net.raise_for_status(response)
        pace = net.Pace(what)
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            got += len(chunk)
            pace.update(len(chunk))
            if got >= limit:
                break
    data = b"".join(chunks)
    if length is None and got > SMALL_READ_MAX - 1 and len(data) >= SMALL_READ_MAX:
        raise ModelPullError(
            ExitCode.BAD_INPUT, f"{what} is larger than {SMALL_READ_MAX >> 20} MiB: not metadata"
        )
    return data[:limit]
