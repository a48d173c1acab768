//! The recovery slot: a 64-digit key shown once at `init`, meant to be
//! written down.
//!
//! 64 hex digits = 240 random bits + a 16-bit CRC (CRC-16/IBM-3740, big
//! endian) over them, shown in 16 groups of 4. A CRC of degree 16 catches
//! every burst of 16 bits or fewer, so every single wrong digit (a 4-bit
//! burst) and every swap of two adjacent digits (an 8-bit burst) is caught.
//! The KEK is HKDF-SHA256 of the 240 bits (no slow KDF: 240 bits of entropy
//! need none). On a checksum mismatch the single-digit corrections and
//! adjacent swaps that pass the checksum are tried against the key wrap;
//! exactly one that unwraps is accepted and the digit is named.
//!
//! Must never: print a recovery key anywhere but where the caller asks.

use super::{
    FactorKind, HeaderOnly, Interaction, Locators, Slot, SlotParams, SlotRecord, Target,
    UnlockContext,
};
use crate::error::SlotError;
use crate::key::{Kek, WrappedKey, label};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The kind name in the keyring.
pub const KIND: &str = "recovery";
/// Number of hex digits in a recovery key.
pub const DIGITS: usize = 64;
/// Random bytes in a recovery key (240 bits).
pub const ENTROPY_LEN: usize = 30;

const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);

/// A recovery slot has no parameters beyond the common fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryParams {}

/// A recovery key: 30 random bytes + 2 checksum bytes. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RecoveryKey([u8; ENTROPY_LEN + 2]);

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryKey").finish_non_exhaustive()
    }
}

/// Why a typed recovery key could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A character that is not a hex digit, space or dash.
    #[error("character {position} is not a hex digit (0-9, a-f)")]
    NotHex {
        /// 1-based position in what was typed.
        position: usize,
    },
    /// Too few or too many digits.
    #[error("it has {0} hex digits; a recovery key has 64 (16 groups of 4)")]
    Length(usize),
}

/// Where in the key a digit sits, for messages: "digit 17 (group 5)".
pub fn digit_place(index: usize) -> String {
    format!(
        "digit {} (group {}, position {})",
        index + 1,
        index / 4 + 1,
        index % 4 + 1
    )
}

impl RecoveryKey {
    /// A fresh random recovery key.
    pub fn generate() -> Self {
        let mut entropy = Zeroizing::new([0u8; ENTROPY_LEN]);
        crate::key::random_bytes(entropy.as_mut());
        Self::from_entropy(&entropy)
    }

    /// The key for the given 240 bits (checksum appended).
    pub fn from_entropy(entropy: &[u8; ENTROPY_LEN]) -> Self {
        let mut b = [0u8; ENTROPY_LEN + 2];
        b[..ENTROPY_LEN].copy_from_slice(entropy);
        b[ENTROPY_LEN..].copy_from_slice(&CRC.checksum(entropy).to_be_bytes());
        Self(b)
    }

    /// Whether the checksum matches the 240 bits.
    pub fn checksum_ok(&self) -> bool {
        CRC.checksum(&self.0[..ENTROPY_LEN]).to_be_bytes() == self.0[ENTROPY_LEN..]
    }

    /// Read a typed key: case, spaces, tabs, newlines and dashes ignored.
    /// The checksum is not checked here.
    pub fn parse(typed: &str) -> Result<Self, ParseError> {
        let mut nibbles = Zeroizing::new([0u8; DIGITS]);
        let mut n = 0usize;
        for (i, c) in typed.chars().enumerate() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let d = c
                .to_digit(16)
                .ok_or(ParseError::NotHex { position: i + 1 })?;
            if n < DIGITS {
                nibbles[n] = d as u8;
            }
            n += 1;
        }
        if n != DIGITS {
            return Err(ParseError::Length(n));
        }
        Ok(Self::from_nibbles(&nibbles))
    }

    fn from_nibbles(nibbles: &[u8; DIGITS]) -> Self {
        let mut b = [0u8; ENTROPY_LEN + 2];
        for (i, pair) in nibbles.chunks_exact(2).enumerate() {
            b[i] = (pair[0] << 4) | pair[1];
        }
        Self(b)
    }

    fn nibbles(&self) -> Zeroizing<[u8; DIGITS]> {
        let mut n = Zeroizing::new([0u8; DIGITS]);
        for (i, byte) in self.0.iter().enumerate() {
            n[2 * i] = byte >> 4;
            n[2 * i + 1] = byte & 0x0f;
        }
        n
    }

    /// The key as it is shown and written down: 16 groups of 4 lowercase
    /// hex digits joined by dashes.
    pub fn display(&self) -> Zeroizing<String> {
        let hex = Zeroizing::new(hex::encode(self.0));
        let mut s = Zeroizing::new(String::with_capacity(DIGITS + 15));
        for (i, c) in hex.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                s.push('-');
            }
            s.push(c);
        }
        s
    }

    /// The KEK this key unlocks: HKDF-SHA256(240 bits, "coffer/v1 recovery kek").
    pub fn kek(&self) -> Kek {
        Kek::derive(None, &self.0[..ENTROPY_LEN], label::RECOVERY_KEK)
    }

    /// Every key one typo away (one digit changed, or two adjacent digits
    /// swapped) whose checksum matches, with the 0-based digit index that
    /// differs (the first of a swapped pair).
    pub fn corrections(&self) -> Vec<(usize, RecoveryKey)> {
        let orig = self.nibbles();
        let mut out = Vec::new();
        let mut n = orig.clone();
        for i in 0..DIGITS {
            for d in 0..16u8 {
                if d == orig[i] {
                    continue;
                }
                n[i] = d;
                let k = Self::from_nibbles(&n);
                if k.checksum_ok() {
                    out.push((i, k));
                }
            }
            n[i] = orig[i];
        }
        for i in 0..DIGITS - 1 {
            if orig[i] == orig[i + 1] {
                continue;
            }
            n.swap(i, i + 1);
            let k = Self::from_nibbles(&n);
            if k.checksum_ok() {
                out.push((i, k));
            }
            n.swap(i, i + 1);
        }
        out
    }
}

/// Enroll a new recovery key for `target` (the backup key, or a group
/// member's share): the slot, and the key to show once.
pub fn enroll<'a>(target: impl Into<Target<'a>>) -> (SlotRecord, RecoveryKey) {
    let key = RecoveryKey::generate();
    let record = target
        .into()
        .record(SlotParams::Recovery(RecoveryParams {}), &key.kek());
    (record, key)
}

/// The KEK a typed key gives, checked with `opens` (whether a KEK opens
/// the slot's wrapped key), and the 0-based index of the digit corrected to
/// get it (one typo is corrected when the key wrap confirms exactly one
/// candidate).
pub fn kek_typed(
    typed: &str,
    opens: impl Fn(&Kek) -> bool,
) -> Result<(Kek, Option<usize>), SlotError> {
    let key = RecoveryKey::parse(typed).map_err(|e| SlotError::WrongRecoveryKey {
        hint: Some(e.to_string()),
    })?;
    if key.checksum_ok() {
        let kek = key.kek();
        return match opens(&kek) {
            true => Ok((kek, None)),
            false => Err(SlotError::WrongRecoveryKey {
                hint: Some(
                    "the checksum is right, so it is likely the key of another keyring".into(),
                ),
            }),
        };
    }
    let candidates = key.corrections();
    let mut opened = candidates.iter().filter(|(_, k)| opens(&k.kek()));
    if let (Some((i, k)), None) = (opened.next(), opened.next()) {
        return Ok((k.kek(), Some(*i)));
    }
    let mut places: Vec<usize> = candidates.iter().map(|(i, _)| *i).collect();
    places.dedup();
    let hint = match places.as_slice() {
        [i] => format!(
            "{} looks wrong (the checksum does not match)",
            digit_place(*i)
        ),
        _ => "the checksum does not match: a digit is mistyped; compare it with your written copy"
            .into(),
    };
    Err(SlotError::WrongRecoveryKey { hint: Some(hint) })
}

impl Slot for RecoveryParams {
    fn factor(&self) -> Option<FactorKind> {
        Some(FactorKind::RecoveryKey)
    }

    fn interaction(&self, at_hand: bool) -> Interaction {
        Interaction::typed(at_hand)
    }

    fn kek(&self, wrapped: &WrappedKey, ctx: &UnlockContext<'_>) -> Option<Result<Kek, SlotError>> {
        let typed = ctx.secret("Recovery key")?;
        Some(kek_typed(typed.expose_secret(), |k| ctx.opens(wrapped, k)).map(|o| match o {
            (kek, None) => kek,
            (kek, Some(i)) => {
                ctx.ui.message(&format!(
                    "recovery key: {} was mistyped; the key opened once it was corrected. Check your written copy.",
                    digit_place(i)
                ));
                kek
            }
        }))
    }

    fn header_only(&self, _: &Locators) -> HeaderOnly {
        HeaderOnly::Inert { kdf_work: 0 }
    }

    fn describe(&self) -> String {
        "64-digit recovery key".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::BackupKey;
    use proptest::prelude::*;

    /// Known-answer vector (docs/format.md, "Recovery key"); the checksum
    /// was cross-checked with Python's `binascii.crc_hqx(data, 0xffff)`.
    #[test]
    fn encoding_vector() {
        let entropy: [u8; ENTROPY_LEN] = core::array::from_fn(|i| i as u8);
        let key = RecoveryKey::from_entropy(&entropy);
        assert_eq!(
            key.display().as_str(),
            "0001-0203-0405-0607-0809-0a0b-0c0d-0e0f-1011-1213-1415-1617-1819-1a1b-1c1d-3554"
        );
        assert!(key.checksum_ok());
        // CRC-16/IBM-3740 check value from the CRC catalogue.
        assert_eq!(CRC.checksum(b"123456789"), 0x29b1);
    }

    #[test]
    fn parse_ignores_case_spaces_and_dashes() {
        let key = RecoveryKey::generate();
        let shown = key.display().to_string();
        let variants = [
            shown.to_uppercase(),
            shown.replace('-', " "),
            shown.replace('-', ""),
            format!("  {}\n", shown.replace('-', " - ")),
        ];
        for v in variants {
            assert_eq!(RecoveryKey::parse(&v).unwrap().0, key.0, "{v}");
        }
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert_eq!(
            RecoveryKey::parse("abc").unwrap_err(),
            ParseError::Length(3)
        );
        let mut bad = RecoveryKey::generate().display().to_string();
        bad.replace_range(5..6, "g");
        assert_eq!(
            RecoveryKey::parse(&bad).unwrap_err(),
            ParseError::NotHex { position: 6 }
        );
    }

    impl PartialEq for RecoveryKey {
        fn eq(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }

    fn typo(shown: &str, index: usize, digit: u8) -> String {
        let mut digits: Vec<char> = shown.chars().filter(|c| *c != '-').collect();
        digits[index] = char::from_digit(digit as u32, 16).unwrap();
        digits.into_iter().collect()
    }

    fn swap(shown: &str, index: usize) -> String {
        let mut digits: Vec<char> = shown.chars().filter(|c| *c != '-').collect();
        digits.swap(index, index + 1);
        digits.into_iter().collect()
    }

    #[test]
    fn right_key_opens_wrong_key_does_not() {
        let bk = BackupKey::generate();
        let (rec, key) = enroll(&bk);
        let (kek, None) = kek_typed(&key.display(), |k| rec.wrapped.unwrap(k).is_ok())
            .ok()
            .unwrap()
        else {
            panic!("expected a clean open");
        };
        assert_eq!(rec.wrapped.unwrap(&kek).unwrap().expose(), bk.expose());
        let other = RecoveryKey::generate();
        let err = kek_typed(&other.display(), |k| rec.wrapped.unwrap(k).is_ok())
            .err()
            .unwrap();
        assert!(matches!(err, SlotError::WrongRecoveryKey { .. }));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every single wrong digit is caught by the checksum, and the slot
        /// opens with the digit named.
        #[test]
        fn every_single_digit_typo_is_detected_and_located(
            entropy in proptest::array::uniform30(any::<u8>()),
            index in 0..DIGITS,
            delta in 1u8..16,
        ) {
            let key = RecoveryKey::from_entropy(&entropy);
            let shown = key.display().to_string();
            let original = key.nibbles()[index];
            let typed = typo(&shown, index, (original + delta) % 16);
            prop_assert!(!RecoveryKey::parse(&typed).unwrap().checksum_ok());
            let bk = BackupKey::generate();
            let wrapped = bk.wrap(&key.kek());
            match kek_typed(&typed, |k| wrapped.unwrap(k).is_ok()) {
                Ok((kek, Some(at))) => {
                    prop_assert_eq!(at, index);
                    let got = wrapped.unwrap(&kek).unwrap();
                    prop_assert_eq!(got.expose(), bk.expose());
                }
                _ => prop_assert!(false, "typo at {} not corrected", index),
            }
        }

        /// Every swap of two different adjacent digits is caught and located.
        #[test]
        fn every_adjacent_swap_is_detected_and_located(
            entropy in proptest::array::uniform30(any::<u8>()),
            index in 0..DIGITS - 1,
        ) {
            let key = RecoveryKey::from_entropy(&entropy);
            let n = key.nibbles();
            prop_assume!(n[index] != n[index + 1]);
            let typed = swap(&key.display(), index);
            prop_assert!(!RecoveryKey::parse(&typed).unwrap().checksum_ok());
            let bk = BackupKey::generate();
            let wrapped = bk.wrap(&key.kek());
            match kek_typed(&typed, |k| wrapped.unwrap(k).is_ok()) {
                Ok((kek, Some(at))) => {
                    prop_assert_eq!(at, index);
                    let got = wrapped.unwrap(&kek).unwrap();
                    prop_assert_eq!(got.expose(), bk.expose());
                }
                _ => prop_assert!(false, "swap at {} not corrected", index),
            }
        }
    }

    /// Exhaustive over one key: all 960 single-digit typos and all 63
    /// adjacent swaps fail the checksum.
    #[test]
    fn checksum_catches_all_single_typos_and_swaps_of_one_key() {
        let key = RecoveryKey::generate();
        let n = key.nibbles();
        let shown = key.display().to_string();
        for i in 0..DIGITS {
            for d in 0..16u8 {
                if d != n[i] {
                    assert!(
                        !RecoveryKey::parse(&typo(&shown, i, d))
                            .unwrap()
                            .checksum_ok()
                    );
                }
            }
            if i + 1 < DIGITS && n[i] != n[i + 1] {
                assert!(!RecoveryKey::parse(&swap(&shown, i)).unwrap().checksum_ok());
            }
        }
    }
}
