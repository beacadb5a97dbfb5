"""What the check reads from a model before any weights are downloaded: `ModelMetadata`.

From a model directory, an entry, a .gguf file (`ModelMetadata.from_directory`), an installed
model by name (`load_target`), or a Hub repository: its listing, its small JSON files and the
first bytes of its GGUF by HTTP range requests (`metadata_from_listing`), never its weights.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_pull import fit, quant
from model_pull.datamodel import ENTRY_MANIFEST, RootPaths
from model_pull.errors import ExitCode, ModelPullError
from model_pull.ggufmeta import GgufInfo, HeaderIncompleteError, read_gguf, read_gguf_header

if TYPE_CHECKING:
    from model_pull import hub as hub_types

logger = logging.getLogger(__name__)

_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the check reads from a model, before any weights are downloaded."""

    description: str
    quantization: quant.Quantization
    architecture: fit.Architecture | None
    weight_bytes: int
    gguf: GgufInfo | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf is not None

    @classmethod
    def from_files(
        cls,
        files: Mapping[str, Any],
        weight_bytes: int,
        *,
        gguf_header: bytes | None = None,
        gguf_size: int | None = None,
        description: str = "",
    ) -> ModelMetadata:
        """From small metadata files' parsed contents ({"config.json": {...},
        "hf_quant_config.json": {...}}), the total weight bytes of the listing, and for a GGUF
        model the first bytes of its (first) file. Raises HeaderIncompleteError(needed) when
        those bytes end before the header does: read more and call again.
        """
        if gguf_header is not None:
            info = read_gguf_header(gguf_header, gguf_size or len(gguf_header))
            return cls.from_gguf(info, weight_bytes, description)
        config = files.get("config.json")
        hqc = files.get("hf_quant_config.json")
        q = quant.detect(
            config if isinstance(config, Mapping) else None,
            hqc if isinstance(hqc, Mapping) else None,
        )
        arch = fit.Architecture.from_hf_config(config) if isinstance(config, Mapping) else None
        return cls(description, q, arch, weight_bytes)

    @classmethod
    def from_gguf(cls, info: GgufInfo, weight_bytes: int, description: str = "") -> ModelMetadata:
        return cls(
            description,
            quant.detect_gguf(info),
            fit.Architecture.from_gguf(info),
            weight_bytes,
            info,
        )

    @classmethod
    def from_directory(cls, path: Path) -> ModelMetadata:
        """A model directory (HF-style), an entry (share/model-pull/manifest.json), a .gguf file,
        or a directory of .gguf files."""
        model = resolve_model_path(path)
        if model.is_file():
            return _from_gguf_files(gguf_set(model), str(path))
        ggufs = _gguf_candidates(model)
        if not (model / "config.json").is_file() and ggufs:
            return _from_gguf_files(_one_gguf_model(ggufs, model), str(path))
        files: dict[str, Any] = {}
        for name in ("config.json", "hf_quant_config.json"):
            if (model / name).is_file():
                files[name] = _load_json(model / name)
        if "config.json" not in files:
            raise ModelPullError(
                ExitCode.BAD_INPUT,
                f"{model} has no config.json and no .gguf",
                hint="point at a Hugging Face model directory, an entry or a GGUF",
            )
        return cls.from_files(files, hf_weight_bytes(model), description=str(path))


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelPullError(ExitCode.BAD_INPUT, f"cannot read {path}: {exc}") from exc


def resolve_model_path(path: Path) -> Path:
    """The directory (or .gguf file) holding the model files, looking inside an entry."""
    if not path.exists():
        raise ModelPullError(ExitCode.BAD_INPUT, f"{path} does not exist")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelPullError(
                ExitCode.BAD_INPUT,
                f"{path} is a file but not a .gguf",
                hint="pass the model directory",
            )
        return path
    if not (path / ENTRY_MANIFEST).is_file():
        return path
    models = path / "share" / "models"
    found = sorted(models.glob("hub/models--*/snapshots/*")) or sorted(
        p for p in models.glob("*/weights") if p.is_dir()
    )
    if (models / "gguf").is_dir():
        found.append(models / "gguf")
    if len(found) != 1:
        raise ModelPullError(
            ExitCode.BAD_INPUT,
            f"entry {path} holds {len(found)} model trees, expected one",
            hint="pass the model directory inside the entry",
        )
    return found[0]


def hf_weight_bytes(model: Path) -> int:
    """Bytes of the weight files; only those the safetensors index names when there is one."""
    index = model / "model.safetensors.index.json"
    if index.is_file():
        names = set(_load_json(index).get("weight_map", {}).values())
        return sum((model / n).stat().st_size for n in names if (model / n).is_file())
    safes = [p for p in model.rglob("*.safetensors") if p.is_file()]
    chosen = safes or [p for p in model.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file()]
    return sum(p.stat().st_size for p in chosen)


def _gguf_candidates(model: Path) -> list[Path]:
    return sorted(
        p for p in model.rglob("*.gguf") if p.is_file() and not p.name.lower().startswith("mmproj")
    )


def gguf_set(file: Path) -> list[Path]:
    """A GGUF file and, for a split model (-00001-of-00003.gguf), all its parts in order."""
    m = _SPLIT.match(file.name)
    if not m:
        return [file]
    total = int(m.group("total"))
    parts = [
        file.with_name(f"{m.group('stem')}-{i:05d}-of-{total:05d}.gguf")
        for i in range(1, total + 1)
    ]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ModelPullError(ExitCode.BAD_INPUT, f"split GGUF is missing {', '.join(missing)}")
    return parts


def _one_gguf_model(files: list[Path], where: Path) -> list[Path]:
    models: dict[str, list[Path]] = {}
    for f in files:
        m = _SPLIT.match(f.name)
        key = str(f.parent / m.group("stem")) if m else str(f)
        models.setdefault(key, []).append(f)
    if len(models) != 1:
        names = ", ".join(sorted(Path(k).name for k in models))
        raise ModelPullError(
            ExitCode.USAGE,
            f"{where} holds several GGUF models: {names}",
            hint="pass the .gguf file to check",
        )
    return gguf_set(sorted(next(iter(models.values())))[0])


def _from_gguf_files(parts: list[Path], description: str) -> ModelMetadata:
    info = read_gguf(parts[0])
    return ModelMetadata.from_gguf(info, sum(p.stat().st_size for p in parts), description)


def load_target(target: str, *, root: Path, revision: str | None = None) -> ModelMetadata:
    """NAME (a model in <root>/models), PATH (directory, entry or .gguf), or REPO (org/name on
    the Hub: metadata files and GGUF headers only, never weights)."""
    path = Path(target)
    if path.exists():
        if revision:
            raise ModelPullError(ExitCode.USAGE, "--revision applies to a Hub repo, not a path")
        return ModelMetadata.from_directory(path)
    named = RootPaths(root).model_link(target)
    if "/" not in target and named.exists():
        meta = ModelMetadata.from_directory(named)
        return ModelMetadata(
            target, meta.quantization, meta.architecture, meta.weight_bytes, meta.gguf
        )
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", target):
        return metadata_from_hub(target, revision)
    raise ModelPullError(
        ExitCode.NOT_INSTALLED,
        f"{target!r} is no path, no model in {root}/models, and no org/name repo",
        hint="pass a model directory, an installed name, or a Hub repo id",
    )


GGUF_HEAD_BYTES = 4 * 1024**2  # first range read; GGUF headers with a big vocabulary need more
GGUF_HEAD_MAX = 256 * 1024**2


def metadata_from_hub(repo: str, revision: str | None) -> ModelMetadata:
    """List the repo, read config.json / hf_quant_config.json, or the first GGUF's header by
    HTTP range requests. No weight bytes are downloaded."""
    from model_pull import hub  # imports huggingface_hub: only for REPO mode

    commit, listing = hub.list_files_with_sizes(repo, revision)
    return metadata_from_listing(repo, commit, listing)


def metadata_from_listing(
    repo: str,
    commit: str,
    listing: Sequence[tuple[str, int]],
    remote: hub_types.Remote | None = None,
) -> ModelMetadata:
    """The metadata of the files `listing` names (path, size) at `commit`, read from the Hub."""
    from model_pull import hub

    desc = f"{repo}@{commit[:12]}"
    sizes = dict(listing)
    if "config.json" not in sizes:
        ggufs = sorted(
            p
            for p in sizes
            if p.endswith(".gguf") and not Path(p).name.lower().startswith("mmproj")
        )
        groups: dict[str, list[str]] = {}
        for p in ggufs:
            m = _SPLIT.match(Path(p).name)
            groups.setdefault(str(Path(p).parent / m.group("stem")) if m else p, []).append(p)
        if len(groups) != 1:
            names = ", ".join(sorted(groups)) or "none"
            raise ModelPullError(
                ExitCode.BAD_INPUT,
                f"{repo} has no config.json and {len(groups)} GGUF models ({names})",
                hint="check a local file, or a repo with one model",
            )
        parts = sorted(next(iter(groups.values())))
        first = parts[0]
        want = min(GGUF_HEAD_BYTES, sizes[first])
        while True:
            head = hub.read_file_head(repo, first, commit, want, remote)
            try:
                return ModelMetadata.from_files(
                    {},
                    sum(sizes[p] for p in parts),
                    gguf_header=head,
                    gguf_size=sizes[first],
                    description=f"{desc}/{first}",
                )
            except HeaderIncompleteError as more:
                if more.needed > GGUF_HEAD_MAX or len(head) >= sizes[first]:
                    raise ModelPullError(
                        ExitCode.BAD_INPUT,
                        f"{first}: GGUF header larger than {GGUF_HEAD_MAX // 1024**2} MiB",
                    ) from more
                want = min(sizes[first], max(more.needed, want * 2))
    files: dict[str, Any] = {}
    for name in ("config.json", "hf_quant_config.json", "model.safetensors.index.json"):
        if name in sizes:
            try:
                files[name] = json.loads(hub.read_small_file(repo, name, commit, remote))
            except ValueError as exc:
                raise ModelPullError(ExitCode.BAD_INPUT, f"{repo}: {name} is not JSON") from exc
    index = files.get("model.safetensors.index.json")
    if isinstance(index, Mapping) and isinstance(index.get("weight_map"), Mapping):
        shards = set(index["weight_map"].values())
        weights = sum(sizes.get(n, 0) for n in shards)
    else:
        safes = [s for p, s in listing if p.endswith(".safetensors")]
        weights = (
            sum(safes) if safes else sum(s for p, s in listing if p.endswith(_WEIGHT_SUFFIXES))
        )
    return ModelMetadata.from_files(files, weights, description=desc)
