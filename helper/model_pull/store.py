"""The state root: immutable entries, the `models/` links, one lock, gc and rollback.

Nothing becomes visible under `store/` or `models/` except by one `rename`: an entry is built in
`staging/`, hashed, made read-only and renamed into `store/<hash>-<name>`; `models/<name>` is a
relative symlink replaced by renaming a new link over it. A pull killed at any moment leaves at
most garbage in `staging/` (removed by the next pull) and resumable downloads in `cache/`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_pull.datamodel import EntryManifest, RootPaths
from model_pull.errors import ExitCode, ModelPullError
from model_pull.hashing import NarResult, store_basename

logger = logging.getLogger(__name__)


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
                hint="free space (model-pull gc) or use --root elsewhere",
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
    """Remove a (possibly read-only) tree."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for dirpath, dirnames, _ in os.walk(path):
        os.chmod(dirpath, 0o755)
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
    shutil.rmtree(path)


class StateRoot(RootPaths):
    """What model-pull does under one root (the paths: datamodel.RootPaths)."""

    def ensure(self) -> StateRoot:
        with os_errors("create the state directories", self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            # Runtimes read entries through models/ and by-hash/: world-readable, like /nix/store.
            for d, mode in (
                (self.store, 0o755),
                (self.models, 0o755),
                (self.by_hash, 0o755),
                (self.cache, 0o700),
                (self.staging, 0o700),
                (self.state, 0o755),
            ):
                d.mkdir(exist_ok=True)
                os.chmod(d, mode)
        return self

    # --- locking --------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, wait: bool = True) -> Iterator[None]:
        """One pull per root. A second one waits (and says so), or fails with --no-wait."""
        self.ensure()
        lock_path = self.lock_file
        with os_errors("take the pull lock", self.path):
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                if not wait:
                    raise ModelPullError(
                        ExitCode.LOCKED,
                        f"another pull (pid {holder}) holds {lock_path}",
                        hint="wait for it, or run again without --no-wait",
                    ) from None
                print(f"waiting for another pull (pid {holder}) to finish ...", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._clean_staging()
            yield
        finally:
            os.close(fd)

    def _clean_staging(self) -> None:
        """Under the lock, anything in staging/ is debris of an interrupted pull."""
        for child in self.staging.iterdir():
            logger.info("removing debris of an interrupted pull: %s", child)
            remove_tree(child)

    # --- building and installing ----------------------------------------------------------

    def new_staging(self, name: str) -> Path:
        with os_errors("create a staging directory", self.path):
            return Path(tempfile.mkdtemp(prefix=f"{name}.", dir=self.staging))

    def install(self, staging: Path, name: str, nar: NarResult) -> Entry:
        """Move a finished tree into store/ under its content address (idempotent)."""
        target = self.store / store_basename(nar.digest, name)
        with os_errors("install the entry", self.path):
            if target.exists():
                logger.info("entry %s already present", target.name)
                remove_tree(staging)
            else:
                make_readonly(staging)
                os.rename(staging, target)
                _fsync_dir(self.store)
        return Entry(target)

    def switch(self, name: str, entry: Entry) -> Entry | None:
        """Point models/<name> at entry atomically; returns the entry it pointed at before."""
        previous = self.current(name)
        with os_errors("switch the model link", self.path):
            _replace_symlink(self.model_link(name), Path("..") / "store" / entry.basename)
            if previous is not None and previous.basename != entry.basename:
                self.history_dir.mkdir(exist_ok=True)
                with (self.history_dir / name).open("a") as f:
                    f.write(previous.basename + "\n")
        return previous

    def link_by_hash(self, nar_sri: str, entry: Entry) -> Path:
        link = self.pin_link(nar_sri)
        with os_errors("link the pinned entry", self.path):
            _replace_symlink(link, Path("..") / "store" / entry.basename)
        return link

    def record(self, event: dict[str, Any]) -> None:
        with os_errors("record the pull", self.path), self.pulls_log.open("a") as f:
            f.write(
                json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **event}, sort_keys=True)
                + "\n"
            )

    def records(self) -> list[dict[str, Any]]:
        """state/pulls.jsonl, oldest first; lines that are not JSON objects are skipped."""
        try:
            text = self.pulls_log.read_text(encoding="utf-8")
        except OSError:
            return []
        out: list[dict[str, Any]] = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
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
        rec = self.record_of(entry)
        nar = rec.get("narHash") if rec else None
        return nar if isinstance(nar, str) else None

    # --- reading --------------------------------------------------------------------------

    def current(self, name: str) -> Entry | None:
        """The entry models/<name> points at."""
        return self.entry_at(self.model_link(name))

    def entry_at(self, link: Path) -> Entry | None:
        """The store entry a link under the root points at (None: no link, or dangling)."""
        if not link.is_symlink():
            return None
        target = (link.parent / os.readlink(link)).resolve()
        return Entry(target) if target.is_dir() and target.parent == self.store.resolve() else None

    def names(self) -> list[str]:
        if not self.models.is_dir():
            return []
        return sorted(p.name for p in self.models.iterdir() if p.is_symlink())

    def entries(self) -> list[Entry]:
        if not self.store.is_dir():
            return []
        return sorted(
            (Entry(p) for p in self.store.iterdir() if p.is_dir()), key=lambda e: e.basename
        )

    def history(self, name: str) -> list[str]:
        hist = self.history_dir / name
        return hist.read_text().split() if hist.exists() else []

    # --- rollback and gc ------------------------------------------------------------------

    def rollback(self, name: str) -> tuple[Entry, Entry]:
        """Point models/<name> back at its previous entry; returns (from, to)."""
        current = self.current(name)
        if current is None:
            raise ModelPullError(
                ExitCode.NOT_INSTALLED,
                f"no model named {name!r} in {self.path}",
                hint="see model-pull list",
            )
        history = [b for b in self.history(name) if (self.store / b).is_dir()]
        if not history:
            raise ModelPullError(
                ExitCode.NOT_INSTALLED,
                f"{name} has no previous entry to roll back to",
                hint="gc may have removed it",
            )
        target = Entry(self.store / history[-1])
        with os_errors("switch the model link", self.path):
            _replace_symlink(self.model_link(name), Path("..") / "store" / target.basename)
            # The rolled-back-from entry stays in store/ until gc; history drops its last line.
            (self.history_dir / name).write_text("".join(b + "\n" for b in history[:-1]))
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
            if not top.is_dir():
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
        if not self.history_dir.is_dir():
            return
        for hist in self.history_dir.iterdir():
            kept = self.history(hist.name)[-keep:] if keep > 0 else []
            hist.write_text("".join(b + "\n" for b in kept))

    def gc(self, keep: int | None = None) -> list[Path]:
        """Remove the entries nothing reaches (models/, by-hash/, the history), and download
        debris. With `keep`, first forget all but the last `keep` previous entries of each
        model. Returns what was removed."""
        removed: list[Path] = []
        with os_errors("collect garbage", self.path):
            if self.by_hash.is_dir():
                for link in self.by_hash.iterdir():
                    if link.is_symlink() and not link.exists():
                        link.unlink()
            if keep is not None:
                self.forget_history(keep)
            roots = self.roots()
            for entry in self.entries():
                if entry.basename not in roots:
                    remove_tree(entry.path)
                    removed.append(entry.path)
            if self.cache.is_dir():
                for child in self.cache.iterdir():
                    remove_tree(child)
                    removed.append(child)
        return removed


def _replace_symlink(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.rename(tmp, link)
    _fsync_dir(link.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
