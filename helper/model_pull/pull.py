"""The fetch and package pipelines: select, download, lay out, verify + hash, install, switch.

fetch hashes while the bytes arrive, so that the entry is ready at the last byte:

1. the listing is validated (hub.py) and each file located (HEAD) before any byte is fetched;
2. transfer.py downloads every file over several connections, in the order the entry's NAR
   hash reads them: first the small (non-LFS) files, whose SHA-256 the entry manifest needs and
   whose git blob SHA-1 the listing gives, then the others in NAR order;
3. the main thread hashes the small files as they arrive (SHA-256 and git blob SHA-1), lays
   out the staging tree with hardlinks to the files still downloading (layouts.py), and hashes
   its NAR while the rest arrives (`hashing.nar_hash` with a source that waits for the bytes),
   checking each LFS file's SHA-256 the moment its last byte is hashed;
4. after the last byte: make it read-only, install, switch (store.py): work that grows with
   the number of files, not with their size.

`package` copies a local directory into staging, hashing each file while it copies it, then
hashes the NAR of the result. Nothing is installed before every byte is verified.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_pull import hub, layouts, redact, safefs, transfer
from model_pull.datamodel import ENTRY_FORMAT, EntrySpec, FileRecord, Layout, model_name_problem
from model_pull.errors import ExitCode, ModelPullError
from model_pull.hashing import (
    CHUNK,
    Hasher,
    NarResult,
    Readable,
    file_hashes,
    git_blob_hasher,
    nar_hash,
)
from model_pull.layouts import Placed
from model_pull.output import InstalledJson
from model_pull.progress import Progress
from model_pull.store import Entry, StateRoot, free_bytes, os_errors, remove_tree

logger = logging.getLogger(__name__)


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
        name = self.name if self.name is not None else repo.split("/")[-1]
        if (why := model_name_problem(name)) is not None:
            raise ModelPullError(
                ExitCode.USAGE if self.name is not None else ExitCode.BAD_INPUT,
                f"{redact.name(name)} cannot be a model name: {why}",
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
                f"refusing the listing: unsafe file name {redact.name(path)} ({why})",
                hint="nothing was written; report the repository",
            )


def nar_order(path: str) -> list[bytes]:
    """Sort key: the order in which a NAR (and so `nar_hash`) reads the files of a tree."""
    return [part.encode() for part in path.split("/")]


# --- the shared tail: verify + hash, install ----------------------------------------------


class HashMismatchError(ModelPullError):
    def __init__(self, path: str, kind: str, want: str, got: str) -> None:
        super().__init__(
            ExitCode.HASH_MISMATCH,
            f"{redact.name(path)}: {kind} mismatch: expected {want}, got {got}",
            hint="the download was discarded; pull again (report the mirror if it repeats)",
        )
        self.path = path


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
    source: Callable[[Path, os.stat_result], tuple[int, Readable] | None] | None = None,
) -> NarResult:
    """The NAR hash of `staging`, each file of `expected` verified as soon as its last byte
    has been hashed (a bad file stops the pull then, not after the whole model)."""
    by_entry_path = {spec.file_path(p.path): p.path for p in placed}
    open_files: list[str] = []

    def check(paths: list[str]) -> None:
        for repo_path in paths:
            for kind, want, h in expected[repo_path].hashers:
                if (got := h.hexdigest()) != want:
                    raise HashMismatchError(repo_path, kind, want, got)
        paths.clear()

    def on_file(rel: str, size: int) -> list[Hasher]:
        check(open_files)  # the walk reads one file after the other: the last one is done
        repo_path = by_entry_path.get(rel)
        exp = expected.get(repo_path) if repo_path else None
        progress.hashed(size)
        if exp is None or exp.hashers or repo_path is None:
            return []
        if exp.sha256:
            exp.hashers.append(("sha256", exp.sha256, hashlib.sha256()))
        elif exp.git_sha1:
            exp.hashers.append(("git blob sha1", exp.git_sha1, git_blob_hasher(size)))
        open_files.append(repo_path)
        return [h for _, _, h in exp.hashers]

    nar = nar_hash(staging, on_file, source)
    check(open_files)
    check([p for p, exp in sorted(expected.items()) if exp.hashers])
    return nar


def _finish(
    root: StateRoot,
    staging: Path,
    name: str,
    spec: EntrySpec,
    nar: NarResult,
    options: Options,
    extra_record: dict[str, Any],
) -> Installed:
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
    substituted from a binary cache): rename it into store/, link the pin, record the pull,
    switch models/<name>. The tree must be under the root's staging/. What can fail (a full
    disk) is done before anything becomes visible; if the switch itself fails after the pin's
    gate moved, the error says so."""
    root.check_model_link(name)
    entry = root.install(tree, name, nar)
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
    gate = None
    if options.expect_nar:
        gate = root.link_by_hash(nar.sri, entry)
    try:
        previous = root.switch(name, entry)
    except ModelPullError as exc:
        if gate is None:
            raise
        raise ModelPullError(
            exc.code,
            f"{name}: {entry.basename} is installed and its pin {gate} serves it, but "
            f"models/{name} was not switched: {exc.message}",
            hint=exc.hint,
        ) from exc
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
    """The current entry when it is exactly `spec`, in this entry format, and as it was
    installed (no network needed; an entry that changed is pulled again)."""
    from model_pull.verify import trusted

    entry = root.current(name)
    if entry is None or not hub.COMMIT_RE.match(spec.revision):
        return None
    try:
        manifest = entry.manifest()
    except (OSError, ValueError):
        return None
    if manifest.spec != spec or manifest.format != ENTRY_FORMAT:
        return None
    if not trusted(root, entry):
        logger.warning("%s changed since it was installed: pulling it again", entry.path)
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
    connections: int | None = None,
    substitute: Callable[[], Installed | None] | None = None,
) -> Installed:
    """Pull `repo` at `revision` from the Hub. `substitute` (a pinned model, with binary caches:
    substitute.py) is asked first, after the offline up-to-date check: an entry it returns is
    installed already, None means the Hub."""
    name = options.model_name(repo)
    connections = connections or transfer.connections_from_env()
    root.check()
    root.check_model_link(name)
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
    listing = hub.list_files(repo, commit, remote)  # every entry validated
    chosen = select(listing, options)
    if preflight is not None:
        preflight(commit, chosen)
    with root.lock(wait=wait), os_errors("download and install", root.path):
        done = up_to_date(root, name, spec, options)
        if done is not None:
            if options.expect_nar:
                root.link_by_hash(options.expect_nar, done.entry)
            return done
        root.check_model_link(name)
        return _download_and_install(
            root, name, spec, chosen, options, remote, progress, connections
        )


def _download_and_install(
    root: StateRoot,
    name: str,
    spec: EntrySpec,
    chosen: list[hub.RemoteFile],
    options: Options,
    remote: hub.Remote,
    progress: Progress,
    connections: int,
) -> Installed:
    dest = root.cache / spec.slug
    safefs.ensure_dir(dest, 0o700)
    jobs = _jobs(spec, chosen, dest, remote, connections)
    try:
        return _run_jobs(root, name, spec, chosen, jobs, options, progress, connections)
    finally:
        for job in jobs.values():
            job.part.close()


def _jobs(
    spec: EntrySpec,
    chosen: list[hub.RemoteFile],
    dest: Path,
    remote: hub.Remote,
    connections: int,
) -> dict[str, transfer.Job]:
    """One download job per distinct content (two paths with the same bytes share one),
    located by a HEAD each (in parallel), its partial bytes from an earlier run opened for the
    resume."""
    locations = transfer.map_parallel(
        lambda f: hub.locate(spec.repo, spec.revision, f, remote), chosen, min(connections, 16)
    )
    jobs: dict[str, transfer.Job] = {}
    by_etag: dict[str, transfer.Job] = {}
    for f, where in zip(chosen, locations, strict=True):
        if f.etag in by_etag:
            jobs[f.path] = by_etag[f.etag]
            continue
        part = transfer.Part(dest, f.etag, f.size, transfer.RANGE_SIZE)
        jobs[f.path] = transfer.Job(
            f.path,
            f.size,
            where.url,
            remote.headers(),
            part,
            xet=_xet(spec, f, dest, remote) if where.xet else None,
        )
        by_etag[f.etag] = jobs[f.path]
        part.open()
    return jobs


def _xet(spec: EntrySpec, f: hub.RemoteFile, dest: Path, remote: hub.Remote) -> Callable[[], Path]:
    return lambda: hub.xet_download(spec.repo, spec.revision, f, dest / "xet", remote)


def _patched(spec: EntrySpec, f: hub.RemoteFile) -> bool:
    return spec.patch_tokenizer and Path(f.path).name == layouts.TOKENIZER_CONFIG


def _run_jobs(
    root: StateRoot,
    name: str,
    spec: EntrySpec,
    chosen: list[hub.RemoteFile],
    jobs: dict[str, transfer.Job],
    options: Options,
    progress: Progress,
    connections: int,
) -> Installed:
    # The small files first (the entry manifest needs their SHA-256), then what hf-xet
    # downloads (it does not say which bytes arrived: the staging tree links the file it
    # leaves, once it is there), then the rest in NAR order.
    first = sorted(
        (f for f in chosen if not f.is_lfs or _patched(spec, f)),
        key=lambda f: nar_order(spec.file_path(f.path)),
    )
    rest = sorted(
        (f for f in chosen if f.is_lfs and not _patched(spec, f)),
        key=lambda f: (jobs[f.path].xet is None, nar_order(spec.file_path(f.path))),
    )
    unique = list({id(jobs[f.path]): jobs[f.path] for f in first + rest}.values())
    total = sum(j.size for j in unique)
    on_disk = sum(j.part.bytes_on_disk for j in unique)
    _ensure_space(root, total - on_disk, on_disk)
    run = transfer.Transfer(
        unique,
        connections,
        on_bytes=progress.add_bytes,
        on_file=lambda job: progress.file_done(),
        lead=transfer.LEAD,
    )
    progress.start(len(unique), total)
    progress.add_bytes(on_disk)
    t0 = time.monotonic()
    staging = root.new_staging(name)
    try:
        with transfer.running(run):
            sha256s: dict[str, str] = {}
            for f in first:
                sha256, sha1 = file_hashes(jobs[f.path].reader(run.cancel), f.size)
                if sha1 != f.git_sha1:
                    raise HashMismatchError(f.path, "git blob sha1", f.git_sha1, sha1)
                if f.sha256 is not None and sha256 != f.sha256:
                    raise HashMismatchError(f.path, "sha256", f.sha256, sha256)
                sha256s[f.path] = sha256
            run.wait_for([j for j in unique if j.xet is not None])
            with run.paused():
                placed = [
                    Placed(f.path, jobs[f.path].part.path, f.size, sha256s.get(f.path) or f.etag)
                    for f in chosen
                ]
                layouts.build(staging, spec, placed, link=True)
            expected = {f.path: _Expect(f.sha256, None) for f in rest}
            nar = _verify_and_hash(
                staging, spec, placed, expected, progress, source=_growing(jobs, run)
            )
            run.wait()
        logger.info(
            "downloaded and hashed %d bytes in %.2f s (up to %d connections)",
            nar.size,
            time.monotonic() - t0,
            run.peak,
        )
        installed = _finish(root, staging, name, spec, nar, options, {"source": "hub"})
        if run.last_byte_at is not None:
            logger.info(
                "models/%s switched %.3f s after the last byte arrived",
                name,
                time.monotonic() - run.last_byte_at,
            )
    except transfer.CancelledError:
        remove_tree(staging)
        if run.error is not None:
            raise run.error from None
        raise KeyboardInterrupt from None
    except HashMismatchError as exc:
        remove_tree(staging)
        _discard(jobs[exc.path].part)
        raise
    except BaseException:
        remove_tree(staging)
        raise
    finally:
        progress.close()
    _clean_cache(jobs.values())
    return installed


def _growing(
    jobs: dict[str, transfer.Job], run: transfer.Transfer
) -> Callable[[Path, os.stat_result], tuple[int, Readable] | None]:
    """For the NAR walk: a file of the staging tree that is a download gives its listed size
    and a reader that waits for its bytes."""
    by_inode = {}
    for job in jobs.values():
        st = os.fstat(job.part.fd)
        by_inode[(st.st_dev, st.st_ino)] = job

    def source(path: Path, st: os.stat_result) -> tuple[int, Readable] | None:
        job = by_inode.get((st.st_dev, st.st_ino))
        return (job.size, job.reader(run.cancel)) if job is not None else None

    return source


def _ensure_space(root: StateRoot, needed: int, already: int) -> None:
    free = free_bytes(root.cache)
    if free < needed:
        kept = f" ({already} bytes already downloaded count)" if already else ""
        raise ModelPullError(
            ExitCode.DISK_FULL,
            f"no space left on the device holding {root.path}: the download needs "
            f"{needed} more bytes{kept}, {free} are free",
            hint="free space (model-pull gc removes unused entries and keeps the downloads), "
            "or use --root elsewhere",
        )


def _discard(part: transfer.Part) -> None:
    part.close()
    for path in (part.final, part.data, part.counters):
        try:
            safefs.unlink(path)
        except OSError:
            logger.warning("could not remove %s", path)


def _clean_cache(jobs: Iterable[transfer.Job]) -> None:
    """The entry holds the bytes now (hardlinks); drop the cache's names for them."""
    for job in jobs:
        with contextlib.suppress(OSError):
            safefs.unlink(job.part.final)


def _pinned(root: StateRoot, done: Installed, options: Options, wait: bool) -> Installed:
    """An up-to-date entry that is pinned now: make sure its by-hash/ gate exists."""
    if options.expect_nar and root.entry_at(root.pin_link(options.expect_nar)) != done.entry:
        with root.lock(wait=wait):
            root.link_by_hash(options.expect_nar, done.entry)
    return done


# --- package ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    path: Path  # the real path, inside the source directory
    dev_ino: tuple[int, int]  # what it was when checked: the copy refuses anything else


@dataclass(frozen=True)
class LocalSource:
    repo: str
    revision: str
    files: dict[str, LocalFile]  # repo path -> file
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
        commit = revision or (
            ref.read_text(errors="replace")[:100].strip() if ref.is_file() else None
        )
        snaps = sorted(p.name for p in (src / "snapshots").iterdir())
        if commit is None and len(snaps) == 1:
            commit = snaps[0]
        if commit is None or "/" in commit or not (src / "snapshots" / commit).is_dir():
            raise ModelPullError(
                ExitCode.REVISION_NOT_FOUND,
                f"{src}: no snapshot for revision {redact.name(commit or 'main')}",
                hint=f"give --revision, one of: {', '.join(snaps[:10]) or 'none'}",
            )
        base = src / "snapshots" / commit
        files = _walk_files(base, src)
        expected: dict[str, _Expect] = {}
        for rel, local in files.items():
            blob = local.path.name  # blobs are named by their hash
            if len(blob) == 64:
                expected[rel] = _Expect(blob, None)
            elif len(blob) == 40:
                expected[rel] = _Expect(None, blob)
        return LocalSource(repo or cache_repo, commit, files, expected)
    files = _walk_files(src, src)
    rev = revision or "0" * 40
    return LocalSource(repo or f"local/{src.name}", rev, files, {})


def _walk_files(base: Path, src: Path) -> dict[str, LocalFile]:
    """Every regular file under `base`; a link is followed only when it stays inside `src`
    (a link to a root-only file would otherwise end up in a world-readable entry)."""
    inside = Path(os.path.realpath(src))
    out: dict[str, LocalFile] = {}
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".cache")]
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise ModelPullError(
                    ExitCode.BAD_INPUT,
                    f"{Path(dirpath) / d} is a link to a directory",
                    hint="package a directory of files (links to files inside it are fine)",
                )
        for fn in filenames:
            p = Path(dirpath) / fn
            rel = p.relative_to(base).as_posix()
            real = Path(os.path.realpath(p))
            if not real.is_relative_to(inside):
                raise ModelPullError(
                    ExitCode.BAD_INPUT,
                    f"{p} is a link to {redact.name(str(real))}, outside {src}",
                    hint="copy the file into the directory if it belongs to the model",
                )
            try:
                st = os.stat(real)
            except OSError:
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise ModelPullError(
                    ExitCode.BAD_INPUT,
                    f"{p} is not a regular file",
                    hint="dangling symlink or special file in the source",
                )
            out[rel] = LocalFile(real, (st.st_dev, st.st_ino))
    if not out:
        raise ModelPullError(ExitCode.NO_MATCH, f"{base} has no files")
    return out


def _copy_and_hash(local: LocalFile, dst: Path) -> tuple[int, str, str]:
    """Copy `local` to `dst`, hashing what is copied: (size, sha256, git blob sha1). The file
    opened must be the one checked (no link, no swapped directory)."""
    fd = os.open(local.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != local.dev_ino or not stat.S_ISREG(st.st_mode):
            raise ModelPullError(
                ExitCode.BAD_INPUT,
                f"{local.path} changed while it was packaged",
                hint="package a directory nothing else is writing to",
            )
        sha256, sha1 = hashlib.sha256(), git_blob_hasher(st.st_size)
        got = 0
        dst.parent.mkdir(parents=True, exist_ok=True)
        with dst.open("xb") as out:
            while chunk := f.read(CHUNK):
                sha256.update(chunk)
                sha1.update(chunk)
                out.write(chunk)
                got += len(chunk)
    if got != st.st_size:
        raise ModelPullError(ExitCode.BAD_INPUT, f"{local.path} changed while it was packaged")
    return got, sha256.hexdigest(), sha1.hexdigest()


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
            f"revision {redact.name(source.revision)} is not a 40-hex commit",
            hint="give --revision COMMIT",
        )
    refuse_unsafe(list(source.files))
    listing = [
        hub.RemoteFile(p, os.stat(f.path).st_size, "0" * 40, None) for p, f in source.files.items()
    ]
    chosen = sorted(f.path for f in select(listing, options))
    name = options.model_name(source.repo)
    spec = options.spec(source.repo, source.revision)
    root.check_model_link(name)
    with root.lock(wait=wait), os_errors("package", root.path):
        copies = root.new_staging(f"{name}-src")
        staging = root.new_staging(name)
        try:
            placed = []
            expected: dict[str, _Expect] = {}
            for i, rel in enumerate(chosen):
                copy = copies / str(i)
                size, sha256, sha1 = _copy_and_hash(source.files[rel], copy)
                exp = source.expected.get(rel)
                want = exp.sha256 if exp and exp.sha256 else None
                if want and sha256 != want:
                    raise HashMismatchError(rel, "sha256", want, sha256)
                if exp and exp.git_sha1 and sha1 != exp.git_sha1:
                    raise HashMismatchError(rel, "git blob sha1", exp.git_sha1, sha1)
                placed.append(Placed(rel, copy, size, sha256))
                expected[rel] = _Expect(sha256, None)  # the entry holds what was hashed
            progress.start(0, sum(p.size for p in placed))
            layouts.build(staging, spec, placed, link=True)
            remove_tree(copies)
            nar = _verify_and_hash(staging, spec, placed, expected, progress)
            return _finish(root, staging, name, spec, nar, options, {"source": str(src)})
        except BaseException:
            remove_tree(staging)
            raise
        finally:
            remove_tree(copies)
            progress.close()
