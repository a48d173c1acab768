#!/usr/bin/env bash
# A virtual FIDO2 security key, to try `coffer enroll fido2` and friends by
# hand: trussed-dev's fido-authenticator behind CTAPHID packets on a Unix
# socket (hsm-sim/src/bin/fido2-key.rs; the tests start their own through
# coffer_hsm_sim::VirtualKey).
#
#   eval "$(bash hsm-sim/fido2.sh start [--pin PIN])"   # sets COFFER_FIDO2_DEVICE
#   bash hsm-sim/fido2.sh presence auto|require|deny    # touch: at once (default), wait, refuse
#   bash hsm-sim/fido2.sh touch                         # one touch, for `require`
#   bash hsm-sim/fido2.sh unplug | plug                 # pull it out, put it back
#   bash hsm-sim/fido2.sh env                           # print the export line again
#   bash hsm-sim/fido2.sh stop
#
# State (its flash, so a restarted key keeps its PIN and credentials) lives
# in $COFFER_FIDO2_DIR (default /tmp/coffer-fido2); `stop` keeps it, and
# `start` again brings back the same key; delete the folder for a new one.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${COFFER_FIDO2_DIR:-/tmp/coffer-fido2}
say() { echo "fido2.sh: $*" >&2; }
running() { [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }
control() {
  running || { say "no virtual key is running (start it first)"; exit 1; }
  echo "$*" > "$dir/control"
}
export_line() { echo "export COFFER_FIDO2_DEVICE=unix:$dir/key.sock"; }

cmd=${1:-start}
[ $# -gt 0 ] && shift
case "$cmd" in
  start)
    pin=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --pin) pin=(--pin "$2"); shift 2 ;;
        *) say "unknown option $1"; exit 2 ;;
      esac
    done
    if running; then
      say "already running (pid $(cat "$dir/pid"))"
      export_line
      exit 0
    fi
    mkdir -p "$dir"
    chmod 700 "$dir"
    [ -p "$dir/control" ] || mkfifo "$dir/control"
    cargo build --quiet -p coffer-hsm-sim --features fido2 --bin fido2-key
    bin=target/debug/fido2-key
    [ -n "${CARGO_TARGET_DIR:-}" ] && bin=$CARGO_TARGET_DIR/debug/fido2-key
    rm -f "$dir/key.sock"
    nohup "$bin" --socket "$dir/key.sock" --state "$dir/flash.bin" \
      --control "$dir/control" "${pin[@]}" >>"$dir/key.log" 2>&1 &
    echo $! > "$dir/pid"
    for _ in $(seq 100); do
      [ -S "$dir/key.sock" ] && break
      sleep 0.1
    done
    [ -S "$dir/key.sock" ] || { say "the key did not come up; its log:"; cat "$dir/key.log" >&2; exit 1; }
    say "virtual FIDO2 key running (pid $(cat "$dir/pid")), state in $dir"
    export_line
    ;;
  stop)
    if running; then
      kill "$(cat "$dir/pid")"
      say "stopped"
    fi
    rm -f "$dir/pid" "$dir/key.sock"
    ;;
  touch | unplug | plug) control "$cmd" ;;
  presence)
    case "${1:-}" in
      auto | require | deny) control presence "$1" ;;
      *) say "presence auto|require|deny"; exit 2 ;;
    esac
    ;;
  env) export_line ;;
  *) say "usage: fido2.sh start [--pin PIN] | stop | touch | presence auto|require|deny | unplug | plug | env"; exit 2 ;;
esac
