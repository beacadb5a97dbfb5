"""THE compatibility table: quantization x GPU generation (SM) x runtime, each row with its source.

Read it top to bottom: the FIRST row that matches (runtime, method, scheme, SM) decides. No row
matching means the answer is not known: the check says `unknown`, it never guesses.

Every row names the public documentation it follows (the constants below, with their URLs):
vLLM's quantization pages, NVIDIA's TensorRT-LLM, Model Optimizer, Transformer Engine and CUDA
documentation, llama.cpp's build guide. They are what `model-pull check` prints as its reasons.

A runtime build compiled for some SMs only (`--package-sm`, nixpkgs' cudaCapabilities) is
modelled in `code_sm()`: the code that actually runs on a GPU decides which row applies.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from model_pull.datamodel import Runtime
from model_pull.gpu import Sm
from model_pull.quant import Method, Scheme

logger = logging.getLogger(__name__)


class Support(enum.IntEnum):
    """Ordered from best to worst, so the worst over several GPUs is `max()`."""

    NATIVE = 0
    EMULATED = 1
    UNKNOWN = 2
    UNSUPPORTED = 3

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Row:
    runtimes: frozenset[Runtime]
    methods: frozenset[Method] | None  # None: any
    schemes: frozenset[Scheme] | None  # None: any
    algos: frozenset[str] | None  # quantization names (modelopt quant_algo); None: any
    sm_min: Sm | None  # inclusive; None: no lower bound
    sm_max: Sm | None  # inclusive; None: no upper bound
    support: Support
    how: str  # the reason, in words
    source: str

    def matches(self, runtime: Runtime, method: Method, scheme: Scheme, algo: str, sm: Sm) -> bool:
        return (
            runtime in self.runtimes
            and (self.methods is None or method in self.methods)
            and (self.schemes is None or scheme in self.schemes)
            and (self.algos is None or algo in self.algos)
            and (self.sm_min is None or sm >= self.sm_min)
            and (self.sm_max is None or sm <= self.sm_max)
        )


ALL = frozenset(Runtime)
LLAMA = frozenset({Runtime.LLAMA_SERVER})
VLLM_KERNELS = frozenset({Runtime.VLLM, Runtime.SGLANG, Runtime.TRITON})
TRT = frozenset({Runtime.TRTLLM})
HF_METHODS = frozenset(Method) - {Method.GGUF}


def _m(*methods: Method) -> frozenset[Method]:
    return frozenset(methods)


def _s(*schemes: Scheme) -> frozenset[Scheme]:
    return frozenset(schemes)


def _a(*algos: str) -> frozenset[str]:
    return frozenset(algos)


S75, S80, S89, S90, S100 = Sm(7, 5), Sm(8, 0), Sm(8, 9), Sm(9, 0), Sm(10, 0)
BEFORE_80, BEFORE_89, BEFORE_100 = Sm(7, 9), Sm(8, 8), Sm(9, 9)

N, E, U, X = Support.NATIVE, Support.EMULATED, Support.UNKNOWN, Support.UNSUPPORTED
VLLM_HW = (
    "vLLM, quantization: supported hardware (https://docs.vllm.ai/en/stable/features/quantization/)"
)
VLLM_FP8 = "vLLM, FP8 W8A8 (https://docs.vllm.ai/en/stable/features/quantization/fp8/)"
VLLM_GPU = (
    "vLLM, GPU installation: compute capability 7.0 or higher "
    "(https://docs.vllm.ai/en/stable/getting_started/installation/gpu.html)"
)
MODELOPT_DEPLOY = (
    "NVIDIA Model Optimizer, unified checkpoint deployment "
    "(https://nvidia.github.io/TensorRT-Model-Optimizer/deployment/3_unified_hf.html)"
)
MODELOPT_MATRIX = (
    "NVIDIA Model Optimizer, support matrix "
    "(https://nvidia.github.io/TensorRT-Model-Optimizer/guides/0_support_matrix.html)"
)
TRTLLM_MATRIX = (
    "TensorRT-LLM, support matrix "
    "(https://nvidia.github.io/TensorRT-LLM/reference/support-matrix.html)"
)
TRTLLM_PRECISION = (
    "TensorRT-LLM, numerical precision "
    "(https://nvidia.github.io/TensorRT-LLM/reference/precision.html)"
)
NVIDIA_TE = (
    "NVIDIA Transformer Engine, datatype support by compute capability "
    "(https://nvidia.github.io/TransformerEngine/support_matrix.html)"
)
TORCHAO = "TorchAO float8 needs compute capability 8.9 (https://github.com/pytorch/ao)"
LLAMA_CPP = (
    "llama.cpp, CUDA backend (https://github.com/ggml-org/llama.cpp/blob/master/docs/build.md)"
)
GPTOSS = (
    "vLLM recipes, GPT-OSS (https://docs.vllm.ai/projects/recipes/en/latest/OpenAI/GPT-OSS.html)"
)
CUDA_GUIDE = (
    "CUDA C++ Programming Guide, binary and PTX compatibility "
    "(https://docs.nvidia.com/cuda/cuda-c-programming-guide/)"
)

# fmt: off
TABLE: tuple[Row, ...] = (
    # --- which runtime loads which checkpoint format (any SM) ---------------------------------
    Row(LLAMA, HF_METHODS, None, None, None, None, X,
        "llama-server loads GGUF files only: use a GGUF repo (or llama.cpp's convert_hf_to_gguf)",
        LLAMA_CPP),
    Row(TRT, _m(Method.GGUF), None, None, None, None, X,
        "TensorRT-LLM loads HF, TRT-LLM or unified (modelopt) checkpoints, not GGUF",
        TRTLLM_MATRIX),
    Row(VLLM_KERNELS, _m(Method.MODELOPT), None, _a("FP8_PB", "FP8_PB_WO", "NVFP4_AWQ",
        "INT4_AWQ", "W4A8_AWQ", "INT8_SQ"), None, None, X,
        "vLLM and SGLang deploy modelopt FP8 and NVFP4 checkpoints only", MODELOPT_DEPLOY),
    Row(TRT, _m(Method.MODELOPT), None, _a("FP8_PB", "FP8_PB_WO", "NVFP4_AWQ"), None, None, X,
        "TensorRT-LLM deploys modelopt FP8 and NVFP4 checkpoints, not this one", MODELOPT_DEPLOY),
    Row(TRT, _m(Method.FP8, Method.FBGEMM_FP8, Method.COMPRESSED_TENSORS, Method.AWQ,
        Method.GPTQ, Method.BITSANDBYTES, Method.TORCHAO, Method.MXFP4), None, None, None, None, U,
        "TensorRT-LLM documents unquantized and modelopt checkpoints only", TRTLLM_PRECISION),
    Row(frozenset({Runtime.SGLANG}), _m(Method.GGUF), None, None, None, None, U,
        "not known whether SGLang loads GGUF files", "-"),

    # --- GGUF: llama.cpp dequantizes every block type in its CUDA kernels --------------------
    Row(LLAMA, _m(Method.GGUF), None, None, S75, None, N,
        "llama.cpp CUDA kernels for every GGUF tensor type", LLAMA_CPP),
    Row(frozenset({Runtime.VLLM, Runtime.TRITON}), _m(Method.GGUF), None, None, Sm(7, 0), S90, N,
        "vLLM GGUF loader (experimental: one file, not every architecture)", VLLM_HW),

    # --- TensorRT-LLM's own limits ------------------------------------------------------------
    Row(TRT, None, _s(Scheme.FP8), None, None, BEFORE_89, X,
        "TensorRT-LLM FP8 needs Ada or Hopper+ (no W8A16 fallback)", TRTLLM_MATRIX),
    Row(TRT, None, _s(Scheme.INT8), None, None, BEFORE_80, X,
        "TensorRT-LLM INT8 SmoothQuant needs Ampere+", MODELOPT_MATRIX),
    Row(TRT, None, _s(Scheme.INT4), None, S80, None, N,
        "TensorRT-LLM INT4 AWQ (W4A16) on Ampere and later", MODELOPT_MATRIX),

    # --- TorchAO FP8 has no Marlin fallback -------------------------------------------------
    Row(ALL, _m(Method.TORCHAO), _s(Scheme.FP8, Scheme.W8A16), None, None, BEFORE_89, X,
        "TorchAO float8 kernels need FP8 tensor cores (SM89+)", TORCHAO),
    Row(ALL, _m(Method.TORCHAO), _s(Scheme.FP8, Scheme.W8A16), None, S89, None, N,
        "FP8 tensor cores (TorchAO float8)", TORCHAO),
    Row(ALL, _m(Method.TORCHAO), None, None, None, None, U,
        "no hardware table for TorchAO's int4/int8 checkpoints", "-"),

    # --- hardware rows: what each SM does with each scheme ----------------------------------
    Row(ALL, None, _s(Scheme.FP8), None, S75, BEFORE_89, E,
        "no FP8 tensor cores: runs W8A16 through Marlin (FP8 weights, FP16 compute)", VLLM_FP8),
    Row(ALL, None, _s(Scheme.FP8), None, S89, None, N,
        "FP8 tensor cores (W8A8)", VLLM_FP8),
    Row(VLLM_KERNELS, None, _s(Scheme.W8A16), None, S80, None, N,
        "8-bit weights, 16-bit compute through Marlin", VLLM_HW),
    Row(ALL, None, _s(Scheme.INT4), None, S75, BEFORE_80, N,
        "INT4 W4A16 with the standard CUDA kernels (AWQ GEMM, ExLlamaV2 for GPTQ)", VLLM_HW),
    Row(ALL, None, _s(Scheme.INT4), None, S80, None, N,
        "INT4 W4A16 with Marlin kernels", VLLM_HW),
    Row(ALL, None, _s(Scheme.INT8), None, S75, None, N,
        "INT8 W8A8 tensor cores", VLLM_HW),
    Row(ALL, None, _s(Scheme.F16, Scheme.F32), None, S75, None, N,
        "FP16 tensor cores (FP32 checkpoints load as 16-bit with dtype auto)", VLLM_GPU),
    Row(ALL, None, _s(Scheme.BF16), None, S75, BEFORE_80, E,
        "no BF16 before SM80: dtype auto falls back to FP16 (values above 65504 overflow)",
        NVIDIA_TE),
    Row(ALL, None, _s(Scheme.BF16), None, S80, None, N,
        "BF16 tensor cores", NVIDIA_TE),
    Row(ALL, None, _s(Scheme.W4A8), None, None, BEFORE_89, X,
        "W4A8 AWQ needs FP8 tensor cores: Ada or newer", MODELOPT_MATRIX),
    Row(ALL, None, _s(Scheme.W4A8), None, S89, None, N,
        "W4A8 (INT4 weights, FP8 activations) on Ada and later", MODELOPT_MATRIX),
    Row(ALL, None, _s(Scheme.NVFP4), None, None, BEFORE_100, X,
        "NVFP4 needs Blackwell FP4 tensor cores (SM100/103/120)", MODELOPT_MATRIX),
    Row(ALL, None, _s(Scheme.NVFP4), None, S100, None, N,
        "NVFP4 tensor cores (Blackwell)", NVIDIA_TE),
    Row(VLLM_KERNELS, None, _s(Scheme.MXFP4), None, None, BEFORE_80, X,
        "MXFP4 needs Marlin (SM80+) or Blackwell FP4 tensor cores", GPTOSS),
    Row(VLLM_KERNELS, None, _s(Scheme.MXFP4), None, S80, BEFORE_100, E,
        "no FP4 tensor cores: MXFP4 weights dequantized for 16-bit compute (Marlin/Triton)",
        GPTOSS),
    Row(VLLM_KERNELS, None, _s(Scheme.MXFP4), None, S100, None, N,
        "FP4 tensor cores (Blackwell)", GPTOSS),
    Row(VLLM_KERNELS, None, _s(Scheme.BNB), None, Sm(7, 0), None, N,
        "bitsandbytes kernels (4-bit NF4/FP4 or 8-bit)", VLLM_HW),
)
# fmt: on


@dataclass(frozen=True)
class Decision:
    support: Support
    how: str
    source: str


def decide(runtime: Runtime, method: Method, scheme: Scheme, algo: str, sm: Sm) -> Decision:
    """The first row of TABLE that matches, or `unknown` when none does."""
    if scheme is Scheme.UNKNOWN:
        # Only the format rows (any scheme) can still say no; nothing can say yes.
        for row in TABLE:
            if (
                row.schemes is None
                and row.support is X
                and row.matches(runtime, method, scheme, algo, sm)
            ):
                return Decision(row.support, row.how, row.source)
        return Decision(U, f"quantization {algo!r} is not recognised", "-")
    for row in TABLE:
        if row.matches(runtime, method, scheme, algo, sm):
            return Decision(row.support, row.how, row.source)
    return Decision(
        U,
        f"no row in the compatibility table for {scheme.value} ({method.value}) "
        f"with {runtime.value} on SM {sm}",
        "-",
    )


# --- builds compiled for some SMs only ---------------------------------------------------------


@dataclass(frozen=True)
class PackageArch:
    """One entry of a runtime build's cudaCapabilities: '8.9', '9.0a' (arch-specific), '10.0f'."""

    sm: Sm
    variant: str = ""  # "" portable, "a" exact SM only, "f" family (same major)

    @classmethod
    def parse(cls, text: str) -> PackageArch:
        t = text.strip().lower()
        variant = t[-1] if t[-1:] in ("a", "f") else ""
        return cls(Sm.parse(t[:-1] if variant else t), variant)

    def __str__(self) -> str:
        return f"{self.sm}{self.variant}"


@dataclass(frozen=True)
class CodeSm:
    """Which compiled code a GPU runs: `sm` is the SM it was built for (None: nothing runs)."""

    sm: Sm | None
    how: str


def code_sm(gpu: Sm, arches: tuple[PackageArch, ...], forward_compat: bool = True) -> CodeSm:
    """CUDA's rules (CUDA C Programming Guide, "binary compatibility" and "PTX compatibility"):

    - a cubin for X.y runs on X.z with z >= y (same major); an 'a' cubin runs on X.y only;
      an 'f' cubin runs on the same family (X.z, z >= y);
    - PTX for compute_XY is JIT-compiled on any GPU >= X.Y; nixpkgs' cudaForwardCompat (default on)
      adds PTX for the highest listed portable capability; 'a' PTX is not forward compatible.

    The code runs with the features of the SM it was compiled for: 9.0 PTX on a 12.0 GPU cannot
    use FP4 tensor cores. That SM is what the hardware rows are evaluated at.
    """
    exact = [a for a in arches if a.sm == gpu]
    if exact:
        return CodeSm(gpu, f"the build has sm_{gpu.major}{gpu.minor} code")
    same_major = [
        a.sm
        for a in arches
        if a.variant != "a" and a.sm.major == gpu.major and a.sm.minor <= gpu.minor
    ]
    if same_major:
        best = max(same_major)
        return CodeSm(
            best,
            f"runs the build's sm_{best.major}{best.minor} code "
            f"(binary compatible within SM {gpu.major}.x)",
        )
    portable = [a.sm for a in arches if a.variant == ""]
    if forward_compat and portable and max(portable) < gpu:
        ptx = max(portable)
        return CodeSm(
            ptx,
            f"no sm_{gpu.major}{gpu.minor} code in the build: kernels JIT-compile "
            f"from compute_{ptx.major}{ptx.minor} PTX at first start (slow start)",
        )
    listed = ", ".join(str(a) for a in arches)
    why = (
        "PTX only runs on the same or newer SMs"
        if forward_compat
        else "and the build has no PTX (cudaForwardCompat off)"
    )
    return CodeSm(None, f"the build has code for SM {listed} only; SM {gpu} cannot run it ({why})")
