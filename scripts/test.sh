#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest (real Hub client on loopback, real Nix,
# real systemd in a container, a real llama-server built from source and cached).
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
export LLAMA_SERVER
.venv/bin/ruff check helper tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
