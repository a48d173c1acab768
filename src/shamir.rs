//! Shamir's secret sharing over GF(2^8), for threshold groups (k of n
//! factors; docs/format.md §10, used by `slot/threshold.rs`).
//!
//! A group's 32-byte secret `K_g` and its polynomial's coefficients are
//! derived from the backup key and the group's id, so a member can be added
//! at any time (with the key unlocked) without touching the others, and an
//! independent reader can check every share:
//!
//! ```text
//! K_g  = HKDF(none, BK, "coffer/v2 threshold secret"      ‖ 0x00 ‖ group id, 32)
//! a_j  = HKDF(none, BK, "coffer/v2 threshold coefficient" ‖ 0x00 ‖ group id ‖ 0x00 ‖ j, 32)   j = 1 … k−1, one byte
//! y[i] = K_g[i] ⊕ Σ_j a_j[i] · x^j      (byte by byte, in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1)
//! ```
//!
//! The field is AES's (FIPS 197 §4), checked against its published
//! products. Multiplication has no table and no secret-dependent branch.
//!
//! Owns: the field arithmetic, the derivation, evaluating a share, and
//! Lagrange interpolation at zero. Must never: print a secret, share or
//! coefficient; accept a share at x = 0 (it would be the secret itself) or
//! two shares at the same x; drive an RNG (the derivation is the format).

use crate::key::{BackupKey, hkdf_sha256, label};
use std::fmt;
use zeroize::Zeroizing;

/// Most members a group can ever have (x runs from 1 to 255).
pub const MAX_MEMBERS: usize = 255;
/// Length of the group secret and of each share, bytes.
pub const LEN: usize = 32;

/// What can be wrong with a threshold request or a set of shares.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShamirError {
    /// `need` outside 1–255.
    #[error("a group needs 1 to {MAX_MEMBERS} members to open, not {0}")]
    Need(usize),
    /// A share at x = 0.
    #[error("a share at x = 0 is not a share")]
    ZeroX,
    /// Two shares at the same x.
    #[error("two shares at x = {0}")]
    DuplicateX(u8),
    /// Fewer shares than the group needs.
    #[error("{got} of {need} shares")]
    TooFew {
        /// Shares given.
        got: usize,
        /// Shares needed.
        need: usize,
    },
}

/// A product in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1, in constant time.
pub fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    for _ in 0..8 {
        p ^= a & 0u8.wrapping_sub(b & 1);
        let carry = a >> 7;
        a = (a << 1) ^ (0x1b & 0u8.wrapping_sub(carry));
        b >>= 1;
    }
    p
}

/// The inverse in GF(2^8) (`a^254`; 0 for 0), with the same operations for
/// every `a`.
pub fn gf_inv(a: u8) -> u8 {
    let mut result = 1u8;
    let mut base = a;
    // 254 = 0b1111_1110: the exponent is public, so its bits may branch.
    for bit in 0..8 {
        if (254u8 >> bit) & 1 == 1 {
            result = gf_mul(result, base);
        }
        base = gf_mul(base, base);
    }
    result
}

/// A group's secret `K_g`: what its `wrapped` key is wrapped under. Never
/// printed.
pub struct GroupSecret(Zeroizing<[u8; LEN]>);

impl GroupSecret {
    /// The bytes (to derive the group's KEK from). Keep the borrow short.
    pub fn expose(&self) -> &[u8; LEN] {
        &self.0
    }
}

impl fmt::Debug for GroupSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupSecret").finish_non_exhaustive()
    }
}

/// One member's share: the polynomial at `x`. Never printed.
#[derive(Clone)]
pub struct Share {
    /// The member's x coordinate, 1–255.
    pub x: u8,
    y: Zeroizing<[u8; LEN]>,
}

impl Share {
    /// A share read back from a member's slot.
    pub fn new(x: u8, y: [u8; LEN]) -> Self {
        Self {
            x,
            y: Zeroizing::new(y),
        }
    }

    /// A share from a member's unwrapped secret, kept zeroizing.
    pub fn from_secret(x: u8, y: Zeroizing<[u8; LEN]>) -> Self {
        Self { x, y }
    }

    /// The 32 bytes, to wrap under the member's KEK. Keep the borrow short.
    pub fn expose(&self) -> &[u8; LEN] {
        &self.y
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

/// A group's polynomial, derived from the backup key and the group id.
pub struct Polynomial {
    /// `K_g`, the constant term.
    secret: GroupSecret,
    /// `a_1 … a_{k−1}`.
    coefficients: Vec<Zeroizing<[u8; LEN]>>,
}

impl Polynomial {
    /// The polynomial of the group `group_id` that needs `need` shares.
    pub fn derive(bk: &BackupKey, group_id: &str, need: usize) -> Result<Self, ShamirError> {
        if !(1..=MAX_MEMBERS).contains(&need) {
            return Err(ShamirError::Need(need));
        }
        let info = |prefix: &[u8], j: Option<u8>| {
            let mut v = Vec::with_capacity(prefix.len() + group_id.len() + 3);
            v.extend_from_slice(prefix);
            v.push(0x00);
            v.extend_from_slice(group_id.as_bytes());
            if let Some(j) = j {
                v.push(0x00);
                v.push(j);
            }
            v
        };
        let mut secret = Zeroizing::new([0u8; LEN]);
        hkdf_sha256(
            None,
            bk.expose(),
            &info(label::THRESHOLD_SECRET, None),
            secret.as_mut(),
        );
        let coefficients = (1..need)
            .map(|j| {
                let mut a = Zeroizing::new([0u8; LEN]);
                let j = u8::try_from(j).expect("need ≤ 255");
                hkdf_sha256(
                    None,
                    bk.expose(),
                    &info(label::THRESHOLD_COEFFICIENT, Some(j)),
                    a.as_mut(),
                );
                a
            })
            .collect();
        Ok(Self {
            secret: GroupSecret(secret),
            coefficients,
        })
    }

    /// `K_g`.
    pub fn secret(&self) -> &GroupSecret {
        &self.secret
    }

    /// The share at `x` (1–255), by Horner's rule, byte by byte.
    pub fn share(&self, x: u8) -> Result<Share, ShamirError> {
        if x == 0 {
            return Err(ShamirError::ZeroX);
        }
        let mut y = Zeroizing::new([0u8; LEN]);
        for i in 0..LEN {
            let mut acc = 0u8;
            for a in self.coefficients.iter().rev() {
                acc = gf_mul(acc, x) ^ a[i];
            }
            y[i] = gf_mul(acc, x) ^ self.secret.0[i];
        }
        Ok(Share { x, y })
    }
}

/// `K_g` from `need` or more shares (Lagrange interpolation at zero; the
/// first `need` are used). With fewer than the group needs, or shares from
/// another group, the result is a wrong secret, which the group's `wrapped`
/// key refuses: this cannot tell.
pub fn combine(shares: &[Share], need: usize) -> Result<GroupSecret, ShamirError> {
    if !(1..=MAX_MEMBERS).contains(&need) {
        return Err(ShamirError::Need(need));
    }
    if shares.len() < need {
        return Err(ShamirError::TooFew {
            got: shares.len(),
            need,
        });
    }
    let used = &shares[..need];
    for (i, s) in used.iter().enumerate() {
        if s.x == 0 {
            return Err(ShamirError::ZeroX);
        }
        if used[..i].iter().any(|t| t.x == s.x) {
            return Err(ShamirError::DuplicateX(s.x));
        }
    }
    let mut secret = Zeroizing::new([0u8; LEN]);
    for (m, s) in used.iter().enumerate() {
        // The Lagrange basis at zero: Π x_l / (x_l − x_m), minus being ⊕.
        let mut basis = 1u8;
        for (l, t) in used.iter().enumerate() {
            if l != m {
                basis = gf_mul(basis, gf_mul(t.x, gf_inv(t.x ^ s.x)));
            }
        }
        for i in 0..LEN {
            secret[i] ^= gf_mul(s.y[i], basis);
        }
    }
    Ok(GroupSecret(secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_field_is_aes_s() {
        // FIPS 197 §4.2 and §4.2.1.
        assert_eq!(gf_mul(0x57, 0x83), 0xc1);
        assert_eq!(gf_mul(0x57, 0x13), 0xfe);
        assert_eq!(gf_mul(0x57, 0x02), 0xae);
        assert_eq!(gf_mul(0x57, 0x04), 0x47);
        assert_eq!(gf_mul(0x57, 0x08), 0x8e);
        assert_eq!(gf_mul(0x57, 0x10), 0x07);
        // FIPS 197 §4.4 (the S-box's inverse step): {53} · {ca} = {01}.
        assert_eq!(gf_inv(0x53), 0xca);
        assert_eq!(gf_inv(0x00), 0x00);
        for a in 1..=255u8 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1, "{a:#04x}");
            for b in [1u8, 2, 3, 0x80, 0xff] {
                assert_eq!(gf_mul(a, b), gf_mul(b, a));
            }
        }
    }

    fn key() -> BackupKey {
        BackupKey::from_bytes(core::array::from_fn(|i| i as u8))
    }

    #[test]
    fn any_k_shares_give_the_secret_and_k_minus_1_do_not() {
        let p = Polynomial::derive(&key(), "a1b2c3d4", 3).unwrap();
        let shares: Vec<Share> = (1..=5).map(|x| p.share(x).unwrap()).collect();
        let pick = |xs: &[usize]| -> Vec<Share> {
            xs.iter()
                .map(|&i| Share::new(shares[i].x, *shares[i].expose()))
                .collect()
        };
        for xs in [[0, 1, 2], [0, 2, 4], [4, 3, 1], [1, 2, 3]] {
            let got = combine(&pick(&xs), 3).unwrap();
            assert_eq!(got.expose(), p.secret().expose(), "{xs:?}");
        }
        // Two of three: interpolated as if two sufficed, a wrong secret.
        let two = combine(&pick(&[0, 1]), 2).unwrap();
        assert_ne!(two.expose(), p.secret().expose());
        assert_eq!(
            combine(&pick(&[0, 1]), 3).unwrap_err(),
            ShamirError::TooFew { got: 2, need: 3 }
        );
    }

    /// docs/format.md §10's vector, computed independently in Python
    /// (hmac/hashlib HKDF, field product by polynomial long division).
    #[test]
    fn known_answer() {
        let p = Polynomial::derive(&key(), "a1b2c3d4", 2).unwrap();
        assert_eq!(
            hex::encode(p.secret().expose()),
            "da6c57d9d5bf482d3d50a4da7ddf03f32164e202747d22de1399e456706226ba"
        );
        for (x, y) in [
            (
                1,
                "b1be0648af5bbb30465a902846e63d270acf7889f8f9a8fb7b8df757ba202adf",
            ),
            (
                2,
                "0cd3f5e0216cb517cb44cc250bad7f407729cd0f776e2d94c3b1c254ffe63e70",
            ),
            (
                3,
                "6701a4715b88460ab04ef8d7309441945c825784fbeaa7b1aba5d15535a43215",
            ),
        ] {
            assert_eq!(hex::encode(p.share(x).unwrap().expose()), y, "x = {x}");
        }
    }

    #[test]
    fn the_derivation_depends_on_key_group_and_need_only() {
        let a = Polynomial::derive(&key(), "g1", 2).unwrap();
        let again = Polynomial::derive(&key(), "g1", 2).unwrap();
        assert_eq!(
            a.share(7).unwrap().expose(),
            again.share(7).unwrap().expose()
        );
        let other_group = Polynomial::derive(&key(), "g2", 2).unwrap();
        assert_ne!(a.secret().expose(), other_group.secret().expose());
        let other_key = Polynomial::derive(&BackupKey::from_bytes([9; 32]), "g1", 2).unwrap();
        assert_ne!(a.secret().expose(), other_key.secret().expose());
        // The same group secret whatever `need` is: only the shares differ.
        let three = Polynomial::derive(&key(), "g1", 3).unwrap();
        assert_eq!(a.secret().expose(), three.secret().expose());
        assert_ne!(
            a.share(1).unwrap().expose(),
            three.share(1).unwrap().expose()
        );
        // One of one: every share is the secret.
        let one = Polynomial::derive(&key(), "g1", 1).unwrap();
        assert_eq!(one.share(200).unwrap().expose(), one.secret().expose());
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(Polynomial::derive(&key(), "g", 0).is_err());
        assert!(Polynomial::derive(&key(), "g", 256).is_err());
        let p = Polynomial::derive(&key(), "g", 2).unwrap();
        assert_eq!(p.share(0).unwrap_err(), ShamirError::ZeroX);
        let s = p.share(4).unwrap();
        let dup = vec![Share::new(4, *s.expose()), Share::new(4, *s.expose())];
        assert_eq!(combine(&dup, 2).unwrap_err(), ShamirError::DuplicateX(4));
        let zero = vec![Share::new(0, [0; 32]), Share::new(4, *s.expose())];
        assert_eq!(combine(&zero, 2).unwrap_err(), ShamirError::ZeroX);
    }

    #[test]
    fn debug_shows_no_share_bytes() {
        let p = Polynomial::derive(&key(), "g", 2).unwrap();
        let s = p.share(1).unwrap();
        let shown = format!("{s:?} {:?}", p.secret());
        assert!(!shown.contains(&hex::encode(s.expose())));
        assert!(!shown.contains(&hex::encode(p.secret().expose())));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any `need` distinct shares of `n` give the secret back.
        #[test]
        fn any_need_of_n_reconstruct(
            need in 1usize..=8,
            extra in 0usize..=8,
            seed in any::<u64>(),
            group in "[0-9a-z-]{1,32}",
        ) {
            let n = need + extra;
            let bk = BackupKey::from_bytes(core::array::from_fn(|i| (seed >> (i % 8)) as u8 ^ i as u8));
            let p = Polynomial::derive(&bk, &group, need).unwrap();
            // A deterministic choice of `need` distinct x in 1..=255.
            let mut xs: Vec<u8> = (0..n).map(|i| (1 + (seed as usize + 37 * i) % 255) as u8).collect();
            xs.sort_unstable();
            xs.dedup();
            prop_assume!(xs.len() >= need);
            let shares: Vec<Share> = xs.iter().rev().take(need).map(|&x| p.share(x).unwrap()).collect();
            let got = combine(&shares, need).unwrap();
            prop_assert_eq!(got.expose(), p.secret().expose());
        }
    }
}
