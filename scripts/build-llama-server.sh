#!/usr/bin/env bash
# Build a real llama-server (CPU only) from the llama.cpp source vendored in PyPI's
# llama-cpp-python sdist, and cache it by version. Prints the binary's path.
#
#   scripts/build-llama-server.sh            # uses LLAMA_CPP_PYTHON_VERSION (default below)
#   LLAMA_SERVER_CACHE=DIR scripts/build-llama-server.sh
#
# The tests with real systemd serve a tiny GGUF with this binary. Cold build: ~5.5 min on 2 cores.
set -euo pipefail

version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
cache=${LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/model-pull/llama-server}
out=$cache/$version/llama-server

if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/llama-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-binary :all: --no-deps \
  "llama-cpp-python==$version" -d "$work" >&2
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
src=$work/llama_cpp_python-$version/vendor/llama.cpp

cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$work/build" --target llama-server -j"$(nproc)" >&2

mkdir -p "$(dirname "$out")"
install -m 0755 "$work/build/bin/llama-server" "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
