# Check of the packaged helper (flake.nix, checks.model-pull-gio): the wrapped program gets as
# far as the system bus. There is no bus in the build sandbox, so `model-pull status` must
# fail on the bus (exit 40), not on a GLib typelib that PyGObject cannot find.
{ runCommand, model-pull }:
runCommand "model-pull-gio" { nativeBuildInputs = [ model-pull ]; } ''
  cat > models.json <<'JSON'
  {"version": 1, "root": "/build/state", "endpoint": null, "tokenFile": null,
   "models": {"m": {"repo": "org/m", "revision": "main", "include": [], "exclude": [],
                    "layout": "hf", "tritonName": null, "narHash": null,
                    "engineDefaults": {}, "patchTokenizer": false, "units": ["x.service"]}},
   "units": {"x.service": {"runtime": "vllm", "models": ["m"], "cudaCapabilities": []}}}
  JSON
  export MODEL_PULL_MANIFEST=$PWD/models.json
  export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$PWD/no-bus
  rc=0
  model-pull status 2> err || rc=$?
  cat err >&2
  if [ "$rc" != 40 ] || grep -qi typelib err; then
    echo "model-pull-gio: expected exit 40 on the missing bus, got $rc" >&2
    exit 1
  fi
  touch $out
''
