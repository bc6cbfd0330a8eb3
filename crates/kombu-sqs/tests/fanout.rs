//! Fanout exchanges through SNS (feature `sns`, `supports_fanout=true`) on a throwaway moto
//! server, which serves SNS on the SQS endpoint and delivers topic messages to subscribed
//! queues.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::Moto;
use kombu::transport::DeclareOptions;
use kombu::{Connection, ErrorKind, Exchange, Message, PublishOptions, Queue};
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(15);

async fn declare(conn: &Connection, queue: &Queue) {
    let channel = conn.channel().await.expect("channel");
    conn.maybe_declare(&queue.clone().into(), channel.as_ref())
        .await
        .expect("declare");
}

async fn take_one(conn: &Connection, queue: &Queue) -> Message {
    let mut consumer = conn.consumer([queue.clone()]).build().await.expect("consumer");
    consumer.consume().await.expect("consume");
    let m = consumer.recv_timeout(PATIENCE).await.expect("a message");
    m.ack().await.expect("ack");
    consumer.close().await.expect("close");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_bound_queue_through_sns() {
    let moto = Moto::start();
    let conn = Connection::new(&moto.url_with("supports_fanout=true")).expect("connection");
    let caps = conn.transport().await.expect("transport").capabilities();
    assert!(caps.exchange_fanout, "fanout is on with supports_fanout=true");
    for (exchange, a, b) in [
        (Exchange::fanout("news"), "news-a", "news-b"),
        // A FIFO topic fans out to FIFO queues.
        (Exchange::fanout("orders.fifo"), "orders-a.fifo", "orders-b.fifo"),
    ] {
        let queues: Vec<Queue> = [a, b]
            .iter()
            .map(|n| Queue::new(*n).exchange(exchange.clone()).routing_key(""))
            .collect();
        for q in &queues {
            declare(&conn, q).await;
        }
        conn.producer()
            .exchange(exchange.clone())
            .publish(&json!({"to": "everyone"}), PublishOptions::new())
            .await
            .expect("publish");
        for q in &queues {
            let m = take_one(&conn, q).await;
            assert_eq!(
                m.decode::<Value>().unwrap(),
                json!({"to": "everyone"}),
                "{}",
                q.name
            );
            assert_eq!(m.delivery_info().exchange(), exchange.name.as_str());
        }
    }
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_is_unsupported_without_supports_fanout() {
    let moto = Moto::start();
    let conn = Connection::new(&moto.url()).expect("connection");
    let caps = conn.transport().await.expect("transport").capabilities();
    assert!(!caps.exchange_fanout, "fanout needs supports_fanout=true");
    let channel = conn.channel().await.expect("channel");
    let err = channel
        .declare_exchange(&Exchange::fanout("nope"), DeclareOptions::default())
        .await
        .expect_err("a fanout exchange without supports_fanout");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(
        err.to_string().contains("supports_fanout=true"),
        "says how to turn it on: {err}"
    );
    // Positive control: a direct exchange works on the same channel.
    channel
        .declare_exchange(&Exchange::direct("yes"), DeclareOptions::default())
        .await
        .expect("a direct exchange");
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predefined_exchanges_are_used_by_arn_and_no_topic_is_created() {
    let moto = Moto::start();
    // A topic made beforehand (here by a connection that may create topics).
    let maker = Connection::new(&moto.url_with("supports_fanout=true")).expect("connection");
    maker
        .channel()
        .await
        .expect("channel")
        .declare_exchange(&Exchange::fanout("made"), DeclareOptions::default())
        .await
        .expect("topic created");
    maker.close().await.expect("close");
    let mut options = kombu::ConnectionOptions::default();
    options.transport_options.insert(
        "predefined_exchanges".into(),
        json!({"made": {"arn": "arn:aws:sns:us-east-1:123456789012:made"}}).to_string(),
    );
    let conn = Connection::with_options(&moto.url_with("supports_fanout=true"), options).expect("connection");
    let exchange = Exchange::fanout("made");
    let queue = Queue::new("made-q").exchange(exchange.clone()).routing_key("");
    declare(&conn, &queue).await;
    conn.producer()
        .exchange(exchange)
        .publish(&json!("by arn"), PublishOptions::new())
        .await
        .expect("publish");
    assert_eq!(
        take_one(&conn, &queue).await.decode::<String>().unwrap(),
        "by arn"
    );
    // Any other fanout exchange is an error: nothing is created.
    let err = conn
        .channel()
        .await
        .expect("channel")
        .declare_exchange(&Exchange::fanout("unknown"), DeclareOptions::default())
        .await
        .expect_err("an exchange missing from predefined_exchanges");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    conn.close().await.expect("close");
}
