"""vLLM's engine arguments: the keys of `model-defaults.json` and `--vllm-arg`.

Triton's vLLM backend passes the model's `1/model.json` whole to vLLM's
`AsyncEngineArgs(**json)`, so a key that is not a field of that class fails the model load
(https://github.com/triton-inference-server/vllm_backend, src/model.py). The field list is not
kept by hand: `vllm_args.json` beside this file is generated from a real vLLM by
`scripts/gen-runtime-args.py` and names the vLLM version it came from; a test compares it with
the installed vLLM, and the NixOS modules read the same file.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from model_pull.datamodel import JSON_MAX_DEPTH, json_depth
from model_pull.errors import ExitCode, ModelPullError

ARGS_FILE = "vllm_args.json"


@dataclass(frozen=True)
class EngineArgs:
    """The engine arguments of one vLLM release."""

    version: str
    names: frozenset[str]


@functools.cache
def known() -> EngineArgs:
    """The engine arguments of the vLLM `vllm_args.json` was generated from."""
    data = json.loads(resources.files("model_pull").joinpath(ARGS_FILE).read_text())
    return EngineArgs(version=data["version"], names=frozenset(data["engineArgs"]))


def parse_engine_args(pairs: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs (`--vllm-arg`): VALUE is JSON when it parses, else a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ModelPullError(
                ExitCode.USAGE,
                f"--vllm-arg {pair!r} is not KEY=VALUE",
                hint="e.g. --vllm-arg gpu_memory_utilization=0.85",
            )
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
        except RecursionError:
            out[key] = None
        if not json_depth(out[key]):
            raise ModelPullError(
                ExitCode.USAGE,
                f"--vllm-arg {key}: the value nests deeper than {JSON_MAX_DEPTH}",
            )
    validate_engine_args(out)
    return out


def validate_engine_args(args: Mapping[str, Any]) -> None:
    """Refuse what `AsyncEngineArgs(**args)` would refuse, and `model` (the unit sets it)."""
    engine = known()
    for key in args:
        if key == "model":
            raise ModelPullError(
                ExitCode.BAD_INPUT,
                "model-defaults.json must not set 'model'",
                hint="the Triton unit adds the absolute weights path itself",
            )
        if key not in engine.names:
            close = difflib.get_close_matches(key, engine.names, n=1)
            raise ModelPullError(
                ExitCode.BAD_INPUT,
                f"{key!r} is not an engine argument of vLLM {engine.version} "
                "(its AsyncEngineArgs would refuse it)",
                hint=f"did you mean {close[0]!r}?"
                if close
                else f"see `vllm serve --help` of vLLM {engine.version}",
            )
