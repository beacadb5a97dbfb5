"""The fetch and package pipelines: select, download, lay out, verify + hash, install, switch.

A downloaded file's SHA-256 is computed while it is written and checked against the Hub's
listing right after the downloads; the NAR hash then reads every byte once more. Files not hashed
that way (Xet, a blob left by an earlier run, `package`'s sources) are verified in that same NAR
read (`hashing.nar_hash` with `on_file`). Downloads are hardlinked from the resumable cache into
the staging tree, never copied.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_pull import hub, layouts
from model_pull.datamodel import ENTRY_FORMAT, EntrySpec, FileRecord, Layout
from model_pull.errors import ExitCode, ModelPullError
from model_pull.hashing import (
    Hasher,
    NarResult,
    git_blob_hasher,
    git_blob_sha1,
    nar_hash,
    sha256_file,
    valid_store_name,
)
from model_pull.layouts import Placed
from model_pull.output import InstalledJson
from model_pull.progress import Progress
from model_pull.store import Entry, StateRoot, os_errors, remove_tree

logger = logging.getLogger(__name__)

DOWNLOAD_WORKERS = 8
SMALL_FILE = 16 << 20  # small files are hashed up front (their sha256 goes into the manifest)


@dataclass(frozen=True)
class Options:
    """Everything besides repo and revision that decides the entry."""

    layout: Layout = Layout.DUAL
    name: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    triton_name: str | None = None
    engine_defaults: dict[str, Any] = field(default_factory=dict)
    patch_tokenizer: bool = False
    expect_nar: str | None = None  # a pinned narHash (SRI): anything else is refused

    def spec(self, repo: str, revision: str) -> EntrySpec:
        """The entry these options make of `repo` at `revision` (a commit)."""
        return EntrySpec(
            repo,
            revision,
            self.layout,
            self.include,
            self.exclude,
            self.triton_name,
            self.engine_defaults,
            self.patch_tokenizer,
        )

    def model_name(self, repo: str) -> str:
        name = self.name or repo.split("/")[-1]
        if not valid_store_name(name):
            raise ModelPullError(
                ExitCode.BAD_INPUT,
                f"{name!r} cannot be a model name",
                hint="use --name with letters, digits and + - . _ ? =",
            )
        return name


@dataclass(frozen=True)
class Installed:
    name: str
    repo: str
    revision: str
    layout: Layout
    entry: Entry
    nar_hash: str
    files: Sequence[FileRecord]
    previous: Entry | None
    changed: bool

    def to_json(self) -> InstalledJson:
        return {
            "name": self.name,
            "repo": self.repo,
            "revision": self.revision,
            "layout": str(self.layout),
            "path": str(self.entry.path),
            "narHash": self.nar_hash,
            "storeName": self.entry.basename,
            "files": list(self.files),
            "changed": self.changed,
            "previous": str(self.previous.path) if self.previous else None,
        }


# --- selection --------------------------------------------------------------------------


def _match(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p + "*" if p.endswith("/") else p) for p in patterns)


def select(files: Sequence[hub.RemoteFile], options: Options) -> list[hub.RemoteFile]:
    include = options.include or (("*.gguf",) if options.layout is Layout.GGUF else ())
    chosen = [
        f
        for f in files
        if (not include or _match(f.path, include)) and not _match(f.path, options.exclude)
    ]
    if not chosen:
        raise ModelPullError(
            ExitCode.NO_MATCH,
            f"no file matches --include {list(include)} --exclude {list(options.exclude)}",
            hint="list the repository's files and fix the patterns",
        )
    return chosen


def refuse_unsafe(paths: Sequence[str]) -> None:
    for path in paths:
        why = hub.check_safe_path(path)
        if why:
            raise ModelPullError(
                ExitCode.UNSAFE_LISTING,
                f"refusing the listing: unsafe file name {path!r} ({why})",
                hint="nothing was written; report the repository",
            )


# --- the shared tail: lay out, verify + hash, install -------------------------------------


@dataclass
class _Expect:
    sha256: str | None
    git_sha1: str | None
    hashers: list[tuple[str, str, hashlib._Hash]] = field(default_factory=list)


def _verify_and_hash(
    staging: Path,
    spec: EntrySpec,
    placed: Sequence[Placed],
    expected: dict[str, _Expect],
    progress: Progress,
) -> NarResult:
    by_entry_path = {spec.file_path(p.path): p.path for p in placed}

    def on_file(rel: str, size: int) -> list[Hasher]:
        repo_path = by_entry_path.get(rel)
        exp = expected.get(repo_path) if repo_path else None
        progress.hashed(size)
        if exp is None or exp.hashers:
            return []
        if exp.sha256:
            exp.hashers.append(("sha256", exp.sha256, hashlib.sha256()))
        elif exp.git_sha1:
            exp.hashers.append(("git blob sha1", exp.git_sha1, git_blob_hasher(size)))
        return [h for _, _, h in exp.hashers]

    nar = nar_hash(staging, on_file)
    for repo_path, exp in sorted(expected.items()):
        for kind, want, h in exp.hashers:
            got = h.hexdigest()
            if got != want:
                raise _mismatch(repo_path, kind, want, got)
    return nar


def _mismatch(path: str, kind: str, want: str, got: str) -> ModelPullError:
    return ModelPullError(
        ExitCode.HASH_MISMATCH,
        f"{path}: {kind} mismatch: expected {want}, got {got}",
        hint="the download was discarded; pull again (report the mirror if it repeats)",
    )


def _finish(
    root: StateRoot,
    staging: Path,
    name: str,
    spec: EntrySpec,
    placed: Sequence[Placed],
    expected: dict[str, _Expect],
    options: Options,
    progress: Progress,
    extra_record: dict[str, Any],
) -> Installed:
    t0 = time.monotonic()
    nar = _verify_and_hash(staging, spec, placed, expected, progress)
    logger.info("verified and hashed %d bytes in %.2f s", nar.size, time.monotonic() - t0)
    if options.expect_nar and nar.sri != options.expect_nar:
        raise pin_mismatch(spec, nar.sri, options.expect_nar)
    return install_verified(root, staging, name, spec, nar, options, extra_record)


def install_verified(
    root: StateRoot,
    tree: Path,
    name: str,
    spec: EntrySpec,
    nar: NarResult,
    options: Options,
    extra_record: dict[str, Any],
) -> Installed:
    """Install a tree whose NAR hash is known to be `nar` (hashed here, or checked by Nix when
    substituted from a binary cache): rename it into store/, switch models/<name>, link the pin,
    record the pull. The tree must be under the root's staging/."""
    entry = root.install(tree, name, nar)
    previous = root.switch(name, entry)
    if options.expect_nar:
        root.link_by_hash(nar.sri, entry)
    root.record(
        {
            "name": name,
            "repo": spec.repo,
            "revision": spec.revision,
            "narHash": nar.sri,
            "entry": entry.basename,
            **extra_record,
        }
    )
    changed = previous is None or previous.basename != entry.basename
    return Installed(
        name,
        spec.repo,
        spec.revision,
        spec.layout,
        entry,
        nar.sri,
        entry.manifest().files,
        previous,
        changed,
    )


def pin_mismatch(spec: EntrySpec, got: str, pinned: str) -> ModelPullError:
    return ModelPullError(
        ExitCode.PIN_MISMATCH,
        f"{spec.repo}@{spec.revision[:12]} (layout {spec.layout}) hashes to {got}, not to the "
        f"pinned narHash {pinned}; nothing was installed",
        hint=f'if the declaration is what you want, pin narHash = "{got}", which model-pull '
        "prefetch prints with the whole declaration; a pin made by a model-pull with another "
        f"entry format changes too, this one writes format {ENTRY_FORMAT}",
    )


def up_to_date(root: StateRoot, name: str, spec: EntrySpec, options: Options) -> Installed | None:
    """The current entry when it is exactly `spec`, in this entry format (no network needed)."""
    entry = root.current(name)
    if entry is None or not hub.COMMIT_RE.match(spec.revision):
        return None
    try:
        manifest = entry.manifest()
    except (OSError, ValueError):
        return None
    if manifest.spec != spec or manifest.format != ENTRY_FORMAT:
        return None
    nar = root.nar_hash_of(entry)
    if nar is None or options.expect_nar not in (None, nar):
        return None
    return Installed(
        name,
        spec.repo,
        spec.revision,
        spec.layout,
        entry,
        nar,
        manifest.files,
        entry,
        changed=False,
    )


# --- fetch --------------------------------------------------------------------------------


def fetch(
    repo: str,
    revision: str,
    options: Options,
    root: StateRoot,
    remote: hub.Remote,
    *,
    progress: Progress,
    wait: bool = True,
    preflight: Callable[[str, list[hub.RemoteFile]], object] | None = None,
    substitute: Callable[[], Installed | None] | None = None,
) -> Installed:
    """Pull `repo` at `revision` from the Hub. `substitute` (a pinned model, with binary caches:
    substitute.py) is asked first, after the offline up-to-date check: an entry it returns is
    installed already, None means the Hub."""
    name = options.model_name(repo)
    if hub.COMMIT_RE.match(revision):
        done = up_to_date(root, name, options.spec(repo, revision), options)
        if done is not None:
            return _pinned(root, done, options, wait)
    if substitute is not None and (done := substitute()) is not None:
        return done
    commit = hub.resolve_revision(repo, revision, remote)
    spec = options.spec(repo, commit)
    # The commit and the options decide the entry: a branch that did not move costs one request.
    done = up_to_date(root, name, spec, options)
    if done is not None:
        return _pinned(root, done, options, wait)
    listing = hub.list_files(repo, commit, remote)
    refuse_unsafe([f.path for f in listing])
    chosen = select(listing, options)
    if preflight is not None:
        preflight(commit, chosen)
    with root.lock(wait=wait), os_errors("download and install", root.path):
        done = up_to_date(root, name, spec, options)
        if done is not None:
            if options.expect_nar:
                root.link_by_hash(options.expect_nar, done.entry)
            return done
        _ensure_space(root, sum(f.size for f in chosen))
        progress.start(len(chosen), sum(f.size for f in chosen))
        t0 = time.monotonic()
        blobs = _download_all(repo, commit, chosen, root, remote, progress)
        logger.info("downloaded %d files in %.2f s", len(chosen), time.monotonic() - t0)
        expected: dict[str, _Expect] = {}
        placed: list[Placed] = []
        for f in chosen:
            blob = blobs[f.path].path
            if f.sha256 is not None:
                got = blobs[f.path].sha256
                if got is None:  # not hashed while downloading: verified in the NAR pass
                    expected[f.path] = _Expect(f.sha256, None)
                elif got != f.sha256:
                    _discard_blob(blob)
                    raise _mismatch(f.path, "sha256", f.sha256, got)
                placed.append(Placed(f.path, blob, f.size, f.sha256))
            else:
                sha256, sha1 = _small_hashes(blob)
                if sha1 != f.git_sha1:
                    _discard_blob(blob)
                    raise _mismatch(f.path, "git blob sha1", f.git_sha1, sha1)
                placed.append(Placed(f.path, blob, f.size, sha256))
        staging = root.new_staging(name)
        try:
            layouts.build(staging, spec, placed, link=True)
            installed = _finish(
                root, staging, name, spec, placed, expected, options, progress, {"source": "hub"}
            )
        except ModelPullError as exc:
            remove_tree(staging)
            if exc.code is ExitCode.HASH_MISMATCH:
                for f in chosen:
                    if f.is_lfs:
                        _discard_blob(blobs[f.path].path)
            raise
        except BaseException:
            remove_tree(staging)
            raise
        finally:
            progress.close()
        _clean_cache(b.path for b in blobs.values())
        return installed


def _pinned(root: StateRoot, done: Installed, options: Options, wait: bool) -> Installed:
    """An up-to-date entry that is pinned now: make sure its by-hash/ gate exists."""
    if options.expect_nar and not root.pin_link(options.expect_nar).exists():
        with root.lock(wait=wait):
            root.link_by_hash(options.expect_nar, done.entry)
    return done


def _ensure_space(root: StateRoot, needed: int) -> None:
    free = shutil.disk_usage(root.path).free
    if free < needed:
        raise ModelPullError(
            ExitCode.DISK_FULL,
            f"no space left on the device holding {root.path}: the files need "
            f"{needed} bytes, {free} are free",
            hint="free space (model-pull gc) or use --root elsewhere",
        )


def _download_all(
    repo: str,
    commit: str,
    files: Sequence[hub.RemoteFile],
    root: StateRoot,
    remote: hub.Remote,
    progress: Progress,
) -> dict[str, hub.Downloaded]:
    tqdm_class = progress.tqdm_class()

    dest = root.cache / ("models--" + repo.replace("/", "--"))

    def one(f: hub.RemoteFile) -> tuple[str, hub.Downloaded]:
        path = hub.download(repo, commit, f, dest, remote, tqdm_class=tqdm_class)
        progress.file_done()
        return f.path, path

    with warnings.catch_warnings():
        # huggingface_hub's own disk-space warning: _ensure_space says it in one line instead
        warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")
        with hub.chunks_as_received(), ThreadPoolExecutor(max_workers=DOWNLOAD_WORKERS) as pool:
            return dict(pool.map(one, files))


def _small_hashes(path: Path) -> tuple[str, str]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), git_blob_sha1(data)


def _discard_blob(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        logger.warning("could not remove %s", path)


def _clean_cache(blobs: Iterable[Path]) -> None:
    """The entry holds the bytes now (hardlinks); drop the cache's names for them."""
    for blob in blobs:
        _discard_blob(blob)


# --- package ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalSource:
    repo: str
    revision: str
    files: dict[str, Path]  # repo path -> file
    expected: dict[str, _Expect]


def read_source(src: Path, repo: str | None, revision: str | None) -> LocalSource:
    """A plain directory, or an HF cache `models--org--name` tree with its snapshots."""
    if not src.is_dir():
        raise ModelPullError(
            ExitCode.BAD_INPUT,
            f"{src} is not a directory",
            hint="give a model directory or an HF cache models--org--name tree",
        )
    if (src / "snapshots").is_dir() and src.name.startswith("models--"):
        cache_repo = src.name[len("models--") :].replace("--", "/", 1)
        ref = src / "refs" / "main"
        commit = revision or (ref.read_text().strip() if ref.exists() else None)
        snaps = sorted(p.name for p in (src / "snapshots").iterdir())
        if commit is None and len(snaps) == 1:
            commit = snaps[0]
        if commit is None or not (src / "snapshots" / commit).is_dir():
            raise ModelPullError(
                ExitCode.REVISION_NOT_FOUND,
                f"{src}: no snapshot for revision {commit or 'main'}",
                hint=f"give --revision, one of: {', '.join(snaps) or 'none'}",
            )
        base = src / "snapshots" / commit
        files = _walk_files(base)
        expected: dict[str, _Expect] = {}
        for rel, path in files.items():
            blob = Path(os.path.realpath(path)).name  # blobs are named by their hash
            if len(blob) == 64:
                expected[rel] = _Expect(blob, None)
            elif len(blob) == 40:
                expected[rel] = _Expect(None, blob)
        return LocalSource(repo or cache_repo, commit, files, expected)
    files = _walk_files(src)
    rev = revision or "0" * 40
    return LocalSource(repo or f"local/{src.name}", rev, files, {})


def _walk_files(base: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".cache")]
        for fn in filenames:
            p = Path(dirpath) / fn
            rel = p.relative_to(base).as_posix()
            real = Path(os.path.realpath(p))
            if not real.is_file():
                raise ModelPullError(
                    ExitCode.BAD_INPUT,
                    f"{p} is not a regular file",
                    hint="dangling symlink or special file in the source",
                )
            out[rel] = real
    if not out:
        raise ModelPullError(ExitCode.NO_MATCH, f"{base} has no files")
    return out


def package(
    src: Path,
    options: Options,
    root: StateRoot,
    *,
    repo: str | None = None,
    revision: str | None = None,
    progress: Progress,
    wait: bool = True,
) -> Installed:
    source = read_source(src, repo, revision)
    if not hub.COMMIT_RE.match(source.revision):
        raise ModelPullError(
            ExitCode.BAD_INPUT,
            f"revision {source.revision!r} is not a 40-hex commit",
            hint="give --revision COMMIT",
        )
    refuse_unsafe(list(source.files))
    listing = [hub.RemoteFile(p, f.stat().st_size, "", None) for p, f in source.files.items()]
    chosen = {f.path for f in select(listing, options)}
    name = options.model_name(source.repo)
    spec = options.spec(source.repo, source.revision)
    with root.lock(wait=wait), os_errors("package", root.path):
        placed = []
        expected = {k: v for k, v in source.expected.items() if k in chosen}
        for rel in sorted(chosen):
            path = source.files[rel]
            size = path.stat().st_size
            exp = expected.get(rel)
            if exp is None or exp.sha256 is None:
                sha256 = sha256_file(path)  # plain directories: read once up front
                if exp is not None and exp.git_sha1:
                    got = git_blob_sha1(path.read_bytes()) if size <= SMALL_FILE else None
                    if got is not None and got != exp.git_sha1:
                        raise ModelPullError(
                            ExitCode.HASH_MISMATCH,
                            f"{rel}: git blob sha1 mismatch: expected {exp.git_sha1}, got {got}",
                        )
                    expected.pop(rel)
            else:
                sha256 = exp.sha256
            placed.append(Placed(rel, path, size, sha256))
        progress.start(0, sum(p.size for p in placed))
        staging = root.new_staging(name)
        try:
            layouts.build(staging, spec, placed, link=False)
            return _finish(
                root, staging, name, spec, placed, expected, options, progress, {"source": str(src)}
            )
        except BaseException:
            remove_tree(staging)
            raise
        finally:
            progress.close()
