#!/usr/bin/env bash
# Start a software TPM 2.0 (swtpm) for trying coffer's tpm2 slot by hand.
#
#   eval "$(bash hsm-sim/swtpm.sh)"          # start, and point tpm2-tools and coffer at it
#   bash hsm-sim/swtpm.sh stop               # stop it (state is kept)
#
# Idempotent: installs swtpm, swtpm-tools, tpm2-tools and libtss2-dev if
# missing (apt, as root), and if the swtpm it started earlier is still
# running, prints the same settings again. State lives in $SWTPM_STATE
# (default: a folder under ${TMPDIR:-/tmp}); the TPM listens on 127.0.0.1,
# port $SWTPM_PORT (default 2321) and control port $SWTPM_PORT+1.
# Only the `export` line goes to standard output; everything else to stderr.
set -euo pipefail

PORT="${SWTPM_PORT:-2321}"
CTRL=$((PORT + 1))
STATE="${SWTPM_STATE:-${TMPDIR:-/tmp}/coffer-swtpm-$(id -u)}"
PIDFILE="$STATE/swtpm.pid"
TCTI="swtpm:host=127.0.0.1,port=$PORT"

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

if [ "${1:-start}" = stop ]; then
  if running; then
    TPM2TOOLS_TCTI="$TCTI" tpm2_shutdown -c 2>/dev/null || true
    swtpm_ioctl --tcp "127.0.0.1:$CTRL" -s 2>/dev/null || kill "$(cat "$PIDFILE")"
    rm -f "$PIDFILE"
    echo "swtpm.sh: stopped the swtpm on port $PORT (state kept in $STATE)" >&2
  else
    echo "swtpm.sh: no swtpm of ours is running on port $PORT" >&2
  fi
  exit 0
fi

bash "$(dirname "$0")/install-deps.sh" swtpm swtpm-tools tpm2-tools libtss2-dev

if ! running; then
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  swtpm socket --tpm2 \
    --server "type=tcp,port=$PORT,bindaddr=127.0.0.1" \
    --ctrl "type=tcp,port=$CTRL,bindaddr=127.0.0.1" \
    --tpmstate "dir=$STATE" \
    --flags startup-clear,not-need-init \
    --log "file=$STATE/swtpm.log" \
    --pid "file=$PIDFILE" \
    --daemon
  for _ in $(seq 50); do
    TPM2TOOLS_TCTI="$TCTI" tpm2_getcap properties-fixed >/dev/null 2>&1 && break
    sleep 0.1
  done
  TPM2TOOLS_TCTI="$TCTI" tpm2_getcap properties-fixed >/dev/null 2>&1 || {
    echo "swtpm.sh: swtpm did not come up; see $STATE/swtpm.log" >&2
    exit 1
  }
  echo "swtpm.sh: started swtpm on 127.0.0.1:$PORT (state in $STATE)" >&2
else
  echo "swtpm.sh: swtpm already running on 127.0.0.1:$PORT (state in $STATE)" >&2
fi
echo "swtpm.sh: stop it with: bash $0 stop" >&2
echo "export TPM2TOOLS_TCTI=$TCTI"
