"""Substitute first: a pinned model from the fleet's Nix binary caches, verified by Nix, before
the Hub.

Only a model with a declared narHash is ever taken from a cache: its store path follows from its
name and that narHash alone (`binary_cache.store_path`), and the narHash is the only trust needed.
Nothing ties `repo@revision` to a path, so a model without one always comes from the Hub
(`model-pull prefetch` prints the pin). The name is the model's name as declared
(`services.inference.models.<name>`): publisher and consumer compute the same path only when they
use the same name (`model-pull push --name` publishes under another one).

For each cache in order (`services.inference.caches.urls`):

1. a throwaway chroot Nix store under `ROOT/staging/<name>.subst.XXXX`;
2. `nix copy --from CACHE --to CHROOT PATH`: Nix reads the narinfo and accepts the path only with
   its content address (the `CA: fixed:r:sha256:...` line, from which it recomputes the path) or a
   signature from a key in `caches.trustedPublicKeys`; it checks the NAR against the NarHash while
   restoring it and re-hashes the tree against the content address. `require-sigs` stays true:
   signature checks are never disabled (without them a forged path without a CA line would be
   registered as valid). No other substituter of the machine is asked;
3. the path must be valid in the chroot store (registered by Nix: a failed substitution can leave
   an unregistered tree behind), with the declared narHash and no references;
4. the entry's own manifest must be what the model declares (repo, revision, layout, options);
5. the tree is renamed into `ROOT/store/` (one rename, as after a Hub pull), the chroot removed.

A miss, an unreachable cache or a refused path is one line saying why, then the next cache, then
the Hub. Nothing half-made stays in `staging/` or `store/`. Nix's narinfo cache lives in the
chroot too, so a path pushed after a miss is seen at once (Nix otherwise remembers a miss for an
hour: `narinfo-cache-negative-ttl`). Settings: https://nix.dev/manual/nix/2.28/command-ref/conf-file
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from model_pull import binary_cache, hub, nix, process, pull, redact, safefs
from model_pull.datamodel import EntryManifest
from model_pull.errors import ExitCode, ModelPullError
from model_pull.hashing import NIX_STORE_DIR, NarResult
from model_pull.manifest import Caches
from model_pull.store import Entry, StateRoot, os_errors, remove_tree

logger = logging.getLogger(__name__)

DOWNLOAD_ATTEMPTS = 3  # Nix retries a transient failure (a timeout, a 5xx) this often in all
HUB = "pulling from the Hub"
REASON_MAX = 600  # characters of Nix's reason printed
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # never in Nix's environment
MISS_MARKERS = ("there is no substituter that can build it", "does not exist in binary cache")


class _RefusedError(Exception):
    """Why one cache did not give the entry (`miss`: it does not have it)."""

    def __init__(self, reason: str, *, miss: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.miss = miss


def substituter(
    root: StateRoot,
    repo: str,
    revision: str,
    options: pull.Options,
    caches: Caches,
    *,
    wait: bool,
    say: Callable[[str], None],
    gate: Callable[[Path], object] | None = None,
) -> Callable[[], pull.Installed | None] | None:
    """The `substitute` hook of `pull.fetch` for this model, or None when there is nothing to
    ask: no pin (never from a cache), or no caches. `gate` (the GPU check) sees a substituted
    tree before it is installed, and refuses it as it would refuse the Hub's."""
    if options.expect_nar is None or not caches.urls:
        return None
    nar = options.expect_nar
    return lambda: substitute(
        root, repo, revision, options, nar, caches, wait=wait, say=say, gate=gate
    )


def substitute(
    root: StateRoot,
    repo: str,
    revision: str,
    options: pull.Options,
    nar: str,
    caches: Caches,
    *,
    wait: bool,
    say: Callable[[str], None],
    gate: Callable[[Path], object] | None = None,
) -> pull.Installed | None:
    """The pinned entry, from store/ when it is there already, else from the first cache that
    has it and passes Nix's checks; None (after one line per cache saying why): the Hub."""
    name = options.model_name(repo)
    try:
        basename = binary_cache.store_basename(nar, name)
    except ValueError as exc:
        raise ModelPullError(
            ExitCode.BAD_INPUT, f"{name}: {exc}", hint="give the narHash `nix hash path` prints"
        ) from exc
    path = f"{NIX_STORE_DIR}/{basename}"
    with root.lock(wait=wait), os_errors("substitute the entry", root.path):
        if safefs.kind(root.store / basename) == "dir":
            present = _already_installed(
                root, Entry(root.store / basename), repo, revision, options
            )
            if present is not None:
                return present
        missing = [p for p in ("nix", "nix-store") if process.which(p) is None]
        if missing:
            say(f"warning: {name}: {missing[0]} is not installed, no cache is asked; {HUB}")
            return None
        for i, url in enumerate(caches.urls):
            then = (
                f"trying {caches.urls[i + 1]}"
                if i + 1 < len(caches.urls)
                else "pulling from the Hub"
            )
            try:
                installed = _from_cache(
                    root, url, path, name, repo, revision, options, caches, gate
                )
            except _RefusedError as why:
                prefix = "" if why.miss else "warning: "
                # Nix's words may carry what the cache sent: one line, cut, secrets masked.
                say(f"{prefix}{name}: {url}: {redact.clean(why.reason, REASON_MAX)}; {then}")
                continue
            say(f"{name}: substituted {path} from {url}")
            return installed
    return None


def _from_cache(
    root: StateRoot,
    url: str,
    path: str,
    name: str,
    repo: str,
    revision: str,
    options: pull.Options,
    caches: Caches,
    gate: Callable[[Path], object] | None,
) -> pull.Installed:
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}.subst.", dir=root.staging))
    try:
        chroot = str(tmp / "store")
        # Nix needs no Hub token: it does not get one (nor could pass one on).
        env = {k: v for k, v in os.environ.items() if k not in TOKEN_ENV}
        env.update(XDG_CACHE_HOME=str(tmp / "xdg"), TMPDIR=str(tmp))
        local = binary_cache.StoreUrl.parse(url).local_directory
        if local is not None and not (local / binary_cache.CACHE_INFO).is_file():
            # Nix would create the directory: a cache that is not mounted is not an empty one.
            raise _RefusedError(f"no binary cache at {local} (no {binary_cache.CACHE_INFO})")
        copied = nix.copy_path(path, src=url, dst=chroot, settings=_settings(caches), env=env)
        if copied.returncode != 0:
            reason = nix.failure_reason(copied)
            if any(m in reason for m in MISS_MARKERS):
                raise _RefusedError(f"does not have {path}", miss=True)
            raise _RefusedError(_explain(reason))
        if not nix.is_valid(chroot, path, env):
            raise _RefusedError("Nix did not register the path as valid")
        info = nix.path_info(chroot, path, env)
        nar = options.expect_nar
        if info.get("narHash") != nar:
            raise _RefusedError(f"its narHash is {info.get('narHash')}, not the declared {nar}")
        if info.get("references"):
            raise _RefusedError(f"it refers to other store paths: {info['references']}")
        tree = tmp / "store" / NIX_STORE_DIR.lstrip("/") / Path(path).name
        manifest = _declared(tree, repo, revision, options)
        if gate is not None:
            gate(tree)  # the GPU check the Hub's pull runs before its download
        digest = binary_cache.nar_digest(str(nar))
        return pull.install_verified(
            root,
            tree,
            name,
            manifest.spec,
            NarResult(digest, int(info.get("narSize", 0))),
            options,
            {"source": url},
        )
    finally:
        remove_tree(tmp)


def _settings(caches: Caches) -> dict[str, str]:
    timeout = str(caches.stalled_timeout)
    return {
        "substituters": "",  # on a miss Nix would ask the machine's other caches for the path
        "require-sigs": "true",
        "trusted-public-keys": " ".join(caches.trusted_public_keys),
        "narinfo-cache-negative-ttl": "0",
        "narinfo-cache-positive-ttl": "0",
        "connect-timeout": timeout,
        "stalled-download-timeout": timeout,
        "download-attempts": str(DOWNLOAD_ATTEMPTS),
    }


def _explain(reason: str) -> str:
    """Nix's words, with what they mean when they do not say it."""
    if "coroutine has finished" in reason:
        return f"the NAR ended early or is malformed (Nix: {reason})"
    if "lacks a valid signature" in reason:
        return (
            f"refused: no content address that matches and no trusted signature ({reason}); "
            "a cache without CA lines needs its key in services.inference.caches.trustedPublicKeys"
        )
    if "hash mismatch" in reason:
        return f"refused: the bytes are not the declared content ({reason})"
    return reason


def _declared(tree: Path, repo: str, revision: str, options: pull.Options) -> EntryManifest:
    """The entry manifest of a substituted tree, when it is the declared model."""
    try:
        manifest = EntryManifest.read(tree)
    except (OSError, ValueError) as exc:
        raise _RefusedError(f"the path is no model-pull entry ({exc})") from None
    wanted = options.spec(repo, revision if hub.COMMIT_RE.match(revision) else "")
    got = manifest.spec
    fields = ["repo", "layout", "include", "exclude", "triton_name", "engine_defaults"]
    fields += ["patch_tokenizer"] + (["revision"] if wanted.revision else [])
    differ = [f for f in fields if getattr(got, f) != getattr(wanted, f)]
    if differ:
        raise _RefusedError(
            f"the entry with this narHash is {got.repo}@{got.revision[:12]} ({got.layout}), "
            f"which differs from the declaration in {', '.join(differ)}"
        )
    return manifest


def _already_installed(
    root: StateRoot, entry: Entry, repo: str, revision: str, options: pull.Options
) -> pull.Installed | None:
    """The pinned entry is in store/ already (installed by an earlier pull): link it, when it
    is as it was installed (a tampered entry is never reused: the cache or the Hub replace it)."""
    from model_pull.verify import trusted

    if not trusted(root, entry):
        logger.warning("%s changed since it was installed: not reused", entry.path)
        return None
    try:
        manifest = _declared(entry.path, repo, revision, options)
    except _RefusedError as why:
        logger.info("%s is not reused: %s", entry.path, why.reason)
        return None
    previous = root.switch(entry.name, entry)
    assert options.expect_nar is not None
    root.link_by_hash(options.expect_nar, entry)
    spec = manifest.spec
    return pull.Installed(
        entry.name,
        spec.repo,
        spec.revision,
        spec.layout,
        entry,
        options.expect_nar,
        manifest.files,
        previous,
        changed=previous is None or previous.basename != entry.basename,
    )
