//! The password slot: KEK = Argon2id(password, salt) with the parameters
//! stored in the slot.
//!
//! Defaults are RFC 9106's second recommendation (t=3, p=4, m=64 MiB).
//! Parameters read from a file are checked against hard ceilings *before*
//! any memory is allocated: a hostile keyring must not make us allocate
//! 100 GiB or spin for an hour.
//!
//! Must never: keep the password past the derivation.

use super::{
    FactorKind, HeaderOnly, Interaction, Locators, Slot, SlotParams, SlotRecord, Target,
    UnlockContext,
};
use crate::error::SlotError;
use crate::key::{KEY_LEN, Kek, WrappedKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The kind name in the keyring.
pub const KIND: &str = "password";
/// Default Argon2id memory, KiB (RFC 9106 §4, second recommendation).
pub const DEFAULT_M_COST_KIB: u32 = 64 * 1024;
/// Default Argon2id passes.
pub const DEFAULT_T_COST: u32 = 3;
/// Default Argon2id lanes.
pub const DEFAULT_P_COST: u32 = 4;
/// Most memory an unlock will spend: 16 × the default (1 GiB).
pub const MAX_M_COST_KIB: u32 = 16 * DEFAULT_M_COST_KIB;
/// Most passes an unlock will run.
pub const MAX_T_COST: u32 = 64;
/// Most lanes an unlock will use.
pub const MAX_P_COST: u32 = 64;
/// Salt length, bytes.
pub const SALT_LEN: usize = 16;

/// The cheapest cost a test can enroll with (64 KiB, one pass, one lane).
#[cfg(test)]
pub(crate) const TEST_COST: Cost = Cost {
    m_cost_kib: 64,
    t_cost: 1,
    p_cost: 1,
};

/// Public parameters of a password slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordParams {
    /// The KDF; Argon2id is the only one.
    pub kdf: Kdf,
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
    /// 16 random bytes, base64.
    pub salt: String,
}

/// The password KDF of a slot (`kdf` member). A slot naming another is
/// refused when it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kdf {
    /// Argon2id, RFC 9106, version 0x13.
    #[serde(rename = "argon2id")]
    Argon2id,
}

/// Argon2id cost settings chosen at enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for Cost {
    fn default() -> Self {
        Self {
            m_cost_kib: DEFAULT_M_COST_KIB,
            t_cost: DEFAULT_T_COST,
            p_cost: DEFAULT_P_COST,
        }
    }
}

impl Cost {
    /// Refuse costs outside what this build will run, naming the field.
    pub fn check(&self) -> Result<(), SlotError> {
        let bad = |field: &str, reason: String| SlotError::Malformed {
            field: field.into(),
            reason,
        };
        if self.p_cost == 0 || self.p_cost > MAX_P_COST {
            return Err(bad(
                "p_cost",
                format!("{} is outside 1..={MAX_P_COST}", self.p_cost),
            ));
        }
        if self.t_cost == 0 || self.t_cost > MAX_T_COST {
            return Err(bad(
                "t_cost",
                format!("{} is outside 1..={MAX_T_COST}", self.t_cost),
            ));
        }
        if self.m_cost_kib > MAX_M_COST_KIB {
            return Err(bad(
                "m_cost_kib",
                format!(
                    "{} KiB is more than this build will spend ({} KiB); a keyring asking for it is hostile or from a much bigger machine",
                    self.m_cost_kib, MAX_M_COST_KIB
                ),
            ));
        }
        if self.m_cost_kib < 8 * self.p_cost {
            return Err(bad(
                "m_cost_kib",
                format!("{} KiB is below 8 × p_cost", self.m_cost_kib),
            ));
        }
        Ok(())
    }
}

impl Cost {
    /// The Argon2id work this cost asks for, in KiB-passes (`m × t`): what
    /// the total budget for unauthenticated slots is counted in.
    pub fn work(&self) -> u64 {
        u64::from(self.m_cost_kib) * u64::from(self.t_cost)
    }
}

thread_local! {
    /// Argon2id work derived on this thread so far, KiB-passes.
    static WORK_DONE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The Argon2id work (KiB-passes, see [`Cost::work`]) derived on the
/// calling thread so far: lets a caller (and the tests) check what an
/// unlock actually spent.
pub fn work_done_on_this_thread() -> u64 {
    WORK_DONE.with(std::cell::Cell::get)
}

impl PasswordParams {
    /// The stored cost settings (unchecked).
    pub fn cost(&self) -> Cost {
        Cost {
            m_cost_kib: self.m_cost_kib,
            t_cost: self.t_cost,
            p_cost: self.p_cost,
        }
    }

    /// Check the stored parameters, then derive the KEK from `password`.
    /// Nothing is allocated for Argon2 until the parameters passed.
    pub fn derive_kek(&self, password: &SecretString) -> Result<Kek, SlotError> {
        let salt = B64
            .decode(self.salt.as_bytes())
            .ok()
            .filter(|s| s.len() == SALT_LEN)
            .ok_or_else(|| SlotError::Malformed {
                field: "salt".into(),
                reason: "not 16 bytes of base64".into(),
            })?;
        let cost = self.cost();
        cost.check()?;
        derive(password, &salt, cost)
    }
}

fn derive(password: &SecretString, salt: &[u8], cost: Cost) -> Result<Kek, SlotError> {
    let params = argon2::Params::new(cost.m_cost_kib, cost.t_cost, cost.p_cost, Some(KEY_LEN))
        .map_err(|e| SlotError::Malformed {
            field: "argon2 parameters".into(),
            reason: e.to_string(),
        })?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    WORK_DONE.with(|w| w.set(w.get().saturating_add(cost.work())));
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(password.expose_secret().as_bytes(), salt, out.as_mut())
        .map_err(|e| SlotError::Device(format!("Argon2id failed: {e}")))?;
    Ok(Kek::from_bytes(*out))
}

/// Enroll a password for `target` (the backup key, or a group member's
/// share) with the given cost. Refuses an empty password.
pub fn enroll<'a>(
    target: impl Into<Target<'a>>,
    password: &SecretString,
    cost: Cost,
) -> Result<SlotRecord, SlotError> {
    if password.expose_secret().is_empty() {
        return Err(SlotError::Usage("the new password is empty".into()));
    }
    cost.check()?;
    let mut salt = [0u8; SALT_LEN];
    crate::key::random_bytes(&mut salt);
    let kek = derive(password, &salt, cost)?;
    let params = PasswordParams {
        kdf: Kdf::Argon2id,
        m_cost_kib: cost.m_cost_kib,
        t_cost: cost.t_cost,
        p_cost: cost.p_cost,
        salt: B64.encode(salt),
    };
    Ok(target.into().record(SlotParams::Password(params), &kek))
}

impl Slot for PasswordParams {
    fn factor(&self) -> Option<FactorKind> {
        Some(FactorKind::Password)
    }

    fn interaction(&self, at_hand: bool) -> Interaction {
        Interaction::typed(at_hand)
    }

    fn kek(&self, wrapped: &WrappedKey, ctx: &UnlockContext<'_>) -> Option<Result<Kek, SlotError>> {
        let password = ctx.secret("Password")?;
        Some(
            self.derive_kek(&password)
                .and_then(|kek| match ctx.opens(wrapped, &kek) {
                    true => Ok(kek),
                    false => Err(SlotError::WrongPassword),
                }),
        )
    }

    fn header_only(&self, _: &Locators) -> HeaderOnly {
        HeaderOnly::Inert {
            kdf_work: self.cost().work(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "argon2id m={} MiB t={} p={}",
            self.m_cost_kib / 1024,
            self.t_cost,
            self.p_cost
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::BackupKey;

    const FAST: Cost = Cost {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    fn pw(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn right_password_opens_wrong_does_not() {
        let bk = BackupKey::generate();
        let rec = enroll(&bk, &pw("correct horse"), FAST).unwrap();
        let SlotParams::Password(p) = &rec.params else {
            panic!()
        };
        let kek = p.derive_kek(&pw("correct horse")).unwrap();
        assert_eq!(rec.wrapped.unwrap(&kek).unwrap().expose(), bk.expose());
        let kek = p.derive_kek(&pw("correct horse ")).unwrap();
        assert!(rec.wrapped.unwrap(&kek).is_err());
    }

    #[test]
    fn defaults_are_rfc9106_second_recommendation() {
        assert_eq!(
            Cost::default(),
            Cost {
                m_cost_kib: 65536,
                t_cost: 3,
                p_cost: 4
            }
        );
    }

    /// Cross-checked against libargon2 (argon2-cffi `hash_secret_raw`,
    /// type ID, t=1, m=64, p=1): a dependency upgrade must not change KEKs.
    #[test]
    fn derivation_vector() {
        let kek = derive(&pw("password"), &[0x11; 16], FAST).unwrap();
        assert_eq!(
            hex::encode(kek.expose()),
            include_str!("../../tests/vectors/argon2id-fast.hex").trim()
        );
    }

    #[test]
    fn hostile_parameters_are_refused_before_allocation() {
        let hostile = PasswordParams {
            kdf: Kdf::Argon2id,
            m_cost_kib: 100 * 1024 * 1024, // 100 GiB
            t_cost: 3,
            p_cost: 4,
            salt: B64.encode([0u8; 16]),
        };
        let err = hostile.derive_kek(&pw("x")).err().unwrap();
        assert!(
            matches!(err, SlotError::Malformed { ref field, .. } if field == "m_cost_kib"),
            "{err}"
        );
        for (t, p, field) in [(10_000, 4, "t_cost"), (3, 0, "p_cost"), (3, 1000, "p_cost")] {
            let h = PasswordParams {
                t_cost: t,
                p_cost: p,
                m_cost_kib: 65536,
                ..hostile.clone()
            };
            let err = h.derive_kek(&pw("x")).err().unwrap();
            assert!(
                matches!(err, SlotError::Malformed { field: ref f, .. } if f == field),
                "{err}"
            );
        }
        // Another KDF is refused when the slot is read, before any use.
        let mut v = serde_json::to_value(&hostile).unwrap();
        v["kdf"] = "pbkdf2".into();
        assert!(serde_json::from_value::<PasswordParams>(v).is_err());
    }

    #[test]
    fn empty_password_is_refused_as_a_usage_error() {
        let err = enroll(&BackupKey::generate(), &pw(""), FAST).unwrap_err();
        assert_eq!(err.category(), crate::error::Category::Usage, "{err}");
    }
}
