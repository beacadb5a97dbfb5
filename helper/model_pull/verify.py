"""Re-check installed entries: the content address in the name must still match every byte.

One read per entry: the NAR hash (against the entry's `<hash>-<name>` basename) and each file's
sha256 (against the entry manifest, to name the file that changed). An entry found corrupt is
marked so in the state root: no pull reuses it (the next one replaces it) and no rollback
returns to it. `trusted` is what a pull and a rollback ask before using an entry again.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field

from model_pull.errors import ExitCode, ModelPullError
from model_pull.hashing import Hasher, NarResult, UnsupportedFileError, nar_hash, store_basename
from model_pull.output import VerifiedJson
from model_pull.store import Entry, StateRoot


@dataclass(frozen=True)
class Verified:
    name: str
    entry: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    nar: NarResult | None = None

    def to_json(self) -> VerifiedJson:
        return {"name": self.name, "entry": self.entry, "ok": self.ok, "problems": self.problems}


def verify_entry(name: str, entry: Entry) -> Verified:
    problems: list[str] = []
    try:
        m = entry.manifest()
    except (OSError, ValueError) as exc:
        return Verified(name, str(entry.path), False, [f"unreadable entry manifest: {exc}"])
    expected = {m.spec.file_path(f["path"]): f for f in m.files if "patched" not in f}
    seen: dict[str, hashlib._Hash] = {}

    def on_file(rel: str, size: int) -> list[Hasher]:
        if rel not in expected:
            return []
        if size != expected[rel]["size"]:
            problems.append(
                f"{expected[rel]['path']}: size {size}, expected {expected[rel]['size']}"
            )
        seen[rel] = hashlib.sha256()
        return [seen[rel]]

    try:
        nar = nar_hash(entry.path, on_file)
    except (OSError, UnsupportedFileError) as exc:
        return Verified(name, str(entry.path), False, [f"cannot be read: {exc}"])
    for rel, f in sorted(expected.items()):
        if rel not in seen:
            problems.append(f"{f['path']}: missing")
        elif seen[rel].hexdigest() != f["sha256"]:
            problems.append(f"{f['path']}: sha256 {seen[rel].hexdigest()}, expected {f['sha256']}")
    if store_basename(nar.digest, entry.name) != entry.basename:
        problems.append(f"content hash {nar.sri} does not match the entry's name")
    return Verified(name, str(entry.path), not problems, problems, nar)


def verify_entries(root: StateRoot, names: list[str]) -> list[Verified]:
    names = names or root.names()
    results = []
    for name in names:
        entry = root.current(name)
        if entry is None:
            raise ModelPullError(
                ExitCode.NOT_INSTALLED,
                f"no model named {name!r} in {root.path}",
                hint="see model-pull list",
            )
        result = verify_entry(name, entry)
        if not result.ok:
            root.mark_corrupt(entry, result.problems)
        results.append(result)
    return results


def trusted(root: StateRoot, entry: Entry) -> bool:
    """Whether `entry` may be used again: as installed (its fingerprint), or, for an entry no
    record describes (made by an older model-pull), every byte re-hashed and found right."""
    intact = root.intact(entry)
    if intact is not None:
        return intact
    result = verify_entry(entry.name, entry)
    if not result.ok or result.nar is None:
        root.mark_corrupt(entry, result.problems)
        return False
    with contextlib.suppress(OSError):  # a read-only root: trusted now, checked again next time
        root.remember(entry, result.nar)
    return True
