//! The command line's grammar (clap): every command, option and value.
//! What the commands do lives in the sibling modules.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// coffer keeps backups readable only by their owner.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, about, long_about = None)]
pub struct Cli {
    /// Keyring file [default: $COFFER_KEYRING, else $XDG_CONFIG_HOME/coffer/keyring.json]
    #[arg(long, global = true, value_name = "PATH")]
    pub keyring: Option<PathBuf>,
    /// Machine-readable output on stdout; an error is one JSON object
    /// on stderr, `{"error": MESSAGE, "exit": STATUS}`
    #[arg(long, global = true)]
    pub json: bool,
    /// Say nothing but errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Say which slot unlocked, and more
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Never ask on the terminal (as in a script): a factor not given in a
    /// file leaves its slot untried, and a slot from an archive header
    /// that needs a yes is refused
    #[arg(long, global = true)]
    pub no_prompt: bool,
    #[command(flatten)]
    pub unlock: UnlockArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How to unlock, for commands that need the backup key.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Read the recovery key from FILE (- for standard input); SLOT=FILE
    /// gives it to that slot only (repeatable)
    #[arg(long, global = true, value_name = "[SLOT=]FILE", value_parser = FactorFile::parse)]
    pub recovery_key_file: Vec<FactorFile>,
    /// Read a password from FILE (- for standard input); SLOT=FILE gives it
    /// to that slot only (repeatable). Unbound, it goes to password slots,
    /// and to a vault slot only when that was chosen with --slot or there
    /// is no password slot (a wrong one spends a vault guess)
    #[arg(long, global = true, value_name = "[SLOT=]FILE", value_parser = FactorFile::parse)]
    pub password_file: Vec<FactorFile>,
    /// Read a PIN from FILE (- for standard input); SLOT=FILE gives it to
    /// that slot only (repeatable). Unbound, it goes only to the one slot
    /// that takes a PIN (two such slots: say which)
    #[arg(long, global = true, value_name = "[SLOT=]FILE", value_parser = FactorFile::parse)]
    pub pin_file: Vec<FactorFile>,
    /// Unlock with this slot only: its id, its label, or a kind such as
    /// `password`. For a slot found only in an archive header this lifts
    /// nothing but the password-cost budget (see docs/threat-model.md)
    #[arg(long, global = true, value_name = "ID|LABEL|KIND")]
    pub slot: Option<String>,
    /// The PKCS#11 module for a pkcs11 slot found only in an archive
    /// header (a header never names code to load) [default:
    /// $COFFER_PKCS11_MODULE]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "COFFER_PKCS11_MODULE",
        hide_env = true
    )]
    pub pkcs11_module: Option<PathBuf>,
    /// The vault server for a vault slot found only in an archive header
    /// (a header never names a server to contact)
    #[arg(long, global = true, value_name = "URL")]
    pub vault_url: Option<String>,
    /// The TPM, as a tpm2-tss TCTI, for enrolling and unlocking tpm2 slots
    /// [default: $TPM2TOOLS_TCTI, else $TCTI, else the TCTI the slot of your
    /// keyring was enrolled with, else device:/dev/tpmrm0]
    #[arg(long, global = true, value_name = "TCTI")]
    pub tcti: Option<String>,
    /// The FIDO2 security key for fido2 slots: a hidraw node
    /// (/dev/hidraw3) or unix:PATH (hsm-sim's virtual key) [default:
    /// $COFFER_FIDO2_DEVICE, else every FIDO2 key plugged in]
    #[cfg(feature = "fido2")]
    #[arg(
        long,
        global = true,
        value_name = "DEVICE",
        env = "COFFER_FIDO2_DEVICE",
        hide_env = true
    )]
    pub fido2_device: Option<String>,
    /// Do not ask a running unlock agent (`coffer agent start`): unlock
    /// with the slots. Naming a slot with --slot does the same
    #[arg(long, global = true)]
    pub no_agent: bool,
}

/// `[SLOT=]FILE`: a factor file, bound to a slot or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactorFile {
    /// The `id|label|kind` it is bound to.
    pub slot: Option<String>,
    /// The file (`-` for standard input).
    pub path: PathBuf,
}

impl FactorFile {
    /// `SLOT=FILE` when what precedes the first `=` could be a slot id,
    /// label or kind (letters, digits, `.`, `_`, `-`; no `/`), else a file
    /// name as is (`./a=b` for a file named `a=b`).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        if let Some((slot, path)) = s.split_once('=') {
            let selector = !slot.is_empty()
                && slot.len() <= 64
                && slot
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                && slot != "."
                && slot != "..";
            if selector {
                if path.is_empty() {
                    return Err(format!("{slot}=: the file is missing after `=`"));
                }
                return Ok(Self {
                    slot: Some(slot.to_owned()),
                    path: PathBuf::from(path),
                });
            }
        }
        if s.is_empty() {
            return Err("the file name is empty".into());
        }
        Ok(Self {
            slot: None,
            path: PathBuf::from(s),
        })
    }
}

impl UnlockArgs {
    /// The locally trusted names of code and services; the environment is
    /// read here, in the binary (the library reads none).
    pub fn locators(&self) -> coffer::slot::Locators {
        let env = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        coffer::slot::Locators {
            pkcs11_module: self.pkcs11_module.clone(),
            vault_url: self.vault_url.clone(),
            tcti: self.tcti.clone(),
            tcti_default: env("TPM2TOOLS_TCTI").or_else(|| env("TCTI")),
            #[cfg(feature = "fido2")]
            fido2_device: self.fido2_device.clone(),
            #[cfg(not(feature = "fido2"))]
            fido2_device: None,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a keyring: a new backup key and its recovery slot. Shows the
    /// recovery key once.
    Init {
        /// Write the new recovery key to FILE (mode 0600) instead of showing it
        #[arg(long, value_name = "FILE")]
        recovery_key_out: Option<PathBuf>,
    },
    /// Add a slot (unlocks with an existing one first)
    Enroll(EnrollArgs),
    /// List the slots
    Slots,
    /// Remove a slot (never the last one; the last recovery slot only with
    /// --force). Archives sealed before keep carrying it: `rotate` is what
    /// cuts a lost factor off from future archives
    Remove {
        /// The slot: its id, its label, or its kind when only one slot has it
        #[arg(value_name = "SLOT")]
        which: String,
        /// Remove the last recovery slot too
        #[arg(long)]
        force: bool,
    },
    /// A new backup key for archives sealed from now on: every slot is
    /// re-wrapped for it (each with its factor; YubiKey and PKCS#11 ECDH
    /// slots need no device), or left out with --drop. Archives sealed
    /// before keep opening with the slots they carry
    Rotate {
        /// Leave this slot out of the new keyring (repeatable): a lost or
        /// suspect factor. A vault slot's record is also deleted at the
        /// server (needs its password)
        #[arg(long, value_name = "SLOT")]
        drop: Vec<String>,
        /// Where a recovery slot whose key was not given gets its new
        /// recovery key (mode 0600), instead of the terminal
        #[arg(long, value_name = "FILE")]
        recovery_key_out: Option<PathBuf>,
    },
    /// Seal files and folders (or standard input, `-`) into an archive.
    /// Needs no factor: only the keyring's public sealing key and its
    /// sealer key (factor options are accepted and ignored)
    Seal {
        /// Files and folders to seal, each stored under its own name; `-`
        /// alone seals standard input as a single stream
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// The archive to write: a file, `-` for standard output, or an
        /// object (`s3://BUCKET/KEY` or `az://CONTAINER/BLOB`, credentials
        /// from AWS_* or AZURE_*; see docs/storage.md); a FIFO, a character device or /dev/fd/N is
        /// written into, not replaced
        #[arg(short, long, value_name = "ARCHIVE")]
        output: PathBuf,
        /// Compress before encrypting
        #[arg(long, value_enum, default_value_t = CompressArg::None)]
        compress: CompressArg,
        /// Replace the archive if it is an existing regular file or object
        #[arg(long)]
        force: bool,
        /// Refuse (writing nothing) unless the keyring's key id is this
        /// one: pins the key a scheduled job seals to, against a swapped
        /// keyring
        #[arg(long, value_name = "KEY_ID")]
        key_id: Option<String>,
        /// Leave out of the header the slot copies that rest on classical
        /// public-key cryptography (YubiKey, PKCS#11 ECDH, vault), so the
        /// archive opens only through post-quantum or symmetric paths
        /// (recovery key, password, TPM, PKCS#11 AES) and the keyring
        #[arg(long)]
        pq_only: bool,
    },
    /// Write a keyring for a host that seals and can never open (unlocks)
    Export {
        /// A keyring that seals only: the public sealing key, the host's
        /// own sealer key and the slots to copy into its archives; never
        /// the backup key or a slot the host could open unattended
        #[arg(long, required = true)]
        seal_only: bool,
        /// The host's sealer id (1-32 of a-z, 0-9, -; not `owner`), named
        /// by every archive it seals: one per host (its name, say)
        #[arg(long, value_name = "ID")]
        sealer: String,
        /// Leave out the slots that rest on classical public-key
        /// cryptography (YubiKey, PKCS#11 ECDH, vault): every archive the
        /// host seals is then as `seal --pq-only`
        #[arg(long)]
        pq_only: bool,
        /// The file to write (mode 0600)
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Replace FILE if it exists
        #[arg(long)]
        force: bool,
    },
    /// Open an archive into a folder (or a file, or `-` for standard output)
    Open {
        /// The archive: a file, `-` for standard input, or an object
        /// (`s3://BUCKET/KEY`, `az://CONTAINER/BLOB`)
        archive: PathBuf,
        /// Where to put what it holds: a new folder for files and folders, a
        /// file for a sealed stream, `-` for standard output; a FIFO, a
        /// character device or /dev/fd/N is written into as `-` is (a
        /// folder archive as its tar stream): check the exit status
        #[arg(short, long, value_name = "DIR|FILE|-")]
        output: PathBuf,
        /// Replace the output if it is an existing file or folder
        #[arg(long)]
        force: bool,
        /// Restore owners by uid/gid, not by user and group name (as root)
        #[arg(long)]
        numeric_owner: bool,
    },
    /// Authenticate every byte of an archive and check that it would
    /// restore; write nothing
    Verify {
        /// The archive: a file, `-` for standard input, or an object
        /// (`s3://BUCKET/KEY`, `az://CONTAINER/BLOB`)
        archive: PathBuf,
    },
    /// Show an archive's header and slots, or a keyring's (needs no factor)
    Inspect {
        /// The archive (a file, `-` for standard input, or an object,
        /// `s3://BUCKET/KEY` or `az://CONTAINER/BLOB`; only its header is
        /// read) or keyring file
        archive: PathBuf,
    },
    /// Print a passphrase for another tool (restic, borg, kopia, ...),
    /// derived from the backup key for NAME: 43 characters on standard
    /// output and nothing else. Unlocks as any command does.
    /// RESTIC_PASSWORD_COMMAND="coffer passphrase restic:photos"
    Passphrase {
        /// The passphrase's name, one per repository (restic:photos,
        /// borg:home): printable ASCII, no spaces
        name: String,
        /// Derive it from the key that sealed ARCHIVE, through the
        /// archive's own slots: the passphrase from before a `rotate`, to
        /// re-key a repository
        #[arg(long, value_name = "ARCHIVE")]
        from: Option<std::path::PathBuf>,
    },
    /// The unlock agent: unlock once, then open, verify and passphrase need
    /// no factor until it forgets the key (docs/agent.md)
    #[command(subcommand)]
    Agent(super::agent_cmd::AgentCmd),
    /// Print a shell completion script: `coffer completions bash >
    /// /etc/bash_completion.d/coffer` (zsh: a file `_coffer` on $fpath;
    /// fish: ~/.config/fish/completions/coffer.fish)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `coffer man > coffer.1; man -l coffer.1`;
    /// with --dir, write it and one page per subcommand (coffer-seal.1, …)
    Man {
        /// Write coffer.1 and a page per subcommand into DIR (created if
        /// missing) instead of printing the top-level page
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The key vault server
    #[cfg(feature = "vault-server")]
    #[command(subcommand)]
    Vault(super::vault_cmd::VaultCmd),
}

impl Command {
    /// Whether the command may unlock through a slot, and so reach a TPM.
    #[cfg(feature = "tpm2")]
    pub fn may_reach_a_tpm(&self) -> bool {
        matches!(
            self,
            Command::Enroll(_)
                // A version 1 keyring unlocks once to be upgraded
                // (`Cli::may_reach_a_tpm` looks).
                | Command::Seal { .. }
                | Command::Remove { .. }
                | Command::Rotate { .. }
                | Command::Export { .. }
                | Command::Open { .. }
                | Command::Verify { .. }
                | Command::Passphrase { .. }
                | Command::Agent(super::agent_cmd::AgentCmd::Start(_))
        ) || self.vault_reaches_a_tpm()
    }

    /// `vault serve --epoch-tpm`.
    #[cfg(all(feature = "tpm2", feature = "vault-server"))]
    fn vault_reaches_a_tpm(&self) -> bool {
        matches!(self, Command::Vault(v) if v.may_reach_a_tpm())
    }

    #[cfg(all(feature = "tpm2", not(feature = "vault-server")))]
    fn vault_reaches_a_tpm(&self) -> bool {
        false
    }
}

/// `yes` or `no`, as systemd-cryptenroll's FIDO2 options take them.
#[cfg(feature = "fido2")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum YesNo {
    /// Yes
    Yes,
    /// No
    No,
}

#[cfg(feature = "fido2")]
impl YesNo {
    /// As a boolean.
    pub fn yes(self) -> bool {
        self == YesNo::Yes
    }
}

/// `--compress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressArg {
    /// Store as is (fastest; right for data that is already compressed)
    None,
    /// zstd level 3
    Zstd,
}

/// `enroll`'s options shared by every kind, and the kind.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// A name for the new slot (unique in the keyring; letters, digits,
    /// `.`, `_`, `-`), usable wherever a SLOT is asked for
    #[arg(long, global = true, value_name = "NAME")]
    pub label: Option<String>,
    /// Put the new slot in place of this one, in one step (after a firmware
    /// update changed the PCRs: `enroll tpm2 --pcrs 7 --replace tpm2`)
    #[arg(long, global = true, value_name = "SLOT")]
    pub replace: Option<String>,
    /// Make the new slot a member of this threshold group (its id or
    /// label): it then opens nothing alone, only with enough of the
    /// group's other members (docs/threshold.md)
    #[arg(long, global = true, value_name = "GROUP")]
    pub group: Option<String>,
    /// The kind of slot
    #[command(subcommand)]
    pub kind: EnrollKind,
}

/// The kinds of slot `enroll` can add.
#[derive(Debug, Subcommand)]
pub enum EnrollKind {
    /// Another 64-digit recovery key, shown once (or written to a file)
    Recovery {
        /// Write the new recovery key to FILE (mode 0600) instead of showing it
        #[arg(long, value_name = "FILE")]
        recovery_key_out: Option<PathBuf>,
    },
    /// A threshold group: opens only when NEED of its members do (the TPM
    /// and a YubiKey; any two of three keys). Add members with
    /// `enroll KIND --group GROUP`; it opens nothing until it has NEED
    Threshold {
        /// How many members it takes to open the group (1 to 63: a keyring
        /// holds 64 slots, the group and its members included)
        #[arg(long, value_name = "NEED", value_parser = clap::value_parser!(u8).range(1..=63))]
        need: u8,
    },
    /// A password (Argon2id)
    Password {
        /// Read the new password from FILE (- for standard input);
        /// otherwise it is asked for twice on the terminal
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// A TPM 2.0: a key sealed in the TPM; unlocks with nobody present
    /// unless a PIN is set
    #[cfg(feature = "tpm2")]
    Tpm2 {
        /// Bind to the boot state in these PCRs: `7`, `0,7` or `sha256:0,7`
        /// (none by default)
        #[arg(long, value_name = "LIST")]
        pcrs: Option<coffer::slot::tpm2::PcrSpec>,
        /// Also require a PIN (asked twice on the terminal, or --new-pin-file)
        #[arg(long)]
        with_pin: bool,
        /// Read the new PIN from FILE (- for standard input); implies
        /// --with-pin
        #[arg(long, value_name = "FILE")]
        new_pin_file: Option<PathBuf>,
    },
    /// A key on a PKCS#11 token (HSM, smart card, SoftHSM); the token's PIN
    /// comes from the URI's pin-source, an unbound --pin-file (which then
    /// goes to no other slot), or a prompt
    #[cfg(feature = "pkcs11")]
    Pkcs11 {
        /// The token's PKCS#11 module (a shared library)
        #[arg(long, env = "COFFER_PKCS11_MODULE", value_name = "PATH")]
        module: Option<PathBuf>,
        /// RFC 7512 URI naming the token and key, e.g.
        /// 'pkcs11:token=backup;object=coffer'
        #[arg(long, value_name = "URI")]
        uri: String,
        /// Make the key on the token (sensitive, never extractable)
        #[arg(long)]
        generate: bool,
        /// How the token protects the key-encryption key
        #[arg(long, value_enum, default_value_t = MechanismArg::Ecdh)]
        mechanism: MechanismArg,
        /// ecdh: wrap to this public key (DER or PEM SubjectPublicKeyInfo,
        /// e.g. from `pkcs11-tool --read-object --type pubkey`) without
        /// touching the token
        #[arg(long, value_name = "FILE", conflicts_with = "generate")]
        public_key: Option<PathBuf>,
    },
    /// A YubiKey (PIV): a P-256 key in one of its PIV slots. The card's PIN
    /// comes from an unbound --pin-file (which then goes to no other slot)
    /// or a prompt; the default PIN and management key are refused.
    #[cfg(feature = "yubikey")]
    Yubikey {
        /// The card's serial number (needed when several cards are present)
        #[arg(long)]
        serial: Option<u32>,
        /// The PIV slot holding the key: a retired slot 82..95, or 9d
        #[arg(long, value_name = "SLOT", default_value = "82", value_parser = coffer::slot::yubikey::parse_piv_slot)]
        piv_slot: u8,
        /// Generate a new P-256 key on the card in that PIV slot (replacing
        /// what is there); needs the management key
        #[arg(long)]
        generate: bool,
        /// With --generate: when the key needs the PIN
        #[arg(long, value_enum, default_value_t = coffer::slot::yubikey::DEFAULT_PIN_POLICY, requires = "generate")]
        pin_policy: coffer::slot::yubikey::PinPolicyArg,
        /// With --generate: when the key needs a touch
        #[arg(long, value_enum, default_value_t = coffer::slot::yubikey::DEFAULT_TOUCH_POLICY, requires = "generate")]
        touch_policy: coffer::slot::yubikey::TouchPolicyArg,
        /// With --generate: read the management key (48 hex digits) from
        /// FILE; without it, the card's PIN-protected management key
        #[arg(long, value_name = "FILE", requires = "generate")]
        management_key_file: Option<PathBuf>,
        /// Without --generate: the public key (PEM or DER) of the key already in
        /// the PIV slot, e.g. what `yubico-piv-tool -a generate -o` wrote;
        /// without it, the card is asked (YubiKey firmware 5.3+)
        #[arg(long, value_name = "FILE", conflicts_with = "generate")]
        public_key_file: Option<PathBuf>,
    },
    /// A FIDO2 security key (hmac-secret): docs/backends/fido2.md. The key
    /// is the one plugged in, or --fido2-device
    #[cfg(feature = "fido2")]
    Fido2 {
        /// The relying party id of the credential
        #[arg(long, value_name = "ID", default_value = coffer::slot::fido2::DEFAULT_RP_ID)]
        rp_id: String,
        /// Send the key's PIN [default: yes when the key has one set]
        #[arg(long, value_enum, value_name = "yes|no", require_equals = false)]
        with_pin: Option<YesNo>,
        /// Ask for a touch
        #[arg(long, value_enum, value_name = "yes|no", default_value_t = YesNo::Yes)]
        user_presence: YesNo,
        /// Ask the key to verify the user itself (a fingerprint)
        #[arg(long, value_enum, value_name = "yes|no", default_value_t = YesNo::No)]
        user_verification: YesNo,
        /// Store the credential on the key (a discoverable credential)
        #[arg(long)]
        discoverable: bool,
    },
    /// A password checked by a coffer key vault server (OPAQUE, guess limit)
    #[cfg(feature = "vault")]
    Vault {
        /// The vault server, https://... (or http:// to a loopback address)
        #[arg(long)]
        url: String,
        /// Trust the CA certificate(s) in this PEM file for the server
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Read the new vault password from FILE (- for standard input);
        /// otherwise it is asked for twice on the terminal
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
}

/// `--mechanism` values of `enroll pkcs11`.
#[cfg(feature = "pkcs11")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MechanismArg {
    /// EC P-256 key on the token; wrapping needs only its public key
    Ecdh,
    /// AES-256 key on the token encrypts the key-encryption key
    AesGcm,
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// clap's own consistency checks: no two arguments share an id (a
    /// positional named like a global option silently fills both).
    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn factor_files_bind_to_a_slot_only_with_a_slot_name_before_the_equals() {
        use super::FactorFile;
        let f = FactorFile::parse("yubikey=pin.txt").unwrap();
        assert_eq!(f.slot.as_deref(), Some("yubikey"));
        assert_eq!(f.path.to_str(), Some("pin.txt"));
        for plain in ["pin.txt", "/tmp/a=b", "./a=b", "-"] {
            let f = FactorFile::parse(plain).unwrap();
            assert_eq!((f.slot, f.path.to_str()), (None, Some(plain)), "{plain}");
        }
        assert_eq!(
            FactorFile::parse("tpm2=-").unwrap().path.to_str(),
            Some("-")
        );
        assert!(FactorFile::parse("tpm2=").is_err());
    }
}
