# ruff: noqa: E501  (Nix snippets and messages are long literals)
"""services.inference.trtllm: the unit NixOS gets, and its command line and YAML options file
read back by trtllm-serve's parser.

trtllm-serve cannot be imported here (tests/systemd/trtllm_serve_standin.py says exactly why):
its parser is that named STAND-IN, click itself over the options TensorRT-LLM's own
API-stability reference lists for `trtllm-serve serve` (nixos/args/trtllm.json). The
expectation is always what the setting says in Nix.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from test_nixos_eval import COMMIT, checks, evaluate
from test_nixos_eval import pytestmark as needs_nix

sys.path.insert(0, str(Path(__file__).resolve().parent / "systemd"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "nix"))
import render_units
import trtllm_serve_standin as standin

ARGS = standin.load_args()
CACHE = "/var/cache/inference/trtllm-qwen"
HF_MODEL = (
    'services.inference.models.m = { repo = "org/M"; revision = "' + COMMIT + '"; layout = "hf"; };'
)
PACKAGE = 'services.inference.trtllm.package = pkgs.writeShellScriptBin "trtllm-serve" "exit 1";'


def module(instance: str, extra: str = "") -> str:
    return f'{{ pkgs, ... }}: {{ {HF_MODEL} {PACKAGE} services.inference.trtllm.instances.t = {{ model = "m"; {instance} }}; {extra} }}'


def exec_argv(exec_start: str) -> list[str]:
    args = [json.loads(m) for m in re.findall(r'"(?:[^"\\]|\\.)*"', exec_start)]
    return [a.replace("%%", "%").replace("$$", "$") for a in args]


def serve_argv(unit: dict[str, Any], snapshot: str) -> list[str]:
    """What trtllm-serve receives: the launcher runs `PROGRAM serve <snapshot> ARG...` (on
    demand, behind the GPU lock's flock)."""
    argv = exec_argv(unit["serviceConfig"]["ExecStart"])
    (start,) = [i for i, a in enumerate(argv) if a.endswith("/bin/trtllm-serve-snapshot")]
    _repo_dir, program, *rest = argv[start + 1 :]
    assert program.endswith("/bin/trtllm-serve")
    return ["serve", snapshot, *rest]


def with_options_file(argv: list[str], options: dict[str, Any], tmp_path: Path) -> list[str]:
    """The argv with the YAML file's store path replaced by a file of the same content."""
    if "--extra_llm_api_options" not in argv:
        return argv
    i = argv.index("--extra_llm_api_options") + 1
    f = tmp_path / "llm-api-options.yaml"
    f.write_text(json.dumps(options))  # pkgs.formats.yaml's output is read the same way
    return [*argv[:i], str(f), *argv[i + 1 :]]


# ---- the example host ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host() -> dict[str, Any]:
    data: dict[str, Any] = render_units.load_golden()["hosts"]["rtx5090-nvfp4"]
    return data


def test_the_unit_is_gated_on_the_entry_and_runs_trtllm_serve_on_its_snapshot(
    host: dict[str, Any],
) -> None:
    unit = host["units"]["trtllm-qwen.service"]
    repo_dir = (
        "/var/lib/inference/models/qwen3-32b-nvfp4/share/models/hub/models--nvidia--Qwen3-32B-NVFP4"
    )
    assert unit["unitConfig"]["ConditionPathExists"] == [f"{repo_dir}/refs/main"]
    argv = exec_argv(unit["serviceConfig"]["ExecStart"])
    assert argv[1] == repo_dir
    assert host["manifest"]["units"]["trtllm-qwen.service"]["runtime"] == "trtllm"
    assert host["manifest"]["models"]["qwen3-32b-nvfp4"]["units"] == ["trtllm-qwen.service"]


def test_every_cache_is_in_the_units_cache_directory(host: dict[str, Any]) -> None:
    """HOME, HF_HOME, FlashInfer's workspace and the compile caches: nothing can fall back to
    the passwd home (/homeless-shelter in a Nix build) or to a read-only path."""
    unit = host["units"]["trtllm-qwen.service"]
    env, sc = unit["environment"], unit["serviceConfig"]
    assert sc["CacheDirectory"] == "inference/trtllm-qwen"
    for var in (
        "HOME",
        "XDG_CACHE_HOME",
        "HF_HOME",
        "FLASHINFER_WORKSPACE_BASE",
        "TRITON_CACHE_DIR",
        "TORCHINDUCTOR_CACHE_DIR",
        "VLLM_CACHE_ROOT",
    ):
        assert env[var] == CACHE or env[var].startswith(CACHE + "/"), (var, env[var])
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HF_HUB_CACHE"] == "/var/lib/inference/models/qwen3-32b-nvfp4/share/models/hub"


def test_the_unit_is_hardened_and_may_use_the_gpu(host: dict[str, Any]) -> None:
    sc = host["units"]["trtllm-qwen.service"]["serviceConfig"]
    assert (sc["User"], sc["ProtectSystem"], sc["ProtectHome"], sc["PrivateDevices"]) == (
        "inference",
        "strict",
        True,
        False,
    )
    assert sc["DevicePolicy"] == "closed" and "char-nvidia-uvm rw" in sc["DeviceAllow"]
    assert sc["ReadOnlyPaths"] == ["/var/lib/inference"]
    assert sc["MemoryDenyWriteExecute"] is False  # PyTorch and its JIT kernels


def test_the_host_command_line_is_what_trtllm_serve_reads(
    host: dict[str, Any], tmp_path: Path
) -> None:
    unit = host["units"]["trtllm-qwen.service"]
    options = host["trtllmLlmApiOptions"]["qwen"]
    argv = with_options_file(serve_argv(unit, "/snapshot"), options, tmp_path)
    parsed = standin.parse(argv)
    assert (parsed["model"], parsed["host"], parsed["port"]) == ("/snapshot", "127.0.0.1", 8000)
    assert parsed["served_model_name"] == "qwen3-32b"
    assert (parsed["max_seq_len"], parsed["max_batch_size"]) == (40960, 8)
    assert parsed["llm_api_options"] == {
        "kv_cache_config": {"dtype": "fp8", "free_gpu_memory_fraction": 0.9}
    }


# ---- settings: flags where trtllm-serve has them, the rest in its YAML file ---------------------

SETTINGS = """settings = {
  max_seq_len = 8192;
  tp_size = 1;
  kv_cache_free_gpu_memory_fraction = 0.75;
  trust_remote_code = true;
  enable_chunked_prefill = false;
  telemetry = false;
  log_level = "warning";
  middleware = [ "a.b" "c.d" ];
  kv_cache_config = { dtype = "fp8"; enable_block_reuse = false; };
  cuda_graph_config.enable_padding = true;
  enable_attention_dp = false;
  print_iter_log = true;
  enable_iter_perf_stats = null;
};"""


@needs_nix[0]
@needs_nix[1]
@needs_nix[2]
def test_settings_reach_trtllm_serve_as_declared(tmp_path: Path) -> None:
    result = evaluate(module(SETTINGS), tmp_path / "eval")
    assert result["assertions"] == [] and result["warnings"] == []
    unit = result["units"]["trtllm-t.service"]
    options = result["trtllmLlmApiOptions"]["t"]
    # options of trtllm-serve (enable_attention_dp, a switch) stay flags even where they are
    # LLM API arguments too; null leaves a key out
    assert options == {
        "kv_cache_config": {"dtype": "fp8", "enable_block_reuse": False},
        "cuda_graph_config": {"enable_padding": True},
        "print_iter_log": True,
    }
    parsed = standin.parse(with_options_file(serve_argv(unit, "/s"), options, tmp_path))
    assert parsed["served_model_name"] == "org/M"  # the repo, as `vllm serve` would
    assert (parsed["max_seq_len"], parsed["tensor_parallel_size"]) == (8192, 1)
    assert parsed["free_gpu_memory_fraction"] == 0.75
    assert (parsed["trust_remote_code"], parsed["enable_chunked_prefill"]) == (True, False)
    assert parsed["enable_attention_dp"] is False
    assert (parsed["telemetry"], parsed["log_level"]) == (False, "warning")
    assert parsed["middleware"] == (
        "a.b",
        "c.d",
    )  # click's `multiple`: --middleware a.b --middleware c.d
    assert parsed["llm_api_options"] == options


@needs_nix[0]
@needs_nix[1]
@needs_nix[2]
def test_no_yaml_file_without_llm_api_arguments(tmp_path: Path) -> None:
    result = evaluate(module('settings.max_seq_len = 4096; servedModelName = "m";'), tmp_path)
    argv = exec_argv(result["units"]["trtllm-t.service"]["serviceConfig"]["ExecStart"])
    assert "--extra_llm_api_options" not in argv and "--config" not in argv
    assert (
        standin.parse(serve_argv(result["units"]["trtllm-t.service"], "/s"))["served_model_name"]
        == "m"
    )


BROKEN = {
    "no-package": (
        f'{{ {HF_MODEL} services.inference.trtllm.instances.t.model = "m"; }}',
        "services.inference.trtllm.package is not set (instance t): nixpkgs has no TensorRT-LLM; set it to a package with bin/trtllm-serve.",
    ),
    "gguf-layout": (
        '{ pkgs, ... }: { services.inference.models.m = { repo = "org/M-GGUF"; revision = "'
        + COMMIT
        + '"; layout = "gguf"; }; '
        + PACKAGE
        + ' services.inference.trtllm.instances.t.model = "m"; }',
        'services.inference.trtllm.instances.t.model: TensorRT-LLM cannot read model "m" with layout "gguf"',
    ),
    "host-in-settings": (
        module('settings.host = "0.0.0.0";'),
        "services.inference.trtllm.instances.t.settings.host: set services.inference.trtllm.instances.t.host instead",
    ),
    "served-name-in-settings": (
        module('settings.served_model_name = "x";'),
        "services.inference.trtllm.instances.t.settings.served_model_name: set services.inference.trtllm.instances.t.servedModelName instead",
    ),
    "options-file-in-settings": (
        module('settings.config = "/etc/my.yaml";'),
        "services.inference.trtllm.instances.t.settings.config: set the LLM API arguments themselves in services.inference.trtllm.instances.t.settings instead; the module passes --config itself.",
    ),
    "model-in-settings": (
        module('settings.model = "/elsewhere";'),
        "services.inference.trtllm.instances.t.settings.model: the module passes the entry's snapshot",
    ),
}


@needs_nix[0]
@needs_nix[1]
@needs_nix[2]
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_instance_names_the_option(case: str, tmp_path: Path) -> None:
    expr, message = BROKEN[case]
    result = checks(expr, tmp_path)
    assert any(m.startswith(message) for m in result["assertions"]), result["assertions"]


@needs_nix[0]
@needs_nix[1]
@needs_nix[2]
def test_what_trtllm_serve_would_not_read_as_meant_warns(tmp_path: Path) -> None:
    result = checks(
        module(
            'settings = { max_seq_len = true; trust_remote_code = 1; kv_cache_confg.dtype = "fp8"; };'
        ),
        tmp_path,
    )
    assert result["assertions"] == []
    version = ARGS["version"]
    assert sorted(result["warnings"]) == sorted(
        [
            f"services.inference.trtllm.instances.t.settings.max_seq_len: --max_seq_len of trtllm-serve {version} takes a value, not true/false.",
            f"services.inference.trtllm.instances.t.settings.trust_remote_code: --trust_remote_code of trtllm-serve {version} is a switch: set it to true or false.",
            f"services.inference.trtllm.instances.t.settings.kv_cache_confg: neither an option of trtllm-serve nor an LLM API argument of TensorRT-LLM {version} (as far as the list model-pull ships knows); it goes into the YAML options file, which TensorRT-LLM refuses if it does not know it.",
        ]
    )


# ---- the stand-in parser is as strict as trtllm-serve's -----------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "/s", "--max-seq-len", "1"], "No such option '--max-seq-len'"),
        (["serve", "/s", "--port", "eighty"], "'eighty' is not a valid integer"),
        (
            ["serve", "/s", "--kv_cache_dtype", "int8"],
            "'int8' is not one of 'auto', 'fp8', 'nvfp4'",
        ),
        (
            ["serve", "/s", "--backend", "tensorrt"],
            "'tensorrt' is not one of '_autodeploy', 'pytorch'",
        ),
        (["serve", "/s", "--trust_remote_code", "true"], "unexpected extra argument (true)"),
        (["serve"], "Missing argument 'MODEL'"),
        (["/s", "--port", "1"], "expected `trtllm-serve serve MODEL ...`"),
    ],
)
def test_the_stand_in_refuses_what_trtllm_serve_refuses(argv: list[str], message: str) -> None:
    with pytest.raises(standin.RefusedError, match=re.escape(message)):
        standin.parse(argv)


def test_the_stand_in_refuses_a_yaml_key_that_is_no_llm_api_argument(tmp_path: Path) -> None:
    f = tmp_path / "o.yaml"
    f.write_text("kv_cache_config:\n  dtype: fp8\nmax_model_len: 4096\n")
    with pytest.raises(
        standin.RefusedError, match=r"not LLM API arguments of TensorRT-LLM .*: max_model_len"
    ):
        standin.parse(["serve", "/s", "--extra_llm_api_options", str(f)])
    f.write_text("kv_cache_config:\n  dtype: fp8\n")
    assert standin.parse(["serve", "/s", "--config", str(f)])["llm_api_options"] == {
        "kv_cache_config": {"dtype": "fp8"}
    }


def test_the_option_list_says_where_it_comes_from() -> None:
    """Not generated (no importable TensorRT-LLM here): transcribed, and it says so; every
    flag of the module's kinds is one of the stand-in's parameters."""
    assert "transcribed" in ARGS and "pypi.nvidia.com" in ARGS["transcribed"]
    flags = {
        f[2:]
        for p in ARGS["serve"]["params"].values()
        for f in p["flags"]
        if not f.startswith("--no-")
    }
    assert set(ARGS["options"]) == flags
    assert {"host", "port", "served_model_name", "extra_llm_api_options", "config"} <= flags
    assert {"kv_cache_config", "cuda_graph_config", "speculative_config"} <= set(ARGS["llmApiArgs"])


@needs_nix[0]
@needs_nix[1]
@needs_nix[2]
def test_a_release_without_served_model_name_gets_no_such_flag(tmp_path: Path) -> None:
    """A package's own option list (passthru.runtimeArgs) decides what is rendered: a
    trtllm-serve without --served_model_name would refuse it and never start."""
    older = {
        **ARGS,
        "version": "1.0",
        "options": {k: v for k, v in ARGS["options"].items() if k != "served_model_name"},
    }
    package = (
        'services.inference.trtllm.package = (pkgs.writeShellScriptBin "trtllm-serve" "exit 1")'
        f" // {{ runtimeArgs = builtins.fromJSON {json.dumps(json.dumps(older))}; }};"
    )
    expr = module('servedModelName = "m";').replace(PACKAGE, package)
    result = evaluate(expr, tmp_path)
    argv = exec_argv(result["units"]["trtllm-t.service"]["serviceConfig"]["ExecStart"])
    assert "--served_model_name" not in argv and "--host" in argv


@needs_nix[0]
@needs_nix[1]
@needs_nix[2]
def test_trtllm_on_demand_binds_loopback_behind_its_socket_and_gates_on_health(
    tmp_path: Path,
) -> None:
    """The same onDemand as the other runtimes (nixos/lib.nix, onDemandUnits): the public
    address is a socket, trtllm-serve binds loopback, and the proxy waits for its /health."""
    result = evaluate(module('host = "0.0.0.0"; onDemand.enable = true;'), tmp_path)
    assert result["assertions"] == []
    units = result["units"]
    assert units["trtllm-t.socket"]["listenStreams"] == ["0.0.0.0:8000"]
    sc = units["trtllm-t.service"]["serviceConfig"]
    parsed = standin.parse(serve_argv(units["trtllm-t.service"], "/s"))
    assert (parsed["host"], parsed["port"]) == ("127.0.0.1", 8000)
    assert sc["ExecStartPost"].endswith('"ready" "http://127.0.0.1:8000/health"')
    assert result["manifest"]["units"]["trtllm-t.service"]["onDemand"]["idleTimeout"] == 300
