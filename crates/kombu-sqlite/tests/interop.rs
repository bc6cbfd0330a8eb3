//! Wire compatibility with Python Kombu's `sqla+sqlite` transport, both ways, including both
//! running at once on one file. Python Kombu runs from the project venv
//! (`tests/python/interop_kombu.py`); `cargo xtask test-matrix` provisions it and sets
//! `KOMBU_PYTHON`. Without a Python that has Kombu these tests fail and say how to get one:
//! they are never skipped silently.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test scaffolding

mod common;
use common::TempDb;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kombu::{Connection, PublishOptions, Queue};
use serde_json::{json, Value};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python with Kombu: `KOMBU_PYTHON`, else the project venv.
fn python() -> PathBuf {
    let python = std::env::var_os("KOMBU_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let works = Command::new(&python)
        .args(["-c", "import kombu, sqlalchemy"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        works,
        "no Python with kombu and SQLAlchemy at {} — run `cargo xtask test-matrix` (it creates the \
         project venv from tests/python/requirements.txt) or set KOMBU_PYTHON",
        python.display()
    );
    python
}

fn script() -> PathBuf {
    workspace_root().join("tests/python/interop_kombu.py")
}

fn python_command(args: &[&str]) -> Command {
    let mut command = Command::new(python());
    command.arg(script()).args(args);
    command
}

fn check(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")))
        .collect()
}

async fn publish_from_rust(url: &str, queue: &str, count: usize) {
    let conn = Connection::new(url).unwrap();
    let producer = conn.producer();
    for n in 0..count {
        producer
            .publish(
                &json!({"n": n, "text": "h\u{e9}llo \u{2713}", "from": "rust"}),
                PublishOptions::new()
                    .routing_key(queue)
                    .declare(Queue::new(queue))
                    .header("x-origin", "rust"),
            )
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
}

async fn consume_in_rust(url: &str, queue: &str, count: usize) -> Vec<kombu::Message> {
    let conn = Connection::new(url).unwrap();
    let mut consumer = conn.consumer([Queue::new(queue)]).build().await.unwrap();
    consumer.consume().await.unwrap();
    let mut got = Vec::new();
    while got.len() < count {
        let message = consumer
            .recv_timeout(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("after {} of {count} messages: {e}", got.len()));
        message.ack().await.unwrap();
        got.push(message);
    }
    consumer.close().await.unwrap();
    conn.close().await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publishes_rust_consumes() {
    let db = TempDb::new("py-to-rs");
    let output = python_command(&["publish", &db.python_url(), "jobs", "20"])
        .output()
        .unwrap();
    check(&output, "Python publish");
    // Python created the tables; kombu-rs opens them as they are.
    let got = consume_in_rust(&db.url(""), "jobs", 20).await;
    for (n, message) in got.iter().enumerate() {
        let body: Value = message.decode().unwrap();
        assert_eq!(
            body,
            json!({"n": n, "text": "h\u{e9}llo \u{2713}", "from": "python"})
        );
        assert_eq!(message.content_type(), Some("application/json"));
        assert_eq!(message.content_encoding(), Some("utf-8"));
        assert_eq!(
            message.headers().get("x-origin").and_then(|v| v.as_str()),
            Some("python")
        );
        assert_eq!(message.delivery_info().routing_key(), "jobs");
        assert_eq!(message.delivery_info().exchange(), "");
        assert!(!message.redelivered());
    }
    // Acked rows are deleted (Kombu would keep them with visible = 0).
    assert_eq!(db.rows("SELECT count(*) FROM kombu_message"), 0);
    assert_eq!(db.rows("SELECT count(*) FROM kombu_queue WHERE name = 'jobs'"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_publishes_python_consumes() {
    let db = TempDb::new("rs-to-py");
    // kombu-rs creates the tables; Python Kombu uses them as its own.
    publish_from_rust(&db.url(""), "jobs", 20).await;
    assert_eq!(
        db.rows("SELECT count(*) FROM kombu_message WHERE visible = 1 AND timestamp IS NULL AND version = 1"),
        20
    );
    let output = python_command(&["consume", &db.python_url(), "jobs", "20", "30"])
        .output()
        .unwrap();
    check(&output, "Python consume");
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 20);
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(
            line["body"],
            json!({"n": n, "text": "h\u{e9}llo \u{2713}", "from": "rust"})
        );
        assert_eq!(line["content_type"], "application/json");
        assert_eq!(line["content_encoding"], "utf-8");
        assert_eq!(line["headers"]["x-origin"], "rust");
        assert_eq!(
            line["delivery_info"],
            json!({"exchange": "", "routing_key": "jobs"})
        );
    }
    // Kombu marks what it consumed invisible and keeps the rows, with its local timestamp.
    assert_eq!(
        db.rows("SELECT count(*) FROM kombu_message WHERE visible = 0 AND version = 2"),
        20
    );
    assert_eq!(
        db.rows("SELECT count(*) FROM kombu_message WHERE timestamp GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] *'"),
        20
    );
    // kombu-rs never resurrects rows Python consumed, and purge clears them away.
    let conn = Connection::new(&db.url("")).unwrap();
    let channel = conn.channel().await.unwrap();
    assert!(channel
        .get("jobs", kombu::transport::GetOptions::default())
        .await
        .unwrap()
        .is_none());
    assert_eq!(channel.purge_queue("jobs").await.unwrap(), 0);
    assert_eq!(db.rows("SELECT count(*) FROM kombu_message"), 0);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_at_once_on_one_file() {
    let db = TempDb::new("concurrent");
    // Create the schema first so neither side races the other's CREATE TABLE.
    Connection::new(&db.url("")).unwrap().channel().await.unwrap();
    const N: usize = 200;

    // Python publishes while kombu-rs consumes...
    let python = python_command(&["publish", &db.python_url(), "to-rust", &N.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let got = consume_in_rust(&db.url(""), "to-rust", N).await;
    check(&python.wait_with_output().unwrap(), "Python publish (concurrent)");
    let mut seen: Vec<u64> = got
        .iter()
        .map(|m| m.decode::<Value>().unwrap()["n"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..N as u64).collect::<Vec<_>>(),
        "each message exactly once"
    );

    // ...and Python consumes while kombu-rs publishes.
    let python = python_command(&["consume", &db.python_url(), "to-python", &N.to_string(), "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    publish_from_rust(&db.url(""), "to-python", N).await;
    let output = python.wait_with_output().unwrap();
    check(&output, "Python consume (concurrent)");
    let mut seen: Vec<u64> = json_lines(&output)
        .iter()
        .map(|line| line["body"]["n"].as_u64().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..N as u64).collect::<Vec<_>>(),
        "each message exactly once"
    );
}
