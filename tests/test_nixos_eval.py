# ruff: noqa: E501  (Nix snippets, store paths and assertion messages are long literals)
"""The services.inference modules evaluated with nixpkgs' lib (lib.evalModules over nixos/,
tests/nix/stubs.nix and each host). Needs NIXPKGS_LIB: a checkout of nixpkgs' lib, e.g.
github:nix-community/nixpkgs.lib (scripts/test.sh uses ../shared/nixpkgs-lib when it exists)."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
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


def run_nix_eval(expr: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "NIX_STATE_DIR": str(tmp_path / "nix-state"),
        "NIX_CONFIG": "experimental-features = nix-command",
    }
    return subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def nix_eval(expr: str, tmp_path: Path) -> Any:
    result = run_nix_eval(expr, tmp_path)
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


def checks(module: str, tmp_path: Path) -> dict[str, Any]:
    """What NixOS checks before building anything: failed assertions and warnings."""
    result: dict[str, Any] = nix_eval(f"{evaluator()}.evalChecks ({module})", tmp_path)
    return result


# Packages that nixpkgs lacks, as a machine would give them (the test's own stand-ins).
SGLANG_PACKAGE = 'services.inference.sglang.package = pkgs.writeShellScriptBin "python" "exit 1";'
TRITON_PACKAGE = 'package = pkgs.writeShellScriptBin "tritonserver" "exit 1";'


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
    assert set(golden["hosts"]) == {
        "rtx5090-workstation",
        "h100-server",
        "l4-box",
        "fleet-puller",
        "fleet-node",
        "vllm-on-demand",  # a test host: tests/nix/vllm-on-demand.nix
    }
    for host, data in golden["hosts"].items():
        assert data["assertions"] == [], host


def test_rtx5090_llama_server_follows_its_declaration(golden: dict[str, Any]) -> None:
    host = golden["hosts"]["rtx5090-workstation"]
    unit = host["units"]["llama-server-main.service"]
    main = "/var/lib/inference/models/qwopus-27b/share/models/gguf/Qwopus3.6-27B-v1-preview-Q4_K_M.gguf"
    draft = "/var/lib/inference/models/qwen3-1_7b-draft/share/models/gguf/Qwen3-1.7B-Q4_K_M.gguf"
    assert unit["unitConfig"]["ConditionPathExists"] == [main, draft]
    # on demand: started by its socket, not at boot
    assert unit["wantedBy"] == []
    assert host["units"]["llama-server-main.socket"]["unitConfig"]["ConditionPathExists"] == [
        main,
        draft,
    ]
    sc = unit["serviceConfig"]
    assert (sc["User"], sc["Group"], sc["MemoryDenyWriteExecute"]) == (
        "inference",
        "inference",
        True,
    )
    assert unit["unitConfig"]["StartLimitBurst"] == 5
    exec_start = sc["ExecStart"]
    llama = golden["packages"]["llama-cpp"]
    assert f'"{llama}/bin/llama-server" "-m" "{main}"' in exec_start
    for flags in (
        '"-c" "262144"',
        '"-ctk" "q4_0" "-ctv" "q4_0"',
        '"-fa" "on"',
        '"-np" "1"',
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
        "onDemand": {"idleTimeout": 900, "sockets": ["llama-server-main.socket"]},
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
    # the settings as flags (tests/test_runtime_args.py reads them back with vLLM's parser)
    assert vllm["serviceConfig"]["ExecStart"] == (
        f'"{golden["packages"]["vllm"]}/bin/vllm" "serve" "Qwen/Qwen3.5-2B" '
        '"--host" "127.0.0.1" "--port" "8000" "--gpu-memory-utilization" "0.3" '
        '"--max-model-len" "4096" "--served-model-name" "qwen3.5-2b"'
    )

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
    # vLLM's build says what it has code for; the stand-ins for Triton and SGLang say nothing.
    assert host["manifest"]["units"]["vllm-qwen.service"]["cudaCapabilities"] == ["9.0"]
    assert host["manifest"]["units"]["triton.service"]["cudaCapabilities"] == []
    assert host["manifest"]["units"]["sglang-qwen.service"] == {
        "runtime": "sglang",
        "models": ["qwen3_5-2b"],
        "cudaCapabilities": [],
    }

    # PyTorch runtimes compile kernels at run time: a C compiler first on PATH, the rest of
    # PATH what NixOS gives every service; the caches in the unit's own CacheDirectory
    for unit in ("vllm-qwen.service", "triton.service", "sglang-qwen.service"):
        env = host["units"][unit]["environment"]
        path = env["PATH"].split(":")
        assert path[0] == f"{golden['packages']['cc']}/bin", unit
        assert f"{golden['packages']['coreutils']}/bin" in path, unit
        cache = "/var/cache/" + host["units"][unit]["serviceConfig"]["CacheDirectory"]
        for var in (
            "HOME",
            "XDG_CACHE_HOME",
            "TRITON_CACHE_DIR",
            "TORCHINDUCTOR_CACHE_DIR",
            "VLLM_CACHE_ROOT",
            "FLASHINFER_WORKSPACE_BASE",
        ):
            assert env[var].startswith(cache), (unit, var, env[var])

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
        f"""{{ pkgs, ... }}: {{ {GGUF_MODEL} {DUAL_MODEL} {SGLANG_PACKAGE}
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
        services.inference.triton = {{ enable = true; {TRITON_PACKAGE} models.d = {{ }}; }}; }}""",
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
        f"{TRITON_PACKAGE} models.nope = {{ }}; }}; }}",
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
        f'{{ pkgs, ... }}: {{ {GGUF_MODEL} {SGLANG_PACKAGE} services.inference.sglang.instances.s.model = "g"; }}',
        'services.inference.sglang.instances.s.model: SGLang cannot read model "g" with layout "gguf"; '
        "set services.inference.models.g.layout to one of: hf, dual.",
    ),
    "triton-on-hf": (
        "{ pkgs, ... }: { services.inference.models.h = "
        f'{{ repo = "org/h"; revision = "{COMMIT}"; layout = "hf"; }}; '
        f"services.inference.triton = {{ enable = true; {TRITON_PACKAGE} models.h = {{ }}; }}; }}",
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


# ---- packages nixpkgs lacks (issue 9, item 3) --------------------------------------------------


def test_sglang_without_a_package_stops_with_one_line_naming_the_option(tmp_path: Path) -> None:
    result = checks(
        f'{{ {DUAL_MODEL} services.inference.sglang.instances.s.model = "d"; }}', tmp_path
    )
    assert result["assertions"] == [
        "services.inference.sglang.package is not set (instance s): nixpkgs has no SGLang "
        "package; set it to a Python environment with SGLang."
    ]


def test_triton_without_a_package_stops_with_one_line_naming_the_option(tmp_path: Path) -> None:
    result = checks(
        f"{{ {DUAL_MODEL} services.inference.triton = {{ enable = true; models.d = {{ }}; }}; }}",
        tmp_path,
    )
    assert result["assertions"] == [
        "services.inference.triton.package is not set: nixpkgs has no Triton Inference Server; "
        "set it to your build (with the vLLM backend)."
    ]


def test_the_stubs_have_only_packages_nixpkgs_has(tmp_path: Path) -> None:
    lib = f"import {Path(NIXPKGS_LIB).resolve()}/lib"
    names = nix_eval(
        f"let s = import {ROOT}/tests/nix/stubs.nix {{ lib = {lib}; }}; p = s.pkgsFor {{ }}; in "
        "{ top = builtins.attrNames p; python = builtins.attrNames p.python3Packages; }",
        tmp_path,
    )
    # Each of these is an attribute of nixpkgs (pkgs/top-level/all-packages.nix, by-name,
    # python-packages.nix); sglang, triton-inference-server and model-pull are not.
    assert set(names["top"]) <= {
        "cudaPackages",
        "llama-cpp",
        "vllm",
        "coreutils",
        "findutils",
        "gnugrep",
        "gnused",
        "systemd",
        "stdenv",
        "jq",
        "nix",
        "python3Packages",
        "writeText",
        "writeShellScript",
        "writeShellScriptBin",
        "writeShellApplication",
        "formats",
        "util-linux",
    }
    assert names["python"] == ["callPackage", "toPythonApplication", "torch"]


# ---- the flake's modules combine (item 6) ------------------------------------------------------


def test_the_flake_exports_combine(tmp_path: Path) -> None:
    module = (
        f"{{ pkgs, ... }}: {{ {GGUF_MODEL} {DUAL_MODEL} {SGLANG_PACKAGE} "
        "services.inference.autoPull = true; "
        'services.inference.llama-server.instances.a.model = { name = "g"; file = "m.gguf"; }; '
        'services.inference.vllm.instances.b.model = "d"; '
        'services.inference.sglang.instances.c = { model = "d"; port = 30001; }; }'
    )
    exports = '[ "default" "vllm" "llama-server" "sglang" "triton" ]'
    result = nix_eval(f"{evaluator()}.evalFlakeModules {exports} ({module})", tmp_path)
    assert result["assertions"] == []
    assert {"llama-server-a.service", "vllm-b.service", "sglang-c.service"} <= set(result["units"])
    # The helper, once: services.inference.package's own default (nix/model-pull.nix).
    pull = result["units"]["model-pull.service"]["serviceConfig"]["ExecStart"]
    assert pull.endswith('-model-pull/bin/model-pull"'), pull


# ---- the auto-pull unit (item 4) and the switch as the loop -----------------------------------


def test_the_auto_pull_unit_has_a_cache_the_gpu_and_systemd_retries(
    golden: dict[str, Any],
) -> None:
    unit = golden["hosts"]["h100-server"]["units"]["model-pull.service"]
    sc, env = unit["serviceConfig"], unit["environment"]
    # hf-xet writes under $HF_HOME/xet: HF_HOME is the unit's own CacheDirectory.
    assert env["HF_HOME"] == f"/var/cache/{sc['CacheDirectory']}"
    assert sc["ProtectHome"] is True
    # The pull-time GPU check sees the NVIDIA devices, and only those.
    assert sc["PrivateDevices"] is False
    assert sc["DevicePolicy"] == "closed"
    assert {"char-nvidiactl rw", "char-nvidia rw"} <= set(sc["DeviceAllow"])
    # systemd retries with a growing delay; no shell loop around the helper.
    assert sc["ExecStart"] == f'"{golden["packages"]["model-pull"]}/bin/model-pull"'
    assert (sc["Restart"], sc["RestartSec"], sc["RestartSteps"], sc["RestartMaxDelaySec"]) == (
        "on-failure",
        "30s",
        8,
        "1h",
    )
    # Failures a retry cannot change (errors.py) stop the unit at once: not found, no match,
    # pin mismatch, does not fit...; a network failure (18) is retried.
    prevented = set(sc["RestartPreventExitStatus"])
    assert {"10", "11", "13", "22", "31", "32"} <= prevented and "18" not in prevented
    assert (sc["Type"], sc["RemainAfterExit"]) == ("exec", True)


def test_the_runtime_units_do_not_wait_for_the_pull(golden: dict[str, Any]) -> None:
    units = golden["hosts"]["h100-server"]["units"]
    pull = units["model-pull.service"]
    assert pull["after"] == ["network-online.target"] and pull["wants"] == ["network-online.target"]
    assert pull["wantedBy"] == ["multi-user.target"]
    for name, unit in units.items():
        # Gated by ConditionPathExists and restarted by model-pull; an After= on a pull that
        # may take hours would hold their start (and boot) for it.
        assert "model-pull.service" not in unit["after"] + unit["wants"] + unit["requires"], name


def trigger(module: str, tmp_path: Path) -> str:
    result = evaluate("{ services.inference.autoPull = true; " + module + " }", tmp_path)
    value: str = result["units"]["model-pull.service"]["unitConfig"]["X-Restart-Triggers"]
    return value


def test_a_switch_that_adds_or_changes_a_model_restarts_the_pull(tmp_path: Path) -> None:
    server = 'services.inference.llama-server.instances.a.model = { name = "g"; file = "m.gguf"; };'
    base = trigger(GGUF_MODEL + server, tmp_path)
    assert base.startswith("/nix/store/") and base.endswith("-X-Restart-Triggers-model-pull")
    changed = GGUF_MODEL.replace(COMMIT, "0" * 40)
    added = f'services.inference.models.h = {{ repo = "org/h"; revision = "{COMMIT}"; layout = "hf"; }};'
    assert trigger(changed + server, tmp_path) != base
    assert trigger(GGUF_MODEL + added + server, tmp_path) != base
    # A change that is not in the manifest (a port) does not pull again.
    assert (
        trigger(
            GGUF_MODEL + server + "services.inference.llama-server.instances.a.port = 9123;",
            tmp_path,
        )
        == base
    )


# ---- '%' in what systemd expands specifiers in (item 9) ----------------------------------------


def test_a_percent_in_the_root_or_a_model_name_is_refused(tmp_path: Path) -> None:
    result = checks(
        f'{{ {GGUF_MODEL} services.inference.root = "/srv/a%y"; '
        f'services.inference.models."m%y" = {{ repo = "org/m"; revision = "{COMMIT}"; layout = "hf"; }}; }}',
        tmp_path,
    )
    assert result["assertions"] == [
        "services.inference.root must not contain '%' (got \"/srv/a%y\"): systemd reads '%' "
        "in unit files as a specifier.",
        'services.inference.models."m%y": a model name must be a Nix store name (letters, '
        "digits and + - . _ ? =, not starting with '.'): model-pull names its entry "
        "<hash>-<name>.",
    ]


def test_a_percent_in_a_file_a_key_path_an_endpoint_or_gpus_is_escaped(tmp_path: Path) -> None:
    result = evaluate(
        f"""{{ {GGUF_MODEL}
        services.inference.autoPull = true;
        services.inference.endpoint = "https://mirror.example/hf%2Fmain";
        services.inference.llama-server.instances.a = {{
          model = {{ name = "g"; file = "q%y.gguf"; }};
          apiKeyFile = "/run/secrets/k%y"; gpus = [ "GPU-%n" ]; }}; }}""",
        tmp_path,
    )
    unit = result["units"]["llama-server-a.service"]
    assert unit["unitConfig"]["ConditionPathExists"] == [
        "/var/lib/inference/models/g/share/models/gguf/q%%y.gguf"
    ]
    assert unit["serviceConfig"]["LoadCredential"] == ["api-key:/run/secrets/k%%y"]
    assert unit["environment"]["CUDA_VISIBLE_DEVICES"] == "GPU-%%n"
    assert (
        '"-m" "/var/lib/inference/models/g/share/models/gguf/q%%y.gguf"'
        in (unit["serviceConfig"]["ExecStart"])
    )
    pull = result["units"]["model-pull.service"]
    assert pull["environment"]["HF_ENDPOINT"] == "https://mirror.example/hf%%2Fmain"
    # The manifest is read by model-pull, not systemd: the values as declared.
    assert result["manifest"]["endpoint"] == "https://mirror.example/hf%2Fmain"


# ---- cudaCapabilities: what each unit's runtime package was built for (item 7) ---------------


def caps(config: str, servers: str, tmp_path: Path) -> dict[str, list[str]]:
    result = evaluate(
        f"{{ pkgs, ... }}: {{ {GGUF_MODEL} {DUAL_MODEL} nixpkgs.config = {config}; "
        'services.inference.llama-server.instances.a.model = { name = "g"; file = "m.gguf"; }; '
        f'services.inference.vllm.instances.b.model = "d"; {servers} }}',
        tmp_path,
    )
    return {u: v["cudaCapabilities"] for u, v in result["manifest"]["units"].items()}


def test_a_cpu_build_has_no_cuda_capabilities(tmp_path: Path) -> None:
    # cudaCapabilities alone builds nothing for CUDA: nixpkgs needs cudaSupport.
    assert caps('{ cudaCapabilities = [ "8.9" ]; }', "", tmp_path) == {
        "llama-server-a.service": [],
        "vllm-b.service": [],
    }


def test_a_cuda_build_lists_what_each_runtime_was_built_for(tmp_path: Path) -> None:
    config = '{ cudaSupport = true; allowUnfree = true; cudaCapabilities = [ "8.9" "12.0" ]; }'
    # llama.cpp builds every configured capability; nixpkgs' vLLM 0.11 only those its
    # kernels support (no Blackwell), so 12.0 is not in its TORCH_CUDA_ARCH_LIST.
    assert caps(config, "", tmp_path) == {
        "llama-server-a.service": ["8.9", "12.0"],
        "vllm-b.service": ["8.9"],
    }


def test_a_package_built_its_own_way_is_read_from_the_package(tmp_path: Path) -> None:
    servers = (
        # An override with its own CMAKE_CUDA_ARCHITECTURES (as users do for one GPU).
        "services.inference.llama-server.package = pkgs.llama-cpp // { cmakeFlags = "
        '[ "-DGGML_CUDA:BOOL=TRUE" "-DCMAKE_CUDA_ARCHITECTURES:STRING=86;90a-real" ]; }; '
        # A package that says what it has, the way nixpkgs' torch does.
        'services.inference.vllm.instances.b.package = pkgs.vllm // { cudaCapabilities = [ "10.0f" ]; };'
    )
    assert caps("{ }", servers, tmp_path) == {
        "llama-server-a.service": ["8.6", "9.0a"],
        "vllm-b.service": ["10.0f"],
    }


# ---- the VM test (item 1): what can be checked without KVM -----------------------------------

VM_TESTS = sorted(p.name for p in (ROOT / "tests/vm").glob("*.nix"))
# What the test driver's namespace holds besides the nodes (nixos/lib/test-driver, Driver.test_symbols).
DRIVER_NAMES = [
    "start_all",
    "test_script",
    "machines",
    "vlans",
    "driver",
    "log",
    "os",
    "create_machine",
    "subtest",
    "run_tests",
    "join_all",
    "retry",
    "serial_stdout_off",
    "serial_stdout_on",
    "polling_condition",
    "Machine",
]


@pytest.mark.parametrize("test", VM_TESTS)
def test_the_vm_test_evaluates_with_a_read_only_nixpkgs(test: str, tmp_path: Path) -> None:
    result = nix_eval(f'{evaluator()}.vmTest "{test}"', tmp_path)
    for name, node in result["nodes"].items():
        assert node["assertions"] == [], name
        assert node["manifest"] is not None, name


@pytest.mark.parametrize("test", VM_TESTS)
def test_the_vm_test_script_is_python_the_driver_can_run(test: str, tmp_path: Path) -> None:
    result = nix_eval(f'{evaluator()}.vmTest "{test}"', tmp_path)
    script = tmp_path / "test_script.py"
    script.write_text(result["testScript"])
    compile(result["testScript"], str(script), "exec")
    # Names the driver defines (nixos/lib/test-driver) are known; any other is a typo.
    lint = subprocess.run(
        [
            str(ROOT / ".venv/bin/ruff"),
            "check",
            "--no-cache",
            "--isolated",
            "--select",
            "F,E9",
            "--config",
            f"builtins = {json.dumps(DRIVER_NAMES + list(result['nodes']))}",
            str(script),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_reads_the_escaped_values_as_declared(tmp_path: Path) -> None:
    """systemd itself resolves the rendered values: the gate is the file as named, with '%'."""
    sys.path.insert(0, str(ROOT / "tests/nix"))
    import render_units

    root = tmp_path / "state"
    result = evaluate(
        f"""{{ {GGUF_MODEL} services.inference.root = "{root}";
        services.inference.llama-server.instances.a = {{
          model = {{ name = "g"; file = "q%y.gguf"; }}; apiKeyFile = "/run/k%y"; }}; }}""",
        tmp_path,
    )
    gguf = root / "models/g/share/models/gguf/q%y.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF")
    (condition,) = result["units"]["llama-server-a.service"]["unitConfig"]["ConditionPathExists"]
    checked = subprocess.run(
        ["systemd-analyze", "condition", f"ConditionPathExists={condition}"],
        capture_output=True,
        text=True,
        check=False,
    )
    # Unescaped, "%y" resolves to the unit file's path (or, unknown, drops the condition).
    assert f"ConditionPathExists={gguf} succeeded" in checked.stdout + checked.stderr, (
        checked.stdout + checked.stderr
    )
    unit = tmp_path / "llama-server-a.service"
    unit.write_text(
        render_units.render_unit(result["units"]["llama-server-a.service"]).replace(
            result["units"]["llama-server-a.service"]["serviceConfig"]["ExecStart"], "/bin/true"
        )
    )
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    assert "specifier" not in verify.stderr, verify.stderr


# ---- a fleet: binary caches (issue 15) ---------------------------------------------------------


def test_the_caches_go_into_the_manifest_and_the_pull_unit_gets_nix(golden: dict[str, Any]) -> None:
    node = golden["hosts"]["fleet-node"]
    assert node["manifest"]["caches"] == {
        "urls": ["http://fleet-puller:5000"],
        "trustedPublicKeys": [],
        "stalledTimeout": 60,
    }
    pull = node["units"]["model-pull.service"]
    # `path` first, then what NixOS gives every service
    path = pull["environment"]["PATH"].split(":")
    assert path[0] == f"{golden['packages']['nix']}/bin"
    assert f"{golden['packages']['coreutils']}/bin" in path
    assert (
        pull["serviceConfig"]["ExecStart"] == f'"{golden["packages"]["model-pull"]}/bin/model-pull"'
    )
    # The caches stay out of nix.settings while the entries are not in /nix/store: every Nix
    # operation of the machine would ask them (and remember their misses for an hour).
    assert node["nixSettings"] == {}
    assert golden["hosts"]["l4-box"]["manifest"]["caches"]["urls"] == []
    h100_pull = golden["hosts"]["h100-server"]["units"]["model-pull.service"]["environment"]
    assert golden["packages"]["nix"] not in h100_pull["PATH"]


def test_the_puller_keeps_its_entries_in_the_nix_store_and_serves_them(
    golden: dict[str, Any],
) -> None:
    puller = golden["hosts"]["fleet-puller"]
    pull = puller["units"]["model-pull.service"]
    assert pull["serviceConfig"]["ExecStart"].endswith('"--store" "nix"')
    assert puller["harmonia"] == {"settings": {"bind": "[::]:5000"}}
    assert 5000 in puller["firewall"]
    node = golden["hosts"]["fleet-node"]
    # One declaration, one name: the path the node asks for is the one the puller has.
    assert puller["manifest"]["models"] == node["manifest"]["models"]


def test_with_the_nix_store_the_caches_go_into_nix_settings(tmp_path: Path) -> None:
    key = "fleet-1:LssfjViz6xR/Ob2lf3fksT2BG6Lusi6KpUHbdyPfbPY="
    result = evaluate(
        f"""{{ {GGUF_MODEL}
        services.inference.nixStore = true;
        services.inference.caches = {{ urls = [ "http://a:5000" ]; trustedPublicKeys = [ "{key}" ]; }};
        services.inference.llama-server.instances.a.model = {{ name = "g"; file = "m.gguf"; }}; }}""",
        tmp_path,
    )
    assert result["nixSettings"] == {
        "extra-substituters": ["http://a:5000"],
        "extra-trusted-public-keys": [key],
    }
    assert result["manifest"]["caches"]["trustedPublicKeys"] == [key]


def test_a_key_that_is_not_name_colon_base64_names_the_option(tmp_path: Path) -> None:
    result = run_nix_eval(
        f"""{evaluator()}.evalConfig {{ {GGUF_MODEL}
        services.inference.caches.trustedPublicKeys = [ "no key here" ]; }}""",
        tmp_path,
    )
    assert result.returncode != 0
    assert "services.inference.caches.trustedPublicKeys" in result.stderr
