#!/usr/bin/env bash
# Starts (or stops) what coffer's YubiKey tests talk to: a real pcscd with
# vsmartcard's vpcd reader, and the virtual PIV card (vpiv-card) attached to
# it. For people and CI; the Rust fixture (coffer_hsm_sim::VirtualCard)
# restarts the card itself for fresh state but needs pcscd running.
#
#   hsm-sim/pcsc.sh [start]   install what is missing (apt, as root), start
#                             pcscd -f and one card, wait until opensc-tool
#                             lists it
#   hsm-sim/pcsc.sh stop      stop both, by the PIDs recorded at start
#
# State (PID files, logs) lives in $COFFER_PCSC_DIR (default /tmp/coffer-pcsc).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${COFFER_PCSC_DIR:-/tmp/coffer-pcsc}
mkdir -p "$RUN"

stop_pid() { # name
  local f="$RUN/$1.pid"
  if [ -f "$f" ]; then
    local pid; pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; fi
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$f"
  fi
}

if [ "${1:-start}" = stop ]; then
  stop_pid card
  stop_pid pcscd
  echo "pcsc.sh: stopped" >&2
  exit 0
fi

bash "$(dirname "$0")/install-deps.sh" pcscd vsmartcard-vpcd libpcsclite-dev yubico-piv-tool opensc

# pcscd: ours if we started it before, else whatever is running, else start.
if ! pgrep -x pcscd >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "pcsc.sh: pcscd is not running and only root can start it: sudo pcscd -f &" >&2
    exit 1
  fi
  pcscd -f >"$RUN/pcscd.log" 2>&1 &
  echo $! >"$RUN/pcscd.pid"
fi

cargo build --quiet -p coffer-hsm-sim --features card --bin vpiv-card
stop_pid card
mkdir -p "$RUN/card-state"
target/debug/vpiv-card --state "$RUN/card-state" >"$RUN/card.log" 2>&1 &
echo $! >"$RUN/card.pid"

for _ in $(seq 100); do
  if opensc-tool -l 2>/dev/null | grep -q '^[0-9]\+ \+Yes .*Virtual PCD'; then
    opensc-tool -l
    echo "pcsc.sh: pcscd and the virtual PIV card are up (logs in $RUN)" >&2
    exit 0
  fi
  sleep 0.2
done
echo "pcsc.sh: the card did not show up in opensc-tool -l; see $RUN/card.log and $RUN/pcscd.log" >&2
exit 1
