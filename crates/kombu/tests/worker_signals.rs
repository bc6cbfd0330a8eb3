//! SIGTERM to a process running a `Worker`: the first signal stops it gracefully, a second one
//! at once, and the delivery it held is back in the queue when `run` returns.
//!
//! One test in its own binary: it sends signals to its own process, which only the signal
//! handlers the worker installs may see.
#![cfg(all(unix, feature = "memory"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test scaffolding

mod common;

use std::time::Duration;

use common::signal_self;

use kombu::transport::GetOptions;
use kombu::{Connection, Outcome, PublishOptions, Queue};
use tokio::sync::mpsc;

#[tokio::test]
async fn a_second_sigterm_stops_at_once_and_gives_back_the_delivery() {
    let conn = Connection::new("memory:///worker-signals").unwrap();
    conn.producer()
        .publish(
            &"held",
            PublishOptions::new()
                .routing_key("jobs")
                .declare(Queue::new("jobs")),
        )
        .await
        .unwrap();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let worker = conn
        .worker([Queue::new("jobs")])
        // Only the second signal can end this drain.
        .drain_timeout(Duration::from_secs(3600))
        .build(move |_message| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
                Ok(Outcome::Ack)
            }
        });
    let handle = worker.handle();
    handle.shutdown_on_signals().expect("signal handlers");
    let mut running = tokio::spawn(worker.run());
    started.recv().await.expect("the handler started");

    signal_self("-TERM");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !handle.is_stopping() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first SIGTERM was not seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Graceful: the handler never ends, so the worker waits (positive control for the second
    // signal below: without it, the run would not end).
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut running)
            .await
            .is_err(),
        "a graceful stop waits for the running handler"
    );

    signal_self("-TERM");
    let report = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the second SIGTERM ends the run at once")
        .unwrap()
        .unwrap();
    assert_eq!(report.abandoned, 1);
    let channel = conn.channel().await.unwrap();
    let back = channel.get("jobs", GetOptions::default()).await.unwrap();
    assert!(
        back.is_some_and(|d| d.info.redelivered()),
        "the held message is back, marked redelivered"
    );
}
