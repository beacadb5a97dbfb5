"""`model-pull status`: what is declared, what is installed, what runs, what holds GPU memory.

Joins the manifest (declared models and units), the state root (`models/<name>` or the
`by-hash/` gate, the entry's `share/model-pull/manifest.json`, `state/pulls.jsonl`), systemd
over D-Bus (`systemd.unit_states`) and NVML (`gpu.process_memory`, pid -> bytes), so a user
sees which units hold how much GPU memory, i.e. what `systemctl stop UNIT` would free.

Each unit is always on or served on demand (the manifest's `onDemand`: its idle timeout and
sockets), and is `serving` in one word since a time (systemd's StateChangeTimestamp):
running, starting (loading, or waiting for its GPU), idle (on demand: not running, its
sockets listening), stopped, waiting (for its model) or failed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model_pull import systemd
from model_pull.binary_cache import store_path
from model_pull.errors import ExitCode, ModelPullError
from model_pull.manifest import DeclaredModel, Manifest, OnDemand
from model_pull.output import ModelStatusJson, StatusJson, UnitStatusJson
from model_pull.store import StateRoot
from model_pull.units import UnitState

logger = logging.getLogger(__name__)

_FULL_REVISION = re.compile(r"[0-9a-f]{40}")

GpuMemory = Callable[[], Mapping[int, int]]


@dataclass(frozen=True)
class UnitReport:
    unit: str
    state: UnitState | None  # None: systemd could not be asked (see Report.bus_error)
    gpu_bytes: int | None  # GPU memory its processes hold; None: no NVML
    on_demand: OnDemand | None = None  # None: always on
    sockets: tuple[UnitState, ...] = ()  # its sockets' states, when served on demand

    @property
    def serving(self) -> str | None:
        """running, starting, idle, stopped, waiting or failed; None without a bus."""
        s = self.state
        if s is None:
            return None
        if s.active_state == "active":
            return "running"
        if s.active_state in ("activating", "reloading"):
            return "starting"
        if self.on_demand is None:
            if s.active_state == "failed":
                return "failed"
            return "waiting" if s.waiting else "stopped"
        # on demand: what decides is whether a request would start it
        if any(sock.active_state == "active" for sock in self.sockets):
            return "idle"
        if any(sock.waiting for sock in self.sockets):
            return "waiting"
        return (
            "failed" if any(sock.active_state == "failed" for sock in self.sockets) else "stopped"
        )

    @property
    def since(self) -> datetime | None:
        """When it entered its `serving` state."""
        s = self.state
        usec = s.since_usec if s is not None else 0
        if self.serving in ("waiting", "stopped", "failed") and self.sockets:
            usec = max(sock.since_usec for sock in self.sockets)  # the sockets decide
        return datetime.fromtimestamp(usec / 1e6, UTC) if usec else None

    def to_json(self) -> UnitStatusJson:
        s = self.state
        since = self.since
        return {
            "unit": self.unit,
            "activeState": s.active_state if s else None,
            "subState": s.sub_state if s else None,
            "unitFileState": s.unit_file_state if s else None,
            "conditionResult": s.condition_result if s else None,
            "failedConditions": list(s.failed_conditions) if s else None,
            "mainPID": s.main_pid if s else None,
            "pids": list(s.pids) if s else None,
            "gpuBytes": self.gpu_bytes,
            "onDemand": self.on_demand is not None,
            "idleTimeout": self.on_demand.idle_timeout if self.on_demand else None,
            "serving": self.serving,
            "since": since.isoformat().replace("+00:00", "Z") if since else None,
            "sockets": [
                {"unit": k.unit, "activeState": k.active_state, "subState": k.sub_state}
                for k in self.sockets
            ],
        }


@dataclass(frozen=True)
class ModelReport:
    name: str
    repo: str
    revision: str  # as declared
    gate: Path  # models/<name>, or by-hash/<narHash> when the model pins one
    entry: Path | None  # the entry the gate points to; None: missing
    installed_revision: str | None  # from the entry's manifest.json
    nar_hash: str | None  # from state/pulls.jsonl, the line that installed this entry
    pulled_at: str | None
    units: tuple[UnitReport, ...]
    # The binary caches: None without any; else the store path they are asked for, or None
    # when the model has no narHash (then it only ever comes from the Hub).
    caches: tuple[str, ...] = ()
    substitute_path: str | None = None

    @property
    def present(self) -> bool:
        return self.entry is not None

    @property
    def pin_differs(self) -> bool:
        """The installed revision is not the declared one (only for a declared commit hash)."""
        return (
            self.installed_revision is not None
            and _FULL_REVISION.fullmatch(self.revision) is not None
            and self.installed_revision != self.revision
        )

    def to_json(self) -> ModelStatusJson:
        return {
            "name": self.name,
            "repo": self.repo,
            "revision": self.revision,
            "present": self.present,
            "gate": str(self.gate),
            "entry": str(self.entry) if self.entry else None,
            "installedRevision": self.installed_revision,
            "pinDiffers": self.pin_differs,
            "narHash": self.nar_hash,
            "pulledAt": self.pulled_at,
            "substitutePath": self.substitute_path,
            "units": [u.to_json() for u in self.units],
        }


@dataclass(frozen=True)
class Report:
    manifest: Path
    root: Path
    models: tuple[ModelReport, ...]
    bus_error: ModelPullError | None
    gpu_error: str | None  # why there are no GPU numbers ("no NVML: ...")

    def to_json(self) -> StatusJson:
        return {
            "manifest": str(self.manifest),
            "root": str(self.root),
            "models": [m.to_json() for m in self.models],
            "busError": str(self.bus_error) if self.bus_error else None,
            "gpuError": self.gpu_error,
        }


def collect(manifest: Manifest, root: Path, *, gpu_memory: GpuMemory | None = None) -> Report:
    """Everything `status` shows. D-Bus and NVML failures are recorded, not raised."""
    all_units = list(dict.fromkeys(u for m in manifest.models.values() for u in m.units))
    sockets = {u: _sockets(manifest, u) for u in all_units}
    states: dict[str, UnitState] = {}
    bus_error = None
    if all_units:
        try:
            states = systemd.unit_states(all_units + [k for ks in sockets.values() for k in ks])
        except ModelPullError as exc:
            if exc.code is not ExitCode.NO_BUS:
                raise
            bus_error = exc
    memory, gpu_error = _gpu_memory(gpu_memory or _nvml_process_memory)
    state = StateRoot(root)
    models = []
    for model in manifest.models.values():
        units = tuple(
            UnitReport(
                unit=u,
                state=states.get(u),
                gpu_bytes=_unit_gpu_bytes(states.get(u), memory),
                on_demand=_on_demand(manifest, u),
                sockets=tuple(states[k] for k in sockets[u] if k in states),
            )
            for u in model.units
        )
        models.append(_model_report(model, state, units, manifest.caches.urls))
    return Report(manifest.path, root, tuple(models), bus_error, gpu_error)


# ---------------------------------------------------------------------------- internals


def _model_report(
    model: DeclaredModel, state: StateRoot, units: tuple[UnitReport, ...], caches: tuple[str, ...]
) -> ModelReport:
    gate = state.gate(model.name, model.nar_hash)
    entry = state.entry_at(gate)
    installed_revision = None
    record: Mapping[str, Any] = {}
    if entry is not None:
        try:
            installed_revision = entry.manifest().spec.revision
        except (OSError, ValueError):
            logger.warning("%s has no readable entry manifest", entry.path)
        record = state.record_of(entry) or {}
    return ModelReport(
        name=model.name,
        repo=model.repo,
        revision=model.revision,
        gate=gate,
        entry=entry.path if entry else None,
        installed_revision=installed_revision,
        nar_hash=_opt_str(record.get("narHash")),
        pulled_at=_opt_str(record.get("time")),
        units=units,
        caches=caches,
        substitute_path=_substitute_path(model) if caches else None,
    )


def _on_demand(manifest: Manifest, unit: str) -> OnDemand | None:
    declared = manifest.units.get(unit)
    return declared.on_demand if declared is not None else None


def _sockets(manifest: Manifest, unit: str) -> tuple[str, ...]:
    on_demand = _on_demand(manifest, unit)
    return on_demand.sockets if on_demand is not None else ()


def _substitute_path(model: DeclaredModel) -> str | None:
    """The store path the caches are asked for: only a pinned model has one."""
    if model.nar_hash is None:
        return None
    try:
        return store_path(model.nar_hash, model.name)
    except ValueError:
        return None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _unit_gpu_bytes(state: UnitState | None, memory: Mapping[int, int] | None) -> int | None:
    if memory is None:
        return None
    if state is None:
        return None
    return sum(memory.get(pid, 0) for pid in state.pids)


def _gpu_memory(read: GpuMemory) -> tuple[Mapping[int, int] | None, str | None]:
    try:
        return read(), None
    except ModelPullError as exc:
        return None, f"no NVML ({exc.message})"


def _nvml_process_memory() -> Mapping[int, int]:
    """pid -> bytes of GPU memory over all GPUs (NVML, through gpu.py)."""
    from model_pull.gpu import process_memory

    return process_memory()
