//! `cargo xtask`: project automation for kombu-rs.
//!
//! * `cargo xtask test-matrix` runs the workspace tests and the conformance
//!   suite against every backend (provisioning servers where needed);
//! * `cargo xtask bench` compares kombu-rs with Python Kombu and a raw channel
//!   and writes `docs/BENCHMARKS.md`.

mod backends;
mod bench;
mod cli;
mod ferretdb;
mod interop;
mod matrix;
mod util;
mod venv;

use std::process::ExitCode;

use crate::cli::Args;
use crate::util::Result;

/// Top-level help.
const HELP: &str = "\
cargo xtask <command> [options]

Commands:
  test-matrix   workspace tests + the conformance suite against every backend
  bench         kombu-rs vs Python Kombu vs a raw channel; writes docs/BENCHMARKS.md
  interop       kombu-rs <-> Python Kombu scenarios (sqlite, redis, amqp)
  help [cmd]    this help, or a command's

Run `cargo xtask help <command>` (or `<command> --help`) for its options.";

/// Help text of a subcommand.
fn usage(command: &str) -> Option<&'static str> {
    match command {
        "test-matrix" => Some(matrix::USAGE),
        "bench" => Some(bench::USAGE),
        "interop" => Some(interop::USAGE),
        _ => None,
    }
}

/// The command-line arguments after the program name, which must be UTF-8.
fn arguments() -> Result<Vec<String>> {
    std::env::args_os()
        .skip(1)
        .map(|arg| {
            arg.into_string()
                .map_err(|arg| util::Error::new(format!("argument {arg:?} is not valid UTF-8")))
        })
        .collect()
}

/// Dispatches; `Ok(false)` means "ran, but something failed".
fn dispatch(args: Vec<String>) -> Result<bool> {
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{HELP}");
        return util::fail("missing command");
    };
    let wants_help = rest.iter().any(|arg| arg == "--help" || arg == "-h");
    match command.as_str() {
        "help" | "--help" | "-h" => {
            match rest.first() {
                None => println!("{HELP}"),
                Some(topic) => match usage(topic) {
                    Some(text) => println!("{text}"),
                    None => {
                        return util::fail(format!(
                            "unknown command `{topic}`; commands: test-matrix, bench, interop"
                        ))
                    }
                },
            }
            Ok(true)
        }
        name if wants_help && usage(name).is_some() => {
            println!("{}", usage(name).unwrap_or_default());
            Ok(true)
        }
        "test-matrix" => matrix::run(Args::new(rest.to_vec())),
        "bench" => bench::run(Args::new(rest.to_vec())),
        "interop" => interop::run(Args::new(rest.to_vec())),
        other => util::fail(format!(
            "unknown command `{other}`; commands: test-matrix, bench, interop (see `cargo xtask help`)"
        )),
    }
}

fn main() -> ExitCode {
    match arguments().and_then(dispatch) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
