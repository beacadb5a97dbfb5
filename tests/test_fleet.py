"""A fleet: one machine pulls from the Hub and pushes into a Nix binary cache, the others
substitute the entry from it, verified by the real Nix, before they ask the Hub.

Real parts: the loopback Hub (conftest), Debian's Nix 2.8 (`nix copy`, `nix-store`, `nix store
sign`), a static HTTP server on loopback over the pushed `file://` directory (cache_server.py),
and `model-pull` as a user runs it. The units starting on a substituted entry, in real systemd:
tests/systemd/test_fleet_node.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cache_server import HangingServer, StaticCache
from model_pull.binary_cache import content_address, parse_narinfo, store_path
from model_pull.datamodel import by_hash_name
from model_pull.hashing import nix32

if TYPE_CHECKING:
    from conftest import HubRepos, ModelPull

pytestmark = pytest.mark.skipif(
    shutil.which("nix") is None or shutil.which("nix-store") is None, reason="nix-bin not installed"
)

NAME = "chat"  # the model name the fleet declares (services.inference.models.chat)
DEAD_HUB = "http://127.0.0.1:9"  # nothing listens: a consumer that asks the Hub fails
NIX = ("nix", "--extra-experimental-features", "nix-command")


@dataclass(frozen=True)
class Pulled:
    root: Path  # the puller's state root
    repo: str
    commit: str
    nar: str  # the entry's narHash: the pin the fleet declares
    entry: Path

    @property
    def path(self) -> str:
        return store_path(self.nar, NAME)


@pytest.fixture
def pulled(model_pull: ModelPull, hub_repos: HubRepos, tmp_path: Path) -> Pulled:
    """The puller: tiny-org/tiny-gguf (tiny.gguf, gguf layout) fetched from the Hub as `chat`."""
    gguf = hub_repos.tiny_gguf
    root = tmp_path / "puller"
    info = model_pull.json(
        "fetch",
        gguf.repo,
        "--revision",
        gguf.commit,
        "--layout",
        "gguf",
        "--include",
        "tiny.gguf",
        "--name",
        NAME,
        "--root",
        str(root),
    )
    return Pulled(root, gguf.repo, gguf.commit, info["narHash"], Path(info["path"]))


def push(model_pull: ModelPull, pulled: Pulled, to: str, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = model_pull.json(
        "push", NAME, "--to", to, "--root", str(pulled.root), *args
    )
    return out


def declare(
    tmp_path: Path,
    pulled: Pulled,
    caches: dict[str, Any] | None,
    *,
    name: str = NAME,
    nar: str | None = "pinned",
    include: tuple[str, ...] = ("tiny.gguf",),
) -> Path:
    """A consumer's /etc/inference/models.json: the model pinned, the fleet's caches."""
    path = tmp_path / f"models-{len(list(tmp_path.glob('models-*.json')))}.json"
    data: dict[str, Any] = {
        "version": 1,
        "root": str(tmp_path / "consumer"),
        "models": {
            name: {
                "repo": pulled.repo,
                "revision": pulled.commit,
                "include": list(include),
                "exclude": [],
                "layout": "gguf",
                "tritonName": None,
                "narHash": pulled.nar if nar == "pinned" else nar,
                "engineDefaults": {},
                "patchTokenizer": False,
                "units": [],
            }
        },
        "units": {},
    }
    if caches is not None:
        data["caches"] = caches
    path.write_text(json.dumps(data))
    return path


def consume(
    model_pull: ModelPull, manifest: Path, *, hub: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The bare `model-pull` of a consumer (no restarts: no units here)."""
    env = {"MODEL_PULL_MANIFEST": str(manifest)}
    if hub is not None:
        env["HF_ENDPOINT"] = hub
    return model_pull.run("--no-restart", env=env)


def records(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / "state/pulls.jsonl").read_text().splitlines()]


def nothing_half_made(root: Path) -> None:
    """staging/ is empty, and store/ holds only whole entries (each named by its content)."""
    assert list((root / "staging").iterdir()) == []
    for entry in (root / "store").iterdir():
        info = subprocess.run(
            [*NIX, "hash", "path", str(entry)], capture_output=True, text=True, check=True
        )
        assert Path(store_path(info.stdout.strip(), entry.name.split("-", 1)[1])).name == entry.name


def cache_lines(stderr: str, url: str) -> list[str]:
    return [line for line in stderr.splitlines() if url in line]


# --- the format, against the real Nix ----------------------------------------------------------


def test_the_store_path_is_the_one_nix_computes_from_name_and_nar_hash(pulled: Pulled):
    printed = subprocess.run(
        [
            "nix-store",
            "--store",
            "dummy://",
            "--print-fixed-path",
            "--recursive",
            "sha256",
            pulled.nar,
            NAME,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert printed == pulled.path == f"/nix/store/{pulled.entry.name}"


def test_push_writes_exactly_what_nix_copy_writes(model_pull, pulled: Pulled, tmp_path: Path):
    ours = tmp_path / "ours"
    pushed = push(model_pull, pulled, f"file://{ours}")
    assert pushed == {
        "to": f"file://{ours}",
        "storePath": pulled.path,
        "narHash": pulled.nar,
        "narSize": pushed["narSize"],
        "written": True,
        "signed": False,
    }
    # Nix's own: the entry added to a chroot store under its name, then nix copy --to file://.
    view = tmp_path / "view" / NAME
    shutil.copytree(pulled.entry, view, symlinks=True)
    chroot = tmp_path / "chroot"
    added = subprocess.run(
        ["nix-store", "--store", str(chroot), "--add", str(view)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert added == pulled.path
    theirs = tmp_path / "theirs"
    subprocess.run(
        [
            *NIX,
            "copy",
            *("--store", str(chroot), "--to", f"file://{theirs}?compression=none", added),
        ],
        capture_output=True,
        check=True,
    )
    hash_part = Path(added).name[:32]
    assert (ours / f"{hash_part}.narinfo").read_text() == (
        theirs / f"{hash_part}.narinfo"
    ).read_text()
    (nar,) = (theirs / "nar").iterdir()
    assert (ours / "nar" / nar.name).read_bytes() == nar.read_bytes()
    assert (ours / "nix-cache-info").read_text() == (theirs / "nix-cache-info").read_text()
    assert [p.name for p in (ours / "nar").iterdir()] == [nar.name]  # no temporary left
    # Pushing again writes nothing.
    assert push(model_pull, pulled, f"file://{ours}")["written"] is False


# --- push, then substitute ---------------------------------------------------------------------


def test_a_consumer_substitutes_the_pushed_entry_without_the_hub(
    model_pull, pulled: Pulled, tmp_path: Path
):
    push(model_pull, pulled, f"file://{tmp_path / 'cache'}")
    cache = StaticCache(tmp_path / "cache")
    try:
        substituted_then_reused(model_pull, pulled, tmp_path, cache)
    finally:
        cache.close()


def substituted_then_reused(
    model_pull: ModelPull, pulled: Pulled, tmp_path: Path, cache: StaticCache
) -> None:
    p = consume(model_pull, declare(tmp_path, pulled, {"urls": [cache.url]}), hub=DEAD_HUB)
    assert p.returncode == 0, p.stderr
    assert f"/{pulled.entry.name[:32]}.narinfo" in cache.requests
    assert f"{NAME}: substituted {pulled.path} from {cache.url}" in p.stdout
    assert f"{NAME}: installed {pulled.entry.name}" in p.stdout
    consumer = tmp_path / "consumer"
    gate = consumer / "by-hash" / by_hash_name(pulled.nar)
    assert gate.resolve() == (consumer / "store" / pulled.entry.name)
    assert (consumer / "models" / NAME).resolve() == gate.resolve()
    assert (gate / "share/models/gguf/tiny.gguf").read_bytes() == (
        pulled.entry / "share/models/gguf/tiny.gguf"
    ).read_bytes()
    assert records(consumer)[-1]["source"] == cache.url
    assert records(consumer)[-1]["narHash"] == pulled.nar
    verified = model_pull.json("verify", "--root", str(consumer))
    assert verified == {
        "entries": [{"name": NAME, "entry": str(gate.resolve()), "ok": True, "problems": []}]
    }
    mode = stat.S_IMODE((gate / "share/models/gguf/tiny.gguf").stat().st_mode)
    assert mode == 0o444
    nothing_half_made(consumer)
    # Nothing to do the second time: no cache asked, no Hub.
    cache_requests = len(cache.requests)
    again = consume(model_pull, declare(tmp_path, pulled, {"urls": [cache.url]}), hub=DEAD_HUB)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{NAME}: up to date"
    assert len(cache.requests) == cache_requests
    # The gate gone (a pin switched away and back): the entry in store/ is linked again,
    # without a cache or the Hub.
    (consumer / "models" / NAME).unlink()
    gate.unlink()
    back = consume(model_pull, declare(tmp_path, pulled, {"urls": [cache.url]}), hub=DEAD_HUB)
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == f"{NAME}: installed {pulled.entry.name}"
    assert len(cache.requests) == cache_requests
    assert gate.resolve() == consumer / "store" / pulled.entry.name


def test_fetch_substitutes_into_a_chroot_nix_store_with_store_nix(
    model_pull, pulled: Pulled, tmp_path: Path
):
    push(model_pull, pulled, f"file://{tmp_path / 'cache'}")
    root, chroot = tmp_path / "consumer", tmp_path / "chroot"
    with StaticCache(tmp_path / "cache") as cache:
        info = model_pull.json(
            "fetch",
            pulled.repo,
            "--layout",
            "gguf",
            "--include",
            "tiny.gguf",
            "--name",
            NAME,
            "--nar-hash",
            pulled.nar,
            "--cache",
            cache.url,
            "--store",
            "nix",
            "--nix-store",
            str(chroot),
            "--root",
            str(root),
            env={"HF_ENDPOINT": DEAD_HUB},
        )
    assert info["nixStorePath"] == pulled.path
    assert info["path"] == str(root / "store" / pulled.entry.name)
    valid = subprocess.run(
        ["nix-store", "--store", str(chroot), "--check-validity", pulled.path], capture_output=True
    )
    assert valid.returncode == 0
    assert os.readlink(root / "gcroots" / NAME) == pulled.path
    nothing_half_made(root)


def test_a_substituted_entry_passes_the_gpu_check_the_hub_pull_would(
    model_pull, pulled: Pulled, tmp_path: Path
):
    """A cache's bytes skip the Hub, not the GPU check: on a GPU the model does not fit, the
    substituted entry is refused with the Hub pull's exit code, and nothing is installed."""
    push(model_pull, pulled, f"file://{tmp_path / 'cache'}")
    root = tmp_path / "consumer"
    args = ["fetch", pulled.repo, "--layout", "gguf", "--include", "tiny.gguf", "--name", NAME]
    args += ["--nar-hash", pulled.nar, "--root", str(root)]
    with StaticCache(tmp_path / "cache") as cache:
        line = model_pull.error(
            32, *args, "--cache", cache.url, "--gpu", "8.9:1MiB", env={"HF_ENDPOINT": DEAD_HUB}
        )
        assert "does not fit" in line, line
        assert not (root / "models" / NAME).exists()
        assert list((root / "store").iterdir()) == []
        nothing_half_made(root)
        # The same cache on a GPU it fits: substituted.
        info = model_pull.json(
            *args, "--cache", cache.url, "--gpu", "8.9:24GiB", env={"HF_ENDPOINT": DEAD_HUB}
        )
    assert info["path"] == str(root / "store" / pulled.entry.name)


def test_the_bare_pull_with_store_nix_imports_a_substituted_entry(
    model_pull, pulled: Pulled, tmp_path: Path
):
    push(model_pull, pulled, f"file://{tmp_path / 'cache'}")
    chroot = tmp_path / "chroot"
    with StaticCache(tmp_path / "cache") as cache:
        manifest = declare(tmp_path, pulled, {"urls": [cache.url]})
        p = model_pull.run(
            "--no-restart",
            "--store",
            "nix",
            "--nix-store",
            str(chroot),
            env={"MODEL_PULL_MANIFEST": str(manifest), "HF_ENDPOINT": DEAD_HUB},
        )
    assert p.returncode == 0, p.stderr
    assert f"{NAME}: in the Nix store as {pulled.path}" in p.stdout
    info = subprocess.run(
        [
            *NIX,
            "path-info",
            "--json",
            *("--store", str(chroot), pulled.path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(info.stdout)[0]["ca"] == content_address(pulled.nar)


def test_a_cache_pushed_after_a_miss_is_seen(model_pull, pulled: Pulled, tmp_path: Path):
    """Nix remembers a missing narinfo for an hour by default (narinfo-cache-negative-ttl);
    a fleet pushes right after the first machine asked in vain."""
    cache_dir = tmp_path / "cache"
    with StaticCache(cache_dir) as cache:
        cache_dir.joinpath("nix-cache-info").write_text("StoreDir: /nix/store\n")
        manifest = declare(tmp_path, pulled, {"urls": [cache.url]})
        first = consume(model_pull, manifest, hub=DEAD_HUB)
        assert first.returncode == 18, first.stderr  # the Hub is unreachable
        (line,) = cache_lines(first.stdout + first.stderr, cache.url)
        assert line == f"{NAME}: {cache.url}: does not have {pulled.path}; pulling from the Hub"
        push(model_pull, pulled, f"file://{cache_dir}")
        second = consume(model_pull, manifest, hub=DEAD_HUB)
    assert second.returncode == 0, second.stderr
    assert f"{NAME}: substituted {pulled.path} from {cache.url}" in second.stdout


def test_the_store_path_depends_on_the_declared_name(model_pull, pulled: Pulled, tmp_path: Path):
    """The fleet uses the model name as declared: a machine that declares the same model as
    `assistant` asks for another path, until the puller publishes under that name too."""
    cache_dir = tmp_path / "cache"
    push(model_pull, pulled, f"file://{cache_dir}")
    other = store_path(pulled.nar, "assistant")
    with StaticCache(cache_dir) as cache:
        manifest = declare(tmp_path, pulled, {"urls": [cache.url]}, name="assistant")
        miss = consume(model_pull, manifest, hub=DEAD_HUB)
        assert miss.returncode == 18
        assert f"assistant: {cache.url}: does not have {other}; pulling from the Hub" in miss.stdout
        pushed = push(model_pull, pulled, f"file://{cache_dir}", "--name", "assistant")
        assert pushed["storePath"] == other and pushed["written"]
        hit = consume(model_pull, manifest, hub=DEAD_HUB)
    assert hit.returncode == 0, hit.stderr
    assert (tmp_path / "consumer/models/assistant").resolve().name == Path(other).name
    # One NAR in the cache for both names (the bytes do not depend on the name).
    assert len(list((cache_dir / "nar").iterdir())) == 1


def test_a_model_without_a_nar_hash_never_asks_a_cache(model_pull, pulled: Pulled, tmp_path: Path):
    push(model_pull, pulled, f"file://{tmp_path / 'cache'}")
    with StaticCache(tmp_path / "cache") as cache:
        manifest = declare(tmp_path, pulled, {"urls": [cache.url]}, nar=None)
        p = consume(model_pull, manifest)  # the loopback Hub
        assert p.returncode == 0, p.stderr
        assert cache.requests == []
        status = model_pull.run(
            "status",
            "--json",
            env={
                "MODEL_PULL_MANIFEST": str(manifest),
                "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent",
            },
        )
        text = model_pull.run(
            "status",
            env={
                "MODEL_PULL_MANIFEST": str(manifest),
                "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent",
            },
        )
    assert records(tmp_path / "consumer")[-1]["source"] == "hub"
    (model,) = json.loads(status.stdout)["models"]
    assert model["substitutePath"] is None
    assert f"  caches    not asked: no narHash (model-pull prefetch {pulled.repo} prints one)" in (
        text.stdout
    )
    pinned = declare(tmp_path, pulled, {"urls": [cache.url]})
    status = model_pull.run(
        "status",
        "--json",
        env={"MODEL_PULL_MANIFEST": str(pinned), "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/x"},
    )
    assert json.loads(status.stdout)["models"][0]["substitutePath"] == pulled.path


# --- signatures: caches without the CA line ----------------------------------------------------


def test_fetch_with_a_cache_but_no_pin_says_the_cache_is_not_asked(
    model_pull, pulled: Pulled, tmp_path: Path
):
    push(model_pull, pulled, f"file://{tmp_path / 'cache'}")
    with StaticCache(tmp_path / "cache") as cache:
        p = model_pull.run(
            "fetch",
            pulled.repo,
            "--layout",
            "gguf",
            "--include",
            "tiny.gguf",
            "--name",
            NAME,
            "--cache",
            cache.url,
            "--root",
            str(tmp_path / "consumer"),
        )
        assert p.returncode == 0, p.stderr
        assert cache.requests == []
    assert "warning: --cache is not asked without --nar-hash" in p.stderr


def test_a_path_without_ca_needs_a_trusted_signature(model_pull, pulled: Pulled, tmp_path: Path):
    """nix-serve drops the CA line: Nix then accepts the path only with a trusted signature.
    Signature checks are never disabled."""
    secret, public = tmp_path / "key.sec", tmp_path / "key.pub"
    subprocess.run(
        ["nix-store", "--generate-binary-cache-key", "fleet-1", str(secret), str(public)],
        check=True,
    )
    cache_dir = tmp_path / "cache"
    pushed = push(model_pull, pulled, f"file://{cache_dir}", "--secret-key", str(secret))
    assert pushed["signed"] is True
    narinfo = cache_dir / f"{pulled.entry.name[:32]}.narinfo"
    fields = parse_narinfo(narinfo.read_text())
    assert fields["Sig"][0].startswith("fleet-1:")
    narinfo.write_text(
        "".join(
            f"{line}\n" for line in narinfo.read_text().splitlines() if not line.startswith("CA: ")
        )
    )
    with StaticCache(cache_dir) as cache:
        unsigned_ok = consume(model_pull, declare(tmp_path, pulled, {"urls": [cache.url]}))
        assert unsigned_ok.returncode == 0, unsigned_ok.stderr
        (line,) = cache_lines(unsigned_ok.stderr, cache.url)
        assert line.startswith(f"warning: {NAME}: {cache.url}: refused: no content address")
        assert line.endswith("; pulling from the Hub")
        assert records(tmp_path / "consumer")[-1]["source"] == "hub"
        nothing_half_made(tmp_path / "consumer")
        shutil.rmtree(tmp_path / "consumer", onerror=_writable)
        caches = {"urls": [cache.url], "trustedPublicKeys": [public.read_text().strip()]}
        trusted = consume(model_pull, declare(tmp_path, pulled, caches), hub=DEAD_HUB)
    assert trusted.returncode == 0, trusted.stderr
    assert f"{NAME}: substituted {pulled.path} from {cache.url}" in trusted.stdout


def _writable(func: Any, path: str, _exc: Any) -> None:
    os.chmod(os.path.dirname(path), 0o755)
    os.chmod(path, 0o755) if os.path.isdir(path) else None
    func(path)


# --- hostile caches ----------------------------------------------------------------------------


def _flip(nar: Path) -> str:
    """Change one byte in the middle of the NAR; returns the new NAR's hash as Nix writes it."""
    data = bytearray(nar.read_bytes())
    data[len(data) // 2] ^= 0x01
    nar.chmod(0o644)
    nar.write_bytes(bytes(data))
    return "sha256:" + nix32(hashlib.sha256(data).digest())


def _rewrite(narinfo: Path, **fields: str) -> None:
    lines = []
    for line in narinfo.read_text().splitlines():
        key = line.split(": ", 1)[0]
        lines.append(f"{key}: {fields[key]}" if key in fields else line)
    narinfo.write_text("\n".join(lines) + "\n")


def tamper(case: str, cache_dir: Path, hash_part: str) -> None:
    narinfo = cache_dir / f"{hash_part}.narinfo"
    (nar,) = (cache_dir / "nar").iterdir()
    if case == "tampered NAR":
        _flip(nar)
    elif case == "rewritten NarHash":
        new = _flip(nar)
        _rewrite(narinfo, NarHash=new, FileHash=new)
    elif case == "rewritten content address":
        new = _flip(nar)
        _rewrite(narinfo, NarHash=new, FileHash=new, CA=f"fixed:r:{new}")
    elif case == "truncated NAR":
        data = nar.read_bytes()
        nar.write_bytes(data[: len(data) // 2])
    else:
        raise AssertionError(case)


HOSTILE = {
    "tampered NAR": "refused: the bytes are not the declared content (hash mismatch importing",
    "rewritten NarHash": "refused: the bytes are not the declared content (ca hash mismatch",
    "rewritten content address": "refused: no content address that matches and no trusted",
    "truncated NAR": "the NAR ended early or is malformed",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_cache_is_refused_and_the_hub_pulls(
    case: str, model_pull, pulled: Pulled, tmp_path: Path
):
    cache_dir = tmp_path / "cache"
    push(model_pull, pulled, f"file://{cache_dir}")
    tamper(case, cache_dir, pulled.entry.name[:32])
    with StaticCache(cache_dir) as cache:
        p = consume(model_pull, declare(tmp_path, pulled, {"urls": [cache.url]}))
    assert p.returncode == 0, p.stderr
    (line,) = cache_lines(p.stdout + p.stderr, cache.url)
    assert line.startswith(f"warning: {NAME}: {cache.url}: {HOSTILE[case]}"), line
    assert line.endswith("; pulling from the Hub")
    consumer = tmp_path / "consumer"
    assert records(consumer)[-1]["source"] == "hub"  # the Hub's bytes, checked by model-pull
    assert [e.name for e in (consumer / "store").iterdir()] == [pulled.entry.name]
    nothing_half_made(consumer)


def test_a_cache_that_hangs_or_is_not_there_falls_back_to_the_hub(
    model_pull, pulled: Pulled, tmp_path: Path
):
    closed = "http://127.0.0.1:9"
    with HangingServer() as hang:
        caches = {"urls": [hang.url, closed], "stalledTimeout": 1}
        p = consume(model_pull, declare(tmp_path, pulled, caches))
    assert p.returncode == 0, p.stderr
    (hung,) = cache_lines(p.stderr, hang.url)
    assert hung.startswith(f"warning: {NAME}: {hang.url}: unable to download")
    assert "Timeout was reached" in hung and hung.endswith(f"; trying {closed}")
    (refused,) = cache_lines(p.stderr, closed + ":")
    assert "Couldn't connect to server" in refused and refused.endswith("; pulling from the Hub")
    assert records(tmp_path / "consumer")[-1]["source"] == "hub"
    nothing_half_made(tmp_path / "consumer")


def test_a_file_cache_that_is_not_there_is_not_created(model_pull, pulled: Pulled, tmp_path: Path):
    missing = tmp_path / "not-mounted"
    p = consume(model_pull, declare(tmp_path, pulled, {"urls": [f"file://{missing}"]}))
    assert p.returncode == 0, p.stderr
    assert f"warning: {NAME}: file://{missing}: no binary cache at {missing}" in p.stderr
    assert not missing.exists()


def test_an_entry_that_is_not_the_declared_model_is_refused(
    model_pull, pulled: Pulled, tmp_path: Path
):
    """The narHash is right but the declaration says other files: the Hub decides (pin
    mismatch), as without a cache."""
    push(model_pull, pulled, f"file://{tmp_path / 'cache'}")
    with StaticCache(tmp_path / "cache") as cache:
        manifest = declare(tmp_path, pulled, {"urls": [cache.url]}, include=("*.gguf",))
        p = consume(model_pull, manifest)
    assert p.returncode == 22, p.stderr
    (line,) = cache_lines(p.stderr, cache.url)
    assert "which differs from the declaration in include" in line
    assert not (tmp_path / "consumer/store").exists() or not any(
        (tmp_path / "consumer/store").iterdir()
    )


# --- push -------------------------------------------------------------------------------------


def test_push_refuses_an_entry_that_changed(model_pull, pulled: Pulled, tmp_path: Path):
    weights = pulled.entry / "share/models/gguf/tiny.gguf"
    weights.chmod(0o644)
    with weights.open("r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    cache_dir = tmp_path / "cache"
    line = model_pull.error(
        21, "push", NAME, "--to", f"file://{cache_dir}", "--root", str(pulled.root)
    )
    assert "no longer matches its content address" in line and "nothing was published" in line
    assert sorted(p.name for p in cache_dir.iterdir()) == ["nar", "nix-cache-info"]
    assert list((cache_dir / "nar").iterdir()) == []


def test_push_to_any_store_nix_copy_accepts(model_pull, pulled: Pulled, tmp_path: Path):
    """Not a plain file:// cache: Nix uploads what model-pull serves it on loopback."""
    chroot = tmp_path / "chroot"
    pushed = push(model_pull, pulled, str(chroot))
    assert pushed["storePath"] == pulled.path
    info = subprocess.run(
        [
            *NIX,
            "path-info",
            "--json",
            *("--store", str(chroot), pulled.path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(info.stdout)[0]["ca"] == content_address(pulled.nar)
    assert list((pulled.root / "staging").iterdir()) == []
    # A compressed file:// cache, through nix copy too, substitutes like any other.
    cache_dir = tmp_path / "zstd"
    push(model_pull, pulled, f"file://{cache_dir}?compression=zstd")
    narinfo = parse_narinfo((cache_dir / f"{pulled.entry.name[:32]}.narinfo").read_text())
    assert narinfo["Compression"] == ["zstd"]
    with StaticCache(cache_dir) as cache:
        p = consume(model_pull, declare(tmp_path, pulled, {"urls": [cache.url]}), hub=DEAD_HUB)
    assert p.returncode == 0, p.stderr


def test_push_of_an_unknown_model_is_one_line(model_pull, tmp_path: Path):
    line = model_pull.error(
        20, "push", "nope", "--to", f"file://{tmp_path}/c", "--root", str(tmp_path)
    )
    assert line.startswith("error: no model named 'nope'")


def test_a_tampered_entry_in_store_is_not_linked_again(model_pull, pulled: Pulled, tmp_path: Path):
    """The pinned entry is in store/ but was changed since it was installed: the cache replaces
    it; it is never linked as it is."""
    push(model_pull, pulled, f"file://{tmp_path / 'cache'}")
    with StaticCache(tmp_path / "cache") as cache:
        first = consume(model_pull, declare(tmp_path, pulled, {"urls": [cache.url]}), hub=DEAD_HUB)
        assert first.returncode == 0, first.stderr
        consumer = tmp_path / "consumer"
        gate = consumer / "by-hash" / by_hash_name(pulled.nar)
        (consumer / "models" / NAME).unlink()
        gate.unlink()
        weights = consumer / "store" / pulled.entry.name / "share/models/gguf/tiny.gguf"
        weights.chmod(0o644)
        with weights.open("r+b") as f:
            f.seek(100)
            f.write(b"\x00\x01\x02")
        asked = len(cache.requests)
        again = consume(model_pull, declare(tmp_path, pulled, {"urls": [cache.url]}), hub=DEAD_HUB)
    assert again.returncode == 0, again.stderr
    assert f"{NAME}: substituted {pulled.path} from {cache.url}" in again.stdout
    assert len(cache.requests) > asked
    assert (gate / "share/models/gguf/tiny.gguf").read_bytes() == (
        pulled.entry / "share/models/gguf/tiny.gguf"
    ).read_bytes()
    verified = model_pull.json("verify", "--root", str(consumer))
    assert verified["entries"][0]["ok"] is True
    nothing_half_made(consumer)
