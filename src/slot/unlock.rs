//! Unlocking: which slots to try, in which order, and the trust rule for
//! slots read from unauthenticated data.
//!
//! Owns the trust rule (DESIGN.md; enforced in [`unlock_with`] and nowhere
//! else): a slot read from an archive header is tried only if it is inert
//! (recovery; password within [`UNAUTHENTICATED_KDF_BUDGET`] in all),
//! matches a slot of the owner's keyring member for member
//! ([`archive_candidates`]), or was confirmed through [`Ui::confirm`] — and
//! then with module paths and URLs from [`Locators`], never from the
//! header, and no PIN or PIN source from it. Each kind says what trying it
//! would mean ([`super::Slot::header_only`]).
//!
//! Also owns opening a threshold group: its members are asked in the same
//! order as any slots (nobody needed first), each under the same rule,
//! until the group has the shares it needs; a group left short is one
//! failed slot whatever its members said (exit 5), naming each member
//! that did not open and why. A member is never tried on its own.

use super::factors::{Factors, Offer, Scope};
use super::record::{Selection, SlotId, SlotRecord, select};
use super::{HeaderOnly, Interaction, SlotParams, UnlockContext, password, threshold};
use crate::error::{Attempt, Error, SlotError, UnlockFailure};
use crate::key::{BackupKey, KEY_LEN};
use crate::shamir::Share;
use crate::ui::Ui;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// Where a slot record was read from, which decides what may be done with
/// it (DESIGN.md, "Trust rule for unauthenticated data").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The owner's own keyring file, or an archive header slot that matches
    /// one of its slots member for member: trusted for the code and
    /// endpoints it names even before the keyring's MAC is checked
    /// (whoever can write that file can already run code as its owner).
    Local,
    /// An archive header, or a keyring read from anywhere else:
    /// attacker-writable until the backup key authenticates it.
    Unauthenticated,
}

/// One slot offered to [`unlock_with`], and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'s> {
    /// The slot as read.
    pub record: &'s SlotRecord,
    /// Where it was read from.
    pub trust: Trust,
}

/// The slots to try for an archive, each with its [`Trust`]: the owner's
/// keyring slots when `keyring_holds_key` (the keyring holds the archive's
/// key), then the header's. A header slot whose id the keyring's slots
/// already use is dropped when they are tried (the keyring's copy wins), and
/// so is every header slot inside such a group or naming such a group as
/// its own (the keyring's group keeps its own members); one
/// whose parameters equal a keyring slot's member for member is
/// [`Trust::Local`] (it names only what the owner's keyring names); every
/// other header slot is [`Trust::Unauthenticated`].
pub fn archive_candidates<'s>(
    keyring: &'s [SlotRecord],
    keyring_holds_key: bool,
    header: &'s [SlotRecord],
) -> Vec<Candidate<'s>> {
    let mut out: Vec<Candidate<'s>> = Vec::new();
    if keyring_holds_key {
        out.extend(keyring.iter().map(|record| Candidate {
            record,
            trust: Trust::Local,
        }));
    }
    let mut dropped: Vec<&SlotId> = Vec::new();
    for record in header {
        let replaced = |id: &SlotId| {
            keyring_holds_key && (keyring.iter().any(|k| k.id == *id) || dropped.contains(&id))
        };
        if replaced(&record.id) || record.member.as_ref().is_some_and(|m| replaced(&m.group)) {
            dropped.push(&record.id);
            continue;
        }
        let local = |k: &SlotRecord| {
            k.params == record.params
                || record
                    .params
                    .as_slot()
                    .is_some_and(|s| s.same_device(&k.params))
        };
        let trust = if keyring.iter().any(local) {
            Trust::Local
        } else {
            Trust::Unauthenticated
        };
        out.push(Candidate { record, trust });
    }
    out
}

/// Names of code and endpoints that come from local trust (options, the
/// environment): what a confirmed header-only slot uses instead of what
/// its header names.
#[derive(Debug, Clone, Default)]
pub struct Locators {
    /// The PKCS#11 module for header-only pkcs11 slots (`--pkcs11-module`;
    /// else `$COFFER_PKCS11_MODULE`).
    pub pkcs11_module: Option<std::path::PathBuf>,
    /// The vault server for header-only vault slots (`--vault-url`).
    pub vault_url: Option<String>,
    /// The TPM for every tpm2 slot (`--tcti`).
    pub tcti: Option<String>,
    /// The TPM when `--tcti` names none: what the binary found in
    /// `$TPM2TOOLS_TCTI` or `$TCTI`; before the TCTI a slot of the owner's
    /// keyring was enrolled with.
    pub tcti_default: Option<String>,
    /// The FIDO2 key for fido2 slots (`--fido2-device`, else
    /// `$COFFER_FIDO2_DEVICE`): a hidraw node or `unix:PATH`; `None`: every
    /// FIDO2 key plugged in.
    pub fido2_device: Option<String>,
}

/// Total Argon2id work (KiB-passes, [`password::Cost::work`]) one unlock
/// spends on unauthenticated password slots: twice the default cost. A
/// costlier slot is tried only when it is in the local keyring or named
/// by id with `--slot`.
pub const UNAUTHENTICATED_KDF_BUDGET: u64 =
    2 * password::DEFAULT_M_COST_KIB as u64 * password::DEFAULT_T_COST as u64;

/// What an unlock may use besides the slots.
pub struct UnlockOptions<'a> {
    /// `--slot`: an id or a kind.
    pub selector: Option<&'a str>,
    /// Secrets supplied up front.
    pub factors: &'a Factors,
    /// Messages, prompts and confirmations.
    pub ui: &'a dyn Ui,
    /// Locally trusted module paths and URLs.
    pub locators: &'a Locators,
    /// Total Argon2id work for unauthenticated password slots
    /// ([`UNAUTHENTICATED_KDF_BUDGET`] unless a test lowers it).
    pub kdf_budget: u64,
}

/// The slots `selector` names (id, label or kind), or all, leaving out
/// members of groups (they open only with their group), and whether one
/// slot was named alone.
fn chosen<'c, 's>(
    slots: &'c [Candidate<'s>],
    selector: Option<&str>,
) -> Result<(Vec<&'c Candidate<'s>>, bool), Error> {
    let alone = |c: &&Candidate<'s>| c.record.member.is_none();
    let Some(sel) = selector else {
        return Ok((slots.iter().filter(alone).collect(), false));
    };
    let records: Vec<SlotRecord> = slots.iter().map(|c| c.record.clone()).collect();
    let shown = crate::ui::escaped(sel);
    match select(&records, sel, "--slot").map_err(Error::Usage)? {
        Selection::One(i) => match &slots[i].record.member {
            Some(m) => Err(Error::Usage(format!(
                "--slot {shown}: slot {} is a member of threshold group {}, and opens only with its group: name the group",
                slots[i].record.name(),
                m.group
            ))),
            None => Ok((vec![&slots[i]], true)),
        },
        Selection::Kind(v) => {
            let chosen: Vec<_> = v.into_iter().map(|i| &slots[i]).filter(alone).collect();
            if chosen.is_empty() {
                return Err(Error::Usage(format!(
                    "--slot {shown}: every slot of that kind is a member of a threshold group, and opens only with its group: name the group"
                )));
            }
            Ok((chosen, false))
        }
    }
}

/// The direct members of the group `id` among `all`.
fn inside<'c, 's>(all: &'c [Candidate<'s>], id: &SlotId) -> Vec<&'c Candidate<'s>> {
    all.iter()
        .filter(|c| c.record.member.as_ref().is_some_and(|m| m.group == *id))
        .collect()
}

/// The slots the binding rule weighs an unbound factor against: the
/// owner's own (trusted) slots among those chosen and inside the groups
/// chosen, or, when there are none, all of those — so that slots a header
/// adds can neither take an unbound PIN from the owner's slot nor make it
/// ambiguous.
fn scope<'s>(all: &[Candidate<'s>], chosen: &[&Candidate<'s>], by_name: bool) -> Scope<'s> {
    let mut every: Vec<&Candidate<'s>> = chosen.to_vec();
    let mut i = 0;
    while i < every.len() {
        if threshold::need(every[i].record).is_some() {
            every.extend(inside(all, &every[i].record.id));
        }
        i += 1;
    }
    let chosen = every;
    let local: Vec<&'s SlotRecord> = chosen
        .iter()
        .filter(|c| c.trust == Trust::Local)
        .map(|c| c.record)
        .collect();
    Scope {
        slots: if local.is_empty() {
            chosen.iter().map(|c| c.record).collect()
        } else {
            local
        },
        chosen: by_name,
    }
}

/// Order the chosen slots: those that need nobody first, then devices,
/// then prompts. Stable: keyring order within each class; among equals, a
/// slot where a wrong factor spends a guess for good (vault) goes after
/// every slot whose failure costs nothing, and the recovery key goes last
/// (it is the factor of last resort, kept in a drawer) unless it was
/// supplied. A group costs what the cheapest `need` of its members cost
/// together: as much as the dearest of them.
fn order(
    chosen: &mut [&Candidate<'_>],
    all: &[Candidate<'_>],
    factors: &Factors,
    scope: &Scope<'_>,
) {
    chosen.sort_by_key(|c| cost(c.record, all, factors, scope));
}

fn cost(
    s: &SlotRecord,
    all: &[Candidate<'_>],
    factors: &Factors,
    scope: &Scope<'_>,
) -> (Interaction, bool, bool) {
    if let Some(need) = threshold::need(s) {
        let mut costs: Vec<_> = inside(all, &s.id)
            .iter()
            .map(|m| cost(m.record, all, factors, scope))
            .collect();
        costs.sort();
        return costs.get(usize::from(need) - 1).copied().unwrap_or((
            Interaction::Prompt,
            true,
            true,
        ));
    }
    let Some(kind) = s.params.as_slot() else {
        return (Interaction::Prompt, false, false);
    };
    let at_hand = matches!(factors.offer(s, scope), Offer::Secret(_) | Offer::Shared(_));
    let recovery = s.params.kind() == super::recovery::KIND;
    (
        kind.interaction(at_hand),
        kind.spends_a_guess() && !recovery,
        recovery,
    )
}

/// Try `slots` (all from the owner's keyring) in order until one gives up
/// the backup key.
///
/// Returns the key and the slot that opened it. The caller must then check
/// the key id and MAC of whatever the slots came from.
pub fn unlock<'s>(
    slots: &'s [SlotRecord],
    selector: Option<&str>,
    factors: &Factors,
    ui: &dyn Ui,
) -> Result<(BackupKey, &'s SlotRecord), Error> {
    let candidates = archive_candidates(slots, true, &[]);
    let opts = UnlockOptions {
        selector,
        factors,
        ui,
        locators: &Locators::default(),
        kdf_budget: UNAUTHENTICATED_KDF_BUDGET,
    };
    unlock_with(&candidates, &opts)
}

/// What the trust rule allows for one unauthenticated slot.
enum Admission {
    /// Try it with these parameters (locators replaced by local ones).
    Try(Box<SlotRecord>),
    /// Try it as read (an inert slot).
    AsRead,
    /// Do not try it, for this reason.
    Refuse(String),
}

/// Words for a slot read from an archive header alone.
const HEADER_ONLY: &str = "from the archive header only, which is not authenticated yet";

/// The trust rule for one slot from unauthenticated data, in one place: an
/// inert slot (recovery; password within the remaining KDF budget, or named
/// alone by id or label) is tried as read; any other kind only after the
/// person confirmed, at a prompt showing what will be loaded or contacted,
/// and then with the module path or URL from local trust and never a PIN
/// or PIN source from the header.
fn admit(
    record: &SlotRecord,
    kind: &dyn super::Slot,
    named_alone: bool,
    budget_left: u64,
    opts: &UnlockOptions<'_>,
    name_it: &SlotId,
) -> Admission {
    match kind.header_only(opts.locators) {
        HeaderOnly::Inert { kdf_work } => {
            if named_alone || kdf_work <= budget_left {
                Admission::AsRead
            } else {
                Admission::Refuse(format!(
                    "{HEADER_ONLY}, and its Argon2id cost ({} MiB-passes) is more than is left of the budget for such slots ({} MiB-passes in all); name {} alone with --slot {name_it} to try it",
                    kdf_work / 1024,
                    UNAUTHENTICATED_KDF_BUDGET / 1024,
                    if record.member.is_some() {
                        "its group"
                    } else {
                        "it"
                    },
                ))
            }
        }
        HeaderOnly::Refuse(why) => Admission::Refuse(format!("{HEADER_ONLY}, and {why}")),
        HeaderOnly::Confirm { what, local } => {
            let question = format!(
                "Slot {} is {HEADER_ONLY}. Try it? This will {what}.",
                record.name()
            );
            if opts.ui.confirm(&question) {
                let mut r = record.clone();
                r.params = local;
                Admission::Try(Box::new(r))
            } else {
                Admission::Refuse(format!(
                    "{HEADER_ONLY}; trying it would {what}, and that needs a yes at a terminal prompt (none was given)"
                ))
            }
        }
    }
}

/// Whether a secret found wrong for a slot with parameters `failed` is
/// wrong for `params` too, and trying it would spend a device's try or a
/// vault's guess for nothing: the same parameters (the same TPM object or
/// vault record), or, for a PIN, the same device (the PIN is the card's or
/// token's). Slots where a wrong secret costs nothing are always tried.
fn same_check(
    kind: &dyn super::Slot,
    params: &super::SlotParams,
    failed: &super::SlotParams,
) -> bool {
    let pin = kind.factor() == Some(super::FactorKind::Pin);
    (pin || kind.spends_a_guess()) && (params == failed || (pin && kind.same_device(failed)))
}

/// Try `candidates` in order until one gives up the backup key, applying
/// the trust rule to every [`Trust::Unauthenticated`] one (see
/// [`Trust`]): the one place it is enforced. A threshold group is tried
/// through its members, `need` of which must open (module docs).
///
/// Returns the key and the slot (as read) that opened it. The caller must
/// then authenticate whatever the slots came from under that key.
pub fn unlock_with<'s>(
    candidates: &[Candidate<'s>],
    opts: &UnlockOptions<'_>,
) -> Result<(BackupKey, &'s SlotRecord), Error> {
    let mut failure = UnlockFailure {
        attempts: Vec::new(),
        skipped: Vec::new(),
        refused: Vec::new(),
    };
    let (mut chosen, named_alone) = chosen(candidates, opts.selector)?;
    // A group named with --slot chooses itself, not its members: the binding
    // rule applies to them as to slots nobody named (an unbound password
    // goes to a vault member only when no password member can take it).
    let by_name =
        opts.selector.is_some() && !chosen.iter().any(|c| threshold::need(c.record).is_some());
    let scope = scope(candidates, &chosen, by_name);
    let all: Vec<&SlotRecord> = candidates.iter().map(|c| c.record).collect();
    opts.factors.check(&all, &scope)?;
    order(&mut chosen, candidates, opts.factors, &scope);
    let mut run = Run {
        all: candidates,
        opts,
        scope,
        budget_left: opts.kdf_budget,
        wrong: Vec::new(),
    };
    for cand in chosen {
        match run.attempt(cand, named_alone) {
            Outcome::Opened(secret, typed) => {
                if typed || !failure.attempts.is_empty() {
                    opts.ui
                        .message(&format!("unlocked with slot {}", cand.record.name()));
                }
                return Ok((BackupKey::from_bytes(*secret), cand.record));
            }
            Outcome::Skipped(text, _) => failure.skipped.push(text),
            Outcome::Refused(text) => failure.refused.push(text),
            Outcome::Failed(error) => failure.attempts.push(Attempt {
                slot: cand.record.name(),
                error,
            }),
        }
    }
    Err(Error::Unlock(failure))
}

/// How one attempt on one slot ended.
enum Outcome {
    /// It opened: the backup key, or a member's share; and whether a
    /// person typed a secret for it.
    Opened(Zeroizing<[u8; KEY_LEN]>, bool),
    /// Not tried: the text for [`UnlockFailure::skipped`], and whether
    /// for want of a factor.
    Skipped(String, bool),
    /// The trust rule did not let it be tried: `name: why`.
    Refused(String),
    /// Tried, and it failed.
    Failed(SlotError),
}

/// One unlock's state, shared by every slot and member it tries.
struct Run<'a, 'c, 's> {
    all: &'c [Candidate<'s>],
    opts: &'a UnlockOptions<'a>,
    scope: Scope<'s>,
    /// What is left of the Argon2id budget for unauthenticated slots.
    budget_left: u64,
    /// Slots a supplied secret was wrong for: (its parameters, the secret).
    wrong: Vec<(SlotParams, SecretString)>,
}

impl Run<'_, '_, '_> {
    /// The outermost group the slot is in (itself if none): what `--slot`
    /// can name.
    fn outermost(&self, slot: &SlotRecord) -> SlotId {
        let mut id = slot.id.clone();
        let mut member = slot.member.clone();
        for _ in 0..super::record::MAX_GROUP_DEPTH {
            let Some(m) = member else { break };
            match self.all.iter().find(|c| c.record.id == m.group) {
                Some(g) => {
                    id = g.record.id.clone();
                    member = g.record.member.clone();
                }
                None => break,
            }
        }
        id
    }

    /// Try one slot (a group through its members). `named_alone`: it, or
    /// the group it is in, was named by id or label with `--slot`.
    fn attempt(&mut self, cand: &Candidate<'_>, named_alone: bool) -> Outcome {
        let opts = self.opts;
        let slot = cand.record;
        if let SlotParams::Threshold(p) = &slot.params {
            return self.open_group(cand, p.need, named_alone);
        }
        let Some(kind) = slot.params.as_slot() else {
            return Outcome::Skipped(
                format!("{} (kind not supported by this build)", slot.name()),
                false,
            );
        };
        let localized = match cand.trust {
            Trust::Local => None,
            Trust::Unauthenticated => {
                let name_it = self.outermost(slot);
                match admit(slot, kind, named_alone, self.budget_left, opts, &name_it) {
                    Admission::AsRead => None,
                    Admission::Try(local) => Some(local),
                    Admission::Refuse(why) => {
                        return Outcome::Refused(format!("{}: {why}", slot.name()));
                    }
                }
            }
        };
        let used = localized.as_deref().unwrap_or(slot);
        let Some(kind) = used.params.as_slot() else {
            return Outcome::Skipped(
                format!("{} (kind not supported by this build)", slot.name()),
                false,
            );
        };
        let offer = opts.factors.offer(used, &self.scope);
        let supplied = match &offer {
            Offer::Secret(s) => Some(s.clone()),
            _ => None,
        };
        if let Some(s) = &supplied
            && self.wrong.iter().any(|(p, w)| {
                w.expose_secret() == s.expose_secret() && same_check(kind, &used.params, p)
            })
        {
            // An archive may carry copies of a device or vault slot: the
            // same secret, wrong there, would spend another try for nothing.
            return Outcome::Skipped(
                format!(
                    "{} (the same {} as a slot this {} was already wrong for: not tried again)",
                    slot.name(),
                    if kind.spends_a_guess() {
                        "vault record"
                    } else {
                        "device"
                    },
                    kind.factor().map(|f| f.what()).unwrap_or("secret"),
                ),
                false,
            );
        }
        let mut typed = matches!(offer, Offer::Ask | Offer::Shared(_));
        // Several unbound recovery keys: each is tried (a wrong one costs
        // nothing), so that two members open without being named.
        let mut alternatives = match kind.factor() {
            Some(super::FactorKind::RecoveryKey) => opts
                .factors
                .unbound_for(used, super::FactorKind::RecoveryKey)
                .into_iter()
                .skip(1)
                .collect(),
            _ => Vec::new(),
        };
        let mut offer = offer;
        let result = loop {
            let shared = matches!(offer, Offer::Shared(_));
            let ctx = UnlockContext::new(opts.ui, used, opts.locators, opts.factors, offer);
            let work_before = password::work_done_on_this_thread();
            let result = super::open_slot(kind, &ctx);
            if cand.trust == Trust::Unauthenticated {
                let spent = password::work_done_on_this_thread().saturating_sub(work_before);
                self.budget_left = self.budget_left.saturating_sub(spent);
            }
            let wrong = matches!(&result, Some(Err(e)) if e.category() == crate::error::Category::WrongFactor);
            if wrong && !alternatives.is_empty() {
                offer = Offer::Secret(alternatives.remove(0));
                continue;
            }
            // A password typed for another slot did not fit this member:
            // ask for this one's own (a group needs each member's).
            if wrong && shared && slot.member.is_some() {
                offer = Offer::Ask;
                typed = true;
                continue;
            }
            break result;
        };
        match result {
            None => Outcome::Skipped(slot.name(), true),
            Some(Ok(secret)) => Outcome::Opened(secret, typed),
            Some(Err(error)) => {
                if let Some(s) = supplied
                    && error.category() == crate::error::Category::WrongFactor
                {
                    self.wrong.push((used.params.clone(), s));
                }
                Outcome::Failed(error)
            }
        }
    }

    /// Open a group: ask its members, cheapest first, until `need` gave
    /// their shares, then open the group's wrapped key with the secret
    /// they make. Short of `need`: [`SlotError::GroupShort`], naming each
    /// member that did not open and why.
    fn open_group(&mut self, cand: &Candidate<'_>, need: u8, named_alone: bool) -> Outcome {
        let group = cand.record;
        let mut members = inside(self.all, &group.id);
        order(&mut members, self.all, self.opts.factors, &self.scope);
        let n = members.len();
        let need_n = usize::from(need);
        if n < need_n {
            // Nothing is asked of a group that cannot open.
            let hint = match cand.trust {
                Trust::Local => format!(
                    ": add members with `coffer enroll KIND --group {}`",
                    group.id
                ),
                Trust::Unauthenticated => String::new(),
            };
            return Outcome::Failed(SlotError::GroupShort {
                need,
                opened: 0,
                members: vec![format!(
                    "the group has {n} member(s) and needs {need}{hint}"
                )],
            });
        }
        let mut shares: Vec<Share> = Vec::new();
        let mut kinds: Vec<&str> = Vec::new();
        let mut failed: Vec<String> = Vec::new();
        let mut typed_any = false;
        for (i, m) in members.iter().enumerate() {
            if shares.len() == need_n {
                break;
            }
            if shares.len() + (n - i) < need_n {
                // Short whatever the rest do: ask them nothing (no PIN
                // try, no vault guess, no prompt for nothing).
                for rest in &members[i..] {
                    failed.push(format!(
                        "{}: not tried (the group could no longer open)",
                        rest.record.name()
                    ));
                }
                break;
            }
            let Some(x) = m.record.member.as_ref().map(|mm| mm.x) else {
                continue;
            };
            match self.attempt(m, named_alone) {
                Outcome::Opened(secret, typed) => {
                    typed_any |= typed;
                    shares.push(Share::from_secret(x, secret));
                    kinds.push(m.record.params.kind());
                    self.opts.ui.message(&format!(
                        "group {}: {need} of {n} needed, {} opened ({})",
                        group.name(),
                        shares.len(),
                        kinds.join(", ")
                    ));
                }
                Outcome::Skipped(_, true) => {
                    failed.push(format!("{}: not tried (no factor given)", m.record.name()))
                }
                Outcome::Skipped(text, false) => failed.push(text),
                Outcome::Refused(text) => failed.push(format!("{text} (not tried)")),
                Outcome::Failed(e) => failed.push(format!("{}: {e}", m.record.name())),
            }
        }
        if shares.len() < need_n {
            return Outcome::Failed(SlotError::GroupShort {
                need,
                opened: shares.len(),
                members: failed,
            });
        }
        let opened = threshold::kek_from_shares(&shares, need)
            .and_then(|kek| super::open_wrapped(group.member.as_ref(), &group.wrapped, &kek).ok());
        match opened {
            Some(secret) => {
                for f in &failed {
                    self.opts
                        .ui
                        .message(&format!("group {}: member {f}", group.name()));
                }
                Outcome::Opened(secret, typed_any)
            }
            None => Outcome::Failed(SlotError::Malformed {
                field: "wrapped".into(),
                reason:
                    "the shares its members gave do not open it: the group or a member was altered"
                        .into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(any(feature = "vault", feature = "pkcs11"))]
    use crate::slot::SlotParams;
    #[cfg(feature = "pkcs11")]
    use crate::slot::pkcs11;
    #[cfg(feature = "vault")]
    use crate::slot::vault;
    use crate::slot::{FactorKind, SlotId, recovery};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use secrecy::SecretString;
    use serde_json::Value;

    fn pw(s: &str) -> Factors {
        Factors::new().with(FactorKind::Password, SecretString::from(s.to_owned()))
    }

    /// The order [`unlock_with`] tries `cands` in, for `selector`.
    fn ordered<'c, 's>(
        cands: &'c [Candidate<'s>],
        selector: Option<&str>,
        factors: &Factors,
    ) -> Result<Vec<&'c Candidate<'s>>, Error> {
        let (mut chosen, _) = chosen(cands, selector)?;
        let scope = scope(cands, &chosen, selector.is_some());
        order(&mut chosen, cands, factors, &scope);
        Ok(chosen)
    }
    use std::sync::Mutex;

    /// A Ui that records the prompts it was shown and answers nothing.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Ui for Recorder {
        fn message(&self, _: &str) {}
        fn request_secret(&self, prompt: &str) -> Option<SecretString> {
            self.0.lock().unwrap().push(prompt.to_owned());
            None
        }
    }

    /// A Ui that types one answer at every prompt, and records prompts and
    /// messages.
    #[derive(Default)]
    struct Types(String, Mutex<Vec<String>>, Mutex<Vec<String>>);

    impl Ui for Types {
        fn message(&self, m: &str) {
            self.2.lock().unwrap().push(m.to_owned());
        }
        fn request_secret(&self, prompt: &str) -> Option<SecretString> {
            self.1.lock().unwrap().push(prompt.to_owned());
            Some(SecretString::from(self.0.clone()))
        }
    }

    /// Two password slots with different passwords: the person is asked
    /// once, the answer is tried on both, and told which opened.
    #[test]
    fn a_typed_password_is_asked_once_and_tried_on_every_password_slot() {
        let bk = BackupKey::generate();
        let cheap = password::Cost {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let one = password::enroll(&bk, &SecretString::from("one"), cheap).unwrap();
        let two = password::enroll(&bk, &SecretString::from("two"), cheap).unwrap();
        let slots = vec![one, two];
        let ui = Types("two".into(), Mutex::default(), Mutex::default());
        let (got, used) = unlock(&slots, None, &Factors::new(), &ui).unwrap();
        assert_eq!(got.expose(), bk.expose());
        assert_eq!(used.id, slots[1].id);
        assert_eq!(ui.1.lock().unwrap().len(), 1, "asked once");
        let said = ui.2.lock().unwrap().clone();
        assert!(
            said.iter()
                .any(|m| m.contains(&format!("unlocked with slot {}", slots[1].id))),
            "{said:?}"
        );
    }

    fn slots() -> (BackupKey, Vec<SlotRecord>) {
        let (bk, slots, _) = slots_and_key();
        (bk, slots)
    }

    fn slots_and_key() -> (BackupKey, Vec<SlotRecord>, recovery::RecoveryKey) {
        let bk = BackupKey::generate();
        let (rec, key) = recovery::enroll(&bk);
        let cheap = password::Cost {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let pw = password::enroll(&bk, &SecretString::from("pw"), cheap).unwrap();
        (bk, vec![rec, pw], key)
    }

    #[test]
    fn prompts_ask_for_the_password_before_the_recovery_key() {
        let (_, slots) = slots();
        let ui = Recorder::default();
        let err = unlock(&slots, None, &Factors::default(), &ui)
            .err()
            .unwrap();
        let asked = ui.0.lock().unwrap().clone();
        assert!(asked[0].starts_with("Password"), "{asked:?}");
        assert!(asked[1].starts_with("Recovery key"), "{asked:?}");
        // Nothing was tried: exit 5, both listed as skipped.
        let Error::Unlock(f) = err else { panic!() };
        assert_eq!(f.skipped.len(), 2);
        assert_eq!(f.category(), crate::Category::NoUsableSlot);
    }

    #[test]
    fn a_supplied_factor_is_used_without_prompting() {
        let (bk, slots) = slots();
        let ui = Recorder::default();
        let factors = pw("pw");
        let (got, used) = unlock(&slots, None, &factors, &ui).unwrap();
        assert_eq!(got.expose(), bk.expose());
        assert_eq!(used.params.kind(), "password");
        assert!(ui.0.lock().unwrap().is_empty());
    }

    #[test]
    fn a_wrong_factor_falls_through_to_the_next_slot() {
        let (bk, slots, key) = slots_and_key();
        let ui = crate::ui::NonInteractive::default();
        let mut factors = pw("wrong");
        let Error::Unlock(f) = unlock(&slots, None, &factors, &ui).err().unwrap() else {
            panic!()
        };
        assert_eq!(f.category(), crate::Category::WrongFactor);
        factors.add(
            FactorKind::RecoveryKey,
            None,
            SecretString::from(key.display().to_string()),
        );
        let (got, used) = unlock(&slots, None, &factors, &ui).unwrap();
        assert_eq!(got.expose(), bk.expose());
        assert_eq!(used.params.kind(), "recovery");
    }

    #[cfg(feature = "vault")]
    #[test]
    fn vault_slots_are_tried_after_slots_whose_failure_costs_nothing() {
        let (_, mut slots, _) = slots_and_key();
        let vault = SlotRecord::new(
            SlotParams::Vault(vault::VaultParams {
                url: "http://127.0.0.1:1".into(),
                user: "00".repeat(16),
                server_key: B64.encode([0u8; 32]),
                ca: None,
            }),
            slots[0].wrapped.clone(),
        );
        slots.insert(0, vault);
        let both = pw("pw").with(FactorKind::RecoveryKey, SecretString::from("x".to_owned()));
        let cands = archive_candidates(&slots, true, &[]);
        let kinds = |f: &Factors| -> Vec<String> {
            ordered(&cands, None, f)
                .unwrap()
                .iter()
                .map(|c| c.record.params.kind().to_owned())
                .collect()
        };
        assert_eq!(kinds(&both), ["password", "recovery", "vault"]);
        let pw_only = pw("pw");
        // An unbound password does not go to the vault while a password
        // slot can take it: the vault slot would prompt, after the rest.
        assert_eq!(kinds(&pw_only), ["password", "recovery", "vault"]);
        // Bound to it, it does, and the vault comes before the prompts.
        let mut bound = Factors::new();
        bound.add(
            FactorKind::Password,
            Some("vault".into()),
            SecretString::from("pw".to_owned()),
        );
        assert_eq!(kinds(&bound), ["vault", "password", "recovery"]);
    }

    /// A Ui that answers every confirmation with `yes` and records it.
    #[cfg(feature = "pkcs11")]
    #[derive(Default)]
    struct Yes(Mutex<Vec<String>>);

    #[cfg(feature = "pkcs11")]
    impl Ui for Yes {
        fn message(&self, _: &str) {}
        fn request_secret(&self, _: &str) -> Option<SecretString> {
            None
        }
        fn confirm(&self, q: &str) -> bool {
            self.0.lock().unwrap().push(q.to_owned());
            true
        }
    }

    fn password_slot(bk: &BackupKey, m_cost_kib: u32) -> SlotRecord {
        let cost = password::Cost {
            m_cost_kib,
            t_cost: 1,
            p_cost: 1,
        };
        password::enroll(bk, &SecretString::from("right"), cost).unwrap()
    }

    fn unauthenticated(slots: &[SlotRecord]) -> Vec<Candidate<'_>> {
        archive_candidates(&[], false, slots)
    }

    fn opts<'a>(
        selector: Option<&'a str>,
        factors: &'a Factors,
        ui: &'a dyn Ui,
        locators: &'a Locators,
        kdf_budget: u64,
    ) -> UnlockOptions<'a> {
        UnlockOptions {
            selector,
            factors,
            ui,
            locators,
            kdf_budget,
        }
    }

    #[test]
    fn unauthenticated_password_slots_share_one_kdf_budget() {
        let bk = BackupKey::generate();
        // 16 slots of 256 KiB-passes each; a budget of 1000 fits 3.
        let slots: Vec<_> = (0..16).map(|_| password_slot(&bk, 256)).collect();
        let factors = pw("wrong");
        let ui = crate::ui::NonInteractive::default();
        let loc = Locators::default();
        let cands = unauthenticated(&slots);
        let before = password::work_done_on_this_thread();
        let err = unlock_with(&cands, &opts(None, &factors, &ui, &loc, 1000))
            .err()
            .unwrap();
        let spent = password::work_done_on_this_thread() - before;
        assert!(spent <= 1000, "spent {spent} KiB-passes");
        let Error::Unlock(f) = err else { panic!() };
        assert_eq!(f.attempts.len(), 3);
        assert_eq!(f.refused.len(), 13);
        assert!(f.refused[0].contains("--slot"), "{}", f.refused[0]);
        // The same slots from the owner's keyring are all tried.
        let before = password::work_done_on_this_thread();
        let local = archive_candidates(&slots, true, &[]);
        let Error::Unlock(f) = unlock_with(&local, &opts(None, &factors, &ui, &loc, 1000))
            .err()
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(f.attempts.len(), 16);
        assert_eq!(password::work_done_on_this_thread() - before, 16 * 256);
        // Named alone by id, a slot over the budget is tried.
        let id = slots[9].id.as_str().to_owned();
        let right = pw("right");
        let (got, used) = unlock_with(&cands, &opts(Some(&id), &right, &ui, &loc, 0)).unwrap();
        assert_eq!(got.expose(), bk.expose());
        assert_eq!(used.id, slots[9].id);
        // Named by kind, the budget holds.
        let Error::Unlock(f) = unlock_with(&cands, &opts(Some("password"), &right, &ui, &loc, 0))
            .err()
            .unwrap()
        else {
            panic!()
        };
        assert!(f.attempts.is_empty() && f.refused.len() == 16);
    }

    #[test]
    fn a_header_slot_matching_the_keyring_member_for_member_is_local() {
        let bk = BackupKey::generate();
        let mine = password_slot(&bk, 64);
        let mut copy = mine.clone();
        copy.id = SlotId::parse("c0ffee00").unwrap();
        let other = password_slot(&bk, 64);
        let header = [copy, other];
        let keyring = [mine];
        let c = archive_candidates(&keyring, false, &header);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].trust, Trust::Local);
        assert_eq!(c[1].trust, Trust::Unauthenticated);
        // When the keyring holds the key, its own slots come first and a
        // header slot reusing one of their ids is dropped.
        let same_id = [keyring[0].clone(), header[1].clone()];
        let c = archive_candidates(&keyring, true, &same_id);
        assert_eq!(c.len(), 2);
        assert!(std::ptr::eq(c[0].record, &keyring[0]));
        assert_eq!(c[1].trust, Trust::Unauthenticated);
    }

    /// After `rotate`, an old archive's copy of an ECDH slot differs from
    /// the keyring's only in its ephemeral key: it names the same module,
    /// token and key, so it is trusted as the keyring's is. Naming another
    /// module, it is not.
    #[cfg(feature = "pkcs11")]
    #[test]
    fn a_header_slot_for_the_same_device_is_local() {
        let mut point = [9u8; 65];
        point[0] = 4;
        let params = pkcs11::Pkcs11Params {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            uri: "pkcs11:token=t;object=k".into(),
            mechanism: pkcs11::Pkcs11Mechanism::Ecdh,
            public_key: Some(B64.encode(point)),
            ephemeral: Some(B64.encode(point)),
            sealed_kek: None,
        };
        let wrapped = crate::key::WrappedKey([1u8; 40]);
        let mine = SlotRecord::new(SlotParams::Pkcs11(params.clone()), wrapped.clone());
        let mut other_eph = point;
        other_eph[1] = 7;
        let old_copy = SlotRecord::new(
            SlotParams::Pkcs11(pkcs11::Pkcs11Params {
                ephemeral: Some(B64.encode(other_eph)),
                ..params.clone()
            }),
            wrapped.clone(),
        );
        let elsewhere = SlotRecord::new(
            SlotParams::Pkcs11(pkcs11::Pkcs11Params {
                module: "/mnt/share/evil.so".into(),
                ephemeral: Some(B64.encode(other_eph)),
                ..params
            }),
            wrapped,
        );
        let keyring = [mine];
        let header = [old_copy, elsewhere];
        let c = archive_candidates(&keyring, false, &header);
        assert_eq!(c[0].trust, Trust::Local);
        assert_eq!(c[1].trust, Trust::Unauthenticated);
    }

    #[cfg(feature = "pkcs11")]
    #[test]
    fn a_confirmed_header_pkcs11_slot_uses_the_local_module_and_no_header_pin() {
        let bk = BackupKey::generate();
        // A point on the curve: the stored fields pass their checks.
        let point = crate::ecdh::sec1(
            &p256::SecretKey::from_slice(&[9u8; 32])
                .unwrap()
                .public_key(),
        );
        let hostile = SlotRecord::new(
            SlotParams::Pkcs11(pkcs11::Pkcs11Params {
                module: "/mnt/share/evil.so".into(),
                uri: "pkcs11:token=t%1b[2J;object=k?pin-source=/home/me/.ssh/id_ed25519".into(),
                mechanism: pkcs11::Pkcs11Mechanism::Ecdh,
                public_key: Some(B64.encode(point)),
                ephemeral: Some(B64.encode(point)),
                sealed_kek: None,
            }),
            bk.wrap(&crate::key::Kek::generate()),
        );
        let slots = [hostile];
        let cands = unauthenticated(&slots);
        let factors = Factors::default();
        // Refused without a yes, and without a local module.
        let no = crate::ui::NonInteractive::default();
        let loc = Locators {
            pkcs11_module: Some("/nonexistent/local-module.so".into()),
            ..Locators::default()
        };
        let Error::Unlock(f) = unlock_with(&cands, &opts(None, &factors, &no, &loc, 0))
            .err()
            .unwrap()
        else {
            panic!()
        };
        assert!(f.attempts.is_empty(), "{f}");
        assert!(f.refused[0].contains("terminal prompt"), "{f}");
        // `--slot ID` is no yes.
        let id = slots[0].id.as_str().to_owned();
        let Error::Unlock(f) = unlock_with(&cands, &opts(Some(&id), &factors, &no, &loc, 0))
            .err()
            .unwrap()
        else {
            panic!()
        };
        assert!(f.attempts.is_empty(), "{f}");
        // With a yes: the local module, never the header's.
        let yes = Yes::default();
        let Error::Unlock(f) = unlock_with(&cands, &opts(None, &factors, &yes, &loc, 0))
            .err()
            .unwrap()
        else {
            panic!()
        };
        let asked = yes.0.lock().unwrap().clone();
        assert!(
            asked[0].contains("/nonexistent/local-module.so"),
            "{asked:?}"
        );
        assert!(
            !asked[0].contains("evil") && !asked[0].contains('\x1b'),
            "{asked:?}"
        );
        let msg = f.to_string();
        assert!(
            msg.contains("local-module.so") && !msg.contains("evil"),
            "{msg}"
        );
        // Without a local module it is not tried, even with a yes.
        let none = Locators::default();
        if std::env::var_os(pkcs11::MODULE_ENV).is_none() {
            let Error::Unlock(f) = unlock_with(&cands, &opts(None, &factors, &yes, &none, 0))
                .err()
                .unwrap()
            else {
                panic!()
            };
            assert!(f.refused[0].contains("--pkcs11-module"), "{f}");
        }
    }

    #[test]
    fn no_non_inert_header_slot_is_tried_without_a_yes() {
        use serde_json::json;
        let common = |kind: &str, id: &str| json!({"id": id, "kind": kind, "created": 0, "wrapped": B64.encode([1u8; 40])});
        #[cfg_attr(
            not(any(
                feature = "tpm2",
                feature = "yubikey",
                feature = "vault",
                feature = "pkcs11",
                feature = "fido2"
            )),
            allow(unused_mut)
        )]
        let mut objs: Vec<Value> = vec![common("future-kind", "a5")];
        #[cfg(feature = "tpm2")]
        {
            let mut o = common("tpm2", "a1");
            o["public"] = "AA==".into();
            o["private"] = "AA==".into();
            o["pin"] = false.into();
            objs.push(o);
        }
        #[cfg(feature = "yubikey")]
        {
            let mut o = common("yubikey", "a2");
            o["serial"] = 1.into();
            o["piv_slot"] = "82".into();
            o["public_key"] = "AA==".into();
            o["ephemeral"] = "AA==".into();
            o["pin_policy"] = "once".into();
            o["touch_policy"] = "never".into();
            objs.push(o);
        }
        #[cfg(feature = "fido2")]
        {
            let mut o = common("fido2", "a6");
            o["rp_id"] = "coffer".into();
            o["credential"] = B64.encode([3u8; 64]).into();
            o["public_key"] = B64
                .encode(crate::ecdh::sec1(
                    &p256::SecretKey::from_slice(&[5u8; 32])
                        .unwrap()
                        .public_key(),
                ))
                .into();
            o["salt"] = B64.encode([4u8; 32]).into();
            o["pin"] = true.into();
            o["up"] = true.into();
            o["uv"] = false.into();
            o["discoverable"] = false.into();
            objs.push(o);
        }
        #[cfg(feature = "vault")]
        {
            let mut o = common("vault", "a3");
            o["url"] = "http://127.0.0.1:9".into();
            o["user"] = "ab".repeat(16).into();
            o["server_key"] = B64.encode([5u8; 32]).into();
            objs.push(o);
        }
        #[cfg(feature = "pkcs11")]
        {
            let mut o = common("pkcs11", "a4");
            o["module"] = "/mnt/share/evil.so".into();
            o["uri"] = "pkcs11:token=t;object=k?pin-value=1".into();
            o["mechanism"] = "aes-gcm".into();
            o["sealed_kek"] = B64.encode([0u8; 60]).into();
            objs.push(o);
        }
        let slots: Vec<SlotRecord> = objs
            .iter()
            .map(|o| SlotRecord::from_json(o, false).unwrap())
            .collect();
        let cands = unauthenticated(&slots);
        let factors = pw("pw").with(FactorKind::Pin, SecretString::from("1234".to_owned()));
        let loc = Locators {
            pkcs11_module: Some("/nonexistent/module.so".into()),
            vault_url: Some("http://127.0.0.1:9".into()),
            tcti: Some("swtpm:host=127.0.0.1,port=9".into()),
            tcti_default: None,
            fido2_device: Some("unix:/nonexistent/key.sock".into()),
        };
        let ui = crate::ui::NonInteractive::default();
        for sel in [
            None,
            Some("a1"),
            Some("a2"),
            Some("a3"),
            Some("a4"),
            Some("a6"),
        ] {
            let Ok(chosen) = ordered(&cands, sel, &factors) else {
                continue; // a kind this build leaves out
            };
            let n = chosen.len();
            let f = match unlock_with(&cands, &opts(sel, &factors, &ui, &loc, 0)).err() {
                Some(Error::Unlock(f)) => f,
                // An unbound PIN and two slots that take one: refused
                // before anything is tried.
                Some(Error::Usage(m)) if sel.is_none() => {
                    assert!(m.contains("--pin-file"), "{m}");
                    continue;
                }
                other => panic!("{sel:?}: {other:?}"),
            };
            assert!(f.attempts.is_empty(), "{sel:?}: {f}");
            assert_eq!(f.refused.len() + f.skipped.len(), n, "{sel:?}: {f}");
        }
    }
}
