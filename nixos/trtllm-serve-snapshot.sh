# Start trtllm-serve on the snapshot of a model-pull entry (ExecStart of trtllm-<name>.service).
#
#   trtllm-serve-snapshot HUB_REPO_DIR TRTLLM_SERVE [ARG]...
#
# HUB_REPO_DIR is <entry>/share/models/hub/models--<org>--<name>; this runs
# `TRTLLM_SERVE serve <snapshot> ARG...` on the snapshot its refs/main names. The entry is
# resolved once, so a pull during the run never changes what this server reads. trtllm-serve's
# PyTorch backend loads the Hugging Face or ModelOpt unified checkpoint from that directory.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: trtllm-serve-snapshot HUB_REPO_DIR TRTLLM_SERVE [ARG]..." >&2
  exit 2
fi
if ! repo=$(readlink -e "$1"); then
  echo "trtllm-serve-snapshot: $1 does not exist: has model-pull installed the model?" >&2
  exit 1
fi
program=$2
shift 2

commit=$(cat "$repo/refs/main")
if [[ ! $commit =~ ^[0-9a-f]{40}$ ]]; then
  echo "trtllm-serve-snapshot: $repo/refs/main does not hold a commit: is this a dual or hf entry?" >&2
  exit 1
fi
snapshot=$repo/snapshots/$commit
if [ ! -f "$snapshot/config.json" ]; then
  echo "trtllm-serve-snapshot: $snapshot/config.json is missing: not a Hugging Face checkpoint" >&2
  exit 1
fi
exec "$program" serve "$snapshot" "$@"
