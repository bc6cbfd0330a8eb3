//! A RabbitMQ restart mid-stream: every confirmed publish is consumed, the consumer resumes
//! by itself, and the topology this connection declared (including a transient exchange and
//! queue that the restart destroyed) is declared again.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::RabbitNode;
use kombu::{Connection, Exchange, PublishOptions, Queue, RetryPolicy};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_no_confirmed_message() {
    let node = RabbitNode::start();
    let url = node.url();

    let durable_ex = Exchange::direct("restart-ex");
    let durable_q = Queue::new("restart-durable")
        .exchange(durable_ex.clone())
        .routing_key("k");
    let transient_ex = Exchange::fanout("restart-transient-ex").durable(false);
    let transient_q = Queue::new("restart-transient")
        .exchange(transient_ex.clone())
        .durable(false);

    let consumer_conn = Connection::new(&url).expect("connection");
    let mut consumer = consumer_conn
        .consumer([durable_q.clone(), transient_q.clone()])
        .prefetch_count(10)
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");

    let producer_conn = Connection::new(&url).expect("connection");
    let producer = producer_conn.producer().exchange(durable_ex.clone());
    let publish_many = {
        let producer = producer.clone();
        let durable_q = durable_q.clone();
        async move {
            let mut confirmed = BTreeSet::new();
            let mut node = Some(node);
            let mut restart = None;
            for n in 0..300u64 {
                if n == 100 {
                    // Restart in the background while publishing goes on.
                    let mut taken = node.take().expect("node");
                    restart = Some(tokio::task::spawn_blocking(move || {
                        taken.restart();
                        taken
                    }));
                }
                let sent = producer
                    .publish(
                        &json!({"n": n}),
                        PublishOptions::new()
                            .routing_key("k")
                            .declare(durable_q.clone())
                            .retry(
                                RetryPolicy::default()
                                    .max_retries(10)
                                    .interval_start(Duration::from_millis(200))
                                    .interval_step(Duration::from_millis(200)),
                            ),
                    )
                    .await;
                if sent.is_ok() {
                    confirmed.insert(n);
                }
            }
            let node = match restart {
                Some(handle) => handle.await.expect("restart"),
                None => node.expect("node"),
            };
            (confirmed, node)
        }
    };
    let publisher = tokio::spawn(publish_many);

    let mut received = BTreeSet::new();
    let mut transient_seen = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut confirmed: Option<BTreeSet<u64>> = None;
    let mut publisher = Some(publisher);
    let mut node = None;
    let mut transient_sent = false;
    loop {
        if let Some(handle) = publisher.as_ref().filter(|h| h.is_finished()) {
            let _ = handle;
            let (c, n) = publisher
                .take()
                .expect("publisher")
                .await
                .expect("publisher task");
            confirmed = Some(c);
            node = Some(n);
        }
        if confirmed.is_some() && !transient_sent {
            // After the restart: the transient fanout exchange and its queue exist again
            // only because the consumer's connection declared them again.
            // The consumer's connection replays its topology by itself, possibly still
            // while this runs: a mandatory publish is refused until the binding is back.
            match producer_conn
                .producer()
                .exchange(transient_ex.clone())
                .publish(&json!({"transient": true}), PublishOptions::new().mandatory(true))
                .await
            {
                Ok(()) => transient_sent = true,
                Err(e) => assert!(
                    matches!(e.kind(), kombu::ErrorKind::NotFound),
                    "unexpected error publishing to the transient exchange: {e}"
                ),
            }
        }
        if let Ok(m) = consumer.recv_timeout(Duration::from_millis(100)).await {
            let body = m.decode::<Value>().expect("json");
            if body["transient"] == json!(true) {
                transient_seen = true;
            } else {
                received.insert(body["n"].as_u64().expect("n"));
            }
            // An ack sent just before the broker went down may be lost: AMQP then
            // redelivers, so duplicates are allowed here, losses are not.
            let _ = m.ack().await;
        }
        if let Some(c) = &confirmed {
            if transient_seen && c.iter().all(|n| received.contains(n)) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out: confirmed {:?}, received {}",
            confirmed.as_ref().map(BTreeSet::len),
            received.len()
        );
    }
    let confirmed = confirmed.expect("confirmed");
    assert!(
        confirmed.len() >= 290,
        "publishes with retry ride out the restart: only {} of 300 confirmed",
        confirmed.len()
    );
    let missing: Vec<&u64> = confirmed.iter().filter(|n| !received.contains(n)).collect();
    assert!(missing.is_empty(), "confirmed but never consumed: {missing:?}");
    assert!(
        transient_seen,
        "the consumer resumed on the re-declared transient queue"
    );
    consumer.close().await.expect("close");
    producer_conn.close().await.expect("close");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_queue_ends_its_consumer_with_not_found_and_spares_the_others() {
    let node = RabbitNode::start();
    let conn = Connection::new(&node.url()).expect("connection");
    // One consumer, so both queues are consumed on the same channel.
    let mut consumer = conn
        .consumer([Queue::new("doomed"), Queue::new("survivor")])
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");

    let channel = conn.channel().await.expect("channel");
    channel
        .delete_queue("doomed", Default::default())
        .await
        .expect("delete");
    let err = consumer
        .recv_timeout(Duration::from_secs(10))
        .await
        .expect_err("the consumer of a deleted queue must end with an error");
    assert_eq!(err.kind(), kombu::ErrorKind::NotFound, "{err}");

    conn.producer()
        .publish(&json!({"n": 1}), PublishOptions::new().routing_key("survivor"))
        .await
        .expect("publish");
    let m = consumer
        .recv_timeout(Duration::from_secs(10))
        .await
        .expect("the other queue on the same channel keeps receiving");
    assert_eq!(m.decode::<Value>().expect("json"), json!({"n": 1}));
    m.ack().await.expect("ack");
    conn.close().await.expect("close");
}
