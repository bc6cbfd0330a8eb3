//! Faults against a throwaway FerretDB: a document over the 16 MiB BSON limit, malformed
//! payloads among good messages, a consumer SIGKILLed with messages in flight, and the
//! server restarted mid-stream.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;
use kombu::{Connection, ErrorKind, PublishOptions, Queue};
use mongodb::bson::{doc, Document};
use serde_json::{json, Value};

async fn publish_numbers(conn: &Connection, queue: &str, range: std::ops::Range<usize>) {
    let producer = conn.producer();
    for n in range {
        producer
            .publish(
                &json!({"n": n}),
                PublishOptions::new()
                    .routing_key(queue)
                    .declare(Queue::new(queue)),
            )
            .await
            .expect("publish");
    }
}

fn numbers(messages: &[kombu::Message]) -> Vec<i64> {
    let mut ns: Vec<i64> = messages
        .iter()
        .map(|m| m.decode::<Value>().expect("json")["n"].as_i64().unwrap_or(-1))
        .collect();
    ns.sort_unstable();
    ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_document_is_limit_exceeded_before_sending() {
    let server = Server::start();
    let conn = Connection::new(&server.url()).expect("connection");
    let producer = conn.producer();
    // 13 MiB of body is over 17 MiB once base64-encoded in the envelope.
    let err = producer
        .publish_bytes(
            vec![b'x'; 13 * 1024 * 1024],
            PublishOptions::new().routing_key("big"),
        )
        .await
        .expect_err("oversized publish must fail");
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    // Nothing was stored; positive control: a large message under the limit is stored.
    producer
        .publish_bytes(
            vec![b'y'; 4 * 1024 * 1024],
            PublishOptions::new().routing_key("big"),
        )
        .await
        .expect("4 MiB fits");
    let got = kombu_testkit::interop::take(&conn, Queue::new("big"), 1).await;
    assert_eq!(got[0].payload().expect("raw").len(), 4 * 1024 * 1024);
    let count = server
        .client()
        .await
        .database(server.database())
        .collection::<Document>("messages")
        .count_documents(doc! {"queue": "big"})
        .await
        .expect("count");
    assert_eq!(count, 0, "the oversized message was never stored");
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payload_is_a_typed_error_and_the_rest_flows() {
    let server = Server::start();
    let conn = Connection::new(&server.url()).expect("connection");
    publish_numbers(&conn, "mixed", 0..1).await;
    let client = server.client().await;
    let db = client.database(server.database());
    // What Kombu could not read either: a payload that is no JSON, one that is no string.
    db.collection::<Document>("messages")
        .insert_many([
            doc! {"payload": "not json {", "queue": "mixed", "priority": 9},
            doc! {"payload": 42, "queue": "mixed", "priority": 9},
        ])
        .await
        .expect("raw insert");
    publish_numbers(&conn, "mixed", 1..3).await;
    let mut consumer = conn
        .consumer([Queue::new("mixed")])
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");
    let mut decode_errors = 0;
    let mut ns = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (ns.len() < 3 || decode_errors < 1) && tokio::time::Instant::now() < deadline {
        match consumer.recv_timeout(Duration::from_secs(5)).await {
            Ok(m) => {
                ns.push(m.decode::<Value>().expect("json")["n"].as_i64().unwrap());
                m.ack().await.expect("ack");
            }
            Err(e) if e.kind() == ErrorKind::Decode => decode_errors += 1,
            Err(e) if e.kind() == ErrorKind::Timeout => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    ns.sort_unstable();
    assert_eq!(ns, vec![0, 1, 2], "the good messages flow");
    assert!(decode_errors >= 1, "the malformed documents are Decode errors");
    let parked = db
        .collection::<Document>("kombu_rs.malformed")
        .count_documents(doc! {"queue": "mixed"})
        .await
        .expect("count");
    assert_eq!(parked, 2, "both malformed documents moved aside");
    let left = db
        .collection::<Document>("messages")
        .count_documents(doc! {"queue": "mixed"})
        .await
        .expect("count");
    assert_eq!(left, 0);
    conn.close().await.expect("close");
}

/// The child side of the SIGKILL test: take 20 messages without acking, say so, wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_holds_messages() {
    let Ok(url) = std::env::var("KOMBU_MONGODB_CRASH_CHILD_URL") else {
        return; // Only runs as the child of `sigkill_with_messages_in_flight_loses_none`.
    };
    let conn = Connection::new(&url).expect("connection");
    let mut consumer = conn
        .consumer([Queue::new("crash")])
        .prefetch_count(20)
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");
    let mut held = Vec::new();
    while held.len() < 20 {
        held.push(
            consumer
                .recv_timeout(Duration::from_secs(30))
                .await
                .expect("message"),
        );
    }
    println!("holding {}", held.len());
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_messages_in_flight_loses_none() {
    let server = Server::start();
    let url = server.url_with("visibility_timeout=2");
    let conn = Connection::new(&url).expect("connection");
    publish_numbers(&conn, "crash", 0..20).await;
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["crash_child_holds_messages", "--exact", "--nocapture"])
        .env("KOMBU_MONGODB_CRASH_CHILD_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .any(|line| line.map(|l| l.contains("holding 20")).unwrap_or(false));
    assert!(ready, "the child never held 20 messages");
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let db = server.client().await.database(server.database());
    let claims = db.collection::<Document>("kombu_rs.claims");
    // Right after the kill the messages are claimed: held, not lost and not free.
    assert_eq!(
        claims
            .count_documents(doc! {"queue": "crash"})
            .await
            .expect("count"),
        20
    );
    // Every one comes back after the claim deadline, marked redelivered.
    let got = kombu_testkit::interop::take(&conn, Queue::new("crash"), 20).await;
    assert_eq!(numbers(&got), (0..20).collect::<Vec<i64>>());
    assert!(got.iter().all(|m| m.redelivered()), "claimed before: redelivered");
    conn.close().await.expect("close");
    assert_eq!(
        claims.count_documents(doc! {}).await.expect("count"),
        0,
        "acked: nothing kept"
    );
    let left = db
        .collection::<Document>("messages")
        .count_documents(doc! {})
        .await
        .expect("count");
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_stream_then_the_consumer_resumes() {
    let mut server = Server::start_ferretdb("kombu_restart".into());
    let url = server.url_with("connect_timeout=1");
    let conn = Connection::new(&url).expect("connection");
    let mut c = conn
        .consumer([Queue::new("restart")])
        .prefetch_count(1)
        .build()
        .await
        .expect("consumer");
    c.consume().await.expect("consume");
    publish_numbers(&conn, "restart", 0..2).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let m = c.recv_timeout(Duration::from_secs(10)).await.expect("before");
        seen.push(m.decode::<Value>().expect("json")["n"].as_i64().unwrap());
        m.ack().await.expect("ack");
    }
    // Confirmed before the restart, not consumed yet: must survive it.
    let idle = Connection::new(&url).expect("connection");
    publish_numbers(&idle, "restart.kept", 0..3).await;
    server.kill();
    // While it is down: a clear, recoverable error.
    let err = conn
        .producer()
        .publish(&json!({"n": 99}), PublishOptions::new().routing_key("restart"))
        .await
        .expect_err("the server is down");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_recoverable(), "{err}");
    server.restart(); // the same SQLite files
    publish_numbers(&conn, "restart", 2..4).await;
    while seen.len() < 4 {
        let m = c
            .recv_timeout(Duration::from_secs(30))
            .await
            .expect("the consumer resumes by itself");
        seen.push(m.decode::<Value>().expect("json")["n"].as_i64().unwrap());
        m.ack().await.expect("ack");
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2, 3]);
    let kept = kombu_testkit::interop::take(&idle, Queue::new("restart.kept"), 3).await;
    assert_eq!(numbers(&kept), vec![0, 1, 2]);
    conn.close().await.expect("close");
    idle.close().await.expect("close");
}
