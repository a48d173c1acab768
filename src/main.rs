//! The `coffer` binary: parse the command line, run it, and map errors to
//! a message on stderr and the exit status of the contract in DESIGN.md.
#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

/// Mark the process non-dumpable, before any factor is read: a crash while
/// it holds a password, PIN or key must not write them into a core file
/// (and other processes of the same user cannot ptrace it either). Best
/// effort: failing to set it is no reason to refuse to run.
fn forbid_core_dumps() {
    #[cfg(target_os = "linux")]
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
}

/// libtss2 prints its own `ERROR:tcti:…` lines on standard error whenever
/// no TPM answers, beside coffer's message that already says what to do.
/// It takes its log level only from `TSS2_LOG` in the environment, which a
/// program without `unsafe` cannot set for itself: so, for a command that
/// may reach a TPM and unless the person set `TSS2_LOG`, the binary runs
/// itself again once with `TSS2_LOG=all+none` (`exec`: the same process,
/// arguments and descriptors, before any secret is read). It does not when
/// it cannot tell its own file (started through the dynamic loader or an
/// emulator, or its file replaced since): it goes on, logs and all.
#[cfg(all(feature = "tpm2", target_os = "linux"))]
fn quiet_tss_logs() {
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    const VAR: &str = "TSS2_LOG";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let Some(arg0) = args.next() else { return };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // The running image must be the program named: not `ld.so`, valgrind
    // or qemu running it, nor a file since replaced (` (deleted)`).
    if Path::new(&arg0).file_name() != exe.file_name() || !exe.is_file() {
        return;
    }
    let _failed = std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env(VAR, "all+none")
        .exec();
}

fn main() -> std::process::ExitCode {
    forbid_core_dumps();
    raise_descriptor_limit();
    let args = cli::Cli::parse();
    #[cfg(all(feature = "tpm2", target_os = "linux"))]
    if args.may_reach_a_tpm() {
        quiet_tss_logs();
    }
    match cli::run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let status = exit_status(e.category());
            if args.json {
                // One object, serde_json escaping every control character.
                let v = serde_json::json!({"error": e.to_string(), "exit": status});
                eprintln!("{v}");
            } else {
                // Messages may quote archive headers: no terminal controls,
                // but keep the line structure of multi-line messages.
                let text: Vec<String> =
                    e.to_string().split('\n').map(coffer::ui::escaped).collect();
                eprintln!("coffer: {}", text.join("\n"));
            }
            std::process::ExitCode::from(status)
        }
    }
}

/// The exit status of each kind of failure: the command-line contract of
/// DESIGN.md (0 ok, 1 other, 2 usage, 3 wrong factor, 4 corrupt or
/// tampered, 5 no usable slot, 6 incomplete; 128+N for signal N is set
/// where the signal is handled).
fn exit_status(c: coffer::error::Category) -> u8 {
    use coffer::error::Category;
    match c {
        Category::Other => 1,
        Category::Usage => 2,
        Category::WrongFactor => 3,
        Category::Corrupt => 4,
        Category::NoUsableSlot => 5,
        Category::Incomplete => 6,
    }
}

/// Raise the soft limit on open descriptors to the hard limit: sealing and
/// opening hold one per folder level of the tree they walk.
fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}
