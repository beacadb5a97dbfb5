"""What each command prints with --json: one TypedDict per object, in one place.

One style for all of them, the entry manifest's: camelCase keys, sizes in bytes, paths absolute,
null for "not known". docs/ARCHITECTURE.md ("JSON output") lists them; the `to_json` methods of
the modules named below build them. Types only: besides the data model's own JSON types
(datamodel.FileRecord, datamodel.Declaration: prefetch's object), nothing of model-pull.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from model_pull.datamodel import FileRecord

# --- fetch, package (pull.Installed) ------------------------------------------------------


class InstalledJson(TypedDict):
    name: str
    repo: str
    revision: str
    layout: str
    path: str  # the entry: <root>/store/<hash>-<name>
    narHash: str
    storeName: str  # <hash>-<name>, the basename `nix-store --add` gives it
    files: list[FileRecord]  # as in the entry manifest
    changed: bool  # False: models/<name> already pointed at this entry
    previous: str | None  # the entry models/<name> pointed at before
    nixStorePath: NotRequired[str]  # with --store nix


class PushJson(TypedDict):
    """`push` (push.Pushed)."""

    to: str  # the URL as given
    storePath: str  # /nix/store/<hash>-<name>, the path substituting machines ask for
    narHash: str
    narSize: int
    written: bool  # False: the cache had it already
    signed: bool


class HashJson(TypedDict):
    path: str
    narHash: str
    narSize: int
    storePath: str


class VerifiedJson(TypedDict):
    name: str
    entry: str
    ok: bool
    problems: list[str]


class VerifyJson(TypedDict):
    entries: list[VerifiedJson]


class ListedJson(TypedDict):
    name: str
    path: str | None
    repo: str | None
    revision: str | None
    layout: str | None
    narHash: str | None
    size: int
    previous: list[str] | None  # the basename of the entry a rollback would go back to


class ListJson(TypedDict):
    models: list[ListedJson]


class GcJson(TypedDict):
    removed: list[str]


# "from" is a Python keyword, hence the functional form.
RollbackJson = TypedDict("RollbackJson", {"name": str, "from": str, "to": str})


# --- check (check.Report) -----------------------------------------------------------------


class GpuJson(TypedDict):
    index: int | None
    name: str
    sm: str
    totalBytes: int
    freeBytes: int | None
    driver: str | None
    source: str  # "nvml" or "spec"


class FitJson(TypedDict, total=False):
    weights: int  # the only key when there is no GPU to fit on
    kvCache: int
    overhead: int
    available: int
    headroom: int
    maxContext: int
    context: int
    parallel: int
    kvCacheDtype: str
    kvBytesPerToken: float
    fits: bool


class GpuVerdictJson(TypedDict):
    gpu: GpuJson
    verdict: str  # native, emulated, unknown, unsupported
    reason: str
    source: str  # where the compatibility table's row comes from
    build: str | None  # how the runtime build's code reaches this GPU (with --package-sm)
    memory: FitJson


class QuantizationJson(TypedDict):
    method: str
    scheme: str
    algo: str
    weightBits: int | None
    activationBits: int | None
    dtype: str | None
    kvCache: str | None
    source: str
    details: dict[str, Any]


class ArchitectureJson(TypedDict):
    layers: int
    kvHeads: int
    headDim: int
    valueDim: int
    maxContext: int | None
    slidingLayers: int
    slidingWindow: int | None
    mlaDim: int | None


class CheckJson(TypedDict):
    model: str
    runtime: str
    gpus: list[GpuVerdictJson]
    gpuProblem: str | None
    quantization: QuantizationJson
    architecture: ArchitectureJson | None
    verdict: str | None
    fits: bool | None
    reasons: list[str]
    notes: list[str]
    memory: FitJson  # on the GPU with the least headroom


# --- status (status.Report) ---------------------------------------------------------------


class SocketStatusJson(TypedDict):
    unit: str
    activeState: str | None
    subState: str | None


class UnitStatusJson(TypedDict):
    unit: str
    activeState: str | None
    subState: str | None
    unitFileState: str | None
    conditionResult: bool | None
    failedConditions: list[str] | None
    mainPID: int | None
    pids: list[int] | None
    gpuBytes: int | None
    onDemand: bool
    idleTimeout: int | None  # seconds, for a unit served on demand
    serving: str | None  # running, starting, idle, stopped, waiting, failed; None: no bus
    since: str | None  # when it entered that state (ISO 8601, UTC)
    sockets: list[SocketStatusJson]  # its sockets, for a unit served on demand


class ModelStatusJson(TypedDict):
    name: str
    repo: str
    revision: str
    present: bool
    gate: str
    entry: str | None
    installedRevision: str | None
    pinDiffers: bool
    narHash: str | None
    pulledAt: str | None
    substitutePath: str | None  # /nix/store/<hash>-<name> the caches are asked for; null: none
    units: list[UnitStatusJson]


class StatusJson(TypedDict):
    manifest: str
    root: str
    models: list[ModelStatusJson]
    busError: str | None
    gpuError: str | None
