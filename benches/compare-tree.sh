#!/usr/bin/env bash
# Seal and open a folder tree with coffer and with `tar | age` (GNU tar,
# Debian's age with an X25519 recipient), side by side in one run: the
# median wall time of several runs of each, the (tar | age)/coffer ratio
# per direction, and coffer's peak RSS.
#
# Sealing writes to /dev/null through a pipe for both (tar's own /dev/null
# shortcut is not taken: it writes to age). Opening extracts into a tmpfs
# folder (/dev/shm), emptied before every run. The tree is read once
# beforehand, so the numbers compare the tools, not the disk. As root both
# restore owners.
#
#   bash benches/compare-tree.sh [TREE=/usr/share] [RUNS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(realpath "${1:-/usr/share}")
runs=${2:-3}

command -v age >/dev/null || bash hsm-sim/install-deps.sh age
cargo build --release --quiet --bin coffer
COFFER="$PWD/target/release/coffer"

work=$(mktemp -d)
out=$(mktemp -d /dev/shm/coffer-bench.XXXXXX)
trap 'rm -rf "$work" "$out"' EXIT
export COFFER_KEYRING="$work/keyring.json"
"$COFFER" -q init --recovery-key-out "$work/recovery.txt"
age-keygen -o "$work/age.key" 2>/dev/null
recipient=$(age-keygen -y "$work/age.key")
parent=$(dirname "$tree")
name=$(basename "$tree")

entries=$(find "$tree" | wc -l)
bytes=$(du -sb "$tree" | cut -f1)
echo "tree: $tree, $entries entries, $((bytes / 1000000)) MB; $runs runs each, $(nproc) cores"
tar -cf - -C "$parent" "$name" > /dev/null   # into the page cache
set +e
"$COFFER" -q seal "$tree" -o "$work/tree.coffer"
s=$?
set -e
[ "$s" = 0 ] || [ "$s" = 6 ] || exit "$s"   # 6: some paths skipped (sockets)
tar -cf - -C "$parent" "$name" 2>/dev/null | age -r "$recipient" -o "$work/tree.age"

# median wall seconds of a shell command run $runs times (after `prep`);
# peak RSS (KiB) of the last such command to $work/rss
median() {
  local prep=$1 cmd=$2 times=() rss=0
  for _ in $(seq "$runs"); do
    eval "$prep"
    /usr/bin/time -f "%e %M" -o "$work/t" bash -c "$cmd" || true
    read -r t m < "$work/t"
    times+=("$t")
    ((m > rss)) && rss=$m
  done
  echo "$rss" > "$work/rss"
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
clean='rm -rf "$out"/x; mkdir "$out"/x'
seal_c=$(median : "'$COFFER' -q seal '$tree' -o - > /dev/null 2>&1")
seal_rss=$(cat "$work/rss")
seal_t=$(median : "tar -cf - -C '$parent' '$name' 2>/dev/null | age -r '$recipient' > /dev/null")
open_c=$(median "$clean" "'$COFFER' -q open '$work/tree.coffer' -o '$out/x/r' --recovery-key-file '$work/recovery.txt'")
open_rss=$(cat "$work/rss")
open_t=$(median "$clean" "age -d -i '$work/age.key' '$work/tree.age' | tar -xf - -C '$out/x'")

awk -v sc="$seal_c" -v st="$seal_t" -v oc="$open_c" -v ot="$open_t" -v sr="$seal_rss" -v orr="$open_rss" 'BEGIN {
  printf "seal: coffer %.2f s, tar | age %.2f s, ratio %.2fx (coffer peak RSS %.1f MiB)\n", sc, st, st / sc, sr / 1024
  printf "open: coffer %.2f s, age -d | tar -x %.2f s, ratio %.2fx (coffer peak RSS %.1f MiB)\n", oc, ot, ot / oc, orr / 1024
}'
