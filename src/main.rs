//! The `coffer` binary: parse the command line, run it, and map errors to
//! a message on stderr and the exit status of the contract in DESIGN.md.
#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Messages may quote archive headers: no terminal controls,
            // but keep the line structure of multi-line messages.
            let text: Vec<String> = e.to_string().split('\n').map(coffer::ui::escaped).collect();
            eprintln!("coffer: {}", text.join("\n"));
            std::process::ExitCode::from(e.exit_status() as u8)
        }
    }
}
