# ruff: noqa: E501  (Nix expressions are long literals)
"""`model-pull prefetch` prints the whole declaration as Nix, and the NixOS modules read it back
unchanged under any model name: the real Nix parser (nix-instantiate) and the real modules
(evaluated with nixpkgs' lib, NIXPKGS_LIB) are the judges."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from model_pull.datamodel import default_triton_name

ROOT = Path(__file__).resolve().parent.parent
NIXPKGS_LIB = os.environ.get("NIXPKGS_LIB", "")
needs_nix = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None, reason="nix-instantiate not installed"
)
needs_nixpkgs_lib = pytest.mark.skipif(
    not (NIXPKGS_LIB and Path(NIXPKGS_LIB, "lib/default.nix").is_file()),
    reason="NIXPKGS_LIB is not set to a checkout of nixpkgs' lib",
)

# Strings the Nix parser would read otherwise if they were not escaped.
TRICKY_NAME = 'say "hi" to ${USER} \\ and \n a new line'
TRICKY_GLOB = 'we"ird${x}\\*.md'
OVERRIDES = {
    "rope_scaling": {"rope_type": "yarn", "factor": 4.0},
    "odd key": -1,
    "let": 1e-05,
    "huge": 1e16,
    "nested": [[-2, 0.5], {"in": None}],
}


def nix_eval(expr: str, tmp_path: Path) -> Any:
    env = {
        **os.environ,
        "NIX_STATE_DIR": str(tmp_path / "nix-state"),
        "NIX_CONFIG": "experimental-features = nix-command",
    }
    p = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def evaluate_modules(module: str, tmp_path: Path) -> Any:
    evaluator = (
        f"(import {ROOT}/tests/nix/eval.nix {{ nixpkgsLib = {Path(NIXPKGS_LIB).resolve()}; }})"
    )
    return nix_eval(f"{evaluator}.evalConfig ({module})", tmp_path)


@pytest.fixture
def prefetched(model_pull, hub_repos, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """prefetch of tiny-llama with every byte-changing option set, some to hostile strings:
    (the Nix text, the same declaration as JSON)."""
    args = [
        "prefetch",
        hub_repos.tiny_llama.repo,
        "--name",
        "first-name",
        "--include",
        "*.json",
        "--include",
        "*.safetensors",
        "--include",
        TRICKY_GLOB,
        "--exclude",
        "generation_config.json",
        "--exclude",
        TRICKY_GLOB,
        "--triton-name",
        "tiny.llama-1",
        "--patch-tokenizer",
        "--vllm-arg",
        f"served_model_name={json.dumps(TRICKY_NAME)}",
        "--vllm-arg",
        f"hf_overrides={json.dumps(OVERRIDES)}",
        "--vllm-arg",
        "max_model_len=512",
        "--root",
        str(tmp_path / "root"),
    ]
    text = model_pull.ok(*args).stdout
    return text, model_pull.json(*args)


@needs_nix
def test_prefetch_prints_every_byte_changing_option_as_nix(
    prefetched, model_pull, hub_repos, tmp_path
):
    text, declared = prefetched
    assert nix_eval(text, tmp_path) == declared
    entry = model_pull.json("list", "--root", str(tmp_path / "root"))["models"][0]
    manifest = json.loads((Path(entry["path"]) / "share/model-pull/manifest.json").read_text())
    assert declared == {
        "repo": hub_repos.tiny_llama.repo,
        "revision": hub_repos.tiny_llama.commit,
        "layout": "dual",
        "include": ["*.json", "*.safetensors", TRICKY_GLOB],
        "exclude": ["generation_config.json", TRICKY_GLOB],
        "tritonName": "tiny.llama-1",
        "engineDefaults": {
            "served_model_name": TRICKY_NAME,
            "hf_overrides": OVERRIDES,
            "max_model_len": 512,
        },
        "patchTokenizer": True,
        "narHash": entry["narHash"],
    }
    assert {k: manifest[k] for k in declared if k != "narHash"} == {
        k: v for k, v in declared.items() if k != "narHash"
    }


@needs_nix
@needs_nixpkgs_lib
def test_the_modules_take_the_pasted_declaration_under_another_name(prefetched, tmp_path):
    text, declared = prefetched
    result = evaluate_modules(f"{{ services.inference.models.renamed = {text}; }}", tmp_path)
    assert result["assertions"] == []
    assert result["manifest"]["models"]["renamed"] == {**declared, "units": []}


@needs_nix
@needs_nixpkgs_lib
def test_the_modules_default_triton_name_is_the_helpers(tmp_path):
    repos = ["Qwen/Qwen3.5-2B", "org/Mixed-Case.Name_1", "a/b", "x/9--a..b"]
    models = " ".join(
        f'services.inference.models.m{i} = {{ repo = "{repo}"; revision = "main"; layout = "dual"; }};'
        for i, repo in enumerate(repos)
    )
    result = evaluate_modules(f"{{ {models} }}", tmp_path)
    got = {m["repo"]: m["tritonName"] for m in result["manifest"]["models"].values()}
    assert got == {repo: default_triton_name(repo) for repo in repos}
