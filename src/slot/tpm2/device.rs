//! The TPM 2.0 calls behind the tpm2 slot, through tss-esapi.
//!
//! Owns: opening a TCTI, recreating the owner-hierarchy storage primary from
//! tpm2-tools' default ECC template, salted and encrypted sessions, sealing
//! and unsealing the KEK under PolicyPCR / PolicyAuthValue, and turning TPM
//! response codes into [`SlotError`]s a person can act on.
//!
//! Must never: leave a transient object or session loaded in the TPM (a TPM
//! without a resource manager, such as swtpm, has only a few slots), log or
//! `Debug` the sealed data or the authValue (tss-esapi's buffer types derive
//! `Debug`), or put either in an error.

use crate::error::SlotError;
use std::time::Duration;
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::response_code::{Tss2ResponseCode, Tss2ResponseCodeKind};
use tss_esapi::constants::{CapabilityType, PropertyTag, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, CapabilityData, Digest, EccPoint, EccScheme, KeyDerivationFunctionScheme,
    KeyedHashScheme, PcrSelectionList, PcrSlot, Private, Public, PublicBuffer, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, Error as TssError};
use zeroize::Zeroizing;

/// Largest marshalled TPM2B_PUBLIC or TPM2B_PRIVATE accepted from a slot.
pub const MAX_BLOB: usize = 2048;

/// What the sealed object's policy binds: PCRs (bank and indices) and/or
/// an authValue (the stretched PIN).
pub struct Policy<'a> {
    /// PCR bank and indices, if bound to PCRs.
    pub pcrs: Option<(HashingAlgorithm, &'a [u8])>,
    /// The authValue, if a PIN is needed.
    pub auth: Option<&'a [u8]>,
}

impl Policy<'_> {
    fn is_empty(&self) -> bool {
        self.pcrs.is_none() && self.auth.is_none()
    }
}

/// The sealed object as tpm2-tools writes it: marshalled TPM2B_PUBLIC and
/// TPM2B_PRIVATE (`tpm2_create -u … -r …`).
pub struct Blobs {
    /// Marshalled TPM2B_PUBLIC.
    pub public: Vec<u8>,
    /// Marshalled TPM2B_PRIVATE.
    pub private: Vec<u8>,
}

/// A sealed object parsed from [`Blobs`], ready to load.
pub struct Sealed {
    public: Public,
    private: Private,
}

impl Sealed {
    /// Parse and check the blobs (sizes, canonical encoding, object type)
    /// without a TPM.
    pub fn parse(blobs: &Blobs) -> Result<Self, SlotError> {
        Ok(Self {
            public: unmarshal_public(&blobs.public)?,
            private: unmarshal_private(&blobs.private)?,
        })
    }
}

/// An open connection to one TPM, which flushes what it loaded.
pub struct Tpm {
    ctx: Context,
    tcti: String,
    loaded: Vec<ObjectHandle>,
}

fn tss(what: &str) -> impl FnOnce(TssError) -> SlotError + '_ {
    move |e| SlotError::Device(format!("TPM {what} failed: {e}"))
}

fn kind(e: &TssError) -> Option<Tss2ResponseCodeKind> {
    match e {
        TssError::Tss2Error(
            rc @ (Tss2ResponseCode::FormatOne(_) | Tss2ResponseCode::FormatZero(_)),
        ) => rc.kind(),
        _ => None,
    }
}

impl Tpm {
    /// Connect to the TPM named by a TCTI string (`device:/dev/tpmrm0`,
    /// `swtpm:host=…,port=…`, `mssim:…`, `tabrmd`).
    pub fn open(tcti: &str) -> Result<Self, SlotError> {
        let not_found = |why: String| SlotError::DeviceNotFound {
            what: format!("TPM at TCTI `{tcti}`"),
            hint: why,
        };
        let conf: TctiNameConf = tcti.parse().map_err(|_| {
            not_found(
                "not a TCTI this build knows (device:PATH, swtpm:host=H,port=P, mssim:…, tabrmd)"
                    .into(),
            )
        })?;
        let why = match &conf {
            TctiNameConf::Device(_) => {
                "cannot open the TPM device: does it exist, and may you open it (usually group tss)? Another TPM: --tcti or TPM2TOOLS_TCTI"
            }
            TctiNameConf::Tabrmd(_) => {
                "the TPM access broker (tpm2-abrmd) does not answer; is it running? Another TPM: --tcti or TPM2TOOLS_TCTI"
            }
            _ => {
                "nothing answers there: is the TPM simulator running? Another TPM: --tcti or TPM2TOOLS_TCTI"
            }
        };
        let ctx = Context::new(conf).map_err(|_| not_found(why.into()))?;
        Ok(Self {
            ctx,
            tcti: tcti.to_owned(),
            loaded: Vec::new(),
        })
    }

    /// The TCTI this connection uses.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Flush every transient object and session loaded so far; errors are
    /// ignored (the TPM may have flushed a session itself).
    fn flush_all(&mut self) {
        self.ctx.clear_sessions();
        while let Some(h) = self.loaded.pop() {
            let _ = self.ctx.flush_context(h);
        }
    }

    /// Run `f`, then flush whatever it loaded, success or not.
    fn scoped<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, SlotError>,
    ) -> Result<T, SlotError> {
        let r = f(self);
        self.flush_all();
        r
    }

    /// The owner-hierarchy storage primary of tpm2-tools' default template,
    /// `tpm2_createprimary -C o -g sha256 -G ecc`: ECC NIST P-256, nameAlg
    /// SHA-256, AES-128-CFB, restricted decrypt, fixedTPM|fixedParent|
    /// sensitiveDataOrigin|userWithAuth, empty unique. The same template on
    /// the same TPM always gives the same key, so none is kept.
    pub fn primary_template() -> Result<Public, TssError> {
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_restricted(true)
            .with_decrypt(true)
            .build()?;
        let params = PublicEccParametersBuilder::new_restricted_decryption_key(
            SymmetricDefinitionObject::AES_128_CFB,
            EccCurve::NistP256,
        )
        .with_ecc_scheme(EccScheme::Null)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .build()?;
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_ecc_parameters(params)
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
    }

    /// The name of the storage primary this TPM derives from the template
    /// (nameAlg ‖ SHA-256 of its public area), as `tpm2_readpublic -n`
    /// writes it; for checking that coffer and tpm2-tools agree.
    pub fn primary_name(&mut self) -> Result<Vec<u8>, SlotError> {
        self.scoped(|t| {
            let primary = t.create_primary()?;
            let name = t
                .ctx
                .tr_get_name(primary.into())
                .map_err(tss("reading the primary's name"))?;
            Ok(name.value().to_vec())
        })
    }

    fn create_primary(&mut self) -> Result<KeyHandle, SlotError> {
        let template = Self::primary_template().map_err(tss("primary template"))?;
        let r = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(|e| match kind(&e) {
                Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth) => {
                    SlotError::PolicyRefused(
                        "the TPM owner hierarchy has a password; coffer needs it empty (as tpm2-tools' defaults do)".into(),
                    )
                }
                _ => self.fail("creating the storage primary", e),
            })?;
        self.loaded.push(r.key_handle.into());
        Ok(r.key_handle)
    }

    /// A session salted with the primary key (so its session key never
    /// crosses the bus) using AES-128-CFB parameter encryption.
    fn salted_session(
        &mut self,
        primary: KeyHandle,
        ty: SessionType,
    ) -> Result<AuthSession, SlotError> {
        let s = self
            .ctx
            .execute_without_session(|c| {
                c.start_auth_session(
                    Some(primary),
                    None,
                    None,
                    ty,
                    SymmetricDefinition::AES_128_CFB,
                    HashingAlgorithm::Sha256,
                )
            })
            .map_err(tss("starting a salted session"))?
            .ok_or_else(|| SlotError::Device("the TPM returned no session".into()))?;
        self.loaded.push(SessionHandle::from(s).into());
        Ok(s)
    }

    /// Set the session's attributes: continue, plus command (`decrypt`)
    /// and response (`encrypt`) parameter encryption as asked.
    fn session_attrs(
        &mut self,
        s: AuthSession,
        decrypt: bool,
        encrypt: bool,
    ) -> Result<(), SlotError> {
        let (attrs, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_decrypt(decrypt)
            .with_encrypt(encrypt)
            .build();
        self.ctx
            .tr_sess_set_attributes(s, attrs, mask)
            .map_err(tss("setting session attributes"))
    }

    fn pcr_selection(bank: HashingAlgorithm, pcrs: &[u8]) -> Result<PcrSelectionList, SlotError> {
        let slots = pcrs
            .iter()
            .map(|&i| {
                PcrSlot::try_from(1u32 << i).map_err(|_| SlotError::Malformed {
                    field: "pcrs".into(),
                    reason: format!("PCR {i} does not exist"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        PcrSelectionList::builder()
            .with_selection(bank, &slots)
            .build()
            .map_err(tss("building the PCR selection"))
    }

    /// Refuse PCRs the TPM does not measure: PolicyPCR over a bank that is
    /// not allocated would bind nothing at all.
    fn check_pcrs_allocated(
        &mut self,
        bank: HashingAlgorithm,
        pcrs: &[u8],
    ) -> Result<(), SlotError> {
        let (data, _) = self
            .ctx
            .execute_without_session(|c| c.get_capability(CapabilityType::AssignedPcr, 0, 1))
            .map_err(tss("reading the PCR banks"))?;
        let CapabilityData::AssignedPcr(list) = data else {
            return Err(SlotError::Device(
                "the TPM did not list its PCR banks".into(),
            ));
        };
        let have = list
            .get_selections()
            .iter()
            .find(|s| s.hashing_algorithm() == bank);
        let missing: Vec<String> = pcrs
            .iter()
            .filter(|&&i| {
                let slot = PcrSlot::try_from(1u32 << i).ok();
                !matches!((have, slot), (Some(h), Some(s)) if h.is_selected(s))
            })
            .map(u8::to_string)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(SlotError::PolicyRefused(format!(
                "this TPM does not measure PCR {} in its {bank:?} bank, so binding to it would bind nothing; choose PCRs of an active bank (`tpm2_getcap pcrs` lists them)",
                missing.join(",")
            )))
        }
    }

    /// Run the policy commands on `session` (a trial or a real policy session).
    fn run_policy(&mut self, session: AuthSession, policy: &Policy<'_>) -> Result<(), SlotError> {
        let ps = PolicySession::try_from(session).map_err(tss("policy session"))?;
        if let Some((bank, pcrs)) = policy.pcrs {
            let sel = Self::pcr_selection(bank, pcrs)?;
            // An empty digest: the TPM uses the PCRs' current values. A
            // mismatch with enrollment shows at unseal as a policy failure.
            self.ctx
                .execute_without_session(|c| c.policy_pcr(ps, Digest::default(), sel))
                .map_err(tss("PolicyPCR"))?;
        }
        if policy.auth.is_some() {
            self.ctx
                .execute_without_session(|c| c.policy_auth_value(ps))
                .map_err(tss("PolicyAuthValue"))?;
        }
        Ok(())
    }

    /// The policy digest of `policy`, computed by the TPM in a trial session
    /// (with the PCRs' current values).
    fn policy_digest(&mut self, policy: &Policy<'_>) -> Result<Digest, SlotError> {
        let trial = self
            .ctx
            .execute_without_session(|c| {
                c.start_auth_session(
                    None,
                    None,
                    None,
                    SessionType::Trial,
                    SymmetricDefinition::AES_128_CFB,
                    HashingAlgorithm::Sha256,
                )
            })
            .map_err(tss("starting a trial session"))?
            .ok_or_else(|| SlotError::Device("the TPM returned no session".into()))?;
        self.loaded.push(SessionHandle::from(trial).into());
        self.run_policy(trial, policy)?;
        let ps = PolicySession::try_from(trial).map_err(tss("policy session"))?;
        self.ctx
            .execute_without_session(|c| c.policy_get_digest(ps))
            .map_err(tss("PolicyGetDigest"))
    }

    /// The sealed-data object's public template: KeyedHash, nameAlg SHA-256,
    /// fixedTPM|fixedParent; userWithAuth only without a policy (so that the
    /// PIN alone cannot bypass a PCR policy); noDA only without a PIN.
    pub(crate) fn sealed_template(policy: &Policy<'_>, digest: Digest) -> Result<Public, TssError> {
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_user_with_auth(policy.is_empty())
            .with_no_da(policy.auth.is_none())
            .build()?;
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_auth_policy(digest)
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default())
            .build()
    }

    /// Seal `secret` under the storage primary with `policy`.
    pub fn seal(&mut self, secret: &[u8], policy: &Policy<'_>) -> Result<Blobs, SlotError> {
        self.scoped(|t| {
            let primary = t.create_primary()?;
            if let Some((bank, pcrs)) = policy.pcrs {
                t.check_pcrs_allocated(bank, pcrs)?;
            }
            let digest = if policy.is_empty() {
                Digest::default()
            } else {
                t.policy_digest(policy)?
            };
            let template = Self::sealed_template(policy, digest).map_err(tss("sealed template"))?;
            let auth = policy
                .auth
                .map(|a| Auth::try_from(a.to_vec()))
                .transpose()
                .map_err(tss("authValue"))?;
            let data = SensitiveData::try_from(secret.to_vec()).map_err(tss("sealed data"))?;
            let s = t.salted_session(primary, SessionType::Hmac)?;
            // Create's first parameter (the sensitive data) and first
            // response parameter (the private blob) travel encrypted.
            t.session_attrs(s, true, true)?;
            let created = t
                .ctx
                .execute_with_session(Some(s), |c| {
                    c.create(primary, template, auth, Some(data), None, None)
                })
                .map_err(|e| t.fail("creating the sealed object", e))?;
            let public = PublicBuffer::try_from(created.out_public)
                .and_then(|p| p.marshall())
                .map_err(tss("marshalling the public area"))?;
            Ok(Blobs {
                public,
                private: marshal_private(&created.out_private),
            })
        })
    }

    /// Load the sealed object and unseal it through a salted session whose
    /// response is encrypted, satisfying `policy`.
    pub fn unseal(
        &mut self,
        sealed: &Sealed,
        policy: &Policy<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, SlotError> {
        let (public, private) = (sealed.public.clone(), sealed.private.clone());
        self.scoped(|t| {
            let primary = t.create_primary()?;
            let s = t.salted_session(primary, SessionType::Hmac)?;
            t.session_attrs(s, false, false)?;
            let sealed = t
                .ctx
                .execute_with_session(Some(s), |c| c.load(primary, private, public))
                .map_err(|e| match kind(&e) {
                    Some(
                        Tss2ResponseCodeKind::Integrity
                        | Tss2ResponseCodeKind::Size
                        | Tss2ResponseCodeKind::Value
                        | Tss2ResponseCodeKind::Binding,
                    ) => SlotError::PolicyRefused(format!(
                        "this TPM cannot load the slot's sealed object ({e}): it was enrolled on another TPM, or the TPM was cleared since; unlock with another slot, then re-enroll"
                    )),
                    _ => t.fail("loading the sealed object", e),
                })?;
            t.loaded.push(sealed.into());
            let session = if policy.is_empty() {
                s
            } else {
                let ps = t.salted_session(primary, SessionType::Policy)?;
                t.run_policy(ps, policy)?;
                ps
            };
            if let Some(a) = policy.auth {
                let auth = Auth::try_from(a.to_vec()).map_err(tss("authValue"))?;
                t.ctx
                    .tr_set_auth(sealed.into(), auth)
                    .map_err(tss("setting the authValue"))?;
            }
            // Unseal has no command parameter to encrypt; its response (the
            // KEK) is encrypted under the salted session key.
            t.session_attrs(session, false, true)?;
            match t
                .ctx
                .execute_with_session(Some(session), |c| c.unseal(sealed.into()))
            {
                Ok(data) => Ok(Zeroizing::new(data.value().to_vec())),
                Err(e) => Err(t.unseal_error(e, policy)),
            }
        })
    }

    /// Map an unseal failure to what a person can act on.
    fn unseal_error(&mut self, e: TssError, policy: &Policy<'_>) -> SlotError {
        self.ctx.clear_sessions();
        match kind(&e) {
            Some(Tss2ResponseCodeKind::PolicyFail) if policy.pcrs.is_some() => {
                SlotError::PolicyRefused(
                    "boot state differs from enrollment: unlock with another factor, then re-enroll"
                        .into(),
                )
            }
            Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth) => {
                SlotError::WrongPin {
                    tries_left: self.tries_left(),
                }
            }
            _ => self.fail("unsealing", e),
        }
    }

    /// Any command's failure: dictionary-attack lockout (which also stops
    /// the storage primary from authorizing a load, as its template has no
    /// noDA), else the TPM's own words.
    fn fail(&mut self, what: &str, e: TssError) -> SlotError {
        match kind(&e) {
            Some(Tss2ResponseCodeKind::Lockout) => SlotError::LockedOut {
                what: "the TPM".into(),
                hint: self.lockout_hint(),
            },
            _ => tss(what)(e),
        }
    }

    /// TPM properties read afresh (tss-esapi's `get_tpm_property` caches).
    fn properties(&mut self, tags: &[PropertyTag]) -> Vec<Option<u32>> {
        let first = tags[0];
        let Ok((CapabilityData::TpmProperties(props), _)) = self.ctx.execute_without_session(|c| {
            c.get_capability(CapabilityType::TpmProperties, first.into(), 8)
        }) else {
            return vec![None; tags.len()];
        };
        tags.iter()
            .map(|t| props.iter().find(|p| p.property() == *t).map(|p| p.value()))
            .collect()
    }

    /// Wrong PINs the TPM still accepts before its dictionary-attack
    /// lockout, when it tells.
    pub fn tries_left(&mut self) -> Option<u32> {
        match self.properties(&[PropertyTag::LockoutCounter, PropertyTag::MaxAuthFail])[..] {
            [Some(count), Some(max)] => Some(max.saturating_sub(count)),
            _ => None,
        }
    }

    fn lockout_hint(&mut self) -> String {
        let [interval] = self.properties(&[PropertyTag::LockoutInterval])[..] else {
            unreachable!()
        };
        match interval {
            Some(0) => "too many wrong PINs (dictionary-attack lockout), and this TPM forgives none by itself: the owner can reset it with `tpm2_dictionarylockout -c`; meanwhile unlock with another slot".into(),
            Some(s) => format!(
                "too many wrong PINs (dictionary-attack lockout): the TPM takes the next PIN in about {}; meanwhile unlock with another slot",
                human(Duration::from_secs(u64::from(s)))
            ),
            None => "too many wrong PINs (dictionary-attack lockout): wait, or unlock with another slot".into(),
        }
    }
}

/// A monotonic counter in the TPM's NV memory (an NV index of type
/// counter, written and read with owner authorization, whose password
/// coffer needs empty as for the storage primary): it only ever grows, and
/// survives reboots and restored disks; only clearing the TPM removes it.
impl Tpm {
    /// The handle of NV index `index`, if it exists.
    fn nv_handle(
        &mut self,
        index: u32,
    ) -> Result<Option<tss_esapi::handles::NvIndexHandle>, SlotError> {
        use tss_esapi::handles::{NvIndexTpmHandle, TpmHandle};
        let tpm_handle = NvIndexTpmHandle::new(index)
            .map_err(|_| SlotError::Device(format!("{index:#010x} is not an NV index")))?;
        match self
            .ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(tpm_handle)))
        {
            Ok(h) => Ok(Some(h.into())),
            Err(e) if kind(&e) == Some(Tss2ResponseCodeKind::Handle) => Ok(None),
            Err(e) => Err(self.fail("looking up the NV counter", e)),
        }
    }

    /// The counter at NV index `index`: `None` if there is no such index
    /// (never defined, or the TPM was cleared).
    pub fn counter_read(&mut self, index: u32) -> Result<Option<u64>, SlotError> {
        use tss_esapi::constants::nv_index_type::NvIndexType;
        use tss_esapi::interface_types::resource_handles::NvAuth;
        let Some(h) = self.nv_handle(index)? else {
            return Ok(None);
        };
        // A counter, and one written: an ordinary 8-byte index could be
        // written to any value; a counter defined but never incremented
        // (a crash in between) counts as none yet.
        let public = self
            .ctx
            .execute_without_session(|c| c.nv_read_public(h))
            .map(|(p, _)| p.attributes());
        let attrs = match public {
            Ok(a) => a,
            Err(e) => {
                let _ = self.ctx.tr_close(&mut h.into());
                return Err(self.fail("reading the NV counter's public area", e));
            }
        };
        if attrs.index_type().ok() != Some(NvIndexType::Counter) {
            let _ = self.ctx.tr_close(&mut h.into());
            return Err(SlotError::Device(format!(
                "NV index {index:#010x} is not a counter: choose another index"
            )));
        }
        // As `counter_increment` defines it: an orderly counter may jump
        // ahead after a power loss (the database then looks rolled back),
        // and one its own authorization, a policy or the platform may
        // write, or the platform defined, is not the owner's alone; the
        // owner must be able to read it.
        if attrs.orderly()
            || attrs.auth_write()
            || attrs.policy_write()
            || attrs.pp_write()
            || attrs.platform_create()
            || !attrs.owner_write()
            || !attrs.owner_read()
        {
            let _ = self.ctx.tr_close(&mut h.into());
            return Err(SlotError::Device(format!(
                "NV index {index:#010x} is a counter coffer did not define (orderly, written by more than the owner, or not readable by it): choose another index"
            )));
        }
        if !attrs.written() {
            let _ = self.ctx.tr_close(&mut h.into());
            return Ok(None);
        }
        let r = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.nv_read(NvAuth::Owner, h, 8, 0)
            });
        let _ = self.ctx.tr_close(&mut h.into());
        let data = r.map_err(|e| self.fail("reading the NV counter", e))?;
        let bytes: [u8; 8] = data.value().try_into().map_err(|_| {
            SlotError::Device(format!(
                "NV index {index:#010x} is not a counter (it holds {} bytes)",
                data.value().len()
            ))
        })?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    /// Add one to the counter at NV index `index`, defining it first if
    /// there is none; its new value.
    pub fn counter_increment(&mut self, index: u32) -> Result<u64, SlotError> {
        use tss_esapi::attributes::NvIndexAttributesBuilder;
        use tss_esapi::constants::nv_index_type::NvIndexType;
        use tss_esapi::handles::NvIndexTpmHandle;
        use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
        use tss_esapi::structures::NvPublicBuilder;
        let h = match self.nv_handle(index)? {
            Some(h) => h,
            None => {
                let attrs = NvIndexAttributesBuilder::new()
                    .with_owner_write(true)
                    .with_owner_read(true)
                    .with_nv_index_type(NvIndexType::Counter)
                    .build()
                    .map_err(tss("NV counter attributes"))?;
                let public = NvPublicBuilder::new()
                    .with_nv_index(
                        NvIndexTpmHandle::new(index).map_err(tss("the NV counter's index"))?,
                    )
                    .with_index_name_algorithm(HashingAlgorithm::Sha256)
                    .with_index_attributes(attrs)
                    .with_data_area_size(8)
                    .build()
                    .map_err(tss("the NV counter's public area"))?;
                self.ctx
                    .execute_with_session(Some(AuthSession::Password), |c| {
                        c.nv_define_space(Provision::Owner, None, public)
                    })
                    .map_err(|e| match kind(&e) {
                        Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth) => {
                            SlotError::PolicyRefused(
                                "the TPM owner hierarchy has a password; coffer needs it empty (as tpm2-tools' defaults do)".into(),
                            )
                        }
                        _ => self.fail("defining the NV counter", e),
                    })?
            }
        };
        let r = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.nv_increment(NvAuth::Owner, h)
            });
        let _ = self.ctx.tr_close(&mut h.into());
        r.map_err(|e| self.fail("incrementing the NV counter", e))?;
        self.counter_read(index)?
            .ok_or_else(|| SlotError::Device("the NV counter vanished".into()))
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        self.flush_all();
    }
}

/// "45 s", "17 min", "2 h 5 min".
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s.div_ceil(60)),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// TPM2B_PRIVATE: a big-endian u16 size, then the bytes (as `tpm2_create -r`
/// writes it).
fn marshal_private(p: &Private) -> Vec<u8> {
    let v = p.value();
    let mut out = Vec::with_capacity(2 + v.len());
    out.extend_from_slice(&u16::try_from(v.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(v);
    out
}

fn malformed(field: &str, reason: impl Into<String>) -> SlotError {
    SlotError::Malformed {
        field: field.into(),
        reason: reason.into(),
    }
}

fn unmarshal_private(b: &[u8]) -> Result<Private, SlotError> {
    if b.len() > MAX_BLOB {
        return Err(malformed("private", "too large"));
    }
    let [hi, lo, rest @ ..] = b else {
        return Err(malformed("private", "too short for a TPM2B_PRIVATE"));
    };
    if usize::from(u16::from_be_bytes([*hi, *lo])) != rest.len() {
        return Err(malformed("private", "TPM2B size does not match its length"));
    }
    Private::try_from(rest.to_vec()).map_err(|_| malformed("private", "not a TPM2B_PRIVATE"))
}

/// Parse a marshalled TPM2B_PUBLIC, refusing trailing bytes and any
/// encoding that does not marshal back to the same bytes.
fn unmarshal_public(b: &[u8]) -> Result<Public, SlotError> {
    if b.len() > MAX_BLOB {
        return Err(malformed("public", "too large"));
    }
    let buf = PublicBuffer::unmarshall(b).map_err(|_| malformed("public", "not a TPM2B_PUBLIC"))?;
    let public = Public::try_from(buf).map_err(|_| malformed("public", "not a TPM2B_PUBLIC"))?;
    let again = PublicBuffer::try_from(public.clone())
        .and_then(|p| p.marshall())
        .map_err(|_| malformed("public", "not a TPM2B_PUBLIC"))?;
    if again != b {
        return Err(malformed("public", "trailing or non-canonical bytes"));
    }
    match public {
        Public::KeyedHash { .. } => Ok(public),
        _ => Err(malformed("public", "not a sealed-data (KeyedHash) object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_blob_sizes_are_checked() {
        assert!(unmarshal_private(&[0, 3, 1, 2]).is_err());
        assert!(unmarshal_private(&[0]).is_err());
        assert!(unmarshal_private(&vec![0; MAX_BLOB + 1]).is_err());
        let p = unmarshal_private(&[0, 2, 9, 9]).unwrap();
        assert_eq!(marshal_private(&p), vec![0, 2, 9, 9]);
    }

    #[test]
    fn public_blob_must_be_canonical_keyed_hash() {
        let policy = Policy {
            pcrs: None,
            auth: None,
        };
        let t = Tpm::sealed_template(&policy, Digest::default()).unwrap();
        let b = PublicBuffer::try_from(t).unwrap().marshall().unwrap();
        assert!(unmarshal_public(&b).is_ok());
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(unmarshal_public(&trailing).is_err());
        assert!(unmarshal_public(&b[..b.len() - 1]).is_err());
        let primary = PublicBuffer::try_from(Tpm::primary_template().unwrap())
            .unwrap()
            .marshall()
            .unwrap();
        assert!(unmarshal_public(&primary).is_err());
    }

    proptest::proptest! {
        /// The blobs come from a keyring or archive header: tss's C
        /// unmarshalling must refuse garbage without panicking, and only
        /// canonical encodings may pass.
        #[test]
        fn arbitrary_blobs_are_refused_or_canonical(
            b in proptest::collection::vec(proptest::num::u8::ANY, 0..700),
        ) {
            if let Ok(p) = unmarshal_public(&b) {
                let again = PublicBuffer::try_from(p).unwrap().marshall().unwrap();
                proptest::prop_assert_eq!(again, b.clone());
            }
            let _ = unmarshal_private(&b);
        }

        #[test]
        fn mutated_public_blobs_never_panic(i in 0usize..200, x in proptest::num::u8::ANY) {
            let policy = Policy { pcrs: None, auth: None };
            let t = Tpm::sealed_template(&policy, Digest::default()).unwrap();
            let mut b = PublicBuffer::try_from(t).unwrap().marshall().unwrap();
            let n = b.len();
            b[i % n] ^= x;
            let _ = unmarshal_public(&b);
            b.truncate(i % n);
            let _ = unmarshal_public(&b);
        }
    }

    /// A blob coffer sealed (PCR 7 + PIN) on swtpm, also the fuzz seed:
    /// it parses, and its attributes are the ones promised: fixedTPM,
    /// fixedParent, userWithAuth clear (the PIN cannot bypass the PCR
    /// policy), DA-protected, a policy set.
    #[test]
    fn vector_pcr7_pin_blob() {
        let seed = include_bytes!("../../../fuzz/seeds/tpm2_slot/pcr7-pin.bin");
        let (n, rest) = seed.split_first().unwrap();
        let (public, private) = rest.split_at(usize::from(*n));
        let sealed = Sealed::parse(&Blobs {
            public: public.to_vec(),
            private: private.to_vec(),
        })
        .unwrap();
        let a = sealed.public.object_attributes();
        assert!(a.fixed_tpm() && a.fixed_parent());
        assert!(!a.user_with_auth() && !a.no_da() && !a.sensitive_data_origin());
        assert_eq!(sealed.public.auth_policy().len(), 32);
        assert_eq!(
            sealed.public.name_hashing_algorithm(),
            HashingAlgorithm::Sha256
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(60)), "60 s");
        assert_eq!(human(Duration::from_secs(1000)), "17 min");
        assert_eq!(human(Duration::from_secs(7500)), "2 h 5 min");
    }
}
