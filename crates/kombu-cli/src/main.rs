//! `kombu`: an operator's and developer's tool over any kombu-rs transport — publish, consume,
//! declare, purge, delete, inspect and benchmark, by broker URL. Every transport is compiled in
//! (the `kombu` crate's `full` feature), so one binary talks to all of them.
//!
//! Run `kombu --help` for the commands and examples.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod error;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::commands::{admin, bench, celery, consume, declare, publish, transports};
use crate::error::{CliError, CliResult};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", e.line());
            e.exit_code()
        }
    }
}

/// Logs on stderr when asked for with `-v` or `RUST_LOG`; otherwise none, so the output of
/// commands stays clean for pipes.
fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::new(spec),
        _ => match verbose {
            0 => return,
            1 => EnvFilter::new("info"),
            2 => EnvFilter::new("debug"),
            _ => EnvFilter::new("trace"),
        },
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> CliResult {
    let Cli { global, command } = cli;
    // `transports` needs neither a runtime nor a broker.
    if let Command::Transports(args) = &command {
        return transports::run(args);
    }
    // One thread is plenty for a CLI and keeps the benchmark comparable with what
    // `kombu-bench` measured; concurrent benchmark tasks get a thread per core.
    let concurrent = matches!(&command, Command::Bench(b) if b.producers > 1 || b.consumers > 1);
    let mut builder = if concurrent {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| CliError::other(format!("cannot start the tokio runtime: {e}")))?;
    let result = runtime.block_on(async move {
        match command {
            Command::Publish(args) => publish::run(&global, args).await,
            Command::Consume(args) => consume::run(&global, args).await,
            Command::Declare(command) => declare::run(&global, command).await,
            Command::Purge(args) => admin::purge(&global, args).await,
            Command::Delete(command) => admin::delete(&global, command).await,
            Command::Stats(args) => admin::stats(&global, args).await,
            Command::Bench(args) => bench::run(&global, args).await,
            Command::Celery(command) => celery::run(&global, command).await,
            Command::Transports(args) => transports::run(&args),
        }
    });
    // Commands close their connections before returning; what may remain is a blocking
    // stdin read (`publish --lines` that failed mid-stream), which must not hold the exit.
    runtime.shutdown_background();
    result
}
