//! Fault scenarios for transport crates whose tests can restart their broker (the
//! conformance suite cannot: it gets a URL, not a server).
//!
//! ```ignore
//! // tests/restart.rs of a transport crate with a throwaway server
//! let server = MyServer::start();
//! let url = server.url();
//! kombu_testkit::faults::batches_across_a_restart(&url, move || { server.restart(); server }).await;
//! ```

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kombu::{Connection, PublishOptions, Queue, RetryPolicy};
use serde_json::{json, Value};

mod blocking;
pub use blocking::blocking_worker_across_a_restart;

/// Every wait of a scenario ends by then.
const BOUND: Duration = Duration::from_secs(120);
/// Messages per batch.
const BATCH: u64 = 50;
/// Batches sent before the restart begins.
const BEFORE: u64 = 5;
/// Batches that must be fully confirmed after the restart before publishing stops.
const AFTER: u64 = 5;

/// Batches published one after another while the broker restarts (`restart` runs on a
/// blocking thread after the fifth batch; what it returns, e.g. the server handle, is given
/// back at the end).
///
/// Checks, per message: a batch reports each message's own outcome; every failure is
/// recoverable (the broker went away) — never a silent drop; every message reported
/// confirmed is consumed afterwards (nothing confirmed is lost); sending only the failed
/// ones again (one batch, with a retry policy) confirms them all, and they arrive too. Each
/// message may arrive more than once (at-least-once), never zero times.
///
/// # Panics
///
/// When a check fails (it is a test).
#[allow(clippy::expect_used, clippy::panic, reason = "a test scenario fails loudly")]
pub async fn batches_across_a_restart<S: Send + 'static>(
    url: &str,
    restart: impl FnOnce() -> S + Send + 'static,
) -> S {
    let queue = Queue::new(format!("batch-restart-{}", uuid::Uuid::new_v4().simple()));
    let options = PublishOptions::new()
        .routing_key(queue.name.clone())
        .declare(queue.clone());
    let conn = Connection::new(url).expect("connection");
    let producer = conn.producer();

    let mut confirmed = BTreeSet::new();
    let mut failed = Vec::new();
    let mut restart = Some(restart);
    let mut restarting = None;
    let mut server = None;
    let mut clean_after_restart = 0;
    let deadline = Instant::now() + BOUND;
    let mut next = 0u64;
    while clean_after_restart < AFTER {
        assert!(
            Instant::now() < deadline,
            "publishing batches across the restart took over {BOUND:?}: {} confirmed, {} failed",
            confirmed.len(),
            failed.len()
        );
        if next == BEFORE * BATCH {
            let restart = restart.take().expect("one restart");
            restarting = Some(tokio::task::spawn_blocking(restart));
        }
        if let Some(handle) = restarting.take_if(|h| h.is_finished()) {
            server = Some(handle.await.expect("the restart panicked"));
        }
        let mut batch = producer.batch();
        let first = next;
        for n in first..first + BATCH {
            batch.add(&json!({ "n": n }), options.clone());
        }
        next += BATCH;
        let outcome = tokio::time::timeout(BOUND, batch.send())
            .await
            .unwrap_or_else(|_| panic!("a batch hung for over {BOUND:?}"));
        assert_eq!(outcome.results().len() as u64, BATCH, "one outcome per message");
        let mut all_ok = true;
        for (n, result) in (first..).zip(outcome.into_results()) {
            match result {
                Ok(()) => {
                    confirmed.insert(n);
                }
                Err(e) => {
                    assert!(
                        e.is_recoverable(),
                        "message {n} failed with an error that is not recoverable: {e}"
                    );
                    failed.push(n);
                    all_ok = false;
                }
            }
        }
        if server.is_some() && all_ok {
            clean_after_restart += 1;
        }
        if !all_ok {
            // The broker is away: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let server = server.expect("the restart finished");

    // Only what failed is sent again.
    let retried = failed.len();
    if !failed.is_empty() {
        let mut batch = producer.batch();
        let retry = RetryPolicy::default()
            .max_retries(20)
            .interval_start(Duration::from_millis(200))
            .interval_step(Duration::from_millis(200));
        for n in &failed {
            batch.add(&json!({ "n": n }), options.clone().retry(retry.clone()));
        }
        let outcome = tokio::time::timeout(BOUND, batch.send())
            .await
            .unwrap_or_else(|_| panic!("the retry batch hung for over {BOUND:?}"));
        let first_failure = outcome
            .failures()
            .next()
            .map(|(i, e)| format!("message {}: {e}", failed[i]));
        if let Some(failure) = first_failure {
            panic!("sending the failed messages again failed ({failure})");
        }
    }

    // Everything arrives: what was confirmed at once and what was sent again.
    let mut consumer = conn
        .consumer([queue.clone()])
        .prefetch_count(100)
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");
    let mut received = BTreeSet::new();
    let deadline = Instant::now() + BOUND;
    while (received.len() as u64) < next {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match consumer.recv_timeout(left.min(Duration::from_secs(5))).await {
            Ok(m) => m,
            Err(e) if e.kind() == kombu::ErrorKind::Timeout && Instant::now() < deadline => continue,
            Err(e) => {
                let lost: Vec<&u64> = confirmed.iter().filter(|n| !received.contains(*n)).collect();
                panic!(
                    "{} of {next} messages arrived ({e}); confirmed but not arrived: {lost:?}",
                    received.len()
                );
            }
        };
        let body: Value = message.decode().expect("json body");
        received.insert(body["n"].as_u64().expect("n"));
        message.ack().await.expect("ack");
    }
    assert_eq!(
        received,
        (0..next).collect::<BTreeSet<_>>(),
        "every message arrived"
    );
    eprintln!(
        "batches across a restart: {next} messages in batches of {BATCH}, {} confirmed at once, \
         {retried} failed (recoverable) and were sent again",
        confirmed.len()
    );
    consumer.close().await.expect("close consumer");
    let channel = conn.channel().await.expect("channel");
    let _ = channel.delete_queue(&queue.name, Default::default()).await;
    conn.close().await.expect("close");
    server
}

/// Messages a [`worker_across_a_restart`] scenario publishes.
const WORKER_MESSAGES: u64 = 300;

/// How a worker of these scenarios reconnects: every 200 ms, long enough to outlast a
/// restart.
fn worker_reconnect_policy() -> RetryPolicy {
    RetryPolicy::default()
        .max_retries(100)
        .interval_start(Duration::from_millis(200))
        .interval_step(Duration::ZERO)
        .interval_max(Duration::from_millis(200))
}

/// What an ack that returned `Ok` means on a transport, for [`worker_across_a_restart`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// The broker answered it (Redis: a reply to the command): the message is gone for good,
    /// so a handler must never run for it again.
    Confirmed,
    /// It was sent with no answer to wait for (AMQP's `basic.ack`): one written just before
    /// the connection died may be lost, and its message is redelivered (at least once).
    Unconfirmed,
}

/// A [`Worker`](kombu::Worker) consuming while the broker restarts (`restart` runs on a
/// blocking thread once a third of the messages were acked; what it returns is given back at
/// the end). The handler acks each message itself, so the scenario knows which acks
/// returned `Ok`.
///
/// Checks: every message is handled at least once (the worker rides out the restart, by
/// reconnecting or by its transport's own recovery); with [`Acks::Confirmed`], no message
/// is handled again after its ack returned `Ok`; when it is done, no message is left in
/// the queue, given back or still unacked (the positive control published after the stop is
/// the next and only message there); and the worker's report says why.
///
/// # Panics
///
/// When a check fails (it is a test).
#[allow(clippy::expect_used, clippy::panic, reason = "a test scenario fails loudly")]
pub async fn worker_across_a_restart<S: Send + 'static>(
    url: &str,
    acks: Acks,
    restart: impl FnOnce() -> S + Send + 'static,
) -> S {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use kombu::Outcome;

    let queue = Queue::new(format!("worker-restart-{}", uuid::Uuid::new_v4().simple()));
    let options = PublishOptions::new()
        .routing_key(queue.name.clone())
        .declare(queue.clone());
    let conn = Connection::new(url).expect("connection");
    let producer = conn.producer();
    let mut batch = producer.batch();
    for n in 0..WORKER_MESSAGES {
        batch.add(&json!({ "n": n }), options.clone());
    }
    batch
        .send()
        .await
        .into_result()
        .expect("publish before the restart");

    let handled: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    // Messages whose ack returned Ok, and those handled again after that.
    let acked: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let rerun_after_ack: Arc<Mutex<Vec<u64>>> = Arc::default();
    let (record, record_acked, record_rerun) = (handled.clone(), acked.clone(), rerun_after_ack.clone());
    let worker = Connection::new(url)
        .expect("worker connection")
        .worker([queue.clone()])
        .concurrency(4)
        .prefetch_count(8)
        .reconnect_policy(worker_reconnect_policy())
        .build(move |message| {
            let (record, record_acked, record_rerun) =
                (record.clone(), record_acked.clone(), record_rerun.clone());
            async move {
                let body: Value = message.decode()?;
                let n = body["n"].as_u64().expect("n");
                if record_acked.lock().expect("lock").contains(&n) {
                    record_rerun.lock().expect("lock").push(n);
                }
                // Slow enough for the restart to land mid-run.
                tokio::time::sleep(Duration::from_millis(5)).await;
                *record.lock().expect("lock").entry(n).or_default() += 1;
                message.ack().await?;
                record_acked.lock().expect("lock").insert(n);
                Ok(Outcome::Ack)
            }
        });
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());

    let all_handled = || handled.lock().expect("lock").len() as u64 >= WORKER_MESSAGES;
    let deadline = Instant::now() + BOUND;
    while handle.report().acked < WORKER_MESSAGES / 3 {
        assert!(
            Instant::now() < deadline,
            "the worker stalled before the restart: {:?}",
            handle.report()
        );
        assert!(!running.is_finished(), "the worker ended before the restart");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let server = tokio::task::spawn_blocking(restart)
        .await
        .expect("the restart panicked");
    while !all_handled() {
        assert!(
            Instant::now() < deadline,
            "{} of {WORKER_MESSAGES} messages handled within {BOUND:?} of the start; report {:?}",
            handled.lock().expect("lock").len(),
            handle.report()
        );
        assert!(!running.is_finished(), "the worker ended: {:?}", handle.report());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every message acked before stopping: one handled but not yet acked would (rightly) be
    // given back. (An ack lost with the connection brings its message back to be handled and
    // acked again, so acks may number more than the messages, never fewer.)
    while handle.report().acked < WORKER_MESSAGES {
        assert!(
            Instant::now() < deadline,
            "every message was handled, but not every one acked within {BOUND:?}: {:?}",
            handle.report()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown();
    let report = running
        .await
        .expect("worker task")
        .expect("the worker ends without an error");

    // Nothing is left: the control is the next and only message in the queue.
    conn.producer()
        .publish(
            &json!("control"),
            options.clone().retry(RetryPolicy::default().max_retries(10)),
        )
        .await
        .expect("publish the control");
    let mut consumer = conn.consumer([queue.clone()]).consume().await.expect("consumer");
    let first = consumer.recv_timeout(BOUND).await.expect("the control arrives");
    let body: Value = first.decode().expect("json");
    first.ack().await.expect("ack");
    assert_eq!(
        body,
        json!("control"),
        "a message was left in the queue after the worker stopped"
    );
    let twice = handled.lock().expect("lock").values().filter(|c| **c > 1).count();
    let rerun = rerun_after_ack.lock().expect("lock").clone();
    if acks == Acks::Confirmed {
        assert!(
            rerun.is_empty(),
            "handled again after their ack returned Ok: {rerun:?}"
        );
    }
    eprintln!(
        "worker across a restart: {WORKER_MESSAGES} messages, each handled at least once \
         ({twice} twice or more: redelivered after their ack failed or was lost; {} after an \
         ack that returned Ok, with {acks:?} acks), {} reconnects, report {report:?}",
        rerun.len(),
        report.reconnects
    );
    consumer.close().await.expect("close consumer");
    let channel = conn.channel().await.expect("channel");
    let _ = channel.delete_queue(&queue.name, Default::default()).await;
    conn.close().await.expect("close");
    server
}
