"""ML-KEM-768 (FIPS 203), pure Python, written from the standard alone.

Only what the independent coffer reader needs: KeyGen_internal(d, z)
(Algorithm 16), Encaps_internal(ek, m) (Algorithm 17), Decaps_internal(dk, c)
(Algorithm 18, with implicit rejection) and the encapsulation key modulus
check of section 7.2. Not constant time; for tests only.

Section / algorithm numbers are those of FIPS 203 (August 2024).
"""

import hashlib

Q = 3329
N = 256
K = 3          # ML-KEM-768 (Table 2)
ETA1 = 2
ETA2 = 2
DU = 10
DV = 4

EK_LEN = 384 * K + 32                 # 1184
DK_LEN = 768 * K + 96                 # 2400
CT_LEN = 32 * (DU * K + DV)           # 1088


# ------------------------------------------------------------ 4.1 hashes

def H(s):            # SHA3-256
    return hashlib.sha3_256(s).digest()


def J(s):            # SHAKE256, 32 bytes
    return hashlib.shake_256(s).digest(32)


def G(c):            # SHA3-512, split in two halves
    d = hashlib.sha3_512(c).digest()
    return d[:32], d[32:]


def PRF(eta, s, b):  # SHAKE256(s || b), 64*eta bytes
    return hashlib.shake_256(s + bytes([b])).digest(64 * eta)


# ------------------------------------------------------------ 4.2.1 conversion

def compress(d, x):
    # round((2^d / q) * x) mod 2^d, in integers: floor((x*2^d + q/2) / q)
    return ((x << d) + Q // 2) // Q & ((1 << d) - 1)


def decompress(d, y):
    # round((q / 2^d) * y)
    return (y * Q + (1 << (d - 1))) >> d


def byte_encode(d, F):
    """Algorithm 5: 256 d-bit integers -> 32*d bytes (little-endian bits)."""
    acc = 0
    for i, a in enumerate(F):
        acc |= (a & ((1 << d) - 1)) << (i * d)
    return acc.to_bytes(32 * d, "little")


def byte_decode(d, B):
    """Algorithm 6: 32*d bytes -> 256 integers, mod q when d = 12."""
    assert len(B) == 32 * d
    acc = int.from_bytes(B, "little")
    mask = (1 << d) - 1
    m = Q if d == 12 else (1 << d)
    return [((acc >> (i * d)) & mask) % m for i in range(N)]


# ------------------------------------------------------------ 4.2.2 sampling

def sample_ntt(B):
    """Algorithm 7: 34-byte seed -> polynomial in T_q by rejection (XOF = SHAKE128)."""
    assert len(B) == 34
    n = 840  # 280 triples; enough with overwhelming probability, else grow
    while True:
        stream = hashlib.shake_128(B).digest(n)
        a = []
        pos = 0
        while len(a) < N and pos + 3 <= n:
            c0, c1, c2 = stream[pos], stream[pos + 1], stream[pos + 2]
            pos += 3
            d1 = c0 + 256 * (c1 % 16)
            d2 = c1 // 16 + 16 * c2
            if d1 < Q:
                a.append(d1)
            if d2 < Q and len(a) < N:
                a.append(d2)
        if len(a) == N:
            return a
        n *= 2


def sample_poly_cbd(eta, B):
    """Algorithm 8: 64*eta bytes -> polynomial with centred binomial coefficients."""
    assert len(B) == 64 * eta
    bits = int.from_bytes(B, "little")
    f = []
    for i in range(N):
        x = y = 0
        base = 2 * i * eta
        for j in range(eta):
            x += (bits >> (base + j)) & 1
            y += (bits >> (base + eta + j)) & 1
        f.append((x - y) % Q)
    return f


# ------------------------------------------------------------ 4.3 NTT

def _bitrev7(r):
    return int(format(r, "07b")[::-1], 2)


ZETAS = [pow(17, _bitrev7(i), Q) for i in range(128)]
GAMMAS = [pow(17, 2 * _bitrev7(i) + 1, Q) for i in range(128)]


def ntt(f):
    """Algorithm 9."""
    f = list(f)
    i = 1
    length = 128
    while length >= 2:
        for start in range(0, N, 2 * length):
            zeta = ZETAS[i]
            i += 1
            for j in range(start, start + length):
                t = zeta * f[j + length] % Q
                f[j + length] = (f[j] - t) % Q
                f[j] = (f[j] + t) % Q
        length //= 2
    return f


def ntt_inv(f):
    """Algorithm 10."""
    f = list(f)
    i = 127
    length = 2
    while length <= 128:
        for start in range(0, N, 2 * length):
            zeta = ZETAS[i]
            i -= 1
            for j in range(start, start + length):
                t = f[j]
                f[j] = (t + f[j + length]) % Q
                f[j + length] = zeta * (f[j + length] - t) % Q
        length *= 2
    return [x * 3303 % Q for x in f]


def multiply_ntts(f, g):
    """Algorithms 11 and 12."""
    h = [0] * N
    for i in range(128):
        a0, a1 = f[2 * i], f[2 * i + 1]
        b0, b1 = g[2 * i], g[2 * i + 1]
        h[2 * i] = (a0 * b0 + a1 * b1 % Q * GAMMAS[i]) % Q
        h[2 * i + 1] = (a0 * b1 + a1 * b0) % Q
    return h


def _add(f, g):
    return [(a + b) % Q for a, b in zip(f, g)]


def _sub(f, g):
    return [(a - b) % Q for a, b in zip(f, g)]


def _matrix(rho):
    # A_hat[i][j] = SampleNTT(rho || j || i)
    return [[sample_ntt(rho + bytes([j, i])) for j in range(K)] for i in range(K)]


# ------------------------------------------------------------ 5 K-PKE

def kpke_keygen(d):
    """Algorithm 13."""
    rho, sigma = G(d + bytes([K]))
    A = _matrix(rho)
    nonce = 0
    s = []
    for _ in range(K):
        s.append(sample_poly_cbd(ETA1, PRF(ETA1, sigma, nonce)))
        nonce += 1
    e = []
    for _ in range(K):
        e.append(sample_poly_cbd(ETA1, PRF(ETA1, sigma, nonce)))
        nonce += 1
    s_hat = [ntt(p) for p in s]
    e_hat = [ntt(p) for p in e]
    t_hat = []
    for i in range(K):
        acc = e_hat[i]
        for j in range(K):
            acc = _add(acc, multiply_ntts(A[i][j], s_hat[j]))
        t_hat.append(acc)
    ek = b"".join(byte_encode(12, p) for p in t_hat) + rho
    dk = b"".join(byte_encode(12, p) for p in s_hat)
    return ek, dk


def kpke_encrypt(ek, m, r):
    """Algorithm 14."""
    t_hat = [byte_decode(12, ek[384 * i:384 * (i + 1)]) for i in range(K)]
    rho = ek[384 * K:384 * K + 32]
    A = _matrix(rho)
    nonce = 0
    y = []
    for _ in range(K):
        y.append(sample_poly_cbd(ETA1, PRF(ETA1, r, nonce)))
        nonce += 1
    e1 = []
    for _ in range(K):
        e1.append(sample_poly_cbd(ETA2, PRF(ETA2, r, nonce)))
        nonce += 1
    e2 = sample_poly_cbd(ETA2, PRF(ETA2, r, nonce))
    y_hat = [ntt(p) for p in y]
    u = []
    for i in range(K):
        acc = [0] * N
        for j in range(K):  # A_hat transposed: entry (i, j) is A_hat[j][i]
            acc = _add(acc, multiply_ntts(A[j][i], y_hat[j]))
        u.append(_add(ntt_inv(acc), e1[i]))
    mu = [decompress(1, b) for b in byte_decode(1, m)]
    acc = [0] * N
    for i in range(K):
        acc = _add(acc, multiply_ntts(t_hat[i], y_hat[i]))
    v = _add(_add(ntt_inv(acc), e2), mu)
    c1 = b"".join(byte_encode(DU, [compress(DU, x) for x in p]) for p in u)
    c2 = byte_encode(DV, [compress(DV, x) for x in v])
    return c1 + c2


def kpke_decrypt(dk, c):
    """Algorithm 15."""
    c1 = c[:32 * DU * K]
    c2 = c[32 * DU * K:32 * (DU * K + DV)]
    u = [[decompress(DU, x) for x in byte_decode(DU, c1[32 * DU * i:32 * DU * (i + 1)])]
         for i in range(K)]
    v = [decompress(DV, x) for x in byte_decode(DV, c2)]
    s_hat = [byte_decode(12, dk[384 * i:384 * (i + 1)]) for i in range(K)]
    acc = [0] * N
    for i in range(K):
        acc = _add(acc, multiply_ntts(s_hat[i], ntt(u[i])))
    w = _sub(v, ntt_inv(acc))
    return byte_encode(1, [compress(1, x) for x in w])


# ------------------------------------------------------------ 6 ML-KEM internals

def keygen_internal(d, z):
    """Algorithm 16: returns (ek, dk)."""
    assert len(d) == 32 and len(z) == 32
    ek_pke, dk_pke = kpke_keygen(d)
    dk = dk_pke + ek_pke + H(ek_pke) + z
    return ek_pke, dk


def encaps_internal(ek, m):
    """Algorithm 17: returns (K, c)."""
    assert len(ek) == EK_LEN and len(m) == 32
    k, r = G(m + H(ek))
    return k, kpke_encrypt(ek, m, r)


def decaps_internal(dk, c):
    """Algorithm 18, implicit rejection included: returns K."""
    assert len(dk) == DK_LEN and len(c) == CT_LEN
    dk_pke = dk[:384 * K]
    ek_pke = dk[384 * K:768 * K + 32]
    h = dk[768 * K + 32:768 * K + 64]
    z = dk[768 * K + 64:768 * K + 96]
    m2 = kpke_decrypt(dk_pke, c)
    k2, r2 = G(m2 + h)
    k_bar = J(z + c)
    c2 = kpke_encrypt(ek_pke, m2, r2)
    # Compare in full (no early exit on the first differing byte).
    diff = 0
    for a, b in zip(c, c2):
        diff |= a ^ b
    return k2 if diff == 0 else k_bar


def ek_modulus_ok(ek):
    """Section 7.2 encapsulation key check: ByteEncode12(ByteDecode12(t)) == t."""
    if len(ek) != EK_LEN:
        return False
    for i in range(K):
        chunk = ek[384 * i:384 * (i + 1)]
        if byte_encode(12, byte_decode(12, chunk)) != chunk:
            return False
    return True
