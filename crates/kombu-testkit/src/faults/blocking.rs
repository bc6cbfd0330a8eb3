//! [`blocking_worker_across_a_restart`]: the worker-across-a-restart scenario in synchronous
//! code, through `kombu::blocking`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kombu::blocking::Connection;
use kombu::{Outcome, PublishOptions, Queue, RetryPolicy};
use serde_json::{json, Value};

use super::{worker_reconnect_policy, BOUND};

/// Messages the scenario publishes.
const MESSAGES: u64 = 200;

/// A `kombu::blocking::Worker`, run on a thread of its own from synchronous code, consuming
/// while the broker restarts (`restart` runs on the calling thread once a third of the
/// messages were acked; what it returns is given back at the end).
///
/// Checks: every message is handled at least once and the worker acks them all (by
/// reconnecting or by its transport's own recovery); afterwards nothing is left in the queue
/// (the positive control published after the stop is the next and only message there).
///
/// # Panics
///
/// When a check fails (it is a test).
#[allow(clippy::expect_used, clippy::panic, reason = "a test scenario fails loudly")]
pub fn blocking_worker_across_a_restart<S>(url: &str, restart: impl FnOnce() -> S) -> S {
    let queue = Queue::new(format!("blocking-restart-{}", uuid::Uuid::new_v4().simple()));
    let options = PublishOptions::new()
        .routing_key(queue.name.clone())
        .declare(queue.clone())
        .retry(RetryPolicy::default().max_retries(10));
    let conn = Connection::new(url).expect("connection");
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
    let worker = Connection::new(url)
        .expect("worker connection")
        .worker([queue.clone()])
        .concurrency(4)
        .prefetch_count(8)
        .reconnect_policy(worker_reconnect_policy())
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
    let server = restart();
    wait_for("every message handled", &|| {
        handled.lock().expect("lock").len() as u64 >= MESSAGES
    });
    wait_for("every message acked", &|| handle.report().acked >= MESSAGES);
    handle.shutdown();
    let report = running.join().expect("worker thread").expect("run");

    producer
        .publish(&json!("control"), options)
        .expect("publish the control");
    let first = conn
        .simple_queue(&queue.name)
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
    eprintln!("blocking worker across a restart: {MESSAGES} messages, report {report:?}");
    let _ = conn.close();
    server
}
