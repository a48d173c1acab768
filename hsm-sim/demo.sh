#!/usr/bin/env bash
# The main job, end to end, in a throwaway folder: build coffer, create a
# keyring (recovery key), enroll a password, list the slots.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hsm-sim/install-deps.sh
cargo build --release --quiet
COFFER="$PWD/target/release/coffer"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export COFFER_KEYRING="$work/keyring.json"
cd "$work"

echo "== coffer init (recovery key written to a 0600 file for this demo)"
"$COFFER" init --recovery-key-out recovery.txt
echo "== coffer enroll password (unlocking with the recovery key)"
printf 'demo password\n' > password.txt
"$COFFER" enroll password --recovery-key-file recovery.txt --new-password-file password.txt
echo "== coffer slots"
"$COFFER" slots
echo
echo "demo: ok"
