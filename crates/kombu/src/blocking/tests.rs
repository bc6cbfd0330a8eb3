//! The blocking API on the memory transport: round trips, callbacks, simple queues, the
//! worker, the async-context error and the runtime's lifetime.
#![cfg(feature = "memory")]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kombu_core::{ErrorKind, Queue};

use super::runtime::IN_ASYNC_CONTEXT;
use super::*;
use crate::{MessageState, Outcome, PublishOptions};

fn connection(name: &str) -> Connection {
    Connection::new(&format!("memory:///blocking-{name}")).expect("memory URL")
}

fn publish_n(conn: &Connection, queue: &str, n: u64) {
    let producer = conn.producer();
    for i in 0..n {
        producer
            .publish(
                &serde_json::json!({ "n": i }),
                PublishOptions::new()
                    .routing_key(queue)
                    .declare(Queue::new(queue)),
            )
            .expect("publish");
    }
}

/// Run `worker` on this thread until `done` holds for its report (or 10 s pass), stopping it
/// from another thread; its final report.
fn run_until(
    worker: Worker,
    done: impl Fn(&crate::WorkerReport) -> bool + Send + 'static,
) -> crate::WorkerReport {
    let handle = worker.handle();
    let stopper = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&handle.report()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        handle.shutdown();
    });
    let report = worker.run().expect("run");
    stopper.join().expect("the stopping thread");
    report
}

#[test]
fn drain_events_passes_each_message_to_callbacks_that_ack_it() {
    let conn = connection("drain");
    let mut consumer = conn.consumer([Queue::new("media")]).consume().expect("consumer");
    let error = consumer.drain_events(Duration::from_millis(10)).unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::InvalidArgument,
        "no callback yet: {error}"
    );
    publish_n(&conn, "media", 3);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    consumer.on_message(move |message| {
        let body: serde_json::Value = message.decode()?;
        record.lock().expect("lock").push(body["n"].as_u64().expect("n"));
        message.ack()
    });
    let states = Arc::new(Mutex::new(Vec::new()));
    let record_state = states.clone();
    // The second callback sees the message the first one acked: one message for all.
    consumer.on_message(move |message| {
        record_state.lock().expect("lock").push(message.state());
        Ok(())
    });
    for _ in 0..3 {
        consumer
            .drain_events(Duration::from_secs(1))
            .expect("drain_events");
    }
    let error = consumer.drain_events(Duration::from_millis(20)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "nothing left: {error}");
    assert_eq!(*seen.lock().expect("lock"), [0, 1, 2], "in order, each once");
    assert_eq!(*states.lock().expect("lock"), [MessageState::Acked; 3]);

    // Acked for real: closing the channel gives nothing back.
    consumer.close().expect("close");
    assert_eq!(conn.simple_queue("media").qsize().expect("qsize"), 0);
}

#[test]
fn an_unacked_message_comes_back_when_the_consumer_closes() {
    let conn = connection("unacked");
    let mut consumer = conn.consumer([Queue::new("jobs")]).consume().expect("consumer");
    publish_n(&conn, "jobs", 1);
    let message = consumer.recv_timeout(Duration::from_secs(1)).expect("message");
    assert!(!message.redelivered());
    consumer.close().expect("close");
    let queue = conn.simple_queue("jobs");
    let again = queue.get(Duration::from_secs(1)).expect("restored");
    assert!(again.redelivered(), "the same message, delivered again");
    again.ack().expect("ack");
}

#[test]
fn disallowed_content_goes_to_on_decode_error_or_fails_drain_events() {
    let conn = connection("decode-error");
    let mut consumer = conn
        .consumer([Queue::new("typed")])
        .accept(["json"])
        .consume()
        .expect("consumer");
    consumer.on_message(|_| panic!("a refused message never reaches the callbacks"));
    conn.producer()
        .publish_bytes(
            &b"\x80\x04"[..],
            PublishOptions::new()
                .routing_key("typed")
                .content_type("application/x-python-serialize"),
        )
        .expect("publish");
    let error = consumer.drain_events(Duration::from_secs(1)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ContentDisallowed);

    // Still unacked: it comes back to the next consumer, whose on_decode_error takes it.
    consumer.close().expect("close");
    let mut consumer = conn
        .consumer([Queue::new("typed")])
        .accept(["json"])
        .consume()
        .expect("consumer");
    consumer.on_message(|_| panic!("a refused message never reaches the callbacks"));
    let refused = Arc::new(Mutex::new(0));
    let count = refused.clone();
    consumer.on_decode_error(move |message| {
        *count.lock().expect("lock") += 1;
        message.reject(false)
    });
    consumer.drain_events(Duration::from_secs(1)).expect("drain");
    assert_eq!(*refused.lock().expect("lock"), 1);
}

#[test]
fn simple_queue_put_get_qsize_and_clear() {
    let conn = connection("simple");
    let queue = conn.simple_queue("greetings");
    assert_eq!(queue.qsize().expect("qsize"), 0);
    for word in ["hello", "hej", "hola"] {
        queue.put(&word).expect("put");
    }
    assert_eq!(queue.qsize().expect("qsize"), 3);

    let first = queue.get(Duration::from_secs(1)).expect("get");
    assert_eq!(first.decode::<String>().expect("decode"), "hello");
    first.ack().expect("ack");
    assert_eq!(
        first.ack().unwrap_err().kind(),
        ErrorKind::MessageState,
        "settled once"
    );
    assert_eq!(queue.qsize().expect("qsize"), 2);

    let second = queue
        .get_nowait()
        .expect("get_nowait")
        .expect("a message is ready");
    assert_eq!(second.decode::<String>().expect("decode"), "hej");
    second.requeue().expect("requeue");
    assert_eq!(queue.qsize().expect("qsize"), 2, "requeued, not lost");

    assert_eq!(queue.clear().expect("clear"), 2);
    assert!(queue.get_nowait().expect("get_nowait").is_none());
    let started = Instant::now();
    let error = queue.get(Duration::from_millis(50)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "waited the timeout"
    );
}

#[test]
fn a_blocking_worker_handles_every_message_and_stops_from_another_thread() {
    const N: u64 = 20;
    let conn = connection("worker");
    publish_n(&conn, "jobs", N);
    let results = conn.producer();
    let threads = Arc::new(Mutex::new(Vec::new()));
    let record = threads.clone();
    let worker = conn
        .worker([Queue::new("jobs")])
        .concurrency(4)
        .build(move |message| {
            let job: serde_json::Value = message.decode()?;
            record
                .lock()
                .expect("lock")
                .push(std::thread::current().name().map(str::to_owned));
            // A slow, blocking handler: it must not stall the runtime's thread.
            std::thread::sleep(Duration::from_millis(5));
            // The blocking API works inside the handler.
            results.publish(
                &job["n"],
                PublishOptions::new()
                    .routing_key("results")
                    .declare(Queue::new("results")),
            )?;
            Ok(Outcome::Ack)
        });
    let report = run_until(worker, |r| r.acked >= N);

    assert_eq!(
        (report.handled, report.acked, report.failed),
        (N, N, 0),
        "{report:?}"
    );
    assert_eq!(
        conn.simple_queue("jobs").qsize().expect("qsize"),
        0,
        "every message acked"
    );
    assert_eq!(conn.simple_queue("results").qsize().expect("qsize"), N);
    let threads = threads.lock().expect("lock");
    assert_eq!(threads.len() as u64, N);
    assert!(
        threads
            .iter()
            .all(|name| name.as_deref().is_some_and(|n| n.starts_with("kombu-blocking-"))),
        "every handler ran on the blocking pool: {threads:?}"
    );
}

#[test]
fn a_panicking_handler_fails_its_message_which_comes_back() {
    let conn = connection("worker-panic");
    publish_n(&conn, "jobs", 1);
    let worker = conn
        .worker([Queue::new("jobs")])
        .on_failure(Outcome::Requeue)
        .build(|message| {
            if !message.redelivered() {
                panic!("first delivery");
            }
            Ok(Outcome::Ack)
        });
    let report = run_until(worker, |r| r.acked >= 1);
    assert_eq!(
        (report.failed, report.requeued, report.acked),
        (1, 1, 1),
        "{report:?}"
    );
}

#[test]
fn a_blocking_worker_parks_poison_in_front_of_good_messages_and_handles_those() {
    const NOT_JSON: &[u8] = b"{not json";
    let conn = connection("worker-poison");
    // A body that does not decode, and a content type outside `accept` (pickle), ahead of
    // the good ones.
    let publish_raw = |body: &'static [u8], content_type: &str| {
        let message = crate::transport::RawMessage::new(bytes::Bytes::from_static(body))
            .with_content_type(Some(content_type.into()));
        conn.block_on(async {
            let channel = conn.as_async().default_channel().await?;
            channel
                .declare_queue(&Queue::new("jobs"), Default::default())
                .await?;
            channel
                .publish(message, crate::transport::RawPublishOptions::new("", "jobs"))
                .await
        })
        .expect("runtime")
        .expect("publish a poison message");
    };
    publish_raw(NOT_JSON, "application/json");
    publish_raw(b"\x80\x04K\x01.", "application/x-python-serialize");
    publish_n(&conn, "jobs", 3);

    let worker = conn
        .worker([Queue::new("jobs")])
        .accept(crate::Accept::new(["json"]).expect("known serializer"))
        .build(|message| {
            let _: serde_json::Value = message.decode()?;
            Ok(Outcome::Ack)
        });
    let report = run_until(worker, |r| (r.acked, r.poisoned) == (3, 2));
    assert_eq!(
        (report.acked, report.poisoned, report.failed),
        (3, 2, 0),
        "{report:?}"
    );
    assert_eq!(conn.simple_queue("jobs").qsize().expect("qsize"), 0);
    // Both parked, unchanged (the park queue's count is the positive control: it is not 0).
    let parked = conn.simple_queue("jobs.poison");
    assert_eq!(parked.qsize().expect("qsize"), 2, "both poison messages parked");
    let first = parked.get(Duration::from_secs(1)).expect("parked message");
    assert_eq!(first.body().as_ref(), NOT_JSON, "the parked body, unchanged");
    first.ack().expect("ack");
}

#[test]
fn every_entry_point_refuses_an_async_context_with_a_typed_error() {
    let conn = connection("async-context");
    let queue = conn.simple_queue("q");
    queue.put(&1).expect("put outside the runtime");
    let message = queue.get(Duration::from_secs(1)).expect("get");
    let producer = conn.producer();
    let mut consumer = conn.consumer([Queue::new("q2")]).consume().expect("consumer");
    consumer.on_message(|_| Ok(()));

    let user_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a user's runtime");
    user_runtime.block_on(async {
        let refusals = [
            (
                "Connection::new",
                Connection::new("memory:///blocking-x").map(|_| ()),
            ),
            (
                "ensure_connection",
                conn.ensure_connection(&crate::RetryPolicy::no_retry()),
            ),
            (
                "publish",
                producer.publish(&1, PublishOptions::new().routing_key("q")),
            ),
            ("put", queue.put(&2)),
            ("get", queue.get(Duration::from_millis(1)).map(|_| ())),
            ("qsize", queue.qsize().map(|_| ())),
            ("drain_events", consumer.drain_events(Duration::from_millis(1))),
            ("ack", message.ack()),
            ("block_on", conn.block_on(async {})),
        ];
        for (what, result) in refusals {
            let error = result.expect_err(what);
            assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{what}: {error}");
            assert!(error.to_string().contains(IN_ASYNC_CONTEXT), "{what}: {error}");
        }
    });
    // Nothing was done: the message is still ours to ack, and nothing was published.
    assert_eq!(message.state(), MessageState::Received);
    message.ack().expect("ack outside the runtime");
    assert_eq!(queue.qsize().expect("qsize"), 0);
    // Dropping inside an async context does not panic either.
    user_runtime.block_on(async move {
        drop((conn, queue, producer, consumer, message));
    });
}

#[test]
fn dropping_the_last_clone_stops_the_runtime_and_its_threads() {
    let conn = connection("lifetime");
    let threads = conn.runtime().thread_count();
    assert_eq!(threads.load(Ordering::SeqCst), 1, "the runtime's own thread");

    // A worker handler starts a blocking-pool thread too.
    publish_n(&conn, "jobs", 1);
    let worker = conn.worker([Queue::new("jobs")]).build(|_| Ok(Outcome::Ack));
    let handle = worker.handle();
    let stopper = std::thread::spawn(move || {
        while handle.report().acked < 1 {
            std::thread::sleep(Duration::from_millis(2));
        }
        handle.shutdown();
    });
    worker.run().expect("run");
    stopper.join().expect("the stopping thread");
    assert!(
        threads.load(Ordering::SeqCst) >= 2,
        "the driver and a pool thread"
    );

    // A clone, and what is made from the connection, keep the runtime running.
    let queue = conn.simple_queue("kept");
    let clone = conn.clone();
    drop(conn);
    queue.put(&"still running").expect("put after the first drop");
    let message = queue.get(Duration::from_secs(1)).expect("get");
    drop(queue);
    drop(clone);
    assert!(
        threads.load(Ordering::SeqCst) >= 1,
        "the message holds the runtime"
    );
    message
        .ack()
        .expect("a message outliving its connection still settles");
    drop(message);
    assert_eq!(
        threads.load(Ordering::SeqCst),
        0,
        "every thread of the runtime ended"
    );
}

#[cfg(feature = "sqlite")]
#[test]
fn the_quick_tour_round_trips_on_sqlite_and_stops_its_threads() {
    let path = std::env::temp_dir().join(format!("kombu-blocking-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let conn = Connection::new(&format!("sqlite://{}", path.display())).expect("sqlite URL");
    let threads = conn.runtime().thread_count();
    let media = crate::Exchange::direct("media");
    let video = Queue::new("video").exchange(media.clone()).routing_key("video");
    conn.producer()
        .serializer("json")
        .publish(
            &serde_json::json!({"name": "/tmp/lolcat1.avi", "size": 1301013}),
            PublishOptions::new()
                .exchange(media)
                .routing_key("video")
                .declare(video.clone()),
        )
        .expect("publish");
    let mut consumer = conn.consumer([video]).consume().expect("consumer");
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let record = sizes.clone();
    consumer.on_message(move |message| {
        let body: serde_json::Value = message.decode()?;
        record.lock().expect("lock").push(body["size"].as_u64());
        message.ack()
    });
    consumer
        .drain_events(Duration::from_secs(5))
        .expect("drain_events");
    assert_eq!(*sizes.lock().expect("lock"), [Some(1301013)]);
    drop(consumer);
    assert_eq!(
        conn.simple_queue("video").qsize().expect("qsize"),
        0,
        "acked in the database"
    );
    drop(conn);
    assert_eq!(
        threads.load(Ordering::SeqCst),
        0,
        "every thread of the runtime ended"
    );
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
