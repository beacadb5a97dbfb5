"""Will this model run on this GPU, with this runtime build, in this much memory?

`preflight()` is a pure function from stated facts (model metadata, runtime, GPU facts, build SMs,
context, parallel) to a `Report`; it never touches NVML or the network. The functions around it
gather the facts: `ModelMetadata.from_directory()` / `.from_files()`, `gather_gpus()`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_pull import compat, fit, gpu, quant
from model_pull.compat import PackageArch, Support
from model_pull.datamodel import ENTRY_MANIFEST, RootPaths, Runtime
from model_pull.errors import ExitCode, ModelPullError
from model_pull.ggufmeta import GgufInfo, HeaderIncompleteError, read_gguf, read_gguf_header
from model_pull.gpu import GpuFacts
from model_pull.output import CheckJson, GpuVerdictJson

if TYPE_CHECKING:
    from model_pull import hub as hub_types

logger = logging.getLogger(__name__)

FALLBACK_CONTEXT = 4096
_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


# --- the model's metadata ----------------------------------------------------------------------


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
        cls, files: Mapping[str, Any], weight_bytes: int, *, gguf_header: bytes | None = None,
        gguf_size: int | None = None, description: str = "",
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
        q = quant.detect(config if isinstance(config, Mapping) else None,
                         hqc if isinstance(hqc, Mapping) else None)
        arch = fit.Architecture.from_hf_config(config) if isinstance(config, Mapping) else None
        return cls(description, q, arch, weight_bytes)

    @classmethod
    def from_gguf(cls, info: GgufInfo, weight_bytes: int, description: str = "") -> ModelMetadata:
        return cls(description, quant.detect_gguf(info), fit.Architecture.from_gguf(info),
                   weight_bytes, info)

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
            raise ModelPullError(ExitCode.BAD_INPUT, f"{model} has no config.json and no .gguf",
                                 hint="point at a Hugging Face model directory, an entry or a GGUF")
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
            raise ModelPullError(ExitCode.BAD_INPUT, f"{path} is a file but not a .gguf",
                                 hint="pass the model directory")
        return path
    if not (path / ENTRY_MANIFEST).is_file():
        return path
    models = path / "share" / "models"
    found = sorted(models.glob("hub/models--*/snapshots/*")) or sorted(
        p for p in models.glob("*/weights") if p.is_dir())
    if (models / "gguf").is_dir():
        found.append(models / "gguf")
    if len(found) != 1:
        raise ModelPullError(ExitCode.BAD_INPUT,
                             f"entry {path} holds {len(found)} model trees, expected one",
                             hint="pass the model directory inside the entry")
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
    return sorted(p for p in model.rglob("*.gguf")
                  if p.is_file() and not p.name.lower().startswith("mmproj"))


def gguf_set(file: Path) -> list[Path]:
    """A GGUF file and, for a split model (-00001-of-00003.gguf), all its parts in order."""
    m = _SPLIT.match(file.name)
    if not m:
        return [file]
    total = int(m.group("total"))
    parts = [file.with_name(f"{m.group('stem')}-{i:05d}-of-{total:05d}.gguf")
             for i in range(1, total + 1)]
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
        raise ModelPullError(ExitCode.USAGE, f"{where} holds several GGUF models: {names}",
                             hint="pass the .gguf file to check")
    return gguf_set(sorted(next(iter(models.values())))[0])


def _from_gguf_files(parts: list[Path], description: str) -> ModelMetadata:
    info = read_gguf(parts[0])
    return ModelMetadata.from_gguf(info, sum(p.stat().st_size for p in parts), description)


# --- GPU facts ---------------------------------------------------------------------------------


def gather_gpus(specs: Sequence[str]) -> tuple[tuple[GpuFacts, ...], str | None]:
    """Planned GPUs from `--gpu` specs, else this machine's GPUs from NVML (or why none)."""
    if specs:
        return tuple(gpu.parse_spec(s) for s in specs), None
    reading = gpu.read_nvml()
    return reading.gpus, reading.problem


def parse_package_sms(text: str) -> tuple[PackageArch, ...]:
    try:
        return tuple(PackageArch.parse(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise ModelPullError(ExitCode.USAGE, f"bad --package-sm {text!r}: {exc}",
                             hint="write e.g. 8.9,9.0 (nixpkgs cudaCapabilities)") from exc


@dataclass(frozen=True)
class UnitFacts:
    runtime: Runtime | None
    arches: tuple[PackageArch, ...]
    unit: str


def unit_facts_from_manifest(name: str, runtime: Runtime | None) -> UnitFacts | None:
    """The runtime and cudaCapabilities of the unit that serves model `name`, from the NixOS
    manifest (manifest.Manifest). None on a machine without one, or when no unit serves it."""
    from model_pull.manifest import Manifest

    manifest = Manifest.load_optional()
    unit = manifest.unit_serving(name, runtime) if manifest else None
    if unit is None:
        return None
    return UnitFacts(unit.runtime, parse_package_sms(",".join(unit.cuda_capabilities)), unit.name)


# --- the decision ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuVerdict:
    gpu: GpuFacts
    support: Support
    how: str
    source: str
    build: str | None  # how the runtime build's code reaches this GPU (with --package-sm)
    fit: fit.Fit

    def to_json(self) -> GpuVerdictJson:
        return {"gpu": self.gpu.to_json(), "verdict": str(self.support), "reason": self.how,
                "source": self.source, "build": self.build, "memory": self.fit.to_json()}


@dataclass(frozen=True)
class Report:
    model: str
    runtime: Runtime
    quantization: quant.Quantization
    architecture: fit.Architecture | None
    weight_bytes: int
    gpus: tuple[GpuVerdict, ...]
    gpu_problem: str | None
    reasons: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def verdict(self) -> Support | None:
        """The worst verdict over the GPUs (a unit may land on any of them); None: no GPU info."""
        return max((g.support for g in self.gpus), default=None)

    @property
    def tightest(self) -> GpuVerdict | None:
        return min(self.gpus, key=lambda g: g.fit.headroom, default=None)

    @property
    def fits(self) -> bool | None:
        t = self.tightest
        return None if t is None else t.fit.fits

    def exit_code(self, strict: bool = False) -> ExitCode:
        v = self.verdict
        if v is None:
            return ExitCode.NO_GPU_INFO
        if v is Support.UNSUPPORTED or (strict and v is Support.UNKNOWN):
            return ExitCode.UNSUPPORTED
        if not self.fits:
            return ExitCode.DOES_NOT_FIT
        if strict and v is Support.EMULATED:
            return ExitCode.EMULATED
        return ExitCode.OK

    def failure(self, strict: bool = False) -> ModelPullError | None:
        """The one-line error for a verdict that fails (exit_code), or None."""
        code = self.exit_code(strict)
        if code is ExitCode.OK:
            return None
        if code is ExitCode.NO_GPU_INFO:
            return ModelPullError(code, f"no GPU information: {self.gpu_problem or 'none given'}",
                                  hint="plan for a GPU with --gpu, e.g. --gpu L4 or "
                                  "--gpu 8.9:24GiB")
        if code is ExitCode.DOES_NOT_FIT:
            t = self.tightest
            assert t is not None
            f = t.fit
            return ModelPullError(
                code, f"{self.model} does not fit {t.gpu.name}: it needs "
                f"{_gib(f.weights + f.kv_cache + f.overhead)}, {_gib(f.available)} are available",
                hint="the report says what fits: a shorter --context, fewer --parallel "
                "sequences, a smaller KV cache type, or a bigger GPU")
        worst = max(self.gpus, key=lambda g: g.support)
        return ModelPullError(
            code, f"{self.model} with {self.runtime.value} on {worst.gpu.name} "
            f"(SM {worst.gpu.sm}): {worst.support}: {worst.how}",
            hint="--strict accepts native verdicts only" if strict else
            "see the report for the reasons and their sources")

    def to_json(self) -> CheckJson:
        t = self.tightest
        v = self.verdict
        return {
            "model": self.model,
            "runtime": self.runtime.value,
            "gpus": [g.to_json() for g in self.gpus],
            "gpuProblem": self.gpu_problem,
            "quantization": self.quantization.to_json(),
            "architecture": self.architecture.to_json() if self.architecture else None,
            "verdict": str(v) if v is not None else None,
            "fits": self.fits,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "memory": t.fit.to_json() if t else {"weights": self.weight_bytes},
        }


def default_runtime(meta: ModelMetadata) -> Runtime:
    return Runtime.LLAMA_SERVER if meta.is_gguf else Runtime.VLLM


def _gib(n: float) -> str:
    return f"{n / fit.GIB:.2f} GiB"


def preflight(
    meta: ModelMetadata,
    runtime: Runtime | None = None,
    gpus: Sequence[GpuFacts] | None = None,
    *,
    gpu_problem: str | None = None,
    package_arches: Sequence[PackageArch] = (),
    forward_compat: bool = True,
    context: int | None = None,
    parallel: int | None = None,
    kv_cache_dtype: str | None = None,
) -> Report:
    """The verdict for `meta` served by `runtime` on each of `gpus`. Pure: no NVML, no network."""
    rt = runtime or default_runtime(meta)
    mem = fit.RUNTIME_MEMORY[rt]
    q = meta.quantization
    kv_name, kv_elem = fit.kv_bytes_per_element(rt, kv_cache_dtype)
    if kv_cache_dtype is None and rt is Runtime.TRTLLM and q.kv_cache == "fp8":
        kv_name, kv_elem = "fp8", 1.0  # the checkpoint's kv_cache_quant_algo (seed 001)
    n_par = parallel if parallel is not None else mem.default_parallel
    if n_par < 1 or (context is not None and context < 1):
        raise ModelPullError(ExitCode.USAGE, "--context and --parallel must be at least 1")
    arch = meta.architecture
    model_max = arch.max_context if arch else None
    ctx = context or model_max or FALLBACK_CONTEXT

    notes: list[str] = []
    if runtime is None:
        notes.append(f"runtime: {rt.value} (default for this format; --runtime to choose)")
    if arch is None:
        notes.append("no attention shape in the metadata: KV cache not counted")
    if context is None:
        notes.append(f"context {ctx} = " + ("the model's maximum" if model_max else
                                            "a default (the metadata states no maximum)"))
    if parallel is None:
        notes.append(f"parallel {n_par} = {rt.value}'s default")
    if context and model_max and context > model_max:
        notes.append(f"context {context} exceeds the model's maximum {model_max}")
    if rt is Runtime.LLAMA_SERVER and kv_name.startswith(("q", "iq")):
        notes.append("a quantized V cache needs flash attention in llama-server (-fa on)")
    if q.kv_cache and rt in compat.VLLM_KERNELS and kv_cache_dtype is None:
        notes.append(f"the checkpoint declares a {q.kv_cache} KV cache; planned at {kv_name} "
                     "(seed 002: vLLM/SGLang serve modelopt models without it unless "
                     "--kv-cache-dtype fp8)")
    notes.append(f"overhead {_gib(mem.overhead)}: {mem.overhead_source}; "
                 f"memory share {mem.fraction:g}: {mem.fraction_source}")

    verdicts: list[GpuVerdict] = []
    reasons: list[str] = []
    for g in gpus or ():
        label = f"GPU {g.index}" if g.index is not None else g.name
        label = f"{label} ({g.name}, SM {g.sm})" if g.index is not None else f"{label} (SM {g.sm})"
        build = None
        code_sm = g.sm
        if package_arches:
            c = compat.code_sm(g.sm, tuple(package_arches), forward_compat)
            build = c.how
            if c.sm is None:
                verdicts.append(_verdict(g, Support.UNSUPPORTED, c.how, "seed 004", build, meta, rt,
                                         ctx, n_par, kv_elem, kv_name, model_max))
                reasons.append(f"{label}: unsupported: {c.how}")
                continue
            code_sm = c.sm
        d = compat.decide(rt, q.method, q.scheme, q.algo, code_sm)
        how = d.how if code_sm == g.sm else f"{d.how} [code built for SM {code_sm}]"
        v = _verdict(g, d.support, how, d.source, build, meta, rt, ctx, n_par, kv_elem, kv_name,
                     model_max)
        verdicts.append(v)
        reasons.append(f"{label}: {d.support}: {how} ({d.source})")
        if build and code_sm != g.sm:
            reasons.append(f"{label}: {build}")
        reasons.extend(_fit_reasons(label, v.fit, g, rt))
    if not verdicts:
        reasons.append(f"no GPU information: {gpu_problem or 'none given'}; "
                       "plan for a GPU with --gpu (e.g. --gpu L4 or --gpu 8.9:24GiB)")
    return Report(meta.description, rt, q, arch, meta.weight_bytes, tuple(verdicts),
                  gpu_problem, tuple(reasons), tuple(notes))


def _verdict(g: GpuFacts, support: Support, how: str, source: str, build: str | None,
             meta: ModelMetadata, rt: Runtime, ctx: int, n_par: int, kv_elem: float,
             kv_name: str, model_max: int | None) -> GpuVerdict:
    avail = fit.available_bytes(rt, g.total_bytes, g.free_bytes)
    f = fit.estimate(meta.architecture, meta.weight_bytes, rt, avail, context=ctx,
                     parallel=n_par, kv_per_element=kv_elem, kv_dtype=kv_name,
                     model_max_context=model_max)
    return GpuVerdict(g, support, how, source, build, f)


def _fit_reasons(label: str, f: fit.Fit, g: GpuFacts, rt: Runtime) -> list[str]:
    out: list[str] = []
    need = f.weights + f.kv_cache + f.overhead
    share = int(g.total_bytes * fit.RUNTIME_MEMORY[rt].fraction)
    if g.free_bytes is not None and f.available < share:
        out.append(f"{label}: only {_gib(g.free_bytes)} free now (other processes hold the rest)")
    if f.fits:
        return out
    out.append(f"{label}: does not fit: weights {_gib(f.weights)} + KV cache {_gib(f.kv_cache)} "
               f"({f.context} tokens x {f.parallel} sequences, {f.kv_dtype}) + overhead "
               f"{_gib(f.overhead)} = {_gib(need)} > {_gib(f.available)} available")
    if f.max_context > 0:
        out.append(f"{label}: the largest context that fits with --parallel {f.parallel} is "
                   f"{f.max_context}")
        if f.parallel > 1 and f.weights + f.overhead + f.kv_cache // f.parallel <= f.available:
            out.append(f"{label}: --parallel {f.parallel} multiplies the KV cache by {f.parallel}; "
                       f"--parallel 1 fits at context {f.context}")
    elif f.weights + f.overhead > f.available:
        out.append(f"{label}: the weights and overhead alone exceed the memory: a smaller "
                   "quantization or a bigger GPU is needed")
    return out


# --- human output ------------------------------------------------------------------------------


def render_text(report: Report) -> str:
    q = report.quantization
    lines = [f"model    {report.model}",
             f"runtime  {report.runtime.value}",
             f"quant    {q.scheme.value} ({q.method.value}: {q.algo}; from {q.source})"
             + (f", KV {q.kv_cache}" if q.kv_cache else "")]
    if q.scheme is quant.Scheme.UNKNOWN:
        lines.append(f"         unknown: {dict(q.details).get('why', '')}")
    lines.append(f"weights  {_gib(report.weight_bytes)}")
    if report.gpus:
        head = f"{'GPU':<22} {'SM':>5} {'verdict':<11} {'memory':>10} {'needed':>10} " \
               f"{'headroom':>10} {'max ctx':>8}"
        lines += ["", head, "-" * len(head)]
        for v in report.gpus:
            f = v.fit
            name = (f"{v.gpu.index}: " if v.gpu.index is not None else "") + v.gpu.name
            lines.append(f"{name[:22]:<22} {v.gpu.sm!s:>5} {v.support!s:<11} "
                         f"{_gib(f.available):>10} {_gib(f.weights + f.kv_cache + f.overhead):>10} "
                         f"{_gib(f.headroom):>10} {f.max_context:>8}")
        t = report.tightest
        assert t is not None
        f = t.fit
        lines.append(f"(context {f.context} x parallel {f.parallel}, KV {f.kv_dtype}: "
                     f"KV cache {_gib(f.kv_cache)}, overhead {_gib(f.overhead)})")
    lines.append("")
    lines += [f"- {r}" for r in report.reasons]
    lines += [f"  note: {n}" for n in report.notes]
    overall = report.verdict
    verdict = str(overall) if overall is not None else "no GPU information"
    fits = "" if report.fits is None else (", fits" if report.fits else ", DOES NOT FIT")
    lines.append(f"verdict: {verdict}{fits}")
    return "\n".join(lines)


# --- what the user named -----------------------------------------------------------------------


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
        return ModelMetadata(target, meta.quantization, meta.architecture, meta.weight_bytes,
                             meta.gguf)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", target):
        return metadata_from_hub(target, revision)
    raise ModelPullError(ExitCode.NOT_INSTALLED,
                         f"{target!r} is no path, no model in {root}/models, and no org/name repo",
                         hint="pass a model directory, an installed name, or a Hub repo id")


GGUF_HEAD_BYTES = 4 * 1024**2  # first range read; GGUF headers with a big vocabulary need more
GGUF_HEAD_MAX = 256 * 1024**2


def metadata_from_hub(repo: str, revision: str | None) -> ModelMetadata:
    """List the repo, read config.json / hf_quant_config.json, or the first GGUF's header by
    HTTP range requests. No weight bytes are downloaded."""
    from model_pull import hub  # imports huggingface_hub: only for REPO mode

    commit, listing = hub.list_files_with_sizes(repo, revision)
    return metadata_from_listing(repo, commit, listing)


def metadata_from_listing(repo: str, commit: str, listing: Sequence[tuple[str, int]],
                          remote: hub_types.Remote | None = None) -> ModelMetadata:
    """The metadata of the files `listing` names (path, size) at `commit`, read from the Hub."""
    from model_pull import hub

    desc = f"{repo}@{commit[:12]}"
    sizes = dict(listing)
    if "config.json" not in sizes:
        ggufs = sorted(p for p in sizes if p.endswith(".gguf")
                       and not Path(p).name.lower().startswith("mmproj"))
        groups: dict[str, list[str]] = {}
        for p in ggufs:
            m = _SPLIT.match(Path(p).name)
            groups.setdefault(str(Path(p).parent / m.group("stem")) if m else p, []).append(p)
        if len(groups) != 1:
            names = ", ".join(sorted(groups)) or "none"
            raise ModelPullError(ExitCode.BAD_INPUT,
                                 f"{repo} has no config.json and {len(groups)} GGUF models "
                                 f"({names})", hint="check a local file, or a repo with one model")
        parts = sorted(next(iter(groups.values())))
        first = parts[0]
        want = min(GGUF_HEAD_BYTES, sizes[first])
        while True:
            head = hub.read_file_head(repo, first, commit, want, remote)
            try:
                return ModelMetadata.from_files({}, sum(sizes[p] for p in parts),
                                                gguf_header=head, gguf_size=sizes[first],
                                                description=f"{desc}/{first}")
            except HeaderIncompleteError as more:
                if more.needed > GGUF_HEAD_MAX or len(head) >= sizes[first]:
                    raise ModelPullError(ExitCode.BAD_INPUT,
                                         f"{first}: GGUF header larger than "
                                         f"{GGUF_HEAD_MAX // 1024**2} MiB") from more
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
        weights = sum(safes) if safes else sum(s for p, s in listing
                                               if p.endswith(_WEIGHT_SUFFIXES))
    return ModelMetadata.from_files(files, weights, description=desc)


def gate_fetch(
    repo: str, commit: str, listing: Sequence[tuple[str, int]], *,
    remote: hub_types.Remote | None = None, runtime: Runtime | None = None,
    gpu_specs: Sequence[str] = (), package_arches: Sequence[PackageArch] = (),
    force: bool = False, warn: Callable[[str], None],
) -> Report | None:
    """The check `fetch` runs before downloading weights, from metadata only.

    Refuses an unsupported or non-fitting model (its own exit code) unless `force`; with no GPU
    information (a build host) or metadata it cannot read, it warns and lets the pull go on.
    """
    try:
        meta = metadata_from_listing(repo, commit, listing, remote)
    except ModelPullError as exc:
        if exc.code is not ExitCode.BAD_INPUT:
            raise
        warn(f"not checked against the GPU: {exc.message}")
        return None
    gpus, problem = gather_gpus(gpu_specs)
    report = preflight(meta, runtime, gpus, gpu_problem=problem, package_arches=package_arches)
    code = report.exit_code()
    if code is ExitCode.NO_GPU_INFO:
        warn(f"{problem or 'no GPU information'}: packaging without a GPU check "
             "(plan for the target with model-pull check --gpu)")
    elif code in (ExitCode.UNSUPPORTED, ExitCode.DOES_NOT_FIT):
        reasons = "; ".join(report.reasons[:2]) if report.reasons else str(report.verdict)
        if force:
            warn(f"{repo}: {reasons} (pulling anyway: --force)")
        else:
            raise ModelPullError(code, f"{repo}: {reasons}",
                                 hint="see model-pull check; --force pulls anyway")
    return report
