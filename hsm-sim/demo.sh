#!/usr/bin/env bash
# The main job, end to end, in a throwaway folder: build coffer, create a
# keyring (recovery key), enroll a password and a TPM (a software swtpm when
# this machine has no TPM), seal a folder with no factor at all, open it
# with the TPM unattended and with the password, then on a "new laptop" (no
# keyring) with only the archive and the recovery key; then a backup host
# that seals with a seal-only keyring and cannot open what it sealed.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only what the demo uses: the build tools and the TPM parts (not the
# whole test toolchain, which hsm-sim/test-all.sh installs).
bash hsm-sim/install-deps.sh build-essential pkg-config libssl-dev libtss2-dev swtpm swtpm-tools tpm2-tools
echo "== building coffer (release, TPM backend only): about 5 minutes on 2 cores the first time, seconds after" >&2
cargo build --release --no-default-features --features cli,tpm2 --target-dir target/demo
COFFER="$PWD/target/demo/release/coffer"

work=$(mktemp -d)
tpm_started=
cleanup() {
  [ -n "$tpm_started" ] && SWTPM_STATE="$work/swtpm" SWTPM_PORT=2341 bash "$OLDPWD_ROOT/hsm-sim/swtpm.sh" stop 2>/dev/null || true
  rm -rf "$work"
}
OLDPWD_ROOT=$PWD
trap cleanup EXIT
export COFFER_KEYRING="$work/keyring.json"
cd "$work"
say() { echo; echo "== $*"; }

say "coffer init (the recovery key goes to a 0600 file for this demo)"
"$COFFER" init --recovery-key-out recovery.txt
say "coffer enroll password (unlocking with the recovery key)"
printf 'demo password\n' > password.txt
"$COFFER" enroll password --recovery-key-file recovery.txt --new-password-file password.txt
if [ -c /dev/tpmrm0 ] && [ -z "${TPM2TOOLS_TCTI:-}" ]; then
  say "coffer enroll tpm2 (this machine's TPM)"
else
  say "coffer enroll tpm2 (no TPM here: a software swtpm stands in)"
  eval "$(SWTPM_STATE="$work/swtpm" SWTPM_PORT=2341 bash "$OLDPWD_ROOT/hsm-sim/swtpm.sh")"
  tpm_started=1
fi
"$COFFER" enroll tpm2 --password-file password.txt
say "coffer slots"
"$COFFER" slots

mkdir -p documents/photos documents/empty
echo "the plan" > documents/plan.txt
head -c 3000000 /dev/urandom > documents/photos/cat.jpg
ln -s plan.txt documents/latest
say "coffer seal documents -o backup.coffer (no factor: sealing needs only the public key)"
"$COFFER" seal documents -o backup.coffer < /dev/null
say "coffer inspect backup.coffer (no factor needed)"
"$COFFER" inspect backup.coffer
say "coffer verify backup.coffer (unattended: the TPM slot needs nobody)"
"$COFFER" -v verify backup.coffer < /dev/null
say "coffer open backup.coffer -o restored"
"$COFFER" open backup.coffer -o restored --password-file password.txt
diff -r documents restored/documents && echo "restored copy is identical"

say "a new laptop: no keyring, only the archive and the recovery key"
mkdir laptop && cp backup.coffer recovery.txt laptop/
(cd laptop && COFFER_KEYRING="$PWD/none.json" "$COFFER" open backup.coffer -o restored --recovery-key-file recovery.txt)
diff -r documents laptop/restored/documents && echo "restored copy is identical"

say "a backup host that seals and can never open: coffer export --seal-only"
"$COFFER" export --seal-only --sealer backup-host -o host-keyring.json --password-file password.txt
key_id=$(sed -n 's/.*"key_id": "\([0-9a-f]*\)".*/\1/p' host-keyring.json)
mkdir host && mv host-keyring.json host/
(cd host && COFFER_KEYRING="$PWD/host-keyring.json" "$COFFER" seal "$work/documents" -o nightly.coffer --key-id "$key_id" < /dev/null)
set +e
(cd host && COFFER_KEYRING="$PWD/host-keyring.json" "$COFFER" open nightly.coffer -o restored < /dev/null)
status=$?
set -e
echo "the host's own open: exit status $status (5: seal-only)"
[ "$status" = 5 ]
"$COFFER" verify host/nightly.coffer --password-file password.txt

say "a tampered archive is refused and leaves nothing behind"
cp backup.coffer tampered.coffer
printf '\x01' | dd of=tampered.coffer bs=1 seek=100000 conv=notrunc status=none
set +e
"$COFFER" open tampered.coffer -o from-tampered --password-file password.txt
status=$?
set -e
echo "exit status $status; from-tampered exists: $([ -e from-tampered ] && echo yes || echo no)"
[ "$status" = 4 ] && [ ! -e from-tampered ]
echo
echo "demo: ok"
