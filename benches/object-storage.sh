#!/usr/bin/env bash
# Peak memory and time of sealing into, and opening from, an S3 store
# (moto on loopback, hsm-sim/s3.sh), side by side with the same archive
# sealed to and opened from a local file: the input is a pipe of SIZE MiB
# (zeros; coffer does not compress unless asked), so neither side knows
# the size in advance. Prints each run's peak RSS (GNU time's %M) and wall
# time, and the store/local ratios.
#
# What it shows: the upload holds at most 192 MiB of parts (in flight plus
# the one filling, src/storage/object.rs) whatever the archive's size, so
# peak RSS stays under 256 MiB; opening reads 4 ranges of 8 MiB ahead.
# moto is a Python test server: the times measure it more than coffer.
#
#   bash benches/object-storage.sh [SIZE_MIB=2048]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-2048}

bash hsm-sim/install-deps.sh
cargo build --release --quiet
COFFER="${CARGO_TARGET_DIR:-$PWD/target}/release/coffer"

work=$(mktemp -d)
export COFFER_S3_DIR="$work/s3" COFFER_S3_PORT=${COFFER_S3_PORT:-5077}
trap 'bash hsm-sim/s3.sh stop 2>/dev/null; rm -rf "$work"' EXIT
lines=$(bash hsm-sim/s3.sh start)
eval "$lines"
export COFFER_KEYRING="$work/keyring.json"
"$COFFER" -q init --recovery-key-out "$work/recovery.txt"

# run NAME CMD...: peak RSS (KiB) and seconds into $work/NAME.
run() {
  local name=$1; shift
  /usr/bin/time -f '%M %e' -o "$work/$name" "$@"
}
stream() { head -c "${size_mib}M" /dev/zero; }

stream | run seal-local "$COFFER" -q seal - -o "$work/local.coffer"
stream | run seal-s3 "$COFFER" -q seal - -o s3://coffer/big.coffer
run open-local "$COFFER" -q open "$work/local.coffer" -o - --recovery-key-file "$work/recovery.txt" >/dev/null
run open-s3 "$COFFER" -q open s3://coffer/big.coffer -o - --recovery-key-file "$work/recovery.txt" >/dev/null

echo "archive: $size_mib MiB from a pipe"
printf '%-6s %14s %14s %10s %10s %8s\n' step "local RSS MiB" "S3 RSS MiB" "local s" "S3 s" "S3/local"
for step in seal open; do
  read -r lm ls < "$work/$step-local"
  read -r sm ss < "$work/$step-s3"
  printf '%-6s %14d %14d %10s %10s %8.2f\n' "$step" $((lm / 1024)) $((sm / 1024)) "$ls" "$ss" \
    "$(awk -v a="$ss" -v b="$ls" 'BEGIN { print (b > 0 ? a / b : 0) }')"
done
