//! `coffer passphrase NAME`: a passphrase for another tool, derived from
//! the backup key ([`coffer::passphrase`]), printed on standard output and
//! nothing else, for restic's `RESTIC_PASSWORD_COMMAND`, borg's
//! `BORG_PASSCOMMAND` and the like.
//!
//! Must never: print it to a terminal, or anything else to standard
//! output.

use super::{Cli, Env, agent_cmd, archive_cmd};
use coffer::agent;
use coffer::error::{Error, Result};
use coffer::passphrase::{self, PassphraseName};
use coffer::ui::escaped;
use std::io::{IsTerminal, Write};
use std::path::Path;
use zeroize::Zeroizing;

pub(super) fn passphrase(cli: &Cli, env: &Env, name: &str, from: Option<&Path>) -> Result<()> {
    let name =
        PassphraseName::parse(name).map_err(|e| Error::Usage(format!("{}: {e}", escaped(name))))?;
    if std::io::stdout().is_terminal() {
        return Err(Error::Usage(
            "refusing to print a passphrase on the terminal: it is for a password command (RESTIC_PASSWORD_COMMAND=\"coffer passphrase NAME\"); pipe or redirect it if you mean to see it".into(),
        ));
    }
    let secret = match from {
        // The key that sealed that archive: the passphrase from before a
        // `rotate`, to re-key a repository.
        Some(archive) => archive_cmd::archive_passphrase(cli, env, archive, &name)?,
        None => match from_agent(cli, env, &name)? {
            Some(secret) => secret,
            None => passphrase::derive(&super::unlock_and_store_upgrade(cli, env)?.1, &name),
        },
    };
    // Sized once: a reallocation would leave an unwiped copy behind.
    let mut line = zeroize::Zeroizing::new(Vec::with_capacity(secret.len() + 1));
    line.extend_from_slice(secret.as_bytes());
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("<stdout>", e))
}

/// The passphrase from a running unlock agent of the keyring's key, if any.
fn from_agent(cli: &Cli, env: &Env, name: &PassphraseName) -> Result<Option<Zeroizing<String>>> {
    let Ok(keyring) = env.keyring.load() else {
        return Ok(None);
    };
    if keyring.is_seal_only() || keyring.sealer().is_none() {
        return Ok(None);
    }
    let Some(socket) = agent_cmd::socket_for(cli, &keyring.key_id) else {
        return Ok(None);
    };
    agent_cmd::asked(cli, env, &socket, agent::passphrase(&socket, name, None))
}
