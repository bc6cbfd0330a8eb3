//! What the SQLite transport does better than Kombu's: a dead consumer's messages come back
//! after the visibility timeout, a live consumer keeps its messages however long it works,
//! and a row that is not an envelope is set aside instead of breaking the queue.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test scaffolding

mod common;
use common::TempDb;

use std::time::Duration;

use kombu::transport::GetOptions;
use kombu::{Connection, ErrorKind, PublishOptions, Queue};

async fn publish(url: &str, queue: &str, text: &str) {
    let conn = Connection::new(url).unwrap();
    conn.producer()
        .publish_text(
            text,
            PublishOptions::new()
                .routing_key(queue)
                .declare(Queue::new(queue)),
        )
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_message_comes_back_after_the_visibility_timeout() {
    let db = TempDb::new("dead");
    let url = db.url("?visibility_timeout=0.5");
    publish(&url, "jobs", "survivor").await;
    // What a consumer process leaves behind when it is killed after taking the message: the
    // row invisible (as Kombu marks it) and a claim nobody renews.
    let sql = db.sql();
    let id: i64 = sql
        .query_row("SELECT id FROM kombu_message WHERE visible = 1", [], |r| r.get(0))
        .unwrap();
    sql.execute(
        "UPDATE kombu_message SET visible = 0, version = version + 1 WHERE id = ?1",
        [id],
    )
    .unwrap();
    sql.execute(
        "INSERT INTO kombu_message_rs_claim (message_id, owner, deadline_ms) VALUES (?1, 'killed', \
         CAST(unixepoch('subsec') * 1000 AS INTEGER) + 500)",
        [id],
    )
    .unwrap();

    let conn = Connection::new(&url).unwrap();
    let channel = conn.channel().await.unwrap();
    assert!(
        channel
            .get("jobs", GetOptions::default())
            .await
            .unwrap()
            .is_none(),
        "the claim is still valid"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let delivery = channel
        .get("jobs", GetOptions::default())
        .await
        .unwrap()
        .expect("the message of the dead consumer is delivered again");
    assert_eq!(&delivery.message.body[..], b"survivor");
    assert!(delivery.info.redelivered(), "marked redelivered");
    let handle = delivery.ack.clone().expect("an ack handle");
    handle.acknowledger.ack(handle.tag).await.unwrap();
    conn.close().await.unwrap(); // acks are committed in the background; close waits for them
    let left: i64 = sql
        .query_row("SELECT count(*) FROM kombu_message", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "acked row deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_consumer_keeps_its_message_past_the_visibility_timeout() {
    let db = TempDb::new("live");
    let url = db.url("?visibility_timeout=0.4");
    publish(&url, "jobs", "slow work").await;
    let worker = Connection::new(&url).unwrap();
    let mut consumer = worker.consumer([Queue::new("jobs")]).build().await.unwrap();
    consumer.consume().await.unwrap();
    let message = consumer.recv_timeout(Duration::from_secs(5)).await.unwrap();

    // Another process's consumer (a separate connection) polls for three timeouts.
    let other = Connection::new(&url).unwrap();
    let channel = other.channel().await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            channel
                .get("jobs", GetOptions::default())
                .await
                .unwrap()
                .is_none(),
            "a message held by a live consumer was handed out again"
        );
    }
    message.ack().await.unwrap();
    consumer.close().await.unwrap();
    worker.close().await.unwrap();
    assert!(channel
        .get("jobs", GetOptions::default())
        .await
        .unwrap()
        .is_none());
    other.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_is_not_an_envelope_is_set_aside_intact() {
    let db = TempDb::new("malformed");
    let url = db.url("");
    publish(&url, "jobs", "before").await;
    let sql = db.sql();
    sql.execute(
        "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id) \
         VALUES (1, NULL, '{not json', 1, (SELECT id FROM kombu_queue WHERE name = 'jobs'))",
        [],
    )
    .unwrap();
    publish(&url, "jobs", "after").await;

    let conn = Connection::new(&url).unwrap();
    let channel = conn.channel().await.unwrap();
    let mut bodies = Vec::new();
    let mut errors = Vec::new();
    let mut no_ack = GetOptions::default();
    no_ack.no_ack = true;
    for _ in 0..4 {
        match channel.get("jobs", no_ack.clone()).await {
            Ok(Some(d)) => bodies.push(String::from_utf8(d.message.body.to_vec()).unwrap()),
            Ok(None) => break,
            Err(e) => errors.push(e),
        }
    }
    assert_eq!(bodies, ["before", "after"], "the queue keeps flowing");
    assert_eq!(errors.len(), 1, "one typed error for the bad row: {errors:?}");
    assert_eq!(errors[0].kind(), ErrorKind::Decode);
    assert!(
        errors[0].to_string().contains("kombu_message_rs_malformed"),
        "{}",
        errors[0]
    );
    let (payload, queue): (String, String) = sql
        .query_row("SELECT payload, queue FROM kombu_message_rs_malformed", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        (payload.as_str(), queue.as_str()),
        ("{not json", "jobs"),
        "kept intact"
    );
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_options_are_typed_errors() {
    let db = TempDb::new("bad");
    for (url, kind) in [
        ("sqlite://".to_owned(), ErrorKind::InvalidUrl),
        (
            "sqlite://user:hunter2@host/x.db".to_owned(),
            ErrorKind::InvalidUrl,
        ),
        (db.url("?visibility_timeout=soon"), ErrorKind::InvalidArgument),
        (db.url("?queue_tablename=x%22%29drop"), ErrorKind::InvalidArgument),
        (
            "sqlite:///nonexistent-dir-kombu/x/y.db".to_owned(),
            ErrorKind::Connection,
        ),
    ] {
        let err = match Connection::new(&url) {
            Err(e) => e,
            Ok(conn) => conn.channel().await.expect_err("connecting must fail"),
        };
        assert_eq!(err.kind(), kind, "{url}: {err}");
        assert!(!err.to_string().contains("hunter2"), "password shown: {err}");
    }
}
