//! Passphrases for other tools, derived from the backup key: what `coffer
//! passphrase NAME` prints for restic's `RESTIC_PASSWORD_COMMAND`, borg's
//! `BORG_PASSCOMMAND` and anything else that runs a command for its
//! password (docs/format.md §9).
//!
//! ```text
//! passphrase = base64url(HKDF(none, BK, "coffer/v2 passphrase" ‖ 0x00 ‖ NAME, 32)), no padding: 43 characters
//! ```
//!
//! Each name gets its own passphrase, any factor that unlocks the key gives
//! it back (a new laptop with only the recovery key and an archive
//! included), and `rotate` changes every one of them.
//!
//! Owns: the name's rules and the derivation. Must never: print or `Debug`
//! a passphrase except where asked, or change a byte of the derivation
//! (every repository keyed by one depends on it).

use crate::key::{BackupKey, hkdf_sha256, label};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::fmt;
use zeroize::Zeroizing;

/// Longest name, in bytes.
pub const NAME_MAX: usize = 128;

/// A passphrase's name: 1–128 bytes of printable ASCII (`restic:photos`,
/// `borg:home`), so that it reads the same in every shell and config file.
#[derive(Clone, PartialEq, Eq)]
pub struct PassphraseName(String);

impl PassphraseName {
    /// Parse a name, or say what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > NAME_MAX {
            return Err(format!("a passphrase name is 1 to {NAME_MAX} characters"));
        }
        if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(
                "a passphrase name is printable ASCII without spaces (such as restic:photos)"
                    .into(),
            );
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PassphraseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PassphraseName({})", self.0)
    }
}

/// The passphrase `bk` gives for `name`: 43 base64url characters (256 bits).
pub fn derive(bk: &BackupKey, name: &PassphraseName) -> Zeroizing<String> {
    let mut info = Vec::with_capacity(label::PASSPHRASE.len() + 1 + name.0.len());
    info.extend_from_slice(label::PASSPHRASE);
    info.push(0x00);
    info.extend_from_slice(name.0.as_bytes());
    let mut raw = Zeroizing::new([0u8; 32]);
    hkdf_sha256(None, bk.expose(), &info, raw.as_mut());
    Zeroizing::new(URL_SAFE_NO_PAD.encode(raw.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_printable_ascii_of_bounded_length() {
        for good in ["restic:photos", "borg:home", "x", &"a".repeat(NAME_MAX)] {
            PassphraseName::parse(good).unwrap();
        }
        for bad in [
            "",
            "a b",
            "tab\there",
            "é",
            "nul\0",
            &"a".repeat(NAME_MAX + 1),
        ] {
            assert!(PassphraseName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_name_and_key_gives_its_own_passphrase() {
        let bk = BackupKey::from_bytes(core::array::from_fn(|i| i as u8));
        let a = PassphraseName::parse("restic:photos").unwrap();
        let b = PassphraseName::parse("borg:home").unwrap();
        let pa = derive(&bk, &a);
        assert_eq!(pa.len(), 43);
        assert!(
            pa.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(*pa, *derive(&bk, &a));
        assert_ne!(*pa, *derive(&bk, &b));
        assert_ne!(*pa, *derive(&BackupKey::from_bytes([1; 32]), &a));
    }

    #[test]
    fn known_answer() {
        // docs/format.md §9 (cross-checked there with Python's hmac/hashlib).
        let bk = BackupKey::from_bytes(core::array::from_fn(|i| i as u8));
        let name = PassphraseName::parse("restic:photos").unwrap();
        assert_eq!(*derive(&bk, &name), KNOWN_RESTIC_PHOTOS);
    }

    const KNOWN_RESTIC_PHOTOS: &str = "wMyofZxiesmsM3QbPE68w0cZs3X5BHqGf_KX5ItfsH4";
}
