"""Every huggingface_hub call."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from model_pull.errors import ExitCode, ModelPullError

logger = logging.getLogger(__name__)


# --- metadata reads (used by check) ---
# Self-contained: list a repo with sizes, read one small file, read the first bytes of a file by
# an HTTP Range request. No weights are downloaded, nothing is written to the HF cache.


@contextlib.contextmanager
def _metadata_errors(repo: str, revision: str | None) -> Iterator[None]:
    from huggingface_hub import errors

    try:
        yield
    except errors.GatedRepoError as exc:
        raise ModelPullError(ExitCode.AUTH, f"{repo} is gated",
                             hint="accept its terms on the Hub and set HF_TOKEN") from exc
    except errors.RepositoryNotFoundError as exc:
        raise ModelPullError(ExitCode.REPO_NOT_FOUND, f"no repo {repo} on the Hub",
                             hint="check the name, or set HF_TOKEN for a private repo") from exc
    except errors.RevisionNotFoundError as exc:
        raise ModelPullError(ExitCode.REVISION_NOT_FOUND,
                             f"{repo} has no revision {revision}") from exc
    except errors.HfHubHTTPError as exc:
        raise ModelPullError(ExitCode.UNREACHABLE, f"the Hub refused a metadata read of {repo}: "
                             f"{str(exc).splitlines()[0]}") from exc
    except OSError as exc:  # connection refused, DNS, TLS
        raise ModelPullError(ExitCode.UNREACHABLE, f"cannot reach the Hub for {repo}: {exc}",
                             hint="check the network or HF_ENDPOINT") from exc


def _is_transport_error(exc: Exception) -> bool:
    return type(exc).__module__.split(".")[0].startswith("httpx")


def list_files_with_sizes(repo: str, revision: str | None) -> tuple[str, list[tuple[str, int]]]:
    """(commit sha, [(path, size)]) of every file in the repo at `revision`."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    with _metadata_errors(repo, revision):
        try:
            sha = api.model_info(repo, revision=revision).sha
            if not sha:
                raise ModelPullError(ExitCode.REVISION_NOT_FOUND,
                                     f"the Hub gave no commit for {repo}@{revision}")
            tree = api.list_repo_tree(repo, recursive=True, revision=sha)
            files = [(f.path, int(f.size)) for f in tree if isinstance(f, RepoFile)]
        except Exception as exc:
            if _is_transport_error(exc):
                raise OSError(str(exc)) from exc
            raise
    return sha, files


def read_small_file(repo: str, path: str, revision: str) -> bytes:
    """The bytes of one small metadata file (config.json ...) at `revision` (a commit)."""
    return read_file_head(repo, path, revision, None)


def read_file_head(repo: str, path: str, revision: str, length: int | None) -> bytes:
    """The first `length` bytes of a repo file (all of it for None), by an HTTP Range request.

    A server that ignores Range answers 200 with the whole body: the stream stops after `length`.
    """
    from huggingface_hub import get_session, hf_hub_url, hf_raise_for_status
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    url = hf_hub_url(repo, path, revision=revision)
    headers = build_hf_headers()
    if length is not None:
        headers["Range"] = f"bytes=0-{length - 1}"
    chunks: list[bytes] = []
    got = 0
    with _metadata_errors(repo, revision):
        try:
            with get_session().stream("GET", url, headers=headers, follow_redirects=True,
                                      timeout=30) as response:
                hf_raise_for_status(response)
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    got += len(chunk)
                    if length is not None and got >= length:
                        break
        except Exception as exc:
            if _is_transport_error(exc):
                raise OSError(str(exc)) from exc
            raise
    data = b"".join(chunks)
    return data if length is None else data[:length]
