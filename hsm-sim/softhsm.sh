#!/usr/bin/env bash
# A private SoftHSM2 token for trying coffer's pkcs11 slot by hand.
#
#   eval "$(bash hsm-sim/softhsm.sh [DIR])"
#
# Installs softhsm2 and opensc if missing (apt, as root), then makes DIR (a
# new temp folder if not given) holding softhsm2.conf and a token folder,
# initialises a token labelled $LABEL (default coffer) with SO PIN $SO_PIN and
# user PIN $PIN unless DIR already has it, and prints the environment to use
# it and a URI. Idempotent: run it again with the same DIR and nothing changes.
# Never touches the system's /etc/softhsm2.conf or its tokens.
set -euo pipefail

LABEL=${LABEL:-coffer}
PIN=${PIN:-123456}
SO_PIN=${SO_PIN:-12345678}
MODULE=${COFFER_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

bash "$(dirname "$0")/install-deps.sh" softhsm2 opensc
[ -e "$MODULE" ] || { echo "softhsm.sh: no module at $MODULE; set COFFER_PKCS11_MODULE" >&2; exit 1; }

DIR=${1:-$(mktemp -d -t coffer-softhsm.XXXXXX)}
mkdir -p "$DIR/tokens"
DIR=$(cd "$DIR" && pwd)
export SOFTHSM2_CONF="$DIR/softhsm2.conf"
cat >"$SOFTHSM2_CONF" <<CONF
directories.tokendir = $DIR/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF

if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label:[[:space:]]*$LABEL[[:space:]]*$"; then
  softhsm2-util --init-token --free --label "$LABEL" --so-pin "$SO_PIN" --pin "$PIN" >&2
fi

echo "export SOFTHSM2_CONF=$SOFTHSM2_CONF"
echo "export COFFER_PKCS11_MODULE=$MODULE"
echo "# user PIN: $PIN; enroll with e.g.:"
echo "#   coffer enroll pkcs11 --generate --uri 'pkcs11:token=$LABEL;object=coffer'"
echo "COFFER_PKCS11_URI='pkcs11:token=$LABEL;object=coffer'"
