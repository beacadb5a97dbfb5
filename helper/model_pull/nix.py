"""The real Nix: import an entry into a Nix store and register a GC root (`--store nix`); copy,
check and sign paths of binary caches (`push`, substitution).

One function per command, through `process.run`. `store_uri` selects another store, e.g. a chroot
store directory (`nix-store --store DIR`), which is how the tests use it without a daemon.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


# --- binary caches (model-pull push, substitution) ------------------------------------------

# `nix copy`, `nix path-info` and `nix store sign` are in the nix-command feature (Nix >= 2.4).
NIX = ("nix", "--extra-experimental-features", "nix-command")


def require(program: str = "nix") -> None:
    if process.which(program) is None:
        raise ModelPullError(
            ExitCode.NIX,
            f"{program} is not installed: binary caches are read and written by Nix",
            hint="install Nix (nixos: it is there; Debian: apt-get install nix-bin)",
        )


def copy_path(
    path: str,
    *,
    src: str,
    dst: str,
    settings: Mapping[str, str],
    env: Mapping[str, str],
) -> process.Result:
    """`nix copy --from SRC --to DST PATH` with `--option` settings; the caller reads the
    result (`failure_reason`)."""
    options = [a for k, v in settings.items() for a in ("--option", k, v)]
    return process.run(
        [*NIX, "copy", "--from", src, "--to", dst, *options, path],
        check=False,
        env=env,
    )


def is_valid(store: str, path: str, env: Mapping[str, str]) -> bool:
    """Nix registered `path` as valid in `store` (not merely present on disk: a failed
    substitution can leave an unregistered tree behind)."""
    return (
        process.run(
            ["nix-store", "--store", store, "--check-validity", path], check=False, env=env
        ).returncode
        == 0
    )


def path_info(store: str, path: str, env: Mapping[str, str]) -> dict[str, Any]:
    """`nix path-info --json` of a valid path: narHash (SRI), narSize, ca, signatures."""
    out = process.run(
        [*NIX, "path-info", "--store", store, "--json", path],
        check=True,
        env=env,
        error_code=ExitCode.NIX,
    )
    try:
        (info,) = json.loads(out.stdout)
    except ValueError as exc:
        raise ModelPullError(
            ExitCode.NIX, f"nix path-info printed no single path for {path}", hint=str(exc)
        ) from exc
    if not isinstance(info, dict):
        raise ModelPullError(ExitCode.NIX, f"nix path-info printed {info!r} for {path}")
    return info


def sign(store: str, key_file: Path, path: str) -> None:
    """Add this key's signature to `path` in `store` (a binary cache rewrites its narinfo)."""
    process.run(
        [*NIX, "store", "sign", "--store", store, "--key-file", str(key_file), path],
        check=True,
        error_code=ExitCode.NIX,
    )


def failure_reason(result: process.Result) -> str:
    """One line from what Nix printed when it failed: its last `error:` (with the lines that
    belong to it), without Nix's own prefix and its unrelated warnings."""
    lines = [
        line.strip()
        for line in result.stderr.splitlines()
        if line.strip() and "build-users-group" not in line
    ]
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    if not starts:
        return lines[-1] if lines else f"exit code {result.returncode}"
    text = " ".join(lines[starts[-1] :]).removeprefix("error:").strip()
    return " ".join(text.split())
