//! The [`Worker`]'s promises, on every transport: poison is parked and what follows it is
//! handled, a failed handler gets its message again, and a stop gives back every delivery.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kombu::transport::{GetOptions, RawMessage, RawPublishOptions};
use kombu::{Connection, Error, ErrorKind, Outcome, Queue, Value, Worker, WorkerReport};
use tokio::sync::mpsc;

use super::{declare, get_one, json_of, only_control_direct, publish_to};
use crate::harness::{Ctx, Failure, TestResult};
use crate::{check, check_eq};

/// Run `worker` until its report satisfies `done` (`what` describes it), within the
/// patience, then stop it gracefully; the final report.
async fn run_until(
    ctx: &Ctx,
    worker: Worker,
    what: &str,
    done: impl Fn(&WorkerReport) -> bool,
) -> Result<WorkerReport, Failure> {
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    let deadline = tokio::time::Instant::now() + ctx.patience();
    while !done(&handle.report()) {
        if running.is_finished() || tokio::time::Instant::now() >= deadline {
            handle.shutdown_now();
            let ended = running
                .await
                .map_err(|e| Failure(format!("the worker task: {e}")))?;
            return Err(Failure(format!(
                "the worker should have {what} within {:?}; it ended with {ended:?}, report {:?}",
                ctx.patience(),
                handle.report()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown();
    let report = running
        .await
        .map_err(|e| Failure(format!("the worker task: {e}")))??;
    Ok(report)
}

/// A message whose envelope is fine but whose JSON body is not.
const NOT_JSON: &[u8] = b"{not json";

async fn publish_unreadable(conn: &Connection, queue: &str) -> TestResult {
    let channel = conn.default_channel().await?;
    let message =
        RawMessage::new(Bytes::from_static(NOT_JSON)).with_content_type(Some("application/json".into()));
    channel
        .publish(message, RawPublishOptions::new("", queue))
        .await?;
    Ok(())
}

pub(super) async fn worker_parks_poison_and_handles_the_rest(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let queue = ctx.name("worker-poison");
    declare(&conn, &Queue::new(&queue)).await?;
    publish_unreadable(&conn, &queue).await?;
    for n in 0..3 {
        publish_to(&conn, &queue, serde_json::json!({ "n": n })).await?;
    }
    let worker = conn.worker([Queue::new(&queue)]).build(|message| async move {
        let _: serde_json::Value = message.decode()?;
        Ok(Outcome::Ack)
    });
    let report = run_until(&ctx, worker, "acked 3 and parked 1", |r| {
        r.acked == 3 && r.poisoned == 1
    })
    .await?;
    check_eq!(
        (report.handled, report.failed),
        (4, 0),
        "handler runs and failures"
    );

    let parked = get_one(&ctx, &conn, &format!("{queue}.poison")).await?;
    check_eq!(parked.body().as_ref(), NOT_JSON, "the parked body, unchanged");
    check_eq!(
        parked.headers().get("x-kombu-parked-from"),
        Some(&Value::String(queue.clone())),
        "the parked message's source queue header"
    );
    parked.ack().await?;
    only_control_direct(&ctx, &conn, &queue).await
}

pub(super) async fn worker_retries_a_failed_handler(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let queue = ctx.name("worker-retry");
    declare(&conn, &Queue::new(&queue)).await?;
    publish_to(&conn, &queue, serde_json::json!("retry me")).await?;
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let worker = conn
        .worker([Queue::new(&queue)])
        .on_failure(Outcome::RequeueAfter(Duration::from_millis(20)))
        .build(move |message| {
            let counted = counted.clone();
            async move {
                if counted.fetch_add(1, Ordering::Relaxed) == 0 {
                    return Err(Error::new(ErrorKind::Unexpected, "a database is down"));
                }
                if !message.redelivered() {
                    return Err(Error::new(
                        ErrorKind::Unexpected,
                        "the retry is not marked redelivered",
                    ));
                }
                Ok(Outcome::Ack)
            }
        });
    let report = run_until(&ctx, worker, "acked the retried message", |r| r.acked == 1).await?;
    check_eq!(
        (report.failed, report.requeued, attempts.load(Ordering::Relaxed)),
        (1, 1, 2),
        "failures, requeues and handler runs"
    );
    only_control_direct(&ctx, &conn, &queue).await
}

pub(super) async fn worker_stop_gives_back_held_messages(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let queue = ctx.name("worker-stop");
    declare(&conn, &Queue::new(&queue)).await?;
    for n in 0..3 {
        publish_to(&conn, &queue, serde_json::json!(n)).await?;
    }
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let worker = conn
        .worker([Queue::new(&queue)])
        .prefetch_count(3)
        .drain_timeout(Duration::from_millis(100))
        .build(move |_message| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                // A handler that never finishes: the stop must give its message back.
                std::future::pending::<()>().await;
                Ok(Outcome::Ack)
            }
        });
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    tokio::time::timeout(ctx.patience(), started.recv())
        .await
        .map_err(|_| Failure(format!("no handler started within {:?}", ctx.patience())))?;
    handle.shutdown();
    let report = tokio::time::timeout(ctx.patience(), running)
        .await
        .map_err(|_| Failure("the worker did not stop within the patience".into()))?
        .map_err(|e| Failure(format!("the worker task: {e}")))??;
    check_eq!(
        (report.acked, report.abandoned),
        (0, 1),
        "acked and abandoned messages"
    );

    // Every message is back at once: within a second of the worker's return, not after a
    // visibility timeout.
    let exited = tokio::time::Instant::now();
    let channel = conn.channel().await?;
    let mut back = BTreeSet::new();
    while back.len() < 3 {
        if let Some(delivery) = channel.get(&queue, GetOptions::default()).await? {
            back.insert(json_of(&delivery).to_string());
            if let Some(h) = &delivery.ack {
                h.acknowledger.ack(h.tag).await?;
            }
        } else if exited.elapsed() > Duration::from_secs(1) {
            break;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    check!(
        back.len() == 3,
        "within 1 s of the stop only {back:?} of the 3 held messages were back in {queue}"
    );
    only_control_direct(&ctx, &conn, &queue).await
}
