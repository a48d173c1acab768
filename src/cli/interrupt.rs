//! Interruption: on SIGINT, SIGTERM or SIGHUP, remove this process's
//! temporary output (`NAME.tmp-XXXXXX` files, partial `DIR.tmp-XXXXXX`
//! folders, uploads not yet completed, which are aborted) and exit with
//! status 128 + the signal number, as a shell reports a command a signal
//! ended (130, 143, 129). A second signal ends the process at once.
//!
//! Owns: the one signal-handling thread of the binary (signal-hook's safe
//! iterator over a self-pipe; inside the handler runs only signal-hook's
//! own code: the pipe write, and the default action for a second signal).
//!
//! Must never: override a signal that this process inherited as ignored
//! (`nohup` ignores SIGHUP; a shell ignores SIGINT for `cmd &` in a script),
//! or run for the vault server, which manages its own lifetime.

use coffer::error::{Error, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Start the thread that removes temporary output and exits on a signal.
pub fn remove_temporaries_on_signals() -> Result<()> {
    let ignored = inherited_ignored();
    let wanted: Vec<i32> = [SIGINT, SIGTERM, SIGHUP]
        .into_iter()
        .filter(|s| ignored & (1u64 << (s - 1)) == 0)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    // A second signal ends the process at once, as if unhandled: undoing
    // (aborting an upload, waiting for a completion under way) may take
    // seconds, and a person pressing Ctrl-C again means it.
    let again = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for s in &wanted {
        signal_hook::flag::register_conditional_default(*s, again.clone())
            .map_err(|e| Error::io("<signal handler>", e))?;
    }
    let mut signals = Signals::new(&wanted).map_err(|e| Error::io("<signal handler>", e))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                again.store(true, std::sync::atomic::Ordering::SeqCst);
                // Exit even if undoing something panicked: a process that
                // caught the signal must not live on.
                let undo = std::panic::AssertUnwindSafe(coffer::fsutil::remove_temporaries);
                let _ = std::panic::catch_unwind(undo);
                std::process::exit(128 + signal);
            }
        })
        .map_err(|e| Error::io("<signal thread>", e))?;
    Ok(())
}

/// The signals this process was started with set to "ignore", as a bit
/// mask (bit n-1 for signal n), from the `SigIgn` line of
/// `/proc/self/status`; 0 when that cannot be read.
pub(super) fn inherited_ignored() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_ignored_mask() {
        // Rust ignores SIGPIPE (13) in every program it starts.
        assert_ne!(super::inherited_ignored() & (1 << 12), 0);
    }
}
