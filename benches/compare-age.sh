#!/usr/bin/env bash
# Seal and open the same random file with coffer and with age (Debian's
# `age`, X25519 recipient from age-keygen); print the wall time of each,
# the median of several runs, the age/coffer ratio per direction, and
# coffer's peak RSS. Then 100 seals of 1 KiB each, where the per-archive
# key agreement (coffer: X-Wing, ML-KEM-768 + X25519; age: X25519) and
# process start-up dominate: sealing needs no factor, only the keyring's
# public key, so coffer's per-archive cost is one encapsulation.
#
# Outputs go to /dev/null and the input is read once beforehand, so the
# numbers compare the tools, not the disk.
#
#   bash benches/compare-age.sh [SIZE_MIB=1024] [RUNS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
runs=${2:-5}

command -v age >/dev/null || bash hsm-sim/install-deps.sh
cargo build --release --quiet
# Honour CARGO_TARGET_DIR (a per-person target directory) like cargo does.
COFFER="${CARGO_TARGET_DIR:-$PWD/target}/release/coffer"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export COFFER_KEYRING="$work/keyring.json"
"$COFFER" -q init --recovery-key-out "$work/recovery.txt"
age-keygen -o "$work/age.key" 2>/dev/null
recipient=$(age-keygen -y "$work/age.key")

echo "input: $size_mib MiB of random data, $runs runs each, $(nproc) cores"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$work/input.bin"
cat "$work/input.bin" > /dev/null
"$COFFER" -q seal - -o "$work/input.coffer" < "$work/input.bin"
age -r "$recipient" -o "$work/input.age" "$work/input.bin"

# median wall seconds of running "$@" $runs times with standard input from
# file $1; peak RSS (KiB) to $work/rss
median() {
  local input=$1 times=() rss=0
  shift
  for _ in $(seq "$runs"); do
    /usr/bin/time -f "%e %M" -o "$work/t" "$@" < "$input" > /dev/null
    read -r t m < "$work/t"
    times+=("$t")
    ((m > rss)) && rss=$m
  done
  echo "$rss" > "$work/rss"
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

seal_c=$(median "$work/input.bin" "$COFFER" -q seal - -o -)
seal_rss=$(cat "$work/rss")
seal_a=$(median "$work/input.bin" age -r "$recipient")
open_c=$(median "$work/input.coffer" "$COFFER" -q open - -o - --recovery-key-file "$work/recovery.txt")
open_rss=$(cat "$work/rss")
open_a=$(median "$work/input.age" age -d -i "$work/age.key")

awk -v sc="$seal_c" -v sa="$seal_a" -v oc="$open_c" -v oa="$open_a" -v sr="$seal_rss" -v orr="$open_rss" 'BEGIN {
  printf "seal: coffer %.2f s, age %.2f s, ratio %.2fx (coffer peak RSS %.1f MiB)\n", sc, sa, sa / sc, sr / 1024
  printf "open: coffer %.2f s, age %.2f s, ratio %.2fx (coffer peak RSS %.1f MiB)\n", oc, oa, oa / oc, orr / 1024
}'

# 100 small archives: the fixed cost per archive.
head -c 1024 /dev/urandom > "$work/small.bin"
many() {
  /usr/bin/time -f "%e" -o "$work/t" bash -c 'for _ in $(seq 100); do "$@" < "$0" > /dev/null; done' "$work/small.bin" "$@"
  cat "$work/t"
}
small_c=$(many "$COFFER" -q seal - -o -)
small_a=$(many age -r "$recipient")
awk -v sc="$small_c" -v sa="$small_a" 'BEGIN {
  printf "100 seals of 1 KiB: coffer %.2f s (%.1f ms each), age %.2f s (%.1f ms each), ratio %.2fx\n", sc, sc * 10, sa, sa * 10, sa / sc
}'
