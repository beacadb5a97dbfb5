"""tests/nix/golden.json is current: the hash of what it is computed from (every file under
nixos/ and hosts/, and tests/nix/*.nix), which tests/nix/eval.nix stores in it as
inputs.sha256, equals the hash of those files now. Needs neither Nix nor nixpkgs' lib, so it
runs everywhere; `make update-golden` rewrites the file and the hash together."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests/nix/golden.json"


def golden_inputs(root: Path = ROOT) -> list[str]:
    """The files eval.nix reads (its `inputsHash`), relative to the repository, sorted."""
    files = [
        p.relative_to(root).as_posix()
        for top in ("nixos", "hosts")
        for p in (root / top).rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    files += [p.relative_to(root).as_posix() for p in (root / "tests/nix").glob("*.nix")]
    return sorted(files)


def inputs_hash(root: Path = ROOT) -> str:
    """eval.nix's inputsHash: sha256 over "<path>\\n<sha256 of its bytes>\\n" for each file."""
    text = "".join(
        f"{p}\n{hashlib.sha256((root / p).read_bytes()).hexdigest()}\n" for p in golden_inputs(root)
    )
    return hashlib.sha256(text.encode()).hexdigest()


def test_golden_is_current_for_the_modules_and_hosts() -> None:
    stored = json.loads(GOLDEN.read_text())["inputs"]["sha256"]
    assert stored == inputs_hash(), (
        "tests/nix/golden.json is stale for the current nixos/, hosts/ and tests/nix/*.nix: "
        "run `make update-golden NIXPKGS_LIB=...` (NIXPKGS_LIB: a checkout of nixpkgs' lib)"
    )


def test_the_hash_covers_every_module_and_host(tmp_path: Path) -> None:
    names = golden_inputs()
    assert {
        "nixos/common.nix",
        "nixos/triton-assemble.sh",
        "hosts/l4-box.nix",
        "tests/nix/stubs.nix",
        "tests/nix/eval.nix",
    } <= set(names)
    assert "tests/nix/golden.json" not in names
    # A one-byte change anywhere in the inputs changes the hash.
    for rel in ("nixos/common.nix", "hosts/l4-box.nix"):
        copy = tmp_path / rel.replace("/", "_")
        for p in golden_inputs():
            (copy / p).parent.mkdir(parents=True, exist_ok=True)
            (copy / p).write_bytes((ROOT / p).read_bytes())
        before = inputs_hash(copy)
        with (copy / rel).open("a") as f:
            f.write(" ")
        assert inputs_hash(copy) != before, rel
