#!/usr/bin/env python3
"""Independent coffer v1 reader, written from docs/format.md alone.

Usage:
  coffer_decrypt.py ARCHIVE --recovery-key-file FILE [-o OUT] [--raw]
  coffer_decrypt.py --keyring KEYRING --recovery-key-file FILE

Exit status: 0 ok, 2 usage / malformed recovery key, 3 wrong recovery key
(no slot unwraps), 4 corrupt / tampered / truncated / refused by a MUST,
6 zstd payload without --raw.
"""

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import re
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

EXIT_OK, EXIT_USAGE, EXIT_WRONG_KEY, EXIT_CORRUPT, EXIT_ZSTD = 0, 2, 3, 4, 6

MAGIC = b"coffer\r\n"
FIXED_LEN = 76
MAC_LEN = 32
MAX_SLOTS_LEN = 1048576
MAX_KEYRING = 1 << 20
MAX_DEPTH = 16
SLOT_NAME_RE = re.compile(r"[0-9a-z-]{1,32}\Z")
BASE_SLOT_MEMBERS = {"id", "kind", "created", "wrapped"}
KNOWN_KIND_MEMBERS = {
    "recovery": BASE_SLOT_MEMBERS,
    "password": BASE_SLOT_MEMBERS | {"kdf", "m_cost_kib", "t_cost", "p_cost", "salt"},
}


class Fail(Exception):
    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code


def corrupt(msg):
    return Fail(EXIT_CORRUPT, msg)


# ---------------------------------------------------------------- primitives

def hkdf(salt, ikm, info, length):
    """HKDF-SHA256 per RFC 5869; salt None => 32 zero bytes."""
    if salt is None:
        salt = b"\x00" * 32
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def key_id(bk):
    return hkdf(None, bk, b"coffer/v1 key id", 16)


def crc16_ibm3740(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


assert crc16_ibm3740(b"123456789") == 0x29B1


def b64decode_strict(s):
    if not isinstance(s, str):
        raise corrupt("base64 member is not a string")
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise corrupt("invalid base64")
    # Require the canonical (padded, zero trailing bits) encoding.
    if base64.b64encode(raw).decode("ascii") != s:
        raise corrupt("non-canonical base64")
    return raw


# ---------------------------------------------------------------- recovery key

def parse_recovery_key(text):
    """Return the list of candidate 64-digit hex strings (normally one).

    Raises Fail(EXIT_USAGE) on a malformed key.  If the checksum fails,
    returns all one-digit / adjacent-swap variants whose checksum matches
    (spec §2.1 SHOULD); the caller accepts only if exactly one unwraps.
    """
    digits = []
    for ch in text:
        if ch in " \t\n-":
            continue
        if ch in "0123456789abcdefABCDEF":
            digits.append(ch.lower())
        else:
            raise Fail(EXIT_USAGE, "recovery key: invalid character %r" % ch)
    if len(digits) != 64:
        raise Fail(EXIT_USAGE, "recovery key: %d hex digits, expected 64" % len(digits))
    key = "".join(digits)
    if _checksum_ok(key):
        return [key], False
    cands = set()
    hexd = "0123456789abcdef"
    for i in range(64):
        for d in hexd:
            if d != key[i]:
                k = key[:i] + d + key[i + 1:]
                if _checksum_ok(k):
                    cands.add(k)
    for i in range(63):
        if key[i] != key[i + 1]:
            k = key[:i] + key[i + 1] + key[i] + key[i + 2:]
            if _checksum_ok(k):
                cands.add(k)
    return sorted(cands), True


def _checksum_ok(hex64):
    raw = bytes.fromhex(hex64)
    return crc16_ibm3740(raw[:30]) == int.from_bytes(raw[30:], "big")


def recovery_kek(hex64):
    e = bytes.fromhex(hex64)[:30]
    return hkdf(None, e, b"coffer/v1 recovery kek", 32)


def recover_bk(slots, key_text):
    """Try the recovery slots; return BK or raise."""
    rec = [s for s in slots if s["kind"] == "recovery"]
    if not rec:
        raise Fail(EXIT_WRONG_KEY, "no recovery slot")
    cands, corrected = parse_recovery_key(key_text)
    found = {}
    for cand in cands:
        kek = recovery_kek(cand)
        for s in rec:
            try:
                bk = aes_key_unwrap(kek, b64decode_strict(s["wrapped"]))
            except InvalidUnwrap:
                continue
            found[cand] = bk
            break
    if len(found) == 1:
        cand, bk = next(iter(found.items()))
        if corrected:
            print("warning: recovery key checksum mismatch; corrected to %s" % cand, file=sys.stderr)
        return bk
    if not found:
        raise Fail(EXIT_WRONG_KEY, "wrong recovery key (no recovery slot unwraps)")
    raise Fail(EXIT_WRONG_KEY, "recovery key checksum mismatch; ambiguous correction")


# ---------------------------------------------------------------- JSON

def _reject_float(s):
    raise corrupt("non-integer number %r" % s)


def _reject_const(s):
    raise corrupt("invalid JSON constant %r" % s)


def _no_dupes(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise corrupt("duplicate member %r" % k)
        d[k] = v
    return d


def parse_json(raw):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise corrupt("not UTF-8")
    try:
        val = json.loads(text, parse_float=_reject_float, parse_constant=_reject_const,
                         object_pairs_hook=_no_dupes)
    except Fail:
        raise
    except (ValueError, RecursionError) as e:
        raise corrupt("invalid JSON: %s" % e)
    if _depth(val) > MAX_DEPTH:
        raise corrupt("JSON nested deeper than %d levels" % MAX_DEPTH)
    return val


def _depth(v):
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    return 0


def _canon_str(s):
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif o < 0x20:
            out.append("\\u%04x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def canonical(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _canon_str(v)
    if isinstance(v, list):
        return "[" + ",".join(canonical(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v.keys(), key=lambda k: k.encode("utf-8"))
        return "{" + ",".join(_canon_str(k) + ":" + canonical(v[k]) for k in keys) + "}"
    raise corrupt("unexpected JSON value")


def canonical_bytes(v):
    try:
        return canonical(v).encode("utf-8")
    except UnicodeEncodeError:
        raise corrupt("string not representable in UTF-8 (lone surrogate)")


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


KIND_NAMES = {"recovery", "password", "tpm2", "pkcs11", "yubikey", "vault", "fido2", "threshold"}
LABEL_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}\Z")


def validate_slots(slots, version=1):
    """Common members (format.md section 2); `label` only in version 2 (section 7)."""
    if not isinstance(slots, list) or not 1 <= len(slots) <= 64:
        raise corrupt("slots must be an array of 1-64 objects")
    ids = set()
    labels = set()
    for s in slots:
        if isinstance(s, dict) and "label" in s:
            if version < 2:
                raise corrupt("slot label in a version 1 file")
            lab = s["label"]
            if not isinstance(lab, str) or not LABEL_RE.match(lab) or lab in KIND_NAMES:
                raise corrupt("slot label malformed")
            if lab in labels:
                raise corrupt("duplicate slot label %r" % lab)
            labels.add(lab)
            s = {m: v for m, v in s.items() if m != "label"}
        if not isinstance(s, dict):
            raise corrupt("slot is not an object")
        for m in ("id", "kind"):
            if not isinstance(s.get(m), str) or not SLOT_NAME_RE.match(s[m]):
                raise corrupt("slot %s missing or malformed" % m)
        if not _is_int(s.get("created")):
            raise corrupt("slot created missing or not an integer")
        if len(b64decode_strict(s.get("wrapped"))) != 40:
            raise corrupt("slot wrapped is not 40 bytes")
        if s["id"] in ids:
            raise corrupt("duplicate slot id %r" % s["id"])
        ids.add(s["id"])
        known = KNOWN_KIND_MEMBERS.get(s["kind"])
        if known is not None and set(s.keys()) != known:
            raise corrupt("slot %r of kind %r has unexpected/missing members" % (s["id"], s["kind"]))


# ---------------------------------------------------------------- archive

def open_archive(data, key_text):
    """Return (flags, plaintext) once everything authenticated."""
    if len(data) < FIXED_LEN:
        raise corrupt("file shorter than the fixed header")
    if data[0:8] != MAGIC:
        raise corrupt("bad magic")
    version, flags, s = struct.unpack(">HHI", data[8:16])
    if version not in (1, 2):
        raise corrupt("unknown version %d" % version)
    if flags & ~0x0003:
        raise corrupt("unknown flags 0x%04x" % flags)
    if s & (s - 1) or not 4096 <= s <= 4194304:
        raise corrupt("bad chunk size %d" % s)
    hdr_kid = data[16:32]
    salt = data[32:64]
    (n,) = struct.unpack(">I", data[72:76])
    if n > MAX_SLOTS_LEN:
        raise corrupt("slots length %d over limit" % n)
    hdr_end = FIXED_LEN + n + MAC_LEN
    if len(data) < hdr_end:
        raise corrupt("truncated header")
    slots = parse_json(data[FIXED_LEN:FIXED_LEN + n])
    validate_slots(slots, version)

    bk = recover_bk(slots, key_text)
    if not hmac.compare_digest(key_id(bk), hdr_kid):
        raise corrupt("key id of BK does not match header")
    mac_key = hkdf(salt, bk, b"coffer/v1 archive header mac", 32)
    mac = hmac.new(mac_key, data[0:FIXED_LEN + n], hashlib.sha256).digest()
    if not hmac.compare_digest(mac, data[FIXED_LEN + n:hdr_end]):
        raise corrupt("header MAC does not verify")

    payload_key = hkdf(salt, bk, b"coffer/v1 archive payload", 32)
    aead = ChaCha20Poly1305(payload_key)
    payload = memoryview(data)[hdr_end:]
    out = []
    pos, i = 0, 0
    while True:
        remaining = len(payload) - pos
        if remaining <= s + 16:
            last, clen = True, remaining
        else:
            last, clen = False, s + 16
        if clen < 16:
            raise corrupt("chunk %d shorter than a tag (truncated)" % i)
        if last and i > 0 and clen == 16:
            raise corrupt("empty chunk %d after chunk 0" % i)
        nonce = b"\x00\x00\x00" + i.to_bytes(8, "big") + (b"\x01" if last else b"\x00")
        try:
            out.append(aead.decrypt(nonce, bytes(payload[pos:pos + clen]), b""))
        except InvalidTag:
            raise corrupt("chunk %d does not authenticate (last=%d)" % (i, last))
        pos += clen
        i += 1
        if last:
            break
    return flags, b"".join(out)


# ---------------------------------------------------------------- keyring

KEYRING_MEMBERS = {"format", "version", "key_id", "slots", "mac"}


def verify_keyring(raw, key_text):
    if len(raw) > MAX_KEYRING:
        raise corrupt("keyring over 1 MiB")
    k = parse_json(raw)
    if not isinstance(k, dict) or set(k.keys()) != KEYRING_MEMBERS:
        raise corrupt("keyring members are not exactly %s" % sorted(KEYRING_MEMBERS))
    if k["format"] != "coffer-keyring":
        raise corrupt("bad format")
    if not _is_int(k["version"]) or k["version"] not in (1, 2):
        raise corrupt("unknown keyring version")
    if not isinstance(k["key_id"], str) or not re.fullmatch(r"[0-9a-f]{32}", k["key_id"]):
        raise corrupt("key_id is not 32 lowercase hex digits")
    validate_slots(k["slots"], k["version"])
    mac = b64decode_strict(k["mac"])
    if len(mac) != 32:
        raise corrupt("mac is not 32 bytes")
    bk = recover_bk(k["slots"], key_text)
    kid = key_id(bk)
    if kid.hex() != k["key_id"]:
        raise corrupt("key_id is not the key id of BK")
    body = {m: v for m, v in k.items() if m != "mac"}
    mac_key = hkdf(None, bk, b"coffer/v1 keyring mac", 32)
    want = hmac.new(mac_key, canonical_bytes(body), hashlib.sha256).digest()
    if not hmac.compare_digest(want, mac):
        raise corrupt("keyring MAC does not verify")
    return kid.hex()


# ---------------------------------------------------------------- main

def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archive", nargs="?")
    ap.add_argument("--recovery-key-file", required=True)
    ap.add_argument("-o", "--output")
    ap.add_argument("--raw", action="store_true", help="emit still-compressed bytes of a zstd archive")
    ap.add_argument("--keyring", help="verify a keyring file instead of opening an archive")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    if (args.archive is None) == (args.keyring is None):
        print("error: give exactly one of ARCHIVE or --keyring", file=sys.stderr)
        return EXIT_USAGE
    try:
        with open(args.recovery_key_file, "r", encoding="utf-8") as f:
            key_text = f.read()
        with open(args.keyring or args.archive, "rb") as f:
            data = f.read()
    except (OSError, UnicodeDecodeError) as e:
        print("error: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.keyring:
            print(verify_keyring(data, key_text))
            return EXIT_OK
        flags, plain = open_archive(data, key_text)
    except Fail as e:
        print("error: %s" % e, file=sys.stderr)
        return e.code
    if flags & 0x0002 and not args.raw:
        print("error: zstd not supported by this reader", file=sys.stderr)
        return EXIT_ZSTD
    if args.output:
        with open(args.output, "wb") as f:
            f.write(plain)
    else:
        sys.stdout.buffer.write(plain)
        sys.stdout.buffer.flush()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
