"""Every huggingface_hub call: resolve a revision, list a commit's files, download them.

huggingface_hub reads its settings (HF_ENDPOINT, HF_HUB_OFFLINE, ...) when imported, so this
module imports it lazily: `model-pull hash` and friends start fast and a caller can set the
environment first. Library exceptions become one-line `ModelPullError`s in `hub_errors()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from model_pull.errors import ExitCode, ModelPullError
from model_pull.hashing import Sha256Appender

if TYPE_CHECKING:
    from tqdm import tqdm

logger = logging.getLogger(__name__)

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
TOKEN_HINT = "give a token with --token-file FILE or the HF_TOKEN environment variable"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a commit, as the Hub lists it."""

    path: str
    size: int
    git_sha1: str  # the git blob id (for LFS files: of the pointer file)
    sha256: str | None  # LFS files only: sha256 of the content

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class Remote:
    """Where and as whom to talk to the Hub. The token is never logged or printed."""

    endpoint: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        return f"Remote(endpoint={self.endpoint!r}, token={'***' if self.token else None})"


def read_token(token_file: Path | None) -> str | None:
    """The HF token from a file (first line), else HF_TOKEN, else none."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ModelPullError(
                ExitCode.AUTH,
                f"cannot read the token file {token_file}: {exc.strerror}",
                hint=TOKEN_HINT,
            ) from exc
        if not token:
            raise ModelPullError(
                ExitCode.AUTH, f"the token file {token_file} is empty", hint=TOKEN_HINT
            )
        return token
    return os.environ.get("HF_TOKEN") or None


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx", "requests"):
        with contextlib.suppress(ImportError):
            mod = __import__(name)
            for attr in ("TransportError", "ConnectionError", "Timeout"):
                cls = getattr(mod, attr, None)
                if isinstance(cls, type) and issubclass(cls, BaseException):
                    errors.append(cls)
    return tuple(errors)


@contextlib.contextmanager
def hub_errors(repo: str, revision: str | None, remote: Remote) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one clear line each, most specific first."""
    from huggingface_hub import errors as hf

    where = remote.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        yield
    except hf.GatedRepoError as exc:
        raise ModelPullError(
            ExitCode.AUTH,
            f"{repo} is gated: your token is missing or has no access to it",
            hint=f"accept its terms on the Hub, then {TOKEN_HINT}",
        ) from exc
    except hf.RevisionNotFoundError as exc:
        raise ModelPullError(
            ExitCode.REVISION_NOT_FOUND,
            f"revision {revision!r} not found in {repo}",
            hint="give a branch, tag or 40-hex commit that exists",
        ) from exc
    except hf.RepositoryNotFoundError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401 and remote.token:
            raise ModelPullError(
                ExitCode.AUTH,
                f"the Hub refused the token for {repo} (HTTP 401)",
                hint=TOKEN_HINT,
            ) from exc
        raise ModelPullError(
            ExitCode.REPO_NOT_FOUND,
            f"repository {repo} not found on {where}",
            hint="check the name; a private repo also needs a token: " + TOKEN_HINT,
        ) from exc
    except hf.EntryNotFoundError as exc:
        raise ModelPullError(
            ExitCode.REPO_NOT_FOUND, f"a listed file is missing from {repo}: {exc}"
        ) from exc
    except hf.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise ModelPullError(
                ExitCode.AUTH, f"the Hub refused access to {repo} (HTTP {status})", hint=TOKEN_HINT
            ) from exc
        raise ModelPullError(
            ExitCode.UNREACHABLE, f"the Hub at {where} answered with an error: {exc}"
        ) from exc
    except _transport_errors() as exc:
        raise ModelPullError(
            ExitCode.UNREACHABLE,
            f"cannot reach the Hub at {where}: {exc}",
            hint="check the network, or set HF_ENDPOINT to a reachable mirror",
        ) from exc


def _api(remote: Remote) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=remote.endpoint, token=remote.token or None)


def resolve_revision(repo: str, revision: str, remote: Remote) -> str:
    """The 40-hex commit a branch, tag or commit names."""
    with hub_errors(repo, revision, remote):
        info = _api(remote).model_info(repo, revision=revision)
    sha = getattr(info, "sha", None)
    if not isinstance(sha, str) or not COMMIT_RE.match(sha):
        raise ModelPullError(
            ExitCode.REVISION_NOT_FOUND, f"the Hub gave no commit for {repo}@{revision}"
        )
    return sha


def list_files(repo: str, commit: str, remote: Remote) -> list[RemoteFile]:
    """Every file of the commit, with the hashes the Hub lists for it."""
    from huggingface_hub.hf_api import RepoFile

    files = []
    with hub_errors(repo, commit, remote):
        for item in _api(remote).list_repo_tree(repo, revision=commit, recursive=True):
            if not isinstance(item, RepoFile):
                continue
            lfs = item.lfs
            files.append(
                RemoteFile(
                    path=item.path,
                    size=int(item.size),
                    git_sha1=item.blob_id,
                    sha256=lfs.sha256 if lfs is not None else None,
                )
            )
    return files


def check_safe_path(path: str) -> str | None:
    """Why a listed file name is unsafe to write, or None when it is fine."""
    if not path or "\0" in path or "\\" in path:
        return "empty, NUL or backslash in the name"
    if path.startswith("/"):
        return "absolute path"
    if any(p in ("..", ".") for p in path.split("/")) or any(p == "" for p in path.split("/")):
        return "'..', '.' or empty path component"
    if any(ord(c) < 0x20 for c in path):
        return "control character in the name"
    return None


@dataclass(frozen=True)
class Downloaded:
    """A downloaded file in the cache, with the SHA-256 of its bytes when it was computed while
    they were written (None: read it again to verify, e.g. Xet or a blob left by an earlier run)."""

    path: Path
    sha256: str | None


@contextlib.contextmanager
def chunks_as_received() -> Iterator[None]:
    """Make `http_get` write the body in the pieces the transport reads, for the block's duration.

    huggingface_hub re-joins the body into `DOWNLOAD_CHUNK_SIZE` (10 MiB) pieces before writing
    them: one more copy of every byte, into fresh 10 MiB buffers the kernel must zero each time.
    httpx yields its 64 KiB reads unjoined with `chunk_size=None`. Measured in
    bench/fetch_and_hash.py: a 1 GiB fetch takes about a quarter less wall time. Set once around
    a batch of downloads, never per thread.
    """
    from huggingface_hub import constants

    before = constants.DOWNLOAD_CHUNK_SIZE
    constants.DOWNLOAD_CHUNK_SIZE = cast(int, None)
    try:
        yield
    finally:
        constants.DOWNLOAD_CHUNK_SIZE = before


def download(
    repo: str,
    commit: str,
    f: RemoteFile,
    dest_dir: Path,
    remote: Remote,
    tqdm_class: type[tqdm[Any]] | None = None,
) -> Downloaded:
    """Download one file to `dest_dir/<etag>`, resuming an earlier interrupted attempt.

    huggingface_hub (2.x) downloads into a temporary file unique to each process and never
    reuses it, so a killed pull would start over. Bytes go to `<etag>.incomplete` instead, kept
    across runs, and the library's `http_get` continues it with a Range request; their SHA-256 is
    computed as they are written (`Sha256Appender`), overlapping the other downloads. Files the Hub
    serves through Xet go through `hf_hub_download` (hf-xet is the fast path there).
    """
    from huggingface_hub import file_download, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.utils._headers import build_hf_headers

    etag = f.sha256 or f.git_sha1
    final = dest_dir / etag
    if final.is_file() and final.stat().st_size == f.size:
        return Downloaded(final, None)
    dest_dir.mkdir(parents=True, exist_ok=True)
    url = hf_hub_url(repo, f.path, revision=commit, endpoint=remote.endpoint)
    token = remote.token or None
    with hub_errors(repo, commit, remote):
        meta = get_hf_file_metadata(url, token=token, endpoint=remote.endpoint)
        if meta.xet_file_data is not None and _xet_available():
            local = hf_hub_download(
                repo,
                f.path,
                revision=commit,
                cache_dir=dest_dir / "xet",
                token=token,
                endpoint=remote.endpoint,
                tqdm_class=tqdm_class,
            )
            os.replace(os.path.realpath(local), final)
            return Downloaded(final, None)
        part = dest_dir / f"{etag}.incomplete"
        resume = part.stat().st_size if part.exists() else 0
        if resume > f.size:
            part.unlink()
            resume = 0
        if resume:
            logger.info("resuming %s at byte %d of %d", f.path, resume, f.size)
        with Sha256Appender(part) as out:
            file_download.http_get(
                meta.location or url,
                cast(BinaryIO, out),
                resume_size=resume,
                headers=build_hf_headers(token=token),
                expected_size=f.size,
                displayed_filename=f.path,
                tqdm_class=tqdm_class,
            )
    os.replace(part, final)
    return Downloaded(final, out.sha256.hexdigest())


def _xet_available() -> bool:
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
    """The bytes of one small metadata file (config.json ...) at `revision` (a commit)."""
    return read_file_head(repo, path, revision, None, remote)


def read_file_head(
    repo: str, path: str, revision: str, length: int | None, remote: Remote | None = None
) -> bytes:
    """The first `length` bytes of a repo file (all of it for None), by an HTTP Range request.

    A server that ignores Range answers 200 with the whole body: the stream stops after `length`.
    """
    from huggingface_hub import get_session, hf_hub_url, hf_raise_for_status
    from huggingface_hub.utils._headers import build_hf_headers

    remote = remote or Remote(token=read_token(None))
    url = hf_hub_url(repo, path, revision=revision, endpoint=remote.endpoint)
    headers = build_hf_headers(token=remote.token or None)
    if length is not None:
        headers["Range"] = f"bytes=0-{length - 1}"
    chunks: list[bytes] = []
    got = 0
    with (
        hub_errors(repo, revision, remote),
        get_session().stream(
            "GET", url, headers=headers, follow_redirects=True, timeout=30
        ) as response,
    ):
        hf_raise_for_status(response)
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            got += len(chunk)
            if length is not None and got >= length:
                break
    data = b"".join(chunks)
    return data if length is None else data[:length]
