//! A Redis restart mid-stream: every publish that returned Ok is consumed, the consumer
//! resumes by itself, and no message whose ack succeeded comes back.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::RedisServer;
use kombu::{Connection, Message, PublishOptions, Queue, RetryPolicy};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_loses_nothing_and_the_consumer_resumes() {
    let mut server = RedisServer::start();
    let url = server.url();
    let consumer_conn = Connection::new(&url).expect("connection");
    let mut consumer = consumer_conn
        .consumer([Queue::new("restart")])
        .prefetch_count(10)
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");

    let producer_conn = Connection::new(&url).expect("connection");
    let producer = producer_conn.producer();
    let mut confirmed = BTreeSet::new();
    let mut acked = BTreeSet::new();
    let mut received = Vec::new();
    let publish = |n: u64| {
        producer.publish(
            &json!({"n": n}),
            PublishOptions::new()
                .routing_key("restart")
                .declare(Queue::new("restart"))
                .retry(RetryPolicy::default().max_retries(10)),
        )
    };
    for n in 0..200u64 {
        if n == 100 {
            server.restart();
        }
        if publish(n).await.is_ok() {
            confirmed.insert(n);
        }
        // Consume as we go (a few at a time), acking what arrives.
        while let Ok(m) = consumer.recv_timeout(Duration::from_millis(5)).await {
            ack_once(m, &mut acked, &mut received).await;
        }
    }
    assert_eq!(confirmed.len(), 200, "retrying publishes ride out the restart");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !confirmed.iter().all(|n| received.contains(n)) && Instant::now() < deadline {
        if let Ok(m) = consumer.recv_timeout(Duration::from_millis(200)).await {
            ack_once(m, &mut acked, &mut received).await;
        }
    }
    let missing: Vec<&u64> = confirmed.iter().filter(|n| !received.contains(n)).collect();
    assert!(missing.is_empty(), "confirmed but never consumed: {missing:?}");
    consumer.close().await.expect("close");
    producer_conn.close().await.expect("close");
}

/// Record a received message and ack it; a message whose ack succeeded must never come back.
async fn ack_once(m: Message, acked: &mut BTreeSet<u64>, received: &mut Vec<u64>) {
    let n = m.decode::<Value>().expect("json")["n"].as_u64().expect("n");
    assert!(
        !acked.contains(&n),
        "message {n} came back after a successful ack"
    );
    if m.ack().await.is_ok() {
        acked.insert(n);
    }
    received.push(n);
}

/// Issue 19's broker-lost-mid-batch check: batches published while Redis restarts report
/// each message's outcome, lose nothing confirmed, and a retry of only the failed ones
/// completes the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_across_a_restart_lose_nothing_confirmed() {
    let mut server = RedisServer::start();
    let url = server.url();
    let server = kombu_testkit::faults::batches_across_a_restart(&url, move || {
        server.restart();
        server
    })
    .await;
    drop(server);
}

/// Issue 18's broker-restart check for the Worker: every message handled at least once,
/// nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_rides_out_a_restart() {
    let mut server = RedisServer::start();
    let url = server.url();
    let server = kombu_testkit::faults::worker_across_a_restart(
        &url,
        kombu_testkit::faults::Acks::Confirmed,
        move || {
            server.restart();
            server
        },
    )
    .await;
    drop(server);
}

/// The blocking worker, from synchronous code, across a Redis restart.
#[test]
fn a_blocking_worker_rides_out_a_restart() {
    let mut server = RedisServer::start();
    let url = server.url();
    let server = kombu_testkit::faults::blocking_worker_across_a_restart(&url, move || {
        server.restart();
        server
    });
    drop(server);
}
