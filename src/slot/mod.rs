//! Slots: the ways to recover the backup key, in both directions.
//!
//! Every slot is "a way to obtain a 32-byte KEK" plus `AES-KW(KEK, BK)`.
//! [`SlotRecord`] is what the keyring (and every archive header) stores:
//! common fields plus kind-specific public parameters ([`SlotParams`],
//! typed and checked when read, from the one registry in [`record`]).
//! [`Slot`] is implemented by each kind's parameters, like age's
//! `Identity`/`Recipient` pair in one trait: produce the KEK from a factor
//! (not tried, failed, or the KEK), and wrap a given [`Target`] into the
//! slot again ([`Slot::rewrap`], which `rotate` is built on). A slot wraps
//! the backup key, or, as a member of a threshold group ([`threshold`]),
//! its share of the group's secret under a KEK derived for that member
//! ([`Membership::kek`]); kinds never wrap or check a wrapped key
//! themselves, but through [`Target::wrap`] and [`UnlockContext::opens`],
//! so that every kind can be a member.
//!
//! The modules: [`record`] (the stored form and the kind registry),
//! [`factors`] (which secret goes to which slot), [`mod@unlock`] (ordering and
//! the trust rule for unauthenticated slots), [`lifecycle`] (re-wrapping
//! every slot for a new key), [`threshold`] (groups), and one module per
//! kind.
//!
//! Must never: hold a factor (password, PIN, recovery key) longer than the
//! unwrap, or put one in an error; load code, contact a server or spend a
//! PIN try because an unauthenticated slot said so.

pub mod factors;
#[cfg(feature = "fido2")]
pub mod fido2;
pub mod lifecycle;
pub mod password;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
pub mod record;
pub mod recovery;
pub mod threshold;
#[cfg(feature = "tpm2")]
pub mod tpm2;
pub mod unlock;
#[cfg(feature = "vault")]
pub mod vault;
#[cfg(feature = "yubikey")]
pub mod yubikey;

pub use factors::{FactorKind, Factors};
pub(crate) use record::now_unix;
pub use record::{
    KNOWN_KINDS, Label, MAX_SLOTS, Membership, SlotId, SlotParams, SlotRecord, UnknownSlot, select,
    select_one,
};
pub use unlock::{
    Candidate, Locators, Trust, UNAUTHENTICATED_KDF_BUDGET, UnlockOptions, archive_candidates,
    unlock, unlock_with,
};

use crate::error::SlotError;
use crate::key::{BackupKey, KEY_LEN, Kek, WrappedKey};
use crate::shamir::Share;
use crate::ui::Ui;
use factors::Offer;
use secrecy::{ExposeSecret, SecretString};

/// What one attempt on one slot gets to work with.
pub struct UnlockContext<'a> {
    /// Where to ask and tell.
    pub ui: &'a dyn Ui,
    /// The slot being unlocked, for prompts and messages.
    pub slot: &'a SlotRecord,
    /// Locally trusted names of devices and services (`--tcti`, ...).
    pub locators: &'a Locators,
    factors: &'a Factors,
    offer: Offer,
}

impl<'a> UnlockContext<'a> {
    pub(crate) fn new(
        ui: &'a dyn Ui,
        slot: &'a SlotRecord,
        locators: &'a Locators,
        factors: &'a Factors,
        offer: Offer,
    ) -> Self {
        Self {
            ui,
            slot,
            locators,
            factors,
            offer,
        }
    }

    /// This slot's factor: the secret given for it (under the binding rule,
    /// [`factors`]), else what the person types at a prompt naming `what`
    /// and the slot; `None` when there is neither (the slot is then not
    /// tried). A typed secret is remembered for the rest of the run.
    pub fn secret(&self, what: &str) -> Option<SecretString> {
        match &self.offer {
            Offer::Secret(s) | Offer::Shared(s) => Some(s.clone()),
            Offer::None => None,
            Offer::Ask => {
                let s = self.ui.request_secret(&format!(
                    "{what} for slot {}, empty to skip: ",
                    self.slot.name()
                ))?;
                if s.expose_secret().is_empty() {
                    return None;
                }
                if let Some(kind) = self.slot.params.as_slot().and_then(|k| k.factor()) {
                    self.factors.remember(self.slot, kind, &s);
                }
                Some(s)
            }
        }
    }

    /// Whether the factor is at hand without asking anyone.
    pub fn factor_at_hand(&self) -> bool {
        matches!(self.offer, Offer::Secret(_) | Offer::Shared(_))
    }

    /// Whether `kek`, the KEK this slot's kind computed, opens `wrapped`:
    /// directly, or for a member of a threshold group through its member
    /// KEK ([`Membership::kek`]). Kinds check a KEK with this and nothing
    /// else.
    pub fn opens(&self, wrapped: &WrappedKey, kek: &Kek) -> bool {
        open_wrapped(self.slot.member.as_ref(), wrapped, kek).is_ok()
    }
}

/// `wrapped` opened with a kind's `kek`, through the member KEK for a
/// member: the backup key, or a member's share.
pub(crate) fn open_wrapped(
    member: Option<&Membership>,
    wrapped: &WrappedKey,
    kek: &Kek,
) -> Result<zeroize::Zeroizing<[u8; KEY_LEN]>, crate::key::WrongKek> {
    match member {
        None => wrapped.unwrap_secret(kek),
        Some(m) => wrapped.unwrap_secret(&m.kek(kek)),
    }
}

/// What a slot wraps: the backup key, or, for a member of a threshold
/// group, its share of the group's secret (wrapped under the member KEK,
/// [`Membership::kek`]). Enrollment and [`Slot::rewrap`] take one, so that
/// a slot of any kind can be a member.
#[derive(Clone)]
pub enum Target<'a> {
    /// The backup key: an ordinary slot.
    BackupKey(&'a BackupKey),
    /// A member's share, and where the member sits.
    Share(Share, Membership),
}

impl<'a> From<&'a BackupKey> for Target<'a> {
    fn from(bk: &'a BackupKey) -> Self {
        Target::BackupKey(bk)
    }
}

impl<'a> From<&Target<'a>> for Target<'a> {
    fn from(t: &Target<'a>) -> Self {
        t.clone()
    }
}

impl Target<'_> {
    /// The group and x of a member; `None` for the backup key.
    pub fn member(&self) -> Option<&Membership> {
        match self {
            Target::BackupKey(_) => None,
            Target::Share(_, m) => Some(m),
        }
    }

    /// The target wrapped under `kek`, a kind's KEK (through the member
    /// KEK for a share).
    pub fn wrap(&self, kek: &Kek) -> WrappedKey {
        match self {
            Target::BackupKey(bk) => bk.wrap(kek),
            Target::Share(share, m) => WrappedKey::wrap(share.expose(), &m.kek(kek)),
        }
    }

    /// A new slot record of `params` wrapping the target under `kek`, a
    /// member of its group when the target is a share.
    pub fn record(&self, params: SlotParams, kek: &Kek) -> SlotRecord {
        let mut r = SlotRecord::new(params, self.wrap(kek));
        r.member = self.member().cloned();
        r
    }
}

/// How much a slot needs from a person, which orders the attempts: slots
/// that need nobody first, then present hardware, then prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Interaction {
    /// Needs nobody: a TPM without PIN, or a factor supplied from a file.
    Unattended,
    /// Needs a device (and perhaps a PIN).
    Device,
    /// Needs a person to type a secret.
    Prompt,
}

impl Interaction {
    /// For a slot whose factor is typed: none needed if it is at hand,
    /// else a prompt.
    pub fn typed(at_hand: bool) -> Self {
        if at_hand {
            Interaction::Unattended
        } else {
            Interaction::Prompt
        }
    }
}

/// A slot's new content after [`Slot::rewrap`]: new parameters when the
/// kind needs them (a new ephemeral key, a new vault record), and the new
/// target wrapped. Id, label, creation time and membership stay.
#[derive(Debug)]
pub struct Rewrapped {
    /// The new parameters, or `None` to keep them.
    pub params: Option<SlotParams>,
    /// `AES-KW(KEK, new BK)`.
    pub wrapped: WrappedKey,
}

/// [`Slot::rewrap`]'s default: prove the factor on `wrapped` and wrap
/// `target` under the same KEK, parameters unchanged.
pub(crate) fn rewrap_under_the_same_kek<S: Slot + ?Sized>(
    slot: &S,
    wrapped: &WrappedKey,
    target: &Target<'_>,
    ctx: &UnlockContext<'_>,
) -> Option<Result<Rewrapped, SlotError>> {
    Some(slot.kek(wrapped, ctx)?.map(|kek| Rewrapped {
        params: None,
        wrapped: target.wrap(&kek),
    }))
}

/// What `slot` (tried as `ctx` says) opens: [`Slot::kek`], then the
/// wrapped secret — the backup key, or a member's share.
pub(crate) fn open_slot(
    kind: &dyn Slot,
    ctx: &UnlockContext<'_>,
) -> Option<Result<zeroize::Zeroizing<[u8; KEY_LEN]>, SlotError>> {
    let wrapped = &ctx.slot.wrapped;
    Some(kind.kek(wrapped, ctx)?.and_then(|kek| {
        open_wrapped(ctx.slot.member.as_ref(), wrapped, &kek).map_err(|_| SlotError::Malformed {
            field: "wrapped".into(),
            reason: "the slot's KEK does not open it".into(),
        })
    }))
}

/// What the trust rule may do with a slot of this kind read from an
/// archive header alone (see [`mod@unlock`]).
pub enum HeaderOnly {
    /// Inert: trying it loads nothing and contacts nothing; it costs this
    /// much Argon2id work (KiB-passes; 0 for none).
    Inert {
        /// Argon2id work, KiB-passes.
        kdf_work: u64,
    },
    /// Tried only after a yes to "this will `what`", and then with these
    /// parameters (module path, URL from local trust; no PIN source).
    Confirm {
        /// What trying it will load or contact, strings escaped.
        what: String,
        /// The slot's parameters with locally trusted locators.
        local: SlotParams,
    },
    /// Never tried, for this reason.
    Refuse(String),
}

/// One kind of slot's behaviour, implemented by its parameters.
pub trait Slot {
    /// Which secret this slot's factor is, if a person supplies one.
    fn factor(&self) -> Option<FactorKind>;

    /// How much this slot needs from a person, given whether its factor is
    /// at hand already.
    fn interaction(&self, factor_at_hand: bool) -> Interaction;

    /// Whether a wrong factor costs something that does not come back (a
    /// vault guess): such slots are tried after every other and get an
    /// unbound password only when chosen.
    fn spends_a_guess(&self) -> bool {
        false
    }

    /// The KEK that opens `wrapped`, from the factor.
    ///
    /// `None`: not tried (the factor is not at hand and cannot be asked
    /// for). `Some(Err)`: tried and failed. `Some(Ok)`: a KEK that unwraps
    /// `wrapped` (the kind checked it, and said what a KEK that does not
    /// means: a wrong factor, or an altered slot).
    fn kek(&self, wrapped: &WrappedKey, ctx: &UnlockContext<'_>) -> Option<Result<Kek, SlotError>>;

    /// Wrap `target` into this slot in place of `wrapped`. The default
    /// proves the factor on `wrapped` ([`Slot::kek`]) and wraps `target`
    /// under the same KEK; public-key kinds override it to need no device
    /// and no PIN.
    fn rewrap(
        &self,
        wrapped: &WrappedKey,
        target: &Target<'_>,
        ctx: &UnlockContext<'_>,
    ) -> Option<Result<Rewrapped, SlotError>> {
        rewrap_under_the_same_kek(self, wrapped, target, ctx)
    }

    /// Whether [`Slot::rewrap`] needs the factor (or device); `false` for
    /// public-key kinds.
    fn rewrap_needs_factor(&self) -> bool {
        true
    }

    /// Whether this slot, read from an archive header, names only what
    /// `local` (a slot of the owner's keyring) names — the same module and
    /// token, card key or pinned server — and differs from it only in data
    /// that device or server checks (an ephemeral key, a record at that
    /// server). Such a header slot is trusted as `local` is: after `rotate`
    /// or `--replace` of the same device, older archives carry exactly
    /// such copies. The default: only a slot equal member for member.
    fn same_device(&self, _local: &SlotParams) -> bool {
        false
    }

    /// What the trust rule may do with this slot read from a header alone.
    fn header_only(&self, locators: &Locators) -> HeaderOnly;

    /// Whether the machine holding the device could open this slot with no
    /// person present (a TPM without PIN): `export --seal-only` leaves such
    /// slots out, since on the sealing host they would open every archive.
    fn opens_unattended(&self) -> bool {
        self.interaction(false) == Interaction::Unattended
    }

    /// Whether this slot's copy in an archive header rests on classical
    /// public-key cryptography, which a future quantum computer could
    /// break from the archive alone or from recorded traffic (P-256 ECDH,
    /// the vault's OPRF): `seal --pq-only` leaves such copies out.
    fn classical_public_key(&self) -> bool {
        false
    }

    /// One line of public detail for `coffer slots` (no secrets).
    fn describe(&self) -> String;
}
