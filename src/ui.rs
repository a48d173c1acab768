//! How the library talks to a person: the [`Ui`] trait. The command line
//! implements it with terminal prompts; scripts and tests use
//! [`NonInteractive`]. The library itself never touches the terminal.

use secrecy::SecretString;

/// Messages and secret prompts, supplied by the caller.
pub trait Ui {
    /// Tell the person something (a corrected digit, "touch your key").
    fn message(&self, msg: &str);

    /// Ask for a secret without echo. `None` when nobody can be asked or the
    /// person declined (an empty answer): the slot is then skipped.
    fn request_secret(&self, prompt: &str) -> Option<SecretString>;
}

/// A [`Ui`] for unattended use: asks nobody, keeps messages for inspection.
#[derive(Debug, Default)]
pub struct NonInteractive {
    messages: std::sync::Mutex<Vec<String>>,
}

impl NonInteractive {
    /// The messages shown so far.
    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl Ui for NonInteractive {
    fn message(&self, msg: &str) {
        if let Ok(mut m) = self.messages.lock() {
            m.push(msg.to_owned());
        }
    }

    fn request_secret(&self, _prompt: &str) -> Option<SecretString> {
        None
    }
}
