"""A PROBE standing in for vLLM / SGLang / Triton, which cannot run here (no GPU). NOT a runtime.

    runtime_probe.py vllm serve REPO --config YAML --host H --port P
    runtime_probe.py sglang -m sglang.launch_server --model-path REPO --host H --port P ...
    runtime_probe.py triton --model-repository DIR --http-address H --http-port P ...

It resolves the model exactly as the runtime would, from the unit's own environment, and fails
loudly (exit 3, one line) when it cannot:
- vllm / sglang: `huggingface_hub.snapshot_download(REPO, local_files_only=True,
  ignore_patterns="*", revision=None)` (HF_HUB_CACHE, HF_HUB_OFFLINE=1 from the unit), then
  `transformers.AutoConfig.from_pretrained` on the snapshot;
- triton: every model directory of the assembled repository: config.pbtxt parsed as
  tritonclient's ModelConfig (name = directory, backend vllm), 1/model.json's "model" an existing
  directory whose config.json AutoConfig reads.
Then it serves GET / (200, JSON naming itself a probe, with what it resolved and, for SGLang, the
server arguments it was given) on the unit's address and port, so a test can see the unit is up.
For SGLang the probe stands in for the environment's `python`: it insists on being run as
`python -m sglang.launch_server`, as the unit does.
"""

from __future__ import annotations

import http.server
import json
import os
import sys
from pathlib import Path
from typing import Any

BANNER = "runtime_probe: THIS IS A TEST PROBE, NOT {}: it only checks that the model resolves"


def fail(message: str) -> None:
    print(f"runtime_probe: FAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(3)


def option(args: list[str], name: str) -> str:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    fail(f"no {name} in {args}")
    raise AssertionError


def long_options(args: list[str]) -> dict[str, str | bool]:
    """`--name value` and bare `--flag` arguments, as argparse would read them."""
    options: dict[str, str | bool] = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else True
        options[arg[2:]] = value
    return options


def hf_model(repo: str) -> dict[str, Any]:
    from huggingface_hub import snapshot_download
    from transformers import AutoConfig

    try:
        path = snapshot_download(repo, local_files_only=True, ignore_patterns="*", revision=None)
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        fail(f"{repo} does not resolve from HF_HUB_CACHE={os.environ.get('HF_HUB_CACHE')}: "
             f"{type(exc).__name__}: {exc}")
    quantization = getattr(config, "quantization_config", None) or {}
    return {"repo": repo, "snapshot": path, "model_type": config.model_type,
            "quant_method": quantization.get("quant_method"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def triton_models(repository: Path) -> list[dict[str, Any]]:
    from google.protobuf import text_format
    from transformers import AutoConfig
    from tritonclient.grpc import model_config_pb2

    models = []
    dirs = sorted(p for p in repository.iterdir() if p.is_dir()) if repository.is_dir() else []
    if not dirs:
        fail(f"no model in the repository {repository}")
    for d in dirs:
        try:
            config = text_format.Parse((d / "config.pbtxt").read_text(),
                                       model_config_pb2.ModelConfig())
            model_json = json.loads((d / "1" / "model.json").read_text())
            weights = Path(model_json["model"])
            hf = AutoConfig.from_pretrained(str(weights))
        except Exception as exc:
            fail(f"model {d.name} in {repository} is not servable: {type(exc).__name__}: {exc}")
        if config.name != d.name or config.backend != "vllm":
            fail(f"{d}/config.pbtxt: name {config.name!r} backend {config.backend!r}")
        models.append({"name": d.name, "weights": str(weights), "model_type": hf.model_type,
                       "model_json": model_json})
    return models


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
    print(f"runtime_probe: serving on {host}:{port}: {json.dumps(info)}", flush=True)
    server.serve_forever()


def main(argv: list[str]) -> None:
    if not argv:
        fail("usage: runtime_probe.py vllm|sglang|triton ARGS...")
    runtime, args = argv[0], argv[1:]
    print(BANNER.format(runtime.upper()), file=sys.stderr, flush=True)
    if runtime == "vllm":
        if not args or args[0] != "serve":
            fail(f"expected 'vllm serve REPO ...', got {args}")
        config = Path(option(args, "--config"))
        if not config.is_file():
            fail(f"--config {config} is missing")
        import yaml

        info = {"runtime": "vllm", "model": hf_model(args[1]),
                "config": yaml.safe_load(config.read_text())}
        serve(option(args, "--host"), int(option(args, "--port")), info)
    elif runtime == "sglang":
        if args[:2] != ["-m", "sglang.launch_server"]:
            fail(f"expected 'python -m sglang.launch_server ...', got {args}")
        info = {"runtime": "sglang", "model": hf_model(option(args, "--model-path")),
                "args": long_options(args[2:])}
        serve(option(args, "--host"), int(option(args, "--port")), info)
    elif runtime == "triton":
        repo = Path(option(args, "--model-repository"))
        info = {"runtime": "triton", "models": triton_models(repo)}
        serve(option(args, "--http-address"), int(option(args, "--http-port")), info)
    else:
        fail(f"unknown runtime {runtime!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
