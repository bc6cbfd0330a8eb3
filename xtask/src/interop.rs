//! `cargo xtask interop [--backends a,b]`: the kombu-rs ⇄ Python Kombu scenarios.
//!
//! Each cross-process backend has an `interop` integration test that drives
//! `tests/python/interop_scenarios.py` (or `interop_kombu.py`) in both directions. This
//! command installs Python Kombu 5.7 with its extras into the project venv, makes sure the
//! servers the tests start are installed, and runs those tests. `cargo xtask test-matrix`
//! runs the same tests among the workspace tests.

use crate::cli::Args;
use crate::util::{self, cargo, describe, fail, run_streaming, Result};
use crate::venv;

pub(crate) const USAGE: &str = "\
cargo xtask interop [--backends sqlite,redis,amqp,sqs,zookeeper,mongodb]

Runs the interop tests (Python Kombu 5.7 publishes, kombu-rs consumes, and the
reverse) of the given backends (default: all that have them: sqlite, redis, amqp, sqs,
zookeeper, mongodb).";

/// Backends with interop tests: (name, crate).
const INTEROP: &[(&str, &str)] = &[
    ("sqlite", "kombu-sqlite"),
    ("redis", "kombu-redis"),
    ("amqp", "kombu-amqp"),
    ("sqs", "kombu-sqs"),
    ("zookeeper", "kombu-zookeeper"),
    ("mongodb", "kombu-mongodb"),
];

pub(crate) fn run(mut args: Args) -> Result<bool> {
    let mut selected: Vec<(&str, &str)> = INTEROP.to_vec();
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--backends" => {
                let names = args.value("--backends")?;
                selected = Vec::new();
                for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    match INTEROP.iter().find(|(n, _)| *n == name) {
                        Some(entry) => selected.push(*entry),
                        None => {
                            let known: Vec<&str> = INTEROP.iter().map(|(n, _)| *n).collect();
                            return fail(format!(
                                "no interop tests for backend `{name}`; backends with them: {}",
                                known.join(", ")
                            ));
                        }
                    }
                }
            }
            other => return args.unknown(other),
        }
    }
    let root = util::workspace_root();
    let venv = venv::ensure_bench_venv(&root, "interop")?;
    if selected.iter().any(|(name, _)| *name == "redis") {
        crate::backends::REDIS_SERVER.ensure_installed(&root, "redis")?;
    }
    if selected.iter().any(|(name, _)| *name == "sqs") {
        crate::backends::MOTO_SERVER.ensure_installed(&root, "sqs")?;
    }
    if selected.iter().any(|(name, _)| *name == "amqp") {
        crate::backends::RABBITMQ_SERVER.ensure_installed(&root, "amqp")?;
    }
    if selected.iter().any(|(name, _)| *name == "zookeeper") {
        crate::backends::ZOOKEEPER_SERVER.ensure_installed(&root, "zookeeper")?;
    }
    if selected.iter().any(|(name, _)| *name == "mongodb") {
        crate::backends::FERRETDB_SERVER.ensure_installed(&root, "mongodb")?;
    }
    let mut ok = true;
    for (name, crate_name) in selected {
        let mut command = cargo(&root);
        command
            .args(["test", "-p", crate_name, "--test", "interop"])
            .env("KOMBU_PYTHON", venv.python());
        println!("\n== interop: {name}: {}", describe(&command));
        let status = run_streaming(&mut command)?;
        if !status.success() {
            println!("interop: {name}: FAILED");
            ok = false;
        }
    }
    Ok(ok)
}
