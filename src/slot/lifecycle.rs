//! Re-wrapping every slot for a new backup key: what `coffer rotate` is
//! built on, through the one slot interface ([`Slot::rewrap`]).
//!
//! Owns the order and the all-or-nothing rule: public-key slots and
//! threshold groups first (no device, no PIN), then slots that need their
//! factor, then vault slots (the only ones with an effect elsewhere: a new
//! record at the server), so that a slot that cannot be re-wrapped stops
//! the rotation before any server was touched. A recovery slot whose key is
//! not at hand gets a new recovery key instead. A group gets its new
//! secret from the new key and its id, and each member the new share at
//! its x ([`threshold::target_of`]).
//!
//! Must never: return a partial set of slots; drop a slot the caller did
//! not name, other than those inside a group it named; leave a group with
//! fewer members than it needs.

use super::factors::{Offer, Scope};
use super::recovery::{self, RecoveryKey};
use super::{Slot, SlotRecord, UnlockContext, UnlockOptions, threshold};
use crate::error::{Attempt, Error, UnlockFailure};
use crate::key::BackupKey;

/// The slots of a keyring after [`rewrap_all`].
pub struct Rotated {
    /// The kept slots, in their old order, each wrapping the new key (ids,
    /// labels and creation times kept).
    pub slots: Vec<SlotRecord>,
    /// Recovery slots whose key was not given: each got this new key (to
    /// show the person once, as `init` does).
    pub new_recovery_keys: Vec<(usize, RecoveryKey)>,
}

fn class(kind: &dyn Slot) -> u8 {
    if !kind.rewrap_needs_factor() {
        0
    } else if kind.spends_a_guess() {
        2
    } else {
        1
    }
}

/// Wrap `new_bk` into every slot of `slots` whose `keep` is true (and not
/// inside a group that is not), each with its own factor (from `opts`,
/// under the binding rule) or none for public-key kinds and groups. All or
/// nothing: `Err` when any kept slot can be neither re-wrapped nor
/// (recovery) issued a new key, or a kept group would have fewer members
/// than it needs, naming each with why; vault slots are re-wrapped last, so
/// that then no server was touched unless every other slot succeeded.
pub fn rewrap_all(
    slots: &[SlotRecord],
    keep: &[bool],
    new_bk: &BackupKey,
    opts: &UnlockOptions<'_>,
) -> Result<Rotated, Error> {
    let mut keep = keep.to_vec();
    for i in 0..slots.len() {
        if !keep[i] && threshold::need(&slots[i]).is_some() {
            for d in threshold::descendants(slots, i) {
                keep[d] = false;
            }
        }
    }
    let kept: Vec<usize> = (0..slots.len()).filter(|&i| keep[i]).collect();
    let scope = Scope {
        slots: kept.iter().map(|&i| &slots[i]).collect(),
        chosen: false,
    };
    let all: Vec<&SlotRecord> = slots.iter().collect();
    opts.factors.check(&all, &scope)?;
    let mut failure = UnlockFailure {
        attempts: Vec::new(),
        skipped: Vec::new(),
        refused: Vec::new(),
    };
    for &i in &kept {
        if let Some(need) = threshold::need(&slots[i]) {
            let members = threshold::members(slots, &slots[i].id);
            let left = members.iter().filter(|&&m| keep[m]).count();
            // A group still being set up (short before any was dropped) is
            // re-wrapped as it is; one that dropping makes short is refused.
            if left < usize::from(need) && members.len() >= usize::from(need) {
                failure.refused.push(format!(
                    "{}: a threshold group that needs {need} members would keep {left}; keep its members, or leave the group out too (--drop {})",
                    slots[i].name(),
                    slots[i].id
                ));
            }
        }
    }
    let mut order: Vec<usize> = Vec::new();
    for &i in &kept {
        match slots[i].params.as_slot() {
            Some(_) => order.push(i),
            None => failure.refused.push(format!(
                "{}: its kind is not supported by this build, so it cannot be re-wrapped",
                slots[i].name()
            )),
        }
    }
    if !failure.refused.is_empty() {
        // Known before any factor is asked for or any server touched.
        return Err(Error::Rewrap(failure));
    }
    order.sort_by_key(|&i| slots[i].params.as_slot().map(class).unwrap_or(0));
    let mut out: Vec<Option<SlotRecord>> = vec![None; slots.len()];
    let mut reissue: Vec<usize> = Vec::new();
    for i in order {
        let slot = &slots[i];
        let kind = slot.params.as_slot().expect("known kinds only");
        if class(kind) == 2 && !(failure.attempts.is_empty() && failure.skipped.is_empty()) {
            // Something already failed: touch no server.
            failure.skipped.push(slot.name());
            continue;
        }
        let target = match threshold::target_of(slots, i, new_bk) {
            Ok(t) => t,
            Err(error) => {
                failure.attempts.push(Attempt {
                    slot: slot.name(),
                    error,
                });
                continue;
            }
        };
        if threshold::need(slot).is_some() {
            match threshold::rewrapped(slots, i, new_bk) {
                Ok(wrapped) => {
                    let mut r = slot.clone();
                    r.wrapped = wrapped;
                    out[i] = Some(r);
                }
                Err(error) => failure.attempts.push(Attempt {
                    slot: slot.name(),
                    error,
                }),
            }
            continue;
        }
        let mut offer = opts.factors.offer(slot, &scope);
        let result = loop {
            let shared = matches!(offer, Offer::Shared(_));
            let ctx = UnlockContext::new(opts.ui, slot, opts.locators, opts.factors, offer);
            let result = kind.rewrap(&slot.wrapped, &target, &ctx);
            // A password typed for another slot did not fit this one: ask
            // for this slot's own.
            if shared
                && matches!(result, Some(Err(ref e)) if e.category() == crate::Category::WrongFactor)
            {
                offer = Offer::Ask;
                continue;
            }
            break result;
        };
        match result {
            Some(Ok(new)) => {
                let mut r = slot.clone();
                if let Some(p) = new.params {
                    r.params = p;
                }
                r.wrapped = new.wrapped;
                out[i] = Some(r);
            }
            None if slot.params.kind() == recovery::KIND => reissue.push(i),
            None => failure.skipped.push(slot.name()),
            Some(Err(error)) => failure.attempts.push(Attempt {
                slot: slot.name(),
                error,
            }),
        }
    }
    if !(failure.attempts.is_empty() && failure.skipped.is_empty() && failure.refused.is_empty()) {
        return Err(Error::Rewrap(failure));
    }
    let mut new_recovery_keys = Vec::new();
    for i in reissue {
        let key = RecoveryKey::generate();
        let mut r = slots[i].clone();
        let target = threshold::target_of(slots, i, new_bk).map_err(Error::Enroll)?;
        r.wrapped = target.wrap(&key.kek());
        r.created = super::now_unix();
        out[i] = Some(r);
        new_recovery_keys.push((i, key));
    }
    Ok(Rotated {
        slots: out.into_iter().flatten().collect(),
        new_recovery_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::{FactorKind, Factors, Locators, UNAUTHENTICATED_KDF_BUDGET, password};
    use secrecy::SecretString;

    const FAST: password::Cost = password::TEST_COST;

    fn opts<'a>(f: &'a Factors, ui: &'a dyn crate::ui::Ui, l: &'a Locators) -> UnlockOptions<'a> {
        UnlockOptions {
            selector: None,
            factors: f,
            ui,
            locators: l,
            kdf_budget: UNAUTHENTICATED_KDF_BUDGET,
        }
    }

    #[test]
    fn every_slot_wraps_the_new_key_keeping_id_label_and_time() {
        let old = BackupKey::generate();
        let (rec, key) = recovery::enroll(&old);
        let mut pw = password::enroll(&old, &SecretString::from("one".to_owned()), FAST).unwrap();
        pw.label = Some(crate::slot::Label::parse("laptop").unwrap());
        let slots = vec![rec, pw];
        let mut f = Factors::new();
        f.add(
            FactorKind::RecoveryKey,
            None,
            SecretString::from(key.display().to_string()),
        );
        f.add(
            FactorKind::Password,
            None,
            SecretString::from("one".to_owned()),
        );
        let ui = crate::ui::NonInteractive::default();
        let loc = Locators::default();
        let new = BackupKey::generate();
        let out = rewrap_all(&slots, &[true, true], &new, &opts(&f, &ui, &loc)).unwrap();
        assert!(out.new_recovery_keys.is_empty());
        assert_eq!(out.slots.len(), 2);
        for (a, b) in slots.iter().zip(&out.slots) {
            assert_eq!((&a.id, &a.label, a.created), (&b.id, &b.label, b.created));
            assert_ne!(a.wrapped, b.wrapped);
        }
        let got = crate::slot::unlock(&out.slots, Some("laptop"), &f, &ui).unwrap();
        assert_eq!(got.0.expose(), new.expose());
    }

    #[test]
    fn a_slot_without_its_factor_stops_everything_and_recovery_is_reissued() {
        let old = BackupKey::generate();
        let (rec, _) = recovery::enroll(&old);
        let pw = password::enroll(&old, &SecretString::from("one".to_owned()), FAST).unwrap();
        let slots = vec![rec, pw];
        let ui = crate::ui::NonInteractive::default();
        let loc = Locators::default();
        let new = BackupKey::generate();
        // No password: refused, naming the slot.
        let none = Factors::new();
        let Err(Error::Rewrap(f)) =
            rewrap_all(&slots, &[true, true], &new, &opts(&none, &ui, &loc))
        else {
            panic!("expected a refusal")
        };
        assert_eq!(f.skipped, vec![slots[1].name()]);
        // Dropping it, the recovery slot gets a new key that opens the new key.
        let out = rewrap_all(&slots, &[true, false], &new, &opts(&none, &ui, &loc)).unwrap();
        assert_eq!(out.slots.len(), 1);
        assert_eq!(out.slots[0].id, slots[0].id);
        let (_, key) = &out.new_recovery_keys[0];
        let f = Factors::new().with(
            FactorKind::RecoveryKey,
            SecretString::from(key.display().to_string()),
        );
        let got = crate::slot::unlock(&out.slots, None, &f, &ui).unwrap();
        assert_eq!(got.0.expose(), new.expose());
        // A wrong password: wrong factor, nothing returned.
        let wrong = Factors::new().with(FactorKind::Password, SecretString::from("two".to_owned()));
        let Err(e) = rewrap_all(&slots, &[true, true], &new, &opts(&wrong, &ui, &loc)) else {
            panic!()
        };
        assert_eq!(e.category(), crate::Category::WrongFactor);
    }
}
