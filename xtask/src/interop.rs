//! `cargo xtask interop [--backends a,b]`: the kombu-rs ⇄ Python Kombu scenarios.
//!
//! Each cross-process backend has an `interop` integration test that drives
//! `tests/python/interop_scenarios.py` (or `interop_kombu.py`) in both directions; Redis also
//! has `common_interop`, the `kombu::common` helpers against `interop_common.py`. This
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

/// Backends with interop tests: (name, crate, its interop test targets).
const INTEROP: &[(&str, &str, &[&str])] = &[
    ("sqlite", "kombu-sqlite", &["interop"]),
    // `common_interop`: the `kombu::common` helpers against Python's `kombu.common`.
    ("redis", "kombu-redis", &["interop", "common_interop"]),
    ("amqp", "kombu-amqp", &["interop"]),
    ("sqs", "kombu-sqs", &["interop"]),
    ("zookeeper", "kombu-zookeeper", &["interop"]),
    ("mongodb", "kombu-mongodb", &["interop"]),
];

pub(crate) fn run(mut args: Args) -> Result<bool> {
    let mut selected: Vec<(&str, &str, &[&str])> = INTEROP.to_vec();
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--backends" => {
                let names = args.value("--backends")?;
                selected = Vec::new();
                for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    match INTEROP.iter().find(|(n, _, _)| *n == name) {
                        Some(entry) => selected.push(*entry),
                        None => {
                            let known: Vec<&str> = INTEROP.iter().map(|(n, _, _)| *n).collect();
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
    if selected.iter().any(|(name, _, _)| *name == "redis") {
        crate::backends::REDIS_SERVER.ensure_installed(&root, "redis")?;
    }
    if selected.iter().any(|(name, _, _)| *name == "sqs") {
        crate::backends::MOTO_SERVER.ensure_installed(&root, "sqs")?;
    }
    if selected.iter().any(|(name, _, _)| *name == "amqp") {
        crate::backends::RABBITMQ_SERVER.ensure_installed(&root, "amqp")?;
    }
    if selected.iter().any(|(name, _, _)| *name == "zookeeper") {
        crate::backends::ZOOKEEPER_SERVER.ensure_installed(&root, "zookeeper")?;
    }
    if selected.iter().any(|(name, _, _)| *name == "mongodb") {
        crate::backends::FERRETDB_SERVER.ensure_installed(&root, "mongodb")?;
    }
    let mut ok = true;
    for (name, crate_name, tests) in selected {
        let mut command = cargo(&root);
        command.args(["test", "-p", crate_name]);
        for test in tests {
            command.args(["--test", test]);
        }
        command.env("KOMBU_PYTHON", venv.python());
        println!("\n== interop: {name}: {}", describe(&command));
        let status = run_streaming(&mut command)?;
        if !status.success() {
            println!("interop: {name}: FAILED");
            ok = false;
        }
    }
    Ok(ok)
}
