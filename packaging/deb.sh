#!/usr/bin/env bash
# Build the Debian package: target/coffer.deb (binary, man page, bash, zsh
# and fish completions, the systemd examples and the docs).
#
#   bash packaging/deb.sh          # a release build (what to ship)
#   bash packaging/deb.sh --dev    # the debug build, quickly (what CI checks)
#
# Needs cargo-deb (`cargo install cargo-deb --locked`; hsm-sim/install-deps.sh
# installs it) and dpkg-dev. Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
[ "${1:-}" = --dev ] && profile=dev
dir=release
[ "$profile" = dev ] && dir=debug
if [ "$profile" = release ]; then
  cargo build --quiet --release --bin coffer
else
  cargo build --quiet --bin coffer
fi
bin="target/$dir/coffer"
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets"
"$bin" man --dir "$assets/man"
gzip -9n "$assets"/man/*.1
"$bin" completions bash > "$assets/coffer.bash"
"$bin" completions zsh > "$assets/_coffer"
"$bin" completions fish > "$assets/coffer.fish"
cargo deb --quiet --no-build --profile "$profile" -o target/coffer.deb >/dev/null
echo target/coffer.deb
