"""The real Nix: import an entry into a Nix store and register a GC root (`--store nix`).

One function per command, through `process.run`. `store_uri` selects another store, e.g. a chroot
store directory (`nix-store --store DIR`), which is how the tests use it without a daemon.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from model_pull import process
from model_pull.errors import ExitCode, ModelPullError
from model_pull.store import Entry


def _store_args(store_uri: str | None) -> list[str]:
    return ["--store", store_uri] if store_uri else []


def add_entry(entry: Entry, *, store_uri: str | None, gc_root: Path) -> str:
    """`nix-store --add` the entry under its own name; returns the store path.

    The entry directory is called `<hash>-<name>`; Nix names an added path after its basename, so
    a hardlinked view named `<name>` is added (no bytes are copied here).
    """
    if process.which("nix-store") is None:
        raise ModelPullError(
            ExitCode.NIX, "nix-store is not installed", hint="install Nix, or drop --store nix"
        )
    with tempfile.TemporaryDirectory(dir=entry.path.parent.parent / "staging") as tmp:
        view = Path(tmp) / entry.name
        _link_tree(entry.path, view)
        out = process.run(
            ["nix-store", *_store_args(store_uri), "--add", str(view)],
            check=True,
            error_code=ExitCode.NIX,
        )
    store_path = out.stdout.strip().splitlines()[-1]
    if Path(store_path).name != entry.basename:
        raise ModelPullError(
            ExitCode.NIX,
            f"Nix named the entry {store_path}, expected {entry.basename}",
            hint="report this: the NAR hashes disagree",
        )
    gc_root.parent.mkdir(parents=True, exist_ok=True)
    process.run(
        [
            "nix-store",
            *_store_args(store_uri),
            "--realise",
            store_path,
            "--add-root",
            str(gc_root),
            "--indirect",
        ],
        check=True,
        error_code=ExitCode.NIX,
    )
    return store_path


def _link_tree(src: Path, dst: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in dirnames + filenames:
            s = Path(dirpath) / name
            d = dst / rel / name
            if s.is_symlink():
                d.symlink_to(s.readlink())
            elif s.is_file():
                os.link(s, d)
