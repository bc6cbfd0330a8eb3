//! The worker on the memory transport: outcomes, poison, failures, stopping. (The conformance
//! suite runs the same promises on every transport.)
#![cfg(feature = "memory")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kombu_core::transport::{GetOptions, RawPublishOptions};
use kombu_core::{RawMessage, Value};
use tokio::sync::mpsc;

use super::*;
use crate::PublishOptions;

fn connection(name: &str) -> Connection {
    Connection::new(&format!("memory:///worker-{name}")).expect("memory URL")
}

async fn publish_n(conn: &Connection, queue: &str, n: u64) {
    let producer = conn.producer();
    for i in 0..n {
        producer
            .publish(
                &serde_json::json!({ "n": i }),
                PublishOptions::new()
                    .routing_key(queue)
                    .declare(Queue::new(queue)),
            )
            .await
            .expect("publish");
    }
}

async fn publish_raw(conn: &Connection, queue: &str, body: &'static [u8], content_type: &str) {
    let channel = conn.default_channel().await.expect("channel");
    let message = RawMessage::new(Bytes::from_static(body)).with_content_type(Some(content_type.into()));
    channel
        .publish(message, RawPublishOptions::new("", queue))
        .await
        .expect("raw publish");
}

/// Every message left in `queue`, taken and acked (so the count is exact).
async fn drain(conn: &Connection, queue: &str) -> Vec<Message> {
    let channel = conn.channel().await.expect("channel");
    let mut taken = Vec::new();
    while let Some(delivery) = channel.get(queue, GetOptions::default()).await.expect("get") {
        let message = Message::new(delivery, Arc::new(Accept::any()));
        message.ack().await.expect("ack");
        taken.push(message);
    }
    taken
}

/// Run `worker` in a task until `done` holds for its report, then stop it gracefully.
async fn run_until(worker: Worker, done: impl Fn(&WorkerReport) -> bool) -> WorkerReport {
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&handle.report()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not get there in 10 s: {:?}",
            handle.report()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    handle.shutdown();
    running.await.expect("worker task").expect("worker run")
}

/// Start a worker (from `builder`) whose handler never finishes, and wait until its first run
/// started: the handle and the running task.
async fn run_stuck(builder: WorkerBuilder) -> (WorkerHandle, tokio::task::JoinHandle<Result<WorkerReport>>) {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let worker = builder.build(move |_m| {
        let started_tx = started_tx.clone();
        async move {
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
            Ok(Outcome::Ack)
        }
    });
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    started.recv().await.expect("the handler started");
    (handle, running)
}

#[tokio::test]
async fn every_message_is_handled_and_acked_once() {
    let conn = connection("all");
    publish_n(&conn, "jobs", 50).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let worker = conn.worker([Queue::new("jobs")]).concurrency(4).build(move |m| {
        let record = record.clone();
        async move {
            let body: serde_json::Value = m.decode()?;
            record.lock().unwrap().push(body["n"].as_u64().unwrap());
            Ok(Outcome::Ack)
        }
    });
    let report = run_until(worker, |r| r.acked == 50).await;
    assert_eq!((report.handled, report.acked, report.failed), (50, 50, 0));
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    assert!(drain(&conn, "jobs").await.is_empty(), "nothing is left");
}

#[tokio::test]
async fn poison_is_parked_and_good_messages_behind_it_are_handled() {
    let conn = connection("poison");
    publish_raw(&conn, "jobs", b"{not json", "application/json").await;
    publish_raw(
        &conn,
        "jobs",
        b"\x80\x04pickled",
        "application/x-python-serialize",
    )
    .await;
    publish_n(&conn, "jobs", 3).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let count = handled.clone();
    let incidents = Arc::new(Mutex::new(Vec::new()));
    let seen = incidents.clone();
    let worker = conn
        .worker([Queue::new("jobs")])
        .on_incident(move |incident| {
            if let Incident::Poison { error, parked_in, .. } = incident {
                seen.lock()
                    .unwrap()
                    .push((error.kind(), parked_in.map(str::to_owned)));
            }
        })
        .build(move |m| {
            let count = count.clone();
            async move {
                let _: serde_json::Value = m.decode()?;
                count.fetch_add(1, Ordering::Relaxed);
                Ok(Outcome::Ack)
            }
        });
    let report = run_until(worker, |r| r.acked == 3 && r.poisoned == 2).await;
    assert_eq!(handled.load(Ordering::Relaxed), 3);
    assert_eq!(report.poisoned, 2);
    let mut kinds = incidents.lock().unwrap().clone();
    kinds.sort_by_key(|(kind, _)| format!("{kind:?}"));
    assert_eq!(
        kinds,
        [
            (ErrorKind::ContentDisallowed, Some("jobs.poison".to_owned())),
            (ErrorKind::Decode, Some("jobs.poison".to_owned())),
        ]
    );
    let parked = drain(&conn, "jobs.poison").await;
    let mut bodies: Vec<&[u8]> = parked.iter().map(|m| m.body().as_ref()).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, [b"{not json".as_slice(), b"\x80\x04pickled".as_slice()]);
    for message in &parked {
        assert_eq!(
            message.headers().get("x-kombu-parked-from"),
            Some(&Value::String("jobs".into()))
        );
        assert!(
            matches!(message.headers().get("x-kombu-park-reason"), Some(Value::String(s)) if !s.is_empty())
        );
    }
    assert!(drain(&conn, "jobs").await.is_empty(), "the source queue is empty");
}

#[tokio::test]
async fn poison_rejected_when_asked() {
    let conn = connection("poison-reject");
    publish_raw(&conn, "jobs", b"{not json", "application/json").await;
    publish_n(&conn, "jobs", 1).await;
    let worker = conn
        .worker([Queue::new("jobs")])
        .poison(Poison::Reject)
        .build(|m| async move {
            let _: serde_json::Value = m.decode()?;
            Ok(Outcome::Ack)
        });
    let report = run_until(worker, |r| r.acked == 1 && r.poisoned == 1).await;
    assert_eq!(
        report.rejected, 0,
        "poison is counted as poison, not as a handler's reject"
    );
    assert!(drain(&conn, "jobs.poison").await.is_empty(), "nothing was parked");
    assert!(drain(&conn, "jobs").await.is_empty());
}

#[tokio::test]
async fn a_failing_handler_gets_the_message_again() {
    let conn = connection("retry");
    publish_n(&conn, "jobs", 1).await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let worker = conn
        .worker([Queue::new("jobs")])
        .on_failure(Outcome::RequeueAfter(Duration::from_millis(10)))
        .build(move |m| {
            let counted = counted.clone();
            async move {
                if counted.fetch_add(1, Ordering::Relaxed) == 0 {
                    assert!(!m.redelivered());
                    return Err(Error::new(ErrorKind::Unexpected, "database down"));
                }
                assert!(m.redelivered(), "the retry is marked redelivered");
                Ok(Outcome::Ack)
            }
        });
    let report = run_until(worker, |r| r.acked == 1).await;
    assert_eq!((report.failed, report.requeued, report.handled), (1, 1, 2));
    assert_eq!(attempts.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_panicking_handler_does_not_stop_the_worker() {
    let conn = connection("panic");
    publish_n(&conn, "jobs", 2).await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let worker = conn
        .worker([Queue::new("jobs")])
        .on_failure(Outcome::Requeue)
        .build(move |_m| {
            let counted = counted.clone();
            async move {
                if counted.fetch_add(1, Ordering::Relaxed) == 0 {
                    panic!("handler bug");
                }
                Ok(Outcome::Ack)
            }
        });
    let report = run_until(worker, |r| r.acked == 2).await;
    assert_eq!((report.failed, report.requeued), (1, 1));
    assert_eq!(attempts.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn handler_outcomes_are_applied() {
    let conn = connection("outcomes");
    publish_n(&conn, "jobs", 3).await;
    let worker = conn.worker([Queue::new("jobs")]).build(|m| async move {
        let body: serde_json::Value = m.decode()?;
        Ok(match body["n"].as_u64() {
            Some(0) => Outcome::Reject,
            // The handler settles this one itself; the worker leaves it alone.
            Some(1) => {
                m.ack().await?;
                Outcome::Requeue
            }
            _ => Outcome::Ack,
        })
    });
    let report = run_until(worker, |r| r.handled == 3).await;
    assert_eq!((report.rejected, report.acked, report.requeued), (1, 2, 0));
    assert!(drain(&conn, "jobs").await.is_empty());
}

#[tokio::test]
async fn graceful_stop_lets_a_running_handler_finish() {
    let conn = connection("drain");
    publish_n(&conn, "jobs", 1).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let worker = conn.worker([Queue::new("jobs")]).build(move |_m| {
        let started_tx = started_tx.clone();
        async move {
            let _ = started_tx.send(());
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Outcome::Ack)
        }
    });
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    started.recv().await.expect("the handler started");
    handle.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.acked, report.abandoned), (1, 0));
    assert!(drain(&conn, "jobs").await.is_empty());
}

#[tokio::test]
async fn stopping_gives_back_unfinished_and_prefetched_messages() {
    let conn = connection("give-back");
    publish_n(&conn, "jobs", 5).await;
    let (handle, running) = run_stuck(
        conn.worker([Queue::new("jobs")])
            .prefetch_count(5)
            .drain_timeout(Duration::from_millis(50)),
    )
    .await;
    handle.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.acked, report.abandoned), (0, 1));
    let back = drain(&conn, "jobs").await;
    assert_eq!(
        back.len(),
        5,
        "the unfinished message and the prefetched ones are back"
    );
}

#[tokio::test]
async fn shutdown_now_skips_the_drain() {
    let conn = connection("now");
    publish_n(&conn, "jobs", 1).await;
    let (handle, running) = run_stuck(
        conn.worker([Queue::new("jobs")])
            .drain_timeout(Duration::from_secs(3600)),
    )
    .await;
    handle.shutdown();
    handle.shutdown_now();
    let report = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("an immediate stop does not wait for the drain timeout")
        .unwrap()
        .unwrap();
    assert_eq!(report.abandoned, 1);
    assert_eq!(drain(&conn, "jobs").await.len(), 1, "the message is back");
}

#[tokio::test]
async fn a_missing_queue_is_an_error_not_a_retry_loop() {
    let conn = connection("missing");
    let worker = conn
        .worker([Queue::new("nowhere").passive(true)])
        .build(|_m| async { Ok(Outcome::Ack) });
    let error = tokio::time::timeout(Duration::from_secs(5), worker.run())
        .await
        .expect("no retry loop")
        .expect_err("a passive declare of a missing queue fails");
    assert_eq!(error.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn a_limit_takes_no_message_beyond_it() {
    let conn = connection("limit");
    publish_n(&conn, "jobs", 5).await;
    let worker = conn
        .worker([Queue::new("jobs")])
        .prefetch_count(10)
        .limit(3)
        .build(|_m| async { Ok(Outcome::Ack) });
    let report = tokio::time::timeout(Duration::from_secs(5), worker.run())
        .await
        .expect("a worker with a limit stops by itself")
        .unwrap();
    assert_eq!((report.handled, report.acked), (3, 3));
    let left = drain(&conn, "jobs").await;
    assert_eq!(left.len(), 2, "the rest stays");
    assert!(
        left.iter().all(|m| !m.redelivered()),
        "no message beyond the limit was taken and given back"
    );
}

#[tokio::test]
async fn held_messages_go_back_in_order_when_the_worker_stops() {
    let conn = connection("hold");
    publish_n(&conn, "jobs", 4).await;
    let worker = conn
        .worker([Queue::new("jobs")])
        .prefetch_count(0)
        .limit(4)
        .build(|_m| async { Ok(Outcome::Hold) });
    let report = tokio::time::timeout(Duration::from_secs(5), worker.run())
        .await
        .expect("holding every message does not stall the limit")
        .unwrap();
    assert_eq!((report.handled, report.acked, report.requeued), (4, 0, 0));
    let back: Vec<serde_json::Value> = drain(&conn, "jobs")
        .await
        .iter()
        .map(|m| m.decode().unwrap())
        .collect();
    let expected: Vec<serde_json::Value> = (0..4).map(|n| serde_json::json!({ "n": n })).collect();
    assert_eq!(back, expected, "every held message is back, in order");
}
