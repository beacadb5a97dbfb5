"""Will this model run on this GPU, with this runtime build, in this much memory?

`preflight()` is a pure function from stated facts (model metadata, runtime, GPU facts, build SMs,
context, parallel) to a `Report`; it never touches NVML or the network. `gather_gpus()` and
`unit_facts_from_manifest()` gather the machine's facts; metadata.py reads the model's;
`Gate` joins them for a pull. render.py turns a Report into text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from model_pull import compat, fit, gpu, quant
from model_pull.compat import PackageArch, Support
from model_pull.datamodel import Runtime
from model_pull.errors import ExitCode, ModelPullError
from model_pull.gpu import GpuFacts
from model_pull.metadata import ModelMetadata, metadata_from_listing
from model_pull.output import CheckJson, GpuVerdictJson

if TYPE_CHECKING:
    from model_pull import hub as hub_types

logger = logging.getLogger(__name__)

FALLBACK_CONTEXT = 4096


# --- the machine's facts -------------------------------------------------------------------------


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
        raise ModelPullError(
            ExitCode.USAGE,
            f"bad --package-sm {text!r}: {exc}",
            hint="write e.g. 8.9,9.0 (nixpkgs cudaCapabilities)",
        ) from exc


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
        return {
            "gpu": self.gpu.to_json(),
            "verdict": str(self.support),
            "reason": self.how,
            "source": self.source,
            "build": self.build,
            "memory": self.fit.to_json(),
        }


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
            return ModelPullError(
                code,
                f"no GPU information: {self.gpu_problem or 'none given'}",
                hint="plan for a GPU with --gpu, e.g. --gpu L4 or --gpu 8.9:24GiB",
            )
        if code is ExitCode.DOES_NOT_FIT:
            t = self.tightest
            assert t is not None
            f = t.fit
            return ModelPullError(
                code,
                f"{self.model} does not fit {t.gpu.name}: it needs "
                f"{gib(f.weights + f.kv_cache + f.overhead)}, {gib(f.available)} are available",
                hint="the report says what fits: a shorter --context, fewer --parallel "
                "sequences, a smaller KV cache type, or a bigger GPU",
            )
        worst = max(self.gpus, key=lambda g: g.support)
        return ModelPullError(
            code,
            f"{self.model} with {self.runtime.value} on {worst.gpu.name} "
            f"(SM {worst.gpu.sm}): {worst.support}: {worst.how}",
            hint="--strict accepts native verdicts only"
            if strict
            else "see the report for the reasons and their sources",
        )

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


def gib(n: float) -> str:
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
        kv_name, kv_elem = "fp8", 1.0  # hf_quant_config.json's kv_cache_quant_algo
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
        notes.append(
            f"context {ctx} = "
            + ("the model's maximum" if model_max else "a default (the metadata states no maximum)")
        )
    if parallel is None:
        notes.append(f"parallel {n_par} = {rt.value}'s default")
    if context and model_max and context > model_max:
        notes.append(f"context {context} exceeds the model's maximum {model_max}")
    if rt is Runtime.LLAMA_SERVER and kv_name.startswith(("q", "iq")):
        notes.append("a quantized V cache needs flash attention in llama-server (-fa on)")
    if q.kv_cache and rt in compat.VLLM_KERNELS and kv_cache_dtype is None:
        notes.append(
            f"the checkpoint declares a {q.kv_cache} KV cache; planned at {kv_name} "
            "(vLLM and SGLang serve modelopt checkpoints without it unless "
            f"--kv-cache-dtype fp8: {compat.MODELOPT_DEPLOY})"
        )
    notes.append(
        f"overhead {gib(mem.overhead)}: {mem.overhead_source}; "
        f"memory share {mem.fraction:g}: {mem.fraction_source}"
    )

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
                verdicts.append(
                    _verdict(
                        g,
                        Support.UNSUPPORTED,
                        c.how,
                        compat.CUDA_GUIDE,
                        build,
                        meta,
                        rt,
                        ctx,
                        n_par,
                        kv_elem,
                        kv_name,
                        model_max,
                    )
                )
                reasons.append(f"{label}: unsupported: {c.how}")
                continue
            code_sm = c.sm
        d = compat.decide(rt, q.method, q.scheme, q.algo, code_sm)
        how = d.how if code_sm == g.sm else f"{d.how} [code built for SM {code_sm}]"
        v = _verdict(
            g, d.support, how, d.source, build, meta, rt, ctx, n_par, kv_elem, kv_name, model_max
        )
        verdicts.append(v)
        reasons.append(f"{label}: {d.support}: {how} ({d.source})")
        if build and code_sm != g.sm:
            reasons.append(f"{label}: {build}")
        reasons.extend(_fit_reasons(label, v.fit, g, rt))
    if not verdicts:
        reasons.append(
            f"no GPU information: {gpu_problem or 'none given'}; "
            "plan for a GPU with --gpu (e.g. --gpu L4 or --gpu 8.9:24GiB)"
        )
    return Report(
        meta.description,
        rt,
        q,
        arch,
        meta.weight_bytes,
        tuple(verdicts),
        gpu_problem,
        tuple(reasons),
        tuple(notes),
    )


def _verdict(
    g: GpuFacts,
    support: Support,
    how: str,
    source: str,
    build: str | None,
    meta: ModelMetadata,
    rt: Runtime,
    ctx: int,
    n_par: int,
    kv_elem: float,
    kv_name: str,
    model_max: int | None,
) -> GpuVerdict:
    avail = fit.available_bytes(rt, g.total_bytes, g.free_bytes)
    f = fit.estimate(
        meta.architecture,
        meta.weight_bytes,
        rt,
        avail,
        context=ctx,
        parallel=n_par,
        kv_per_element=kv_elem,
        kv_dtype=kv_name,
        model_max_context=model_max,
    )
    return GpuVerdict(g, support, how, source, build, f)


def _fit_reasons(label: str, f: fit.Fit, g: GpuFacts, rt: Runtime) -> list[str]:
    out: list[str] = []
    need = f.weights + f.kv_cache + f.overhead
    share = int(g.total_bytes * fit.RUNTIME_MEMORY[rt].fraction)
    if g.free_bytes is not None and f.available < share:
        out.append(f"{label}: only {gib(g.free_bytes)} free now (other processes hold the rest)")
    if f.fits:
        return out
    out.append(
        f"{label}: does not fit: weights {gib(f.weights)} + KV cache {gib(f.kv_cache)} "
        f"({f.context} tokens x {f.parallel} sequences, {f.kv_dtype}) + overhead "
        f"{gib(f.overhead)} = {gib(need)} > {gib(f.available)} available"
    )
    if f.max_context > 0:
        out.append(
            f"{label}: the largest context that fits with --parallel {f.parallel} is "
            f"{f.max_context}"
        )
        if f.parallel > 1 and f.weights + f.overhead + f.kv_cache // f.parallel <= f.available:
            out.append(
                f"{label}: --parallel {f.parallel} multiplies the KV cache by {f.parallel}; "
                f"--parallel 1 fits at context {f.context}"
            )
    elif f.weights + f.overhead > f.available:
        out.append(
            f"{label}: the weights and overhead alone exceed the memory: a smaller "
            "quantization or a bigger GPU is needed"
        )
    return out


@dataclass(frozen=True)
class Gate:
    """The GPU check a pull runs before it installs weights: from the Hub's metadata before the
    first weight byte (`listing`), or from the tree a binary cache delivered (`tree`), which
    never went through the first.

    Refuses an unsupported or non-fitting model (its own exit code) unless `force`; with no GPU
    information (a build host) or metadata it cannot read, it warns and lets the pull go on.
    """

    repo: str
    warn: Callable[[str], None]
    remote: hub_types.Remote | None = None
    runtime: Runtime | None = None
    gpu_specs: Sequence[str] = ()
    package_arches: Sequence[PackageArch] = ()
    force: bool = False

    def listing(self, commit: str, files: Sequence[hub_types.RemoteFile]) -> Report | None:
        """Before the download: the metadata files of the chosen `files`, read from the Hub."""
        listing = [(f.path, f.size) for f in files]
        return self._decide(lambda: metadata_from_listing(self.repo, commit, listing, self.remote))

    def tree(self, tree: Path) -> Report | None:
        """Before installing a substituted entry: its own metadata files."""
        return self._decide(lambda: ModelMetadata.from_directory(tree))

    def _decide(self, read: Callable[[], ModelMetadata]) -> Report | None:
        try:
            meta = read()
        except ModelPullError as exc:
            if exc.code is not ExitCode.BAD_INPUT:
                raise
            self.warn(f"not checked against the GPU: {exc.message}")
            return None
        gpus, problem = gather_gpus(self.gpu_specs)
        report = preflight(
            meta, self.runtime, gpus, gpu_problem=problem, package_arches=self.package_arches
        )
        code = report.exit_code()
        if code is ExitCode.NO_GPU_INFO:
            self.warn(
                f"{problem or 'no GPU information'}: packaging without a GPU check "
                "(plan for the target with model-pull check --gpu)"
            )
        elif code in (ExitCode.UNSUPPORTED, ExitCode.DOES_NOT_FIT):
            reasons = "; ".join(report.reasons[:2]) if report.reasons else str(report.verdict)
            if self.force:
                self.warn(f"{self.repo}: {reasons} (pulling anyway: --force)")
            else:
                raise ModelPullError(
                    code,
                    f"{self.repo}: {reasons}",
                    hint="see model-pull check; --force pulls anyway",
                )
        return report
