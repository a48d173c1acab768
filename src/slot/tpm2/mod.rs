//! The tpm2 slot: the KEK is 32 random bytes sealed in a TPM 2.0 sealed-data
//! object under the owner hierarchy's ECC P-256 storage primary (tpm2-tools'
//! default template, recreated each time), optionally bound to PCRs
//! (PolicyPCR) and to a PIN (PolicyAuthValue; the authValue is
//! PBKDF2-HMAC-SHA256 of the PIN with a per-slot salt).
//!
//! Owns: the slot's public parameters ([`Tpm2Params`]) and their limits,
//! `--pcrs` parsing, choosing the TCTI, PIN stretching, [`enroll`] and the
//! [`Slot`] implementation. The TPM calls live in [`device`].
//!
//! Must never: store anything secret in the slot (the sealed blob is only
//! usable inside the TPM that made it), connect to the TCTI recorded in a
//! slot that did not come from the owner's own keyring (a header must not
//! make us send a PIN-derived HMAC to a host it names), or keep the PIN or
//! KEK past the unwrap.

pub mod device;

use super::{
    FactorKind, HeaderOnly, Interaction, Locators, Slot, SlotParams, SlotRecord, Target,
    UnlockContext,
};
use crate::error::SlotError;
use crate::key::{KEY_LEN, Kek, WrappedKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use device::{Blobs, Policy, Sealed, Tpm};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use zeroize::Zeroizing;

/// The kind name in the keyring.
pub const KIND: &str = "tpm2";
/// The TCTI used when neither `--tcti`, `TPM2TOOLS_TCTI` nor `TCTI` names
/// one: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";
/// The PCR bank used when `--pcrs` names none.
pub const DEFAULT_PCR_BANK: &str = "sha256";
/// PBKDF2-HMAC-SHA256 iterations for a new PIN (as systemd-cryptenroll).
pub const DEFAULT_PIN_ITERATIONS: u32 = 10_000;
/// Most PBKDF2 iterations an unlock will run (a hostile slot must not make
/// us spin for minutes).
pub const MAX_PIN_ITERATIONS: u32 = 10_000_000;
/// PIN salt length, bytes.
pub const PIN_SALT_LEN: usize = 16;
/// The highest PCR index (PC client TPMs have 24).
pub const MAX_PCR: u8 = 23;
/// Longest TCTI hint stored.
const MAX_TCTI_HINT: usize = 256;

/// Public parameters of a tpm2 slot. Nothing here is secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tpm2Params {
    /// Marshalled TPM2B_PUBLIC of the sealed object, base64 (the file
    /// `tpm2_create -u` writes).
    pub public: String,
    /// Marshalled TPM2B_PRIVATE of the sealed object, base64 (the file
    /// `tpm2_create -r` writes).
    pub private: String,
    /// PCR bank the policy reads (`sha256`); absent without PCR binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr_bank: Option<String>,
    /// PCR indices bound by PolicyPCR, ascending; empty without PCR binding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pcrs: Vec<u8>,
    /// Whether unsealing needs a PIN (PolicyAuthValue).
    pub pin: bool,
    /// PBKDF2 salt for the PIN, 16 bytes base64; present iff `pin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_salt: Option<String>,
    /// PBKDF2-HMAC-SHA256 iterations for the PIN; present iff `pin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_iterations: Option<u32>,
    /// The TCTI used at enrollment: the TPM for this slot when the slot
    /// comes from the owner's keyring and neither `--tcti` nor the
    /// environment names one; never used from an archive header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcti_hint: Option<String>,
}

/// PCR binding: a bank and a set of PCR indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSpec {
    /// `sha1`, `sha256`, `sha384` or `sha512`.
    pub bank: String,
    /// Ascending, unique, each at most [`MAX_PCR`].
    pub pcrs: Vec<u8>,
}

fn bank_alg(bank: &str) -> Option<HashingAlgorithm> {
    Some(match bank {
        "sha1" => HashingAlgorithm::Sha1,
        "sha256" => HashingAlgorithm::Sha256,
        "sha384" => HashingAlgorithm::Sha384,
        "sha512" => HashingAlgorithm::Sha512,
        _ => return None,
    })
}

impl std::str::FromStr for PcrSpec {
    type Err = String;

    /// `7`, `0,7`, or `sha256:0,7` (tpm2-tools' PCR selection syntax for
    /// one bank).
    fn from_str(s: &str) -> Result<Self, String> {
        let (bank, list) = match s.split_once(':') {
            Some((b, l)) => (b.trim().to_ascii_lowercase(), l),
            None => (DEFAULT_PCR_BANK.to_owned(), s),
        };
        if bank_alg(&bank).is_none() {
            return Err(format!(
                "unknown PCR bank `{bank}` (sha1, sha256, sha384 or sha512)"
            ));
        }
        let mut pcrs = Vec::new();
        for part in list.split(',') {
            let part = part.trim();
            let n: u8 = part
                .parse()
                .ok()
                .filter(|&n| n <= MAX_PCR)
                .ok_or_else(|| format!("`{part}` is not a PCR index (0 to {MAX_PCR})"))?;
            pcrs.push(n);
        }
        pcrs.sort_unstable();
        pcrs.dedup();
        Ok(Self { bank, pcrs })
    }
}

impl std::fmt::Display for PcrSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.pcrs.iter().map(u8::to_string).collect();
        write!(f, "{}:{}", self.bank, list.join(","))
    }
}

/// The TCTI to use for a slot: `--tcti` ([`Locators::tcti`]), else what
/// the binary found in the environment ([`Locators::tcti_default`]:
/// `TPM2TOOLS_TCTI`, `TCTI`), else the TCTI recorded when the slot was
/// enrolled (`hint`: only from the owner's keyring — a header-only slot's
/// is dropped before it gets here), else [`DEFAULT_TCTI`]. The library
/// reads no environment of its own.
pub fn resolve_tcti(locators: &Locators, hint: Option<&str>) -> String {
    [
        locators.tcti.as_deref(),
        locators.tcti_default.as_deref(),
        hint,
    ]
    .into_iter()
    .flatten()
    .find(|s| !s.is_empty())
    .unwrap_or(DEFAULT_TCTI)
    .to_owned()
}

/// The authValue for `pin`: PBKDF2-HMAC-SHA256(pin, salt, iterations),
/// 32 bytes, with trailing zero bytes removed (the TPM ignores them in
/// HMACs; removing them here keeps every TSS in agreement).
fn pin_auth(
    pin: &SecretString,
    salt: &[u8],
    iterations: u32,
) -> Result<Zeroizing<Vec<u8>>, SlotError> {
    let iterations = NonZeroU32::new(iterations)
        .filter(|n| n.get() <= MAX_PIN_ITERATIONS)
        .ok_or_else(|| SlotError::Malformed {
            field: "pin_iterations".into(),
            reason: format!("must be 1 to {MAX_PIN_ITERATIONS}"),
        })?;
    let mut out = Zeroizing::new(vec![0u8; KEY_LEN]);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        pin.expose_secret().as_bytes(),
        &mut out,
    );
    while out.last() == Some(&0) {
        out.pop();
    }
    Ok(out)
}

/// What to enroll.
#[derive(Default)]
pub struct EnrollOptions {
    /// The TCTI (the binary resolves `--tcti` and the environment; else
    /// [`DEFAULT_TCTI`]).
    pub tcti: Option<String>,
    /// PCR binding, if any.
    pub pcrs: Option<PcrSpec>,
    /// The PIN, if one is wanted.
    pub pin: Option<SecretString>,
}

impl std::fmt::Debug for EnrollOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollOptions")
            .field("tcti", &self.tcti)
            .field("pcrs", &self.pcrs)
            .field("pin", &self.pin.is_some())
            .finish()
    }
}

/// Seal a fresh KEK in the TPM and wrap `target` (the backup key, or a
/// group member's share) with it.
pub fn enroll<'a>(
    target: impl Into<Target<'a>>,
    opts: &EnrollOptions,
) -> Result<SlotRecord, SlotError> {
    let tcti = opts
        .tcti
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_TCTI.to_owned());
    let pin = match &opts.pin {
        Some(p) if p.expose_secret().is_empty() => {
            return Err(SlotError::Usage("the new PIN is empty".into()));
        }
        Some(p) => {
            let mut salt = [0u8; PIN_SALT_LEN];
            crate::key::random_bytes(&mut salt);
            Some((pin_auth(p, &salt, DEFAULT_PIN_ITERATIONS)?, salt))
        }
        None => None,
    };
    let pcrs = match &opts.pcrs {
        Some(spec) if !spec.pcrs.is_empty() => {
            let alg = bank_alg(&spec.bank).ok_or_else(|| SlotError::Malformed {
                field: "pcr_bank".into(),
                reason: format!("unknown bank `{}`", spec.bank),
            })?;
            Some((alg, spec))
        }
        _ => None,
    };
    let policy = Policy {
        pcrs: pcrs.map(|(alg, spec)| (alg, spec.pcrs.as_slice())),
        auth: pin.as_ref().map(|(a, _)| a.as_slice()),
    };
    let kek = Kek::generate();
    let mut tpm = Tpm::open(&tcti)?;
    let blobs = tpm.seal(kek.expose(), &policy)?;
    let params = Tpm2Params {
        public: B64.encode(&blobs.public),
        private: B64.encode(&blobs.private),
        pcr_bank: pcrs.map(|(_, s)| s.bank.clone()),
        pcrs: pcrs.map(|(_, s)| s.pcrs.clone()).unwrap_or_default(),
        pin: pin.is_some(),
        pin_salt: pin.as_ref().map(|(_, salt)| B64.encode(salt)),
        pin_iterations: pin.as_ref().map(|_| DEFAULT_PIN_ITERATIONS),
        tcti_hint: (tcti.len() <= MAX_TCTI_HINT).then_some(tcti),
    };
    Ok(target.into().record(SlotParams::Tpm2(params), &kek))
}

fn malformed(field: &str, reason: impl Into<String>) -> SlotError {
    SlotError::Malformed {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The checked form of [`Tpm2Params`].
struct Checked {
    sealed: Sealed,
    pcrs: Option<(HashingAlgorithm, Vec<u8>)>,
    pin: Option<([u8; PIN_SALT_LEN], u32)>,
}

impl Tpm2Params {
    /// Check every field against its limits before touching the TPM.
    fn check(&self) -> Result<Checked, SlotError> {
        let blob = |field: &str, s: &str| -> Result<Vec<u8>, SlotError> {
            // base64 of MAX_BLOB bytes is at most 4/3 as long.
            if s.len() > device::MAX_BLOB * 4 / 3 + 4 {
                return Err(malformed(field, "too large"));
            }
            B64.decode(s).map_err(|_| malformed(field, "not base64"))
        };
        let sealed = Sealed::parse(&Blobs {
            public: blob("public", &self.public)?,
            private: blob("private", &self.private)?,
        })?;
        let pcrs = match (&self.pcr_bank, self.pcrs.is_empty()) {
            (None, true) => None,
            (Some(bank), false) => {
                let alg = bank_alg(bank).ok_or_else(|| malformed("pcr_bank", "unknown bank"))?;
                if self.pcrs.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(malformed("pcrs", "not ascending and unique"));
                }
                if self.pcrs.iter().any(|&p| p > MAX_PCR) {
                    return Err(malformed("pcrs", format!("a PCR index above {MAX_PCR}")));
                }
                Some((alg, self.pcrs.clone()))
            }
            _ => return Err(malformed("pcrs", "pcr_bank and pcrs go together")),
        };
        let pin = match (self.pin, &self.pin_salt, self.pin_iterations) {
            (false, None, None) => None,
            (true, Some(salt), Some(n)) => {
                let salt = B64
                    .decode(salt)
                    .ok()
                    .and_then(|b| <[u8; PIN_SALT_LEN]>::try_from(b).ok())
                    .ok_or_else(|| malformed("pin_salt", "not 16 bytes of base64"))?;
                if n == 0 || n > MAX_PIN_ITERATIONS {
                    return Err(malformed(
                        "pin_iterations",
                        format!("must be 1 to {MAX_PIN_ITERATIONS}"),
                    ));
                }
                Some((salt, n))
            }
            _ => {
                return Err(malformed(
                    "pin",
                    "pin, pin_salt and pin_iterations go together",
                ));
            }
        };
        Ok(Checked { sealed, pcrs, pin })
    }

    /// Check every field against its limits, and parse the sealed object,
    /// without a TPM. Unlocking does this before anything else.
    pub fn validate(&self) -> Result<(), SlotError> {
        self.check().map(|_| ())
    }

    /// Unseal the KEK from the TPM at `tcti`, with `pin` if the slot needs
    /// one. Each call opens its own connection and flushes what it loaded.
    pub fn unseal_kek(&self, tcti: &str, pin: Option<&SecretString>) -> Result<Kek, SlotError> {
        let checked = self.check()?;
        let auth = match (&checked.pin, pin) {
            (Some((salt, n)), Some(p)) => Some(pin_auth(p, salt, *n)?),
            (Some(_), None) => return Err(SlotError::WrongPin { tries_left: None }),
            (None, _) => None,
        };
        let policy = Policy {
            pcrs: checked.pcrs.as_ref().map(|(a, p)| (*a, p.as_slice())),
            auth: auth.as_ref().map(|a| a.as_slice()),
        };
        let mut tpm = Tpm::open(tcti).map_err(|e| self.with_hint(e))?;
        let data = tpm.unseal(&checked.sealed, &policy)?;
        let bytes = <[u8; KEY_LEN]>::try_from(data.as_slice())
            .map_err(|_| malformed("private", "the sealed data is not a 32-byte KEK"))?;
        Ok(Kek::from_bytes(bytes))
    }

    /// The KEK from the TPM at `tcti`, checked against `wrapped` (a slot
    /// that is no group's member). [`Slot::kek`] does this with the TCTI
    /// [`resolve_tcti`] picks.
    pub fn kek_via(
        &self,
        wrapped: &WrappedKey,
        tcti: &str,
        pin: Option<&SecretString>,
    ) -> Result<Kek, SlotError> {
        self.kek_checked(tcti, pin, &|k| wrapped.unwrap(k).is_ok())
    }

    /// The KEK from the TPM at `tcti`, if `opens` says it opens the slot.
    fn kek_checked(
        &self,
        tcti: &str,
        pin: Option<&SecretString>,
        opens: &dyn Fn(&Kek) -> bool,
    ) -> Result<Kek, SlotError> {
        let kek = self.unseal_kek(tcti, pin)?;
        match opens(&kek) {
            true => Ok(kek),
            false => Err(malformed(
                "wrapped",
                "the KEK sealed in the TPM does not unwrap this slot's key",
            )),
        }
    }

    fn with_hint(&self, e: SlotError) -> SlotError {
        match (e, &self.tcti_hint) {
            (SlotError::DeviceNotFound { what, hint }, Some(h)) => SlotError::DeviceNotFound {
                what,
                hint: format!("{hint} (this slot was enrolled through `{h}`)"),
            },
            (e, _) => e,
        }
    }
}

impl Slot for Tpm2Params {
    fn factor(&self) -> Option<FactorKind> {
        self.pin.then_some(FactorKind::Pin)
    }

    fn interaction(&self, _at_hand: bool) -> Interaction {
        if self.pin {
            Interaction::Device
        } else {
            Interaction::Unattended
        }
    }

    fn kek(&self, wrapped: &WrappedKey, ctx: &UnlockContext<'_>) -> Option<Result<Kek, SlotError>> {
        if let Err(e) = self.check() {
            return Some(Err(e));
        }
        let tcti = resolve_tcti(ctx.locators, self.tcti_hint.as_deref());
        let pin = if self.pin {
            // Ask only once the TPM answers: no PIN prompt for an absent TPM.
            if let Err(e) = Tpm::open(&tcti) {
                return Some(Err(self.with_hint(e)));
            }
            Some(ctx.secret("TPM PIN")?)
        } else {
            None
        };
        Some(self.kek_checked(&tcti, pin.as_ref(), &|k| ctx.opens(wrapped, k)))
    }

    fn header_only(&self, locators: &Locators) -> HeaderOnly {
        // The TCTI is always local: the header's hint is dropped.
        let mut what = format!(
            "load its sealed object into the TPM at {}",
            crate::ui::escaped(&resolve_tcti(locators, None))
        );
        if self.pin {
            what += " and send it a PIN (a wrong one counts toward the TPM's lockout)";
        }
        HeaderOnly::Confirm {
            what,
            local: SlotParams::Tpm2(Tpm2Params {
                tcti_hint: None,
                ..self.clone()
            }),
        }
    }

    fn describe(&self) -> String {
        let mut s = String::from("TPM 2.0");
        if !self.pcrs.is_empty() {
            let list: Vec<String> = self.pcrs.iter().map(u8::to_string).collect();
            s += &format!(
                ", PCRs {}:{}",
                self.pcr_bank.as_deref().unwrap_or("?"),
                list.join(",")
            );
        }
        if self.pin {
            s += ", PIN";
        }
        if let Some(h) = &self.tcti_hint {
            s += &format!(", enrolled via {h}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well-formed parameters (a real sealed-object template, a dummy
    /// private blob) that the tests below spoil one field at a time.
    fn params() -> Tpm2Params {
        use tss_esapi::traits::Marshall;
        let policy = Policy {
            pcrs: None,
            auth: None,
        };
        let public = Tpm::sealed_template(&policy, Default::default()).unwrap();
        let public = tss_esapi::structures::PublicBuffer::try_from(public)
            .unwrap()
            .marshall()
            .unwrap();
        Tpm2Params {
            public: B64.encode(public),
            private: B64.encode([0u8, 2, 9, 9]),
            pcr_bank: None,
            pcrs: vec![],
            pin: false,
            pin_salt: None,
            pin_iterations: None,
            tcti_hint: None,
        }
    }

    #[test]
    fn pcr_lists_parse() {
        let p: PcrSpec = "7".parse().unwrap();
        assert_eq!((p.bank.as_str(), p.pcrs.as_slice()), ("sha256", &[7][..]));
        let p: PcrSpec = "sha1:7,0,7".parse().unwrap();
        assert_eq!((p.bank.as_str(), p.pcrs.as_slice()), ("sha1", &[0, 7][..]));
        assert_eq!(p.to_string(), "sha1:0,7");
        for bad in ["24", "md5:7", "", "sha256:", "7,,8", "-1", "sha256:x"] {
            assert!(bad.parse::<PcrSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_or_inconsistent_params_are_refused() {
        assert!(params().check().is_ok());
        let cases: Vec<(Tpm2Params, &str)> = vec![
            (
                Tpm2Params {
                    pcrs: vec![7],
                    ..params()
                },
                "pcrs",
            ),
            (
                Tpm2Params {
                    pcr_bank: Some("sha256".into()),
                    ..params()
                },
                "pcrs",
            ),
            (
                Tpm2Params {
                    pcr_bank: Some("sha256".into()),
                    pcrs: vec![7, 7],
                    ..params()
                },
                "pcrs",
            ),
            (
                Tpm2Params {
                    pcr_bank: Some("sha256".into()),
                    pcrs: vec![24],
                    ..params()
                },
                "pcrs",
            ),
            (
                Tpm2Params {
                    pcr_bank: Some("md5".into()),
                    pcrs: vec![7],
                    ..params()
                },
                "pcr_bank",
            ),
            (
                Tpm2Params {
                    pin: true,
                    ..params()
                },
                "pin",
            ),
            (
                Tpm2Params {
                    pin: true,
                    pin_salt: Some(B64.encode([0u8; 16])),
                    pin_iterations: Some(MAX_PIN_ITERATIONS + 1),
                    ..params()
                },
                "pin_iterations",
            ),
            (
                Tpm2Params {
                    pin: true,
                    pin_salt: Some(B64.encode([0u8; 15])),
                    pin_iterations: Some(10),
                    ..params()
                },
                "pin_salt",
            ),
            (
                Tpm2Params {
                    public: "A".repeat(10_000),
                    ..params()
                },
                "public",
            ),
            (
                Tpm2Params {
                    private: "!!".into(),
                    ..params()
                },
                "private",
            ),
        ];
        for (p, field) in cases {
            match p.check() {
                Err(SlotError::Malformed { field: f, .. }) => assert_eq!(f, field, "{p:?}"),
                Err(e) => panic!("{p:?}: {e}"),
                Ok(_) => panic!("{p:?} accepted"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = serde_json::to_value(params()).unwrap();
        v["extra"] = 1.into();
        assert!(serde_json::from_value::<Tpm2Params>(v).is_err());
    }

    /// PBKDF2-HMAC-SHA256 pinned to RFC 7914 §11's vector ("passwd",
    /// "salt", 1 iteration), so the PIN derivation cannot drift.
    #[test]
    fn pin_derivation_is_pbkdf2_hmac_sha256() {
        let a = pin_auth(&SecretString::from("passwd".to_owned()), b"salt", 1).unwrap();
        assert_eq!(
            hex::encode(&a[..]),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
        assert!(pin_auth(&SecretString::from("x".to_owned()), b"s", 0).is_err());
    }

    #[test]
    fn tcti_order() {
        let mut loc = Locators {
            tcti: Some("swtpm:port=1".into()),
            tcti_default: Some("swtpm:port=3".into()),
            ..Locators::default()
        };
        assert_eq!(resolve_tcti(&loc, Some("swtpm:port=2")), "swtpm:port=1");
        loc.tcti = None;
        assert_eq!(resolve_tcti(&loc, Some("swtpm:port=2")), "swtpm:port=3");
        loc.tcti_default = None;
        assert_eq!(resolve_tcti(&loc, Some("swtpm:port=2")), "swtpm:port=2");
        assert_eq!(resolve_tcti(&loc, None), DEFAULT_TCTI);
    }
}
