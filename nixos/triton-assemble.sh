# Assemble Triton's model repository from model-pull entries (ExecStartPre of triton.service).
#
#   triton-assemble OUT [TRITON_NAME ENTRY OVERRIDES_JSON]...
#
# For each model: OUT/models/<name>/config.pbtxt (copied from the entry) and
# OUT/models/<name>/1/model.json = the entry's model-defaults.json + {"model": <weights>} +
# OVERRIDES_JSON. ENTRY is resolved once, so a pull during the run never changes what this
# server reads. Hugging Face caches of dual entries are linked under OUT/hub (HF_HUB_CACHE).
set -euo pipefail

if [ $# -lt 1 ] || [ $(( ($# - 1) % 3 )) -ne 0 ]; then
  echo "usage: triton-assemble OUT [TRITON_NAME ENTRY OVERRIDES_JSON]..." >&2
  exit 2
fi
out=$1
shift

rm -rf "$out/models" "$out/hub"
mkdir -p "$out/models" "$out/hub"

while [ $# -gt 0 ]; do
  name=$1
  entry=$(readlink -e "$2")
  overrides=$3
  shift 3

  src=$entry/share/models/$name
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
done
