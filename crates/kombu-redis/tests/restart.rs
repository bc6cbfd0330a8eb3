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
    let server = kombu_testkit::faults::worker_across_a_restart(&url, move || {
        server.restart();
        server
    })
    .await;
    drop(server);
}

/// The blocking worker, from synchronous code, across a Redis restart: every message is
/// handled at least once and acked, and nothing is left in the queue afterwards.
#[test]
fn a_blocking_worker_rides_out_a_restart() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use kombu::blocking::Connection as BlockingConnection;
    use kombu::Outcome;

    const MESSAGES: u64 = 200;
    const BOUND: Duration = Duration::from_secs(60);
    let mut server = RedisServer::start();
    let url = server.url();
    let conn = BlockingConnection::new(&url).expect("connection");
    let queue = Queue::new("blocking-restart");
    let options = PublishOptions::new()
        .routing_key("blocking-restart")
        .declare(queue.clone())
        .retry(RetryPolicy::default().max_retries(10));
    let producer = conn.producer();
    let mut batch = producer.batch();
    for n in 0..MESSAGES {
        batch.add(&json!({ "n": n }), options.clone());
    }
    batch
        .send()
        .expect("runtime")
        .into_result()
        .expect("publish before the restart");

    let handled: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let record = handled.clone();
    let worker = BlockingConnection::new(&url)
        .expect("worker connection")
        .worker([queue.clone()])
        .concurrency(4)
        .prefetch_count(8)
        .reconnect_policy(
            RetryPolicy::default()
                .max_retries(100)
                .interval_start(Duration::from_millis(200))
                .interval_step(Duration::ZERO)
                .interval_max(Duration::from_millis(200)),
        )
        .build(move |message| {
            let n = message.decode::<Value>()?["n"].as_u64().expect("n");
            // Slow enough for the restart to land mid-run.
            std::thread::sleep(Duration::from_millis(5));
            *record.lock().expect("lock").entry(n).or_default() += 1;
            Ok(Outcome::Ack)
        });
    let handle = worker.handle();
    let running = std::thread::spawn(move || worker.run());

    let deadline = Instant::now() + BOUND;
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what} within {BOUND:?}: {:?}",
                handle.report()
            );
            assert!(!running.is_finished(), "the worker ended: {:?}", handle.report());
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for("a third acked before the restart", &|| {
        handle.report().acked >= MESSAGES / 3
    });
    server.restart();
    wait_for("every message handled", &|| {
        handled.lock().expect("lock").len() as u64 >= MESSAGES
    });
    wait_for("every message acked", &|| handle.report().acked >= MESSAGES);
    handle.shutdown();
    let report = running.join().expect("worker thread").expect("run");

    // Nothing is left: the control is the next and only message in the queue.
    producer
        .publish(&json!("control"), options)
        .expect("publish the control");
    let first = conn
        .simple_queue("blocking-restart")
        .get(BOUND)
        .expect("the control arrives");
    assert_eq!(
        first.decode::<Value>().expect("json"),
        json!("control"),
        "a message was left in the queue after the worker stopped; report {report:?}"
    );
    first.ack().expect("ack");
    assert!(
        handled.lock().expect("lock").keys().copied().eq(0..MESSAGES),
        "every message handled"
    );
    eprintln!("blocking worker across a restart: report {report:?}");
}
