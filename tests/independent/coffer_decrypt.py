#!/usr/bin/env python3
"""Independent coffer reader (format versions 1 and 2), written from
docs/format.md and the standards it cites alone (FIPS 203 for ML-KEM-768,
draft-connolly-cfrg-xwing-kem-06 for X-Wing, RFC 7748, RFC 5869, RFC 3394,
RFC 8439).

Usage:
  coffer_decrypt.py ARCHIVE [--recovery-key-file FILE ...] [--keyring KEYRING] [-o OUT] [--raw]
  coffer_decrypt.py ARCHIVE --backup-key-file FILE [--keyring KEYRING] [-o OUT] [--raw]
  coffer_decrypt.py --keyring KEYRING [--recovery-key-file FILE ...]
  coffer_decrypt.py --check-xwing tests/vectors/xwing-draft06.txt
  coffer_decrypt.py --check-sealing tests/vectors/sealing-v2.txt
  coffer_decrypt.py --check-threshold docs/format.md --vectors tests/vectors
  coffer_decrypt.py --make-v2-testkit DIR --recovery-key-file FILE
  coffer_decrypt.py --rebuild-v2-stream OUT --recovery-key-file FILE

With --keyring and an ARCHIVE: when the keyring holds the header's key id
as section 8.7 defines it (version 2 archive: a version 2 keyring's key_id;
version 1 archive: a version 1 keyring's key_id or a version 2 keyring's
v1_key_id), the keys are offered to the keyring's slots and the archive's
own slots together, a header slot whose id is a keyring slot's left out
(the keyring's copy of a group replaces the header's, section 10.4), and
the keyring is then fully checked against BK; otherwise, and always for a
seal-only keyring (never unlocked, section 8.8), the archive's own slots
alone are used. --backup-key-file gives BK itself (64 hex digits), for
tests. With no factor at all, nothing opens (exit 5), but a seal-only
keyring still gets its before-unlocking checks.

Threshold groups (section 10): --recovery-key-file may be repeated; an
unbound key is offered to every recovery slot and every recovery member
(through its member KEK); SLOT=FILE, as coffer takes it, offers the key to
the slot or member with that id or label only (a name no slot has, or a slot
that takes no recovery key: exit 2; `recovery`, the kind, binds nothing).
A group opens when `need` of its members give shares at distinct x (a
nested group by opening it first); a member is never tried as a slot on its
own. --check-threshold recomputes section 10.5's values.

Exit status (format.md section 5): 0 ok; 1 a vector check failed, or a
keyring of an unknown version ("upgrade coffer"); 2 usage; 4 corrupt /
tampered / truncated / refused by a MUST (section 10.1's rules and section
2's reserved `x` and `members` included); 6 zstd payload without --raw.
When no slot gives BK up, each top-level slot tried ends one way -- a
recovery slot met a wrong factor (a key that does not unwrap it, that is
not 64 hex digits, or whose checksum fails with no single correction
opening it); a group that opened fewer than `need` members has no usable
factor, whatever its members' failures; a top-level group whose `need`
shares, each of which opened its member, do not open its `wrapped` was
altered -- and the status is 3 if any met a wrong factor, else 4 if any was
altered, else 5 (also 5 with no factor, no slot recovery keys could open,
or only a seal-only keyring at hand and no factor for the archive's own
slots).
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
BINDING_RE = re.compile(r"([A-Za-z0-9._-]{1,64})=(.+)\Z", re.S)
BASE_SLOT_MEMBERS = {"id", "kind", "created", "wrapped"}
# The kinds this reader implements, with their members (section 2: "A reader
# MUST refuse ... if a slot of a kind it implements lacks a listed member or
# has members other than those listed"). Every other kind, the hardware
# kinds specified in section 2.3 and docs/backends/ (`tpm2`, `pkcs11`,
# `yubikey`, `fido2`, `vault`) included, is one this reader does not
# implement (it has no device or server to derive the KEK from), so it MUST
# "keep [it] unchanged (all members)": its members are not checked here,
# only the common ones and the reserved `x` and `members`. `fido2` in
# particular is not listed although section 2.3 now names its members: a
# reader that cannot use a fido2 slot refusing one for a missing `rp_id`
# would break the MUST keep (FINDINGS.md, "The fido2 kind").
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


def recovery_key_text(entropy):
    """Section 2.1's written form of the recovery key with these 30 random
    bytes (tests: the writer's side)."""
    assert len(entropy) == 30
    h = (entropy + crc16_ibm3740(entropy).to_bytes(2, "big")).hex()
    return "-".join(h[i:i + 4] for i in range(0, 64, 4))


# ---------------------------------------------------------------- threshold groups (section 10)

def gf_mul(a, b):
    """GF(2^8) with AES's reduction polynomial x^8 + x^4 + x^3 + x + 1 (0x11b)."""
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return r


def gf_inv(a):
    """a^254 = a^-1 for a != 0 (the multiplicative group has order 255)."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    r, e = 1, 254
    while e:
        if e & 1:
            r = gf_mul(r, a)
        a = gf_mul(a, a)
        e >>= 1
    return r


assert gf_mul(0x57, 0x83) == 0xC1                      # FIPS 197 section 4.2
assert gf_mul(0x57, 0x13) == 0xFE                      # FIPS 197 section 4.2.1
assert all(gf_mul(a, gf_inv(a)) == 1 for a in range(1, 256))

THRESHOLD_SECRET = b"coffer/v2 threshold secret"
THRESHOLD_COEFF = b"coffer/v2 threshold coefficient"
THRESHOLD_MEMBER_KEK = b"coffer/v2 threshold member kek"


def threshold_secret(bk, gid):
    """Section 10.2: K_g, from BK and the group's id (ASCII)."""
    return hkdf(None, bk, THRESHOLD_SECRET + b"\x00" + gid.encode("ascii"), 32)


def threshold_coefficient(bk, gid, j):
    """Section 10.2: a_j, j = 1 ... k-1 as one byte."""
    return hkdf(None, bk, THRESHOLD_COEFF + b"\x00" + gid.encode("ascii") + b"\x00" + bytes([j]), 32)


def threshold_share(bk, gid, k, x):
    """Section 10.2: share(x) of the degree k-1 polynomial, byte by byte."""
    if not 1 <= x <= 255:
        raise ValueError("x outside 1-255")
    coeffs = [threshold_secret(bk, gid)] + [threshold_coefficient(bk, gid, j) for j in range(1, k)]
    out = bytearray(32)
    for i in range(32):
        acc = 0
        for c in reversed(coeffs):               # Horner: (...(a_{k-1} x + a_{k-2}) x + ...) x + K_g
            acc = gf_mul(acc, x) ^ c[i]
        out[i] = acc
    return bytes(out)


def combine_shares(shares):
    """Section 10.2: K_g[i] = XOR_m share(x_m)[i] * prod_{l != m} x_l / (x_l ^ x_m)."""
    xs = list(shares)
    if len(set(xs)) != len(xs) or 0 in xs:
        raise ValueError("shares need distinct, nonzero x")
    out = bytearray(32)
    for m in xs:
        coef = 1
        for l in xs:
            if l != m:
                coef = gf_mul(coef, gf_mul(l, gf_inv(l ^ m)))
        sm = shares[m]
        for i in range(32):
            out[i] ^= gf_mul(sm[i], coef)
    return bytes(out)


def member_kek(kek, gid, x):
    """Section 10.3: KEK_member from the member's own KEK (a group's: its K_g),
    the id of the group it is a member of, and its x (one byte)."""
    return hkdf(None, kek, THRESHOLD_MEMBER_KEK + b"\x00" + gid.encode("ascii") + b"\x00" + bytes([x]), 32)


# ---------------------------------------------------------------- opening slots with recovery keys

class Factors:
    """The recovery keys given (--recovery-key-file, repeatable), parsed once,
    and what happened to them while the slots were tried: the exit status when
    nothing opens depends on it (see recover_bk).

    A key is given as text, or as (NAME, text) when bound to a slot as coffer's
    `--recovery-key-file SLOT=FILE` binds it: NAME is a slot's or member's id
    or label, and the key is offered to that slot only (section 5: "keys bound
    to their members (`ID=FILE`) do not" meet a standalone recovery slot);
    NAME `recovery` (the kind) binds nothing. Unbound keys are offered to
    every recovery slot and every recovery member."""

    def __init__(self, key_texts):
        # Section 5: a recovery key that is not 64 hex digits is a wrong
        # factor (3) for a slot outside any group it meets; given to a group's
        # member, it is one of that group's failures (5). So it is kept, as a
        # key that unwraps nothing, and what it met decides.
        self.keys = []               # (candidates, corrected) or None for a malformed key, and its binding
        for t in key_texts:
            name, text = t if isinstance(t, tuple) else (None, t)
            if name == "recovery":
                name = None
            try:
                parsed, why = parse_recovery_key(text), None
            except Fail as e:
                if e.code != EXIT_WRONG_KEY:
                    raise
                parsed, why = None, str(e)
            self.keys.append({"parsed": parsed, "bound": name, "malformed": why})
        self.malformed = [k["malformed"] for k in self.keys if k["malformed"]]
        self.outside_wrong = []      # top-level slots that met a wrong factor: (slot, why)
        self.short = []              # groups left short of `need`: (group, shares it got, members not asked)
        self.refused = []            # top-level groups whose `need` shares do not open their `wrapped`
        self.nested_refused = []     # the same for a group that is a member (a failure of its enclosing group)

    def bound_names(self):
        return {k["bound"] for k in self.keys if k["bound"] is not None}

    def for_slot(self, slot):
        """The keys offered to this recovery slot or member."""
        return [k for k in self.keys if k["bound"] is None or k["bound"] in (slot["id"], slot.get("label"))]


def _all_slots(slots):
    for s in slots:
        yield s
        if s.get("kind") == "threshold":
            yield from _all_slots(s["members"])


def check_bindings(slots, factors):
    """As coffer: a key bound to a name that no slot or member has, or to a
    slot that takes no recovery key, is a usage error (exit 2)."""
    for name in sorted(factors.bound_names()):
        hits = [s for s in _all_slots(slots) if name in (s["id"], s.get("label"))]
        if not hits:
            raise Fail(EXIT_USAGE, "--recovery-key-file %s=...: no slot or member has that id or label" % name)
        if not any(s["kind"] == "recovery" for s in hits):
            raise Fail(EXIT_USAGE, "--recovery-key-file %s=...: that slot takes no recovery key" % name)


def _slot_name(s):
    return "%r (%s)" % (s["label"], s["id"]) if "label" in s else repr(s["id"])


def _open_with_recovery_keys(slot, factors, derive):
    """Try the recovery keys offered to one `recovery` slot (or member):
    `derive` turns the recovery KEK into the KEK this slot wraps under
    (identity at the top level, section 10.3's KEK_member for a member).
    Section 2.1: a key whose checksum fails is accepted for this slot if
    exactly one of its corrections unwraps it. Returns (the unwrapped 32 bytes
    or None, why it failed: None when no key was offered to it (it was not
    tried), else "ambiguous correction", "malformed recovery key" or "wrong
    recovery key")."""
    offered = factors.for_slot(slot)
    if not offered:
        return None, None
    wrapped = b64decode_strict(slot["wrapped"])
    why = "wrong recovery key"
    if all(k["parsed"] is None for k in offered):
        why = "malformed recovery key (%s)" % "; ".join(k["malformed"] for k in offered)
    for k in offered:
        if k["parsed"] is None:         # malformed: unwraps nothing
            continue
        cands, corrected = k["parsed"]
        found = {}
        for cand in cands:
            try:
                found[cand] = aes_key_unwrap(derive(recovery_kek(cand)), wrapped)
            except InvalidUnwrap:
                continue
        if len(found) == 1:
            cand, value = next(iter(found.items()))
            if corrected:
                print("warning: recovery key checksum mismatch; corrected to %s for slot %s"
                      % (cand, _slot_name(slot)), file=sys.stderr)
            return value, None
        if len(found) > 1:
            why = "recovery key checksum mismatch; ambiguous correction"
    return None, why


def _askable(slot, factors):
    """Could this reader ask anything of this slot (or member)? A `recovery`
    slot that some key is offered to, and a group through its members."""
    if slot["kind"] == "recovery":
        return bool(factors.for_slot(slot))
    return slot["kind"] == "threshold"


def _usable(slot):
    """Could recovery keys open this slot at all? A `recovery` slot, or a group
    with at least `need` members that could (section 10.4)."""
    if slot["kind"] == "recovery":
        return True
    if slot["kind"] == "threshold":
        return sum(1 for m in slot["members"] if _usable(m)) >= slot["need"]
    return False


def open_group(group, factors, enclosing=None):
    """Section 10.4: open members until `need` shares at distinct x are held
    (members that need nobody first: here, recovery members before nested
    groups), combine them into K_g, and unwrap the group's `wrapped` with K_g,
    through KEK_member when the group is itself a member of `enclosing` (a
    group id). Returns what the group wraps (BK at the top level, its share of
    the enclosing group otherwise) or None. A member is never tried as a slot
    on its own, and what a member unwraps is only ever a share. As coffer
    does (section 10.4), it stops as soon as it has `need` shares and asks
    nothing more of a group that can no longer reach `need`."""
    gid, need = group["id"], group["need"]
    members = [m for m in group["members"] if m["kind"] != "threshold"] + \
              [m for m in group["members"] if m["kind"] == "threshold"]
    askable = [m for m in members if _askable(m, factors)]
    shares = {}
    not_asked = 0
    for i, m in enumerate(askable):
        if len(shares) >= need:
            break
        if len(shares) + len(askable) - i < need:
            not_asked = len(askable) - i
            print("info: threshold group %s: %d member(s) not asked (the group can no longer reach "
                  "need %d)" % (_slot_name(group), not_asked, need), file=sys.stderr)
            break
        x = m["x"]
        if x in shares:                 # cannot happen: x is unique within a group (validate_slots)
            continue
        if m["kind"] == "recovery":
            share, _ = _open_with_recovery_keys(m, factors, lambda kek, x=x: member_kek(kek, gid, x))
        else:
            share = open_group(m, factors, enclosing=gid)
        if share is not None:
            shares[x] = share
    if len(shares) < need:
        factors.short.append((group, len(shares), not_asked))
        return None
    k_g = combine_shares(shares)
    kek = k_g if enclosing is None else member_kek(k_g, enclosing, group["x"])
    try:
        value = aes_key_unwrap(kek, b64decode_strict(group["wrapped"]))
    except InvalidUnwrap:
        print("info: threshold group %s: %d shares (x %s) combine to a K_g its wrapped refuses"
              % (_slot_name(group), need, ", ".join(str(x) for x in sorted(shares))), file=sys.stderr)
        (factors.refused if enclosing is None else factors.nested_refused).append(group)
        return None
    print("info: threshold group %s opened with %d shares (x %s)"
          % (_slot_name(group), need, ", ".join(str(x) for x in sorted(shares))), file=sys.stderr)
    return value


def recover_bk(slots, key_texts, origin=None):
    """Try the top-level slots in order with the recovery keys given; return
    the first BK recovered (the key id and MAC then decide) or raise.
    `origin`, if given, names where each slot comes from (keyring, header),
    for the messages only.

    Exit statuses (section 5, as revised for threshold groups): each
    top-level slot tried ends one way --
    - a `recovery` slot that some key was offered to and none opened met a
      wrong factor (a key that does not unwrap it, an ambiguous correction, a
      key that is not 64 hex digits); one offered no key (all keys bound
      elsewhere) was not tried;
    - a group that opened fewer than `need` members is a slot with no usable
      factor, whatever its members' failures (a wrong, malformed or
      uncorrectable key among them, a nested group whose shares its wrapped
      refuses);
    - a top-level group whose `need` shares each opened their member but do
      not open its `wrapped` is altered.
    "Over the top-level slots tried, the status is then 3 if any met a wrong
    factor, else 4 if any was altered or malformed, else 5." With no slot
    recovery keys could open, or no key given: 5."""
    factors = Factors(key_texts)
    check_bindings(slots, factors)
    if not any(_usable(s) for s in slots):
        # format.md section 5: "no slot usable with the factors given -> 5"
        raise Fail(EXIT_NO_SLOT, "no recovery slot, nor a group recovery keys could open "
                   "(no slot usable with a recovery key)")
    if not key_texts:
        raise Fail(EXIT_NO_SLOT, "no factor given (no slot usable with the factors given)")
    untried = []
    for i, s in enumerate(slots):
        if s["kind"] == "recovery":
            bk, why = _open_with_recovery_keys(s, factors, lambda kek: kek)
            if bk is None:
                (factors.outside_wrong.append((s, why)) if why else untried.append(s))
        elif s["kind"] == "threshold" and _usable(s):
            bk = open_group(s, factors)
        else:
            continue
        if bk is not None:
            print("info: BK from slot %s%s" % (_slot_name(s), " (%s)" % origin[i] if origin else ""),
                  file=sys.stderr)
            return bk
    if factors.outside_wrong:
        parts = ["slot %s: %s" % (_slot_name(s), why) for s, why in factors.outside_wrong]
        if factors.refused:
            parts.append("(and threshold group %s refused its shares: altered, but section 5 puts a "
                         "wrong factor first)" % ", ".join(_slot_name(g) for g in factors.refused))
        raise Fail(EXIT_WRONG_KEY, "; ".join(parts))
    if factors.refused:
        raise Fail(EXIT_CORRUPT, "threshold group %s: the shares its members gave combine to a K_g "
                   "that its wrapped refuses (the group or a member was altered)"
                   % ", ".join(_slot_name(g) for g in factors.refused))
    top = [(g, n, na) for g, n, na in factors.short if not any(g is r for r in factors.nested_refused)]
    parts = ["threshold group %s has %d of the %d shares it needs%s"
             % (_slot_name(g), n, g["need"], " (%d member(s) not asked)" % na if na else "")
             for g, n, na in top]
    parts += ["member group %s: its shares combine to a K_g its wrapped refuses (a failure of its "
              "enclosing group)" % _slot_name(g) for g in factors.nested_refused]
    if untried:
        parts.append("not tried (no key offered to it): %s" % ", ".join(_slot_name(s) for s in untried))
    if factors.malformed:
        parts.append("malformed recovery key(s), which open nothing: %s" % "; ".join(factors.malformed))
    raise Fail(EXIT_NO_SLOT, "not enough factors (no slot usable with the factors given): %s"
               % "; ".join(parts))


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
THRESHOLD_SLOT_MEMBERS = BASE_SLOT_MEMBERS | {"need", "next_x", "members"}
MAX_SLOT_OBJECTS = 64          # section 10.1: across the top level and every member at any depth
MAX_GROUP_DEPTH = 3            # section 10.1: a top-level group is at depth 1


def validate_slots(slots, version=1, groups=None):
    """Common members (format.md section 2); `label` only in version 2
    (section 7); threshold groups (section 10.1) only where `groups` (default:
    version 2): ids and labels unique and at most 64 slot objects across the
    whole list, members included; `x` in members only."""
    if groups is None:
        groups = version >= 2
    if not isinstance(slots, list) or not 1 <= len(slots) <= 64:
        raise corrupt("slots must be an array of 1-64 objects")
    seen = {"ids": set(), "labels": set(), "count": 0}
    for s in slots:
        _validate_slot(s, version, groups, seen, None, 0, None)


def _validate_slot(s, version, groups, seen, group, depth, xs):
    """One slot object; `group` is the enclosing group (None at the top level),
    `depth` that group's depth (0 at the top level), `xs` the x already taken
    in it."""
    seen["count"] += 1
    if seen["count"] > MAX_SLOT_OBJECTS:
        raise corrupt("more than %d slot objects in the list, members included" % MAX_SLOT_OBJECTS)
    if not isinstance(s, dict):
        raise corrupt("slot is not an object")
    common = dict(s)
    if "label" in common:
        if version < 2:
            raise corrupt("slot label in a version 1 file")
        lab = common.pop("label")
        if not isinstance(lab, str) or not LABEL_RE.match(lab) or lab in KIND_NAMES:
            raise corrupt("slot label malformed")
        if lab in seen["labels"]:
            raise corrupt("duplicate slot label %r" % lab)
        seen["labels"].add(lab)
    if group is None:
        if "x" in common:
            raise corrupt("`x` in a slot that is not a group member")
    else:
        if "x" not in common:
            raise corrupt("member of group %r without `x`" % group["id"])
        x = common.pop("x")
        if not _is_int(x) or not 1 <= x <= 255:
            raise corrupt("member x %r outside 1-255" % (x,))
        if x >= group["next_x"]:
            raise corrupt("member x %d not below its group's next_x %d" % (x, group["next_x"]))
        if x in xs:
            raise corrupt("two members of group %r at x %d" % (group["id"], x))
        xs.add(x)
    for m in ("id", "kind"):
        if not isinstance(common.get(m), str) or not SLOT_NAME_RE.match(common[m]):
            raise corrupt("slot %s missing or malformed" % m)
    if not _is_int(common.get("created")):
        raise corrupt("slot created missing or not an integer")
    if len(b64decode_strict(common.get("wrapped"))) != 40:
        raise corrupt("slot wrapped is not 40 bytes")
    if common["id"] in seen["ids"]:
        raise corrupt("duplicate slot id %r" % common["id"])
    seen["ids"].add(common["id"])
    if common["kind"] == "threshold":
        if not groups:
            raise corrupt("threshold group in a version 1 file (groups need format version 2)")
        if set(common.keys()) != THRESHOLD_SLOT_MEMBERS:
            raise corrupt("threshold slot %r has unexpected/missing members" % common["id"])
        if not _is_int(common["need"]) or not 1 <= common["need"] <= 255:
            raise corrupt("threshold need %r outside 1-255" % (common["need"],))
        if not _is_int(common["next_x"]) or not 1 <= common["next_x"] <= 256:
            raise corrupt("threshold next_x %r outside 1-256" % (common["next_x"],))
        if not isinstance(common["members"], list):
            raise corrupt("threshold members is not an array")
        if depth + 1 > MAX_GROUP_DEPTH:
            raise corrupt("threshold group %r at depth %d: groups nest at most %d deep"
                          % (common["id"], depth + 1, MAX_GROUP_DEPTH))
        taken = set()
        for m in common["members"]:
            _validate_slot(m, version, groups, seen, s, depth + 1, taken)
        return
    # Section 2: `members` is reserved for `threshold` slots, for every kind,
    # known or not (as `x` is for group members, checked above), so even a
    # slot of a kind this reader keeps unchanged is refused with one.
    if "members" in common:
        raise corrupt("slot %r of kind %r has `members`, which only a threshold slot may have"
                      % (common["id"], common["kind"]))
    known = KNOWN_KIND_MEMBERS.get(common["kind"])
    if known is not None and set(common.keys()) != known:
        raise corrupt("slot %r of kind %r has unexpected/missing members" % (common["id"], common["kind"]))


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


def beside_keyring(header_slots, keyring_slots):
    """Section 10.4: "When the reader's own keyring holds the archive's key,
    its slots are tried and every header slot whose id is that of a keyring
    slot is left out, and so is everything nested in such a header slot, and
    every header member whose group's id is that of a keyring slot: the
    keyring's copy of a group replaces the header's, members and all."
    Returns the header slots tried beside the keyring's. "Header slot" and
    "keyring slot" are read as top-level slots, as the same paragraph says
    "member or not" and "members of its groups included" where it means
    members too; a nested header group whose id is a keyring slot's keeps
    its place but loses its members."""
    ids = {s["id"] for s in keyring_slots}

    def prune(s):
        if s["kind"] != "threshold":
            return s
        if s["id"] in ids:
            print("info: header member group %s: its members are left out (a keyring slot has its id)"
                  % _slot_name(s), file=sys.stderr)
            return dict(s, members=[])
        return dict(s, members=[prune(m) for m in s["members"]])
    rest = []
    for s in header_slots:
        if s["id"] in ids:
            print("info: header slot %s left out: the keyring's copy replaces it" % _slot_name(s),
                  file=sys.stderr)
        else:
            rest.append(prune(s))
    return rest


def bk_for_archive(version, hdr_kid, slots, key_texts, bk, kr):
    """Where BK comes from (section 8.7): the slots of a keyring that holds the
    header's key id and the archive's own slots, together ("coffer offers the
    factors to the slots of a keyring that holds the key (as the owner's own)
    and to the archive's copies (under section 2.4's rule) together"), a
    header slot whose id is a keyring slot's left out (section 10.4); else
    the archive's own slots alone. A seal-only keyring is never unlocked and
    its slots are never used to open (section 8.8). When the keyring holds
    the key, it is checked against BK whichever slot gave BK up."""
    if kr is not None:
        if hdr_kid in kr.retired:
            print("warning: the keyring lists key id %s as retired: this archive is older than "
                  "the rotation, or was sealed after it by someone holding an old keyring"
                  % hdr_kid.hex(), file=sys.stderr)
        if kr.seal_only:
            print("info: seal-only keyring (sealer %r): never unlocked; trying the archive's own slots"
                  % kr.sealer_id, file=sys.stderr)
            try:
                return bk if bk is not None else recover_bk(slots, key_texts)
            except Fail as e:
                if e.code == EXIT_NO_SLOT:
                    raise Fail(EXIT_NO_SLOT, "seal-only: only a seal-only keyring at hand and no usable "
                               "factor for the archive's own slots (%s)" % e)
                raise
        if keyring_holds(kr, version, hdr_kid):
            if bk is None:
                rest = beside_keyring(slots, kr.slots)
                bk = recover_bk(kr.slots + rest, key_texts,
                                origin=["keyring"] * len(kr.slots) + ["archive header"] * len(rest))
            return check_unlocked_keyring(kr, bk)
        print("info: the keyring does not hold key id %s (version %d archive); using the archive's "
              "own slots" % (hdr_kid.hex(), version), file=sys.stderr)
    if bk is not None:
        return bk
    return recover_bk(slots, key_texts)


def open_archive(data, key_texts, bk=None, kr=None):
    """Return (flags, plaintext) once everything authenticated. `bk`, when
    given (--backup-key-file), replaces the factor; `kr` is a parsed keyring
    (parse_keyring) that section 8.7 may use."""
    version, flags, s, hdr_kid, salt, n = parse_fixed(data)

    def get_bk(slots):
        return bk_for_archive(version, hdr_kid, slots, key_texts, bk, kr)
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
    validate_slots(k["slots"], kr.version, groups=kr.layout == "v2")
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


def unlock_keyring(kr, key_texts, bk=None):
    """Recover BK from the keyring's slots and do every check after unlocking."""
    if kr.seal_only:
        raise Fail(EXIT_NO_SLOT, "seal-only keyring: never unlocked (section 8.8)")
    if bk is None:
        bk = recover_bk(kr.slots, key_texts)
    return check_unlocked_keyring(kr, bk)


def check_unlocked_keyring(kr, bk):
    """Every check of a keyring that needs BK (sections 3, 8.8)."""
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


def verify_keyring(raw, key_texts, bk=None):
    """All of a keyring's checks. A seal-only keyring gets only those before
    unlocking (section 8.8: it is never unlocked): its MAC, sealer key and
    public key derivation are the owner's to vouch for, not the reader's."""
    kr = parse_keyring(raw)
    if kr.seal_only:
        print("info: seal-only keyring (sealer %r): checked before unlocking only, never unlocked"
              % kr.sealer_id, file=sys.stderr)
    else:
        unlock_keyring(kr, key_texts, bk)
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


# ---------------------------------------------------------------- threshold groups, the writer's side (tests)

def t_recovery(sid, entropy, x=None, label=None, created=1700000000):
    """A `recovery` slot (or member at x) for the test writer: entropy is E."""
    return {"sid": sid, "kind": "recovery", "entropy": entropy, "x": x, "label": label, "created": created}


def t_fido2(sid, out, x=None, label=None, created=1700000000, seed=b"\x01"):
    """A `fido2` slot (or member at x) for the test writer, with exactly the
    members of section 2.3, well formed: what a security key whose
    `hmac-secret` output for the slot's salt is `out` (32 bytes) would have
    enrolled. No key here gives `out`, so no reader can open it; it is
    there to be kept (this reader) or passed over (a reader without the key)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives import serialization
    d = int.from_bytes(hashlib.sha256(b"fido2 test credential key" + seed).digest(), "big")
    point = ec.derive_private_key(d % (2 ** 255) + 1, ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert len(point) == 65 and point[0] == 4            # SEC1 uncompressed, on P-256 by construction
    return {"sid": sid, "kind": "fido2", "out": out, "x": x, "label": label, "created": created,
            "fido2": {"rp_id": "coffer",
                      "credential": base64.b64encode(hashlib.sha512(b"fido2 test credential id" + seed)
                                                     .digest()).decode("ascii"),          # 64 bytes
                      "public_key": base64.b64encode(point).decode("ascii"),
                      "salt": base64.b64encode(hashlib.sha256(b"fido2 test salt" + seed).digest()
                                               ).decode("ascii"),                          # 32 bytes
                      "pin": True, "up": True, "uv": False, "discoverable": False}}


def t_group(sid, need, members, x=None, next_x=None, label=None, created=1700000000):
    """A `threshold` group; next_x defaults to one past the highest member x."""
    if next_x is None:
        next_x = max((m["x"] for m in members), default=0) + 1
    return {"sid": sid, "kind": "threshold", "need": need, "next_x": next_x, "members": members,
            "x": x, "label": label, "created": created}


def t_build(bk, node, enclosing=None, target=None):
    """Section 10.3 from the writer's side: the slot object for `node`, which
    wraps `target` (BK at the top level; share(x) of `enclosing`'s polynomial
    for a member) under its kind's KEK (a group's: its K_g), through
    KEK_member for a member. Members are built with their own shares."""
    s = {"id": node["sid"], "kind": node["kind"], "created": node["created"]}
    if node.get("label"):
        s["label"] = node["label"]
    if enclosing is not None:
        s["x"] = node["x"]
    if target is None:
        target = bk
    if node["kind"] == "recovery":
        kek = hkdf(None, node["entropy"], b"coffer/v1 recovery kek", 32)
    elif node["kind"] == "fido2":
        s.update(node["fido2"])
        # Section 1.1's FIDO2 KEK: HKDF(salt, out, "coffer/v2 fido2 kek", 32).
        kek = hkdf(b64decode_strict(node["fido2"]["salt"]), node["out"], b"coffer/v2 fido2 kek", 32)
    else:
        kek = threshold_secret(bk, node["sid"])
        s["need"] = node["need"]
        s["next_x"] = node["next_x"]
        s["members"] = [t_build(bk, m, node["sid"], threshold_share(bk, node["sid"], node["need"], m["x"]))
                        for m in node["members"]]
    if enclosing is not None:
        kek = member_kek(kek, enclosing, node["x"])
    s["wrapped"] = base64.b64encode(aes_key_wrap(kek, target)).decode("ascii")
    return s


def threshold_vector_slot(bk):
    """Section 10.5's group as its prose describes it: id a1b2c3d4, label
    two-of-three, need 2, next_x 4, created 1700000000, recovery members
    000000b1-3 at x 1-3 with entropy 11, 22, 33 x 30. The members' `created`
    is not in the prose: 1700000000 assumed."""
    members = [t_recovery("000000b%d" % x, bytes([0x11 * x]) * 30, x=x) for x in (1, 2, 3)]
    return t_build(bk, t_group("a1b2c3d4", 2, members, next_x=4, label="two-of-three"))


def _section_10_5_lines(spec_path):
    """Section 10.5's `name: hex` lines, split between its two vectors: the
    lines before the paragraph "A second vector" belong to the first (k = 2),
    those after it to the second (k = 3, nested). A line may end in a
    parenthesis (the prose's note on how the value is derived)."""
    with open(spec_path, "r", encoding="utf-8") as f:
        text = f.read()
    start = text.index("### 10.5 Vectors")
    end = text.find("\n## ", start)
    section = text[start:end if end >= 0 else len(text)]
    cut = section.find("A second vector")
    parts = [section, ""] if cut < 0 else [section[:cut], section[cut:]]
    out = []
    for part in parts:
        said = []
        for block in part.split("```")[1::2]:
            for line in block.splitlines():
                mt = re.match(r"\s*(.+?):\s+([0-9a-f]{32,})(?:\s+\(.*\))?\s*\Z", line)
                if mt:
                    said.append((mt.group(1), bytes.fromhex(mt.group(2))))
        out.append(said)
    return out[0], out[1], cut >= 0


def _compare_said(prefix, said, mine, results, unchecked):
    for name, value in said:
        if name in mine:
            results.append(("%s %s" % (prefix, name), mine[name] == value))
        else:
            unchecked.append("%s %s" % (prefix, name))


def _check_key_file(vec_dir, fname, entropy, results):
    with open(os.path.join(vec_dir, fname), "r", encoding="utf-8") as f:
        cands, corrected = parse_recovery_key(f.read())
    results.append(("%s: entropy %02x x 30, checksum right" % (fname, entropy[0]),
                    not corrected and bytes.fromhex(cands[0])[:30] == entropy))


def _check_vector_files(vec_dir, tag, slot, bk, salt, eseed, results):
    """keyring-v2-TAG.json and archive-v2-TAG.coffer against the prose: the
    keyring's only slot is `slot` (built by t_build from the prose), and the
    keyring and the archive are rebuilt from the prose: the keyring to the same
    canonical form (section 3: member order and whitespace are free, so the
    file's own bytes are not the spec's to fix), MAC included, the archive
    byte for byte (flags 0, chunk size 4096, created 1700000000: section
    10.5, "sealed as the section 8.9 vectors are", by owner)."""
    kname, aname = "keyring-v2-%s.json" % tag, "archive-v2-%s.coffer" % tag
    with open(os.path.join(vec_dir, kname), "rb") as f:
        raw = f.read()
    kr = parse_keyring(raw)
    results.append(("%s: its only slot is the prose's group, member for member" % kname,
                    canonical_bytes(kr.obj["slots"]) == canonical_bytes([slot])))
    rebuilt = json.loads(make_keyring(bk, [slot]))
    results.append(("%s: rebuilt from the prose, same canonical bytes, MAC included" % kname,
                    canonical_bytes(rebuilt) == canonical_bytes(kr.obj)))
    results.append(("%s: the file parses to exactly that object (it differs from the rebuild only in "
                    "member order and whitespace)" % kname, json.loads(raw) == rebuilt))
    with open(os.path.join(vec_dir, aname), "rb") as f:
        arc = f.read()
    pk = public_key_of(expand_bk(bk))
    mine_arc = seal_v2(bk, pk, "owner", canonical_bytes([slot]), b"hello, coffer\n", salt, eseed,
                       flags=0, s=4096, created=1700000000)
    results.append(("%s: rebuilt byte for byte from the prose (salt %02x x 32, randomness %02x x 64, "
                    "flags 0, chunk size 4096, created 1700000000)" % (aname, salt[0], eseed[0]),
                    mine_arc == arc))
    return kr


def threshold_nested_vector_slot(bk):
    """Section 10.5's second vector as its prose describes it: group b0b1b2b3,
    label all-three, need 3, next_x 256, with recovery members 000000c5 at
    x 5 and 000000c6 at x 130 (entropy 44, 55 x 30), and at x 255 the group
    c0c1c2c3 (need 1, next_x 2, no label) whose one member is the recovery
    slot 000000c7 at x 1 (entropy 66 x 30); everything created at 1700000000."""
    inner = t_group("c0c1c2c3", 1, [t_recovery("000000c7", b"\x66" * 30, x=1)], x=255, next_x=2)
    return t_build(bk, t_group("b0b1b2b3", 3, [t_recovery("000000c5", b"\x44" * 30, x=5),
                                               t_recovery("000000c6", b"\x55" * 30, x=130), inner],
                               next_x=256, label="all-three"))


def _share_integer_powers(bk, gid, k, x):
    """A misreading of section 10.2, for the check that the vector catches it:
    x^j as an integer power (mod 256) instead of in GF(2^8)."""
    coeffs = [threshold_secret(bk, gid)] + [threshold_coefficient(bk, gid, j) for j in range(1, k)]
    return bytes(coeffs[0][i] ^ _xor_all(gf_mul(coeffs[j][i], pow(x, j, 256)) for j in range(1, k))
                 for i in range(32))


def _xor_all(values):
    r = 0
    for v in values:
        r ^= v
    return r


def _combine_integer_difference(shares):
    """A misreading of section 10.2: |x_l - x_m| instead of x_l XOR x_m."""
    out = bytearray(32)
    for m in shares:
        coef = 1
        for l in shares:
            if l != m:
                coef = gf_mul(coef, gf_mul(l, gf_inv(abs(l - m) % 256 or 1)))
        for i in range(32):
            out[i] ^= gf_mul(shares[m][i], coef)
    return bytes(out)


def check_threshold(spec_path, vec_dir=None):
    """Section 10.5: every `name: hex` line of its code blocks, recomputed from
    the prose -- the first vector (BK = 00..1f, group id a1b2c3d4, k = 2,
    member entropy 11, 22, 33 x 30) and the second (k = 3 at x 5, 130, 255,
    the member at 255 a nested group) -- and, with vec_dir, the vector files
    against the same prose."""
    said1, said2, has_second = _section_10_5_lines(spec_path)
    results, unchecked = [], []
    bk = bytes(range(32))

    # The first vector: k = 2, x 1-3.
    gid, k = "a1b2c3d4", 2
    k_g = threshold_secret(bk, gid)
    mine = {"K_g": k_g, "group wrapped = AES-KW(K_g, BK)": aes_key_wrap(k_g, bk)}
    for j in range(1, k):
        mine["a_%d" % j] = threshold_coefficient(bk, gid, j)
    shares = {}
    for x in (1, 2, 3):
        shares[x] = threshold_share(bk, gid, k, x)
        mine["share(%d)" % x] = shares[x]
        e = bytes([0x11 * x]) * 30
        mine["member %d" % x] = member_kek(hkdf(None, e, b"coffer/v1 recovery kek", 32), gid, x)
    _compare_said("section 10.5", said1, mine, results, unchecked)
    results.append(("section 10.5 lines found", len(said1) >= 9))
    # Section 10.2's claims: any k shares give K_g; fewer give a wrong value.
    for a in (1, 2, 3):
        for b in range(a + 1, 4):
            results.append(("K_g from share(%d), share(%d)" % (a, b),
                            combine_shares({a: shares[a], b: shares[b]}) == k_g))
        results.append(("share(%d) alone is not K_g" % a, combine_shares({a: shares[a]}) != k_g))
    results.append(("K_g from all three shares (degree 1 < 2)", combine_shares(shares) == k_g))
    if vec_dir:
        slot = threshold_vector_slot(bk)
        for x in (1, 2, 3):
            _check_key_file(vec_dir, "recovery-threshold-%d.txt" % x, bytes([0x11 * x]) * 30, results)
        kr = _check_vector_files(vec_dir, "threshold", slot, bk, b"\x34" * 32, b"\x23" * 64, results)
        got = kr.obj["slots"]
        if len(got) == 1 and got[0].get("kind") == "threshold":
            results.append(("keyring-v2-threshold.json: group wrapped", b64decode_strict(got[0]["wrapped"])
                            == mine["group wrapped = AES-KW(K_g, BK)"]))
            for m in got[0]["members"]:
                x = m["x"]
                results.append(("keyring-v2-threshold.json: member %s at x %d wraps share(%d) under member %d's KEK"
                                % (m["id"], x, x, x), x in shares and aes_key_unwrap(
                                    mine["member %d" % x], b64decode_strict(m["wrapped"])) == shares[x]))

    # The second vector: k = 3 at x 5, 130, 255; at 255 the group c0c1c2c3
    # (need 1), whose member KEK comes from its own K_g with G the enclosing
    # group's id (section 10.3).
    results.append(("section 10.5 has a second vector (k = 3, nested)", has_second))
    if has_second:
        og, ig, k3 = "b0b1b2b3", "c0c1c2c3", 3
        o_kg, i_kg = threshold_secret(bk, og), threshold_secret(bk, ig)
        xs = (5, 130, 255)
        ent = {5: b"\x44" * 30, 130: b"\x55" * 30}
        oshares = {x: threshold_share(bk, og, k3, x) for x in xs}
        c7_kek = member_kek(recovery_kek(recovery_key_text(b"\x66" * 30).replace("-", "")), ig, 1)
        mine2 = {"outer K_g": o_kg, "inner K_g": i_kg,
                 "inner's member KEK": member_kek(i_kg, og, 255),
                 "member 000000c7 KEK": c7_kek}
        for j in range(1, k3):
            mine2["outer a_%d" % j] = threshold_coefficient(bk, og, j)
        for x in xs:
            mine2["share(%d)" % x] = oshares[x]
        for x, e in ent.items():
            mine2["member 000000c%d KEK" % (5 if x == 5 else 6)] = member_kek(
                recovery_kek(recovery_key_text(e).replace("-", "")), og, x)
        pre = "section 10.5 (k = 3, nested)"
        _compare_said(pre, said2, mine2, results, unchecked)
        results.append(("%s lines found" % pre, len(said2) >= 11))
        # Section 10.2: the three shares give K_g, no two do; the inner group
        # (k = 1) has a constant polynomial, so its share(1) is its K_g.
        results.append(("outer K_g from share(5), share(130), share(255)", combine_shares(oshares) == o_kg))
        for a, b in ((5, 130), (5, 255), (130, 255)):
            results.append(("share(%d), share(%d) alone are not the outer K_g" % (a, b),
                            combine_shares({a: oshares[a], b: oshares[b]}) != o_kg))
        results.append(("inner share(1) = inner K_g (need 1: degree 0)", threshold_share(bk, ig, 1, 1) == i_kg))
        # Misreadings this vector catches (the first one could not: x 1-3).
        results.append(("the vector tells x^j in GF(2^8) from an integer power (share(130))",
                        _share_integer_powers(bk, og, k3, 130) != oshares[130]))
        results.append(("the vector tells x_l XOR x_m from |x_l - x_m| (K_g from x 5, 130, 255)",
                        _combine_integer_difference(oshares) != o_kg))
        results.append(("the vector tells G = the enclosing group from the nested group's own id",
                        member_kek(i_kg, ig, 255) != mine2["inner's member KEK"]))
        if vec_dir:
            slot2 = threshold_nested_vector_slot(bk)
            for i, e in enumerate((b"\x44" * 30, b"\x55" * 30, b"\x66" * 30), 1):
                _check_key_file(vec_dir, "recovery-threshold-nested-%d.txt" % i, e, results)
            kr2 = _check_vector_files(vec_dir, "threshold-nested", slot2, bk, b"\x35" * 32, b"\x24" * 64,
                                      results)
            # Each wrapped value of the file, opened with the table's keys.
            kn = "keyring-v2-threshold-nested.json"
            got = kr2.obj["slots"]
            try:
                g = got[0]
                byid = {m["id"]: m for m in g["members"]}
                inner = byid["c0c1c2c3"]
                unwrap = lambda kek, s: aes_key_unwrap(kek, b64decode_strict(s["wrapped"]))
                results += [
                    ("%s: the group's wrapped opens with the outer K_g to BK" % kn, unwrap(o_kg, g) == bk),
                    ("%s: 000000c5 wraps share(5) under its member KEK" % kn,
                     unwrap(mine2["member 000000c5 KEK"], byid["000000c5"]) == oshares[5]),
                    ("%s: 000000c6 wraps share(130) under its member KEK" % kn,
                     unwrap(mine2["member 000000c6 KEK"], byid["000000c6"]) == oshares[130]),
                    ("%s: c0c1c2c3 wraps share(255) under the inner's member KEK" % kn,
                     unwrap(mine2["inner's member KEK"], inner) == oshares[255]),
                    ("%s: 000000c7 wraps the inner share(1) under its member KEK" % kn,
                     unwrap(c7_kek, inner["members"][0]) == i_kg),
                ]
            except (KeyError, IndexError, TypeError, InvalidUnwrap) as e:
                results.append(("%s: its wrapped values open with the table's keys (%r)" % (kn, e), False))
    return _report(results, unchecked)


def threshold_testkit(bk, pk, kid, salt, eseed, rec, ok, bad, kr, key_text):
    """Section 10's cases for the reader's own kit (names `v2-threshold-*`),
    built with the writer's side of section 10 (t_build). Returns the member
    recovery key files to write beside them (`recovery-key:` lines in the
    .expect name them)."""
    import copy
    ent = {i: bytes([0xA0 + i]) * 30 for i in range(1, 10)}          # member i's recovery entropy
    files = {"member-%d.txt" % i: recovery_key_text(e) + "\n" for i, e in ent.items()}
    typo = recovery_key_text(ent[1])
    typo = ("b" if typo[0] != "b" else "c") + typo[1:]                 # one digit off: checksum fails
    files["member-1-typo.txt"] = typo + "\n"
    # Four digits off: the checksum fails and no single correction opens anything.
    h = recovery_key_text(ent[1]).replace("-", "")
    files["member-1-uncorrectable.txt"] = "".join("1" if ch == "0" else "0" for ch in h[:4]) + h[4:] + "\n"
    files["malformed.txt"] = h[:60] + "\n"                           # 60 hex digits
    files["owner-recovery.txt"] = key_text                           # the top-level slot `rec`'s key

    def K(*ids):
        return ["member-%s.txt" % i for i in ids]

    def R(i, x, sid=None, label=None):
        return t_recovery(sid or "0000b%03d" % (i * 10 + x), ent[i], x=x, label=label)

    def seal(slot_list, plain=b"threshold\n"):
        return seal_v2(bk, pk, "owner", canonical_bytes(slot_list), plain, salt, eseed)

    def setin(obj, path, value):
        """Set obj[path...] = value (path through dicts and lists); value None deletes."""
        for p in path[:-1]:
            obj = obj[p]
        if value is None:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value

    plain = b"threshold\n"
    g23 = t_group("0000a001", 2, [R(1, 1), R(2, 2), R(3, 3)], label="two-of-three")
    s23 = t_build(bk, g23)
    a23 = seal([s23])

    # Any two of three open; one, none or a stranger's key does not.
    for ks in ((1, 2), (1, 3), (2, 3), (1, 2, 3), (3, 1)):
        ok("v2-threshold-keys-%s" % "-".join(map(str, ks)), a23, plain, keys=K(*ks))
    bad("v2-threshold-key-1-alone", a23, EXIT_NO_SLOT, keys=K(1), stderr="1 of the 2 shares")
    bad("v2-threshold-key-3-alone", a23, EXIT_NO_SLOT, keys=K(3))
    bad("v2-threshold-key-1-twice", a23, EXIT_NO_SLOT, keys=K(1, 1))
    # Section 5 (revised): a group that opened fewer than `need` members is a
    # slot with no usable factor, whatever its members' failures, a wrong key
    # included: 5. recovery-v1.txt opens no member; after two members refuse
    # it, the third is not asked (section 10.4: the group can no longer reach 2).
    bad("v2-threshold-stranger-key", a23, EXIT_NO_SLOT, stderr="1 member(s) not asked")
    bad("v2-threshold-uncorrectable-typo", a23, EXIT_NO_SLOT, keys=["member-1-uncorrectable.txt"])
    bad("v2-threshold-malformed-key", a23, EXIT_NO_SLOT, keys=["malformed.txt"])
    ok("v2-threshold-malformed-key-and-two-members", a23, plain, keys=["malformed.txt"] + K(1, 2))
    bad("v2-threshold-stranger-and-key-2", a23, EXIT_NO_SLOT, keys=["member-4.txt"] + K(2))
    bad("v2-threshold-no-factor", a23, EXIT_NO_SLOT, factor="none")
    # Section 10.3: the typo correction of section 2.1 checks KEK_member.
    ok("v2-threshold-typo-corrected", a23, plain, keys=["member-1-typo.txt"] + K(2), stderr="corrected")
    # A top-level recovery slot beside the group: either way opens.
    both = seal([rec, s23])
    ok("v2-threshold-beside-recovery-slot", both, plain)
    ok("v2-threshold-beside-recovery-slot-members", both, plain, keys=K(1, 3))
    # ... and 3 only when a slot outside any group met a wrong factor: here the
    # top-level recovery slot meets member 1's key (right for the group, wrong
    # for it), a stranger's key, a key off by four digits, a malformed key.
    bad("v2-threshold-beside-recovery-slot-one-member", both, EXIT_WRONG_KEY, keys=K(1))
    bad("v2-threshold-beside-recovery-slot-stranger", both, EXIT_WRONG_KEY, keys=K(4))
    bad("v2-threshold-beside-recovery-slot-uncorrectable", both, EXIT_WRONG_KEY,
        keys=["member-1-uncorrectable.txt"])
    bad("v2-threshold-beside-recovery-slot-malformed", both, EXIT_WRONG_KEY, keys=["malformed.txt"])

    # Degree 2 over GF(2^8) with x far from 1-3 (spent x: removed members):
    # x^2 and the inverses in the interpolation are exercised (section 10.5's
    # vectors have k = 2 and x 1-3 only).
    g3 = t_group("0000a003", 3, [R(1, 7), R(2, 150), R(3, 199), R(4, 255)], next_x=256)
    a3 = seal([t_build(bk, g3)])
    ok("v2-threshold-3-of-4-high-x", a3, plain, keys=K(1, 2, 4))
    ok("v2-threshold-3-of-4-high-x-other", a3, plain, keys=K(4, 3, 2))
    bad("v2-threshold-3-of-4-two-keys", a3, EXIT_NO_SLOT, keys=K(1, 4))
    g5 = t_group("0000a005", 5, [R(i, i * 50) for i in range(1, 6)])
    ok("v2-threshold-5-of-5", seal([t_build(bk, g5)]), plain, keys=K(1, 2, 3, 4, 5))

    # need 1: every share is K_g; one member opens.
    g1 = t_group("0000a006", 1, [R(1, 1), R(2, 2)])
    ok("v2-threshold-need-1", seal([t_build(bk, g1)]), plain, keys=K(2))

    # Nested: outer 2 of {member 1, inner 2 of {member 2, member 3}}.
    inner = t_group("0000a022", 2, [R(2, 1), R(3, 2)], x=2, label="inner")
    outer = t_group("0000a021", 2, [R(1, 1), inner], label="outer")
    s_nest = t_build(bk, outer)
    a_nest = seal([s_nest])
    ok("v2-threshold-nested", a_nest, plain, keys=K(1, 2, 3))
    ok("v2-threshold-nested-inner-listed-first", seal([t_build(bk, t_group(
        "0000a021", 2, [inner, R(1, 1)], label="outer"))]), plain, keys=K(3, 2, 1))
    bad("v2-threshold-nested-inner-only", a_nest, EXIT_NO_SLOT, keys=K(2, 3))
    bad("v2-threshold-nested-inner-short", a_nest, EXIT_NO_SLOT, keys=K(1, 2))
    # Three deep (allowed): g1 > g2 > g3 > member.
    deep3 = t_group("0000a031", 1, [t_group("0000a032", 1, [t_group("0000a033", 1, [R(1, 1)], x=1)], x=1)])
    ok("v2-threshold-depth-3", seal([t_build(bk, deep3)]), plain, keys=K(1))

    # Members of a kind no reader has a factor for: kept, counted, skipped.
    # The kind must be one the spec does not define (section 2), so that every
    # conforming reader keeps it as it is; `fido2` no longer qualifies (section
    # 2.3 names its members, and a reader that implements it refuses a fido2
    # slot without them), hence `future-kind`, with a member of its own making.
    later = {"id": "0000b0f1", "kind": "future-kind", "x": 3, "created": 1700000000,
             "credential": "AAAA", "wrapped": base64.b64encode(b"\x5a" * 40).decode("ascii")}
    s_mixed = t_build(bk, t_group("0000a041", 2, [R(1, 1), R(2, 2)], next_x=4))
    s_mixed["members"].append(later)
    ok("v2-threshold-unknown-kind-member", seal([s_mixed]), plain, keys=K(1, 2))
    s_pw = copy.deepcopy(s_mixed)
    s_pw["members"] = [s_pw["members"][0], later]     # one recovery member, need 2: never enough
    bad("v2-threshold-not-enough-recovery-members", seal([s_pw]), EXIT_NO_SLOT, keys=K(1, 2),
        stderr="no slot usable")
    # A `fido2` member with exactly section 2.3's members, well formed (its
    # wrapped is share(3) under the member KEK of a FIDO2 KEK no key here
    # gives). This reader does not implement fido2 and keeps it; a reader that
    # does accepts it, and, with no key (and, from a header, no one to say
    # yes: section 2.4), cannot use it. Either way the recovery members decide.
    f3 = t_fido2("0000b0f3", b"\x6f" * 32, x=3)
    ok("v2-threshold-fido2-member", seal([t_build(bk, t_group("0000a043", 2, [R(1, 1), R(2, 2), f3]))]),
       plain, keys=K(1, 2))
    ok("v2-threshold-fido2-member-and-one-recovery-member",
       seal([t_build(bk, t_group("0000a043", 1, [f3, R(1, 1)], next_x=4))]), plain, keys=K(1))
    bad("v2-threshold-fido2-member-not-enough-recovery-members",
        seal([t_build(bk, t_group("0000a043", 2, [R(1, 1), f3]))]), EXIT_NO_SLOT, keys=K(1, 2),
        stderr="no slot usable")
    # ... and `members` on it is refused by every reader (section 2: reserved
    # "whatever the kind, known or not").
    s_fm = t_build(bk, t_group("0000a043", 2, [R(1, 1), R(2, 2), f3]))
    s_fm["members"][2]["members"] = []
    bad("v2-threshold-corrupt-members-on-fido2-member", seal([s_fm]), EXIT_CORRUPT, keys=K(1, 2))
    s_empty = t_build(bk, t_group("0000a042", 2, [], next_x=1))
    ok("v2-threshold-empty-group-beside-recovery-slot", seal([s_empty, rec]), plain)
    bad("v2-threshold-empty-group-alone", seal([s_empty]), EXIT_NO_SLOT)

    # 64 slot objects in all is the limit (section 10.1), members included.
    g63 = t_group("0000a051", 2, [R(1 + (x % 9), x, sid="0000c%03d" % x) for x in range(1, 64)])
    s63 = t_build(bk, g63)
    ok("v2-threshold-64-objects", seal([s63]), plain, keys=K(2, 3))
    s64 = copy.deepcopy(s63)
    s64["members"].append(t_build(bk, R(1, 64, sid="0000c064"), "0000a051",
                                  threshold_share(bk, "0000a051", 2, 64)))
    s64["next_x"] = 65
    bad("v2-threshold-65-objects", seal([s64]), EXIT_CORRUPT)
    bad("v2-threshold-65-objects-top-and-members", seal([rec, s63]), EXIT_CORRUPT)

    # Section 10.4: a member is never a slot on its own, and what it unwraps
    # is never BK. Member 1 wrapped as if it were a top-level slot: key 1
    # opens nothing. Member 1 wrapping BK (under its KEK_member): key 1 gets
    # one "share", not BK.
    s_asslot = copy.deepcopy(s23)
    s_asslot["members"][0]["wrapped"] = base64.b64encode(
        aes_key_wrap(hkdf(None, ent[1], b"coffer/v1 recovery kek", 32), bk)).decode("ascii")
    bad("v2-threshold-member-wrapped-as-slot", seal([s_asslot]), EXIT_NO_SLOT, keys=K(1))
    s_wbk = copy.deepcopy(s23)
    s_wbk["members"][0]["wrapped"] = base64.b64encode(aes_key_wrap(member_kek(
        hkdf(None, ent[1], b"coffer/v1 recovery kek", 32), "0000a001", 1), bk)).decode("ascii")
    bad("v2-threshold-member-wraps-bk", seal([s_wbk]), EXIT_NO_SLOT, keys=K(1))
    # Misreadings of section 10.3 for a nested group, made by a writer: its
    # member KEK from its own id (not the enclosing group's), or no member KEK.
    # The inner group's shares do not open its wrapped; that is a failure of
    # a member of the outer group, which is then left short: 5, "whatever
    # its members' failures" (section 5; coffer, black box, agrees).
    s_own = copy.deepcopy(s_nest)
    k_in = threshold_secret(bk, "0000a022")
    sh_in = threshold_share(bk, "0000a021", 2, 2)
    s_own["members"][1]["wrapped"] = base64.b64encode(aes_key_wrap(member_kek(k_in, "0000a022", 2), sh_in)
                                                      ).decode("ascii")
    bad("v2-threshold-nested-kek-own-id", seal([s_own]), EXIT_NO_SLOT, keys=K(1, 2, 3), stderr="refuses")
    s_raw = copy.deepcopy(s_nest)
    s_raw["members"][1]["wrapped"] = base64.b64encode(aes_key_wrap(k_in, sh_in)).decode("ascii")
    bad("v2-threshold-nested-no-member-kek", seal([s_raw]), EXIT_NO_SLOT, keys=K(1, 2, 3))

    # Tampering with a genuine archive's header (same length, so only the MAC
    # or the shares can tell): x swapped between two members (x is in the
    # member KEK: neither opens, the group is short: 5); need lowered (one
    # share gives a wrong K_g, which the group's wrapped refuses: section 5's
    # "shares that each opened their member but together do not open the
    # group's wrapped -> 4"); need raised (three shares of a line still give
    # K_g: BK comes out and the header MAC catches it: 4).
    def edit(data, old, new):
        assert data.count(old) == 1 and len(old) == len(new)
        return data.replace(old, new)
    a_sw = edit(a23, b'"x":1}', b'"x":9}')
    a_sw = edit(a_sw, b'"x":2}', b'"x":1}')
    bad("v2-threshold-x-swapped-in-header", edit(a_sw, b'"x":9}', b'"x":2}'), EXIT_NO_SLOT, keys=K(1, 2))
    bad("v2-threshold-need-lowered-in-header", edit(a23, b'"need":2', b'"need":1'), EXIT_CORRUPT,
        keys=K(1), stderr="refuses")
    bad("v2-threshold-need-raised-in-header", edit(a23, b'"need":2', b'"need":3'), EXIT_CORRUPT,
        keys=K(1, 2, 3), stderr="header MAC")
    s_dmg = copy.deepcopy(s23)
    s_dmg["wrapped"] = base64.b64encode(b"\x11" * 40).decode("ascii")
    bad("v2-threshold-group-wrapped-damaged", seal([s_dmg]), EXIT_CORRUPT, keys=K(1, 2), stderr="altered")
    # Beside a recovery slot that meets the members' keys (a wrong factor for
    # it): section 5, "the status is then 3 if any met a wrong factor, else 4
    # if any was altered or malformed, else 5", so 3, in either order. With
    # the slot's own key too, the slot opens and nothing is refused.
    bad("v2-threshold-group-wrapped-damaged-beside-recovery-slot", seal([rec, s_dmg]), EXIT_WRONG_KEY,
        keys=K(1, 2), stderr="altered")
    bad("v2-threshold-group-wrapped-damaged-before-recovery-slot", seal([s_dmg, rec]), EXIT_WRONG_KEY,
        keys=K(1, 2), stderr="altered")
    # ... and with the members' keys bound to them (coffer's ID=FILE), they do
    # not meet the recovery slot: 4.
    bad("v2-threshold-group-wrapped-damaged-beside-recovery-slot-bound", seal([rec, s_dmg]), EXIT_CORRUPT,
        keys=["0000b011=member-1.txt", "0000b022=member-2.txt"], stderr="altered")
    # A group left short beside a group that refused its shares: 4 (5 last).
    bad("v2-threshold-group-wrapped-damaged-beside-short-group",
        seal([s_dmg, t_build(bk, t_group("0000a061", 2, [R(4, 1, sid="0000b999"), R(5, 2, sid="0000b998")]))]),
        EXIT_CORRUPT, keys=K(1, 2, 4), stderr="altered")

    # Section 5: "Unbound recovery keys are tried on every recovery slot ...,
    # so a member's key also meets a standalone recovery slot, as a wrong
    # factor there; keys bound to their members (ID=FILE) do not." Bound
    # keys (by id or label, as coffer's --recovery-key-file SLOT=FILE):
    bad("v2-threshold-beside-recovery-slot-bound-one-member", both, EXIT_NO_SLOT,
        keys=["0000b011=member-1.txt"], stderr="not tried")
    ok("v2-threshold-beside-recovery-slot-bound-two-members", both, plain,
       keys=["0000b011=member-1.txt", "0000b022=member-2.txt"])
    bad("v2-threshold-beside-recovery-slot-bound-swapped", both, EXIT_NO_SLOT,
        keys=["0000b011=member-2.txt", "0000b022=member-1.txt"])
    bad("v2-threshold-beside-recovery-slot-bound-to-kind", both, EXIT_WRONG_KEY,
        keys=["recovery=member-1.txt"])
    ok("v2-threshold-bound-by-label", seal([t_build(bk, t_group("0000a001", 2, [
        R(1, 1, label="m-one"), R(2, 2, label="m-two"), R(3, 3)], label="two-of-three"))]), plain,
        keys=["m-one=member-1.txt", "m-two=member-2.txt"])
    bad("v2-threshold-bound-to-unknown-slot", both, EXIT_USAGE, keys=["0000b0ff=member-1.txt"])
    bad("v2-threshold-bound-to-group", both, EXIT_USAGE, keys=["two-of-three=member-1.txt"])
    ok("v2-threshold-group-wrapped-damaged-then-slot-opens", seal([s_dmg, rec]), plain,
       keys=K(1, 2) + ["owner-recovery.txt"])

    # Section 10.1's rules: each breach is refused as corrupt (exit 4), before
    # any factor is tried (the right keys are given).
    corrupt_cases = {
        "duplicate-x": (["members", 1, "x"], 1),
        "x-equals-next-x": (["members", 2, "x"], 4),
        "x-0": (["members", 0, "x"], 0),
        "x-256": (["members", 0, "x"], 256),
        "x-string": (["members", 0, "x"], "1"),
        "x-missing": (["members", 0, "x"], None),
        "x-on-group-at-top-level": (["x"], 1),
        "need-0": (["need"], 0),
        "need-256": (["need"], 256),
        "need-missing": (["need"], None),
        "need-string": (["need"], "2"),
        "next-x-0": (["next_x"], 0),
        "next-x-257": (["next_x"], 257),
        "next-x-missing": (["next_x"], None),
        "members-missing": (["members"], None),
        "members-object": (["members"], {}),
        "member-not-object": (["members", 0], "000000b1"),
        "members-on-recovery-member": (["members", 0, "members"], []),
        "extra-member-in-group": (["threshold"], 2),
        "member-id-duplicates-group": (["members", 0, "id"], "0000a001"),
        "member-label-kind-name": (["members", 0, "label"], "threshold"),
        "member-label-duplicates-group": (["members", 0, "label"], "two-of-three"),
    }
    for name, (path, value) in corrupt_cases.items():
        s_bad = copy.deepcopy(s23)
        setin(s_bad, path, value)
        bad("v2-threshold-corrupt-" + name, seal([s_bad]), EXIT_CORRUPT, keys=K(1, 2, 3))
    r_x = dict(rec, x=1)
    # Section 2: `x` and `members` are reserved, for every kind, known or not.
    unk = {"id": "0000e001", "kind": "future-kind", "created": 1700000000,
           "wrapped": base64.b64encode(b"\x5a" * 40).decode("ascii")}
    ok("v2-threshold-unknown-kind-kept", seal([rec, unk]), plain, keys=["owner-recovery.txt"])
    # A well-formed top-level `fido2` slot before a group: passed over (no
    # key, and a header's slot), the group opens.
    f_top = t_build(bk, t_fido2("0000f001", b"\x6e" * 32, label="blue", seed=b"\x02"))
    ok("v2-threshold-fido2-slot-before-group", seal([f_top, s23]), plain, keys=K(1, 2))
    # A fido2 slot without section 2.3's `rp_id`. Section 2 makes its fate
    # depend on the reader: one that implements fido2 MUST refuse the whole
    # header (4), one that does not, this one, MUST keep it (all members) and
    # opens with the recovery slot beside it. So this case is this reader's
    # alone (no `threshold` in its name: coffer:threshold-exit-statuses does
    # not run it); run.sh's coffer:fido2-slot-per-reader checks coffer's 4.
    f_bad = {k: v for k, v in f_top.items() if k != "rp_id"}
    ok("v2-fido2-slot-missing-rp-id-kept", seal([rec, f_bad]), plain, keys=["owner-recovery.txt"])
    bad("v2-threshold-corrupt-members-on-unknown-kind", seal([rec, dict(unk, members=[])]), EXIT_CORRUPT,
        keys=["owner-recovery.txt"], stderr="only a threshold slot")
    bad("v2-threshold-corrupt-x-on-unknown-kind", seal([rec, dict(unk, x=1)]), EXIT_CORRUPT,
        keys=["owner-recovery.txt"])
    s_um = copy.deepcopy(s23)
    s_um["members"].append(dict(unk, x=3, members=[]))
    s_um["members"][2]["x"] = 4
    s_um["next_x"] = 5
    bad("v2-threshold-corrupt-members-on-unknown-kind-member", seal([s_um]), EXIT_CORRUPT, keys=K(1, 2),
        stderr="only a threshold slot")
    bad("v2-threshold-corrupt-x-on-top-level-slot", seal([r_x, s23]), EXIT_CORRUPT, keys=K(1, 2))
    s_l = copy.deepcopy(s23)
    s_l["members"][0]["label"] = "paper"
    bad("v2-threshold-corrupt-member-label-duplicates-slot", seal([dict(rec, label="paper"), s_l]),
        EXIT_CORRUPT, keys=K(1, 2))
    bad("v2-threshold-corrupt-member-id-duplicates-slot",
        seal([dict(rec, id="0000b011"), s23]), EXIT_CORRUPT, keys=K(1, 2))
    s_two = t_build(bk, t_group("0000a061", 1, [R(4, 1, sid="0000b011")]))
    bad("v2-threshold-corrupt-id-in-two-groups", seal([s23, s_two]), EXIT_CORRUPT, keys=K(1, 2))
    ok("v2-threshold-two-groups", seal([s23, t_build(bk, t_group("0000a061", 1, [R(4, 1, sid="0000b999")]))]),
       plain, keys=K(4))
    deep4 = t_group("0000a071", 1, [t_group("0000a072", 1, [t_group("0000a073", 1, [
        t_group("0000a074", 1, [R(1, 1)], x=1)], x=1)], x=1)])
    bad("v2-threshold-corrupt-depth-4", seal([t_build(bk, deep4)]), EXIT_CORRUPT, keys=K(1))
    # Groups need format version 2: a version 1 archive with one is refused.
    # (without labels, which version 1 refuses on their own).
    s23_nl = t_build(bk, t_group("0000a001", 2, [R(1, 1), R(2, 2), R(3, 3)]))
    bad("v2-threshold-corrupt-in-v1-archive", build_v1(bk, salt, canonical_bytes([rec, s23_nl]), plain),
        EXIT_CORRUPT, stderr="groups need format version 2")

    # Section 10.4: when the reader's own keyring holds the archive's key, its
    # slots are tried together with the header's (section 8.7), but the
    # keyring's copy of a group replaces the header's, members and all. The
    # header's copy of group 0000a001 has member 4 at x 3 where the keyring
    # (v2-keyring-threshold.json) has member 3: through the keyring, member 3
    # counts and member 4 is not tried; without it, the header's copy opens.
    a_hdr = seal([t_build(bk, t_group("0000a001", 2, [R(1, 1), R(2, 2), R(4, 3)], label="two-of-three"))])
    ok("v2-threshold-keyring-copy-replaces-header", a_hdr, plain, keyring="v2-keyring-threshold.json",
       keys=K(3, 1))
    bad("v2-threshold-keyring-copy-replaces-header-member-not-tried", a_hdr, EXIT_NO_SLOT,
        keyring="v2-keyring-threshold.json", keys=K(4, 1), stderr="left out")
    ok("v2-threshold-header-copy-without-keyring", a_hdr, plain, keys=K(4, 1))
    # A header slot the keyring does not have is tried beside the keyring's:
    # the archive's recovery slot opens it through a keyring holding the key
    # that has only the group; the members' keys meet that slot (3).
    ok("v2-threshold-keyring-holds-header-slot-opens", both, plain, keyring="v2-keyring-threshold.json",
       keys=["owner-recovery.txt"], stderr="archive header")
    bad("v2-threshold-keyring-holds-header-slot-meets-member-key", both, EXIT_WRONG_KEY,
        keyring="v2-keyring-threshold.json", keys=K(1))
    ok("v2-threshold-keyring-holds-bound-members", both, plain, keyring="v2-keyring-threshold.json",
       keys=["0000b011=member-1.txt", "0000b033=member-3.txt"], stderr="(keyring)")
    # "... and every header member whose group's id is that of a keyring
    # slot": a header group (not in the keyring) holding a group with the id
    # of the keyring's group. Through the keyring its members are not tried.
    a_inner = seal([t_build(bk, t_group("0000a0f1", 1, [
        t_group("0000a001", 2, [R(5, 1), R(6, 2)], x=1)]))])
    ok("v2-threshold-header-member-group-without-keyring", a_inner, plain, keys=K(5, 6))
    bad("v2-threshold-header-member-group-named-by-keyring", a_inner, EXIT_NO_SLOT,
        keyring="v2-keyring-threshold.json", keys=K(5, 6), stderr="members are left out")
    # Section 10.1's note on older builds: a member's label repeated by a
    # top-level slot is refused in an archive header even when the keyring
    # at hand holds its key (the header is checked before any slot is tried).
    bad("v2-threshold-corrupt-member-label-duplicates-slot-through-keyring",
        seal([dict(rec, label="paper"), s_l]), EXIT_CORRUPT, keyring="v2-keyring-threshold.json",
        keys=K(1, 2))

    # Keyrings (section 10 with section 3's MAC over the members).
    kr("v2-keyring-threshold", make_keyring(bk, [s23]), keys=K(1, 3), key_id=kid.hex())
    kr("v2-keyring-threshold-one-key", make_keyring(bk, [s23]), EXIT_NO_SLOT, keys=K(2))
    kr("v2-keyring-threshold-stranger", make_keyring(bk, [s23]), EXIT_NO_SLOT)
    kr("v2-keyring-threshold-beside-recovery-one-member", make_keyring(bk, [rec, s23]), EXIT_WRONG_KEY,
       keys=K(1))
    kr("v2-keyring-threshold-wrapped-damaged", make_keyring(bk, [s_dmg]), EXIT_CORRUPT, keys=K(1, 3),
       stderr="altered")
    kr("v2-keyring-threshold-wrapped-damaged-beside-recovery", make_keyring(bk, [rec, s_dmg]), EXIT_WRONG_KEY,
       keys=K(1, 3), stderr="altered")
    kr("v2-keyring-threshold-wrapped-damaged-beside-recovery-bound", make_keyring(bk, [rec, s_dmg]),
       EXIT_CORRUPT, keys=["0000b011=member-1.txt", "0000b033=member-3.txt"], stderr="altered")
    kr("v2-keyring-threshold-beside-recovery-bound-one-member", make_keyring(bk, [rec, s23]), EXIT_NO_SLOT,
       keys=["0000b011=member-1.txt"])
    kr("v2-keyring-members-on-unknown-kind", make_keyring(bk, [rec, dict(unk, members=[])]), EXIT_CORRUPT,
       keys=["owner-recovery.txt"])
    kr("v2-keyring-threshold-nested", make_keyring(bk, [rec, s_nest]), keys=K(1, 2, 3), key_id=kid.hex())
    kr("v2-keyring-threshold-nested-short", make_keyring(bk, [s_nest]), EXIT_NO_SLOT, keys=K(2, 3))
    obj = json.loads(make_keyring(bk, [s23]))
    obj["slots"][0]["need"] = 3                      # the MAC covers need
    kr("v2-keyring-threshold-need-changed", (json.dumps(obj, indent=2) + "\n").encode(), EXIT_CORRUPT,
       keys=K(1, 2, 3))
    obj = json.loads(make_keyring(bk, [s23]))
    obj["slots"][0]["next_x"] = 5                    # ... and next_x, which no opening uses
    kr("v2-keyring-threshold-next-x-changed", (json.dumps(obj, indent=2) + "\n").encode(), EXIT_CORRUPT,
       keys=K(1, 2))
    s_bad = copy.deepcopy(s23)
    s_bad["members"][1]["x"] = 1
    kr("v2-keyring-threshold-duplicate-x", make_keyring(bk, [s_bad]), EXIT_CORRUPT, keys=K(1, 2))
    kr("v2-keyring-threshold-depth-4", make_keyring(bk, [t_build(bk, deep4)]), EXIT_CORRUPT, keys=K(1))
    kr("v2-keyring-threshold-65-objects", make_keyring(bk, [rec, s63]), EXIT_CORRUPT)
    kr("v2-keyring-threshold-x-at-top-level", make_keyring(bk, [r_x]), EXIT_CORRUPT)
    kr("v1-keyring-with-threshold", make_keyring(bk, [rec, s23_nl], version=1, layout="v1"), EXIT_CORRUPT,
       stderr="groups need format version 2")
    kr("v2-keyring-prerelease-with-threshold", make_keyring(bk, [rec, s23], layout="v1"), EXIT_CORRUPT,
       stderr="groups need format version 2")
    return files


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

    def extra(keyring, factor, stderr, keys=()):
        return (("keyring: %s\n" % keyring if keyring else "") + ("factor: %s\n" % factor if factor else "")
                + ("stderr-contains: %s\n" % stderr if stderr else "")
                + "".join("recovery-key: %s\n" % k for k in keys))

    def ok(name, data, plain, keyring=None, factor=None, stderr=None, keys=()):
        cases[name] = (data, "expect: ok\npayload-sha256: %s\n" % hashlib.sha256(plain).hexdigest()
                       + extra(keyring, factor, stderr, keys))

    def bad(name, data, code, keyring=None, factor=None, stderr=None, keys=()):
        cases[name] = (data, "expect: exit %d\n" % code + extra(keyring, factor, stderr, keys))

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

    def kr(name, data, code=EXIT_OK, keys=(), key_id=None, stderr=None):
        keyrings[name] = (data, ("expect: ok\n" if code == EXIT_OK else "expect: exit %d\n" % code)
                          + ("key-id: %s\n" % key_id if key_id else "")
                          + ("stderr-contains: %s\n" % stderr if stderr else "")
                          + "".join("recovery-key: %s\n" % k for k in keys))

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

    key_files = threshold_testkit(bk, pk, kid, salt, eseed, rec, ok, bad, kr, key_text)

    os.makedirs(out_dir, exist_ok=True)
    for name, text in key_files.items():
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(text)
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
    ap.add_argument("--recovery-key-file", action="append", metavar="[SLOT=]FILE",
                    help="a recovery key; repeat it to give several (threshold group members, section 10); "
                    "SLOT=FILE (a slot's or member's id or label) offers it to that slot only, as coffer does")
    ap.add_argument("--backup-key-file", help="BK as 64 hex digits (tests): skips the slots")
    ap.add_argument("-o", "--output")
    ap.add_argument("--raw", action="store_true", help="emit still-compressed bytes of a zstd archive")
    ap.add_argument("--keyring", help="verify a keyring file; with ARCHIVE, open it through the keyring")
    ap.add_argument("--check-xwing", metavar="FILE")
    ap.add_argument("--check-sealing", metavar="FILE")
    ap.add_argument("--make-v2-testkit", metavar="DIR")
    ap.add_argument("--rebuild-v2-stream", metavar="OUT",
                    help="write section 8.9's archive-v2-stream.coffer as its prose describes it")
    ap.add_argument("--check-threshold", metavar="FORMAT_MD",
                    help="check section 10.5's values (read from FORMAT_MD) and the threshold vector files")
    ap.add_argument("--vectors", metavar="DIR", help="with --check-threshold: tests/vectors")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    try:
        if args.check_xwing:
            return check_xwing(args.check_xwing)
        if args.check_sealing:
            return check_sealing(args.check_sealing)
        if args.check_threshold:
            return check_threshold(args.check_threshold, args.vectors)
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
        key_texts, bk = [], None
        if args.recovery_key_file:
            for path in args.recovery_key_file:
                # coffer's `SLOT=FILE`: the key goes to that slot (id or label) only.
                name = None
                m = BINDING_RE.match(path)
                if m and not os.path.exists(path):
                    name, path = m.group(1), m.group(2)
                with open(path, "r", encoding="utf-8") as f:
                    key_texts.append(f.read() if name is None else (name, f.read()))
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
            n = make_v2_testkit(args.make_v2_testkit, key_texts[0])
            print("%d cases written to %s" % (n, args.make_v2_testkit))
            return EXIT_OK
        if args.rebuild_v2_stream:
            arc, values = rebuild_v2_stream(key_texts[0])
            with open(args.rebuild_v2_stream, "wb") as f:
                f.write(arc)
            sys.stdout.buffer.write("".join("%s: %s\n" % (n, v.hex()) for n, v in values).encode("utf-8"))
            return EXIT_OK
        if data is None:
            print(verify_keyring(keyring_raw, key_texts, bk))
            return EXIT_OK
        kr = parse_keyring(keyring_raw) if keyring_raw is not None else None
        flags, plain = open_archive(data, key_texts, bk, kr)
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
