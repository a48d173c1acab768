//! Threshold groups: a slot that opens with `need` of its members
//! (docs/format.md §10).
//!
//! A group's slot holds `need` and `next_x`, and wraps its target (the
//! backup key, or its own share when it is itself a member) under the
//! group's secret `K_g`. `K_g` and the polynomial that splits it come from
//! the backup key and the group's id ([`crate::shamir`]), so a member can
//! be added whenever the key is unlocked, without touching the others.
//! Each member is an ordinary slot of any kind whose KEK wraps its share
//! under a member KEK ([`super::Membership::kek`]); it opens nothing alone.
//!
//! Owns: the group's parameters, making a group and its members' targets,
//! and questions about the tree of groups in a flat slot list (members,
//! descendants, whether a group can open, whether it opens with no person
//! present, leaving slots out). Opening a group is [`mod@super::unlock`]'s,
//! re-wrapping it [`super::lifecycle`]'s.
//!
//! Must never: reuse a member's x within a group; count a member that
//! cannot be judged as one that needs a person.

use super::{
    FactorKind, HeaderOnly, Interaction, Locators, Membership, Slot, SlotParams, SlotRecord,
    Target, UnlockContext,
};
use crate::error::SlotError;
use crate::key::{BackupKey, Kek, WrappedKey};
use crate::shamir::{self, Polynomial, Share};
use serde::{Deserialize, Serialize};

/// The kind name in the keyring.
pub const KIND: &str = "threshold";

/// Public parameters of a threshold group. Its members are stored nested
/// in it (`members`) and read into the flat list ([`super::record`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "Stored")]
pub struct ThresholdParams {
    /// How many members open the group (1–255).
    pub need: u8,
    /// The x the next member gets (1–256; 256: the group has used every x
    /// and takes no more members).
    pub next_x: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    need: u8,
    next_x: u16,
}

impl TryFrom<Stored> for ThresholdParams {
    type Error = String;
    fn try_from(s: Stored) -> Result<Self, String> {
        if s.need == 0 {
            return Err("field `need` is 0; a group needs at least one member to open".into());
        }
        if !(1..=256).contains(&s.next_x) {
            return Err(format!("field `next_x` is {}, not 1 to 256", s.next_x));
        }
        Ok(Self {
            need: s.need,
            next_x: s.next_x,
        })
    }
}

impl ThresholdParams {
    /// The group's polynomial under `bk` for the group `id`.
    fn polynomial(&self, bk: &BackupKey, id: &super::SlotId) -> Polynomial {
        Polynomial::derive(bk, id.as_str(), usize::from(self.need))
            .expect("need is 1 to 255, checked when read")
    }
}

/// The group's KEK: its secret `K_g`.
fn group_kek(poly: &Polynomial) -> Kek {
    Kek::from_bytes(*poly.secret().expose())
}

/// A new group that opens with `need` members, wrapping `target` (the
/// backup key, or a share of an enclosing group) under its secret. It has
/// no members yet: add them with [`add_member`].
pub fn enroll(bk: &BackupKey, target: &Target<'_>, need: u8) -> Result<SlotRecord, SlotError> {
    if need == 0 {
        return Err(SlotError::Usage(
            "--need 0: a group needs at least one member to open".into(),
        ));
    }
    let params = ThresholdParams { need, next_x: 1 };
    let mut record = target.record(SlotParams::Threshold(params.clone()), &Kek::generate());
    let poly = params.polynomial(bk, &record.id);
    record.wrapped = target.wrap(&group_kek(&poly));
    Ok(record)
}

/// Take the next x of `group` (a threshold slot) for a new member: the
/// target its slot wraps. `group.next_x` moves on, so the x is never
/// given again.
pub fn add_member(bk: &BackupKey, group: &mut SlotRecord) -> Result<Target<'static>, SlotError> {
    let id = group.id.clone();
    let SlotParams::Threshold(p) = &mut group.params else {
        return Err(SlotError::Usage(format!(
            "--group {}: that slot is not a threshold group",
            group.name()
        )));
    };
    let Ok(x) = u8::try_from(p.next_x) else {
        return Err(SlotError::Usage(format!(
            "group {} has given out all {} member places; make a new group",
            group.name(),
            shamir::MAX_MEMBERS
        )));
    };
    p.next_x += 1;
    let share = p.polynomial(bk, &id).share(x).expect("x is 1 to 255");
    Ok(Target::Share(share, Membership { group: id, x }))
}

/// What the slot at `i` of `slots` wraps under the backup key `bk`: the key
/// itself, or its share of its group (which must be in `slots`).
pub fn target_of<'a>(
    slots: &[SlotRecord],
    i: usize,
    bk: &'a BackupKey,
) -> Result<Target<'a>, SlotError> {
    let Some(m) = &slots[i].member else {
        return Ok(Target::BackupKey(bk));
    };
    let group = slots.iter().find(|s| s.id == m.group);
    let Some(SlotParams::Threshold(p)) = group.map(|g| &g.params) else {
        return Err(SlotError::Malformed {
            field: "x".into(),
            reason: format!(
                "slot {} is a member of group {}, which is missing",
                slots[i].name(),
                m.group
            ),
        });
    };
    let share = p
        .polynomial(bk, &m.group)
        .share(m.x)
        .expect("x is 1 to 255");
    Ok(Target::Share(share, m.clone()))
}

/// The group at `i` wrapping its target for `bk`: its `wrapped` under its
/// secret derived from `bk` (for `rotate`).
pub fn rewrapped(slots: &[SlotRecord], i: usize, bk: &BackupKey) -> Result<WrappedKey, SlotError> {
    let SlotParams::Threshold(p) = &slots[i].params else {
        return Err(SlotError::Usage(format!(
            "slot {} is not a group",
            slots[i].name()
        )));
    };
    let target = target_of(slots, i, bk)?;
    Ok(target.wrap(&group_kek(&p.polynomial(bk, &slots[i].id))))
}

/// The group's secret from `need` shares of its members, as the KEK its
/// `wrapped` opens with; `None` with too few or clashing shares.
pub(crate) fn kek_from_shares(shares: &[Share], need: u8) -> Option<Kek> {
    shamir::combine(shares, usize::from(need))
        .ok()
        .map(|s| Kek::from_bytes(*s.expose()))
}

/// The indices of the direct members of the slot `id` in `slots`.
pub fn members(slots: &[SlotRecord], id: &super::SlotId) -> Vec<usize> {
    (0..slots.len())
        .filter(|&i| slots[i].member.as_ref().is_some_and(|m| m.group == *id))
        .collect()
}

/// The indices of every slot inside the group at `i` (members, their
/// members, …), in list order.
pub fn descendants(slots: &[SlotRecord], i: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut queue = vec![i];
    while let Some(g) = queue.pop() {
        for m in members(slots, &slots[g].id) {
            if !out.contains(&m) {
                out.push(m);
                queue.push(m);
            }
        }
    }
    out.sort_unstable();
    out
}

/// How many groups the slot at `i` is inside (0: not a member), following
/// its group, that group's group, and so on (at most
/// [`super::record::MAX_GROUP_DEPTH`] steps, a missing group ending it).
pub fn depth(slots: &[SlotRecord], i: usize) -> usize {
    let mut depth = 0;
    let mut at = &slots[i];
    while let Some(m) = &at.member
        && depth < super::record::MAX_GROUP_DEPTH
    {
        depth += 1;
        match slots.iter().find(|s| s.id == m.group) {
            Some(g) => at = g,
            None => break,
        }
    }
    depth
}

/// The group's `need`, if the slot at `i` is a group.
pub fn need(slot: &SlotRecord) -> Option<u8> {
    match &slot.params {
        SlotParams::Threshold(p) => Some(p.need),
        _ => None,
    }
}

/// Whether the slot at `i` can open at all as far as the list shows: a
/// group with at least `need` members that can; any other slot.
pub fn complete(slots: &[SlotRecord], i: usize) -> bool {
    match need(&slots[i]) {
        None => true,
        Some(k) => {
            members(slots, &slots[i].id)
                .into_iter()
                .filter(|&m| complete(slots, m))
                .count()
                >= usize::from(k)
        }
    }
}

/// Whether the machine holding the devices could open the slot at `i` with
/// no person present, counting only the slots `keep` marks: for a group,
/// whether `need` of its kept members could; a member of a kind this build
/// does not know counts as one that could (it cannot be judged).
pub fn opens_unattended(slots: &[SlotRecord], keep: &[bool], i: usize) -> bool {
    match need(&slots[i]) {
        None => slots[i]
            .params
            .as_slot()
            .is_none_or(|k| k.opens_unattended()),
        Some(k) => {
            members(slots, &slots[i].id)
                .into_iter()
                .filter(|&m| keep[m] && opens_unattended(slots, keep, m))
                .count()
                >= usize::from(k)
        }
    }
}

/// Why the slot at an index of a list goes, given which slots stay so far
/// (for [`prune`]); `None` to keep it.
pub type LeaveOut<'a> = &'a dyn Fn(&[SlotRecord], &[bool], usize) -> Option<String>;

/// `slots` with some left out, for a copy elsewhere (an archive header, a
/// seal-only keyring). `leave_out(slots, keep, i)` says why the slot at
/// `i` goes, or `None`; it sees a group after its members were judged
/// (`keep`). A group left with fewer than `need` members goes too, and
/// everything inside a group that goes. Returns the kept slots, in order,
/// and each slot left out with why (not those inside a group left out).
pub fn prune(
    slots: &[SlotRecord],
    leave_out: LeaveOut<'_>,
) -> (Vec<SlotRecord>, Vec<(String, String)>) {
    fn visit(
        slots: &[SlotRecord],
        i: usize,
        keep: &mut [bool],
        out: &mut Vec<(usize, String)>,
        leave_out: LeaveOut<'_>,
    ) {
        if let Some(k) = need(&slots[i]) {
            let ms = members(slots, &slots[i].id);
            for &m in &ms {
                visit(slots, m, keep, out, leave_out);
            }
            let left = ms.iter().filter(|&&m| keep[m]).count();
            if left < usize::from(k) {
                out.push((
                    i,
                    format!(
                        "it needs {k} members and {left} would be left{}",
                        if ms.len() > left {
                            " (the others are left out)"
                        } else {
                            ""
                        }
                    ),
                ));
                keep[i] = false;
                return;
            }
        }
        if let Some(why) = leave_out(slots, keep, i) {
            out.push((i, why));
            keep[i] = false;
        }
    }
    let mut keep = vec![true; slots.len()];
    let mut out = Vec::new();
    for i in 0..slots.len() {
        if slots[i].member.is_none() {
            visit(slots, i, &mut keep, &mut out, leave_out);
        }
    }
    // Everything inside a group that goes, goes; and what it said about
    // those is moot.
    for i in 0..slots.len() {
        if !keep[i] && need(&slots[i]).is_some() {
            for d in descendants(slots, i) {
                keep[d] = false;
                out.retain(|(j, _)| *j != d);
            }
        }
    }
    out.sort_by_key(|(i, _)| *i);
    let kept = slots
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(s, _)| s.clone())
        .collect();
    let out = out
        .into_iter()
        .map(|(i, why)| (slots[i].name(), why))
        .collect();
    (kept, out)
}

impl Slot for ThresholdParams {
    fn factor(&self) -> Option<FactorKind> {
        None
    }

    /// A group's cost is its members' ([`mod@super::unlock`] weighs them).
    fn interaction(&self, _at_hand: bool) -> Interaction {
        Interaction::Prompt
    }

    /// A group opens through its members ([`mod@super::unlock`]); it has no
    /// KEK of its own to give.
    fn kek(&self, _: &WrappedKey, _: &UnlockContext<'_>) -> Option<Result<Kek, SlotError>> {
        Some(Err(SlotError::Usage(
            "a threshold group opens through its members".into(),
        )))
    }

    fn rewrap_needs_factor(&self) -> bool {
        false
    }

    /// Judged by its members ([`opens_unattended`]).
    fn opens_unattended(&self) -> bool {
        false
    }

    /// Trying a group is trying its members, each judged on its own.
    fn header_only(&self, _: &Locators) -> HeaderOnly {
        HeaderOnly::Inert { kdf_work: 0 }
    }

    fn describe(&self) -> String {
        format!("opens with {} of its members", self.need)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::{FactorKind, Factors, password, recovery};
    use secrecy::SecretString;

    const FAST: password::Cost = password::TEST_COST;

    fn pw(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    /// A 2-of-3 group of passwords "a", "b", "c" and a recovery slot.
    fn two_of_three(bk: &BackupKey) -> Vec<SlotRecord> {
        let (rec, _) = recovery::enroll(bk);
        let mut g = enroll(bk, &Target::from(bk), 2).unwrap();
        let mut slots = vec![rec];
        let mut ms = Vec::new();
        for p in ["a", "b", "c"] {
            let t = add_member(bk, &mut g).unwrap();
            ms.push(password::enroll(&t, &pw(p), FAST).unwrap());
        }
        slots.push(g);
        slots.extend(ms);
        slots
    }

    #[test]
    fn members_get_increasing_x_and_their_shares_open_the_group() {
        let bk = BackupKey::generate();
        let slots = two_of_three(&bk);
        let xs: Vec<u8> = slots[2..]
            .iter()
            .map(|s| s.member.as_ref().unwrap().x)
            .collect();
        assert_eq!(xs, [1, 2, 3]);
        assert_eq!(need(&slots[1]), Some(2));
        let SlotParams::Threshold(p) = &slots[1].params else {
            panic!()
        };
        assert_eq!(p.next_x, 4);
        // Each member's wrapped share, under its member KEK, is the share.
        let poly = p.polynomial(&bk, &slots[1].id);
        let shares: Vec<Share> = [2, 4]
            .iter()
            .map(|&i| {
                let m = slots[i].member.as_ref().unwrap();
                poly.share(m.x).unwrap()
            })
            .collect();
        let kek = kek_from_shares(&shares, 2).unwrap();
        assert_eq!(slots[1].wrapped.unwrap(&kek).unwrap().expose(), bk.expose());
        assert!(complete(&slots, 1));
    }

    #[test]
    fn a_member_never_opens_as_an_ordinary_slot() {
        let bk = BackupKey::generate();
        let slots = two_of_three(&bk);
        let SlotParams::Password(p) = &slots[2].params else {
            panic!()
        };
        // The password's own KEK does not open the member's wrapped key:
        // only the member KEK does, and what it opens is a share.
        let kek = p.derive_kek(&pw("a")).unwrap();
        assert!(slots[2].wrapped.unwrap(&kek).is_err());
        let m = slots[2].member.as_ref().unwrap();
        let share = slots[2].wrapped.unwrap(&m.kek(&kek)).unwrap();
        assert_ne!(share.expose(), bk.expose());
    }

    #[test]
    fn the_x_of_a_group_runs_out_after_255_members() {
        let bk = BackupKey::generate();
        let mut g = enroll(&bk, &Target::from(&bk), 1).unwrap();
        for _ in 0..255 {
            add_member(&bk, &mut g).unwrap();
        }
        let err = add_member(&bk, &mut g).err().unwrap();
        assert!(err.to_string().contains("255"), "{err}");
    }

    #[test]
    fn prune_drops_a_group_left_short_with_everything_inside() {
        let bk = BackupKey::generate();
        let slots = two_of_three(&bk);
        let drop_ab = |s: &[SlotRecord], _: &[bool], i: usize| {
            (s[i].member.as_ref().is_some_and(|m| m.x <= 2)).then(|| "test".to_owned())
        };
        let (kept, out) = prune(&slots, &drop_ab);
        assert_eq!(kept.len(), 1, "only the recovery slot");
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].1.contains("needs 2 members and 1"), "{out:?}");
        let drop_a = |s: &[SlotRecord], _: &[bool], i: usize| {
            (s[i].member.as_ref().is_some_and(|m| m.x == 1)).then(|| "test".to_owned())
        };
        let (kept, out) = prune(&slots, &drop_a);
        assert_eq!(kept.len(), 4);
        assert_eq!(out, vec![(slots[2].name(), "test".to_owned())]);
    }

    /// A group needing `k` of `n` recovery members (and nothing else), and
    /// the members' keys.
    fn recovery_group(
        bk: &BackupKey,
        k: u8,
        n: usize,
    ) -> (Vec<SlotRecord>, Vec<recovery::RecoveryKey>) {
        let mut g = enroll(bk, &Target::from(bk), k).unwrap();
        let mut members = Vec::new();
        let mut keys = Vec::new();
        for _ in 0..n {
            let t = add_member(bk, &mut g).unwrap();
            let (r, key) = recovery::enroll(&t);
            members.push(r);
            keys.push(key);
        }
        let mut slots = vec![g];
        slots.extend(members);
        (slots, keys)
    }

    /// The recovery keys of the members `which` (indices), bound to them.
    fn bound(slots: &[SlotRecord], keys: &[recovery::RecoveryKey], which: &[usize]) -> Factors {
        let mut f = Factors::new();
        for &i in which {
            f.add(
                FactorKind::RecoveryKey,
                Some(slots[i + 1].id.to_string()),
                SecretString::from(keys[i].display().to_string()),
            );
        }
        f
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Any `k` members open the group; `k − 1` do not, and the secret
        /// their shares make as if `k − 1` were enough does not open its
        /// wrapped key either (nothing to check against).
        #[test]
        fn any_k_members_open_and_k_minus_one_reveal_nothing(
            n in 1usize..6,
            k_seed in 0usize..6,
            pick in proptest::sample::subsequence((0..6).collect::<Vec<usize>>(), 0..6),
        ) {
            let k = 1 + k_seed % n;
            let bk = BackupKey::generate();
            let (slots, keys) = recovery_group(&bk, k as u8, n);
            let which: Vec<usize> = pick.into_iter().filter(|&i| i < n).collect();
            let ui = crate::ui::NonInteractive::default();
            let f = bound(&slots, &keys, &which);
            let got = crate::slot::unlock(&slots, None, &f, &ui);
            if which.len() >= k {
                let (key, used) = got.unwrap();
                proptest::prop_assert_eq!(key.expose(), bk.expose());
                proptest::prop_assert_eq!(&used.id, &slots[0].id);
            } else {
                let Err(crate::Error::Unlock(fail)) = got else {
                    return Err(proptest::test_runner::TestCaseError::fail("opened short"));
                };
                proptest::prop_assert_eq!(fail.category(), crate::Category::NoUsableSlot);
                if !which.is_empty() {
                    let SlotParams::Threshold(p) = &slots[0].params else { unreachable!() };
                    let poly = p.polynomial(&bk, &slots[0].id);
                    let shares: Vec<Share> = which
                        .iter()
                        .map(|&i| poly.share(slots[i + 1].member.as_ref().unwrap().x).unwrap())
                        .collect();
                    let kek = kek_from_shares(&shares, which.len() as u8).unwrap();
                    proptest::prop_assert!(slots[0].wrapped.unwrap(&kek).is_err());
                }
            }
        }
    }

    #[test]
    fn a_member_is_never_tried_alone() {
        let bk = BackupKey::generate();
        let (slots, keys) = recovery_group(&bk, 2, 3);
        let ui = crate::ui::NonInteractive::default();
        // Named alone: a usage error, before anything is tried.
        let f = bound(&slots, &keys, &[0]);
        let err = crate::slot::unlock(&slots, Some(slots[1].id.as_str()), &f, &ui)
            .err()
            .unwrap();
        assert_eq!(err.category(), crate::Category::Usage, "{err}");
        assert!(err.to_string().contains("name the group"), "{err}");
        // By kind: the only recovery slots are members.
        let err = crate::slot::unlock(&slots, Some("recovery"), &f, &ui)
            .err()
            .unwrap();
        assert_eq!(err.category(), crate::Category::Usage, "{err}");
        // The group by its id opens with two.
        let f = bound(&slots, &keys, &[0, 2]);
        let (key, _) = crate::slot::unlock(&slots, Some(slots[0].id.as_str()), &f, &ui).unwrap();
        assert_eq!(key.expose(), bk.expose());
    }

    #[test]
    fn a_short_group_names_each_member_and_why_and_a_wrong_factor_is_still_exit_5() {
        let bk = BackupKey::generate();
        let (slots, keys) = recovery_group(&bk, 2, 3);
        let ui = crate::ui::NonInteractive::default();
        let mut f = bound(&slots, &keys, &[0]);
        // Member 2 gets member 3's key: a wrong factor for it.
        f.add(
            FactorKind::RecoveryKey,
            Some(slots[2].id.to_string()),
            SecretString::from(keys[2].display().to_string()),
        );
        let Err(crate::Error::Unlock(fail)) = crate::slot::unlock(&slots, None, &f, &ui) else {
            panic!("opened")
        };
        assert_eq!(fail.category(), crate::Category::NoUsableSlot);
        let text = fail.to_string();
        assert!(
            text.contains("1 of the 2 members it needs opened"),
            "{text}"
        );
        assert!(
            text.contains(&format!("member {}: wrong recovery key", slots[2].name())),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "member {}: not tried (no factor given)",
                slots[3].name()
            )),
            "{text}"
        );
    }

    #[test]
    fn nested_groups_open_through_their_members() {
        let bk = BackupKey::generate();
        // outer: 2 of {recovery A, inner: 1 of {password B, password C}}.
        let mut outer = enroll(&bk, &Target::from(&bk), 2).unwrap();
        let (a, key_a) = recovery::enroll(add_member(&bk, &mut outer).unwrap());
        let mut inner = enroll(&bk, &add_member(&bk, &mut outer).unwrap(), 1).unwrap();
        let b = password::enroll(add_member(&bk, &mut inner).unwrap(), &pw("b"), FAST).unwrap();
        let mut c = password::enroll(add_member(&bk, &mut inner).unwrap(), &pw("c"), FAST).unwrap();
        c.label = Some(crate::slot::Label::parse("c").unwrap());
        let slots = vec![outer, a, inner, b, c];
        let ui = crate::ui::NonInteractive::default();
        let mut f = Factors::new();
        f.add(
            FactorKind::RecoveryKey,
            None,
            SecretString::from(key_a.display().to_string()),
        );
        f.add(FactorKind::Password, Some("c".into()), pw("c"));
        let (key, used) = crate::slot::unlock(&slots, None, &f, &ui).unwrap();
        assert_eq!(key.expose(), bk.expose());
        assert_eq!(used.id, slots[0].id);
        // The stored form nests them and reads back the same.
        let json = crate::slot::record::slots_to_json(&slots);
        assert_eq!(json.len(), 1);
        assert_eq!(json[0]["members"][1]["members"][1]["label"], "c");
        let back = crate::slot::record::slots_from_json(&json, true).unwrap();
        assert_eq!(back, slots);
        // Without the recovery key, the inner group alone is not enough.
        let mut only_c = Factors::new();
        only_c.add(FactorKind::Password, Some("c".into()), pw("c"));
        assert!(crate::slot::unlock(&slots, None, &only_c, &ui).is_err());
    }

    #[test]
    fn rotation_gives_every_member_its_new_share() {
        use crate::slot::{Locators, UNAUTHENTICATED_KDF_BUDGET, UnlockOptions, lifecycle};
        let old = BackupKey::generate();
        let (slots, keys) = recovery_group(&old, 2, 3);
        let mut f = bound(&slots, &keys, &[0, 1, 2]);
        let ui = crate::ui::NonInteractive::default();
        let loc = Locators::default();
        fn opts<'a>(
            f: &'a Factors,
            ui: &'a dyn crate::ui::Ui,
            loc: &'a Locators,
        ) -> UnlockOptions<'a> {
            UnlockOptions {
                selector: None,
                factors: f,
                ui,
                locators: loc,
                kdf_budget: UNAUTHENTICATED_KDF_BUDGET,
            }
        }
        let new = BackupKey::generate();
        let out = lifecycle::rewrap_all(&slots, &[true; 4], &new, &opts(&f, &ui, &loc)).unwrap();
        assert!(out.new_recovery_keys.is_empty());
        let two = bound(&out.slots, &keys, &[1, 2]);
        let (key, _) = crate::slot::unlock(&out.slots, None, &two, &ui).unwrap();
        assert_eq!(key.expose(), new.expose());
        // Dropping two of three members would leave the group short.
        let Err(crate::Error::Rewrap(fail)) = lifecycle::rewrap_all(
            &slots,
            &[true, true, false, false],
            &new,
            &opts(&f, &ui, &loc),
        ) else {
            panic!("rotated a short group")
        };
        assert!(
            fail.refused[0].contains("needs 2 members would keep 1"),
            "{fail:?}"
        );
        // Dropping the group drops its members, and needs none of their keys.
        let (rec, _) = recovery::enroll(&old);
        let mut with_rec = vec![rec];
        with_rec.extend(slots.clone());
        f = Factors::new();
        let out = lifecycle::rewrap_all(
            &with_rec,
            &[true, false, true, true, true],
            &new,
            &opts(&f, &ui, &loc),
        )
        .unwrap();
        assert_eq!(out.slots.len(), 1);
    }

    /// A Ui that answers each password prompt by the slot it names, and
    /// records every prompt.
    struct Typist(Vec<(String, &'static str)>, std::sync::Mutex<Vec<String>>);

    impl crate::ui::Ui for Typist {
        fn message(&self, _: &str) {}
        fn request_secret(&self, prompt: &str) -> Option<SecretString> {
            self.1.lock().unwrap().push(prompt.to_owned());
            self.0
                .iter()
                .find(|(id, _)| prompt.contains(id.as_str()))
                .map(|(_, pw)| SecretString::from((*pw).to_owned()))
        }
        fn confirm(&self, _: &str) -> bool {
            false
        }
    }

    /// Two password members, typed at prompts: the first password is tried
    /// on the second member (asked once, tried on each), and when it does
    /// not fit, the second member's own is asked for.
    #[test]
    fn each_password_member_is_asked_for_its_own() {
        let bk = BackupKey::generate();
        let mut g = enroll(&bk, &Target::from(&bk), 2).unwrap();
        let a = password::enroll(add_member(&bk, &mut g).unwrap(), &pw("a"), FAST).unwrap();
        let b = password::enroll(add_member(&bk, &mut g).unwrap(), &pw("b"), FAST).unwrap();
        let ui = Typist(
            vec![(a.id.to_string(), "a"), (b.id.to_string(), "b")],
            Default::default(),
        );
        let slots = vec![g, a, b];
        let (key, _) = crate::slot::unlock(&slots, None, &Factors::new(), &ui).unwrap();
        assert_eq!(key.expose(), bk.expose());
        assert_eq!(ui.1.lock().unwrap().len(), 2);
    }

    /// Several unbound recovery keys: each is tried on each recovery member.
    #[test]
    fn unbound_recovery_keys_each_find_their_member() {
        let bk = BackupKey::generate();
        let (slots, keys) = recovery_group(&bk, 2, 3);
        let f = Factors::new()
            .with(
                FactorKind::RecoveryKey,
                SecretString::from(keys[2].display().to_string()),
            )
            .with(
                FactorKind::RecoveryKey,
                SecretString::from(keys[0].display().to_string()),
            );
        let ui = crate::ui::NonInteractive::default();
        let (key, _) = crate::slot::unlock(&slots, None, &f, &ui).unwrap();
        assert_eq!(key.expose(), bk.expose());
    }

    /// A group that cannot open any more asks nothing more: fewer members
    /// than it needs, or too few left after one failed.
    #[test]
    fn a_group_that_cannot_open_asks_nobody() {
        let bk = BackupKey::generate();
        let (mut slots, _) = recovery_group(&bk, 3, 3);
        let ui = Typist(Vec::new(), Default::default());
        // 3 of 3, the first member's key wrong: the others are not asked.
        let (_, other) = recovery::enroll(&bk);
        let mut f = Factors::new();
        f.add(
            FactorKind::RecoveryKey,
            Some(slots[1].id.to_string()),
            SecretString::from(other.display().to_string()),
        );
        let Err(crate::Error::Unlock(fail)) = crate::slot::unlock(&slots, None, &f, &ui) else {
            panic!("opened")
        };
        assert!(ui.1.lock().unwrap().is_empty(), "{:?}", ui.1.lock());
        assert!(
            fail.to_string().contains("the group could no longer open"),
            "{fail}"
        );
        // Two members of three needed: nothing is tried at all.
        slots.pop();
        let Err(crate::Error::Unlock(fail)) = crate::slot::unlock(&slots, None, &f, &ui) else {
            panic!("opened")
        };
        assert!(ui.1.lock().unwrap().is_empty());
        assert!(
            fail.to_string().contains("has 2 member(s) and needs 3"),
            "{fail}"
        );
    }

    /// From a header alone, password members share the Argon2id budget;
    /// naming the group with `--slot` lets its members past it, and the
    /// refusal says to do that.
    #[test]
    fn naming_a_group_lets_its_password_members_past_the_budget() {
        use crate::slot::{Locators, UnlockOptions, archive_candidates};
        let bk = BackupKey::generate();
        let mut g = enroll(&bk, &Target::from(&bk), 2).unwrap();
        let a = password::enroll(add_member(&bk, &mut g).unwrap(), &pw("p"), FAST).unwrap();
        let b = password::enroll(add_member(&bk, &mut g).unwrap(), &pw("p"), FAST).unwrap();
        let gid = g.id.to_string();
        let header = vec![g, a, b];
        let cands = archive_candidates(&[], false, &header);
        let f = Factors::new().with(FactorKind::Password, pw("p"));
        let ui = crate::ui::NonInteractive::default();
        let loc = Locators::default();
        let opts = |selector| UnlockOptions {
            selector,
            factors: &f,
            ui: &ui,
            locators: &loc,
            kdf_budget: 100, // one member's 64 KiB-passes, not two
        };
        let Err(crate::Error::Unlock(fail)) = crate::slot::unlock_with(&cands, &opts(None)) else {
            panic!("opened past the budget")
        };
        let text = fail.to_string();
        assert!(
            text.contains(&format!("name its group alone with --slot {gid}")),
            "{text}"
        );
        let (key, _) = crate::slot::unlock_with(&cands, &opts(Some(&gid))).unwrap();
        assert_eq!(key.expose(), bk.expose());
    }

    /// `--slot GROUP` chooses the group, not its vault member: an unbound
    /// password goes to the password member, never to the vault.
    #[cfg(feature = "vault")]
    #[test]
    fn naming_a_group_sends_no_unbound_password_to_its_vault_member() {
        use crate::key::Kek;
        use base64::Engine as _;
        let bk = BackupKey::generate();
        let mut g = enroll(&bk, &Target::from(&bk), 2).unwrap();
        let a = password::enroll(add_member(&bk, &mut g).unwrap(), &pw("p"), FAST).unwrap();
        let t = add_member(&bk, &mut g).unwrap();
        let v = t.record(
            SlotParams::Vault(crate::slot::vault::VaultParams {
                url: "http://127.0.0.1:1".into(),
                user: "00".repeat(16),
                server_key: base64::engine::general_purpose::STANDARD.encode([0u8; 32]),
                ca: None,
            }),
            &Kek::generate(),
        );
        let gid = g.id.to_string();
        let slots = vec![g, a, v];
        let f = Factors::new().with(FactorKind::Password, pw("p"));
        let ui = crate::ui::NonInteractive::default();
        let Err(crate::Error::Unlock(fail)) = crate::slot::unlock(&slots, Some(&gid), &f, &ui)
        else {
            panic!("opened")
        };
        let text = fail.to_string();
        assert!(
            text.contains(&format!("{}: not tried (no factor given)", slots[2].name())),
            "{text}"
        );
    }

    /// A rotation that would leave a group short stops before any factor is
    /// proved (no Argon2id run for the password slot beside it).
    #[test]
    fn a_short_group_stops_rotation_before_anything_is_tried() {
        use crate::slot::{Locators, UNAUTHENTICATED_KDF_BUDGET, UnlockOptions, lifecycle};
        let bk = BackupKey::generate();
        let (group, keys) = recovery_group(&bk, 2, 2);
        let mut slots = vec![password::enroll(&bk, &pw("p"), FAST).unwrap()];
        slots.extend(group);
        let f = bound(&slots[1..], &keys, &[0, 1]).with(FactorKind::Password, pw("p"));
        let ui = crate::ui::NonInteractive::default();
        let loc = Locators::default();
        let opts = UnlockOptions {
            selector: None,
            factors: &f,
            ui: &ui,
            locators: &loc,
            kdf_budget: UNAUTHENTICATED_KDF_BUDGET,
        };
        let before = password::work_done_on_this_thread();
        let new = BackupKey::generate();
        let Err(crate::Error::Rewrap(fail)) =
            lifecycle::rewrap_all(&slots, &[true, true, true, false], &new, &opts)
        else {
            panic!("rotated")
        };
        assert!(fail.refused[0].contains("would keep 1"), "{fail:?}");
        assert_eq!(password::work_done_on_this_thread(), before);
        // A group still being set up (one member of two) is re-wrapped.
        let f = bound(&slots[1..], &keys, &[0]).with(FactorKind::Password, pw("p"));
        let opts = UnlockOptions {
            factors: &f,
            ..opts
        };
        let out = lifecycle::rewrap_all(&slots[..3], &[true; 3], &new, &opts).unwrap();
        assert_eq!(out.slots.len(), 3);
    }

    /// No removal or replacement may leave a keyring that nothing opens.
    #[test]
    fn nothing_may_leave_the_keyring_without_a_slot_that_opens() {
        let bk = BackupKey::generate();
        let (mut slots, _) = recovery_group(&bk, 2, 2);
        let (rec, _) = recovery::enroll(&bk);
        slots.insert(0, rec);
        let mut kr = crate::keyring::Keyring::new(&bk, slots);
        // The group alone would be left: allowed (it opens).
        let removed = kr.remove_slot(&bk, 0, true).unwrap();
        assert_eq!(removed.len(), 1);
        // A member: the group would be short, and nothing else opens.
        let err = kr.remove_slot(&bk, 1, false).err().unwrap();
        assert!(
            err.to_string().contains("nothing could unlock it again"),
            "{err}"
        );
        // Replacing a member by a slot of another group it is not in: the
        // same; replacing it by a member of the group is fine.
        let mut stranger = kr.slots[1].clone();
        stranger.member = None;
        stranger.params = SlotParams::Threshold(ThresholdParams { need: 1, next_x: 1 });
        let err = kr.replace_slot(&bk, Some(1), stranger).err().unwrap();
        assert!(
            err.to_string().contains("nothing could unlock it again"),
            "{err}"
        );
        assert_eq!(kr.slots.len(), 3);
    }

    /// A keyring not yet upgraded to version 2 takes no group (it would be
    /// written in a layout that holds none), and a pre-release version 2
    /// one that holds a group is refused when read.
    #[test]
    fn a_version_1_keyring_takes_no_group() {
        let bk = BackupKey::generate();
        let (slots, _) = recovery_group(&bk, 1, 1);
        let (rec, _) = recovery::enroll(&bk);
        let mut kr = crate::keyring::Keyring::v1(&bk, vec![rec.clone()]);
        let err = kr.add_slot(&bk, slots[0].clone()).err().unwrap();
        assert!(err.to_string().contains("format version 2"), "{err}");
        let mut json: serde_json::Value = serde_json::from_slice(&kr.to_bytes()).unwrap();
        json["version"] = 2.into();
        json["slots"] = serde_json::Value::Array(crate::slot::record::slots_to_json(&slots));
        let err = crate::keyring::Keyring::parse(
            &serde_json::to_vec(&json).unwrap(),
            std::path::Path::new("k"),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("needs format version 2"), "{err}");
    }

    /// Stored lists that break §10.1's rules are refused, naming where.
    #[test]
    fn hostile_slot_lists_are_refused() {
        use crate::slot::record::slots_from_json;
        use serde_json::{Value, json};
        let bk = BackupKey::generate();
        let (slots, _) = recovery_group(&bk, 2, 3);
        let good = crate::slot::record::slots_to_json(&slots);
        assert!(slots_from_json(&good, true).is_ok());
        let bad = |edit: &dyn Fn(&mut Vec<Value>), says: &str| {
            let mut list = good.clone();
            edit(&mut list);
            let err = slots_from_json(&list, true).unwrap_err();
            assert!(err.contains(says), "{says:?} not in {err:?}");
        };
        bad(
            &|l| l[0]["members"][1]["x"] = json!(1),
            "two members of group",
        );
        bad(
            &|l| l[0]["members"][1]["x"] = json!(4),
            "not below its group's next_x",
        );
        bad(
            &|l| l[0]["members"][1]["x"] = json!(0),
            "field `x` is not an integer",
        );
        bad(
            &|l| l[0]["members"][1]["x"] = json!(256),
            "field `x` is not an integer",
        );
        bad(
            &|l| {
                l[0]["members"][1].as_object_mut().unwrap().remove("x");
            },
            "field `x` is missing",
        );
        bad(
            &|l| {
                l[0].as_object_mut().unwrap().remove("members");
            },
            "field `members` is missing",
        );
        bad(&|l| l[0]["members"] = json!({}), "is not an array");
        bad(
            &|l| {
                let mut m = l[0]["members"][0].clone();
                m.as_object_mut().unwrap().remove("x");
                l.push(m);
            },
            "appears twice",
        );
        bad(
            &|l| {
                let mut m = l[0]["members"][0].clone();
                m["id"] = json!("other");
                l.push(m);
            },
            "only for a member of a group",
        );
        // No other kind takes members, known or not.
        for kind in ["recovery", "future-kind"] {
            bad(
                &|l| {
                    let mut m = l[0]["members"][0].clone();
                    m["id"] = json!("other");
                    m["kind"] = json!(kind);
                    m.as_object_mut().unwrap().remove("x");
                    m["members"] = json!("hi");
                    l.push(m);
                },
                "field `members` is only for a threshold group",
            );
        }
        // Format version 1 has no groups.
        assert!(
            slots_from_json(&good, false)
                .unwrap_err()
                .contains("version 2")
        );
        // Four deep: a group in a group in a group in a group.
        let mut deep = json!({"id": "g4", "kind": "threshold", "created": 0, "need": 1, "next_x": 1,
            "wrapped": good[0]["wrapped"].clone(), "members": []});
        for d in (1..4).rev() {
            let mut inner = deep.clone();
            inner["x"] = json!(1);
            deep = json!({"id": format!("g{d}"), "kind": "threshold", "created": 0, "need": 1, "next_x": 2,
                "wrapped": good[0]["wrapped"].clone(), "members": [inner]});
        }
        let err = slots_from_json(&[deep.clone()], true).unwrap_err();
        assert!(err.contains("nested more than 3 deep"), "{err}");
        // Three deep is allowed.
        let three = deep["members"][0].clone();
        let mut three = three;
        three.as_object_mut().unwrap().remove("x");
        assert!(slots_from_json(&[three], true).is_ok());
        // More than 64 slot objects, members included.
        let mut many = good.clone();
        let member = many[0]["members"][0].clone();
        many[0]["next_x"] = json!(256);
        many[0]["members"] = Value::Array(
            (1..=64)
                .map(|x| {
                    let mut m = member.clone();
                    m["id"] = json!(format!("m{x}"));
                    m["x"] = json!(x);
                    m
                })
                .collect(),
        );
        assert!(
            slots_from_json(&many, true)
                .unwrap_err()
                .contains("more than 64")
        );
    }

    #[test]
    fn params_are_checked_when_read() {
        use serde_json::json;
        let read = |v| serde_json::from_value::<ThresholdParams>(v);
        assert!(read(json!({"need": 2, "next_x": 3})).is_ok());
        assert!(read(json!({"need": 0, "next_x": 3})).is_err());
        assert!(read(json!({"need": 2, "next_x": 0})).is_err());
        assert!(read(json!({"need": 2, "next_x": 257})).is_err());
        assert!(read(json!({"need": 256, "next_x": 3})).is_err());
        assert!(read(json!({"need": 2, "next_x": 3, "extra": 1})).is_err());
    }
}
