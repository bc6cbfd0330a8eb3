//! kombu-rs ⇄ Python Kombu 5.7 (kazoo) on one throwaway ZooKeeper: the scripted scenarios of
//! `tests/python/interop_scenarios.py` in both directions (priorities and a Celery task
//! message included), Kombu's reject/requeue read by kombu-rs, and a kombu-rs consumer
//! killed with SIGKILL holding 100 messages (all delivered again once its session expired).
//! Needs the project venv (`cargo xtask test-matrix` creates it) or `KOMBU_PYTHON`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ZkServer;
use kombu::{Connection, PublishOptions, Queue};
use kombu_testkit::interop::{self, take, Broker};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_scenarios_consumed_by_rust() {
    let server = ZkServer::start();
    interop::python_scenarios_consumed_by_rust(&server.url(), Broker::Zookeeper).await;
}

/// A mixed fleet: a Python Kombu consumer and a kombu-rs consumer on one queue lose nothing
/// (Python Kombu deletes the node it reads and ignores claims, so a message may reach both: at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_consumers_compete_without_losing_a_message() {
    let server = ZkServer::start();
    let url = server.url();
    interop::competing_with_a_python_consumer(&url, &url, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_scenarios_consumed_by_python() {
    let server = ZkServer::start();
    interop::rust_scenarios_consumed_by_python(&server.url(), Broker::Zookeeper).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reject_requeue_then_rust_gets_it_redelivered() {
    let server = ZkServer::start();
    interop::python_reject_requeue_then_rust_gets_it_redelivered(&server.url()).await;
}

/// The child side of the SIGKILL test: take 100 messages without acking, say so, wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_holds_messages() {
    let Ok(url) = std::env::var("KOMBU_ZK_CRASH_CHILD_URL") else {
        return; // Only runs as the child of `sigkill_with_100_in_flight_loses_nothing`.
    };
    let conn = Connection::new(&url).expect("connection");
    let mut consumer = conn
        .consumer([Queue::new("crash")])
        .prefetch_count(100)
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");
    let mut held = Vec::new();
    while held.len() < 100 {
        held.push(
            consumer
                .recv_timeout(Duration::from_secs(30))
                .await
                .expect("message"),
        );
    }
    println!("holding {}", held.len());
    tokio::time::sleep(Duration::from_secs(600)).await;
}

async fn publish_numbers(url: &str, queue: &str, count: usize) {
    let conn = Connection::new(url).expect("connection");
    let producer = conn.producer();
    for n in 0..count {
        producer
            .publish(
                &json!({"n": n}),
                PublishOptions::new()
                    .routing_key(queue)
                    .declare(Queue::new(queue)),
            )
            .await
            .expect("publish");
    }
    conn.close().await.expect("close");
}

async fn children(hosts: &str, path: &str) -> Vec<String> {
    let client = zookeeper_client::Client::connect(hosts).await.expect("zk");
    client.list_children(path).await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_100_in_flight_loses_nothing() {
    let server = ZkServer::start();
    // A 2 s session: the dead consumer's claims go 2 s after it died.
    let url = format!("{}?session_timeout=2", server.url());
    publish_numbers(&url, "crash", 100).await;
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["crash_child_holds_messages", "--exact", "--nocapture"])
        .env("KOMBU_ZK_CRASH_CHILD_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .any(|line| line.expect("line").contains("holding 100"));
    assert!(ready, "the child never held 100 messages");
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    // Right after the kill the claims are still there (the session has not expired yet):
    // the messages are held, not lost and not free.
    let claims = children(&server.hosts(), "/kombu-test/_kombu_rs/claims/crash").await;
    assert_eq!(
        claims.len(),
        100,
        "the dead consumer's claims outlive it until its session expires"
    );
    let conn = Connection::new(&url).expect("connection");
    let got = take(&conn, Queue::new("crash"), 100).await;
    let mut ns: Vec<i64> = got
        .iter()
        .map(|m| m.decode::<Value>().expect("json")["n"].as_i64().unwrap_or(-1))
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..100).collect::<Vec<i64>>());
    assert!(got.iter().all(|m| m.redelivered()), "claimed before: redelivered");
    conn.close().await.expect("close");
    assert!(children(&server.hosts(), "/kombu-test/crash").await.is_empty());
    assert!(children(&server.hosts(), "/kombu-test/_kombu_rs/claims/crash")
        .await
        .is_empty());
}
