"""A STAND-IN for trtllm-serve's command-line parser, named as such, at least as strict as it.

Why not the real one: TensorRT-LLM cannot be imported on this machine. PyPI's `tensorrt-llm`
(1.2.1 and every older release) is an sdist stub whose build step downloads the real wheel from
pypi.nvidia.com, which is not reachable here ("This is a special placeholder package which
downloads a real wheel package from https://pypi.nvidia.com/"); no release has a wheel on
PyPI. And the real `tensorrt_llm/commands/serve.py` imports torch's CUDA device count,
TensorRT-LLM's C++ bindings and MPI at module level, before its click command exists.

What this is instead: trtllm-serve's `serve` is a click command (tensorrt_llm/commands/serve.py,
in a click group whose default command is `serve`). This builds a click command with the same
options, the same flags and aliases, types, choices and `multiple`, from nixos/args/trtllm.json,
which is transcribed from TensorRT-LLM's own API-stability reference for that command
(tests/unittest/api_stability/references/trtllm_serve_cli.yaml, which its CI diffs against the
live click group), and parses with click itself: an unknown option, a missing value, a value of
the wrong type or outside the choices fails as it does in trtllm-serve. Then it does what
`serve` does with --extra_llm_api_options (alias --config): `yaml.safe_load` of the file, whose
top-level keys must be LLM API arguments; a key outside the list is refused, which is stricter
than TensorRT-LLM wherever the list lags behind it. Nested keys (kv_cache_config.dtype, ...)
are not checked.

    parse(["serve", MODEL, "--port", "8000", ...]) -> {"model": ..., "port": 8000, ...}
    raises RefusedError(message) where trtllm-serve would exit with a usage error
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
import yaml

# nixos/args/trtllm.json of this checkout; in a test container, where the probe runs, the
# path of its bind (TRTLLM_SERVE_ARGS).
ARGS_FILE = Path(
    os.environ.get("TRTLLM_SERVE_ARGS")
    or Path(__file__).resolve().parents[2] / "nixos" / "args" / "trtllm.json"
)


class RefusedError(Exception):
    """What trtllm-serve would refuse, in its words where click has them."""


def load_args(path: Path = ARGS_FILE) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _param(name: str, spec: dict[str, Any]) -> click.Option:
    flags = list(spec["flags"])
    kind = spec["type"]
    if kind == "bool":  # --X/--no-X
        on = [f for f in flags if not f.startswith("--no-")]
        off = [f for f in flags if f.startswith("--no-")]
        return click.Option([f"{on[0]}/{off[0]}", name], default=True)
    if kind == "flag":
        return click.Option([*flags, name], is_flag=True, default=False)
    types: dict[str, click.ParamType[Any]] = {
        "int": click.INT,
        "float": click.FLOAT,
        "str": click.STRING,
        "path": click.Path(exists=True, readable=True, resolve_path=True),
    }
    ptype = click.Choice(spec["choices"]) if kind == "choice" else types[kind]
    return click.Option(
        [*flags, name], type=ptype, default=None, multiple=bool(spec.get("multiple"))
    )


def command(args: dict[str, Any] | None = None) -> click.Group:
    """`trtllm-serve` with its `serve` subcommand, as click would build it from the list."""
    args = args or load_args()
    serve_spec = args["serve"]

    @click.group("trtllm-serve")
    def group() -> None:
        pass

    def run(**kwargs: Any) -> dict[str, Any]:
        return kwargs

    serve = click.Command(
        "serve",
        callback=run,
        params=[click.Argument([serve_spec["argument"]], type=str)]
        + [_param(name, spec) for name, spec in sorted(serve_spec["params"].items())],
    )
    group.add_command(serve)
    return group


def parse(argv: list[str], args: dict[str, Any] | None = None) -> dict[str, Any]:
    """trtllm-serve ARGV (ARGV[0] is the subcommand, "serve"), and its YAML options file."""
    args = args or load_args()
    if argv[:1] != ["serve"]:
        raise RefusedError(f"expected `trtllm-serve serve MODEL ...`, got {argv[:2]}")
    try:
        parsed = command(args).main(args=argv, prog_name="trtllm-serve", standalone_mode=False)
    except click.ClickException as exc:
        raise RefusedError(exc.format_message()) from exc
    if not isinstance(parsed, dict):
        raise RefusedError(f"trtllm-serve {argv[:1]} did not run `serve`")
    options = parsed.get("extra_llm_api_options")
    parsed["llm_api_options"] = None
    if options is not None:
        try:
            loaded = yaml.safe_load(Path(options).read_text())
        except OSError as exc:
            raise RefusedError(f"--extra_llm_api_options {options}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise RefusedError(
                f"--extra_llm_api_options {options}: not a mapping of LLM API arguments"
            )
        unknown = sorted(set(loaded) - set(args["llmApiArgs"]))
        if unknown:
            raise RefusedError(
                f"--extra_llm_api_options {options}: not LLM API arguments of TensorRT-LLM "
                f"{args['version']}: {', '.join(unknown)}"
            )
        parsed["llm_api_options"] = loaded
    return parsed
