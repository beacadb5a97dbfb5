"""File operations under the state root that never follow a link model-pull did not make.

model-pull runs as root and writes where other services can look. A symbolic link planted at
`staging/`, `cache/`, `pull.lock` or a `.incomplete` file must not make it empty, truncate or
write a file elsewhere. So:

- the root, its ancestors and every directory model-pull keeps in it must be real directories
  owned by root (or by the user running model-pull) that nobody else can write (`check_dir`,
  `check_root`); anything else is refused in one line (`ExitCode.UNSAFE_ROOT`);
- files are opened with O_NOFOLLOW and must be regular files (`open_file`); names are replaced
  by `rename`, which replaces a link rather than following it (`write_atomic`);
- links are read as text, never resolved (`read_link`).

With those checks only root can have put anything there; a link found where model-pull makes
none is still refused, in case root was tricked into making it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from model_pull import redact
from model_pull.errors import ExitCode, ModelPullError

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def _owners() -> set[int]:
    return {0, os.geteuid()}


def _unsafe(path: Path, why: str) -> ModelPullError:
    return ModelPullError(
        ExitCode.UNSAFE_ROOT,
        f"refusing {redact.name(str(path), 300)}: {why}",
        hint="model-pull runs as root and must not write through it: fix or remove it, "
        "or use another --root",
    )


def _check_stat(path: Path, st: os.stat_result, *, kind: str) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise _unsafe(path, "it is a symbolic link, which model-pull never makes there")
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        raise _unsafe(path, "it is not a directory")
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        raise _unsafe(path, "it is not a regular file")
    if st.st_uid not in _owners():
        raise _unsafe(path, f"it is owned by uid {st.st_uid}, not by root")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _unsafe(path, "others can write it (chmod go-w)")


def check_dir(path: Path) -> None:
    """`path` is a real directory, owned by root (or us), that nobody else can write."""
    _check_stat(path, os.lstat(path), kind="dir")


def ensure_dir(path: Path, mode: int) -> None:
    """Make `path` (one level) with `mode`, or check the one that is there."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    check_dir(path)  # a real directory: chmod cannot reach through a link
    if stat.S_IMODE(os.lstat(path).st_mode) != mode:
        os.chmod(path, mode)


def check_root(path: Path) -> None:
    """The state root and every directory above it: nobody but root (or us) can change them.

    An ancestor others may write is fine when it is sticky (like /tmp): they cannot rename
    what they do not own there. The root itself may be a link that root made (to another
    disk); the directory it leads to is checked."""
    if not path.is_absolute():
        raise _unsafe(path, "it is not an absolute path")
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) and st.st_uid not in _owners():
        raise _unsafe(path, f"it is a link owned by uid {st.st_uid}, not by root")
    real = Path(os.path.realpath(path))
    check_dir(real)
    for parent in [*reversed(real.parents), real]:
        st = os.stat(parent)
        if st.st_uid not in _owners():
            raise _unsafe(parent, f"it is owned by uid {st.st_uid}, not by root")
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and not (st.st_mode & stat.S_ISVTX and parent != real):
            raise _unsafe(parent, "others can write it (chmod go-w)")


def open_file(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a link and anything but a regular file owned by root (or us)."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe(path, "it is a symbolic link, which model-pull never makes there") from (
                exc
            )
        raise
    try:
        _check_stat(path, os.fstat(fd), kind="file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file (FileNotFoundError when there is none)."""
    fd = open_file(path, os.O_RDONLY)
    try:
        chunks = []
        got = 0
        while got < limit and (chunk := os.read(fd, min(1 << 20, limit - got))):
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: Path, limit: int = 64 << 20) -> str | None:
    """A state file's text, or None when it does not exist."""
    try:
        return read_bytes(path, limit).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None


def append(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = open_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` by a file holding `data`: a new file in the same directory, renamed over
    it (a link there is replaced, never followed)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def kind(path: Path) -> str | None:
    """'link', 'dir', 'file', 'other', or None when nothing is there (never follows)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def read_link(path: Path) -> str | None:
    """The text of the link at `path`, or None when it is not a link."""
    try:
        return os.readlink(path)
    except (FileNotFoundError, OSError):
        return None


def unlink(path: Path) -> None:
    """Remove a file or link (never what a link points at); nothing there is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
