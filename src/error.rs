//! Errors, one enum per area, each variant something a person can act on,
//! and the [`Category`] of each: what kind of failure it is. Which exit
//! status a category is belongs to the binary (`src/main.rs`, DESIGN.md's
//! contract), not to the library.
//!
//! Must never: carry secret material in a message.

use std::fmt;
use std::path::PathBuf;

/// What kind of failure an error is: what a caller (the command line, a
/// backup tool embedding the library) decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Any other failure (I/O, refused operation).
    Other,
    /// Bad arguments.
    Usage,
    /// Wrong password, PIN or recovery key.
    WrongFactor,
    /// Archive or keyring corrupt or tampered with, or a slot's stored
    /// parameters hostile.
    Corrupt,
    /// No slot could be used (device absent, locked out, nothing supplied).
    NoUsableSlot,
    /// Done, but some paths were skipped or changed while being read.
    Incomplete,
}

/// Why one slot failed to give up the backup key.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The recovery key is not the one for this slot.
    #[error("wrong recovery key{}", hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    WrongRecoveryKey {
        /// Which digit looks mistyped, when that can be told.
        hint: Option<String>,
    },
    /// The password is not the one for this slot.
    #[error("wrong password")]
    WrongPassword,
    /// The vault server answered, and the password was wrong.
    #[error(
        "wrong vault password ({guesses_left} guesses left before the vault record is destroyed)"
    )]
    WrongVaultPassword {
        /// Guesses the server will still answer.
        guesses_left: u32,
    },
    /// The PIN was refused.
    #[error("wrong PIN{}", tries_left.map(|n| format!(" ({n} tries left)")).unwrap_or_default())]
    WrongPin {
        /// Tries left before the device locks, when it tells.
        tries_left: Option<u32>,
    },
    /// The device this slot needs is not there.
    #[error("{what} not found: {hint}")]
    DeviceNotFound {
        /// The device looked for.
        what: String,
        /// What to do about it.
        hint: String,
    },
    /// The device refuses further attempts for now, or for good.
    #[error("{what} is locked: {hint}")]
    LockedOut {
        /// The device or record that is locked.
        what: String,
        /// How long, and what to do.
        hint: String,
    },
    /// The device works but will not release the key in this state
    /// (e.g. PCRs differ from enrollment).
    #[error("{0}")]
    PolicyRefused(String),
    /// The slot's stored parameters are malformed or hostile.
    #[error("slot field `{field}` is invalid: {reason}")]
    Malformed {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The device failed in a way not listed above.
    #[error("{0}")]
    Device(String),
    /// What the caller gave cannot be used: an empty new password or PIN,
    /// a PIN that is needed and was not given (a usage error, exit 2).
    #[error("{0}")]
    Usage(String),
    /// A threshold group had fewer members open than it needs. Whatever
    /// its members' failures, the group is simply not usable (exit 5).
    #[error("{opened} of the {need} members it needs opened{}", members.iter().map(|m| format!("\n      member {m}")).collect::<String>())]
    GroupShort {
        /// Members the group needs.
        need: u8,
        /// Members that gave their share.
        opened: usize,
        /// Each member that did not, as `name: why`.
        members: Vec<String>,
    },
}

impl SlotError {
    /// What kind of failure this is, when it is the deciding one.
    pub fn category(&self) -> Category {
        match self {
            SlotError::WrongRecoveryKey { .. }
            | SlotError::WrongPassword
            | SlotError::WrongVaultPassword { .. }
            | SlotError::WrongPin { .. } => Category::WrongFactor,
            SlotError::Malformed { .. } => Category::Corrupt,
            SlotError::Usage(_) => Category::Usage,
            SlotError::DeviceNotFound { .. }
            | SlotError::LockedOut { .. }
            | SlotError::PolicyRefused(_)
            | SlotError::Device(_)
            | SlotError::GroupShort { .. } => Category::NoUsableSlot,
        }
    }
}

/// One slot that was tried, and how it failed.
#[derive(Debug)]
pub struct Attempt {
    /// `id (kind)` of the slot.
    pub slot: String,
    /// Why it failed.
    pub error: SlotError,
}

/// Every failure the library reports.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A keyring file failed to parse or check.
    #[error("keyring {}: {what}", path.display())]
    KeyringCorrupt {
        /// The keyring file.
        path: PathBuf,
        /// What is wrong, naming the field.
        what: String,
    },
    /// The keyring's MAC or key id does not match the unlocked backup key.
    #[error(
        "keyring {} was modified outside coffer ({what}); restore it from a copy you trust, or re-create it with `coffer init` and your recovery key",
        path.display()
    )]
    KeyringTampered {
        /// The keyring file.
        path: PathBuf,
        /// What did not match.
        what: String,
    },
    /// The keyring is a seal-only host's (`export --seal-only`): it seals
    /// archives and never unlocks.
    #[error(
        "keyring {} is seal-only (sealer `{sealer}`): it seals archives but cannot open them or change slots. Open them where the owner's keyring is, or give a factor for one of the archive's own slots (such as --recovery-key-file)",
        path.display()
    )]
    SealOnly {
        /// The keyring file.
        path: PathBuf,
        /// The host's sealer id.
        sealer: String,
    },
    /// No keyring at the path.
    #[error("no keyring at {}: create one with `coffer init`, or name one with --keyring", path.display())]
    NoKeyring {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Refusing to overwrite an existing file.
    #[error("{} already exists; refusing to overwrite it{hint}", path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
        /// What to do instead.
        hint: String,
    },
    /// Every slot tried failed, or none could be tried.
    #[error("{0}")]
    Unlock(UnlockFailure),
    /// `rotate` could not re-wrap every slot it keeps; nothing changed.
    #[error("{}", rewrap_message(.0))]
    Rewrap(UnlockFailure),
    /// An archive is corrupt, truncated or tampered with.
    #[error("archive {what}")]
    ArchiveCorrupt {
        /// What is wrong.
        what: String,
    },
    /// A new slot's device refused or failed at enrollment (wrong PIN,
    /// card absent, PIN blocked).
    #[error("cannot enroll: {0}")]
    Enroll(SlotError),
    /// The operation was refused (e.g. removing the last slot).
    #[error("{0}")]
    Refused(String),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The unlock agent ([`crate::agent`]) answered with a failure: its own
    /// message, and the kind it said it was.
    #[error("unlock agent: {message}")]
    Agent {
        /// What kind of failure the agent met.
        category: Category,
        /// The agent's message.
        message: String,
    },
    /// The key vault's audit table does not check: an entry was altered,
    /// inserted or removed.
    #[error("{what}")]
    AuditBroken {
        /// The first entry that does not check, and why.
        what: String,
    },
    /// An object store refused or failed a request (no such bucket, access
    /// denied, no credentials, an error answer).
    #[error("{location}: {what}")]
    Storage {
        /// The object's URL.
        location: String,
        /// What the store said, and what to check.
        what: String,
    },
    /// The command did its job, but not for everything: each path left out
    /// or changed was already named.
    #[error("{what}, but {count} path(s) were skipped or changed (named above)")]
    Incomplete {
        /// "sealed into X", "opened into Y".
        what: String,
        /// How many notices were printed.
        count: usize,
    },
}

impl Error {
    /// I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// What kind of failure this is.
    pub fn category(&self) -> Category {
        match self {
            Error::Io { .. }
            | Error::AlreadyExists { .. }
            | Error::Refused(_)
            | Error::Storage { .. } => Category::Other,
            Error::NoKeyring { .. } => Category::Other,
            Error::SealOnly { .. } => Category::NoUsableSlot,
            Error::KeyringCorrupt { .. }
            | Error::KeyringTampered { .. }
            | Error::ArchiveCorrupt { .. }
            | Error::AuditBroken { .. } => Category::Corrupt,
            Error::Unlock(u) | Error::Rewrap(u) => u.category(),
            Error::Enroll(e) => e.category(),
            Error::Usage(_) => Category::Usage,
            Error::Agent { category, .. } => *category,
            Error::Incomplete { .. } => Category::Incomplete,
        }
    }
}

/// Unlocking failed: the slots tried and why, or that none could be tried.
#[derive(Debug)]
pub struct UnlockFailure {
    /// The slots tried, in order.
    pub attempts: Vec<Attempt>,
    /// Slots skipped because their factor was not supplied and no prompt
    /// was possible, as `id (kind)`.
    pub skipped: Vec<String>,
    /// Slots from unauthenticated data (an archive header) that the trust
    /// rule did not let coffer try, as `id (kind): why`.
    pub refused: Vec<String>,
}

impl UnlockFailure {
    /// A wrong factor if any slot was given one, else corrupt if a slot was
    /// malformed, else no usable slot.
    pub fn category(&self) -> Category {
        let statuses: Vec<_> = self.attempts.iter().map(|a| a.error.category()).collect();
        if statuses.contains(&Category::WrongFactor) {
            Category::WrongFactor
        } else if statuses.contains(&Category::Corrupt) {
            Category::Corrupt
        } else {
            Category::NoUsableSlot
        }
    }
}

impl fmt::Display for UnlockFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.attempts.is_empty() {
            write!(f, "no usable slot: nothing to unlock with")?;
            if !self.skipped.is_empty() {
                write!(
                    f,
                    " (skipped {} for want of a factor; give --recovery-key-file, --password-file or --pin-file, or run in a terminal)",
                    self.skipped.join(", ")
                )?;
            }
            self.fmt_refused(f)?;
            return Ok(());
        }
        match self.category() {
            Category::WrongFactor => write!(f, "could not unlock")?,
            _ => write!(f, "no usable slot")?,
        }
        for a in &self.attempts {
            write!(f, "\n  slot {}: {}", a.slot, a.error)?;
        }
        if !self.skipped.is_empty() {
            write!(
                f,
                "\n  not tried (no factor given): {}",
                self.skipped.join(", ")
            )?;
        }
        self.fmt_refused(f)
    }
}

impl UnlockFailure {
    fn fmt_refused(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.refused {
            write!(f, "\n  not tried: slot {r}")?;
        }
        Ok(())
    }
}

fn rewrap_message(f: &UnlockFailure) -> String {
    let mut s = String::from(
        "nothing was changed: every slot that stays must be re-wrapped for the new key, and these could not be",
    );
    for a in &f.attempts {
        s += &format!("\n  slot {}: {}", a.slot, a.error);
    }
    for n in &f.skipped {
        s += &format!("\n  slot {n}: its factor was not given");
    }
    for r in &f.refused {
        s += &format!("\n  slot {r}");
    }
    s += "\ngive each its factor (bound to it: --password-file SLOT=FILE, --pin-file SLOT=FILE), or leave it out with --drop SLOT";
    s
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
