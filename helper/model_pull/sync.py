"""`model-pull` with no arguments: make the state root match the NixOS manifest.

Pulls every declared model that is missing or differs from its declaration (revision, files,
layout, pin), then restarts the units waiting for the models that changed, over D-Bus (for a
unit served on demand: starts its sockets, and restarts it only if it runs). A model
that is already there costs no network and no hashing, so a no-op run is fast. One model's
failure does not stop the others: each is reported once, through `on_error`, and the first one
decides the exit code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from model_pull import check, hub, pull, substitute
from model_pull.datamodel import resolve_root
from model_pull.errors import ExitCode, ModelPullError
from model_pull.manifest import DeclaredModel, Manifest
from model_pull.progress import Progress
from model_pull.store import StateRoot
from model_pull.systemd import restart_waiting_units, start_on_demand
from model_pull.units import UnitOutcome

logger = logging.getLogger(__name__)


@dataclass
class SyncResult:
    installed: list[pull.Installed] = field(default_factory=list)
    failed: dict[str, ModelPullError] = field(default_factory=dict)
    restarted: list[UnitOutcome] = field(default_factory=list)
    restart_error: ModelPullError | None = None

    def units_to_restart(self, manifest: Manifest) -> list[str]:
        units: list[str] = []
        for inst in self.installed:
            if inst.changed:
                for unit in manifest.models[inst.name].units:
                    if unit not in units:
                        units.append(unit)
        return units


def options_for(model: DeclaredModel) -> pull.Options:
    return pull.Options(
        layout=model.layout,
        name=model.name,
        include=model.include,
        exclude=model.exclude,
        triton_name=model.triton_name,
        engine_defaults=dict(model.engine_defaults),
        patch_tokenizer=model.patch_tokenizer,
        expect_nar=model.nar_hash,
    )


def sync(
    manifest: Manifest,
    *,
    root: Path | None = None,
    restart: bool = True,
    progress: Progress,
    wait: bool = True,
    say: Callable[[str], None] = logger.info,
    on_error: Callable[[str, ModelPullError], None] | None = None,
    nix_store: NixStore | None = None,
) -> SyncResult:
    """Pull every declared model; `say` gets one line per model (and warnings), `on_error` each
    model's failure. Restart failures are in the result (`restart_error`, the outcomes).

    A pinned model is substituted from the manifest's binary caches first (substitute.py). With
    `nix_store` (`--store nix`), each entry is also imported into that Nix store with a GC root."""
    state = StateRoot(resolve_root(root, lambda: manifest.root))
    remote = hub.Remote(endpoint=manifest.endpoint, token=hub.read_token(manifest.token_file))
    result = SyncResult()
    for name, model in sorted(manifest.models.items()):
        if not hub.COMMIT_RE.match(model.revision):
            say(f"warning: {name} follows {model.revision!r}, not a commit: not reproducible")
        options = options_for(model)
        gate = _gate(manifest, model, remote, say)
        try:
            installed = pull.fetch(
                model.repo,
                model.revision,
                options,
                state,
                remote,
                progress=progress,
                wait=wait,
                preflight=gate.listing,
                substitute=substitute.substituter(
                    state,
                    model.repo,
                    model.revision,
                    options,
                    manifest.caches,
                    wait=wait,
                    say=say,
                    gate=gate.tree,
                ),
            )
            if nix_store is not None:
                _import(state, installed, nix_store, say)
        except ModelPullError as exc:
            result.failed[name] = exc
            if on_error is not None:
                on_error(name, exc)
            continue
        result.installed.append(installed)
        state_word = "installed " + installed.entry.basename if installed.changed else "up to date"
        say(f"{name}: {state_word}")
    units = result.units_to_restart(manifest)
    if restart and units:
        # a unit served on demand: its sockets are started, its first request starts it
        on_demand = {
            u: d.on_demand.sockets
            for u in units
            if (d := manifest.units.get(u)) is not None and d.on_demand is not None
        }
        try:
            result.restarted = list(restart_waiting_units([u for u in units if u not in on_demand]))
            result.restarted += start_on_demand(on_demand)
        except ModelPullError as exc:
            if exc.code is ExitCode.NO_BUS:
                exc = ModelPullError(
                    exc.code,
                    f"{exc.message}; the pull itself succeeded, the units were not restarted",
                    hint=exc.hint,
                )
            result.restart_error = exc
    return result


@dataclass(frozen=True)
class NixStore:
    """`--store nix`: the Nix store the entries also go into (None: the machine's own)."""

    uri: str | None = None


def _import(
    state: StateRoot, installed: pull.Installed, store: NixStore, say: Callable[[str], None]
) -> None:
    """Import the entry into the Nix store with a GC root, unless the root points at it already."""
    from model_pull.hashing import NIX_STORE_DIR
    from model_pull.nix import add_entry

    gc_root = state.gcroots / installed.name
    wanted = f"{NIX_STORE_DIR}/{installed.entry.basename}"
    if gc_root.is_symlink() and os.readlink(gc_root) == wanted:
        return
    path = add_entry(installed.entry, store_uri=store.uri, gc_root=gc_root)
    say(f"{installed.name}: in the Nix store as {path}")


def _gate(
    manifest: Manifest, model: DeclaredModel, remote: hub.Remote, say: Callable[[str], None]
) -> check.Gate:
    """The GPU check for a declared model: its units' runtime and CUDA capabilities."""
    units = [manifest.units[u] for u in model.units if u in manifest.units]
    caps = sorted({c for u in units for c in u.cuda_capabilities})
    return check.Gate(
        model.repo,
        warn=lambda m: say(f"warning: {model.name}: {m}"),
        remote=remote,
        runtime=units[0].runtime if units else None,
        package_arches=check.parse_package_sms(",".join(caps)),
    )
