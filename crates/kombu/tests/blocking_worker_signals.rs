//! SIGTERM to a process running a `kombu::blocking::Worker`: as for the async worker, the
//! first signal stops it gracefully, a second one at once, and the delivery its handler held
//! is back in the queue when `run` returns — all from synchronous code.
//!
//! One test in its own binary: it sends signals to its own process, which only the signal
//! handlers the worker installs may see.
#![cfg(all(unix, feature = "memory", feature = "blocking"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test scaffolding

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::signal_self;

use kombu::blocking::Connection;
use kombu::{Outcome, PublishOptions, Queue};

#[test]
fn a_second_sigterm_stops_a_blocking_worker_at_once_and_gives_back_the_delivery() {
    let conn = Connection::new("memory:///blocking-worker-signals").unwrap();
    conn.producer()
        .publish(
            &"held",
            PublishOptions::new()
                .routing_key("jobs")
                .declare(Queue::new("jobs")),
        )
        .unwrap();
    let (started_tx, started) = mpsc::channel();
    let (release_tx, release) = mpsc::channel::<()>();
    let release = std::sync::Mutex::new(release);
    let worker = conn
        .worker([Queue::new("jobs")])
        // Only the second signal can end this drain.
        .drain_timeout(Duration::from_secs(3600))
        .build(move |_message| {
            let _ = started_tx.send(());
            // A handler stuck in blocking code until the test ends.
            let _ = release.lock().map(|release| release.recv());
            Ok(Outcome::Ack)
        });
    let handle = worker.handle();
    worker.shutdown_on_signals().expect("signal handlers");
    let running = std::thread::spawn(move || worker.run());
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("the handler started");

    signal_self("-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !handle.is_stopping() {
        assert!(Instant::now() < deadline, "the first SIGTERM was not seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Graceful: the handler never ends, so the worker waits (positive control for the second
    // signal below: without it, the run would not end).
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !running.is_finished(),
        "a graceful stop waits for the running handler"
    );

    signal_self("-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !running.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the second SIGTERM ends the run at once"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let report = running.join().expect("the worker thread").expect("run");
    assert_eq!(report.abandoned, 1, "{report:?}");
    let back = conn
        .simple_queue("jobs")
        .get(Duration::from_secs(1))
        .expect("the held message is back");
    assert!(back.redelivered(), "marked redelivered");
    back.ack().unwrap();
    // The stuck handler's blocking thread may go now.
    drop(release_tx);
}
