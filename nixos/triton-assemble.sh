# Assemble Triton's model repository from model-pull entries (ExecStartPre of triton.service).
#
#   triton-assemble OUT [TRITON_NAME ENTRY OVERRIDES_JSON]... [--llmapi TEMPLATE [TRITON_NAME ENTRY OVERRIDES_JSON]...]
#
# vLLM backend, for each model before --llmapi: OUT/models/<name>/config.pbtxt (copied from the
# entry) and OUT/models/<name>/1/model.json = the entry's model-defaults.json + {"model":
# <weights>} + OVERRIDES_JSON. Hugging Face caches of dual entries are linked under OUT/hub
# (HF_HUB_CACHE).
# TensorRT-LLM's LLM API model, for each model after --llmapi TEMPLATE (the backend's
# all_models/llmapi/tensorrt_llm: config.pbtxt, 1/*.py): a copy of TEMPLATE named <name>, whose
# 1/model.yaml is {"backend": "pytorch", "model": <the entry's snapshot>, "triton_config":
# {"max_batch_size": 0, "decoupled": false}} with OVERRIDES_JSON merged in (JSON is YAML).
# ENTRY is resolved once, so a pull during the run never changes what this server reads.
set -euo pipefail

usage() {
  echo "usage: triton-assemble OUT [TRITON_NAME ENTRY OVERRIDES_JSON]... [--llmapi TEMPLATE [TRITON_NAME ENTRY OVERRIDES_JSON]...]" >&2
  exit 2
}

[ $# -ge 1 ] || usage
out=$1
shift

rm -rf "$out/models" "$out/hub"
mkdir -p "$out/models" "$out/hub"

vllm_model() {
  local name=$1 entry=$2 overrides=$3
  local src=$entry/share/models/$name
  for f in config.pbtxt model-defaults.json; do
    if [ ! -f "$src/$f" ]; then
      echo "triton-assemble: $src/$f is missing: is $entry a dual or single entry with tritonName $name?" >&2
      exit 1
    fi
  done

  mkdir -p "$out/models/$name/1"
  cp "$src/config.pbtxt" "$out/models/$name/config.pbtxt"
  jq --sort-keys --arg model "$src/weights" --argjson overrides "$overrides" \
    '. + {model: $model} + $overrides' "$src/model-defaults.json" >"$out/models/$name/1/model.json"

  if [ -d "$entry/share/models/hub" ]; then
    for repo in "$entry"/share/models/hub/models--*; do
      ln -sfn "$repo" "$out/hub/"
    done
  fi
}

llmapi_model() {
  local template=$1 name=$2 entry=$3 overrides=$4
  local repos=("$entry"/share/models/hub/models--*)
  if [ ${#repos[@]} -ne 1 ] || [ ! -f "${repos[0]}/refs/main" ]; then
    echo "triton-assemble: $entry/share/models/hub has no single model: is $entry a dual or hf entry?" >&2
    exit 1
  fi
  local commit
  commit=$(cat "${repos[0]}/refs/main")
  local snapshot=${repos[0]}/snapshots/$commit
  if [ ! -f "$snapshot/config.json" ]; then
    echo "triton-assemble: $snapshot/config.json is missing: not a Hugging Face checkpoint" >&2
    exit 1
  fi
  if [ ! -f "$template/config.pbtxt" ] || [ ! -d "$template/1" ]; then
    echo "triton-assemble: $template is not TensorRT-LLM's LLM API model (config.pbtxt, 1/model.py)" >&2
    exit 1
  fi

  mkdir -p "$out/models/$name/1"
  # the template's own name is the template's; the directory names the model
  { echo "name: \"$name\""; grep -v '^name:' "$template/config.pbtxt" || true; } \
    >"$out/models/$name/config.pbtxt"
  for f in "$template"/1/*; do
    case $(basename "$f") in
      model.yaml) ;;
      *) cp -r "$f" "$out/models/$name/1/" ;;
    esac
  done
  jq --null-input --sort-keys --arg model "$snapshot" --argjson overrides "$overrides" \
    '{backend: "pytorch", model: $model, triton_config: {max_batch_size: 0, decoupled: false}}
     * $overrides' >"$out/models/$name/1/model.yaml"
  ln -sfn "${repos[0]}" "$out/hub/"
}

template=
while [ $# -gt 0 ]; do
  if [ "$1" = "--llmapi" ]; then
    [ $# -ge 2 ] || usage
    template=$2
    shift 2
    continue
  fi
  [ $# -ge 3 ] || usage
  if ! entry=$(readlink -e "$2"); then
    echo "triton-assemble: $2 does not exist: has model-pull installed the model?" >&2
    exit 1
  fi
  if [ -n "$template" ]; then
    llmapi_model "$template" "$1" "$entry" "$3"
  else
    vllm_model "$1" "$entry" "$3"
  fi
  shift 3
done
