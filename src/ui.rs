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

    /// Ask a yes/no question; `true` only for an explicit yes. Without a
    /// person to ask (the default), the answer is no.
    fn confirm(&self, _question: &str) -> bool {
        false
    }
}

/// `s` with every control and bidirectional-formatting character escaped
/// (`\u{1b}`, `\n`, ...): for printing strings read from unauthenticated
/// data (archive headers), which must not drive the terminal or fake a
/// line of coffer's own output.
pub fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
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

#[cfg(test)]
mod tests {
    #[test]
    fn escaped_defuses_terminal_controls() {
        assert_eq!(super::escaped("plain ü"), "plain ü");
        assert_eq!(
            super::escaped("a\x1b[2Jb\nc\u{202e}d\u{9b}"),
            "a\\u{1b}[2Jb\\nc\\u{202e}d\\u{9b}"
        );
    }
}
