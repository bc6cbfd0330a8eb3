//! kombu-rs ⇄ Python Kombu 5.7 on one throwaway redis-server: the scripted scenarios of
//! `tests/python/interop_scenarios.py` in both directions, reject/requeue across languages,
//! fanout, and a consumer killed with SIGKILL holding 100 messages (restored by Python and
//! by Rust). Needs the project venv (`cargo xtask test-matrix` creates it) or `KOMBU_PYTHON`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::RedisServer;
use kombu::{Connection, PublishOptions, Queue};
use kombu_testkit::interop::{self, json_lines, run_python, take, Broker};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_scenarios_consumed_by_rust() {
    let server = RedisServer::start();
    interop::python_scenarios_consumed_by_rust(&server.url(), Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_scenarios_consumed_by_python() {
    let server = RedisServer::start();
    interop::rust_scenarios_consumed_by_python(&server.url(), Broker::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reject_requeue_then_rust_gets_it_redelivered() {
    let server = RedisServer::start();
    interop::python_reject_requeue_then_rust_gets_it_redelivered(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fanout_reaches_rust_subscribers() {
    let server = RedisServer::start();
    interop::python_fanout_reaches_rust_subscribers(&server.url()).await;
}

/// The child side of the SIGKILL tests: take 100 messages without acking, say so, wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_holds_messages() {
    let Ok(url) = std::env::var("KOMBU_REDIS_CRASH_CHILD_URL") else {
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

fn crash_a_consumer_holding_100(url: &str) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["crash_child_holds_messages", "--exact", "--nocapture"])
        .env("KOMBU_REDIS_CRASH_CHILD_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        if line.expect("line").contains("holding 100") {
            ready = true;
            break;
        }
    }
    assert!(ready, "the child never held 100 messages");
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
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

async fn unacked_count(url: &str) -> usize {
    let client = redis::Client::open(url).expect("client");
    let mut c = client.get_multiplexed_async_connection().await.expect("redis");
    redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut c)
        .await
        .expect("HLEN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_100_in_flight_loses_nothing_python_restores() {
    let server = RedisServer::start();
    let url = server.url();
    publish_numbers(&url, "crash", 100).await;
    crash_a_consumer_holding_100(&url);
    assert_eq!(
        unacked_count(&url).await,
        100,
        "the dead consumer's claims are in Kombu's unacked hash"
    );
    // Python Kombu restores them after its visibility timeout and consumes them.
    let got = json_lines(&run_python(
        "interop_scenarios.py",
        &["drain", &url, "crash", "100", "1"],
    ));
    let mut ns: Vec<i64> = got
        .iter()
        .map(|l| l["body"]["n"].as_i64().unwrap_or(-1))
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..100).collect::<Vec<i64>>());
    assert!(got.iter().all(|l| l["redelivered"] == true));
    assert_eq!(unacked_count(&url).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_100_in_flight_loses_nothing_rust_restores() {
    let server = RedisServer::start();
    let url = server.url();
    publish_numbers(&url, "crash", 100).await;
    crash_a_consumer_holding_100(&url);
    let restorer = format!("{url}?visibility_timeout=1&unacked_restore_interval=0.2");
    let conn = Connection::new(&restorer).expect("connection");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got = take(&conn, Queue::new("crash"), 100).await;
    let mut ns: Vec<i64> = got
        .iter()
        .map(|m| m.decode::<Value>().expect("json")["n"].as_i64().unwrap_or(-1))
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..100).collect::<Vec<i64>>());
    assert!(got.iter().all(|m| m.redelivered()));
    conn.close().await.expect("close");
    assert_eq!(unacked_count(&url).await, 0);
}
