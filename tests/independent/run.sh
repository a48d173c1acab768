#!/usr/bin/env bash
# Run the independent (spec-only) coffer reader against every vector and
# testkit archive. Prints "ok NAME" / "FAIL NAME: why" and "N passed, M failed".
set -u
here="$(cd "$(dirname "$0")" && pwd)"
tests="$(dirname "$here")"
vec="$tests/vectors"
kit="$tests/testdata/archives"
dec="$here/coffer_decrypt.py"
key="$vec/recovery-v1.txt"
# The first Python that has `cryptography`: $PYTHON, Debian's (apt's
# python3-cryptography, which hsm-sim/install-deps.sh installs), or the one
# on PATH. No pip fallback: Debian 12 has no pip and refuses it (PEP 668).
py=
for cand in ${PYTHON:-} /usr/bin/python3 python3; do
    if "$cand" -c 'import cryptography' 2>/dev/null; then py=$cand; break; fi
done
if [ -z "$py" ]; then
    echo "no python3 with the cryptography module: apt-get install python3-cryptography (hsm-sim/install-deps.sh does)"
    echo "0 passed, 1 failed"
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
ok()   { echo "ok $1${2:+ ($2)}"; pass=$((pass + 1)); }
bad()  { echo "FAIL $1: $2"; fail=$((fail + 1)); }

for arc in "$kit"/*.coffer; do
    name="$(basename "$arc" .coffer)"
    exp="$kit/$name.expect"
    if [ ! -f "$exp" ]; then bad "$name" "no $name.expect"; continue; fi
    want="$(sed -n 's/^expect: *//p' "$exp")"
    sha="$(sed -n 's/^payload-sha256: *//p' "$exp")"
    zstd=0
    # flags are bytes 10-11 of the header; bit 1 = zstd
    flags="$(od -An -tu1 -j11 -N1 "$arc" | tr -d ' ')"
    [ $(( flags & 2 )) -ne 0 ] && zstd=1
    args=()
    [ "$zstd" = 1 ] && args=(--raw)
    "$py" "$dec" "$arc" --recovery-key-file "$key" -o "$tmp/out" "${args[@]}" 2>"$tmp/err"
    rc=$?
    case "$want" in
        ok)
            if [ "$rc" -ne 0 ]; then bad "$name" "exit $rc, expected 0: $(cat "$tmp/err")"; continue; fi
            if [ "$zstd" = 1 ]; then
                # Beyond the brief: if a zstd CLI happens to be installed, also
                # check the decompressed payload against payload-sha256.
                if command -v zstd >/dev/null 2>&1; then
                    got="$(zstd -dc -q "$tmp/out" 2>/dev/null | sha256sum | cut -d' ' -f1)"
                    if [ "$got" = "$sha" ]; then
                        ok "$name" "zstd: decrypted with --raw; decompressed with zstd CLI, sha256 matches"
                    else
                        bad "$name" "zstd: decrypted with --raw, but zstd CLI output sha256 $got, expected $sha"
                    fi
                else
                    ok "$name" "zstd: decrypted with --raw, authenticated; decompressed sha256 not checked (no zstd CLI)"
                fi
                continue
            fi
            got="$(sha256sum "$tmp/out" | cut -d' ' -f1)"
            if [ "$got" = "$sha" ]; then ok "$name"; else bad "$name" "sha256 $got, expected $sha"; fi
            ;;
        exit\ *)
            n="${want#exit }"
            if [ "$rc" -eq "$n" ]; then ok "$name"; else bad "$name" "exit $rc, expected $n: $(cat "$tmp/err")"; fi
            ;;
        *) bad "$name" "cannot parse $exp" ;;
    esac
    rm -f "$tmp/out"
done

# Known-answer archive vector: "hello, coffer\n"
name="vector:archive-v1-stream"
"$py" "$dec" "$vec/archive-v1-stream.coffer" --recovery-key-file "$key" -o "$tmp/out" 2>"$tmp/err"
rc=$?
if [ "$rc" -ne 0 ]; then bad "$name" "exit $rc: $(cat "$tmp/err")"
elif [ "$(od -An -c "$tmp/out")" = "$(printf 'hello, coffer\n' | od -An -c)" ]; then ok "$name"
else bad "$name" "plaintext $(od -An -c "$tmp/out")"; fi

# Keyring vector: MAC verifies, key id as in derived-v1.txt
name="vector:keyring-v1"
want="$(sed -n 's/^key id: *//p' "$vec/derived-v1.txt")"
got="$("$py" "$dec" --keyring "$vec/keyring-v1.json" --recovery-key-file "$key" 2>"$tmp/err")"
rc=$?
if [ "$rc" -ne 0 ]; then bad "$name" "exit $rc: $(cat "$tmp/err")"
elif [ -n "$want" ] && [ "$got" = "$want" ]; then ok "$name"
else bad "$name" "key id '$got', expected '$want'"; fi

# Version 2 (labels, format.md section 7): a keyring and an archive made
# now by the coffer binary the test suite built, when there is one.
bin="$(dirname "$tests")/target/debug/coffer"
if [ -x "$bin" ]; then
    name="coffer:version-2-labels"
    d="$tmp/v2"; mkdir -p "$d"
    printf 'pw\n' >"$d/pw"; printf 'labelled\n' >"$d/data"
    if COFFER_KEYRING="$d/k.json" "$bin" init --recovery-key-out "$d/rk" 2>"$tmp/err" &&
       COFFER_KEYRING="$d/k.json" "$bin" enroll password --label my-laptop \
           --new-password-file "$d/pw" --recovery-key-file "$d/rk" 2>>"$tmp/err" &&
       COFFER_KEYRING="$d/k.json" "$bin" seal - -o "$d/a.coffer" \
           --recovery-key-file "$d/rk" <"$d/data" 2>>"$tmp/err"; then
        got="$("$py" "$dec" --keyring "$d/k.json" --recovery-key-file "$d/rk" 2>"$tmp/err")" &&
        "$py" "$dec" "$d/a.coffer" --recovery-key-file "$d/rk" -o "$d/out" 2>>"$tmp/err"
        rc=$?
        if [ "$rc" -ne 0 ]; then bad "$name" "exit $rc: $(cat "$tmp/err")"
        elif ! grep -q '"version": 2' "$d/k.json"; then bad "$name" "the keyring is not version 2"
        elif cmp -s "$d/out" "$d/data"; then ok "$name" "keyring $got and a labelled archive"
        else bad "$name" "plaintext differs"; fi
    else
        bad "$name" "coffer could not make it: $(cat "$tmp/err")"
    fi
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
