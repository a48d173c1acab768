#!/usr/bin/env bash
# Peak memory and time of sealing into, and opening from, an S3 store
# (moto on loopback, hsm-sim/s3.sh) and Azure Blob Storage (Azurite on
# loopback, hsm-sim/azure.sh), side by side with the same archive sealed
# to and opened from a local file: the input is a pipe of SIZE MiB
# (zeros; coffer does not compress unless asked), so neither side knows
# the size in advance. Prints each run's peak RSS (GNU time's %M) and wall
# time.
#
# What it shows: the upload holds at most 192 MiB of parts (in flight plus
# the one filling, src/storage/object/mod.rs) whatever the archive's size
# and whichever the store, so peak RSS stays under 256 MiB; opening reads
# 4 ranges of 8 MiB ahead. moto and Azurite are test servers (Python,
# Node): the times measure them more than coffer.
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
export COFFER_AZURE_DIR="$work/azure" COFFER_AZURE_PORT=${COFFER_AZURE_PORT:-10077}
trap 'bash hsm-sim/s3.sh stop 2>/dev/null; bash hsm-sim/azure.sh stop 2>/dev/null; rm -rf "$work"' EXIT
lines=$(bash hsm-sim/s3.sh start)
eval "$lines"
lines=$(bash hsm-sim/azure.sh start)
eval "$lines"
export COFFER_KEYRING="$work/keyring.json"
"$COFFER" -q init --recovery-key-out "$work/recovery.txt"

# run NAME CMD...: peak RSS (KiB) and seconds into $work/NAME.
run() {
  local name=$1; shift
  /usr/bin/time -f '%M %e' -o "$work/$name" "$@"
}
stream() { head -c "${size_mib}M" /dev/zero; }

archives=(local "$work/local.coffer" s3 s3://coffer/big.coffer azure az://coffer/big.coffer)
for ((i = 0; i < ${#archives[@]}; i += 2)); do
  where=${archives[i]} archive=${archives[i + 1]}
  stream | run "seal-$where" "$COFFER" -q seal - -o "$archive"
  run "open-$where" "$COFFER" -q open "$archive" -o - --recovery-key-file "$work/recovery.txt" >/dev/null
done

echo "archive: $size_mib MiB from a pipe; peak RSS in MiB, wall time in seconds"
printf '%-6s %10s %10s %10s %10s %10s %10s\n' step "local RSS" "S3 RSS" "Azure RSS" "local s" "S3 s" "Azure s"
for step in seal open; do
  read -r lm ls < "$work/$step-local"
  read -r sm ss < "$work/$step-s3"
  read -r am as < "$work/$step-azure"
  printf '%-6s %10d %10d %10d %10s %10s %10s\n' "$step" $((lm / 1024)) $((sm / 1024)) $((am / 1024)) "$ls" "$ss" "$as"
done
