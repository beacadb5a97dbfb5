"""Reads /etc/inference/models.json, the manifest the NixOS modules write (docs/ARCHITECTURE.md).

Exact to the documented format (version 1): required keys must be there with the right types,
optional ones get their documented defaults (a unit without `onDemand` is always on), names
that refer to each other must exist. Keys this version does not know are ignored, so a newer
module can add fields without breaking an older helper. Anything else is one BAD_MANIFEST
error naming the file and the key.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from model_pull.datamodel import (
    DEFAULT_ROOT,
    JSON_MAX_DEPTH,
    Layout,
    Runtime,
    json_depth,
    manifest_path,
    model_name_problem,
    nar_hash_problem,
    repo_problem,
    resolve_root,
    root_problem,
    unit_problem,
    validate_triton_name,
)
from model_pull.errors import ExitCode, ModelPullError

logger = logging.getLogger(__name__)

VERSION = 1
_E = TypeVar("_E", bound=enum.Enum)
_HINT = (
    "it is written by the NixOS modules (services.inference); rebuild, or set MODEL_PULL_MANIFEST"
)


@dataclass(frozen=True)
class DeclaredModel:
    name: str
    repo: str
    revision: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    layout: Layout
    triton_name: str | None
    nar_hash: str | None
    engine_defaults: Mapping[str, Any]
    patch_tokenizer: bool
    units: tuple[str, ...]


@dataclass(frozen=True)
class OnDemand:
    """A unit served on demand: started through its sockets, stopped after idle_timeout."""

    idle_timeout: int  # seconds without an open connection
    sockets: tuple[str, ...]  # the socket units on its public ports


@dataclass(frozen=True)
class DeclaredUnit:
    name: str
    runtime: Runtime
    models: tuple[str, ...]
    cuda_capabilities: tuple[str, ...]
    on_demand: OnDemand | None = None  # None: always on (started at boot)


@dataclass(frozen=True)
class Caches:
    """`services.inference.caches`: the Nix binary caches asked for pinned models before the
    Hub, the public keys trusted for paths without a content address, and how long a cache may
    send nothing before it counts as unreachable (Nix's stalled-download-timeout)."""

    urls: tuple[str, ...] = ()
    trusted_public_keys: tuple[str, ...] = ()
    stalled_timeout: int = 60


@dataclass(frozen=True)
class Manifest:
    path: Path
    root: Path
    endpoint: str | None
    token_file: Path | None
    models: dict[str, DeclaredModel]
    units: dict[str, DeclaredUnit]
    caches: Caches = Caches()

    @classmethod
    def load(cls, path: Path | None = None) -> Manifest:
        """The manifest at `path`, else $MODEL_PULL_MANIFEST, else /etc/inference/models.json."""
        path = path or manifest_path()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ModelPullError(
                ExitCode.BAD_MANIFEST,
                f"no manifest at {path}",
                hint="enable services.inference on this machine, or set MODEL_PULL_MANIFEST",
            ) from exc
        except OSError as exc:
            raise ModelPullError(
                ExitCode.BAD_MANIFEST,
                f"cannot read manifest {path}: {exc.strerror}",
                hint="run as root, or set MODEL_PULL_MANIFEST",
            ) from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelPullError(
                ExitCode.BAD_MANIFEST, f"manifest {path} is not JSON: {exc}", hint=_HINT
            ) from exc
        except RecursionError:
            raise ModelPullError(
                ExitCode.BAD_MANIFEST, f"manifest {path} nests its JSON too deeply", hint=_HINT
            ) from None
        return _Reader(path).manifest(data)

    @classmethod
    def load_optional(cls) -> Manifest | None:
        """The manifest when there is one (a NixOS machine with services.inference), else None.
        A manifest that exists but cannot be read is an error, not None."""
        path = manifest_path()
        if not path.exists() and not path.is_symlink():
            return None
        return cls.load(path)

    def unit_serving(self, name: str, runtime: Runtime | None = None) -> DeclaredUnit | None:
        """The first unit (by name) that serves model `name`, with `runtime` when given."""
        for unit in sorted(self.units):
            declared = self.units[unit]
            if name in declared.models and runtime in (None, declared.runtime):
                return declared
        return None


def state_root(option: Path | None = None) -> Path:
    """The state root of every command (datamodel.resolve_root): --root, then $MODEL_PULL_ROOT,
    then the manifest's root, then /var/lib/inference."""

    def declared() -> Path | None:
        manifest = Manifest.load_optional()
        return manifest.root if manifest else None

    return resolve_root(option, declared)


class _Reader:
    """Typed access to the parsed JSON; every failure names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, what: str) -> ModelPullError:
        return ModelPullError(
            ExitCode.BAD_MANIFEST, f"manifest {self.path}: {where} {what}", hint=_HINT
        )

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "must be an object")
        return value

    def get(
        self,
        obj: Mapping[str, Any],
        key: str,
        where: str,
        kind: type,
        *,
        default: Any = ...,
        nullable: bool = False,
    ) -> Any:
        if key not in obj:
            if default is ...:
                raise self.fail(_join(where, key), "is missing")
            return default
        value = obj[key]
        if value is None and nullable:
            return None
        # bool is an int in Python; the manifest's ints are never booleans
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(_join(where, key), f"must be {_kind_name(kind, nullable)}")
        return value

    def strings(self, obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = self.get(obj, key, where, list, default=[])
        if not all(isinstance(v, str) for v in value):
            raise self.fail(f"{where}.{key}", "must be a list of strings")
        return tuple(value)

    def choice(self, obj: Mapping[str, Any], key: str, where: str, kind: type[_E]) -> _E:
        value = self.get(obj, key, where, str)
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(m.value for m in kind)
            raise self.fail(f"{where}.{key}", f"is {value!r}, not one of {allowed}") from None

    def manifest(self, data: Any) -> Manifest:
        top = self.obj(data, "the top level")
        version = self.get(top, "version", "", int)
        if version != VERSION:
            raise ModelPullError(
                ExitCode.BAD_MANIFEST,
                f"manifest {self.path} has version {version}; this model-pull reads {VERSION}",
                hint="use the model-pull that comes with the NixOS modules",
            )
        token_file = self.get(top, "tokenFile", "", str, default=None, nullable=True)
        root = self.get(top, "root", "", str, default=str(DEFAULT_ROOT))
        if (why := root_problem(root)) is not None:
            raise self.fail("root", f"cannot be the state root: {why}")
        models = {
            name: self.model(name, self.obj(spec, f"models.{name}"))
            for name, spec in self.obj(self.get(top, "models", "", dict), "models").items()
        }
        units = {
            name: self.unit(name, self.obj(spec, f"units.{name}"))
            for name, spec in self.obj(
                self.get(top, "units", "", dict, default={}), "units"
            ).items()
        }
        for model in models.values():
            for unit in model.units:
                if unit not in units:
                    raise self.fail(f"models.{model.name}.units", f"names {unit}, not in units")
        for declared in units.values():
            for name in declared.models:
                if name not in models:
                    raise self.fail(f"units.{declared.name}.models", f"names {name}, not in models")
        return Manifest(
            path=self.path,
            root=Path(root),
            endpoint=self.get(top, "endpoint", "", str, default=None, nullable=True),
            token_file=Path(token_file) if token_file else None,
            models=models,
            units=units,
            caches=self.caches(self.obj(self.get(top, "caches", "", dict, default={}), "caches")),
        )

    def caches(self, spec: Mapping[str, Any]) -> Caches:
        timeout = self.get(spec, "stalledTimeout", "caches", int, default=Caches.stalled_timeout)
        if timeout < 1:
            raise self.fail("caches.stalledTimeout", "must be at least 1 (seconds)")
        return Caches(
            urls=self.strings(spec, "urls", "caches"),
            trusted_public_keys=self.strings(spec, "trustedPublicKeys", "caches"),
            stalled_timeout=timeout,
        )

    def model(self, name: str, spec: Mapping[str, Any]) -> DeclaredModel:
        where = f"models.{_shown(name)}"
        if (why := model_name_problem(name)) is not None:
            raise self.fail(where, f"is not a model name: {why}")
        repo = self.get(spec, "repo", where, str)
        if (why := repo_problem(repo)) is not None:
            raise self.fail(f"{where}.repo", f"is not a repository id: {why}")
        revision = self.get(spec, "revision", where, str)
        if not revision or len(revision) > 256 or any(ord(c) < 0x21 for c in revision):
            raise self.fail(f"{where}.revision", "must be a branch, tag or 40-hex commit")
        triton_name = self.get(spec, "tritonName", where, str, default=None, nullable=True)
        if triton_name is not None and (why := validate_triton_name(triton_name)) is not None:
            raise self.fail(f"{where}.tritonName", f"is not valid: {why}")
        nar_hash = self.get(spec, "narHash", where, str, default=None, nullable=True)
        if nar_hash is not None and (why := nar_hash_problem(nar_hash)) is not None:
            raise self.fail(f"{where}.narHash", f"is not a narHash: {why}")
        engine_defaults = self.get(spec, "engineDefaults", where, dict, default={})
        if not json_depth(engine_defaults):
            raise self.fail(f"{where}.engineDefaults", f"nests deeper than {JSON_MAX_DEPTH}")
        from model_pull.engine_args import validate_engine_args

        try:
            validate_engine_args(engine_defaults)
        except ModelPullError as exc:
            raise self.fail(f"{where}.engineDefaults", f"is refused: {exc}") from None
        return DeclaredModel(
            name=name,
            repo=repo,
            revision=revision,
            include=self.strings(spec, "include", where),
            exclude=self.strings(spec, "exclude", where),
            layout=self.choice(spec, "layout", where, Layout),
            triton_name=triton_name,
            nar_hash=nar_hash,
            engine_defaults=engine_defaults,
            patch_tokenizer=self.get(spec, "patchTokenizer", where, bool, default=False),
            units=self.strings(spec, "units", where),
        )

    def unit(self, name: str, spec: Mapping[str, Any]) -> DeclaredUnit:
        where = f"units.{_shown(name)}"
        if (why := unit_problem(name)) is not None:
            raise self.fail(where, f"is not a unit name: {why}")
        return DeclaredUnit(
            name=name,
            runtime=self.choice(spec, "runtime", where, Runtime),
            models=self.strings(spec, "models", where),
            cuda_capabilities=self.strings(spec, "cudaCapabilities", where),
            on_demand=self.on_demand(spec, where),
        )

    def on_demand(self, spec: Mapping[str, Any], where: str) -> OnDemand | None:
        raw = self.get(spec, "onDemand", where, dict, default=None, nullable=True)
        if raw is None:
            return None
        where = f"{where}.onDemand"
        idle = self.get(raw, "idleTimeout", where, int)
        if idle <= 0:
            raise self.fail(f"{where}.idleTimeout", "must be a positive number of seconds")
        sockets = self.strings(raw, "sockets", where)
        if not sockets or not all(s.endswith(".socket") for s in sockets):
            raise self.fail(f"{where}.sockets", "must name at least one .socket unit")
        return OnDemand(idle_timeout=idle, sockets=sockets)


def _shown(name: str) -> str:
    from model_pull import redact

    return redact.clean(name, 80) if name else "''"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind_name(kind: type, nullable: bool) -> str:
    name = {
        str: "a string",
        int: "an integer",
        bool: "true or false",
        list: "a list",
        dict: "an object",
    }.get(kind, kind.__name__)
    return f"{name} or null" if nullable else name
