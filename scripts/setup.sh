#!/usr/bin/env bash
# Install what model-pull, its demo and its tests need on Debian 12, then a venv in .venv.
# Idempotent; run as root (apt). Only package registries are used (Debian, PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(
  python3 python3-venv python3-dev gcc g++ make cmake pkg-config  # Python, llama-server build
  libgirepository1.0-dev libcairo2-dev                           # PyGObject for pydbus
  nix-bin                                                        # hashes/store paths checked by the real Nix
  systemd-container dbus util-linux                              # real systemd in a throwaway container
  jq git ca-certificates
  curl                                                           # the benchmarks' reference client (tests/test_benches.py)
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "setup: apt-get install ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: pip install -e '.[test,dbus]' into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q -e '.[test,dbus]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import model_pull, huggingface_hub, pydbus, gi" # fail loudly if pip did
  touch "$stamp"
fi
