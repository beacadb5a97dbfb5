"""A state root someone tampered with: planted links, foreign owners, a directory where a link
belongs, a changed entry. model-pull (root) never writes through a link it did not make, refuses
in one line, and never reuses or rolls back to an entry that changed.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from model_pull.tinymodels import tiny_llama_files

if TYPE_CHECKING:
    from conftest import ModelPull

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plants root-owned files: needs root")


def one_line(p: Any, code: int) -> str:
    assert p.returncode == code, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return str(lines[0])


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory outside the root, with a file a root process must never touch."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "precious").write_text("do not truncate\n")
    (d / "precious").chmod(0o600)
    return d


def untouched(victim: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["precious"]
    assert (victim / "precious").read_text() == "do not truncate\n"
    assert stat.S_IMODE((victim / "precious").stat().st_mode) == 0o600


def installed(model_pull: ModelPull, root: Path, repo: str) -> dict[str, Any]:
    out: dict[str, Any] = model_pull.json("fetch", repo, "--root", str(root), "--gpu", "L4")
    return out


# The places a link was planted at, each pointing outside the root; `slug` is the cache
# directory of the repo, `etag` the blob the next pull writes.
PLANTS = {
    "staging": lambda root, v, slug, etag: (root / "staging", v),
    "cache": lambda root, v, slug, etag: (root / "cache", v),
    "store": lambda root, v, slug, etag: (root / "store", v),
    "models": lambda root, v, slug, etag: (root / "models", v),
    "by-hash": lambda root, v, slug, etag: (root / "by-hash", v),
    "state": lambda root, v, slug, etag: (root / "state", v),
    "history": lambda root, v, slug, etag: (root / "state" / "history", v),
    "entries": lambda root, v, slug, etag: (root / "state" / "entries", v),
    "pull.lock": lambda root, v, slug, etag: (root / "pull.lock", v / "precious"),
    "cache dir": lambda root, v, slug, etag: (root / "cache" / slug, v),
    ".incomplete": lambda root, v, slug, etag: (
        root / "cache" / slug / f"{etag}.incomplete",
        v / "precious",
    ),
    "pulls.jsonl": lambda root, v, slug, etag: (root / "state" / "pulls.jsonl", v / "precious"),
}


# gc removes what is in cache/ (a link too: unlinked, never followed) and never reads the log.
GC_REMOVES = {"cache dir", ".incomplete", "pulls.jsonl"}


@pytest.mark.parametrize("where", sorted(PLANTS))
@pytest.mark.parametrize("command", ["fetch", "gc"])
def test_a_planted_link_is_never_followed(
    model_pull, new_repo, devhub, tmp_path, victim, where, command
):
    files = tiny_llama_files(seed=31)
    repo = new_repo(files)
    root = tmp_path / "root"
    installed(model_pull, root, repo.repo)  # a root with an entry, a cache, history...
    devhub.hub.add_repo(repo.repo, dict(files, **{"README.md": b"v2\n"}))  # a new commit
    slug = "models--" + repo.repo.replace("/", "--")
    etag = next(f.sha256 for f in devhub.hub.get_repo(repo.repo).commits[repo.commit] if f.lfs)
    (root / "cache" / slug).mkdir(parents=True, exist_ok=True)
    link, target = PLANTS[where](root, victim, slug, etag)
    if link.is_dir() and not link.is_symlink():
        os.rename(link, link.with_name(link.name + ".moved"))
    elif link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(target)
    args = ["fetch", repo.repo, "--gpu", "L4"] if command == "fetch" else ["gc", "--downloads"]
    p = model_pull.run(*args, "--root", str(root))
    if command == "gc" and where in GC_REMOVES:
        assert p.returncode == 0, p.stderr  # gc removes the link itself, and only the link
    else:
        line = one_line(p, 27)
        assert "symbolic link" in line and str(link.name) in line
    untouched(victim)


@pytest.mark.parametrize(
    "how",
    ["root owned by another user", "root writable by others", "models/ writable by others"],
)
@pytest.mark.parametrize("given", ["--root", "MODEL_PULL_ROOT"])
def test_a_root_others_can_change_is_refused(model_pull, tmp_path, how, given):
    root = tmp_path / "root"
    root.mkdir()
    if how == "root owned by another user":
        os.chown(root, 1000, 1000)
    elif how == "root writable by others":
        root.chmod(0o777)
    else:
        (root / "models").mkdir()
        (root / "models").chmod(0o777)
    args = ["fetch", "tiny-org/tiny-llama", "--gpu", "L4"]
    if given == "--root":
        p = model_pull.run(*args, "--root", str(root))
    else:
        p = model_pull.run(*args, env={"MODEL_PULL_ROOT": str(root)})
    assert "refusing" in one_line(p, 27)
    assert not (root / "store").exists() and not (root / "cache").exists()


def test_the_root_may_be_a_link_root_made(model_pull, tmp_path, hub_repos):
    real = tmp_path / "disk" / "inference"
    real.mkdir(parents=True)
    (tmp_path / "inference").symlink_to(real)
    installed(model_pull, tmp_path / "inference", hub_repos.tiny_gguf.repo)
    assert (real / "models" / "tiny-gguf").is_symlink()


def test_a_directory_at_models_name_installs_nothing(model_pull, devhub, hub_repos, tmp_path):
    root = tmp_path / "root"
    (root / "models" / "tiny-llama").mkdir(parents=True)
    (root / "models" / "tiny-llama" / "mine").write_text("keep\n")
    devhub.hub.reset_counters()
    p = model_pull.run("fetch", hub_repos.tiny_llama.repo, "--root", str(root), "--gpu", "L4")
    assert "models/tiny-llama" in one_line(p, 27)
    assert (root / "models" / "tiny-llama" / "mine").read_text() == "keep\n"
    assert not (root / "store").exists() or not list((root / "store").iterdir())
    assert devhub.hub.requests(hub_repos.tiny_llama.repo) == []  # refused before a request


def test_package_refuses_a_link_out_of_the_source(model_pull, tmp_path, victim):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "tokenizer.json").symlink_to(victim / "precious")
    root = tmp_path / "root"
    p = model_pull.run(
        "package", str(src), "--repo", "org/m", "--revision", "a" * 40, "--root", str(root)
    )
    assert "outside" in one_line(p, 25)
    assert not (root / "store").exists() or not list((root / "store").iterdir())
    # a link inside the source directory is fine
    (src / "tokenizer.json").unlink()
    (src / "tokenizer.json").symlink_to("config.json")
    model_pull.ok(
        "package", str(src), "--repo", "org/m", "--revision", "a" * 40, "--root", str(root)
    )


def tamper(entry: Path) -> Path:
    """Make a file of the entry writable and change one byte (and leave it writable)."""
    victim = next(p for p in sorted(entry.rglob("config.json")) if p.is_file())
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.write_bytes(bytes(data))
    return victim


@pytest.mark.parametrize("verify_first", [True, False])
def test_a_tampered_entry_is_never_reused(model_pull, new_repo, tmp_path, verify_first):
    repo = new_repo(tiny_llama_files(seed=32))
    root = tmp_path / "root"
    first = installed(model_pull, root, repo.repo)
    tamper(Path(first["path"]))
    if verify_first:
        p = model_pull.run("verify", "--root", str(root))
        line = one_line(p, 21)
        assert "pull again" in line  # ... and that hint must be true:
    again = installed(model_pull, root, repo.repo)
    assert again["changed"] is False or again["path"] == first["path"]
    assert model_pull.json("verify", "--root", str(root))["entries"][0]["ok"] is True
    assert again["narHash"] == first["narHash"]


def test_a_tampered_entry_is_never_rolled_back_to(model_pull, new_repo, devhub, tmp_path):
    files = tiny_llama_files(seed=33)
    repo = new_repo(files)
    root = tmp_path / "root"
    first = installed(model_pull, root, repo.repo)
    devhub.hub.add_repo(repo.repo, dict(files, **{"README.md": b"v2\n"}))
    installed(model_pull, root, repo.repo)
    tamper(Path(first["path"]))
    p = model_pull.run("rollback", repo.repo.split("/")[1], "--root", str(root))
    assert "changed after it was installed" in one_line(p, 21)
    assert json.loads(model_pull.run("list", "--root", str(root), "--json").stdout)["models"]
