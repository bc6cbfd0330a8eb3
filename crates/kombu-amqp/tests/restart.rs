//! A RabbitMQ restart mid-stream (the scenario of tests/common/restart.rs, shared with the
//! amiquip driver): every confirmed publish is consumed, the consumer resumes by itself, and
//! the topology this connection declared (including a transient exchange and queue that the
//! restart destroyed) is declared again. And a deleted queue ends only its own consumer.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::RabbitNode;
use kombu::{Connection, PublishOptions, Queue};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_no_confirmed_message() {
    common::restart::broker_restart_mid_stream(RabbitNode::url).await;
}

/// Issue 19's broker-lost-mid-batch check: batches published (confirms on) while the node
/// restarts report each message's outcome, lose nothing confirmed, and a retry of only the
/// failed ones completes the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_across_a_restart_lose_nothing_confirmed() {
    let node = tokio::task::spawn_blocking(RabbitNode::start)
        .await
        .expect("node");
    let url = node.url(); // confirms are on by default
    let mut node = node;
    let node = kombu_testkit::faults::batches_across_a_restart(&url, move || {
        node.restart();
        node
    })
    .await;
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_queue_ends_its_consumer_with_not_found_and_spares_the_others() {
    let node = RabbitNode::start();
    let conn = Connection::new(&node.url()).expect("connection");
    // One consumer, so both queues are consumed on the same channel.
    let mut consumer = conn
        .consumer([Queue::new("doomed"), Queue::new("survivor")])
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");

    let channel = conn.channel().await.expect("channel");
    channel
        .delete_queue("doomed", Default::default())
        .await
        .expect("delete");
    let err = consumer
        .recv_timeout(Duration::from_secs(10))
        .await
        .expect_err("the consumer of a deleted queue must end with an error");
    assert_eq!(err.kind(), kombu::ErrorKind::NotFound, "{err}");

    conn.producer()
        .publish(&json!({"n": 1}), PublishOptions::new().routing_key("survivor"))
        .await
        .expect("publish");
    let m = consumer
        .recv_timeout(Duration::from_secs(10))
        .await
        .expect("the other queue on the same channel keeps receiving");
    assert_eq!(m.decode::<Value>().expect("json"), json!({"n": 1}));
    m.ack().await.expect("ack");
    conn.close().await.expect("close");
}

/// Issue 18's broker-restart check for the Worker: every message handled at least once,
/// nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_rides_out_a_restart() {
    let node = tokio::task::spawn_blocking(RabbitNode::start)
        .await
        .expect("node");
    let url = node.url();
    let mut node = node;
    let node = kombu_testkit::faults::worker_across_a_restart(
        &url,
        kombu_testkit::faults::Acks::Unconfirmed,
        move || {
            node.restart();
            node
        },
    )
    .await;
    drop(node);
}

/// The blocking worker, from synchronous code, across a RabbitMQ restart.
#[test]
fn a_blocking_worker_rides_out_a_restart() {
    let mut node = RabbitNode::start();
    let url = node.url();
    let node = kombu_testkit::faults::blocking_worker_across_a_restart(&url, move || {
        node.restart();
        node
    });
    drop(node);
}
