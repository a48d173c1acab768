//! The commands that change or show the keyring: `init`, `enroll`,
//! `slots`, `remove` and `rotate`. Each takes the keyring lock, unlocks,
//! changes the keyring in memory and replaces the file in one atomic step.

#[cfg(feature = "pkcs11")]
use super::args::MechanismArg;
use super::args::{EnrollArgs, EnrollKind};
#[cfg(feature = "tpm2")]
use super::new_pin;
#[cfg(feature = "yubikey")]
use super::read_secret_file;
use super::{Cli, Env, new_password, print_json, unix_time_text, unlock};
use coffer::error::{Error, Result};
use coffer::keyring::Keyring;
use coffer::slot::recovery::{self, RecoveryKey};
use coffer::slot::{FactorKind, Label, SlotId, Target, password, select_one, threshold};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Refuse up front when a new recovery key could be shown nowhere.
fn can_hand_over(out: Option<&Path>, command: &str) -> Result<()> {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if out.is_none() && !interactive {
        return Err(Error::Usage(format!(
            "{command} shows the new recovery key on a terminal; without one, give --recovery-key-out FILE"
        )));
    }
    Ok(())
}

/// Give the person new recovery keys: into `out` (a new file, mode 0600;
/// `-` for standard output) or on the terminal, once. Returns the file
/// written, for the caller to remove if the keyring cannot be stored.
fn hand_over(
    env: &Env,
    keys: &[(SlotId, RecoveryKey)],
    out: Option<&Path>,
) -> Result<Option<PathBuf>> {
    let mut text = Zeroizing::new(String::new());
    for (id, key) in keys {
        if keys.len() > 1 {
            text.push_str(&format!("# recovery slot {id}\n"));
        }
        text.push_str(key.display().as_str());
        text.push('\n');
    }
    match out {
        Some(p) if p == Path::new("-") => {
            let mut o = std::io::stdout().lock();
            o.write_all(text.as_bytes())
                .map_err(|e| Error::io("<stdout>", e))?;
            Ok(None)
        }
        Some(p) => {
            coffer::fsutil::write_atomic(p, text.as_bytes(), false).map_err(|e| match e {
                Error::AlreadyExists { path, .. } => Error::AlreadyExists {
                    path,
                    hint: ": choose another --recovery-key-out".into(),
                },
                e => e,
            })?;
            Ok(Some(p.to_path_buf()))
        }
        None => {
            for (_, key) in keys {
                env.ui.show_recovery_key(key)?;
            }
            Ok(None)
        }
    }
}

fn tell_where(env: &Env, written: Option<&Path>) {
    if let Some(p) = written {
        env.ui.info(&format!(
            "the recovery key is in {}: write it down or store it offline, then delete the file",
            p.display()
        ));
    }
}

pub(super) fn init(cli: &Cli, env: &Env, recovery_out: Option<&Path>) -> Result<()> {
    let kf = &env.keyring;
    let exists = || {
        Error::AlreadyExists {
        path: kf.path.clone(),
        hint: ": a keyring is there already (`coffer slots` shows it); move it away first if you mean to start over".into(),
    }
    };
    if kf.exists() {
        return Err(exists());
    }
    can_hand_over(recovery_out, "init")?;
    let lock = kf.lock()?;
    if kf.exists() {
        return Err(exists());
    }
    let bk = coffer::key::BackupKey::generate();
    let (record, key) = recovery::enroll(&bk);
    let slot_id = record.id.clone();
    let slot = super::slot_ref(&record);
    let keyring = Keyring::new(&bk, vec![record]);

    let written = hand_over(env, &[(slot_id.clone(), key)], recovery_out)?;
    if let Err(e) = kf.store(&keyring, &lock, true) {
        if let Some(p) = &written {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    let key_id = keyring.key_id.to_string();
    if cli.json {
        print_json(&json!({
            "keyring": kf.path,
            "key_id": key_id,
            "slot": slot,
        }))?;
    } else {
        env.ui.info(&format!(
            "created keyring {} (key id {key_id}) with recovery slot {slot_id}",
            kf.path.display()
        ));
        tell_where(env, written.as_deref());
    }
    Ok(())
}

pub(super) fn enroll(cli: &Cli, env: &mut Env, args: &EnrollArgs) -> Result<()> {
    let label = args
        .label
        .as_deref()
        .map(Label::parse)
        .transpose()
        .map_err(|e| Error::Usage(format!("--label: {e}")))?;
    if let EnrollKind::Recovery { recovery_key_out } = &args.kind {
        can_hand_over(recovery_key_out.as_deref(), "enroll recovery")?;
    }
    // The new device's PIN is an unbound --pin-file: taken out here, so the
    // unlock before enrolling never offers it to another slot.
    #[cfg_attr(
        not(any(feature = "yubikey", feature = "pkcs11", feature = "fido2")),
        allow(unused_variables)
    )]
    let device_pin: Option<SecretString> = match &args.kind {
        #[cfg(feature = "yubikey")]
        EnrollKind::Yubikey { .. } => env.factors.take_unbound(FactorKind::Pin),
        #[cfg(feature = "pkcs11")]
        EnrollKind::Pkcs11 { .. } => env.factors.take_unbound(FactorKind::Pin),
        #[cfg(feature = "fido2")]
        EnrollKind::Fido2 { .. } => env.factors.take_unbound(FactorKind::Pin),
        _ => None,
    };
    let env = &*env;
    let kf = &env.keyring;
    let lock = kf.lock()?;
    let mut keyring = kf.load()?;
    let replaced = args
        .replace
        .as_deref()
        .map(|s| select_one(&keyring.slots, s, "--replace"))
        .transpose()
        .map_err(Error::Usage)?;
    // Before anything is unlocked or enrolled (a device key, a vault record).
    if let Some(i) = replaced
        && keyring.is_last_recovery(i)
        && !matches!(args.kind, EnrollKind::Recovery { .. })
    {
        return Err(coffer::keyring::last_recovery_replaced(&keyring.slots[i]));
    }
    let group = enrollment_group(&keyring, args, replaced)?;
    if let Some(i) = replaced {
        refuse_replacing(&keyring, i, args, group)?;
    }
    if let Some(l) = &label {
        let taken = keyring.slots.iter().enumerate().find(|(i, s)| {
            Some(*i) != replaced && (s.label.as_ref() == Some(l) || s.id.as_str() == l.as_str())
        });
        if let Some((_, s)) = taken {
            return Err(Error::Usage(format!(
                "--label {l}: slot {} already answers to that name; labels are unique in a keyring",
                s.name()
            )));
        }
    }
    let bk = unlock(cli, env, &mut keyring)?;
    // A member's share (its x taken now, never given again) or the key.
    let target = match group {
        Some(g) => threshold::add_member(&bk, &mut keyring.slots[g]).map_err(Error::Enroll)?,
        None => Target::from(&bk),
    };
    let mut new_key: Option<RecoveryKey> = None;
    let record = match &args.kind {
        EnrollKind::Recovery { .. } => {
            let (record, key) = recovery::enroll(&target);
            new_key = Some(key);
            record
        }
        EnrollKind::Threshold { need } => {
            threshold::enroll(&bk, &target, *need).map_err(Error::Enroll)?
        }
        EnrollKind::Password { new_password_file } => {
            let pw = new_password(env, new_password_file.as_deref(), "password")?;
            if pw.expose_secret().is_empty() {
                return Err(Error::Usage("the new password is empty".into()));
            }
            password::enroll(&target, &pw, password::Cost::default()).map_err(Error::Enroll)?
        }
        #[cfg(feature = "tpm2")]
        EnrollKind::Tpm2 {
            pcrs,
            with_pin,
            new_pin_file,
        } => {
            let pin = if *with_pin || new_pin_file.is_some() {
                let pin = new_pin(env, new_pin_file.as_deref())?;
                if pin.expose_secret().is_empty() {
                    return Err(Error::Usage("the new PIN is empty".into()));
                }
                Some(pin)
            } else {
                None
            };
            let locators = cli.unlock.locators();
            let opts = coffer::slot::tpm2::EnrollOptions {
                tcti: locators.tcti.or(locators.tcti_default),
                pcrs: pcrs.clone(),
                pin,
            };
            coffer::slot::tpm2::enroll(&target, &opts).map_err(Error::Enroll)?
        }
        #[cfg(feature = "pkcs11")]
        EnrollKind::Pkcs11 {
            module,
            uri,
            generate,
            mechanism,
            public_key,
        } => enroll_pkcs11(
            env,
            device_pin.as_ref(),
            &target,
            (module.as_deref(), uri, *generate, *mechanism),
            public_key.as_deref(),
        )?,
        #[cfg(feature = "yubikey")]
        EnrollKind::Yubikey {
            serial,
            piv_slot,
            generate,
            pin_policy,
            touch_policy,
            management_key_file,
            public_key_file,
        } => {
            use coffer::slot::yubikey as yk;
            let key = if *generate {
                let management_key = management_key_file
                    .as_deref()
                    .map(|f| {
                        let text = read_secret_file(f)?;
                        hex::decode(text.expose_secret().trim())
                            .map(Zeroizing::new)
                            .map_err(|_| Error::Usage(format!("{}: not hex digits", f.display())))
                    })
                    .transpose()?;
                yk::KeySource::Generate {
                    pin_policy: *pin_policy,
                    touch_policy: *touch_policy,
                    management_key,
                }
            } else {
                let public = public_key_file
                    .as_deref()
                    .map(read_public_key)
                    .transpose()?;
                yk::KeySource::Existing(public)
            };
            let pin = match &device_pin {
                Some(p) => p.clone(),
                None => {
                    coffer::ui::Ui::request_secret(&env.ui, "YubiKey PIN: ").ok_or_else(|| {
                        Error::Usage(
                            "enroll yubikey needs the card's PIN: --pin-file FILE, or a terminal"
                                .into(),
                        )
                    })?
                }
            };
            let opts = yk::EnrollOptions {
                serial: *serial,
                piv_slot: *piv_slot,
                key,
            };
            yk::enroll(&target, opts, &pin, &env.ui).map_err(|e| match e {
                coffer::error::SlotError::PolicyRefused(m) => Error::Refused(m),
                e => Error::Enroll(e),
            })?
        }
        #[cfg(feature = "fido2")]
        EnrollKind::Fido2 {
            rp_id,
            with_pin,
            user_presence,
            user_verification,
            discoverable,
        } => {
            use coffer::slot::fido2;
            let opts = fido2::EnrollOptions {
                device: cli
                    .unlock
                    .fido2_device
                    .as_deref()
                    .map(coffer::fido2::Device::parse),
                rp_id: rp_id.clone(),
                with_pin: with_pin.map(super::args::YesNo::yes),
                up: user_presence.yes(),
                uv: user_verification.yes(),
                discoverable: *discoverable,
            };
            let pin = || match &device_pin {
                Some(p) => Some(p.clone()),
                None => coffer::ui::Ui::request_secret(&env.ui, "Security key PIN: "),
            };
            fido2::enroll(&target, opts, &pin, &env.ui).map_err(|e| match e {
                coffer::error::SlotError::PolicyRefused(m) => Error::Refused(m),
                coffer::error::SlotError::Usage(m) => Error::Usage(m),
                e => Error::Enroll(e),
            })?
        }
        #[cfg(feature = "vault")]
        EnrollKind::Vault {
            url,
            ca,
            new_password_file,
        } => enroll_vault(
            env,
            &target,
            url,
            ca.as_deref(),
            new_password_file.as_deref(),
        )?,
    };
    let mut record = record;
    record.label = label;
    let id = record.id.clone();
    let old_record = replaced.map(|i| keyring.slots[i].clone());
    let old = old_record.as_ref().map(|s| s.name());
    keyring.replace_slot(&bk, replaced, record)?;
    let written = match (new_key, &args.kind) {
        (Some(key), EnrollKind::Recovery { recovery_key_out }) => {
            hand_over(env, &[(id.clone(), key)], recovery_key_out.as_deref())?
        }
        _ => None,
    };
    if let Err(e) = kf.store(&keyring, &lock, false) {
        if let Some(p) = &written {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    if cli.json {
        let new = keyring
            .slots
            .iter()
            .find(|s| s.id == id)
            .map(super::slot_ref);
        print_json(&json!({
            "slot": new,
            "replaced": old_record.as_ref().map(super::slot_ref),
        }))?;
    } else {
        let shown = keyring
            .slots
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.name())
            .unwrap_or_default();
        match &old {
            Some(o) => env
                .ui
                .info(&format!("enrolled slot {shown} in place of slot {o}")),
            None => env.ui.info(&format!("enrolled slot {shown}")),
        }
        // The group it joined, or the group it is.
        let new = keyring.slots.iter().find(|s| s.id == id);
        let group = new.and_then(|n| match &n.member {
            Some(m) => Some(&m.group),
            None => threshold::need(n).map(|_| &n.id),
        });
        if let Some(g) = group.and_then(|g| keyring.slots.iter().position(|s| s.id == *g)) {
            env.ui.info(&group_status(&keyring.slots, g));
        }
        tell_where(env, written.as_deref());
    }
    Ok(())
}

/// The group the new slot joins, as an index: `--group`, else the group
/// of the member `--replace` names. Checked before anything is unlocked:
/// a threshold group, not so deep that the new slot would nest groups
/// past the limit.
fn enrollment_group(
    keyring: &Keyring,
    args: &EnrollArgs,
    replaced: Option<usize>,
) -> Result<Option<usize>> {
    let slots = &keyring.slots;
    let g = match (&args.group, replaced) {
        (Some(sel), _) => select_one(slots, sel, "--group").map_err(Error::Usage)?,
        (None, Some(i)) => match &slots[i].member {
            Some(m) => slots.iter().position(|s| s.id == m.group).ok_or_else(|| {
                Error::Usage(format!(
                    "--replace {}: its group is missing",
                    slots[i].name()
                ))
            })?,
            None => return Ok(None),
        },
        (None, None) => return Ok(None),
    };
    if threshold::need(&slots[g]).is_none() {
        return Err(Error::Usage(format!(
            "--group {}: that is not a threshold group (make one with `coffer enroll threshold --need K`)",
            slots[g].name()
        )));
    }
    if replaced == Some(g) {
        return Err(Error::Usage(
            "--replace and --group name the same group".into(),
        ));
    }
    if matches!(args.kind, EnrollKind::Threshold { .. }) {
        // Groups above g, g itself, and the new one.
        if threshold::depth(slots, g) + 2 > coffer::slot::record::MAX_GROUP_DEPTH {
            return Err(Error::Usage(format!(
                "--group {}: groups nest at most {} deep",
                slots[g].name(),
                coffer::slot::record::MAX_GROUP_DEPTH
            )));
        }
    }
    Ok(Some(g))
}

/// `--replace` checks that need nothing unlocked, made before a device is
/// touched (a card's key generated, a vault record registered): a group
/// is never replaced, and the keyring must keep a slot that opens on its
/// own once the new slot (a member, or a group with no members yet) is in.
fn refuse_replacing(
    keyring: &Keyring,
    i: usize,
    args: &EnrollArgs,
    group: Option<usize>,
) -> Result<()> {
    let slots = &keyring.slots;
    if threshold::need(&slots[i]).is_some() {
        return Err(coffer::keyring::group_replaced(&slots[i]));
    }
    // What the new slot will be, as far as opening goes.
    let mut new = slots[i].clone();
    new.member = group.map(|g| coffer::slot::Membership {
        group: slots[g].id.clone(),
        x: 1,
    });
    if let EnrollKind::Threshold { need } = &args.kind {
        new.params = coffer::slot::SlotParams::Threshold(threshold::ThresholdParams {
            need: *need,
            next_x: 1,
        });
    }
    let mut after = slots.clone();
    after[i] = new;
    coffer::keyring::refuse_lockout(&after, &format!("--replace {}", slots[i].name()))
}

/// "group G opens with 2 of its 3 members", or what it still lacks.
fn group_status(slots: &[coffer::slot::SlotRecord], g: usize) -> String {
    let need = threshold::need(&slots[g]).unwrap_or(0);
    let n = threshold::members(slots, &slots[g].id).len();
    if threshold::complete(slots, g) {
        format!(
            "group {} opens with {need} of its {n} members",
            slots[g].name()
        )
    } else {
        format!(
            "group {} has {n} member(s) and needs {need} to open: until it has them it opens nothing. Add members with `coffer enroll KIND --group {}`",
            slots[g].name(),
            slots[g]
                .label
                .as_ref()
                .map(|l| l.to_string())
                .unwrap_or_else(|| slots[g].id.to_string())
        )
    }
}

/// `coffer enroll vault`.
#[cfg(feature = "vault")]
fn enroll_vault(
    env: &Env,
    target: &Target<'_>,
    url: &str,
    ca: Option<&Path>,
    new_password_file: Option<&Path>,
) -> Result<coffer::slot::SlotRecord> {
    let ca_pem = ca
        .map(|p| std::fs::read_to_string(p).map_err(|e| Error::io(p, e)))
        .transpose()?;
    let pw = new_password(env, new_password_file, "vault")?;
    if pw.expose_secret().is_empty() {
        return Err(Error::Usage("the new vault password is empty".into()));
    }
    coffer::slot::vault::enroll(target, url, ca_pem.as_deref(), &pw).map_err(Error::Enroll)
}

#[cfg(feature = "pkcs11")]
fn enroll_pkcs11(
    env: &Env,
    pin: Option<&SecretString>,
    target: &Target<'_>,
    args: (Option<&Path>, &str, bool, MechanismArg),
    public_key: Option<&Path>,
) -> Result<coffer::slot::SlotRecord> {
    use coffer::slot::pkcs11;
    let (module, uri, generate, mechanism) = args;
    let parsed =
        pkcs11::uri::Pkcs11Uri::parse(uri).map_err(|e| Error::Usage(format!("--uri: {e}")))?;
    if parsed.attr("pin-value").is_some() {
        return Err(Error::Usage(
            "--uri: pin-value= would put the PIN in the process list; give it with --pin-file FILE, or name a file with pin-source=".into(),
        ));
    }
    let module = module
        .map(Path::to_path_buf)
        .or_else(|| parsed.attr("module-path").map(PathBuf::from))
        .ok_or_else(|| {
            Error::Usage(format!(
                "enroll pkcs11 needs the token's module: --module PATH, {} or module-path= in the URI",
                pkcs11::MODULE_ENV
            ))
        })?;
    let mechanism = match mechanism {
        MechanismArg::Ecdh => pkcs11::Pkcs11Mechanism::Ecdh,
        MechanismArg::AesGcm => pkcs11::Pkcs11Mechanism::AesGcm,
    };
    let public_key = match public_key {
        None => None,
        Some(_) if mechanism != pkcs11::Pkcs11Mechanism::Ecdh => {
            return Err(Error::Usage(
                "--public-key works with --mechanism ecdh only".into(),
            ));
        }
        Some(p) => Some(read_public_key(p)?),
    };
    let opts = pkcs11::EnrollOptions {
        module,
        uri: uri.to_owned(),
        mechanism,
        generate,
        public_key,
    };
    pkcs11::enroll(target, &opts, pin, &env.ui).map_err(|e| match e {
        coffer::error::SlotError::Malformed { field, reason } => {
            Error::Usage(format!("{field}: {reason}"))
        }
        e => Error::Enroll(e),
    })
}

/// A P-256 public key file, for `enroll pkcs11 --public-key` and `enroll
/// yubikey --public-key-file`: PEM or DER SubjectPublicKeyInfo, or a raw
/// point ([`coffer::ecdh::public_key`]).
#[cfg(any(feature = "pkcs11", feature = "yubikey"))]
fn read_public_key(p: &Path) -> Result<coffer::ecdh::PublicKey> {
    let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
    coffer::ecdh::public_key(&bytes).map_err(|e| Error::Usage(format!("{}: {e}", p.display())))
}

pub(super) fn slots(cli: &Cli, env: &Env) -> Result<()> {
    let keyring = env.keyring.load()?;
    if cli.json {
        return print_json(&json!({
            "keyring": env.keyring.path,
            "version": keyring.version(),
            "key_id": keyring.key_id.to_string(),
            "v1_key_id": keyring.v1_key_id().map(|k| k.to_string()),
            "sealer": keyring.sealer().map(|s| s.id().to_string()),
            "seal_only": keyring.is_seal_only(),
            "slots": keyring.slots.iter().map(super::slot_json).collect::<Vec<_>>(),
        }));
    }
    let mut out = std::io::stdout().lock();
    let mut w = |s: String| super::stdout_result(writeln!(out, "{s}"));
    w(format!(
        "keyring {} (format version {}, key id {})",
        env.keyring.path.display(),
        keyring.version(),
        keyring.key_id
    ))?;
    match keyring.sealer() {
        Some(s) if s.id().is_owner() => {}
        Some(s) => w(format!(
            "seal-only: seals as `{}`, cannot open archives",
            s.id()
        ))?,
        None => w(
            "format version 1: the next command that unlocks upgrades it (then `seal` needs no factor)"
                .into(),
        )?,
    }
    w(format!(
        "{:<10} {:<16} {:<10} {:<20} DETAILS",
        "ID", "LABEL", "KIND", "ENROLLED"
    ))?;
    for (i, s) in keyring.slots.iter().enumerate() {
        let when = unix_time_text(s.created);
        let (id, detail) =
            super::slot_row(&keyring.slots, i, "not supported by this build; kept as is");
        let label = s.label.as_ref().map(|l| l.as_str()).unwrap_or("-");
        w(format!(
            "{id:<10} {:<16} {:<10} {:<20} {detail}",
            label,
            s.params.kind(),
            when
        ))?;
    }
    Ok(())
}

/// `export --seal-only`: unlock the owner's keyring (its MAC checked: the
/// defence against a swapped sealing key), then write a keyring for a
/// host that seals as `sealer` and never opens. It leaves out the slots
/// that host could open with no person present (and those this build
/// cannot judge), and with `pq_only` the classical ones, and says which.
/// Never writes over the keyring itself; holds the keyring's lock until
/// the file is written.
pub(super) fn export_seal_only(
    cli: &Cli,
    env: &Env,
    sealer: &str,
    pq_only: bool,
    output: &Path,
    force: bool,
) -> Result<()> {
    let id = coffer::sealing::SealerId::host(sealer)
        .map_err(|e| Error::Usage(format!("--sealer {}: {e}", coffer::ui::escaped(sealer))))?;
    let kf = &env.keyring;
    if same_file(output, &kf.path) {
        return Err(Error::Usage(format!(
            "-o {}: that is the keyring itself; write the host's keyring elsewhere",
            output.display()
        )));
    }
    if !force && output.symlink_metadata().is_ok() {
        return Err(Error::AlreadyExists {
            path: output.to_path_buf(),
            hint: ": give --force to replace it".into(),
        });
    }
    let (keyring, bk, lock) = super::unlock_and_store_upgrade(cli, env)?;
    // A member is judged with its group: a TPM inside "the TPM and a
    // YubiKey" stays, since the host alone cannot open the group.
    let (slots, left_out) = threshold::prune(&keyring.slots, &|s, keep, i| {
        let r = &s[i];
        let why = if threshold::need(r).is_some() {
            (r.member.is_none() && threshold::opens_unattended(s, keep, i)).then_some(
                "enough of its members open with no person present, which would let that host read every archive",
            )
        } else {
            match r.params.as_slot() {
                None if r.member.is_none() => {
                    Some("this build cannot tell whether it opens with no person present")
                }
                Some(k) if r.member.is_none() && k.opens_unattended() => Some(
                    "it opens with no person present, which would let that host read every archive",
                ),
                Some(k) if pq_only && k.classical_public_key() => {
                    Some("--pq-only: its copies rest on classical public-key cryptography")
                }
                _ => None,
            }
        };
        why.map(str::to_owned)
    });
    for (name, why) in &left_out {
        env.ui.warn(&format!("slot {name} left out: {why}"));
    }
    if slots.is_empty() {
        return Err(Error::Refused(
            "every slot would be left out, and archives must carry at least one: enroll a recovery key or another factor a person holds first".into(),
        ));
    }
    let host = keyring.seal_only(&bk, id, slots);
    coffer::fsutil::write_atomic(output, &host.to_bytes(), force)?;
    drop(lock);
    if cli.json {
        print_json(&json!({
            "keyring": output,
            "key_id": host.key_id.to_string(),
            "sealer": host.sealer().map(|s| s.id().to_string()),
            "slots": host.slots.iter().map(super::slot_ref).collect::<Vec<_>>(),
        }))?;
    } else {
        env.ui.info(&format!(
            "wrote {} (mode 0600): a keyring that seals as `{}` to key id {} and opens nothing. Copy it to the host (as its keyring, or with --keyring) and seal with `coffer seal --key-id {}`. It holds that host's sealer key: keep it private, as whoever has it can make archives that open as that host's. After `coffer rotate`, export again; archives sealed to the old key are then flagged when opened",
            output.display(),
            host.sealer().expect("version 2").id(),
            host.key_id,
            host.key_id
        ));
    }
    Ok(())
}

/// Whether `a` and `b` name the same file: the same inode if both exist,
/// else the same path once their folders are resolved.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return ma.dev() == mb.dev() && ma.ino() == mb.ino();
    }
    let resolve = |p: &Path| {
        let dir = coffer::fsutil::parent_dir(p);
        std::fs::canonicalize(dir)
            .ok()
            .zip(p.file_name())
            .map(|(d, n)| d.join(n))
    };
    match (resolve(a), resolve(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Before `rotate` replaces `keyring`: an empty archive sealed to its key
/// with the slots kept, beside it, `retired-KEYID.coffer` (0600). Returns
/// its path.
fn retired_key_archive(
    kf: &coffer::keyring::KeyringFile,
    keyring: &Keyring,
    keep: &[bool],
) -> Result<std::path::PathBuf> {
    let sealer = keyring.sealer().expect("unlocked keyrings are version 2");
    let slots: Vec<coffer::slot::SlotRecord> = keyring
        .slots
        .iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(s, _)| s.clone())
        .collect();
    let path =
        coffer::fsutil::parent_dir(&kf.path).join(format!("retired-{}.coffer", keyring.key_id));
    coffer::archive::seal_to_path(
        sealer,
        &slots,
        coffer::archive::Source::Stream(Box::new(std::io::empty())),
        coffer::archive::SealOptions::default(),
        &path,
        true,
        &coffer::archive::NoProgress,
    )?;
    Ok(path)
}

pub(super) fn remove(cli: &Cli, env: &Env, selector: &str, force: bool) -> Result<()> {
    let kf = &env.keyring;
    let lock = kf.lock()?;
    let mut keyring = kf.load()?;
    let i = select_one(&keyring.slots, selector, "remove").map_err(Error::Usage)?;
    let bk = unlock(cli, env, &mut keyring)?;
    let removed = keyring.remove_slot(&bk, i, force)?;
    kf.store(&keyring, &lock, false)?;
    let (named, inside) = removed.split_first().expect("the named slot");
    if cli.json {
        print_json(&json!({
            "removed": super::slot_ref(named),
            "inside": inside.iter().map(super::slot_ref).collect::<Vec<_>>(),
        }))?;
    } else {
        let with = if inside.is_empty() {
            String::new()
        } else {
            format!(
                " with the {} slot(s) inside it ({})",
                inside.len(),
                inside
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        env.ui.info(&format!(
            "removed slot {}{with}. Archives sealed before still carry it and open with it; and since every archive shares one backup key, whoever holds that factor and an old archive or keyring copy can still read archives sealed later. If the factor was lost or stolen, run `coffer rotate` so that archives sealed from now on use a new key",
            named.name()
        ));
        if let Some(m) = &named.member
            && let Some(g) = keyring.slots.iter().position(|s| s.id == m.group)
        {
            env.ui.info(&format!(
                "it was a member of group {}: its share stays valid with the archives and keyring copies that carry the group, and counts towards it there, until `coffer rotate`",
                keyring.slots[g].name()
            ));
            env.ui.info(&group_status(&keyring.slots, g));
        }
    }
    Ok(())
}

pub(super) fn rotate(
    cli: &Cli,
    env: &Env,
    drop: &[String],
    recovery_out: Option<&Path>,
) -> Result<()> {
    let kf = &env.keyring;
    let lock = kf.lock()?;
    let mut keyring = kf.load()?;
    // The id archives sealed so far carry (before an upgrade renames it).
    let old_key_id = keyring.key_id;
    let mut keep = vec![true; keyring.slots.len()];
    // The slots --drop names; a group goes with everything inside it, but
    // only a vault slot named here has its record deleted.
    let mut named = vec![false; keyring.slots.len()];
    for d in drop {
        let i = select_one(&keyring.slots, d, "--drop").map_err(Error::Usage)?;
        keep[i] = false;
        named[i] = true;
        for m in threshold::descendants(&keyring.slots, i) {
            keep[m] = false;
        }
    }
    if !keep.iter().any(|k| *k) {
        return Err(Error::Usage(
            "--drop names every slot; the new key needs at least one".into(),
        ));
    }
    let kept_recovery = keyring
        .slots
        .iter()
        .zip(&keep)
        .any(|(s, k)| *k && s.params.kind() == recovery::KIND);
    if kept_recovery && !env.factors.has(FactorKind::RecoveryKey) {
        // Not given: it may be typed, or a new one issued; either way a
        // terminal or --recovery-key-out is needed.
        can_hand_over(recovery_out, "rotate")?;
        env.ui.info(
            "a recovery slot keeps its key if you type it when asked; left empty, a new recovery key is issued for it",
        );
    }
    // Proves a factor of this keyring (and checks its MAC) before anything
    // is re-wrapped; the old key itself is not needed after that.
    std::mem::drop(unlock(cli, env, &mut keyring)?);
    let new_bk = coffer::key::BackupKey::generate();
    let locators = cli.unlock.locators();
    let mut opts = super::unlock_options(cli, env, &locators);
    opts.selector = None;
    let rotated = coffer::slot::lifecycle::rewrap_all(&keyring.slots, &keep, &new_bk, &opts)?;
    let new_ids: Vec<SlotId> = rotated
        .new_recovery_keys
        .iter()
        .map(|(i, _)| keyring.slots[*i].id.clone())
        .collect();
    let new_keyring = keyring.rotated(&new_bk, rotated.slots);
    // The old key stays reachable from the kept factors: an empty archive
    // sealed to it beside the keyring, so that `passphrase NAME --from` it
    // gives each repository's old passphrase (to re-key it), even for
    // someone who never sealed an archive.
    let retired = retired_key_archive(kf, &keyring, &keep)?;
    let keys: Vec<(SlotId, RecoveryKey)> = new_ids
        .into_iter()
        .zip(rotated.new_recovery_keys.into_iter().map(|(_, k)| k))
        .collect();
    let written = if keys.is_empty() {
        None
    } else {
        hand_over(env, &keys, recovery_out)?
    };
    if let Err(e) = kf.store(&new_keyring, &lock, false) {
        if let Some(p) = &written {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_file(&retired);
        return Err(e);
    }
    let dropped: Vec<&coffer::slot::SlotRecord> = keyring
        .slots
        .iter()
        .zip(&keep)
        .filter(|(_, k)| !**k)
        .map(|(s, _)| s)
        .collect();
    #[cfg(feature = "vault")]
    for (s, _) in keyring.slots.iter().zip(&named).filter(|(_, n)| **n) {
        delete_vault_record(env, s, &keyring.slots);
    }
    let agent_stopped = super::agent_cmd::stop_retired(env, &old_key_id);
    if cli.json {
        print_json(&json!({
            "key_id": new_keyring.key_id.to_string(),
            "old_key_id": old_key_id.to_string(),
            "agent_stopped": agent_stopped,
            "retired_key_archive": retired,
            "slots": new_keyring.slots.iter().map(super::slot_ref).collect::<Vec<_>>(),
            "dropped": dropped.iter().map(|s| super::slot_ref(s)).collect::<Vec<_>>(),
            "new_recovery_keys": new_keyring
                .slots
                .iter()
                .filter(|s| keys.iter().any(|(id, _)| *id == s.id))
                .map(super::slot_ref)
                .collect::<Vec<_>>(),
        }))?;
    } else {
        env.ui.info(&format!(
            "rotated: archives sealed from now on use key {} ({} slot(s) re-wrapped{}). Archives sealed before keep opening with the factors they carry. Seal-only keyrings exported before keep sealing to the old key: export them again (`coffer export --seal-only`) and replace them. Passphrases from `coffer passphrase` change too: re-key each repository, the old passphrase coming from `coffer passphrase NAME --from {}` (an empty archive of the old key, for the kept factors; docs/restic-borg.md)",
            new_keyring.key_id,
            new_keyring.slots.len(),
            if dropped.is_empty() {
                String::new()
            } else {
                format!(
                    "; left out: {}",
                    dropped.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
                )
            },
            retired.display()
        ));
        if !keys.is_empty() {
            env.ui.info(&format!(
                "issued a new recovery key for slot(s) {}: the old one opens only archives sealed before",
                keys.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        tell_where(env, written.as_deref());
    }
    Ok(())
}

/// After `rotate --drop` named a vault slot and the new keyring is stored:
/// delete its record at the server, with its password (bound to it, or
/// unbound when no password slot could take it, or a prompt). Failing
/// that, say what is left.
#[cfg(feature = "vault")]
fn delete_vault_record(env: &Env, s: &coffer::slot::SlotRecord, all: &[coffer::slot::SlotRecord]) {
    let coffer::slot::SlotParams::Vault(p) = &s.params else {
        return;
    };
    let password = env
        .factors
        .for_slot(s, FactorKind::Password, all)
        .or_else(|| {
            coffer::ui::Ui::request_secret(
                &env.ui,
                &format!(
                    "Vault password for slot {}, to delete its record (empty to keep it): ",
                    s.name()
                ),
            )
        });
    let outcome = match password {
        Some(pw) => p.delete_record(&pw).map_err(|e| e.to_string()),
        None => Err("no password given for it".into()),
    };
    match outcome {
        Ok(()) => env.ui.info(&format!(
            "deleted the record of vault slot {} at {}: archives sealed before no longer open with it",
            s.name(),
            p.url
        )),
        Err(why) => env.ui.warn(&format!(
            "the record of vault slot {} at {} was kept ({why}): archives sealed before still open with it until the vault's operator deletes it (user {})",
            s.name(),
            p.url,
            p.user
        )),
    }
}
