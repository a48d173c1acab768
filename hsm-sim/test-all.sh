#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, then
# formatting, lints and tests, with default features (all hardware
# backends, against their simulators) and with --no-default-features
# --features cli (the software core and its command line), and a check
# that the library builds without the CLI and vault-server dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hsm-sim/install-deps.sh

step() { echo; echo "== $*"; "$@"; }
results=$(mktemp)
# Set before pcsc.sh runs: a pcsc.sh that fails half-way must not leave
# pcscd or the card running.
trap 'rm -f "$results"; bash hsm-sim/pcsc.sh stop >/dev/null 2>&1 || true' EXIT
# pcscd + vpcd for the YubiKey tests (the fixture starts its own cards).
bash hsm-sim/pcsc.sh
# cargo test, keeping its result lines for the summary at the end.
tests() { cargo test "$@" 2>&1 | tee -a "$results"; }

step cargo fmt --all -- --check
step cargo clippy --workspace --all-targets -- -D warnings
# The library alone (no binary; tests that run it are cfg'd out), the
# software-only command line, and the library as a backup tool embeds it
# (every slot, vault client, no CLI and no vault server).
step cargo clippy --workspace --all-targets --no-default-features -- -D warnings
step cargo clippy --workspace --all-targets --no-default-features --features cli -- -D warnings
step cargo clippy -p coffer-backup --all-targets --no-default-features --features tpm2,pkcs11,yubikey,fido2,vault -- -D warnings

# The embeddable library must not drag in the CLI or the vault server:
# none of these may appear among its normal dependencies.
library_deps() {
  local features=tpm2,pkcs11,yubikey,fido2,vault found
  found=$(cargo tree -e normal --no-default-features --features "$features" -p coffer-backup \
      --prefix none --format '{p}' | awk '{print $1}' | sort -u |
    grep -xE 'clap|indicatif|rpassword|signal-hook|humantime|hyper|hyper-util|tokio|tokio-rustls|rusqlite|postgres|tracing-subscriber' || true)
  if [ -n "$found" ]; then
    echo "the library (--no-default-features --features $features) depends on:" $found
    echo "these belong behind the cli or vault-server features (Cargo.toml)"
    return 1
  fi
  echo "library dependencies: no CLI or vault-server crates"
}
step library_deps

RUSTDOCFLAGS="-D warnings" step cargo doc --workspace --no-deps --quiet
# Without default features, but with the cli feature: the library's own
# tests plus the software-only binary (recovery and password slots) through
# every integration test that needs no hardware. Without cli the binary is
# not built and the tests that run it are compiled out, which would leave
# little; the clippy step above still builds that combination.
step tests --workspace --no-default-features --features cli
step tests --workspace

# An independent reader written from docs/format.md alone (Python) must
# agree with every vector and testkit case.
step bash tests/independent/run.sh

# Fuzz targets: built, then run briefly on mutations of the testkit
# archives and the keyring vector (uninstrumented on stable Rust; real
# coverage-guided fuzzing: `cargo +nightly fuzz run header`).
fuzz_smoke() {
  (cd fuzz && cargo build --quiet --features tpm2,pkcs11)
  local seeds
  seeds=$(mktemp -d)
  cp tests/testdata/archives/*.coffer tests/vectors/*.coffer "$seeds/"
  fuzz/target/debug/header -runs=200000 -max_total_time=30 "$seeds" 2>&1 | tail -1
  fuzz/target/debug/stream -runs=5000 -max_total_time=30 "$seeds" 2>&1 | tail -1
  fuzz/target/debug/header_slots -runs=20000 -max_total_time=30 "$seeds" 2>&1 | tail -1
  rm -rf "$seeds"; seeds=$(mktemp -d)
  cp tests/vectors/keyring-v*.json "$seeds/"
  fuzz/target/debug/keyring -runs=200000 -max_total_time=30 "$seeds" 2>&1 | tail -1
  rm -rf "$seeds"; seeds=$(mktemp -d)
  cp fuzz/seeds/tpm2_slot/* "$seeds/"
  fuzz/target/debug/tpm2_slot -runs=200000 -max_total_time=30 "$seeds" 2>&1 | tail -1
  rm -rf "$seeds"; seeds=$(mktemp -d)
  cp fuzz/seeds/tar/* "$seeds/"
  fuzz/target/debug/tar -runs=20000 -max_total_time=30 "$seeds" 2>&1 | tail -1
  rm -rf "$seeds"
  seeds=$(mktemp -d)
  cp fuzz/seeds/pkcs11_uri/* "$seeds/"
  fuzz/target/debug/pkcs11_uri -runs=200000 -max_total_time=30 "$seeds" 2>&1 | tail -1
  rm -rf "$seeds"
}
step fuzz_smoke

# The Debian package (debug build: what it holds, not how fast): the
# binary runs from it, the man page and completions are in it.
deb_check() {
  bash packaging/deb.sh --dev >/dev/null
  local root list
  # Under target/: /tmp may be mounted noexec.
  root=$(mktemp -d -p target)
  dpkg-deb -x target/coffer.deb "$root"
  list=$(dpkg-deb -c target/coffer.deb | awk '{print $6}')
  for f in ./usr/bin/coffer ./usr/share/man/man1/coffer.1.gz \
           ./usr/share/man/man1/coffer-seal.1.gz ./usr/share/man/man1/coffer-enroll-threshold.1.gz \
           ./usr/share/bash-completion/completions/coffer \
           ./usr/share/zsh/vendor-completions/_coffer \
           ./usr/share/fish/vendor_completions.d/coffer.fish \
           ./usr/share/doc/coffer/examples/coffer-seal.service \
           ./usr/share/doc/coffer/examples/coffer-seal.timer; do
    grep -qxF "$f" <<<"$list" || { echo "target/coffer.deb lacks $f"; rm -rf "$root"; return 1; }
  done
  zcat "$root/usr/share/man/man1/coffer.1.gz" | grep -c '^\.TH' >/dev/null || { echo "the man page is not one"; rm -rf "$root"; return 1; }
  "$root/usr/bin/coffer" --version || { rm -rf "$root"; return 1; }
  local deps
  deps=$(dpkg-deb -f target/coffer.deb Depends)
  grep -q libtss2-tcti-device0 <<<"$deps" || { echo "Depends lacks the TPM device TCTI: $deps"; rm -rf "$root"; return 1; }
  echo "Depends: $deps"
  rm -rf "$root"
}
step deb_check
echo
echo "== all checks passed"
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$results"
