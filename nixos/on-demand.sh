# inference-on-demand: the two steps of an on-demand runtime's units that systemd cannot do by
# itself (nixos/lib.nix, onDemandUnits). Packaged with writeShellApplication (bash with
# errexit, nounset, pipefail).
#
#   inference-on-demand ready URL
#       ExecStartPost= of the runtime (Type=exec: it runs once the runtime is exec'd, as the
#       unit's user): wait until GET URL answers 200, so that the runtime counts as started only
#       when it can serve; fail at once when the runtime ($MAINPID) exits first.
#   inference-on-demand proxy URL IDLE PROXYD BACKEND
#       ExecStart= of the proxy: exec PROXYD --exit-idle-time=IDLE BACKEND. When the runtime does
#       not answer (it failed to start), 1s instead of IDLE: the waiting clients get a reset, and
#       the proxy exits a second later, so the next request starts the runtime again.
#
# URL is http://ADDRESS:PORT/PATH (an IPv4 address or a name; no IPv6 literal).

# The HTTP status of GET URL in $status ("" when nothing answers), with bash's own /dev/tcp and
# no subshell: polling starts no process, so it takes no CPU from the runtime that loads.
http_status() {
  local rest host port path fd
  status=""
  rest=${1#http://}
  path=/${rest#*/}
  host=${rest%%/*}
  port=${host##*:}
  host=${host%:*}
  { exec {fd}<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 0
  { printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$host" >&"$fd"; } 2>/dev/null || true
  IFS=' ' read -r -t 10 _ status _ <&"$fd" || true
  exec {fd}>&-
}

ready() {
  local url=$1 waited=0 pause
  # A pipe nobody writes to: `read -t` on it sleeps without starting `sleep`.
  exec {pause}<> <(:)
  while :; do
    if [ -n "${MAINPID:-}" ] && ! kill -0 "$MAINPID" 2>/dev/null; then
      echo "inference-on-demand: the runtime (pid $MAINPID) exited before $url answered" >&2
      exit 1
    fi
    http_status "$url"
    [ "$status" = 200 ] && exit 0
    # Every 5 ms for 5 s (a small model), then every 250 ms (a large one, or the wait for
    # the GPU lock, takes minutes; systemd's TimeoutStartSec bounds the whole wait).
    if [ "$waited" -lt 1000 ]; then
      waited=$((waited + 1))
      read -r -t 0.005 -u "$pause" _ || true
    else
      read -r -t 0.25 -u "$pause" _ || true
    fi
  done
}

proxy() {
  local url=$1 idle=$2 proxyd=$3 backend=$4
  http_status "$url"
  if [ "$status" != 200 ]; then
    echo "inference-on-demand: $url does not answer (the runtime failed to start): the waiting connections get a reset" >&2
    idle=1s
  fi
  exec "$proxyd" --exit-idle-time="$idle" "$backend"
}

case "${1:-}" in
ready | proxy)
  command=$1
  shift
  "$command" "$@"
  ;;
*)
  echo "usage: inference-on-demand ready URL | proxy URL IDLE PROXYD BACKEND" >&2
  exit 2
  ;;
esac
