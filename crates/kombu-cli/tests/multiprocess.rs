//! Several `kombu` processes on one SQLite file: competing consumers split the messages with
//! none lost or duplicated, and a consumer killed with SIGKILL loses nothing (its messages
//! come back after the visibility timeout).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test scaffolding

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::sqlite_url;

fn kombu(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kombu"));
    command.args(args).env("KOMBU_URL", url).env_remove("RUST_LOG");
    command
}

/// Publish `0..n` as JSON numbers, one message per stdin line.
fn publish_numbers(url: &str, queue: &str, n: u64) {
    let mut child = kombu(url, &["publish", "--declare-queue", queue, "--lines", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!("{i}\n"));
        }
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `kombu consume --json` process whose message numbers arrive on `sink` tagged with `who`.
fn spawn_consumer(
    url: &str,
    queue: &str,
    extra: &[&str],
    who: usize,
    sink: mpsc::Sender<(usize, u64)>,
) -> Child {
    let mut args = vec!["consume", queue, "--json"];
    args.extend_from_slice(extra);
    let mut child = kombu(url, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let value: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let body = &value["body"];
            let n = body
                .as_u64()
                .or_else(|| body.as_str().and_then(|s| s.parse().ok()))
                .unwrap_or_else(|| panic!("unexpected body in {line}"));
            if sink.send((who, n)).is_err() {
                return;
            }
        }
    });
    child
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn two_consumer_processes_split_ten_thousand_messages_exactly_once() {
    const N: u64 = 10_000;
    let url = sqlite_url("split");
    publish_numbers(&url, "split", N);

    let (sink, numbers) = mpsc::channel();
    let a = spawn_consumer(&url, "split", &["--prefetch", "100"], 0, sink.clone());
    let b = spawn_consumer(&url, "split", &["--prefetch", "100"], 1, sink);
    let mut seen = BTreeSet::new();
    let mut per_consumer = [0u64; 2];
    let mut duplicates = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while seen.len() < N as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((who, n)) = numbers.recv_timeout(left) else {
            break;
        };
        per_consumer[who] += 1;
        if !seen.insert(n) {
            duplicates.push(n);
        }
    }
    // Let in-flight output settle: a duplicate could still be on its way.
    while let Ok((who, n)) = numbers.recv_timeout(Duration::from_millis(500)) {
        per_consumer[who] += 1;
        if !seen.insert(n) {
            duplicates.push(n);
        }
    }
    stop(a);
    stop(b);
    assert!(duplicates.is_empty(), "delivered twice: {duplicates:?}");
    assert_eq!(seen.len() as u64, N, "lost {} messages", N - seen.len() as u64);
    assert_eq!(
        seen.iter().copied().collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>()
    );
    assert!(
        per_consumer.iter().all(|&n| n > 0),
        "both consumers should get a share: {per_consumer:?}"
    );
}

#[test]
fn a_consumer_killed_mid_stream_loses_nothing() {
    const N: u64 = 300;
    let url = sqlite_url("sigkill");
    publish_numbers(&url, "work", N);

    let (sink, numbers) = mpsc::channel();
    // Prefetch 50: at the kill the victim holds many taken-but-unacked messages.
    let victim = spawn_consumer(
        &url,
        "work",
        &["--prefetch", "50", "-o", "visibility_timeout=2"],
        0,
        sink.clone(),
    );
    let mut seen = BTreeSet::new();
    while seen.len() < 20 {
        let (_, n) = numbers
            .recv_timeout(Duration::from_secs(30))
            .expect("victim output");
        seen.insert(n);
    }
    stop(victim); // SIGKILL: no cleanup, no restore
    let killed_at = Instant::now();

    let survivor = spawn_consumer(&url, "work", &["-o", "visibility_timeout=2"], 1, sink);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut redelivered_after = None;
    while seen.len() < N as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((_, n)) = numbers.recv_timeout(left) else {
            break;
        };
        if !seen.contains(&n) && redelivered_after.is_none() && seen.len() >= 20 {
            redelivered_after = Some(killed_at.elapsed());
        }
        seen.insert(n);
    }
    stop(survivor);
    let missing: Vec<u64> = (0..N).filter(|n| !seen.contains(n)).collect();
    assert!(missing.is_empty(), "lost after SIGKILL: {missing:?}");

    // Everything was acked by the survivor: nothing left in the queue.
    let output = kombu(&url, &["stats", "work", "--json"]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stats = String::from_utf8_lossy(&output.stdout);
    assert!(
        stats.contains("\"messages\":0") || stats.contains("\"messages\": 0"),
        "queue should be empty: {stats}"
    );
}

#[test]
fn routing_declared_in_one_process_serves_another_until_the_exchange_is_deleted() {
    let url = sqlite_url("routing");
    // Each call is a separate `kombu` process.
    let run = |command_line: &str| {
        let args: Vec<&str> = command_line.split_whitespace().collect();
        let output = kombu(&url, &args).output().unwrap();
        assert!(
            output.status.success(),
            "kombu {command_line}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run("declare exchange events --type topic");
    run("declare queue audit --exchange events --routing-key user.#");
    // Other processes route over the stored topic binding.
    run("publish --exchange events --type topic -r user.created.eu 1");
    run("publish --exchange events --type topic -r order.created 2");
    assert!(run("stats audit --json").contains("\"messages\":1"));
    // Deleting the exchange in yet another process removes its stored bindings.
    run("delete exchange events");
    run("publish --exchange events --type topic -r user.deleted 3");
    assert!(run("stats audit --json").contains("\"messages\":1"));
}

/// The number of messages in `queue`, from `kombu stats`.
fn queue_count(url: &str, queue: &str) -> u64 {
    let output = kombu(url, &["stats", queue, "--json"]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    stats[0]["messages"].as_u64().unwrap()
}

#[test]
#[cfg(unix)]
fn sigterm_ends_a_consumer_with_exit_130_and_gives_back_what_it_holds() {
    let url = sqlite_url("sigterm-consume");
    publish_numbers(&url, "held", 3);
    // A peek holds every message it printed until it stops.
    let (sink, seen) = mpsc::channel();
    let child = spawn_consumer(&url, "held", &["--requeue", "--prefetch", "0"], 0, sink);
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, n) = seen
            .recv_timeout(left)
            .expect("the consumer printed all 3 messages");
        got.insert(n);
    }
    assert_eq!(
        queue_count(&url, "held"),
        0,
        "positive control: the consumer holds all 3"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "SIGTERM is an interruption");
    assert_eq!(
        queue_count(&url, "held"),
        3,
        "every held message is back when the process exits"
    );
}
