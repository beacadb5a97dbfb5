# ruff: noqa: E501  (Nix snippets, store paths and assertion messages are long literals)
"""The services.inference modules evaluated with nixpkgs' lib (lib.evalModules over nixos/,
tests/nix/stubs.nix and each host). Needs NIXPKGS_LIB: a checkout of nixpkgs' lib, e.g.
github:nix-community/nixpkgs.lib."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "tests/nix/eval.nix"
GOLDEN = ROOT / "tests/nix/golden.json"
NIXPKGS_LIB = os.environ.get("NIXPKGS_LIB", "")

pytestmark = [
    pytest.mark.nixlib,
    pytest.mark.skipif(
        not (NIXPKGS_LIB and Path(NIXPKGS_LIB, "lib/default.nix").is_file()),
        reason="NIXPKGS_LIB is not set to a checkout of nixpkgs' lib (github:nix-community/nixpkgs.lib)",
    ),
    pytest.mark.skipif(
        shutil.which("nix-instantiate") is None, reason="nix-instantiate not installed"
    ),
]

COMMIT = "15852e8c16360a2fea060d615a32b45270f8a8fc"


def nix_eval(expr: str, tmp_path: Path) -> Any:
    env = {
        **os.environ,
        "NIX_STATE_DIR": str(tmp_path / "nix-state"),
        "NIX_CONFIG": "experimental-features = nix-command",
    }
    result = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def evaluator() -> str:
    return f"(import {EVAL} {{ nixpkgsLib = {Path(NIXPKGS_LIB).resolve()}; }})"


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    live: dict[str, Any] = nix_eval(f"{evaluator()}.golden", tmp_path_factory.mktemp("golden"))
    return live


def evaluate(module: str, tmp_path: Path) -> dict[str, Any]:
    result: dict[str, Any] = nix_eval(f"{evaluator()}.evalConfig ({module})", tmp_path)
    return result


def test_golden_file_matches_a_live_evaluation(golden: dict[str, Any]) -> None:
    committed = json.loads(GOLDEN.read_text())
    if committed != golden:
        diff = difflib.unified_diff(
            json.dumps(committed, indent=2, sort_keys=True).splitlines(),
            json.dumps(golden, indent=2, sort_keys=True).splitlines(),
            "tests/nix/golden.json",
            "live evaluation",
            lineterm="",
        )
        pytest.fail(
            "golden file is stale; run `make update-golden NIXPKGS_LIB=...`\n" + "\n".join(diff)
        )


def test_hosts_evaluate_without_failed_assertions(golden: dict[str, Any]) -> None:
    assert set(golden["hosts"]) == {"rtx5090-workstation", "h100-server", "l4-box"}
    for host, data in golden["hosts"].items():
        assert data["assertions"] == [], host


def test_rtx5090_llama_server_runs_a_27b_gguf_with_a_draft(golden: dict[str, Any]) -> None:
    host = golden["hosts"]["rtx5090-workstation"]
    unit = host["units"]["llama-server-main.service"]
    main = "/var/lib/inference/models/qwopus-27b/share/models/gguf/Qwopus3.6-27B-v1-preview-Q4_K_M.gguf"
    draft = "/var/lib/inference/models/qwen3-1_7b-draft/share/models/gguf/Qwen3-1.7B-Q4_K_M.gguf"
    assert unit["unitConfig"]["ConditionPathExists"] == [main, draft]
    assert unit["wantedBy"] == ["multi-user.target"]
    sc = unit["serviceConfig"]
    assert (sc["User"], sc["Group"], sc["MemoryDenyWriteExecute"]) == (
        "inference",
        "inference",
        True,
    )
    assert sc["Restart"] == "on-failure"
    assert unit["unitConfig"]["StartLimitBurst"] == 5
    exec_start = sc["ExecStart"]
    llama = golden["packages"]["llama-cpp"]
    assert exec_start.startswith(f'"{llama}/bin/llama-server" "-m" "{main}"')
    for flags in (
        '"-c" "262144"',
        '"-ctk" "q4_0" "-ctv" "q4_0"',
        '"-fa" "on"',
        '"-np" "1"',
        '"--metrics"',
        f'"-md" "{draft}" "-ngld" "99"',
        '"--port" "11435"',
        '"--host" "127.0.0.1"',
        '"--draft-p-min" "0.75"',
    ):
        assert flags in exec_start
    manifest = host["manifest"]
    assert manifest["units"]["llama-server-main.service"] == {
        "runtime": "llama-server",
        "models": ["qwopus-27b", "qwen3-1_7b-draft"],
        "cudaCapabilities": ["12.0"],
    }
    assert manifest["models"]["qwopus-27b"]["units"] == ["llama-server-main.service"]
    assert host["firewall"] == []
    assert any("qwopus-27b.revision" in w and "not reproducible" in w for w in host["warnings"])


def test_h100_vllm_triton_and_sglang_share_one_dual_entry(golden: dict[str, Any]) -> None:
    host = golden["hosts"]["h100-server"]
    entry = "/var/lib/inference/models/qwen3_5-2b"
    vllm = host["units"]["vllm-qwen.service"]
    assert vllm["unitConfig"]["ConditionPathExists"] == [
        f"{entry}/share/models/hub/models--Qwen--Qwen3.5-2B/refs/main"
    ]
    env = vllm["environment"]
    assert env["HF_HUB_CACHE"] == f"{entry}/share/models/hub"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert vllm["serviceConfig"]["MemoryDenyWriteExecute"] is False
    assert (
        f'"{golden["packages"]["vllm"]}/bin/vllm" "serve" "Qwen/Qwen3.5-2B" "--config"'
        in (vllm["serviceConfig"]["ExecStart"])
    )
    assert host["vllmSettings"]["qwen"]["gpu-memory-utilization"] == 0.3

    triton = host["units"]["triton.service"]
    assert triton["unitConfig"]["ConditionPathExists"] == [
        f"{entry}/share/models/qwen3_5_2b/config.pbtxt"
    ]
    assert triton["environment"]["HF_HUB_OFFLINE"] == "1"
    assert triton["environment"]["HF_HUB_CACHE"] == "/run/triton/hub"
    assert triton["serviceConfig"]["RuntimeDirectory"] == "triton"
    pre = triton["serviceConfig"]["ExecStartPre"]
    assert pre.endswith(
        f'"/run/triton" "qwen3_5_2b" "{entry}" "{{\\"gpu_memory_utilization\\":0.3}}"'
    )
    assert '"--http-port=8010"' in triton["serviceConfig"]["ExecStart"]

    sglang = host["units"]["sglang-qwen.service"]
    assert sglang["unitConfig"]["ConditionPathExists"] == vllm["unitConfig"]["ConditionPathExists"]
    assert sglang["environment"]["HF_HUB_CACHE"] == f"{entry}/share/models/hub"
    assert sglang["environment"]["HF_HUB_OFFLINE"] == "1"
    sc = sglang["serviceConfig"]
    assert (sc["User"], sc["Group"], sc["MemoryDenyWriteExecute"]) == (
        "inference",
        "inference",
        False,
    )
    assert sc["ExecStart"].startswith(
        f'"{golden["packages"]["sglang-env"]}/bin/python" "-m" "sglang.launch_server" '
        '"--model-path" "Qwen/Qwen3.5-2B" "--host" "127.0.0.1" "--port" "30000"'
    )
    for flags in (
        '"--mem-fraction-static" "0.3"',
        '"--context-length" "4096"',
        '"--served-model-name" "qwen3.5-2b"',
        '"--enable-metrics"',
    ):
        assert flags in sc["ExecStart"]

    model = host["manifest"]["models"]["qwen3_5-2b"]
    assert model["revision"] == COMMIT
    assert model["layout"] == "dual" and model["tritonName"] == "qwen3_5_2b"
    assert model["engineDefaults"] == {
        "gpu_memory_utilization": 0.85,
        "max_model_len": 4096,
        "dtype": "auto",
    }
    assert sorted(model["units"]) == ["sglang-qwen.service", "triton.service", "vllm-qwen.service"]
    assert host["manifest"]["units"]["triton.service"]["cudaCapabilities"] == ["9.0"]
    assert host["manifest"]["units"]["sglang-qwen.service"] == {
        "runtime": "sglang",
        "models": ["qwen3_5-2b"],
        "cudaCapabilities": ["9.0"],
    }

    pull = host["units"]["model-pull.service"]
    assert "network-online.target" in pull["after"] and "network-online.target" in pull["wants"]
    assert pull["environment"]["MODEL_PULL_MANIFEST"] == "/etc/inference/models.json"
    assert host["warnings"] == []


def test_l4_box_serves_fp8_on_vllm_for_sm89(golden: dict[str, Any]) -> None:
    host = golden["hosts"]["l4-box"]
    unit = host["units"]["vllm-qwen3-8b.service"]
    assert unit["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert host["firewall"] == [8000]
    assert host["manifest"]["units"]["vllm-qwen3-8b.service"]["cudaCapabilities"] == ["8.9"]
    assert host["manifest"]["models"]["qwen3-8b-fp8"]["layout"] == "hf"
    assert "model-pull.service" not in host["units"]  # autoPull is off


GGUF_MODEL = f'services.inference.models.g = {{ repo = "org/g-GGUF"; revision = "{COMMIT}"; layout = "gguf"; }};'
DUAL_MODEL = (
    f'services.inference.models.d = {{ repo = "org/d"; revision = "{COMMIT}"; layout = "dual"; }};'
)


def test_nar_hash_gates_on_the_exact_entry(tmp_path: Path) -> None:
    nar = "sha256-8ff8NJ1qJ0s8WbJgHHdFWGlsv1JFO2mMR7Jkjvoe1+/="
    result = evaluate(
        f"""{{ {GGUF_MODEL}
        services.inference.models.g.narHash = "{nar}";
        services.inference.llama-server.instances.a.model = {{ name = "g"; file = "m.gguf"; }}; }}""",
        tmp_path,
    )
    unit = result["units"]["llama-server-a.service"]
    path = "/var/lib/inference/by-hash/sha256-8ff8NJ1qJ0s8WbJgHHdFWGlsv1JFO2mMR7Jkjvoe1-_=/share/models/gguf/m.gguf"
    assert unit["unitConfig"]["ConditionPathExists"] == [path]
    assert f'"-m" "{path}"' in unit["serviceConfig"]["ExecStart"]
    assert result["manifest"]["models"]["g"]["narHash"] == nar


def test_api_key_goes_through_a_credential(tmp_path: Path) -> None:
    result = evaluate(
        f"""{{ {GGUF_MODEL}
        services.inference.llama-server.instances.a = {{
          model = {{ name = "g"; file = "m.gguf"; }}; apiKeyFile = "/run/secrets/llama-key"; }}; }}""",
        tmp_path,
    )
    sc = result["units"]["llama-server-a.service"]["serviceConfig"]
    assert sc["LoadCredential"] == ["api-key:/run/secrets/llama-key"]
    assert sc["ExecStart"].endswith(" --api-key-file %d/api-key")
    assert "/run/secrets" not in sc["ExecStart"]


def test_exclusive_gpu_makes_runtimes_conflict(tmp_path: Path) -> None:
    result = evaluate(
        f"""{{ {GGUF_MODEL} {DUAL_MODEL}
        services.inference.exclusiveGpu = true;
        services.inference.llama-server.instances.a.model = {{ name = "g"; file = "m.gguf"; }};
        services.inference.vllm.instances.b.model = "d";
        services.inference.sglang.instances.c = {{ model = "d"; settings.mem-fraction-static = 0.5; }}; }}""",
        tmp_path,
    )
    units = result["units"]
    assert sorted(units["llama-server-a.service"]["conflicts"]) == [
        "sglang-c.service",
        "vllm-b.service",
    ]
    assert sorted(units["vllm-b.service"]["conflicts"]) == [
        "llama-server-a.service",
        "sglang-c.service",
    ]
    sglang = units["sglang-c.service"]
    assert '"sglang.launch_server" "--model-path" "org/d"' in sglang["serviceConfig"]["ExecStart"]
    assert '"--mem-fraction-static" "0.5"' in sglang["serviceConfig"]["ExecStart"]
    assert sglang["environment"]["HF_HUB_OFFLINE"] == "1"
    assert result["assertions"] == []


def test_default_triton_name_and_no_pull_service_without_auto_pull(tmp_path: Path) -> None:
    result = evaluate(
        f"""{{ pkgs, ... }}: {{ {DUAL_MODEL}
        services.inference.models.d.tritonName = null;
        services.inference.triton = {{ enable = true; package = pkgs.triton-inference-server; models.d = {{ }}; }}; }}""",
        tmp_path,
    )
    assert result["manifest"]["models"]["d"]["tritonName"] == "d"
    assert "model-pull.service" not in result["units"]
    assert result["units"]["triton.service"]["unitConfig"]["ConditionPathExists"] == [
        "/var/lib/inference/models/d/share/models/d/config.pbtxt"
    ]


BROKEN = {
    "undeclared-llama": (
        '{ services.inference.llama-server.instances.a.model = { name = "nope"; file = "m.gguf"; }; }',
        'services.inference.llama-server.instances.a.model.name: model "nope" is not declared in services.inference.models.',
    ),
    "undeclared-vllm": (
        '{ services.inference.vllm.instances.v.model = "nope"; }',
        'services.inference.vllm.instances.v.model: model "nope" is not declared in services.inference.models.',
    ),
    "undeclared-triton": (
        "{ pkgs, ... }: { services.inference.triton = { enable = true; "
        "package = pkgs.triton-inference-server; models.nope = { }; }; }",
        'services.inference.triton.models.nope: model "nope" is not declared in services.inference.models.',
    ),
    "port-clash": (
        f"{{ {GGUF_MODEL} {DUAL_MODEL} "
        'services.inference.llama-server.instances.a = { model = { name = "g"; file = "m.gguf"; }; port = 9000; }; '
        'services.inference.vllm.instances.b = { model = "d"; port = 9000; }; }',
        "services.inference: port 9000 is used by more than one service: "
        "services.inference.llama-server.instances.a.port (llama-server-a.service), "
        "services.inference.vllm.instances.b.port (vllm-b.service).",
    ),
    "gguf-runtime-on-dual": (
        f'{{ {DUAL_MODEL} services.inference.llama-server.instances.a.model = {{ name = "d"; file = "m.gguf"; }}; }}',
        'services.inference.llama-server.instances.a.model: model "d" has layout "dual", but llama-server '
        'reads GGUF files: set services.inference.models.d.layout = "gguf".',
    ),
    "gguf-draft-on-dual": (
        f"{{ {GGUF_MODEL} {DUAL_MODEL} services.inference.llama-server.instances.a = "
        '{ model = { name = "g"; file = "m.gguf"; }; draft = { name = "d"; file = "x.gguf"; }; }; }',
        'services.inference.llama-server.instances.a.draft: model "d" has layout "dual"',
    ),
    "vllm-on-single": (
        f'{{ {DUAL_MODEL.replace("dual", "single")} services.inference.vllm.instances.v.model = "d"; }}',
        'services.inference.vllm.instances.v.model: vLLM cannot read model "d" with layout "single"; '
        "set services.inference.models.d.layout to one of: dual, hf.",
    ),
    "sglang-on-gguf": (
        f'{{ {GGUF_MODEL} services.inference.sglang.instances.s.model = "g"; }}',
        'services.inference.sglang.instances.s.model: SGLang cannot read model "g" with layout "gguf"; '
        "set services.inference.models.g.layout to one of: hf, dual.",
    ),
    "triton-on-hf": (
        "{ pkgs, ... }: { services.inference.models.h = "
        f'{{ repo = "org/h"; revision = "{COMMIT}"; layout = "hf"; }}; '
        "services.inference.triton = { enable = true; package = pkgs.triton-inference-server; models.h = { }; }; }",
        'services.inference.triton.models.h: Triton cannot read model "h" with layout "hf"; '
        "set services.inference.models.h.layout to one of: dual, single.",
    ),
    "relative-token-file": (
        f'{{ {GGUF_MODEL} services.inference.tokenFile = "secrets/hf"; }}',
        'services.inference.tokenFile must be an absolute path (got "secrets/hf").',
    ),
    "relative-api-key-file": (
        f"{{ {GGUF_MODEL} services.inference.llama-server.instances.a = "
        '{ model = { name = "g"; file = "m.gguf"; }; apiKeyFile = "key"; }; }',
        "services.inference.llama-server.instances.a.apiKeyFile must be an absolute path.",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_configuration_names_the_option(case: str, tmp_path: Path) -> None:
    module, message = BROKEN[case]
    result = evaluate(module, tmp_path)
    assert any(m.startswith(message) for m in result["assertions"]), result["assertions"]


def test_a_branch_revision_warns(tmp_path: Path) -> None:
    result = evaluate(
        '{ services.inference.models.x = { repo = "org/x"; revision = "main"; layout = "hf"; }; }',
        tmp_path,
    )
    assert result["assertions"] == []
    assert result["warnings"] == [
        'services.inference.models.x.revision is "main", not a 40-hex commit: '
        "the deployment is not reproducible (the branch may move)."
    ]
