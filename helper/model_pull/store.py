"""The state root: immutable entries, the `models/` links, one lock, gc and rollback.

Nothing becomes visible under `store/` or `models/` except by one `rename`: an entry is built in
`staging/`, hashed, made read-only and renamed into `store/<hash>-<name>`; `models/<name>` is a
relative symlink made in `staging/` and renamed over the old one. What a pull writes before the
switch (the entry's record, the history line, the log line) comes first, so a pull killed at any
moment leaves at most garbage in `staging/` (removed by the next pull), resumable downloads in
`cache/`, and either the old model or the new one with its history. gc moves an entry out of
`store/` before deleting it.

Every path is opened or replaced without following links (safefs.py): the root and its
directories must be root's, and a link where model-pull makes none is refused.

An entry is trusted again (reused by a pull, rolled back to) only while it is as it was
installed: `state/entries/<entry>.json` keeps its narHash and a fingerprint of every file's
metadata (mode, size, mtime, inode), which any change to the entry changes; `verify` marks an
entry it finds corrupt there, and a pull then replaces it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_pull import redact, safefs
from model_pull.datamodel import EntryManifest, RootPaths
from model_pull.errors import ExitCode, ModelPullError
from model_pull.hashing import NarResult, store_basename

logger = logging.getLogger(__name__)

_ENTRY_RE = re.compile(r"^[0-9abcdfghijklmnpqrsvwxyz]{32}-[A-Za-z0-9+\-._?=]{1,211}$")
_LINK_PREFIX = "../store/"


@contextlib.contextmanager
def os_errors(what: str, root: Path) -> Iterator[None]:
    """Disk full and permission problems as one line each."""
    try:
        yield
    except PermissionError as exc:
        raise ModelPullError(
            ExitCode.PERMISSION,
            f"no permission to {what} under {root}: {exc.strerror}",
            hint="run it as root: sudo model-pull ...",
        ) from exc
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ModelPullError(
                ExitCode.DISK_FULL,
                f"no space left on the device holding {root} while trying to {what}",
                hint="free space (model-pull gc removes unused entries and keeps the "
                "downloads), or use --root elsewhere",
            ) from exc
        if exc.errno == errno.EROFS:
            raise ModelPullError(
                ExitCode.PERMISSION,
                f"cannot {what}: {root} is on a read-only file system",
                hint="use --root on a writable file system",
            ) from exc
        raise


@dataclass(frozen=True)
class Entry:
    path: Path

    @property
    def basename(self) -> str:
        return self.path.name

    @property
    def name(self) -> str:
        return self.path.name.split("-", 1)[1]

    def manifest(self) -> EntryManifest:
        """Its share/model-pull/manifest.json; OSError or ValueError when unreadable."""
        return EntryManifest.read(self.path)


def make_readonly(path: Path) -> None:
    """Files 0444 (0555 if executable), directories 0555: what the Nix store does."""
    for dirpath, dirnames, filenames in os.walk(path):
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, 0o555 if st.st_mode & stat.S_IXUSR else 0o444)
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o555)
    os.chmod(path, 0o555)


def remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) tree; a link is removed, never followed."""
    kind = safefs.kind(path)
    if kind is None:
        return
    if kind != "dir":
        safefs.unlink(path)
        return
    for dirpath, _, _ in os.walk(path):  # never descends into links
        os.chmod(dirpath, 0o755)
    shutil.rmtree(path)  # fd-based on Linux: does not follow links


def fingerprint(path: Path) -> str:
    """What changes when anything in the entry changes: each node's type, mode, owner, size,
    mtime and inode, and each link's target (metadata only: no byte is read)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for n in sorted([".", *dirnames, *filenames]):
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, path)
            h.update(
                f"{rel}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_size}\0{st.st_mtime_ns}\0"
                f"{st.st_ino}\0".encode(errors="surrogateescape")
            )
            if stat.S_ISLNK(st.st_mode):
                h.update(os.fsencode(os.readlink(p)))
    return h.hexdigest()


class StateRoot(RootPaths):
    """What model-pull does under one root (the paths: datamodel.RootPaths)."""

    _DIRS = (
        ("store", 0o755),
        ("models", 0o755),
        ("by_hash", 0o755),
        ("cache", 0o700),
        ("staging", 0o700),
        ("state", 0o755),
        ("history_dir", 0o755),
        ("entry_records", 0o700),
    )

    def ensure(self) -> StateRoot:
        """Make the root and its directories, or check the ones that are there."""
        with os_errors("create the state directories", self.path):
            if safefs.kind(self.path) is None:
                os.makedirs(self.path, 0o755, exist_ok=True)
            safefs.check_root(self.path)
            for attr, mode in self._DIRS:
                safefs.ensure_dir(getattr(self, attr), mode)
        return self

    def check(self) -> StateRoot:
        """For the commands that only read: what is there must be safe to read."""
        if safefs.kind(self.path) is None:
            return self
        safefs.check_root(self.path)
        for attr, _ in self._DIRS:
            if safefs.kind(getattr(self, attr)) is not None:
                safefs.check_dir(getattr(self, attr))
        return self

    # --- locking --------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, wait: bool = True) -> Iterator[None]:
        """One pull per root. A second one waits (and says so), or fails with --no-wait."""
        self.ensure()
        lock_path = self.lock_file
        with os_errors("take the pull lock", self.path):
            fd = safefs.open_file(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = redact.clean(os.pread(fd, 64, 0).decode(errors="replace"), 20) or "?"
                if not wait:
                    raise ModelPullError(
                        ExitCode.LOCKED,
                        f"another pull (pid {holder}) holds {lock_path}",
                        hint="wait for it, or run again without --no-wait",
                    ) from None
                print(f"waiting for another pull (pid {holder}) to finish ...", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(OSError):  # only informative: a full disk is no reason
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            with os_errors("remove what an interrupted pull left", self.path):
                self._clean_staging()
            yield
        finally:
            os.close(fd)

    def _clean_staging(self) -> None:
        """Under the lock, anything in staging/ is debris of an interrupted pull (and links
        in models/ that an older model-pull left half-made)."""
        for child in self.staging.iterdir():
            logger.info("removing debris of an interrupted pull: %s", child)
            remove_tree(child)
        for top in (self.models, self.history_dir, self.entry_records, self.state):
            for child in top.iterdir():
                if child.name.startswith(".") and ".tmp-" in child.name:
                    safefs.unlink(child)

    # --- building and installing ----------------------------------------------------------

    def new_staging(self, name: str) -> Path:
        with os_errors("create a staging directory", self.path):
            return Path(tempfile.mkdtemp(prefix=f"{name}.", dir=self.staging))

    def _set_aside(self, path: Path, why: str) -> Path:
        aside = self.staging / f"{why}.{path.name}.{os.getpid()}"
        remove_tree(aside)
        os.rename(path, aside)
        return aside

    def install(self, staging: Path, name: str, nar: NarResult) -> Entry:
        """Move a finished tree into store/ under its content address. An entry of that name
        that is intact stays (the new tree is dropped); anything else there is replaced."""
        target = self.store / store_basename(nar.digest, name)
        entry = Entry(target)
        with os_errors("install the entry", self.path):
            make_readonly(staging)
            kind = safefs.kind(target)
            if kind == "dir" and self.intact(entry):
                logger.info("entry %s already present", target.name)
                remove_tree(staging)
                return entry
            aside = self._set_aside(target, "replaced") if kind is not None else None
            os.rename(staging, target)
            safefs.fsync_dir(self.store)
            self.remember(entry, nar)
            if aside is not None:
                remove_tree(aside)
        return entry

    # --- what is known of each entry ------------------------------------------------------

    def _record_path(self, entry: Entry) -> Path:
        return self.entry_records / f"{entry.basename}.json"

    def entry_record(self, entry: Entry) -> dict[str, Any] | None:
        try:
            text = safefs.read_text(self._record_path(entry), 1 << 20)
        except (OSError, ModelPullError):
            return None
        try:
            data = json.loads(text) if text else None
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def remember(self, entry: Entry, nar: NarResult) -> None:
        """The entry as installed: its narHash and the fingerprint that `intact` compares."""
        record = {"narHash": nar.sri, "narSize": nar.size, "fingerprint": fingerprint(entry.path)}
        safefs.write_atomic(self._record_path(entry), json.dumps(record).encode(), 0o600)

    def mark_corrupt(self, entry: Entry, problems: list[str]) -> None:
        """`verify` found `entry` changed: no pull reuses it, no rollback returns to it."""
        record = self.entry_record(entry) or {}
        record.update(corrupt=True, problems=problems[:5])
        record.pop("fingerprint", None)
        with contextlib.suppress(OSError, ModelPullError):
            safefs.write_atomic(self._record_path(entry), json.dumps(record).encode(), 0o600)

    def intact(self, entry: Entry) -> bool | None:
        """True when the entry is as it was installed, False when it changed (or verify found
        it corrupt), None when model-pull has no record of it (an older model-pull made it)."""
        record = self.entry_record(entry)
        if record is None:
            return None
        if record.get("corrupt") or not isinstance(record.get("fingerprint"), str):
            return False
        try:
            return bool(fingerprint(entry.path) == record["fingerprint"])
        except OSError:
            return False

    # --- switching ------------------------------------------------------------------------

    def check_model_link(self, name: str) -> None:
        """models/<name> is a link model-pull made, or nothing: else nothing can be installed."""
        kind = safefs.kind(self.model_link(name))
        if kind not in (None, "link"):
            noun = "a directory" if kind == "dir" else "a file"
            raise ModelPullError(
                ExitCode.UNSAFE_ROOT,
                f"{self.model_link(name)} is {noun}, not the link model-pull makes there",
                hint="move it away; nothing was installed",
            )

    def _set_link(self, link: Path, basename: str) -> None:
        """Point `link` at store/<basename>: a new link made in staging/, renamed over it."""
        tmp = self.staging / f".link.{link.name}.{os.getpid()}"
        safefs.unlink(tmp)
        os.symlink(_LINK_PREFIX + basename, tmp)
        os.rename(tmp, link)
        safefs.fsync_dir(link.parent)

    def add_history(self, name: str, previous: Entry | None, entry: Entry) -> None:
        """Written before the switch: a pull killed after it leaves a line that names the
        current entry, which rollback skips."""
        if previous is not None and previous.basename != entry.basename:
            safefs.append(self.history_dir / name, (previous.basename + "\n").encode())

    def switch(self, name: str, entry: Entry) -> Entry | None:
        """Point models/<name> at entry atomically; returns the entry it pointed at before."""
        self.check_model_link(name)
        previous = self.current(name)
        with os_errors("switch the model link", self.path):
            self.add_history(name, previous, entry)
            self._set_link(self.model_link(name), entry.basename)
        return previous

    def link_by_hash(self, nar_sri: str, entry: Entry) -> Path:
        link = self.pin_link(nar_sri)
        if safefs.kind(link) not in (None, "link"):
            raise ModelPullError(
                ExitCode.UNSAFE_ROOT,
                f"{link} is not the link model-pull makes there",
                hint="move it away",
            )
        with os_errors("link the pinned entry", self.path):
            self._set_link(link, entry.basename)
        return link

    def record(self, event: dict[str, Any]) -> None:
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **event}, sort_keys=True)
        with os_errors("record the pull", self.path):
            safefs.append(self.pulls_log, (line + "\n").encode())

    def records(self) -> list[dict[str, Any]]:
        """state/pulls.jsonl, oldest first; lines that are not JSON objects are skipped."""
        try:
            text = safefs.read_text(self.pulls_log) or ""
        except (OSError, ModelPullError):
            return []
        out: list[dict[str, Any]] = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError, RecursionError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    def record_of(self, entry: Entry) -> dict[str, Any] | None:
        """The newest pulls.jsonl line that installed this very entry (a rollback points back at
        an older entry: its line is older than the newest line of the model)."""
        found = [r for r in self.records() if Path(str(r.get("entry", ""))).name == entry.basename]
        return found[-1] if found else None

    def nar_hash_of(self, entry: Entry) -> str | None:
        record = self.entry_record(entry)
        nar = record.get("narHash") if record else None
        if not isinstance(nar, str):
            rec = self.record_of(entry)
            nar = rec.get("narHash") if rec else None
        return nar if isinstance(nar, str) else None

    # --- reading --------------------------------------------------------------------------

    def current(self, name: str) -> Entry | None:
        """The entry models/<name> points at."""
        return self.entry_at(self.model_link(name))

    def entry_at(self, link: Path) -> Entry | None:
        """The store entry a link under the root points at (None: no link, a dangling one, or
        one model-pull did not make). The link is read, never followed."""
        target = safefs.read_link(link)
        if target is None or not target.startswith(_LINK_PREFIX):
            return None
        basename = target[len(_LINK_PREFIX) :]
        if not _ENTRY_RE.match(basename) or safefs.kind(self.store / basename) != "dir":
            return None
        return Entry(self.store / basename)

    def names(self) -> list[str]:
        if safefs.kind(self.models) != "dir":
            return []
        return sorted(
            p.name
            for p in self.models.iterdir()
            if safefs.kind(p) == "link" and not p.name.startswith(".")
        )

    def entries(self) -> list[Entry]:
        if safefs.kind(self.store) != "dir":
            return []
        return sorted(
            (
                Entry(p)
                for p in self.store.iterdir()
                if _ENTRY_RE.match(p.name) and safefs.kind(p) == "dir"
            ),
            key=lambda e: e.basename,
        )

    def history(self, name: str) -> list[str]:
        try:
            text = safefs.read_text(self.history_dir / name, 1 << 20)
        except (OSError, ModelPullError):
            return []
        return [b for b in (text or "").split() if _ENTRY_RE.match(b)]

    # --- rollback and gc ------------------------------------------------------------------

    def rollback(self, name: str) -> tuple[Entry, Entry]:
        """Point models/<name> back at its previous entry; returns (from, to). An entry that
        changed since it was installed is never rolled back to."""
        from model_pull.verify import trusted

        current = self.current(name)
        if current is None:
            raise ModelPullError(
                ExitCode.NOT_INSTALLED,
                f"no model named {redact.name(name)} in {self.path}",
                hint="see model-pull list",
            )
        history = [
            b
            for b in self.history(name)
            if b != current.basename and safefs.kind(self.store / b) == "dir"
        ]
        if not history:
            raise ModelPullError(
                ExitCode.NOT_INSTALLED,
                f"{name} has no previous entry to roll back to",
                hint="gc may have removed it",
            )
        target = Entry(self.store / history[-1])
        if not trusted(self, target):
            raise ModelPullError(
                ExitCode.VERIFY_FAILED,
                f"the previous entry of {name}, {target.basename}, changed after it was "
                "installed: not rolling back to it",
                hint="fetch its revision again (model-pull list --json shows each entry), which "
                "replaces it",
            )
        with os_errors("switch the model link", self.path):
            self._set_link(self.model_link(name), target.basename)
            # The rolled-back-from entry stays in store/ until gc; history drops its last line.
            safefs.write_atomic(
                self.history_dir / name, "".join(b + "\n" for b in history[:-1]).encode()
            )
        return current, target

    def roots(self) -> dict[str, str]:
        """Every entry gc must keep, with why: a models/ link, a pin (by-hash/), the history.

        Entries are found by basename; links that do not lead into store/ are ignored.
        """
        roots: dict[str, str] = {}
        for where, top in (
            ("history", self.history_dir),
            ("pin", self.by_hash),
            ("models/", self.models),
        ):
            if safefs.kind(top) != "dir":
                continue
            for child in sorted(top.iterdir()):
                if where == "history":
                    for basename in self.history(child.name):
                        roots[basename] = f"in the history of {child.name}"
                elif (entry := self.entry_at(child)) is not None:
                    roots[entry.basename] = (
                        f"{where}{child.name}"
                        if where == "models/"
                        else f"the pin by-hash/{child.name}"
                    )
        return roots

    def forget_history(self, keep: int) -> None:
        """Keep only the last `keep` previous entries of each model in the history."""
        if safefs.kind(self.history_dir) != "dir":
            return
        for hist in self.history_dir.iterdir():
            kept = self.history(hist.name)[-keep:] if keep > 0 else []
            safefs.write_atomic(hist, "".join(b + "\n" for b in kept).encode())

    def gc(self, keep: int | None = None, *, downloads: bool = False) -> list[Path]:
        """Remove the entries nothing reaches (models/, by-hash/, the history), each moved out
        of store/ first, and the cache's names of bytes an entry holds. Downloads (partial or
        complete, not yet in an entry) stay for the next pull unless `downloads`. With `keep`,
        first forget all but the last `keep` previous entries of each model. Returns what was
        removed."""
        removed: list[Path] = []
        with os_errors("collect garbage", self.path):
            if safefs.kind(self.by_hash) == "dir":
                for link in self.by_hash.iterdir():
                    if safefs.kind(link) == "link" and self.entry_at(link) is None:
                        safefs.unlink(link)
            if keep is not None:
                self.forget_history(keep)
            roots = self.roots()
            for entry in self.entries():
                if entry.basename not in roots:
                    aside = self._set_aside(entry.path, "gc")
                    safefs.unlink(self._record_path(entry))
                    remove_tree(aside)
                    removed.append(entry.path)
            if safefs.kind(self.entry_records) == "dir":
                for rec in self.entry_records.iterdir():
                    if safefs.kind(self.store / rec.name.removesuffix(".json")) != "dir":
                        safefs.unlink(rec)
            if safefs.kind(self.cache) == "dir":
                removed += self._gc_cache(downloads)
        return removed

    def _gc_cache(self, downloads: bool) -> list[Path]:
        removed: list[Path] = []
        for child in sorted(self.cache.iterdir()):
            if downloads or safefs.kind(child) != "dir":
                remove_tree(child)
                removed.append(child)
                continue
            for dirpath, _, filenames in os.walk(child):
                for n in filenames:
                    p = Path(dirpath) / n
                    st = os.lstat(p)
                    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:  # an entry holds it
                        safefs.unlink(p)
        return removed


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
