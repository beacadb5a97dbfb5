"""`model-pull check` end to end, as a subprocess: exit codes, JSON, and the words a user reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from _check_models import gguf_model, hf_model
from machine import nvidia_driver

HELPER = str(Path(__file__).resolve().parents[1] / "helper")
GIB = 1024**3


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {**os.environ, "PYTHONPATH": HELPER, "MODEL_PULL_MANIFEST": "/nonexistent", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "model_pull", "check", *args],
        capture_output=True,
        text=True,
        env=e,
        check=False,
        timeout=60,
    )


def as_json(*args: str, **kw):
    r = run(*args, "--json", **kw)
    return r.returncode, json.loads(r.stdout)


@pytest.fixture
def fp8(tmp_path):
    return hf_model(
        tmp_path / "fp8",
        {"quant_method": "fp8", "activation_scheme": "dynamic"},
        weight_bytes=8 * GIB,
    )


def test_fp8_on_l4_native_json_shape(fp8):
    code, out = as_json(str(fp8), "--gpu", "L4", "--context", "8192")
    assert code == 0
    assert out["verdict"] == "native" and out["fits"] is True
    assert out["quantization"]["method"] == "fp8"
    assert out["gpus"][0]["gpu"]["sm"] == "8.9" and out["gpus"][0]["gpu"]["name"] == "L4"
    mem = out["memory"]
    assert set(mem) >= {"weights", "kvCache", "overhead", "available", "headroom", "maxContext"}
    assert mem["weights"] == 8 * GIB
    assert mem["kvCache"] == 32 * 8 * 128 * 2 * 2 * 8192
    assert mem["headroom"] == mem["available"] - mem["weights"] - mem["kvCache"] - mem["overhead"]
    assert any(
        "https://docs.vllm.ai/en/stable/features/quantization/fp8/" in r for r in out["reasons"]
    )


def test_full_context_does_not_fit_l4_and_says_the_largest_that_does(fp8):
    r = run(str(fp8), "--gpu", "L4")
    assert r.returncode == 32
    assert "does not fit" in r.stdout and "the largest context that fits" in r.stdout


def test_fp8_on_ampere_is_emulated_and_strict_fails(fp8):
    assert run(str(fp8), "--gpu", "A100", "--context", "8192").returncode == 0
    r = run(str(fp8), "--gpu", "A100", "--context", "8192", "--strict")
    assert r.returncode == 30 and "Marlin" in r.stdout


def test_nvfp4_before_blackwell_is_unsupported(tmp_path):
    m = hf_model(
        tmp_path / "nv",
        hf_quant_config={
            "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16}
        },
        weight_bytes=5 * GIB,
    )
    r = run(str(m), "--gpu", "H100", "--context", "8192")
    assert r.returncode == 31 and "NVFP4 needs Blackwell" in r.stdout
    assert run(str(m), "--gpu", "B200", "--context", "8192").returncode == 0
    assert run(str(m), "--gpu", "RTX 5090", "--context", "8192").returncode == 0


def test_modelopt_int4_awq_not_served_by_vllm(tmp_path):
    m = hf_model(tmp_path / "m", hf_quant_config={"quantization": {"quant_algo": "INT4_AWQ"}})
    r = run(str(m), "--gpu", "H100", "--context", "4096")
    assert r.returncode == 31 and "Model Optimizer, unified checkpoint deployment" in r.stdout
    assert run(str(m), "--gpu", "H100", "--context", "4096", "--runtime", "trtllm").returncode == 0


@pytest.fixture
def big_gguf(tmp_path):
    """A 27B model's case: a ~16 GiB Q4_K_M GGUF, 64 layers, 262144 context (sparse file)."""
    p = gguf_model(
        tmp_path / "qwopus-Q4_K_M.gguf",
        gguf.GGMLQuantizationType.F16,
        file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M,
        layers=64,
        context=262144,
        head_count=2,
        head_count_kv=1,
        embd=512,
    )
    with p.open("r+b") as fh:
        fh.truncate(16 * GIB)
    return p


def test_parallel_4_ooms_a_32gb_card(big_gguf):
    common = (str(big_gguf), "--gpu", "RTX 5090", "--kv-cache-dtype", "q4_0")
    r = run(*common)  # llama-server's default --parallel is 4
    assert r.returncode == 32
    assert "--parallel 4 multiplies the KV cache by 4" in r.stdout
    assert "--parallel 1 fits" in r.stdout
    code, out = as_json(*common, "--parallel", "1")
    assert code == 0 and out["runtime"] == "llama-server"
    assert out["quantization"]["algo"] == "Q4_K_M"
    assert out["memory"]["maxContext"] == 262144


@pytest.mark.skipif(nvidia_driver(), reason="this machine has an NVIDIA driver")
def test_no_gpu_information_says_why_and_exits_33(fp8):
    r = run(str(fp8))
    assert r.returncode == 33
    assert "no NVIDIA driver" in r.stdout and "--gpu" in r.stdout


def test_llama_server_cannot_load_safetensors(fp8):
    r = run(str(fp8), "--runtime", "llama-server", "--gpu", "H100", "--context", "4096")
    assert r.returncode == 31 and "GGUF files only" in r.stdout


def test_build_without_code_for_the_gpu_is_unsupported(tmp_path):
    m = hf_model(tmp_path / "bf16")
    r = run(str(m), "--gpu", "A10", "--package-sm", "8.9,9.0", "--context", "4096")
    assert r.returncode == 31 and "SM 8.6 cannot run it" in r.stdout
    code, out = as_json(str(m), "--gpu", "RTX 5090", "--package-sm", "8.9,9.0", "--context", "4096")
    assert code == 0 and "compute_90 PTX" in out["gpus"][0]["build"]


def test_nvfp4_through_hopper_ptx_on_blackwell_cannot_use_fp4(tmp_path):
    m = hf_model(tmp_path / "nv", hf_quant_config={"quantization": {"quant_algo": "NVFP4"}})
    r = run(str(m), "--gpu", "RTX 5090", "--package-sm", "9.0", "--context", "4096")
    assert r.returncode == 31 and "code built for SM 9.0" in r.stdout


def test_unknown_quantization_is_reported_unknown(tmp_path):
    m = hf_model(tmp_path / "hqq", {"quant_method": "hqq"})
    code, out = as_json(str(m), "--gpu", "H100", "--context", "4096")
    assert code == 0 and out["verdict"] == "unknown"
    assert out["quantization"]["scheme"] == "unknown"
    assert run(str(m), "--gpu", "H100", "--context", "4096", "--strict").returncode == 31


def test_entry_by_name_in_the_state_root(tmp_path):
    root = tmp_path / "root"
    entry = root / "store" / "abc-llama"
    snap = entry / "share/models/hub/models--org--llama/snapshots" / ("a" * 40)
    hf_model(snap, {"quant_method": "awq", "bits": 4, "group_size": 128}, weight_bytes=4 * GIB)
    (entry / "share/model-pull").mkdir(parents=True)
    (entry / "share/model-pull/manifest.json").write_text("{}")
    (root / "models").mkdir()
    (root / "models/llama").symlink_to("../store/abc-llama")
    code, out = as_json("llama", "--root", str(root), "--gpu", "T4", "--context", "4096")
    assert code == 0 and out["model"] == "llama" and out["quantization"]["method"] == "awq"
    r = run("nosuch", "--root", str(root), "--gpu", "T4")
    assert r.returncode == 20 and r.stderr.startswith("error: ")


def test_manifest_unit_gives_runtime_and_build_sms(tmp_path):
    root = tmp_path / "root"
    (root / "models").mkdir(parents=True)
    gguf_model(
        root / "models" / "main" / "m.gguf",
        gguf.GGMLQuantizationType.Q8_0,
        file_type=gguf.LlamaFileType.MOSTLY_Q8_0,
    )
    manifest = tmp_path / "models.json"
    manifest.write_text(
        json.dumps(
            {
                "version": 1,
                "models": {
                    "main": {
                        "repo": "org/main",
                        "revision": "main",
                        "layout": "gguf",
                        "units": ["llama-server-main.service"],
                    }
                },
                "units": {
                    "llama-server-main.service": {
                        "runtime": "llama-server",
                        "models": ["main"],
                        "cudaCapabilities": ["12.0"],
                    }
                },
            }
        )
    )
    env = {"MODEL_PULL_MANIFEST": str(manifest)}
    r = run("main", "--root", str(root), "--gpu", "L4", env=env)
    assert r.returncode == 31 and "code for SM 12.0 only" in r.stdout
    code, out = as_json("main", "--root", str(root), "--gpu", "RTX 5090", env=env)
    assert code == 0 and out["runtime"] == "llama-server"


def test_bad_input_is_one_line_with_a_distinct_code(tmp_path, fp8):
    r = run(str(fp8), "--gpu", "Z80")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "8.9:24GiB" in r.stderr
    d = tmp_path / "two"
    for t in ("a", "b"):
        gguf_model(d / f"{t}.gguf", gguf.GGMLQuantizationType.F16, file_type=None)
    r = run(str(d), "--gpu", "L4")
    assert r.returncode == 2 and "several GGUF models" in r.stderr
    r = run(str(fp8), "--gpu", "L4", "--kv-cache-dtype", "q4_0")
    assert r.returncode == 2 and "vllm" in r.stderr


# --- REPO mode: the real huggingface_hub client against the loopback Hub (devhub) ------------


def test_repo_mode_reads_metadata_only(new_repo, devhub, tmp_path):
    config = json.dumps(
        {
            "architectures": ["LlamaForCausalLM"],
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "hidden_size": 4096,
            "max_position_embeddings": 8192,
            "torch_dtype": "bfloat16",
        }
    ).encode()
    hqc = json.dumps({"quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8"}})
    repo = new_repo(
        {
            "config.json": config,
            "hf_quant_config.json": hqc.encode(),
            "model.safetensors": b"\0" * (3 << 20),
        }
    )
    code, out = as_json(repo.repo, "--revision", "main", "--gpu", "H100")
    assert code == 31 and out["quantization"]["algo"] == "NVFP4"
    assert out["memory"]["weights"] == 3 << 20
    assert out["model"].startswith(f"{repo.repo}@{repo.commit[:12]}")
    assert devhub.hub.requests(repo.repo, "model.safetensors") == []  # no weights read


def test_repo_mode_reads_a_gguf_header_with_a_range_request(new_repo, devhub, tmp_path):
    p = gguf_model(
        tmp_path / "m-Q8_0.gguf",
        gguf.GGMLQuantizationType.Q8_0,
        file_type=gguf.LlamaFileType.MOSTLY_Q8_0,
        vocab_tokens=2000,
    )
    data = p.read_bytes() + b"\0" * (6 << 20)  # more tensor data than one range read takes
    repo = new_repo({"m-Q8_0.gguf": data, "README.md": b"hi"})
    code, out = as_json(repo.repo, "--gpu", "L4")
    assert code == 0 and out["runtime"] == "llama-server"
    assert out["quantization"]["algo"] == "Q8_0"
    assert out["memory"]["weights"] == len(data)
    gets = [r for r in devhub.hub.requests(repo.repo, "m-Q8_0.gguf") if r.method == "GET"]
    assert gets and all(r.range == "bytes=0-4194303" for r in gets)
    assert sum(r.body_bytes for r in gets) < len(data)


def test_repo_mode_missing_repo_and_revision(hub_repos):
    r = run(hub_repos.missing_repo, "--gpu", "L4")
    assert r.returncode == 10 and r.stderr.startswith("error: ")
    r = run(hub_repos.tiny_llama.repo, "--revision", hub_repos.missing_revision, "--gpu", "L4")
    assert r.returncode == 11
