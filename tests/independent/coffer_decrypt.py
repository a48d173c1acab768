#!/usr/bin/env python3
"""Independent coffer reader (format versions 1 and 2), written from
docs/format.md and the standards it cites alone (FIPS 203 for ML-KEM-768,
draft-connolly-cfrg-xwing-kem-06 for X-Wing, RFC 7748, RFC 5869, RFC 3394,
RFC 8439).

Usage:
  coffer_decrypt.py ARCHIVE [--recovery-key-file FILE] [--keyring KEYRING] [-o OUT] [--raw]
  coffer_decrypt.py ARCHIVE --backup-key-file FILE [--keyring KEYRING] [-o OUT] [--raw]
  coffer_decrypt.py --keyring KEYRING [--recovery-key-file FILE]
  coffer_decrypt.py --check-xwing tests/vectors/xwing-draft06.txt
  coffer_decrypt.py --check-sealing tests/vectors/sealing-v2.txt
  coffer_decrypt.py --make-v2-testkit DIR --recovery-key-file FILE
  coffer_decrypt.py --rebuild-v2-stream OUT --recovery-key-file FILE

With --keyring and an ARCHIVE, BK comes from the keyring (fully verified
first) when the keyring holds the header's key id as section 8.7 defines it
(version 2 archive: a version 2 keyring's key_id; version 1 archive: a
version 1 keyring's key_id or a version 2 keyring's v1_key_id); otherwise,
and always for a seal-only keyring (never unlocked, section 8.8), from the
archive's own slots. --backup-key-file gives BK itself (64 hex digits), for
tests. With no factor at all, nothing opens (exit 5), but a seal-only
keyring still gets its before-unlocking checks.

Exit status (format.md section 5): 0 ok; 1 a vector check failed, or a
keyring of an unknown version ("upgrade coffer"); 2 usage; 3 wrong factor (a
recovery key that is not 64 hex digits, fails its checksum with no single
correction opening the slot, or opens no slot); 4 corrupt / tampered /
truncated / refused by a MUST; 5 no slot usable with the factors given
(among them: only a seal-only keyring at hand and no factor for the
archive's own slots); 6 zstd payload without --raw.
"""

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import re
import os
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mlkem  # noqa: E402  (tests/independent/mlkem.py, FIPS 203 from scratch)

EXIT_OK, EXIT_VECTOR, EXIT_USAGE, EXIT_WRONG_KEY, EXIT_CORRUPT, EXIT_NO_SLOT, EXIT_ZSTD = 0, 1, 2, 3, 4, 5, 6

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
    """Version 1 key id (section 1.1)."""
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

    Raises Fail(EXIT_WRONG_KEY) on a malformed key (section 5: "a recovery
    key that is not 64 hex digits ... -> 3").  If the checksum fails,
    returns all one-digit / adjacent-swap variants whose checksum matches
    (spec §2.1 SHOULD); the caller accepts only if exactly one unwraps.
    """
    digits = []
    for ch in text:
        if ch == "-" or ch.isspace():  # section 2.1: any Unicode white space
            continue
        if ch in "0123456789abcdefABCDEF":
            digits.append(ch.lower())
        else:
            raise Fail(EXIT_WRONG_KEY, "recovery key: invalid character %r" % ch)
    if len(digits) != 64:
        raise Fail(EXIT_WRONG_KEY, "recovery key: %d hex digits, expected 64" % len(digits))
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
        # format.md section 5: "no slot usable with the factors given -> 5"
        raise Fail(EXIT_NO_SLOT, "no recovery slot (no slot usable with a recovery key)")
    if key_text is None:
        raise Fail(EXIT_NO_SLOT, "no factor given (no slot usable with the factors given)")
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


# ---------------------------------------------------------------- X25519 (RFC 7748)

X25519_BASE = (9).to_bytes(32, "little")
_P25519 = 2 ** 255 - 19


def _x25519_py(k, u):
    """RFC 7748 section 5, straight from the text. Used only to confirm that a
    result OpenSSL refused is the all-zero value (RFC 7748 section 6.1)."""
    k = bytearray(k)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    k = int.from_bytes(k, "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        kt = (k >> t) & 1
        swap ^= kt
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = kt
        a, b = x2 + z2, x2 - z2
        aa, bb = a * a % _P25519, b * b % _P25519
        e = aa - bb
        c, d = x3 + z3, x3 - z3
        da, cb = d * a % _P25519, c * b % _P25519
        x3 = (da + cb) ** 2 % _P25519
        z3 = x1 * (da - cb) ** 2 % _P25519
        x2 = aa * bb % _P25519
        z2 = e * (aa + 121665 * e) % _P25519
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P25519 - 2, _P25519) % _P25519).to_bytes(32, "little")


def x25519(k, u):
    """X25519(k, u) with cryptography's X25519; None if the result is all zeros."""
    try:
        return X25519PrivateKey.from_private_bytes(k).exchange(X25519PublicKey.from_public_bytes(u))
    except ValueError:
        # OpenSSL refuses to return an all-zero shared secret; make sure that
        # is the reason before reporting it as such.
        if _x25519_py(k, u) == bytes(32):
            return None
        raise


# ---------------------------------------------------------------- X-Wing (draft-connolly-cfrg-xwing-kem-06)

XWING_LABEL = b"\\.//^\\"            # 5c 2e 2f 2f 5e 5c, draft section 5.3
XWING_PK_LEN = 1216
XWING_CT_LEN = 1120
MLKEM_EK_LEN = 1184
MLKEM_CT_LEN = 1088


def xwing_expand(sk):
    """Draft section 5.2 expandDecapsulationKey: (sk_M, sk_X, pk_M, pk_X)."""
    expanded = hashlib.shake_256(sk).digest(96)
    pk_m, sk_m = mlkem.keygen_internal(expanded[0:32], expanded[32:64])
    sk_x = expanded[64:96]
    pk_x = x25519(sk_x, X25519_BASE)
    return sk_m, sk_x, pk_m, pk_x


def xwing_combiner(ss_m, ss_x, ct_x, pk_x):
    """Draft section 5.3."""
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()


def xwing_encaps_derand(pk, eseed):
    """Draft section 5.4.1: returns (ss, ct)."""
    assert len(pk) == XWING_PK_LEN and len(eseed) == 64
    pk_m, pk_x = pk[0:MLKEM_EK_LEN], pk[MLKEM_EK_LEN:XWING_PK_LEN]
    ek_x = eseed[32:64]
    ct_x = x25519(ek_x, X25519_BASE)
    ss_x = x25519(ek_x, pk_x)
    if ss_x is None:
        raise Fail(EXIT_USAGE, "refusing to encapsulate to a low-order X25519 public key")
    ss_m, ct_m = mlkem.encaps_internal(pk_m, eseed[0:32])
    return xwing_combiner(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x


def xwing_decaps(ct, expanded):
    """Draft section 5.5, on an already expanded key. Refuses (exit 4) an
    all-zero X25519 shared secret, as format.md section 8.6 requires."""
    assert len(ct) == XWING_CT_LEN
    sk_m, sk_x, pk_m, pk_x = expanded
    ct_m, ct_x = ct[0:MLKEM_CT_LEN], ct[MLKEM_CT_LEN:XWING_CT_LEN]
    ss_x = x25519(sk_x, ct_x)
    if ss_x is None:
        raise corrupt("encapsulation gives an all-zero X25519 shared secret")
    ss_m = mlkem.decaps_internal(sk_m, ct_m)
    return xwing_combiner(ss_m, ss_x, ct_x, pk_x)


# ---------------------------------------------------------------- format 2 derivations (section 8)

SEALER_ID_RE = re.compile(r"[a-z0-9-]{1,32}\Z")
HEX32_RE = re.compile(r"[0-9a-f]{32}\Z")


def sealing_seed(bk):
    return hkdf(None, bk, b"coffer/v2 sealing seed", 32)


def expand_bk(bk):
    """BK -> X-Wing expanded key (section 8.2)."""
    return xwing_expand(sealing_seed(bk))


def public_key_of(expanded):
    return expanded[2] + expanded[3]


def key_id_v2(pk):
    """Section 8.4."""
    return hashlib.sha256(b"coffer/v2 key id" + pk).digest()[:16]


def sealer_key(bk, sealer_id):
    """Section 8.5."""
    return hkdf(None, bk, b"coffer/v2 sealer key" + b"\x00" + sealer_id.encode("ascii"), 32)


def header_mac_key_v2(salt, skey):
    return hkdf(salt, skey, b"coffer/v2 archive header mac", 32)


def payload_key_v2(header_hash, file_key):
    """Section 8.7: HKDF(SHA-256(H), file key, ...), H the header bytes its MAC
    covers (everything before header_mac). Takes SHA-256(H), as sealing-v2.txt
    gives it."""
    return hkdf(header_hash, file_key, b"coffer/v2 archive payload", 32)


def payload_key_of_header(head, file_key):
    return payload_key_v2(hashlib.sha256(head).digest(), file_key)


def public_key_ok(pk):
    """Section 8.3: 1216 bytes, bytes 0-1151 pass FIPS 203's modulus check."""
    return len(pk) == XWING_PK_LEN and mlkem.ek_modulus_ok(pk[0:MLKEM_EK_LEN])


# ---------------------------------------------------------------- archive

V2_ENC_OFF = FIXED_LEN                      # 76
V2_M_OFF = V2_ENC_OFF + XWING_CT_LEN        # 1196
V2_SID_OFF = V2_M_OFF + 1                   # 1197


def parse_fixed(data):
    """Section 4's fixed part, common to both versions."""
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
    (n,) = struct.unpack(">I", data[72:76])
    if n > MAX_SLOTS_LEN:
        raise corrupt("slots length %d over limit" % n)
    return version, flags, s, data[16:32], data[32:64], n


def decrypt_payload(payload_key, s, payload):
    """Section 4.1."""
    aead = ChaCha20Poly1305(payload_key)
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
    return b"".join(out)


def keyring_holds(kr, version, hdr_kid):
    """Section 8.7: does this keyring hold the header's key id? A version 2
    archive: a version 2 keyring's key_id. A version 1 archive: a version 1
    keyring's key_id (a pre-release "version 2" keyring of section 7 is read
    as version 1), or a version 2 keyring's v1_key_id. Any other keyring is
    not used."""
    if version == 2:
        return kr.layout == "v2" and kr.key_id == hdr_kid
    if kr.layout == "v2":
        return kr.v1_key_id is not None and kr.v1_key_id == hdr_kid
    return kr.key_id == hdr_kid


def bk_for_archive(version, hdr_kid, slots, key_text, bk, kr):
    """Where BK comes from (section 8.7): a keyring that holds the header's
    key id, else the archive's own slots (section 2.4). A seal-only keyring
    is never unlocked and its slots are never used to open (section 8.8)."""
    if kr is not None:
        if hdr_kid in kr.retired:
            print("warning: the keyring lists key id %s as retired: this archive is older than "
                  "the rotation, or was sealed after it by someone holding an old keyring"
                  % hdr_kid.hex(), file=sys.stderr)
        if kr.seal_only:
            print("info: seal-only keyring (sealer %r): never unlocked; trying the archive's own slots"
                  % kr.sealer_id, file=sys.stderr)
            try:
                return bk if bk is not None else recover_bk(slots, key_text)
            except Fail as e:
                if e.code == EXIT_NO_SLOT:
                    raise Fail(EXIT_NO_SLOT, "seal-only: only a seal-only keyring at hand and no usable "
                               "factor for the archive's own slots (%s)" % e)
                raise
        if keyring_holds(kr, version, hdr_kid):
            return unlock_keyring(kr, key_text, bk)
        print("info: the keyring does not hold key id %s (version %d archive); using the archive's "
              "own slots" % (hdr_kid.hex(), version), file=sys.stderr)
    if bk is not None:
        return bk
    return recover_bk(slots, key_text)


def open_archive(data, key_text, bk=None, kr=None):
    """Return (flags, plaintext) once everything authenticated. `bk`, when
    given (--backup-key-file), replaces the factor; `kr` is a parsed keyring
    (parse_keyring) that section 8.7 may use."""
    version, flags, s, hdr_kid, salt, n = parse_fixed(data)

    def get_bk(slots):
        return bk_for_archive(version, hdr_kid, slots, key_text, bk, kr)
    if version == 1:
        return flags, _open_v1(data, get_bk, s, hdr_kid, salt, n)
    return flags, _open_v2(data, get_bk, s, hdr_kid, salt, n)


def _open_v1(data, get_bk, s, hdr_kid, salt, n):
    hdr_end = FIXED_LEN + n + MAC_LEN
    if len(data) < hdr_end:
        raise corrupt("truncated header")
    slots = parse_json(data[FIXED_LEN:FIXED_LEN + n])
    validate_slots(slots, 1)
    bk = get_bk(slots)
    if not hmac.compare_digest(key_id(bk), hdr_kid):
        raise corrupt("key id of BK does not match header")
    mac_key = hkdf(salt, bk, b"coffer/v1 archive header mac", 32)
    mac = hmac.new(mac_key, data[0:FIXED_LEN + n], hashlib.sha256).digest()
    if not hmac.compare_digest(mac, data[FIXED_LEN + n:hdr_end]):
        raise corrupt("header MAC does not verify")
    payload_key = hkdf(salt, bk, b"coffer/v1 archive payload", 32)
    return decrypt_payload(payload_key, s, memoryview(data)[hdr_end:])


def _open_v2(data, get_bk, s, hdr_kid, salt, n):
    # Section 8.8: magic, version, flags, chunk size, n (parse_fixed), then m
    # and the sealer id's alphabet, before reading the slots.
    if len(data) < V2_SID_OFF:
        raise corrupt("truncated version 2 header (encapsulation / sealer id length)")
    enc = data[V2_ENC_OFF:V2_M_OFF]
    m = data[V2_M_OFF]
    if not 1 <= m <= 32:
        raise corrupt("sealer id length %d outside 1-32" % m)
    if len(data) < V2_SID_OFF + m:
        raise corrupt("truncated version 2 header (sealer id)")
    sid_raw = data[V2_SID_OFF:V2_SID_OFF + m]
    sid = sid_raw.decode("latin-1")
    if not SEALER_ID_RE.match(sid):
        raise corrupt("sealer id %r outside [a-z0-9-]" % sid_raw)
    slots_off = V2_SID_OFF + m
    mac_off = slots_off + n
    hdr_end = mac_off + MAC_LEN
    if len(data) < hdr_end:
        raise corrupt("truncated header")
    slots = parse_json(data[slots_off:mac_off])
    validate_slots(slots, 2)

    # Section 8.7, in order.
    bk = get_bk(slots)
    expanded = expand_bk(bk)
    if not hmac.compare_digest(key_id_v2(public_key_of(expanded)), hdr_kid):
        raise corrupt("not this key: key id of BK's sealing public key does not match header")
    mac_key = header_mac_key_v2(salt, sealer_key(bk, sid))
    mac = hmac.new(mac_key, data[0:mac_off], hashlib.sha256).digest()
    if not hmac.compare_digest(mac, data[mac_off:hdr_end]):
        raise corrupt("header MAC does not verify (sealer %r)" % sid)
    file_key = xwing_decaps(enc, expanded)
    # Section 8.7: the payload key is bound to H, every header byte the MAC
    # covers (fixed part, encapsulation, m, sealer id, slots).
    payload_key = payload_key_of_header(data[0:mac_off], file_key)
    print("info: version 2 archive sealed by %r" % sid, file=sys.stderr)
    return decrypt_payload(payload_key, s, memoryview(data)[hdr_end:])


# ---------------------------------------------------------------- keyring

KEYRING_MEMBERS = {"format", "version", "key_id", "slots", "mac"}
KEYRING_V2_MEMBERS = KEYRING_MEMBERS | {"sealing_public_key", "sealer"}
KEYRING_V2_OPTIONAL = {"v1_key_id", "retired_key_ids"}
MAX_RETIRED = 256
EXIT_UPGRADE = 1   # section 7: a keyring of an unknown version, "upgrade coffer"


class Keyring:
    pass


def parse_keyring(raw):
    """Everything a reader checks before unlocking (sections 3, 7, 8.8)."""
    if len(raw) > MAX_KEYRING:
        raise corrupt("keyring over 1 MiB")
    k = parse_json(raw)
    if not isinstance(k, dict):
        raise corrupt("keyring is not a JSON object")
    if k.get("format") != "coffer-keyring":
        raise corrupt("bad format")
    if not _is_int(k.get("version")):
        raise corrupt("keyring version missing or not an integer")
    if k["version"] not in (1, 2):
        raise Fail(EXIT_UPGRADE, "keyring version %d unknown: upgrade coffer" % k["version"])
    kr = Keyring()
    kr.obj = k
    kr.version = k["version"]
    members = set(k.keys())
    sealing = members & {"sealing_public_key", "sealer", "v1_key_id", "retired_key_ids"}
    if kr.version == 2 and sealing:
        # Section 8.8: some of sealing_public_key and sealer but not both, or
        # v1_key_id (or retired_key_ids) without them, is refused here.
        kr.layout = "v2"
        if members - KEYRING_V2_OPTIONAL != KEYRING_V2_MEMBERS:
            raise corrupt("version 2 keyring members are not exactly %s (+ optional %s)"
                          % (sorted(KEYRING_V2_MEMBERS), sorted(KEYRING_V2_OPTIONAL)))
    else:
        # Version 1, or a pre-release "version 2" (version 1 plus labels, section 7).
        kr.layout = "v1" if kr.version == 1 else "v2-labels"
        if members != KEYRING_MEMBERS:
            raise corrupt("keyring members are not exactly %s" % sorted(KEYRING_MEMBERS))
    if not isinstance(k["key_id"], str) or not HEX32_RE.match(k["key_id"]):
        raise corrupt("key_id is not 32 lowercase hex digits")
    kr.key_id = bytes.fromhex(k["key_id"])
    validate_slots(k["slots"], kr.version)
    kr.slots = k["slots"]
    kr.mac = b64decode_strict(k["mac"])
    if len(kr.mac) != 32:
        raise corrupt("mac is not 32 bytes")
    kr.sealer_id = None
    kr.seal_only = False
    kr.v1_key_id = None
    kr.retired = set()
    if kr.layout == "v2":
        pk = b64decode_strict(k["sealing_public_key"])
        if not public_key_ok(pk):
            raise corrupt("sealing_public_key fails section 8.3 (length or modulus check)")
        if key_id_v2(pk) != kr.key_id:
            raise corrupt("key_id is not the key id of sealing_public_key")
        kr.pk = pk
        sealer = k["sealer"]
        if not isinstance(sealer, dict) or set(sealer.keys()) != {"id", "key"}:
            raise corrupt("sealer is not an object of exactly id and key")
        if not isinstance(sealer["id"], str) or not SEALER_ID_RE.match(sealer["id"]):
            raise corrupt("sealer id malformed")
        kr.sealer_id = sealer["id"]
        kr.seal_only = kr.sealer_id != "owner"
        kr.sealer_key = b64decode_strict(sealer["key"])
        if len(kr.sealer_key) != 32:
            raise corrupt("sealer key is not 32 bytes")
        if "v1_key_id" in k:
            if not isinstance(k["v1_key_id"], str) or not HEX32_RE.match(k["v1_key_id"]):
                raise corrupt("v1_key_id is not 32 lowercase hex digits")
            kr.v1_key_id = bytes.fromhex(k["v1_key_id"])
        if "retired_key_ids" in k:
            # Section 8.8's table: 1-256 strings of 32 lowercase hex digits.
            # Nothing is said of duplicates or of the keyring's own ids: accepted.
            ids = k["retired_key_ids"]
            if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_RETIRED:
                raise corrupt("retired_key_ids is not an array of 1-%d key ids" % MAX_RETIRED)
            for x in ids:
                if not isinstance(x, str) or not HEX32_RE.match(x):
                    raise corrupt("retired_key_ids: %r is not 32 lowercase hex digits" % (x,))
            kr.retired = {bytes.fromhex(x) for x in ids}
    return kr


def unlock_keyring(kr, key_text, bk=None):
    """Recover BK from the keyring's slots and do every check after unlocking."""
    if kr.seal_only:
        raise Fail(EXIT_NO_SLOT, "seal-only keyring: never unlocked (section 8.8)")
    if bk is None:
        bk = recover_bk(kr.slots, key_text)
    if kr.layout == "v2":
        if public_key_of(expand_bk(bk)) != kr.pk:
            raise corrupt("BK does not derive sealing_public_key")
        if kr.v1_key_id is not None and key_id(bk) != kr.v1_key_id:
            raise corrupt("v1_key_id is not BK's version 1 key id")
        if not hmac.compare_digest(sealer_key(bk, kr.sealer_id), kr.sealer_key):
            raise corrupt("sealer.key is not the sealer key of %r under BK" % kr.sealer_id)
    elif key_id(bk) != kr.key_id:
        raise corrupt("key_id is not the key id of BK")
    body = {m: v for m, v in kr.obj.items() if m != "mac"}
    mac_key = hkdf(None, bk, b"coffer/v1 keyring mac", 32)
    want = hmac.new(mac_key, canonical_bytes(body), hashlib.sha256).digest()
    if not hmac.compare_digest(want, kr.mac):
        raise corrupt("keyring MAC does not verify")
    return bk


def verify_keyring(raw, key_text, bk=None):
    """All of a keyring's checks. A seal-only keyring gets only those before
    unlocking (section 8.8: it is never unlocked): its MAC, sealer key and
    public key derivation are the owner's to vouch for, not the reader's."""
    kr = parse_keyring(raw)
    if kr.seal_only:
        print("info: seal-only keyring (sealer %r): checked before unlocking only, never unlocked"
              % kr.sealer_id, file=sys.stderr)
    else:
        unlock_keyring(kr, key_text, bk)
    if kr.layout == "v2":
        print("info: version 2 keyring, sealer %r%s%s" % (
            kr.sealer_id, ", v1_key_id %s" % kr.v1_key_id.hex() if kr.v1_key_id else "",
            ", %d retired key ids" % len(kr.retired) if kr.retired else ""),
            file=sys.stderr)
    return kr.key_id.hex()


# ---------------------------------------------------------------- vector checks (section 8.9)

def _read_vectors(path):
    v = {}
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, val = line.partition(":")
            v[name.strip()] = bytes.fromhex(val.strip())
    return v


def _report(results, unchecked=()):
    ok = True
    for name, good in results:
        print("%s: %s" % (name, "ok" if good else "MISMATCH"))
        ok = ok and good
    for name in unchecked:
        print("%s: not checked (unknown line)" % name)
    return EXIT_OK if ok else EXIT_VECTOR


def check_xwing(path):
    v = _read_vectors(path)
    seed, eseed = v["seed"], v["eseed"]
    expanded = xwing_expand(seed)
    pk = public_key_of(expanded)
    ss, ct = xwing_encaps_derand(v["public key"], eseed)
    results = [
        ("public key", pk == v["public key"]),
        ("ciphertext", ct == v["ciphertext"]),
        ("shared secret (encapsulate)", ss == v["shared secret"]),
        ("shared secret (decapsulate)", xwing_decaps(v["ciphertext"], expanded) == v["shared secret"]),
    ]
    # ML-KEM-768 alone: round trips and implicit rejection (FIPS 203
    # Algorithm 18: a changed ciphertext gives J(z || c)).
    for i in range(3):
        d, z, m = (hashlib.sha256(bytes([i, j])).digest() for j in range(3))
        ek, dk = mlkem.keygen_internal(d, z)
        k, c = mlkem.encaps_internal(ek, m)
        c_bad = bytes([c[0] ^ 1]) + c[1:]
        results.append(("ML-KEM-768 round trip %d" % i, mlkem.decaps_internal(dk, c) == k
                        and mlkem.decaps_internal(dk, c_bad) == mlkem.J(z + c_bad)))
    known = {"seed", "public key", "eseed", "ciphertext", "shared secret"}
    return _report(results, sorted(set(v) - known))


def check_sealing(path):
    v = _read_vectors(path)
    bk = v["backup key"]
    salt = v["salt"]
    seed = sealing_seed(bk)
    expanded = xwing_expand(seed)
    pk = public_key_of(expanded)
    ss, ct = xwing_encaps_derand(pk, v["encapsulation randomness"])
    results = [
        ("sealing seed", seed == v["sealing seed"]),
        ("public key sha256", hashlib.sha256(pk).digest() == v["public key sha256"]),
        ("public key passes section 8.3", public_key_ok(pk)),
        ("key id", key_id_v2(pk) == v["key id"]),
        ("encapsulation sha256", hashlib.sha256(ct).digest() == v["encapsulation sha256"]),
        ("file key", ss == v["file key"]),
        ("file key (decapsulate)", xwing_decaps(ct, expanded) == v["file key"]),
        # Section 8.7: HKDF(SHA-256(H), file key, ...); the vector gives SHA-256(H)
        # as an input (44 x 32, not a real header's hash).
        ("payload key", payload_key_v2(v["header hash"], ss) == v["payload key"]),
        ("payload key is not the salted one", hkdf(salt, ss, b"coffer/v2 archive payload", 32)
         != v["payload key"]),
    ]
    known = {"backup key", "sealing seed", "public key sha256", "key id", "encapsulation randomness",
             "encapsulation sha256", "file key", "salt", "header hash", "payload key"}
    for name in sorted(v):
        if name.startswith("sealer key "):
            sid = name[len("sealer key "):]
            results.append((name, sealer_key(bk, sid) == v[name]))
            known.add(name)
        elif name.startswith("header mac key "):
            sid = name[len("header mac key "):]
            results.append((name, header_mac_key_v2(salt, sealer_key(bk, sid)) == v[name]))
            known.add(name)
    return _report(results, sorted(set(v) - known))


# ---------------------------------------------------------------- a version 2 writer, for tests

def encrypt_payload(payload_key, s, plain):
    aead = ChaCha20Poly1305(payload_key)
    chunks = [plain[i:i + s] for i in range(0, len(plain), s)] or [b""]
    out = []
    for i, c in enumerate(chunks):
        last = i == len(chunks) - 1
        nonce = b"\x00\x00\x00" + i.to_bytes(8, "big") + (b"\x01" if last else b"\x00")
        out.append(aead.encrypt(nonce, c, b""))
    return b"".join(out)


def head_v2(kid, salt, enc, sid_raw, slots_bytes, flags=0, s=4096, created=1700000000, version=2):
    """Section 8.8's header up to (not including) header_mac: H of section 8.7."""
    return (MAGIC + struct.pack(">HHI", version, flags, s) + kid + salt
            + struct.pack(">QI", created, len(slots_bytes))
            + enc + bytes([len(sid_raw)]) + sid_raw + slots_bytes)


def build_v2(kid, salt, enc, sid_raw, slots_bytes, mac_key, file_key, plain,
             flags=0, s=4096, created=1700000000, version=2, payload_key=None):
    """A version 2 archive; the payload key is section 8.7's unless given."""
    head = head_v2(kid, salt, enc, sid_raw, slots_bytes, flags, s, created, version)
    mac = hmac.new(mac_key, head, hashlib.sha256).digest()
    if payload_key is None:
        payload_key = payload_key_of_header(head, file_key)
    return head + mac + encrypt_payload(payload_key, s, plain)


def split_v2(data):
    """(H, header_mac, payload) of a well-formed version 2 archive."""
    n = struct.unpack(">I", data[72:76])[0]
    mac_off = V2_SID_OFF + data[V2_M_OFF] + n
    return data[:mac_off], data[mac_off:mac_off + MAC_LEN], data[mac_off + MAC_LEN:]


def build_v1(bk, salt, slots_bytes, plain, version=1, s=4096, created=1700000000):
    head = (MAGIC + struct.pack(">HHI", version, 0, s) + key_id(bk) + salt
            + struct.pack(">QI", created, len(slots_bytes)) + slots_bytes)
    mac = hmac.new(hkdf(salt, bk, b"coffer/v1 archive header mac", 32), head, hashlib.sha256).digest()
    return head + mac + encrypt_payload(hkdf(salt, bk, b"coffer/v1 archive payload", 32), s, plain)


def seal_v2(bk_for_sealer, pk, sid, slots_bytes, plain, salt, eseed, **kw):
    """What an honest sealer does (sections 8.6-8.8)."""
    if not public_key_ok(pk):
        raise Fail(EXIT_USAGE, "public key fails section 8.3")
    ss, ct = xwing_encaps_derand(pk, eseed)
    mac_key = header_mac_key_v2(salt, sealer_key(bk_for_sealer, sid))
    return build_v2(key_id_v2(pk), salt, ct, sid.encode("ascii"), slots_bytes, mac_key, ss, plain, **kw)


def make_keyring(bk, slots, sealer_id="owner", v1=False, version=2, mutate=None, layout="v2"):
    k = {"format": "coffer-keyring", "version": version, "slots": slots}
    if layout == "v2":
        pk = public_key_of(expand_bk(bk))
        k["key_id"] = key_id_v2(pk).hex()
        k["sealing_public_key"] = base64.b64encode(pk).decode("ascii")
        k["sealer"] = {"id": sealer_id, "key": base64.b64encode(sealer_key(bk, sealer_id)).decode("ascii")}
        if v1:
            k["v1_key_id"] = key_id(bk).hex()
    else:
        k["key_id"] = key_id(bk).hex()
    if mutate:
        mutate(k)
    k["mac"] = base64.b64encode(hmac.new(hkdf(None, bk, b"coffer/v1 keyring mac", 32),
                                         canonical_bytes(k), hashlib.sha256).digest()).decode("ascii")
    return (json.dumps(k, indent=2) + "\n").encode("utf-8")


def make_v2_testkit(out_dir, key_text):
    """Write NAME.coffer / NAME.json with NAME.expect (as tests/testdata/archives)
    into out_dir: version 2 archives and keyrings made from the spec alone."""
    cands, corrected = parse_recovery_key(key_text)
    if corrected or len(cands) != 1:
        raise Fail(EXIT_USAGE, "the test kit needs a recovery key with a valid checksum")
    kek = recovery_kek(cands[0])
    bk = bytes(range(32))                       # format.md section 6's BK
    other_bk = bytes(range(100, 132))
    rec = {"created": 1700000000, "id": "00000001", "kind": "recovery",
           "wrapped": base64.b64encode(aes_key_wrap(kek, bk)).decode("ascii")}
    pw = {"created": 1700000001, "id": "00000002", "kind": "password", "label": "my-laptop",
          "kdf": "argon2id", "m_cost_kib": 65536, "t_cost": 3, "p_cost": 4,
          "salt": base64.b64encode(b"\x44" * 16).decode("ascii"),
          "wrapped": base64.b64encode(b"\x55" * 40).decode("ascii")}
    other_rec = dict(rec, wrapped=base64.b64encode(aes_key_wrap(b"\x66" * 32, other_bk)).decode("ascii"))
    slots = canonical_bytes([rec, pw])
    salt = b"\x33" * 32
    eseed = b"\x22" * 64
    exp = expand_bk(bk)
    pk = public_key_of(exp)
    other_pk = public_key_of(expand_bk(other_bk))
    kid = key_id_v2(pk)
    plain3 = bytes((i * 7 + 3) & 0xFF for i in range(3 * 4096 - 100))
    cases = {}

    def extra(keyring, factor, stderr):
        return (("keyring: %s\n" % keyring if keyring else "") + ("factor: %s\n" % factor if factor else "")
                + ("stderr-contains: %s\n" % stderr if stderr else ""))

    def ok(name, data, plain, keyring=None, factor=None, stderr=None):
        cases[name] = (data, "expect: ok\npayload-sha256: %s\n" % hashlib.sha256(plain).hexdigest()
                       + extra(keyring, factor, stderr))

    def bad(name, data, code, keyring=None, factor=None, stderr=None):
        cases[name] = (data, "expect: exit %d\n" % code + extra(keyring, factor, stderr))

    def flip(data, off, bit=1):
        b = bytearray(data)
        b[off] ^= bit
        return bytes(b)

    owner_mk = header_mac_key_v2(salt, sealer_key(bk, "owner"))
    nas_mk = header_mac_key_v2(salt, sealer_key(bk, "nas-1"))
    ss, ct = xwing_encaps_derand(pk, eseed)
    pkey = ss           # build_v2 derives section 8.7's payload key from the file key and H

    three = seal_v2(bk, pk, "owner", slots, plain3, salt, eseed)
    ok("v2-stream-three-chunks", three, plain3)
    ok("v2-stream-empty", seal_v2(bk, pk, "owner", slots, b"", salt, eseed), b"")
    ok("v2-stream-exact-chunk", seal_v2(bk, pk, "owner", slots, plain3[:4096], salt, eseed), plain3[:4096])
    ok("v2-sealer-nas-1", seal_v2(bk, pk, "nas-1", slots, b"from nas-1\n", salt, eseed, flags=1),
       b"from nas-1\n")
    ok("v2-sealer-max-id", seal_v2(bk, pk, "a" * 32, slots, b"x", salt, eseed), b"x")
    mac_off = V2_SID_OFF + 5 + len(slots)
    bad("v2-bad-header-mac", flip(three, mac_off + 31), EXIT_CORRUPT)
    bad("v2-bad-header-salt", flip(three, 40), EXIT_CORRUPT)
    bad("v2-bad-encapsulation", flip(three, V2_ENC_OFF + 5), EXIT_CORRUPT)
    bad("v2-bad-sealer-id", flip(three, V2_SID_OFF, 0x20), EXIT_CORRUPT)
    # A sealer that writes a damaged (or foreign) encapsulation and MACs it:
    # implicit rejection gives a wrong file key, chunk 0 fails.
    bad("v2-remac-bad-encapsulation",
        build_v2(kid, salt, flip(ct, 5), b"owner", slots, owner_mk, pkey, b"x"), EXIT_CORRUPT)
    bad("v2-remac-bad-x25519-share",
        build_v2(kid, salt, flip(ct, 1100), b"owner", slots, owner_mk, pkey, b"x"), EXIT_CORRUPT)
    ss_o, ct_o = xwing_encaps_derand(other_pk, eseed)
    bad("v2-encapsulated-to-other-key",
        build_v2(kid, salt, ct_o, b"owner", slots, owner_mk, ss_o, b"x"), EXIT_CORRUPT)
    bad("v2-zero-x25519",
        build_v2(kid, salt, ct[:MLKEM_CT_LEN] + bytes(32), b"owner", slots, owner_mk, pkey, b"x"), EXIT_CORRUPT)
    bad("v2-x25519-point-one",
        build_v2(kid, salt, ct[:MLKEM_CT_LEN] + (1).to_bytes(32, "little"), b"owner", slots, owner_mk,
                 pkey, b"x"), EXIT_CORRUPT)
    bad("v2-forged-owner", build_v2(kid, salt, ct, b"owner", slots, nas_mk, pkey, b"x"), EXIT_CORRUPT)
    bad("v2-renamed-sealer", build_v2(kid, salt, ct, b"nas-2", slots, nas_mk, pkey, b"x"), EXIT_CORRUPT)
    bad("v2-mac-by-file-key",
        build_v2(kid, salt, ct, b"owner", slots, header_mac_key_v2(salt, ss), pkey, b"x"), EXIT_CORRUPT)
    bad("v2-sealer-id-empty", build_v2(kid, salt, ct, b"", slots, owner_mk, pkey, b"x"), EXIT_CORRUPT)
    sid33 = b"a" * 33
    bad("v2-sealer-id-33", build_v2(kid, salt, ct, sid33, slots,
                                    header_mac_key_v2(salt, sealer_key(bk, sid33.decode())), pkey, b"x"),
        EXIT_CORRUPT)
    bad("v2-sealer-id-uppercase", build_v2(kid, salt, ct, b"Owner", slots,
                                           header_mac_key_v2(salt, sealer_key(bk, "Owner")), pkey, b"x"),
        EXIT_CORRUPT)
    bad("v2-key-id-v1", build_v2(key_id(bk), salt, ct, b"owner", slots, owner_mk, pkey, b"x"), EXIT_CORRUPT)
    bad("v2-key-id-other", build_v2(key_id_v2(other_pk), salt, ct, b"owner", slots, owner_mk, pkey, b"x"),
        EXIT_CORRUPT)
    bad("v2-payload-v1-key", build_v2(kid, salt, ct, b"owner", slots, owner_mk, ss, b"x",
                                      payload_key=hkdf(salt, bk, b"coffer/v1 archive payload", 32)),
        EXIT_CORRUPT)
    # Section 8.7's payload key, misread: the earlier HKDF(salt, file key, ...);
    # H taken with header_mac; H taken as the fixed part only. All fail at chunk 0.
    bad("v2-payload-key-salted", build_v2(kid, salt, ct, b"owner", slots, owner_mk, ss, b"x",
                                          payload_key=hkdf(salt, ss, b"coffer/v2 archive payload", 32)),
        EXIT_CORRUPT, stderr="chunk 0 does not authenticate")
    h = head_v2(kid, salt, ct, b"owner", slots)
    hm = hmac.new(owner_mk, h, hashlib.sha256).digest()
    bad("v2-payload-key-hash-with-mac",
        h + hm + encrypt_payload(payload_key_of_header(h + hm, ss), 4096, b"x"), EXIT_CORRUPT,
        stderr="chunk 0 does not authenticate")
    bad("v2-payload-key-hash-of-fixed-part",
        h + hm + encrypt_payload(payload_key_of_header(h[:FIXED_LEN], ss), 4096, b"x"), EXIT_CORRUPT,
        stderr="chunk 0 does not authenticate")
    ok("v2-payload-key-control", h + hm + encrypt_payload(payload_key_of_header(h, ss), 4096, b"x"), b"x")

    # What the binding of section 8.7 stops: host nas-1 (it has its own sealer
    # key, not the file key) rewrites the header of the owner's archive and
    # MACs it as itself. The MAC verifies; the payload key changed.
    H, _, payload = split_v2(three)
    rec_only = canonical_bytes([rec])

    def host_rewrite(sid=b"nas-1", slots_bytes=slots, flags=0, created=1700000000):
        hh = head_v2(kid, salt, ct, sid, slots_bytes, flags=flags, created=created)
        return hh + hmac.new(header_mac_key_v2(salt, sealer_key(bk, sid.decode())), hh,
                             hashlib.sha256).digest() + payload
    bad("v2-claimed-by-host", host_rewrite(), EXIT_CORRUPT, stderr="chunk 0 does not authenticate")
    bad("v2-slots-stripped-by-host", host_rewrite(slots_bytes=rec_only), EXIT_CORRUPT,
        stderr="chunk 0 does not authenticate")
    bad("v2-flags-rewritten-by-host", host_rewrite(flags=1), EXIT_CORRUPT,
        stderr="chunk 0 does not authenticate")
    bad("v2-created-rewritten-by-owner", host_rewrite(sid=b"owner", created=1800000000), EXIT_CORRUPT,
        stderr="chunk 0 does not authenticate")
    ok("v2-rewrite-control", host_rewrite(sid=b"owner"), plain3)
    bad("v2-mac-v1-key", build_v2(kid, salt, ct, b"owner", slots,
                                  hkdf(salt, bk, b"coffer/v1 archive header mac", 32), pkey, b"x"),
        EXIT_CORRUPT)
    bad("v2-truncated-in-encapsulation", three[:1000], EXIT_CORRUPT)
    bad("v2-truncated-in-slots", three[:V2_SID_OFF + 5 + 10], EXIT_CORRUPT)
    bad("v2-truncated-at-boundary", three[:len(three) - (4096 - 100 + 16)], EXIT_CORRUPT)
    bad("v2-truncated-last-chunk", three[:-1], EXIT_CORRUPT)
    bad("v2-trailing-data", three + b"\x00" * 16, EXIT_CORRUPT)
    bad("v2-other-key", seal_v2(other_bk, other_pk, "owner", canonical_bytes([other_rec]), b"x", salt, eseed),
        EXIT_WRONG_KEY)
    bad("v2-no-recovery-slot", seal_v2(bk, pk, "owner", canonical_bytes([pw]), b"x", salt, eseed),
        EXIT_NO_SLOT)
    # Pre-release "version 2" archives (version 1 layout plus labels) are not read (section 7).
    bad("v2-prerelease-layout", build_v1(bk, salt, slots, b"x", version=2), EXIT_CORRUPT)
    bad("v1-with-label", build_v1(bk, salt, slots, b"x"), EXIT_CORRUPT)
    ok("v1-no-label", build_v1(bk, salt, canonical_bytes([rec]), b"v1\n"), b"v1\n")

    keyrings = {}

    def kr(name, data, code=EXIT_OK):
        keyrings[name] = (data, "expect: ok\n" if code == EXIT_OK else "expect: exit %d\n" % code)

    def setm(member, value):
        return lambda k: k.__setitem__(member, value)

    kr("v2-keyring-owner", make_keyring(bk, [rec, pw]))
    kr("v2-keyring-upgraded", make_keyring(bk, [rec], v1=True))
    kr("v2-keyring-seal-only", make_keyring(bk, [rec], sealer_id="nas-1"))
    kr("v2-keyring-prerelease-labels", make_keyring(bk, [rec, pw], layout="v1"))
    kr("v1-keyring", make_keyring(bk, [rec], version=1, layout="v1"))
    kr("v1-keyring-with-label", make_keyring(bk, [rec, pw], version=1, layout="v1"), EXIT_CORRUPT)
    kr("v1-keyring-with-sealing", make_keyring(bk, [rec], version=1), EXIT_CORRUPT)
    kr("v2-keyring-version-3", make_keyring(bk, [rec], version=3), EXIT_UPGRADE)
    kr("v2-keyring-bad-key-id", make_keyring(bk, [rec], mutate=setm("key_id", "00" * 16)), EXIT_CORRUPT)
    kr("v2-keyring-uppercase-key-id", make_keyring(bk, [rec], mutate=lambda k: k.__setitem__(
        "key_id", k["key_id"].upper())), EXIT_CORRUPT)
    kr("v2-keyring-key-id-v1", make_keyring(bk, [rec], mutate=setm("key_id", key_id(bk).hex())), EXIT_CORRUPT)

    def bad_modulus(k):
        raw = bytearray(pk)
        raw[0] = 0xFF
        raw[1] |= 0x0F                          # first coefficient 0xfff >= 3329
        k["sealing_public_key"] = base64.b64encode(bytes(raw)).decode("ascii")
        k["key_id"] = key_id_v2(bytes(raw)).hex()
    kr("v2-keyring-pk-modulus", make_keyring(bk, [rec], mutate=bad_modulus), EXIT_CORRUPT)

    def short_pk(k):
        k["sealing_public_key"] = base64.b64encode(pk[:-1]).decode("ascii")
        k["key_id"] = key_id_v2(pk[:-1]).hex()
    kr("v2-keyring-pk-short", make_keyring(bk, [rec], mutate=short_pk), EXIT_CORRUPT)

    def other_pk_m(k):
        k["sealing_public_key"] = base64.b64encode(other_pk).decode("ascii")
        k["key_id"] = key_id_v2(other_pk).hex()
    kr("v2-keyring-pk-of-other-bk", make_keyring(bk, [rec], mutate=other_pk_m), EXIT_CORRUPT)
    kr("v2-keyring-bad-v1-key-id", make_keyring(bk, [rec], mutate=setm("v1_key_id", "00" * 16)), EXIT_CORRUPT)
    kr("v2-keyring-bad-sealer-key", make_keyring(bk, [rec], mutate=lambda k: k["sealer"].__setitem__(
        "key", base64.b64encode(sealer_key(bk, "nas-1")).decode("ascii"))), EXIT_CORRUPT)
    kr("v2-keyring-sealer-renamed", make_keyring(bk, [rec], sealer_id="nas-1", mutate=lambda k: k[
        "sealer"].__setitem__("id", "owner")), EXIT_CORRUPT)
    kr("v2-keyring-sealer-extra", make_keyring(bk, [rec], mutate=lambda k: k["sealer"].__setitem__(
        "created", 1)), EXIT_CORRUPT)
    kr("v2-keyring-sealer-id-uppercase", make_keyring(bk, [rec], sealer_id="Nas"), EXIT_CORRUPT)
    kr("v2-keyring-missing-sealer", make_keyring(bk, [rec], mutate=lambda k: k.pop("sealer")), EXIT_CORRUPT)
    kr("v2-keyring-extra-member", make_keyring(bk, [rec], mutate=setm("comment", "x")), EXIT_CORRUPT)
    good = make_keyring(bk, [rec])
    obj = json.loads(good)
    obj["mac"] = base64.b64encode(b"\x00" * 32).decode("ascii")
    kr("v2-keyring-bad-mac", (json.dumps(obj, indent=2) + "\n").encode(), EXIT_CORRUPT)
    obj = json.loads(good)
    obj["slots"][0]["created"] += 1              # MAC covers the slots
    kr("v2-keyring-slot-changed", (json.dumps(obj, indent=2) + "\n").encode(), EXIT_CORRUPT)

    # Section 8.8: partial sealing members, and sealer.id's alphabet.
    kr("v2-keyring-missing-sealing-public-key",
       make_keyring(bk, [rec], mutate=lambda k: k.pop("sealing_public_key")), EXIT_CORRUPT)
    kr("v2-keyring-v1-key-id-alone", make_keyring(bk, [rec], layout="v1",
                                                  mutate=setm("v1_key_id", key_id(bk).hex())), EXIT_CORRUPT)
    kr("v2-keyring-sealer-id-empty", make_keyring(bk, [rec], sealer_id=""), EXIT_CORRUPT)
    kr("v2-keyring-sealer-id-33", make_keyring(bk, [rec], sealer_id="a" * 33), EXIT_CORRUPT)
    kr("v2-keyring-sealer-id-32", make_keyring(bk, [rec], sealer_id="a" * 32))

    # Section 8.8's retired_key_ids: optional, 1-256 strings of 32 lowercase
    # hex digits, covered by the MAC; only in a version 2 keyring.
    old_ids = [kid.hex(), key_id(bk).hex()]
    many = [hashlib.sha256(i.to_bytes(2, "big")).hexdigest()[:32] for i in range(257)]
    kr("v2-keyring-retired-one", make_keyring(bk, [rec], mutate=setm("retired_key_ids", many[:1])))
    kr("v2-keyring-retired-256", make_keyring(bk, [rec], mutate=setm("retired_key_ids", many[:256])))
    kr("v2-keyring-retired-257", make_keyring(bk, [rec], mutate=setm("retired_key_ids", many)), EXIT_CORRUPT)
    kr("v2-keyring-retired-empty", make_keyring(bk, [rec], mutate=setm("retired_key_ids", [])), EXIT_CORRUPT)
    kr("v2-keyring-retired-uppercase", make_keyring(bk, [rec], mutate=setm(
        "retired_key_ids", [many[0].upper()])), EXIT_CORRUPT)
    kr("v2-keyring-retired-short", make_keyring(bk, [rec], mutate=setm("retired_key_ids", [many[0][:30]])),
       EXIT_CORRUPT)
    kr("v2-keyring-retired-number", make_keyring(bk, [rec], mutate=setm("retired_key_ids", [1])), EXIT_CORRUPT)
    kr("v2-keyring-retired-string", make_keyring(bk, [rec], mutate=setm("retired_key_ids", many[0])),
       EXIT_CORRUPT)
    kr("v1-keyring-with-retired", make_keyring(bk, [rec], version=1, layout="v1",
                                               mutate=setm("retired_key_ids", many[:1])), EXIT_CORRUPT)
    kr("v2-keyring-prerelease-with-retired", make_keyring(bk, [rec], layout="v1",
                                                          mutate=setm("retired_key_ids", many[:1])), EXIT_CORRUPT)
    obj = json.loads(make_keyring(bk, [rec], mutate=setm("retired_key_ids", many[:2])))
    obj["retired_key_ids"].pop()                 # the MAC covers retired_key_ids
    kr("v2-keyring-retired-changed", (json.dumps(obj, indent=2) + "\n").encode(), EXIT_CORRUPT)
    obj = json.loads(make_keyring(bk, [rec]))
    obj["retired_key_ids"] = many[:1]            # added after the MAC
    kr("v2-keyring-retired-added", (json.dumps(obj, indent=2) + "\n").encode(), EXIT_CORRUPT)

    # Section 8.8: a seal-only keyring is never unlocked. Its checks before
    # unlocking still apply; what only BK can check (MAC, sealer key) is not
    # checked by a reader, so these verify.
    kr("v2-keyring-seal-only-retired", make_keyring(bk, [rec], sealer_id="nas-1",
                                                    mutate=setm("retired_key_ids", many[:1])))
    kr("v2-keyring-seal-only-bad-key-id", make_keyring(bk, [rec], sealer_id="nas-1",
                                                       mutate=setm("key_id", "00" * 16)), EXIT_CORRUPT)
    obj = json.loads(make_keyring(bk, [rec], sealer_id="nas-1"))
    obj["mac"] = base64.b64encode(b"\x00" * 32).decode("ascii")
    kr("v2-keyring-seal-only-bad-mac-not-unlocked", (json.dumps(obj, indent=2) + "\n").encode())
    kr("v2-keyring-seal-only-bad-sealer-key-not-unlocked", make_keyring(bk, [rec], sealer_id="nas-1", mutate=lambda k: k[
        "sealer"].__setitem__("key", base64.b64encode(b"\x77" * 32).decode("ascii"))))

    # Archives opened through keyrings (section 8.7: the keyring is used only
    # if it holds the header's key id; else the archive's own slots are).
    # The `-pw-only` archives carry only a password slot (no factor here), so
    # they open only if the keyring is used.
    pw_only = canonical_bytes([pw])
    v1arc = build_v1(bk, salt, canonical_bytes([rec]), b"old\n")
    pw1 = {m: v for m, v in pw.items() if m != "label"}     # version 1: no labels
    v1pw = build_v1(bk, salt, canonical_bytes([pw1]), b"old\n")
    v2pw = seal_v2(bk, pk, "owner", pw_only, b"pw\n", salt, eseed)
    ok("v2-through-owner-keyring", three, plain3, keyring="v2-keyring-owner.json")
    ok("v2-pw-only-through-owner-keyring", v2pw, b"pw\n", keyring="v2-keyring-owner.json")
    bad("v2-through-owner-keyring-no-factor", three, EXIT_NO_SLOT, keyring="v2-keyring-owner.json",
        factor="none")
    bad("v2-no-factor", three, EXIT_NO_SLOT, factor="none")
    bad("v2-pw-only-through-v1-keyring", v2pw, EXIT_NO_SLOT, keyring="v1-keyring.json",
        stderr="does not hold")
    bad("v2-pw-only-through-prerelease-keyring", v2pw, EXIT_NO_SLOT,
        keyring="v2-keyring-prerelease-labels.json", stderr="does not hold")
    ok("v1-through-upgraded-keyring", v1arc, b"old\n", keyring="v2-keyring-upgraded.json")
    ok("v1-pw-only-through-upgraded-keyring", v1pw, b"old\n", keyring="v2-keyring-upgraded.json")
    ok("v1-pw-only-through-v1-keyring", v1pw, b"old\n", keyring="v1-keyring.json")
    # A version 2 keyring without v1_key_id does not hold a version 1 key id
    # (even with the same BK): the archive's own slots are used.
    ok("v1-through-owner-keyring", v1arc, b"old\n", keyring="v2-keyring-owner.json", stderr="does not hold")
    bad("v1-pw-only-through-owner-keyring", v1pw, EXIT_NO_SLOT, keyring="v2-keyring-owner.json")
    # After a rotation (another BK, same recovery key, the old ids retired):
    # the keyring is not used for the old archives; they open through their
    # own slots, with a warning.
    rotated_rec = dict(rec, wrapped=base64.b64encode(aes_key_wrap(kek, other_bk)).decode("ascii"))
    kr("v2-keyring-rotated", make_keyring(other_bk, [rotated_rec], mutate=setm("retired_key_ids", old_ids)))
    ok("v1-through-rotated-keyring", v1arc, b"old\n", keyring="v2-keyring-rotated.json", stderr="retired")
    ok("v2-through-rotated-keyring", three, plain3, keyring="v2-keyring-rotated.json", stderr="retired")
    bad("v2-pw-only-through-rotated-keyring", v2pw, EXIT_NO_SLOT, keyring="v2-keyring-rotated.json",
        stderr="retired")
    ok("v2-new-key-pw-only-through-rotated-keyring",
       seal_v2(other_bk, other_pk, "owner", pw_only, b"new\n", salt, eseed), b"new\n",
       keyring="v2-keyring-rotated.json")
    # Section 8.8: a seal-only keyring is never unlocked and its slots are
    # never used; a reader MAY open through the archive's own slots with a
    # factor given (this one does); with none usable, exit 5.
    ok("v2-through-seal-only-keyring", three, plain3, keyring="v2-keyring-seal-only.json",
       stderr="seal-only")
    ok("v1-through-seal-only-keyring", v1arc, b"old\n", keyring="v2-keyring-seal-only.json",
       stderr="seal-only")
    bad("v2-pw-only-through-seal-only-keyring", v2pw, EXIT_NO_SLOT, keyring="v2-keyring-seal-only.json",
        stderr="seal-only")
    bad("v2-through-seal-only-keyring-no-factor", three, EXIT_NO_SLOT, keyring="v2-keyring-seal-only.json",
        factor="none", stderr="seal-only")
    bad("v2-other-key-through-seal-only-keyring", seal_v2(other_bk, other_pk, "owner",
                                                          canonical_bytes([other_rec]), b"x", salt, eseed),
        EXIT_WRONG_KEY, keyring="v2-keyring-seal-only.json")

    os.makedirs(out_dir, exist_ok=True)
    for name, (data, expect) in cases.items():
        with open(os.path.join(out_dir, name + ".coffer"), "wb") as f:
            f.write(data)
        with open(os.path.join(out_dir, name + ".expect"), "w") as f:
            f.write(expect)
    for name, (data, expect) in keyrings.items():
        with open(os.path.join(out_dir, name + ".json"), "wb") as f:
            f.write(data)
        with open(os.path.join(out_dir, name + ".expect"), "w") as f:
            f.write(expect)
    return len(cases) + len(keyrings)


def rebuild_v2_stream(key_text):
    """format.md section 8.9's archive-v2-stream.coffer, rebuilt from its prose:
    section 6's BK and recovery slot labelled `paper`, `hello, coffer\n`
    sealed by `owner`, flags 0, chunk size 4096, salt 33 x 32, encapsulation
    randomness 22 x 64, created 1700000000. Returns (archive, values), the
    values as section 8.9 names them (key id, file key, header hash, payload
    key), for run.sh to compare with the prose."""
    cands, corrected = parse_recovery_key(key_text)
    if corrected or len(cands) != 1:
        raise Fail(EXIT_USAGE, "needs a recovery key with a valid checksum")
    bk = bytes(range(32))
    slot = {"created": 1700000000, "id": "00000001", "kind": "recovery", "label": "paper",
            "wrapped": base64.b64encode(aes_key_wrap(recovery_kek(cands[0]), bk)).decode("ascii")}
    pk = public_key_of(expand_bk(bk))
    salt, eseed = b"\x33" * 32, b"\x22" * 64
    data = seal_v2(bk, pk, "owner", canonical_bytes([slot]), b"hello, coffer\n", salt, eseed,
                   flags=0, s=4096, created=1700000000)
    file_key, _ = xwing_encaps_derand(pk, eseed)
    head, _, _ = split_v2(data)
    hh = hashlib.sha256(head).digest()
    return data, [("key id (\u00a78.4)", key_id_v2(pk)), ("file key", file_key), ("header hash", hh),
                  ("payload key", payload_key_v2(hh, file_key))]


# ---------------------------------------------------------------- main

def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archive", nargs="?")
    ap.add_argument("--recovery-key-file")
    ap.add_argument("--backup-key-file", help="BK as 64 hex digits (tests): skips the slots")
    ap.add_argument("-o", "--output")
    ap.add_argument("--raw", action="store_true", help="emit still-compressed bytes of a zstd archive")
    ap.add_argument("--keyring", help="verify a keyring file; with ARCHIVE, open it through the keyring")
    ap.add_argument("--check-xwing", metavar="FILE")
    ap.add_argument("--check-sealing", metavar="FILE")
    ap.add_argument("--make-v2-testkit", metavar="DIR")
    ap.add_argument("--rebuild-v2-stream", metavar="OUT",
                    help="write section 8.9's archive-v2-stream.coffer as its prose describes it")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    try:
        if args.check_xwing:
            return check_xwing(args.check_xwing)
        if args.check_sealing:
            return check_sealing(args.check_sealing)
    except (OSError, KeyError, ValueError) as e:
        print("error: vector file: %r" % e, file=sys.stderr)
        return EXIT_VECTOR
    if args.archive is None and args.keyring is None and not (args.make_v2_testkit or args.rebuild_v2_stream):
        print("error: give ARCHIVE, --keyring, --make-v2-testkit or --rebuild-v2-stream", file=sys.stderr)
        return EXIT_USAGE
    if args.recovery_key_file is not None and args.backup_key_file is not None:
        print("error: give at most one of --recovery-key-file, --backup-key-file", file=sys.stderr)
        return EXIT_USAGE
    if (args.make_v2_testkit or args.rebuild_v2_stream) and args.recovery_key_file is None:
        print("error: --make-v2-testkit and --rebuild-v2-stream need --recovery-key-file", file=sys.stderr)
        return EXIT_USAGE
    try:
        key_text, bk = None, None
        if args.recovery_key_file:
            with open(args.recovery_key_file, "r", encoding="utf-8") as f:
                key_text = f.read()
        elif args.backup_key_file:
            with open(args.backup_key_file, "r", encoding="ascii") as f:
                bk = bytes.fromhex(f.read().strip())
            if len(bk) != 32:
                raise ValueError("backup key is not 32 bytes")
        keyring_raw = data = None
        if args.keyring:
            with open(args.keyring, "rb") as f:
                keyring_raw = f.read()
        if args.archive:
            with open(args.archive, "rb") as f:
                data = f.read()
    except (OSError, UnicodeDecodeError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.make_v2_testkit:
            n = make_v2_testkit(args.make_v2_testkit, key_text)
            print("%d cases written to %s" % (n, args.make_v2_testkit))
            return EXIT_OK
        if args.rebuild_v2_stream:
            arc, values = rebuild_v2_stream(key_text)
            with open(args.rebuild_v2_stream, "wb") as f:
                f.write(arc)
            sys.stdout.buffer.write("".join("%s: %s\n" % (n, v.hex()) for n, v in values).encode("utf-8"))
            return EXIT_OK
        if data is None:
            print(verify_keyring(keyring_raw, key_text, bk))
            return EXIT_OK
        kr = parse_keyring(keyring_raw) if keyring_raw is not None else None
        flags, plain = open_archive(data, key_text, bk, kr)
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
