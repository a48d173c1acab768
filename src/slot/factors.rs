//! Factors: the secrets a person gives (from files, or typed at a prompt),
//! and which slot each may go to.
//!
//! Owns the binding rule (DESIGN.md, "Command line"; issue 13): a factor
//! bound to a slot (`--pin-file SLOT=FILE`) goes to the slots that selector
//! names and no other; an unbound PIN goes only to the one PIN-taking slot
//! of the operation (two such slots is a usage error: a YubiKey PIN must
//! not count towards a TPM's lockout); an unbound password goes to a vault
//! slot (where a wrong one burns a guess for good) only when that slot was
//! chosen with `--slot` or no local password slot could take it. A secret
//! typed at a prompt is remembered for the rest of the run: a password for
//! every password slot (asked once, tried on each), anything else for the
//! slot it was asked for.
//!
//! Must never: show a secret in `Debug` or an error, or offer one to a slot
//! the rule above keeps it from.

use super::record::{SlotId, SlotRecord};
use crate::error::Error;
use secrecy::SecretString;
use std::fmt;
use std::sync::Mutex;

/// Which kind of secret a slot's factor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorKind {
    /// A 64-digit recovery key.
    RecoveryKey,
    /// A password (password and vault slots).
    Password,
    /// A device PIN (TPM, YubiKey, PKCS#11 token).
    Pin,
}

impl FactorKind {
    /// The command-line option that supplies it.
    pub fn option(self) -> &'static str {
        match self {
            FactorKind::RecoveryKey => "--recovery-key-file",
            FactorKind::Password => "--password-file",
            FactorKind::Pin => "--pin-file",
        }
    }

    /// Words for it in messages.
    pub fn what(self) -> &'static str {
        match self {
            FactorKind::RecoveryKey => "recovery key",
            FactorKind::Password => "password",
            FactorKind::Pin => "PIN",
        }
    }
}

struct Supplied {
    kind: FactorKind,
    /// `None`: unbound; else the `id|label|kind` it is bound to.
    slot: Option<String>,
    secret: SecretString,
}

/// What a slot's factor will be, in one operation.
pub(crate) enum Offer {
    /// This secret (supplied for it, or typed for it earlier).
    Secret(SecretString),
    /// A password typed earlier for another password slot ("asked once,
    /// tried on every password slot"); it may not be this slot's.
    Shared(SecretString),
    /// Nothing at hand: ask, if a prompt is possible.
    Ask,
    /// The slot takes no factor.
    None,
}

/// Secrets given up front (from files) and typed during this run.
#[derive(Default)]
pub struct Factors {
    supplied: Vec<Supplied>,
    /// (slot, kind, may go to other password slots, secret)
    typed: Mutex<Vec<(SlotId, FactorKind, bool, SecretString)>>,
}

impl fmt::Debug for Factors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self
            .supplied
            .iter()
            .map(|s| match &s.slot {
                Some(b) => format!("{:?} for {b}", s.kind),
                None => format!("{:?}", s.kind),
            })
            .collect();
        f.debug_struct("Factors").field("supplied", &list).finish()
    }
}

/// The slots of one operation that a factor may go to, for the binding
/// rule: each slot, and whether it was chosen by name (`--slot`).
pub(crate) struct Scope<'a> {
    pub slots: Vec<&'a SlotRecord>,
    pub chosen: bool,
}

fn takes(slot: &SlotRecord) -> Option<FactorKind> {
    slot.params.as_slot().and_then(|k| k.factor())
}

fn spends_a_guess(slot: &SlotRecord) -> bool {
    slot.params.as_slot().is_some_and(|k| k.spends_a_guess())
}

impl Factors {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a secret of `kind`, bound to the slots `slot` names (an id,
    /// label or kind) or, with `None`, unbound.
    pub fn add(&mut self, kind: FactorKind, slot: Option<String>, secret: SecretString) {
        self.supplied.push(Supplied { kind, slot, secret });
    }

    /// [`Factors::add`], unbound, for building a set in one expression.
    pub fn with(mut self, kind: FactorKind, secret: SecretString) -> Self {
        self.add(kind, None, secret);
        self
    }

    /// Take out the first unbound secret of `kind`: it is for something
    /// other than a slot (the PIN of a device being enrolled), and must
    /// then reach no slot.
    pub fn take_unbound(&mut self, kind: FactorKind) -> Option<SecretString> {
        let i = self
            .supplied
            .iter()
            .position(|s| s.kind == kind && s.slot.is_none())?;
        Some(self.supplied.remove(i).secret)
    }

    /// The secret of `kind` for `slot` outside an unlock (a dropped vault
    /// slot whose record is to be deleted), under the binding rule: one
    /// bound to it, else an unbound one if `others` (the rest of the
    /// keyring) has no slot that takes that kind of secret and spends
    /// nothing when it is wrong — an unbound password is meant for a
    /// password slot, not for a vault record.
    pub fn for_slot(
        &self,
        slot: &SlotRecord,
        kind: FactorKind,
        others: &[SlotRecord],
    ) -> Option<SecretString> {
        let bound = self
            .supplied
            .iter()
            .find(|s| s.kind == kind && s.slot.as_deref().is_some_and(|b| slot.answers_to(b)));
        if let Some(s) = bound {
            return Some(s.secret.clone());
        }
        let meant_elsewhere = others
            .iter()
            .any(|r| r.id != slot.id && takes(r) == Some(kind) && !spends_a_guess(r));
        if meant_elsewhere {
            return None;
        }
        self.supplied
            .iter()
            .find(|s| s.kind == kind && s.slot.is_none())
            .map(|s| s.secret.clone())
    }

    /// Whether any secret of `kind` was supplied.
    pub fn has(&self, kind: FactorKind) -> bool {
        self.supplied.iter().any(|s| s.kind == kind)
    }

    /// Check the supplied secrets against the slots of an operation before
    /// anything is tried: every binding names a slot that takes that kind
    /// of secret, and an unbound PIN has exactly one slot to go to.
    pub(crate) fn check(&self, all: &[&SlotRecord], scope: &Scope<'_>) -> Result<(), Error> {
        for s in &self.supplied {
            let Some(sel) = &s.slot else { continue };
            let named: Vec<&&SlotRecord> = all.iter().filter(|r| r.answers_to(sel)).collect();
            if named.is_empty() {
                return Err(Error::Usage(format!(
                    "{} {}=…: no slot has that id, label or kind (`coffer slots` lists them)",
                    s.kind.option(),
                    crate::ui::escaped(sel)
                )));
            }
            if !named.iter().any(|r| takes(r) == Some(s.kind)) {
                return Err(Error::Usage(format!(
                    "{} {}=…: that slot takes no {}",
                    s.kind.option(),
                    crate::ui::escaped(sel),
                    s.kind.what()
                )));
            }
        }
        if self
            .supplied
            .iter()
            .any(|s| s.kind == FactorKind::Pin && s.slot.is_none())
        {
            let open = self.unbound_pin_slots(scope);
            if open.len() > 1 {
                return Err(Error::Usage(format!(
                    "--pin-file is not bound to a slot, and {} slots take a PIN ({}); a wrong PIN costs a try on each, so say which: --pin-file SLOT=FILE, or --slot SLOT",
                    open.len(),
                    open.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The PIN-taking slots of `scope` that no bound PIN names.
    fn unbound_pin_slots<'a>(&self, scope: &Scope<'a>) -> Vec<&'a SlotRecord> {
        scope
            .slots
            .iter()
            .copied()
            .filter(|r| takes(r) == Some(FactorKind::Pin))
            .filter(|r| {
                !self.supplied.iter().any(|s| {
                    s.kind == FactorKind::Pin && s.slot.as_deref().is_some_and(|b| r.answers_to(b))
                })
            })
            .collect()
    }

    /// What `slot` gets, under the binding rule.
    pub(crate) fn offer(&self, slot: &SlotRecord, scope: &Scope<'_>) -> Offer {
        let Some(kind) = takes(slot) else {
            return Offer::None;
        };
        let bound = self
            .supplied
            .iter()
            .find(|s| s.kind == kind && s.slot.as_deref().is_some_and(|b| slot.answers_to(b)));
        if let Some(s) = bound {
            return Offer::Secret(s.secret.clone());
        }
        if let Some(s) = self
            .supplied
            .iter()
            .find(|s| s.kind == kind && s.slot.is_none())
        {
            let allowed = match kind {
                FactorKind::Pin => {
                    let open = self.unbound_pin_slots(scope);
                    open.len() == 1 && open[0].id == slot.id
                }
                FactorKind::Password if spends_a_guess(slot) => {
                    scope.chosen
                        || !scope
                            .slots
                            .iter()
                            .any(|r| takes(r) == Some(FactorKind::Password) && !spends_a_guess(r))
                }
                _ => true,
            };
            if allowed {
                return Offer::Secret(s.secret.clone());
            }
            // Bound elsewhere by the rule: not this slot's; a prompt may
            // still ask for its own.
        }
        let typed = self.typed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((.., s)) = typed
            .iter()
            .find(|(id, k, ..)| *id == slot.id && *k == kind)
        {
            return Offer::Secret(s.clone());
        }
        if kind == FactorKind::Password
            && !spends_a_guess(slot)
            && let Some((.., s)) = typed
                .iter()
                .find(|(_, k, shared, _)| *k == FactorKind::Password && *shared)
        {
            return Offer::Shared(s.clone());
        }
        Offer::Ask
    }

    /// Every unbound secret of `kind` when none is bound to `slot`, for a
    /// kind where a wrong one costs nothing (recovery keys): each is tried
    /// in turn, so that `--recovery-key-file A --recovery-key-file B` opens
    /// two members of a group without naming them.
    pub(crate) fn unbound_for(&self, slot: &SlotRecord, kind: FactorKind) -> Vec<SecretString> {
        let bound = self
            .supplied
            .iter()
            .any(|s| s.kind == kind && s.slot.as_deref().is_some_and(|b| slot.answers_to(b)));
        if bound {
            return Vec::new();
        }
        self.supplied
            .iter()
            .filter(|s| s.kind == kind && s.slot.is_none())
            .map(|s| s.secret.clone())
            .collect()
    }

    /// Remember a secret typed at a prompt for `slot`, for the rest of the
    /// run (see the module docs for where it goes).
    pub(crate) fn remember(&self, slot: &SlotRecord, kind: FactorKind, secret: &SecretString) {
        let mut typed = self.typed.lock().unwrap_or_else(|e| e.into_inner());
        // A password typed for a vault slot is that slot's alone.
        let shared = kind == FactorKind::Password && !spends_a_guess(slot);
        let id = slot.id.clone();
        typed.retain(|(i, k, ..)| !(*i == id && *k == kind));
        typed.push((id, kind, shared, secret.clone()));
    }
}
