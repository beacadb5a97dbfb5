"""GPU facts: read from NVML (pynvml), or stated with `--gpu SPEC` for another machine.

The decision logic never calls NVML: it takes `GpuFacts` values. `read_nvml()` is the only code
that touches the driver, and it turns every NVML failure into one plain sentence.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from model_pull.errors import ExitCode, ModelPullError
from model_pull.output import GpuJson

logger = logging.getLogger(__name__)

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True, order=True)
class Sm:
    """A CUDA compute capability, e.g. 8.9 (SM89)."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @classmethod
    def parse(cls, text: str) -> Sm:
        """'8.9', '89', 'sm_89', 'sm89', '10.0', '100', '12.0', '120'."""
        t = text.strip().lower().removeprefix("sm_").removeprefix("sm")
        m = re.fullmatch(r"(\d+)\.(\d)", t) or re.fullmatch(r"(\d+)(\d)", t)
        if not m:
            raise ValueError(f"not a compute capability: {text!r} (write e.g. 8.9 or sm_89)")
        return cls(int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True)
class GpuFacts:
    """What the check needs to know about one GPU."""

    name: str
    sm: Sm
    total_bytes: int
    free_bytes: int | None = None  # only NVML knows it
    driver: str | None = None
    index: int | None = None
    source: str = "spec"  # "nvml" or "spec"

    def to_json(self) -> GpuJson:
        return {
            "index": self.index,
            "name": self.name,
            "sm": str(self.sm),
            "totalBytes": self.total_bytes,
            "freeBytes": self.free_bytes,
            "driver": self.driver,
            "source": self.source,
        }


@dataclass(frozen=True)
class KnownGpu:
    name: str
    sm: Sm
    total_mib: int


# Known cards for `--gpu NAME`. SM from NVIDIA's CUDA GPU list (https://developer.nvidia.com/cuda-gpus;
# the L40S is Ada, SM89). Memory is the total NVML reports for the card (MiB, approximately),
# which is a little less than the marketed "GB".
KNOWN_GPUS: tuple[KnownGpu, ...] = (
    KnownGpu("Tesla V100", Sm(7, 0), 16_384),
    KnownGpu("Tesla T4", Sm(7, 5), 15_360),
    KnownGpu("RTX 2080 Ti", Sm(7, 5), 11_264),
    KnownGpu("A100", Sm(8, 0), 81_920),  # the 80 GB card; "A100-40GB" below
    KnownGpu("A100-40GB", Sm(8, 0), 40_960),
    KnownGpu("A30", Sm(8, 0), 24_576),
    KnownGpu("A10", Sm(8, 6), 23_028),
    KnownGpu("A10G", Sm(8, 6), 23_028),
    KnownGpu("A40", Sm(8, 6), 46_068),
    KnownGpu("RTX 3090", Sm(8, 6), 24_576),
    KnownGpu("L4", Sm(8, 9), 23_034),
    KnownGpu("L40", Sm(8, 9), 46_068),
    KnownGpu("L40S", Sm(8, 9), 46_068),
    KnownGpu("RTX 4090", Sm(8, 9), 24_564),
    KnownGpu("H100", Sm(9, 0), 81_559),
    KnownGpu("H200", Sm(9, 0), 143_771),
    KnownGpu("GH200", Sm(9, 0), 97_871),
    KnownGpu("B200", Sm(10, 0), 183_359),
    KnownGpu("B300", Sm(10, 3), 275_040),
    KnownGpu("RTX 5080", Sm(12, 0), 16_303),
    KnownGpu("RTX 5090", Sm(12, 0), 32_607),
    KnownGpu("RTX PRO 6000", Sm(12, 0), 97_887),
)


def _key(name: str) -> str:
    k = name.lower()
    for noise in ("nvidia", "geforce", "tesla"):
        k = k.replace(noise, "")
    return re.sub(r"[^a-z0-9]", "", k)


_BY_KEY = {_key(g.name): g for g in KNOWN_GPUS}

_UNITS = {
    "": GIB,
    "b": 1,
    "kib": 1024,
    "mib": MIB,
    "gib": GIB,
    "tib": 1024**4,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 1024,
    "m": MIB,
    "g": GIB,
    "t": 1024**4,
}


def parse_size(text: str) -> int:
    """'24GiB', '24G', '24 GB' (decimal), '23034MiB', '24' (GiB) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (write e.g. 24GiB or 80GB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_spec(spec: str) -> GpuFacts:
    """`--gpu SPEC`: SM:MEMORY (8.9:24GiB), or a known name with optional :MEMORY (A100:40GiB)."""
    head, _, mem = spec.partition(":")
    head = head.strip()
    known = _BY_KEY.get(_key(head))
    try:
        if known is not None:
            total = parse_size(mem) if mem else known.total_mib * MIB
            return GpuFacts(name=known.name, sm=known.sm, total_bytes=total, source="spec")
        sm = Sm.parse(head)
        if not mem:
            raise ValueError(f"{spec!r} gives a compute capability without memory")
        return GpuFacts(name=f"SM {sm}", sm=sm, total_bytes=parse_size(mem), source="spec")
    except ValueError as exc:
        names = ", ".join(g.name for g in KNOWN_GPUS)
        raise ModelPullError(
            ExitCode.USAGE,
            f"bad --gpu {spec!r}: {exc}",
            hint=f"write SM:MEMORY like 8.9:24GiB, or one of: {names}",
        ) from exc


@dataclass(frozen=True)
class NvmlReading:
    """The GPUs NVML reports, or why there are none (`problem` is one plain sentence)."""

    gpus: tuple[GpuFacts, ...]
    problem: str | None = None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_init() -> str | None:
    """Start NVML; the problem in words when it cannot start."""
    import pynvml  # the package nvidia-ml-py; imported here so planning needs no driver

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return "no NVIDIA driver: libnvidia-ml.so.1 (NVML) was not found"
    except pynvml.NVMLError_DriverNotLoaded:
        return "the NVIDIA driver is installed but not loaded (no kernel module)"
    except pynvml.NVMLError_NoPermission:
        return "no permission to open the NVIDIA devices (/dev/nvidia*)"
    except pynvml.NVMLError as exc:
        return f"NVML failed to start: {exc}"
    return None


def process_memory() -> dict[int, int]:
    """GPU memory (bytes) each process holds, summed over all GPUs: pid -> bytes.

    What `systemctl stop` would free for a unit whose processes these are. Raises
    NO_GPU_INFO when NVML cannot be read.
    """
    import pynvml

    problem = _nvml_init()
    if problem is not None:
        raise ModelPullError(ExitCode.NO_GPU_INFO, problem)
    used: dict[int, int] = {}
    try:
        for i in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle)) + list(
                pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle)
            ):
                mem = getattr(proc, "usedGpuMemory", None)
                if isinstance(mem, int):
                    used[int(proc.pid)] = used.get(int(proc.pid), 0) + mem
    except pynvml.NVMLError as exc:
        raise ModelPullError(ExitCode.NO_GPU_INFO, f"NVML failed listing processes: {exc}") from exc
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            logger.debug("nvmlShutdown failed", exc_info=True)
    return used


def read_nvml() -> NvmlReading:
    """Every device's name, SM, total/free memory and the driver version, via pynvml.

    Never raises for a missing driver or GPU: the reading says what is missing instead.
    """
    import pynvml

    problem = _nvml_init()
    if problem is not None:
        return NvmlReading((), problem)
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        count = int(pynvml.nvmlDeviceGetCount())
        gpus = []
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuFacts(
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    sm=Sm(int(major), int(minor)),
                    total_bytes=int(mem.total),
                    free_bytes=int(mem.free),
                    driver=driver,
                    index=i,
                    source="nvml",
                )
            )
    except pynvml.NVMLError as exc:
        return NvmlReading((), f"NVML failed while reading the GPUs: {exc}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            logger.debug("nvmlShutdown failed", exc_info=True)
    if not gpus:
        return NvmlReading((), f"the NVIDIA driver {driver} reports no GPU")
    return NvmlReading(tuple(gpus))
