"""The data model every command shares, in one place (docs/ARCHITECTURE.md).

- `Layout` (the trees an entry can have) and `Runtime` (the servers that read them);
- `EntrySpec`: everything that decides an entry's bytes, hence its narHash, and nothing else
  (never the model name, never the version of model-pull); `EntryManifest` writes the entry's
  `share/model-pull/manifest.json` from it and reads it back: the one reader and writer;
- `RootPaths`: the names under a state root, and `resolve_root`'s order for finding the root;
- the constants the NixOS modules share with the helper: default paths, environment variables,
  `default_triton_name`.
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NotRequired, TypedDict

# The entry format: the version of the bytes model-pull writes for a declaration. Changed only
# when a layout's bytes change (README.md, "Pins": every narHash changes with it).
ENTRY_FORMAT = 1
ENTRY_MANIFEST = PurePosixPath("share/model-pull/manifest.json")

DEFAULT_ROOT = Path("/var/lib/inference")  # services.inference.root's default
DEFAULT_MANIFEST = Path("/etc/inference/models.json")  # written by the NixOS modules
ROOT_ENV = "MODEL_PULL_ROOT"
MANIFEST_ENV = "MODEL_PULL_MANIFEST"
DEBUG_ENV = "MODEL_PULL_DEBUG"

TRITON_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# A repository id as the Hub allows it (huggingface_hub's validate_repo_id, ASCII only): an
# optional namespace and a name, each 1-96 of [A-Za-z0-9_.-] starting and ending with a letter,
# digit or '_'; no '--' or '..' (the cache's models--org--name must stay unambiguous).
_REPO_PART_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$")
_SRI_RE = re.compile(r"^sha256-[A-Za-z0-9+/]{43}=$")
# A unit model-pull restarts over D-Bus: a systemd service name (systemd.unit(5), "Description").
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]{1,247}\.service$")
JSON_MAX_DEPTH = 32  # nesting of a declared value (engineDefaults); deeper is refused


class Layout(enum.StrEnum):
    DUAL = "dual"  # HF cache tree for vLLM/SGLang + Triton model dir, one copy of the bytes
    SINGLE = "single"  # Triton model dir with weights/ (Triton only)
    HF = "hf"  # HF cache tree only (SGLang, vLLM)
    GGUF = "gguf"  # .gguf files for llama-server

    @property
    def has_triton_dir(self) -> bool:
        return self in (Layout.DUAL, Layout.SINGLE)


class Runtime(enum.Enum):
    LLAMA_SERVER = "llama-server"
    VLLM = "vllm"
    SGLANG = "sglang"
    TRITON = "triton"  # Triton Inference Server with the vLLM backend: vLLM's kernels
    TRTLLM = "trtllm"


def default_triton_name(repo: str) -> str:
    """The Triton model directory when none is declared: the repo's name part, lower case, with
    every character outside [a-z0-9_] turned into '_' (Qwen/Qwen3.5-2B -> qwen3_5_2b).

    nixos/common.nix computes the same default for `tritonName` (tests/test_nixos_eval.py)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", repo.split("/")[-1]).lower()


def by_hash_name(nar_sri: str) -> str:
    """The file name `by-hash/` uses for a narHash (SRI base64 has '/' and '+')."""
    return nar_sri.replace("/", "_").replace("+", "-")


# --- the entry ----------------------------------------------------------------------------


class FileRecord(TypedDict):
    """One file of the model in the entry manifest."""

    path: str  # as in the repository
    size: int
    sha256: str
    patched: NotRequired[str]  # what was rewritten (patchTokenizer); sha256 is the original's


class EntryManifestJson(TypedDict):
    """`share/model-pull/manifest.json`."""

    format: int
    repo: str
    revision: str
    layout: str
    tritonName: str | None
    engineDefaults: dict[str, Any]
    patchTokenizer: bool
    include: list[str]
    exclude: list[str]
    files: list[FileRecord]


class Declaration(TypedDict):
    """A model as `services.inference.models.<name>` declares it, pinned (`prefetch` prints it)."""

    repo: str
    revision: str
    layout: str
    include: list[str]
    exclude: list[str]
    tritonName: str | None
    engineDefaults: dict[str, Any]
    patchTokenizer: bool
    narHash: str


@dataclass(frozen=True)
class EntrySpec:
    """What decides an entry's bytes: repository, commit, layout and the byte-changing options.

    The same spec gives the same bytes and narHash on every machine, under every model name.
    `triton_name` is resolved here: the declared name, else `default_triton_name(repo)`, for the
    layouts with a Triton directory; None for the others.
    """

    repo: str
    revision: str
    layout: Layout
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    triton_name: str | None = None
    engine_defaults: Mapping[str, Any] = field(default_factory=dict)
    patch_tokenizer: bool = False

    def __post_init__(self) -> None:
        triton = (
            (self.triton_name or default_triton_name(self.repo))
            if self.layout.has_triton_dir
            else None
        )
        object.__setattr__(self, "triton_name", triton)
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "engine_defaults", dict(self.engine_defaults))

    @property
    def slug(self) -> str:
        """The repository's directory in a Hugging Face cache: models--org--name."""
        return "models--" + self.repo.replace("/", "--")

    def declaration(self, nar_hash: str) -> Declaration:
        """Every option that changes the entry's bytes, and the narHash they give."""
        return {
            "repo": self.repo,
            "revision": self.revision,
            "layout": str(self.layout),
            "include": list(self.include),
            "exclude": list(self.exclude),
            "tritonName": self.triton_name,
            "engineDefaults": dict(self.engine_defaults),
            "patchTokenizer": self.patch_tokenizer,
            "narHash": nar_hash,
        }

    def file_path(self, rel: str) -> str:
        """Where the repository file `rel` lands inside the entry (relative to the entry)."""
        match self.layout:
            case Layout.DUAL | Layout.HF:
                return f"share/models/hub/{self.slug}/snapshots/{self.revision}/{rel}"
            case Layout.SINGLE:
                return f"share/models/{self.triton_name}/weights/{rel}"
            case Layout.GGUF:
                return f"share/models/gguf/{rel}"


@dataclass(frozen=True)
class EntryManifest:
    """The entry's own description: its spec, its files, and the entry format that built it."""

    spec: EntrySpec
    files: tuple[FileRecord, ...]
    format: int = ENTRY_FORMAT

    def to_json(self) -> EntryManifestJson:
        s = self.spec
        return {
            "format": self.format,
            "repo": s.repo,
            "revision": s.revision,
            "layout": str(s.layout),
            "tritonName": s.triton_name,
            "engineDefaults": dict(s.engine_defaults),
            "patchTokenizer": s.patch_tokenizer,
            "include": list(s.include),
            "exclude": list(s.exclude),
            "files": list(self.files),
        }

    def to_bytes(self) -> bytes:
        """Deterministic: sorted keys, no timestamps, no absolute paths."""
        return json_bytes(self.to_json())

    @classmethod
    def from_json(cls, data: Any) -> EntryManifest:
        """Parse a manifest; ValueError saying what is wrong. Entries made before the format
        was numbered (they name the tool instead) read as format 0."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        fmt = data.get("format", 0)
        files = data.get("files", [])
        if not isinstance(fmt, int) or not isinstance(files, list):
            raise ValueError("'format' or 'files' has the wrong type")
        try:
            spec = EntrySpec(
                repo=_str(data, "repo"),
                revision=_str(data, "revision"),
                layout=Layout(_str(data, "layout")),
                include=_strings(data, "include"),
                exclude=_strings(data, "exclude"),
                triton_name=data.get("tritonName")
                if isinstance(data.get("tritonName"), str)
                else None,
                engine_defaults=_object(data, "engineDefaults"),
                patch_tokenizer=data.get("patchTokenizer", False) is True,
            )
        except KeyError as exc:
            raise ValueError(f"{exc.args[0]!r} is missing or has the wrong type") from None
        return cls(spec, tuple(_file_record(f) for f in files), fmt)

    @classmethod
    def read(cls, entry: Path) -> EntryManifest:
        """The manifest of the entry at `entry`; OSError or ValueError when it cannot be read."""
        return cls.from_json(json.loads((entry / ENTRY_MANIFEST).read_text(encoding="utf-8")))

    def write(self, entry: Path) -> None:
        path = entry / ENTRY_MANIFEST
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())


def json_bytes(data: Any) -> bytes:
    """The bytes of a generated JSON file in an entry: indented, sorted, one final newline."""
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise KeyError(key)
    return value


def _strings(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise KeyError(key)
    return tuple(value)


def _object(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise KeyError(key)
    return value


def _file_record(raw: Any) -> FileRecord:
    if not (
        isinstance(raw, dict)
        and isinstance(raw.get("path"), str)
        and isinstance(raw.get("size"), int)
        and isinstance(raw.get("sha256"), str)
    ):
        raise ValueError(f"bad file record {raw!r}")
    record: FileRecord = {"path": raw["path"], "size": raw["size"], "sha256": raw["sha256"]}
    if isinstance(raw.get("patched"), str):
        record["patched"] = raw["patched"]
    return record


# --- the state root -----------------------------------------------------------------------


class RootPaths:
    """The names under a state root (docs/ARCHITECTURE.md, "The state root")."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = path / "store"  # immutable entries, <hash>-<name>
        self.models = path / "models"  # <name> -> ../store/<hash>-<name>
        self.by_hash = path / "by-hash"  # <narHash> -> ../store/<hash>-<name>, for pins
        self.cache = path / "cache"  # resumable downloads
        self.staging = path / "staging"  # entries being built
        self.state = path / "state"
        self.pulls_log = self.state / "pulls.jsonl"
        self.history_dir = self.state / "history"
        self.entry_records = self.state / "entries"  # <entry>.json: narHash, fingerprint
        self.lock_file = path / "pull.lock"
        self.gcroots = path / "gcroots"  # Nix GC roots of entries imported with --store nix

    def model_link(self, name: str) -> Path:
        return self.models / name

    def pin_link(self, nar_sri: str) -> Path:
        return self.by_hash / by_hash_name(nar_sri)

    def gate(self, name: str, nar_hash: str | None) -> Path:
        """`M` of docs/ARCHITECTURE.md: where a declared model's units look for it."""
        return self.pin_link(nar_hash) if nar_hash else self.model_link(name)


def resolve_root(option: str | Path | None, manifest_root: Callable[[], Path | None]) -> Path:
    """The state root of every command: --root, then $MODEL_PULL_ROOT, then the root the NixOS
    manifest declares (`manifest_root()`, read only when needed), then /var/lib/inference.
    An empty or relative root is refused, naming where it came from."""
    from model_pull.errors import ExitCode, ModelPullError

    def refuse(where: str, why: str) -> ModelPullError:
        return ModelPullError(
            ExitCode.USAGE,
            f"{where} cannot be the state root: {why}",
            hint="give an absolute path, e.g. /var/lib/inference",
        )

    if option is not None:
        if (why := root_problem(str(option))) is not None:
            raise refuse(f"--root {str(option)!r}", why)
        return Path(option)
    env = os.environ.get(ROOT_ENV)
    if env is not None:
        if (why := root_problem(env)) is not None:
            raise refuse(f"{ROOT_ENV}={env!r}", why)
        return Path(env)
    return manifest_root() or DEFAULT_ROOT


def manifest_path() -> Path:
    """Where the NixOS manifest is: $MODEL_PULL_MANIFEST, else /etc/inference/models.json."""
    return Path(os.environ.get(MANIFEST_ENV) or DEFAULT_MANIFEST)


def repo_problem(repo: str) -> str | None:
    """Why `repo` is not a Hub repository id (org/name), or None."""
    parts = repo.split("/")
    if len(parts) > 2:
        return "it has more than one '/'"
    if not all(_REPO_PART_RE.match(p) for p in parts):
        return "use org/name, each 1-96 letters, digits, '-', '_' or '.'"
    if "--" in repo or ".." in repo:
        return "'--' and '..' are not allowed"
    return None


def nar_hash_problem(value: str) -> str | None:
    """Why `value` is not a narHash in SRI form (sha256-<44 base64 characters>), or None."""
    import base64
    import binascii

    if not _SRI_RE.match(value):
        return "a narHash looks like sha256-<44 base64 characters> (model-pull prefetch prints it)"
    try:
        digest = base64.b64decode(value[len("sha256-") :], validate=True)
    except binascii.Error:
        return "its base64 does not decode"
    return None if len(digest) == 32 else "it is not 32 bytes of SHA-256"


def model_name_problem(name: str) -> str | None:
    """Why `name` cannot be a model name (a Nix store name: models/NAME, store/<hash>-NAME)."""
    from model_pull.hashing import valid_store_name

    if valid_store_name(name):
        return None
    return "use 1-211 letters, digits and + - . _ ? =, not starting with '.'"


def unit_problem(unit: str) -> str | None:
    """Why `unit` is not the name of a systemd service model-pull may restart, or None."""
    return None if _UNIT_RE.match(unit) else "a unit is NAME.service (systemd.unit(5))"


def root_problem(raw: str) -> str | None:
    """Why `raw` cannot be a state root, or None: it must be a non-empty absolute path."""
    if not raw:
        return "it is empty"
    if "\0" in raw or any(ord(c) < 0x20 for c in raw):
        return "it has control characters"
    if not raw.startswith("/"):
        return "it is not an absolute path"
    return None


def json_depth(value: Any, limit: int = JSON_MAX_DEPTH) -> bool:
    """Whether `value` (parsed JSON) nests at most `limit` levels."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def validate_triton_name(name: str) -> str | None:
    """Why `name` cannot be a Triton model directory, or None."""
    return None if TRITON_NAME_RE.match(name) else "use letters, digits, '_', '.', '-'"


def files_total(files: Sequence[FileRecord]) -> int:
    return sum(f["size"] for f in files)
