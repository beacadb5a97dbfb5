# ruff: noqa: E501  (Nix snippets and messages are long literals)
"""Triton with TensorRT-LLM's backend, per model: the LLM API model (`1/model.yaml`) that
nixos/triton-assemble.sh makes from an entry at start (real bash and jq), read back the way the
backend's model.py reads it (yaml.safe_load; `triton_config` for Triton, the rest for the LLM),
and what the module renders for it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from test_nixos_eval import COMMIT, checks, evaluate, evaluator, nix_eval
from test_nixos_eval import pytestmark as needs_nix
from test_trtllm import ARGS, exec_argv

SCRIPT = Path(__file__).resolve().parent.parent / "nixos" / "triton-assemble.sh"
# A STAND-IN for TensorRT-LLM's triton_backend/all_models/llmapi/tensorrt_llm (its config.pbtxt
# names the model "tensorrt_llm" and uses the Python backend; 1/model.py is the backend's code).
TEMPLATE_CONFIG = 'name: "tensorrt_llm"\nbackend: "python"\nmax_batch_size: 0\n'
VLLM_CONFIG = 'backend: "vllm"\nmax_batch_size: 0\nmodel_transaction_policy { decoupled: true }\n'

needs_jq = pytest.mark.skipif(shutil.which("jq") is None, reason="jq not installed")


def llmapi_template(path: Path) -> Path:
    (path / "1").mkdir(parents=True)
    (path / "config.pbtxt").write_text(TEMPLATE_CONFIG)
    (path / "1" / "model.py").write_text("# TensorRT-LLM's LLM API model (stand-in)\n")
    (path / "1" / "helpers.py").write_text("# its helpers (stand-in)\n")
    (path / "1" / "model.yaml").write_text("model: TinyLlama/TinyLlama-1.1B-Chat-v1.0\n")
    return path


def hf_entry(root: Path, name: str, repo: str = "nvidia/Qwen3-32B-NVFP4", dual: str = "") -> Path:
    """An hf (or, with `dual`, a dual) entry under root/store and its models/<name> link."""
    entry = root / "store" / f"0123456789abcdfghijklmnpqrsvwxyz-{name}"
    hub = entry / "share/models/hub" / f"models--{repo.replace('/', '--')}"
    snap = hub / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "hf_quant_config.json").write_text('{"quantization": {"quant_algo": "NVFP4"}}')
    (hub / "refs").mkdir()
    (hub / "refs/main").write_text(COMMIT)
    if dual:
        tdir = entry / "share/models" / dual
        tdir.mkdir()
        (tdir / "config.pbtxt").write_text(VLLM_CONFIG)
        (tdir / "model-defaults.json").write_text('{"dtype": "auto"}')
        (tdir / "weights").symlink_to(f"../hub/{hub.name}/snapshots/{COMMIT}")
    (root / "models").mkdir(exist_ok=True)
    link = root / "models" / name
    link.symlink_to(f"../store/{entry.name}")
    return link


def assemble(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), str(out), *args], capture_output=True, text=True, check=False
    )


def read_like_the_backend(model_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """What Triton and the LLM API model.py make of the model directory: config.pbtxt through
    Triton's own ModelConfig protobuf (its name must be the directory's), then 1/model.yaml:
    `triton_config` (its decoupled and max_batch_size are read unconditionally), and every
    other key for the LLM."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    pbtxt = text_format.Parse(
        (model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert (pbtxt.name, pbtxt.backend) == (model_dir.name, "python")
    config = yaml.safe_load((model_dir / "1" / "model.yaml").read_text())
    triton = config["triton_config"]
    assert isinstance(triton["decoupled"], bool) and isinstance(triton["max_batch_size"], int)
    llm = {k: v for k, v in config.items() if k != "triton_config"}
    assert set(llm) <= set(ARGS["llmApiArgs"]), set(llm) - set(ARGS["llmApiArgs"])
    return triton, llm


@needs_jq
def test_model_yaml_names_the_entrys_snapshot_with_the_overrides(tmp_path: Path) -> None:
    link = hf_entry(tmp_path / "state", "qwen3-32b-nvfp4")
    template = llmapi_template(tmp_path / "llmapi" / "tensorrt_llm")
    out = tmp_path / "run"
    overrides = {"kv_cache_config": {"dtype": "fp8"}, "triton_config": {"decoupled": True}}
    r = assemble(out, "--llmapi", str(template), "qwen3_32b", str(link), json.dumps(overrides))
    assert r.returncode == 0, r.stderr
    model_dir = out / "models" / "qwen3_32b"
    config = (model_dir / "config.pbtxt").read_text()
    assert config.splitlines()[0] == 'name: "qwen3_32b"' and 'name: "tensorrt_llm"' not in config
    assert 'backend: "python"' in config
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == [
        "helpers.py",
        "model.py",
        "model.yaml",
    ]
    triton, llm = read_like_the_backend(model_dir)
    # the resolved entry, not the models/ link: a later pull does not move a running server
    snapshot = (
        link.resolve() / "share/models/hub/models--nvidia--Qwen3-32B-NVFP4/snapshots" / COMMIT
    )
    assert llm == {
        "backend": "pytorch",
        "model": str(snapshot),
        "kv_cache_config": {"dtype": "fp8"},
    }
    assert triton == {"decoupled": True, "max_batch_size": 0}  # merged, not replaced


@needs_jq
def test_vllm_and_tensorrt_llm_models_side_by_side(tmp_path: Path) -> None:
    state = tmp_path / "state"
    vllm_link = hf_entry(state, "qwen3_5-2b", "Qwen/Qwen3.5-2B", dual="qwen3_5_2b")
    trt_link = hf_entry(state, "nv", "nvidia/Qwen3-32B-NVFP4")
    template = llmapi_template(tmp_path / "llmapi")
    out = tmp_path / "run"
    r = assemble(
        out,
        "qwen3_5_2b",
        str(vllm_link),
        "{}",
        "--llmapi",
        str(template),
        "nv",
        str(trt_link),
        "{}",
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (out / "models").iterdir()) == ["nv", "qwen3_5_2b"]
    assert (out / "models/qwen3_5_2b/1/model.json").is_file()
    assert read_like_the_backend(out / "models" / "nv")[0] == {
        "decoupled": False,
        "max_batch_size": 0,
    }
    assert sorted(p.name for p in (out / "hub").iterdir()) == [
        "models--Qwen--Qwen3.5-2B",
        "models--nvidia--Qwen3-32B-NVFP4",
    ]


@needs_jq
def test_a_gguf_entry_or_a_bad_template_fails_with_its_path(tmp_path: Path) -> None:
    state = tmp_path / "state"
    entry = state / "store" / "0123456789abcdfghijklmnpqrsvwxyz-g"
    (entry / "share/models/gguf").mkdir(parents=True)
    template = llmapi_template(tmp_path / "llmapi")
    r = assemble(tmp_path / "run", "--llmapi", str(template), "g", str(entry), "{}")
    assert r.returncode == 1 and "has no single model: is" in r.stderr, r.stderr
    link = hf_entry(state, "nv")
    r = assemble(tmp_path / "run", "--llmapi", str(tmp_path / "nowhere"), "nv", str(link), "{}")
    assert r.returncode == 1 and "is not TensorRT-LLM's LLM API model" in r.stderr
    r = assemble(tmp_path / "run", "--llmapi")
    assert r.returncode == 2 and "usage:" in r.stderr


# ---- the module ------------------------------------------------------------------------------

HF = f'services.inference.models.nv = {{ repo = "nvidia/Qwen3-32B-NVFP4"; revision = "{COMMIT}"; layout = "hf"; tritonName = "qwen3_32b"; }};'
TRITON = 'services.inference.triton = { enable = true; package = pkgs.writeShellScriptBin "tritonserver" "exit 1";'


def triton_module(models: str, extra: str = 'llmapiModel = "/opt/llmapi/tensorrt_llm";') -> str:
    return f"{{ pkgs, ... }}: {{ {HF} {TRITON} {extra} models = {{ {models} }}; }}; }}"


@needs_nix[0]
@needs_nix[1]
@needs_nix[2]
def test_a_tensorrtllm_model_is_gated_on_its_snapshot_and_assembled_as_llmapi(
    tmp_path: Path,
) -> None:
    result = evaluate(
        triton_module(
            'nv = { backend = "tensorrtllm"; overrides.kv_cache_config.dtype = "fp8"; };'
        ),
        tmp_path,
    )
    assert result["assertions"] == [] and result["warnings"] == []
    unit = result["units"]["triton.service"]
    repo = "/var/lib/inference/models/nv/share/models/hub/models--nvidia--Qwen3-32B-NVFP4"
    assert unit["unitConfig"]["ConditionPathExists"] == [f"{repo}/refs/main"]
    # the pull's GPU check applies TensorRT-LLM's hardware matrix to its models
    assert result["manifest"]["units"]["triton.service"]["runtime"] == "trtllm"
    pre = exec_argv(unit["serviceConfig"]["ExecStartPre"])
    assert pre[1:] == [
        "/run/triton",
        "--llmapi",
        "/opt/llmapi/tensorrt_llm",
        "qwen3_32b",
        "/var/lib/inference/models/nv",
        '{"kv_cache_config":{"dtype":"fp8"}}',
    ]


BROKEN = {
    "no-llmapi-model": (
        triton_module('nv.backend = "tensorrtllm";', extra=""),
        "services.inference.triton.llmapiModel is not set: the models nv use the tensorrtllm backend",
    ),
    "model-override": (
        triton_module('nv = { backend = "tensorrtllm"; overrides.model = "/x"; };'),
        "services.inference.triton.models.nv.overrides.model: the Triton unit sets `model`",
    ),
    "hf-on-vllm-backend": (
        triton_module("nv = { };"),
        'services.inference.triton.models.nv: Triton cannot read model "nv" with layout "hf"',
    ),
}


@needs_nix[0]
@needs_nix[1]
@needs_nix[2]
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_triton_model_names_the_option(case: str, tmp_path: Path) -> None:
    module, message = BROKEN[case]
    result = checks(module, tmp_path)
    assert any(m.startswith(message) for m in result["assertions"]), result["assertions"]


@needs_nix[0]
@needs_nix[1]
@needs_nix[2]
def test_an_override_that_is_no_llm_api_argument_warns(tmp_path: Path) -> None:
    result = checks(
        triton_module(
            'nv = { backend = "tensorrtllm"; overrides = { max_model_len = 4096; triton_config.decoupled = true; }; };'
        ),
        tmp_path,
    )
    assert result["assertions"] == []
    assert result["warnings"] == [
        f"services.inference.triton.models.nv.overrides.max_model_len: not an LLM API argument of TensorRT-LLM {ARGS['version']} (as far as the list model-pull ships knows); TensorRT-LLM refuses a key it does not know."
    ]


@needs_nix[0]
@needs_nix[1]
@needs_nix[2]
def test_the_trtllm_export_combines_with_the_others(tmp_path: Path) -> None:
    module = (
        f"{{ pkgs, ... }}: {{ {HF} services.inference.trtllm = {{ "
        'package = pkgs.writeShellScriptBin "trtllm-serve" "exit 1"; instances.a.model = "nv"; }; '
        'services.inference.vllm.instances.b = { model = "nv"; port = 8001; }; }'
    )
    result = nix_eval(
        f'{evaluator()}.evalFlakeModules [ "trtllm" "vllm" "triton" ] ({module})', tmp_path
    )
    assert result["assertions"] == []
    assert {"trtllm-a.service", "vllm-b.service"} <= set(result["units"])
    assert result["manifest"]["models"]["nv"]["units"] == ["trtllm-a.service", "vllm-b.service"]
