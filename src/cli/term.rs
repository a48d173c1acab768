//! The terminal side of [`coffer::ui::Ui`]: messages on stderr, secrets
//! read without echo from the controlling terminal (rpassword, through
//! `/dev/tty`, whatever standard input is), and the one-time display of a
//! new recovery key.
//!
//! Must never: echo a secret as it is typed, or ask when there is no
//! terminal (scripts get `None` and a clear error instead).

use coffer::error::{Error, Result};
use coffer::key::random_bytes;
use coffer::slot::recovery::RecoveryKey;
use coffer::ui::Ui;
use secrecy::{ExposeSecret, SecretString};
use std::io::IsTerminal;

/// Prompts on the controlling terminal; messages on stderr.
pub struct TerminalUi {
    quiet: bool,
    /// `--no-prompt`: never ask, as if there were no terminal.
    no_prompt: bool,
}

impl TerminalUi {
    /// `quiet` silences everything but errors; `no_prompt` never asks.
    pub fn new(quiet: bool, no_prompt: bool) -> Self {
        Self { quiet, no_prompt }
    }

    /// Whether a person is there to ask: not `--no-prompt`; standard input
    /// or standard error is a terminal; the controlling terminal opens;
    /// and this process is in its foreground (a background job asking
    /// would be stopped by the kernel, not answered). Prompts and answers
    /// go through `/dev/tty`, so `cat a.coffer | coffer open - -o - | psql`
    /// asks on the terminal while the archive comes in on standard input,
    /// and a password command run by restic or borg asks too. Scripts (no
    /// terminal on either) are never asked.
    fn interactive(&self) -> bool {
        if self.no_prompt || !(std::io::stdin().is_terminal() || std::io::stderr().is_terminal()) {
            return false;
        }
        let Ok(tty) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
        else {
            return false;
        };
        rustix::termios::tcgetpgrp(&tty).is_ok_and(|fg| fg == rustix::process::getpgrp())
    }

    /// A progress or result line on stderr, unless quiet.
    pub fn info(&self, msg: &str) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    /// A warning on stderr, even when quiet (it explains an exit status).
    pub fn warn(&self, msg: &str) {
        eprintln!("coffer: {msg}");
    }

    fn ask(&self, prompt: &str) -> Option<SecretString> {
        if !self.interactive() {
            return None;
        }
        rpassword::prompt_password(prompt)
            .ok()
            .map(SecretString::from)
    }

    /// Ask for a new secret twice. `Ok(None)` when there is no terminal.
    pub fn new_secret(&self, what: &str) -> Result<Option<SecretString>> {
        if !self.interactive() {
            return Ok(None);
        }
        for _ in 0..3 {
            let Some(first) = self.ask(&format!("{what}: ")) else {
                return Ok(None);
            };
            if first.expose_secret().is_empty() {
                eprintln!("it is empty; try again");
                continue;
            }
            let Some(again) = self.ask(&format!("{what} again: ")) else {
                return Ok(None);
            };
            if first.expose_secret() == again.expose_secret() {
                return Ok(Some(first));
            }
            eprintln!("they differ; try again");
        }
        Err(Error::Refused(format!(
            "{what}: no two entries matched; nothing was changed"
        )))
    }

    /// Show a new recovery key on the terminal and have the person type
    /// one group back, proving it was written down.
    pub fn show_recovery_key(&self, key: &RecoveryKey) -> Result<()> {
        let shown = key.display();
        eprintln!();
        eprintln!("Your recovery key. Write it down and keep it somewhere safe:");
        eprintln!("with it, and nothing else, any of your backups can be opened.");
        eprintln!("It is shown only this once.");
        eprintln!();
        for line in shown.as_str().split('-').collect::<Vec<_>>().chunks(4) {
            eprintln!("    {}", line.join("-"));
        }
        eprintln!();
        let groups: Vec<&str> = shown.as_str().split('-').collect();
        let mut b = [0u8; 1];
        random_bytes(&mut b);
        let n = (b[0] as usize) % groups.len();
        for _ in 0..3 {
            let typed = self
                .ask(&format!("To confirm, type group {} of the key: ", n + 1))
                .ok_or_else(|| Error::Refused("no answer; nothing was written".into()))?;
            let typed = typed.expose_secret().trim().to_ascii_lowercase();
            if typed == groups[n] {
                return Ok(());
            }
            eprintln!("that is not group {}; look again", n + 1);
        }
        Err(Error::Refused(
            "the recovery key was not confirmed; nothing was written. Run `coffer init` again"
                .into(),
        ))
    }
}

impl Ui for TerminalUi {
    fn message(&self, msg: &str) {
        self.info(msg);
    }

    fn request_secret(&self, prompt: &str) -> Option<SecretString> {
        self.ask(prompt).filter(|s| !s.expose_secret().is_empty())
    }

    /// The question on the controlling terminal; only `y` or `yes` is yes.
    /// Without a terminal the answer is no.
    fn confirm(&self, question: &str) -> bool {
        use std::io::{BufRead, Write};
        if !self.interactive() {
            return false;
        }
        let Ok(tty) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
        else {
            return false;
        };
        let mut out = &tty;
        if write!(out, "{question} [y/N] ")
            .and_then(|_| out.flush())
            .is_err()
        {
            return false;
        }
        let mut line = String::new();
        if std::io::BufReader::new(&tty).read_line(&mut line).is_err() {
            return false;
        }
        matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
    }
}
