//! An archive header's slot list through the trust rule: parse the header,
//! then unlock with its slots as unauthenticated ones, non-interactively,
//! with a password and a recovery key at hand and a small Argon2 budget.
//! Whatever the slots say, this must not panic, must not spend more Argon2
//! work than the budget, and (with no one to confirm) tries no slot that
//! would load code or contact a server.
#![no_main]

use coffer::slot::{self, FactorKind, Factors, Locators, UnlockOptions};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

/// KiB-passes: a few tiny Argon2 runs per input, no more.
const BUDGET: u64 = 256;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = coffer::archive::Header::read(&mut &data[..]) else {
        return;
    };
    let candidates = slot::archive_candidates(&[], false, &header.slots);
    let factors = Factors::new()
        .with(FactorKind::Password, SecretString::from("fuzz"))
        .with(FactorKind::RecoveryKey, SecretString::from("0".repeat(64)))
        .with(FactorKind::Pin, SecretString::from("0000"));
    let ui = coffer::ui::NonInteractive::default();
    let before = slot::password::work_done_on_this_thread();
    let _ = slot::unlock_with(
        &candidates,
        &UnlockOptions {
            selector: None,
            factors: &factors,
            ui: &ui,
            locators: &Locators::default(),
            kdf_budget: BUDGET,
        },
    );
    assert!(slot::password::work_done_on_this_thread() - before <= BUDGET);
    for s in &header.slots {
        if let Some(k) = s.params.as_slot() {
            let _ = coffer::ui::escaped(&k.describe());
        }
    }
});
