#!/usr/bin/env bash
# Installs what coffer's build, demo and tests need on Debian 12, as root.
# Idempotent: packages already present are not fetched again.
#
#   bash hsm-sim/install-deps.sh            # everything, and checks the Rust toolchain
#   bash hsm-sim/install-deps.sh PKG...     # just these Debian packages (the
#                                           # simulator scripts use this)
# Prints only to standard error.
set -euo pipefail

ALL=(
  build-essential pkg-config      # C parts of dependencies (zstd)
  libssl-dev                      # OpenSSL: the payload cipher (ChaCha20-Poly1305)
  libclang-dev                    # bindgen, for the virtual PIV card's littlefs2-sys
  procps                          # pgrep, in hsm-sim/pcsc.sh
  python3 python3-cryptography    # tests/independent/run.sh (Debian 12 has no pip: PEP 668)
  python3-venv                    # a virtual environment for moto (the S3 server of tests/storage.rs)
  acl attr                        # getfacl/setfacl, setfattr: the restore-fidelity tests
  swtpm swtpm-tools tpm2-tools libtss2-dev   # TPM 2.0 simulator and tools
  softhsm2 opensc                 # PKCS#11 token simulator and pkcs11-tool
  age                             # benches/compare-age.sh
  time                            # GNU time (/usr/bin/time): peak memory in benches/*.sh
  restic borgbackup               # tests/passphrase.rs: coffer as their password command
  pcscd vsmartcard-vpcd libpcsclite-dev yubico-piv-tool   # YubiKey (PIV) through a virtual card
  postgresql                      # vault tests: a throwaway cluster on loopback
  openssl                         # vault tests: a private CA and the server's certificate
  dpkg-dev                        # packaging/deb.sh: dpkg-shlibdeps for the package's dependencies
)
if (($#)); then PACKAGES=("$@"); else PACKAGES=("${ALL[@]}"); fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
(($#)) && exit 0

# moto in server mode: the S3 server tests/storage.rs runs (one per test,
# through coffer_hsm_sim::S3Server). Debian 12 has no package for it and its
# Python refuses pip installs (PEP 668), so it goes into its own virtual
# environment, pinned. COFFER_MOTO_VENV moves it.
MOTO_VERSION=5.2.5
venv=${COFFER_MOTO_VENV:-/opt/coffer-moto}
if ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  if [ ! -w "$(dirname "$venv")" ] && [ ! -w "$venv" ]; then
    echo "install-deps: moto $MOTO_VERSION missing from $venv; run as root (or set COFFER_MOTO_VENV to a folder you can write)" >&2
    exit 1
  fi
  echo "install-deps: installing moto[server]==$MOTO_VERSION into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
fi

# Azurite, the Azure Blob Storage emulator tests/storage.rs runs (one per
# test, through coffer_hsm_sim::AzureServer). Debian 12 packages no
# Azurite: npm installs it into its own folder, every package pinned by
# hsm-sim/azurite/package-lock.json (npm ci). Azurite 3.35.0 is the last
# release that runs on Debian 12's Node.js 18. COFFER_AZURITE_DIR moves it.
azdir=${COFFER_AZURITE_DIR:-/opt/coffer-azurite}
pinned="$(cd "$(dirname "$0")" && pwd)/azurite"
if ! cmp -s "$pinned/package-lock.json" "$azdir/package-lock.json" || [ ! -x "$azdir/node_modules/.bin/azurite-blob" ]; then
  if ! command -v npm >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
      echo "install-deps: npm missing (for Azurite); run as root (or: sudo apt-get install nodejs npm)" >&2
      exit 1
    fi
    echo "install-deps: installing nodejs npm" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  if [ ! -w "$(dirname "$azdir")" ] && [ ! -w "$azdir" ]; then
    echo "install-deps: Azurite missing from $azdir; run as root (or set COFFER_AZURITE_DIR to a folder you can write)" >&2
    exit 1
  fi
  echo "install-deps: installing Azurite (npm ci, hsm-sim/azurite/package-lock.json) into $azdir" >&2
  mkdir -p "$azdir"
  cp "$pinned/package.json" "$pinned/package-lock.json" "$azdir/"
  (cd "$azdir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found. coffer needs Rust 1.89 or newer (rustup.rs); Debian 12's packaged Rust is too old." >&2
  exit 1
fi
for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    rustup component add "$c" >&2 || true
  fi
done
# packaging/deb.sh builds the Debian package with cargo-deb.
if ! cargo-deb --version 2>/dev/null | grep -q '^cargo-deb 3\.'; then
  echo "install-deps: installing cargo-deb (cargo install)" >&2
  cargo install --quiet --locked cargo-deb --version 3.8.0 >&2
fi
