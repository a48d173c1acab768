#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, then
# formatting, lints and tests, with default features (all hardware
# backends, against their simulators) and with --no-default-features (the
# software core).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hsm-sim/install-deps.sh

step() { echo; echo "== $*"; "$@"; }

step cargo fmt --all -- --check
step cargo clippy --workspace --all-targets -- -D warnings
step cargo clippy --workspace --all-targets --no-default-features -- -D warnings
RUSTDOCFLAGS="-D warnings" step cargo doc --workspace --no-deps --quiet
step cargo test --workspace --no-default-features
step cargo test --workspace
echo
echo "== all checks passed"
