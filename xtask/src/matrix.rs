//! `cargo xtask test-matrix`: the workspace tests, then the conformance suite
//! against every backend, then one summary.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::backends::{self, Backend};
use crate::cli::{split_list, Args};
use crate::util::{
    self, cargo, describe, format_duration, run_streaming, run_tee_stdout, status_text, Result,
};
use crate::venv::{self, Venv};

/// Help text of the subcommand.
pub(crate) const USAGE: &str = "\
cargo xtask test-matrix [--backends a,b] [--skip-backends c] [--skip-workspace-tests]

Ensures the project Python venv .venv (Python Kombu and SQLAlchemy from
tests/python/requirements.txt, for the interop tests, which get it as
KOMBU_PYTHON), runs `cargo test --workspace --all-features --no-fail-fast` (conformance suites
deferred via KOMBU_TESTKIT_DEFER=1), then for each backend provisions its broker and runs
`cargo test -p <crate> --all-features --test <its conformance test>` with KOMBU_TEST_URL and
KOMBU_TESTKIT_REPORT set, and prints a summary.
Exits non-zero if anything failed, including a backend that cannot be provisioned.

Options:
  --backends a,b          only these backends (default: all)
  --skip-backends c       leave these out (listed as \"left out by request\")
  --skip-workspace-tests  skip step 1 (only run the conformance suites)";

/// Parsed options.
#[derive(Debug)]
struct Options {
    backends: Vec<&'static Backend>,
    left_out: Vec<&'static str>,
    workspace_tests: bool,
}

/// Looks up backend names, rejecting unknown ones with the list of known ones.
fn lookup(names: &[String]) -> Result<Vec<&'static Backend>> {
    let mut found: Vec<&'static Backend> = Vec::new();
    for name in names {
        match backends::find(name) {
            Some(backend) if found.iter().any(|b| b.name == backend.name) => {}
            Some(backend) => found.push(backend),
            None => {
                return util::fail(format!(
                    "unknown backend `{name}`; known backends: {}",
                    backends::names().join(", ")
                ))
            }
        }
    }
    Ok(found)
}

fn parse_options(mut args: Args) -> Result<Options> {
    let mut only: Option<Vec<String>> = None;
    let mut skip: Vec<String> = Vec::new();
    let mut workspace_tests = true;
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--backends" => only
                .get_or_insert_with(Vec::new)
                .extend(split_list(&args.value(&flag)?, &flag)?),
            "--skip-backends" => skip.extend(split_list(&args.value(&flag)?, &flag)?),
            "--skip-workspace-tests" => workspace_tests = false,
            _ => return args.unknown(&flag),
        }
    }
    let left_out: Vec<&'static str> = lookup(&skip)?.iter().map(|b| b.name).collect();
    let selected = match only {
        Some(names) => lookup(&names)?,
        None => backends::BACKENDS.iter().collect(),
    };
    let backends = selected
        .into_iter()
        .filter(|b| !left_out.contains(&b.name))
        .collect();
    Ok(Options {
        backends,
        left_out,
        workspace_tests,
    })
}

/// The report the conformance harness writes to `KOMBU_TESTKIT_REPORT`.
#[derive(Debug, Deserialize)]
struct Report {
    backend: String,
    passed: u64,
    failed: u64,
    #[serde(default)]
    skipped: Vec<SkippedTest>,
    /// Behaviours the transport crate excluded, with its reasons.
    #[serde(default)]
    excluded: Vec<SkippedTest>,
    #[serde(default)]
    failures: Vec<FailedTest>,
    #[serde(default)]
    duration_ms: f64,
}

/// A behaviour the transport does not support, or excluded: with the reason.
#[derive(Debug, Deserialize)]
struct SkippedTest {
    name: String,
    reason: String,
}

/// A failed conformance test.
#[derive(Debug, Deserialize)]
struct FailedTest {
    name: String,
    error: String,
}

/// One named note of the summary: a skip reason or a failure.
#[derive(Debug)]
struct Note {
    name: String,
    text: String,
}

impl Note {
    fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }
}

/// One row of the summary table.
#[derive(Debug)]
struct Row {
    name: String,
    result: Option<Counts>,
}

/// What a run produced; `None` in a [`Row`] means "left out by request".
#[derive(Debug, Default)]
struct Counts {
    passed: u64,
    failed: u64,
    skipped: u64,
    /// Behaviours the transport crate excluded (not counted in `skipped`).
    excluded: u64,
    time: Duration,
    skip_reasons: Vec<Note>,
    exclusions: Vec<Note>,
    failures: Vec<Note>,
}

impl Counts {
    /// Counts for something that failed before producing results.
    fn failure(name: &str, text: String, time: Duration) -> Self {
        Self {
            failed: 1,
            time,
            failures: vec![Note::new(name, text)],
            ..Self::default()
        }
    }
}

/// Runs the subcommand; `Ok(false)` when the matrix failed.
pub(crate) fn run(args: Args) -> Result<bool> {
    let options = parse_options(args)?;
    let root = util::workspace_root();
    let mut rows = Vec::new();
    if options.workspace_tests {
        // The interop tests (Rust ⇄ Python Kombu) run among the workspace tests.
        banner(
            "python venv, redis-server, rabbitmq-server, zookeeper, FerretDB and openssl for the interop, restart and TLS tests",
        );
        let venv = venv::ensure_bench_venv(&root, "xtask")?;
        // The Redis interop, crash and restart tests start their own redis-server.
        crate::backends::REDIS_SERVER.ensure_installed(&root, "redis")?;
        crate::backends::OPENSSL.ensure_installed(&root, "redis and amqp (TLS tests)")?;
        // The AMQP interop and broker-restart tests start their own RabbitMQ node.
        crate::backends::RABBITMQ_SERVER.ensure_installed(&root, "amqp")?;
        // The ZooKeeper interop and fault tests start their own ZooKeeper.
        crate::backends::ZOOKEEPER_SERVER.ensure_installed(&root, "zookeeper")?;
        // The MongoDB interop and fault tests start their own FerretDB (built once, cached).
        crate::backends::FERRETDB_SERVER.ensure_installed(&root, "mongodb")?;
        rows.push(Row {
            name: "workspace".into(),
            result: Some(workspace_tests(&root, &venv)?),
        });
    }
    for backend in &options.backends {
        rows.push(Row {
            name: backend.name.into(),
            result: Some(conformance(&root, backend)?),
        });
    }
    for name in &options.left_out {
        rows.push(Row {
            name: (*name).into(),
            result: None,
        });
    }
    let summary = summary(&rows);
    println!("\n{summary}");
    Ok(rows
        .iter()
        .all(|row| row.result.as_ref().is_none_or(|c| c.failed == 0)))
}

/// Step 1: `cargo test --workspace --all-features --no-fail-fast` with the conformance
/// suites deferred: every test binary runs even after one fails, so one failure never hides
/// another.
fn workspace_tests(root: &Path, venv: &Venv) -> Result<Counts> {
    let mut command = cargo(root);
    command
        .args(["test", "--workspace", "--all-features", "--no-fail-fast"])
        .env("KOMBU_TESTKIT_DEFER", "1")
        .env("KOMBU_PYTHON", venv.python());
    banner(&format!(
        "workspace tests: KOMBU_TESTKIT_DEFER=1 KOMBU_PYTHON={} {}",
        venv.python().display(),
        describe(&command)
    ));
    let start = Instant::now();
    let mut counts = Counts::default();
    let status = run_tee_stdout(&mut command, |line| {
        if let Some((passed, failed, ignored)) = parse_test_result(line) {
            counts.passed += passed;
            counts.failed += failed;
            counts.skipped += ignored;
        } else if let Some(name) = failed_test_name(line) {
            counts
                .failures
                .push(Note::new(name, "FAILED (see its output above)"));
        }
    })?;
    counts.time = start.elapsed();
    if !status.success() && counts.failed == 0 {
        counts.failed = 1;
        counts.failures.push(Note::new(
            "cargo test --workspace",
            format!(
                "{} with no failing test reported (build failure? see the output above)",
                status_text(status)
            ),
        ));
    }
    Ok(counts)
}

/// Step 2: provision one backend and run its conformance suite.
fn conformance(root: &Path, backend: &Backend) -> Result<Counts> {
    let start = Instant::now();
    banner(&format!(
        "backend {}: conformance suite of {} (test {})",
        backend.name, backend.crate_name, backend.test_name
    ));
    let provisioned = match backend.provision.provision(root, backend.name) {
        Ok(provisioned) => provisioned,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            return Ok(Counts::failure("provisioning", e.to_string(), start.elapsed()));
        }
    };
    println!("xtask: {}: {}", backend.name, provisioned.describe());

    let report_path = util::xtask_tmp(root)?.join(format!("conformance-{}.json", backend.name));
    if report_path.exists() {
        std::fs::remove_file(&report_path).map_err(|e| {
            util::Error::new(format!(
                "cannot remove the stale report {}: {e}",
                report_path.display()
            ))
        })?;
    }
    let mut command = cargo(root);
    command
        .args([
            "test",
            "-p",
            backend.crate_name,
            "--all-features",
            "--test",
            backend.test_name,
        ])
        .env("KOMBU_TEST_URL", &provisioned.url)
        .env("KOMBU_TESTKIT_REPORT", &report_path)
        .env_remove("KOMBU_TESTKIT_DEFER");
    println!("xtask: KOMBU_TEST_URL={} {}", provisioned.url, describe(&command));
    let status = run_streaming(&mut command)?;
    drop(provisioned);
    let wall = start.elapsed();

    let text = match std::fs::read_to_string(&report_path) {
        Ok(text) => text,
        Err(e) => {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                String::new()
            } else {
                format!(" ({e})")
            };
            return Ok(Counts::failure(
                "report",
                format!(
                    "no report at {}{why}: the conformance binary crashed or did not run (cargo test: {})",
                    report_path.display(),
                    status_text(status)
                ),
                wall,
            ));
        }
    };
    let report: Report = match serde_json::from_str(&text) {
        Ok(report) => report,
        Err(e) => {
            return Ok(Counts::failure(
                "report",
                format!("unreadable report {}: {e}", report_path.display()),
                wall,
            ))
        }
    };
    let mut counts = counts_from_report(report, backend.name);
    if counts.time.is_zero() {
        counts.time = wall;
    }
    if !status.success() && counts.failed == 0 {
        counts.failed = 1;
        counts.failures.push(Note::new(
            "cargo test",
            format!("{} although the report lists no failures", status_text(status)),
        ));
    }
    Ok(counts)
}

/// Summary counts of a conformance report.
fn counts_from_report(report: Report, backend: &str) -> Counts {
    let mut counts = Counts {
        passed: report.passed,
        failed: report.failed.max(report.failures.len() as u64),
        skipped: report.skipped.len() as u64,
        excluded: report.excluded.len() as u64,
        time: Duration::from_secs_f64((report.duration_ms / 1000.0).clamp(0.0, 1e9)),
        skip_reasons: report
            .skipped
            .into_iter()
            .map(|s| Note::new(s.name, s.reason))
            .collect(),
        exclusions: report
            .excluded
            .into_iter()
            .map(|s| Note::new(s.name, s.reason))
            .collect(),
        failures: report
            .failures
            .into_iter()
            .map(|f| Note::new(f.name, f.error))
            .collect(),
    };
    if report.backend != backend {
        counts.failed += 1;
        counts.failures.push(Note::new(
            "report",
            format!(
                "the report is for backend `{}`, expected `{backend}`",
                report.backend
            ),
        ));
    }
    counts
}

/// `(passed, failed, ignored)` of a libtest `test result:` line.
fn parse_test_result(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, counts) = rest.split_once(". ")?;
    let (mut passed, mut failed, mut ignored) = (None, None, None);
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(number), Some(label)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(number) = number.parse::<u64>() else {
            continue;
        };
        match label {
            "passed" => passed = Some(number),
            "failed" => failed = Some(number),
            "ignored" => ignored = Some(number),
            _ => {}
        }
    }
    Some((passed?, failed?, ignored.unwrap_or(0)))
}

/// The test name of a libtest `test <name> ... FAILED` line.
fn failed_test_name(line: &str) -> Option<&str> {
    line.trim_end().strip_prefix("test ")?.strip_suffix(" ... FAILED")
}

/// A section header in the streamed output.
fn banner(text: &str) {
    println!("\n==> test-matrix: {text}");
}

/// The summary: table, skipped and excluded behaviours, failures, totals line.
fn summary(rows: &[Row]) -> String {
    let header = ["backend", "passed", "failed", "skipped", "excluded", "time"];
    let mut table: Vec<[String; 6]> = vec![header.map(str::to_owned)];
    for row in rows {
        match &row.result {
            Some(c) => table.push([
                row.name.clone(),
                c.passed.to_string(),
                c.failed.to_string(),
                c.skipped.to_string(),
                c.excluded.to_string(),
                format_duration(c.time),
            ]),
            None => table.push([
                row.name.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
    }
    let mut out = String::from("test-matrix summary\n");
    for (i, mut text) in crate::util::text_table(&table).into_iter().enumerate() {
        // Line 0 is the header, line 1 its rule; row r is on line r + 1.
        if i >= 2 && rows[i - 2].result.is_none() {
            text.push_str("   (left out by request)");
        }
        out.push_str(&text);
        out.push('\n');
    }

    let mut section = |title: &str, pick: &dyn Fn(&Counts) -> &Vec<Note>| {
        let with_notes: Vec<(&str, &Vec<Note>)> = rows
            .iter()
            .filter_map(|row| row.result.as_ref().map(|c| (row.name.as_str(), pick(c))))
            .filter(|(_, list)| !list.is_empty())
            .collect();
        if with_notes.is_empty() {
            return;
        }
        out.push_str(&format!("\n{title}:\n"));
        for (name, list) in with_notes {
            out.push_str(&format!("  {name}:\n"));
            for note in list {
                let mut lines = note.text.lines();
                out.push_str(&format!("    - {}: {}\n", note.name, lines.next().unwrap_or("")));
                for more in lines {
                    out.push_str(&format!("        {more}\n"));
                }
            }
        }
    };
    section("skipped behaviours", &|c| &c.skip_reasons);
    section("behaviours excluded by the transport", &|c| &c.exclusions);
    section("failures", &|c| &c.failures);

    let ran = rows.iter().filter_map(|row| row.result.as_ref());
    let (passed, failed, skipped, excluded) = ran.fold((0, 0, 0, 0), |(p, f, s, e), c| {
        (p + c.passed, f + c.failed, s + c.skipped, e + c.excluded)
    });
    out.push_str(&format!(
        "\nmatrix: {passed} passed, {failed} failed, {skipped} skipped, {excluded} excluded"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Args {
        Args::new(words.iter().map(|w| (*w).to_owned()).collect())
    }

    fn names(options: &Options) -> Vec<&str> {
        options.backends.iter().map(|b| b.name).collect()
    }

    #[test]
    fn parses_selection() -> Result<()> {
        let all = parse_options(args(&[]))?;
        assert_eq!(names(&all), backends::names());
        assert!(all.workspace_tests);
        let only = parse_options(args(&["--backends=memory,memory", "--skip-workspace-tests"]))?;
        assert_eq!(names(&only), vec!["memory"]);
        assert!(!only.workspace_tests);
        let skipped = parse_options(args(&["--skip-backends", "memory"]))?;
        assert!(names(&skipped).iter().all(|name| *name != "memory"));
        assert_eq!(names(&skipped).len(), backends::names().len() - 1);
        assert_eq!(skipped.left_out, vec!["memory"]);
        Ok(())
    }

    #[test]
    fn rejects_unknown_names_and_flags() {
        let message = |words: &[&str]| {
            parse_options(args(words))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            message(&["--backends", "nosuchbroker,memory"]),
            format!(
                "unknown backend `nosuchbroker`; known backends: {}",
                backends::names().join(", ")
            )
        );
        assert!(message(&["--skip-backends", "x"]).starts_with("unknown backend `x`"));
        assert!(message(&["--backends"]).contains("--backends needs a value"));
        assert!(message(&["--backends", ""]).contains("empty"));
        assert!(message(&["--frobnicate"]).contains("unknown option `--frobnicate`"));
    }

    #[test]
    fn parses_libtest_lines() {
        let line = "test result: FAILED. 12 passed; 2 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(parse_test_result(line), Some((12, 2, 3)));
        assert_eq!(
            parse_test_result("test result: ok. 0 passed; 0 failed; 0 ignored"),
            Some((0, 0, 0))
        );
        assert_eq!(parse_test_result("running 3 tests"), None);
        assert_eq!(
            failed_test_name("test codec::roundtrip ... FAILED"),
            Some("codec::roundtrip")
        );
        assert_eq!(failed_test_name("test codec::roundtrip ... ok"), None);
    }

    #[test]
    fn reads_reports() -> Result<()> {
        let text = r#"{"backend": "memory", "passed": 40, "failed": 1,
            "skipped": [{"name": "headers_exchange", "reason": "transport does not support headers exchanges"}],
            "excluded": [{"name": "fifo_order_per_queue", "reason": "shards reorder"}],
            "failures": [{"name": "x", "error": "boom"}], "duration_ms": 1234}"#;
        let report: Report = serde_json::from_str(text).map_err(|e| util::Error::new(e.to_string()))?;
        let counts = counts_from_report(report, "memory");
        assert_eq!((counts.passed, counts.failed, counts.skipped), (40, 1, 1));
        assert_eq!(counts.excluded, 1);
        assert_eq!(counts.exclusions[0].name, "fifo_order_per_queue");
        assert_eq!(counts.exclusions[0].text, "shards reorder");
        assert_eq!(counts.time, Duration::from_millis(1234));
        let wrong: Report = serde_json::from_str(r#"{"backend": "redis", "passed": 1, "failed": 0}"#)
            .map_err(|e| util::Error::new(e.to_string()))?;
        assert_eq!(counts_from_report(wrong, "memory").failed, 1);
        Ok(())
    }

    #[test]
    fn summarises() {
        let rows = vec![
            Row {
                name: "workspace".into(),
                result: Some(Counts {
                    passed: 100,
                    skipped: 2,
                    time: Duration::from_secs(30),
                    ..Counts::default()
                }),
            },
            Row {
                name: "memory".into(),
                result: Some(Counts {
                    passed: 40,
                    failed: 1,
                    skipped: 1,
                    excluded: 1,
                    time: Duration::from_millis(1234),
                    skip_reasons: vec![Note::new("headers_exchange", "no headers exchanges")],
                    exclusions: vec![Note::new("fifo_order_per_queue", "shards reorder")],
                    failures: vec![Note::new("x", "line one\nline two")],
                }),
            },
            Row {
                name: "redis".into(),
                result: None,
            },
        ];
        let text = summary(&rows);
        assert!(
            text.contains("memory    |     40 |      1 |       1 |        1 |  1.2s"),
            "{text}"
        );
        assert!(
            text.contains("redis     |      - |      - |       - |        - |     -   (left out by request)"),
            "{text}"
        );
        assert!(text.contains("skipped behaviours:\n  memory:\n    - headers_exchange: no headers exchanges"));
        assert!(
            text.contains("behaviours excluded by the transport:\n  memory:\n    - fifo_order_per_queue: shards reorder"),
            "{text}"
        );
        assert!(
            text.contains("failures:\n  memory:\n    - x: line one\n        line two"),
            "{text}"
        );
        assert!(
            text.ends_with("\nmatrix: 140 passed, 1 failed, 3 skipped, 1 excluded"),
            "{text}"
        );
    }
}
