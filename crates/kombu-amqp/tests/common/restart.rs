//! One RabbitMQ restart scenario for both drivers (tests/restart.rs for lapin,
//! tests/restart_amiquip.rs for amiquip), so they are held to the same checks.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kombu::{Connection, Exchange, PublishOptions, Queue, RetryPolicy};
use serde_json::{json, Value};

use super::RabbitNode;

/// Every wait of the scenario ends by then.
pub(crate) const BOUND: Duration = Duration::from_secs(60);

/// The scenario: a consumer of a durable queue and of a transient fanout queue, 300
/// publishes with retry, the node restarted after the 100th. Every confirmed publish must
/// be consumed, the consumer's stream must resume by itself without yielding an error, and
/// the transient exchange and queue must exist again (re-declared by the recovery).
/// `url_for` gives the driver's URL of the node.
pub(crate) async fn broker_restart_mid_stream(url_for: fn(&RabbitNode) -> String) {
    let node = tokio::task::spawn_blocking(RabbitNode::start)
        .await
        .expect("node");
    let url = url_for(&node);

    let durable_ex = Exchange::direct("restart-ex");
    let durable_q = Queue::new("restart-durable")
        .exchange(durable_ex.clone())
        .routing_key("k");
    let transient_ex = Exchange::fanout("restart-transient-ex").durable(false);
    let transient_q = Queue::new("restart-transient")
        .exchange(transient_ex.clone())
        .durable(false);

    let consumer_conn = Connection::new(&url).expect("consumer connection");
    let mut consumer = tokio::time::timeout(
        BOUND,
        consumer_conn
            .consumer([durable_q.clone(), transient_q.clone()])
            .prefetch_count(10)
            .build(),
    )
    .await
    .expect("building the consumer took over 60 s")
    .expect("consumer");
    tokio::time::timeout(BOUND, consumer.consume())
        .await
        .expect("consume took over 60 s")
        .expect("consume");

    let producer_conn = Connection::new(&url).expect("producer connection");
    let producer = producer_conn.producer().exchange(durable_ex.clone());
    let publisher = tokio::spawn({
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
                let options = PublishOptions::new()
                    .routing_key("k")
                    .declare(durable_q.clone())
                    .retry(
                        RetryPolicy::default()
                            .max_retries(10)
                            .interval_start(Duration::from_millis(200))
                            .interval_step(Duration::from_millis(200)),
                    );
                let sent = tokio::time::timeout(BOUND, producer.publish(&json!({"n": n}), options))
                    .await
                    .unwrap_or_else(|_| panic!("publish {n} hung for over 60 s"));
                match sent {
                    Ok(()) => {
                        confirmed.insert(n);
                    }
                    // A publish caught by the loss may fail, but never silently, and only
                    // with a recoverable error.
                    Err(e) => assert!(
                        e.kind() == kombu::ErrorKind::Connection,
                        "publish {n} failed with a non-connection error: {e}"
                    ),
                }
            }
            let node = match restart {
                Some(handle) => tokio::time::timeout(2 * BOUND, handle)
                    .await
                    .expect("the node restart took over 120 s")
                    .expect("restart"),
                None => node.expect("node"),
            };
            (confirmed, node)
        }
    });

    let mut received = BTreeSet::new();
    let mut transient_seen = false;
    let mut confirmed: Option<BTreeSet<u64>> = None;
    let mut publisher = Some(publisher);
    let mut node = None;
    let mut transient_sent = false;
    // Until the publisher is done: the restart plus 300 publishes; after it, BOUND.
    let mut deadline = Instant::now() + 4 * BOUND;
    loop {
        if let Some(handle) = publisher.take_if(|h| h.is_finished()) {
            let (c, n) = handle.await.expect("publisher task");
            confirmed = Some(c);
            node = Some(n);
            deadline = Instant::now() + BOUND;
        }
        if confirmed.is_some() && !transient_sent {
            // After the restart the transient fanout exchange and its queue exist again only
            // because the consumer's connection declared them again; until its recovery has
            // done so, a mandatory publish is refused.
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
        match consumer.recv_timeout(Duration::from_millis(100)).await {
            Ok(m) => {
                let body = m.decode::<Value>().expect("json");
                if body["transient"] == json!(true) {
                    transient_seen = true;
                } else {
                    received.insert(body["n"].as_u64().expect("n"));
                }
                // An ack of a delivery from before the loss fails (its channel is gone) and
                // the broker redelivers: duplicates are allowed here, losses are not.
                let _ = m.ack().await;
            }
            Err(e) if e.kind() == kombu::ErrorKind::Timeout => {}
            Err(e) => panic!("the consumer did not resume by itself: its stream yielded {e}"),
        }
        if let Some(c) = &confirmed {
            if transient_seen && c.iter().all(|n| received.contains(n)) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out: publisher done: {}, confirmed {:?}, received {}, transient sent {transient_sent}, \
             transient seen {transient_seen}",
            confirmed.is_some(),
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
        received.iter().any(|n| *n >= 200),
        "the consumer received messages published after the restart"
    );

    // The transient entities exist again: passive declarations from a fresh channel succeed.
    let channel = tokio::time::timeout(BOUND, producer_conn.channel())
        .await
        .expect("opening a channel took over 60 s")
        .expect("channel");
    tokio::time::timeout(
        BOUND,
        channel.declare_exchange(&transient_ex, kombu_core::DeclareOptions::passive()),
    )
    .await
    .expect("passive exchange declare took over 60 s")
    .expect("the transient exchange was declared again after the restart");
    tokio::time::timeout(
        BOUND,
        channel.declare_queue(&transient_q, kombu_core::DeclareOptions::passive()),
    )
    .await
    .expect("passive queue declare took over 60 s")
    .expect("the transient queue was declared again after the restart");

    tokio::time::timeout(BOUND, consumer.close())
        .await
        .expect("closing the consumer took over 60 s")
        .expect("close");
    tokio::time::timeout(BOUND, producer_conn.close())
        .await
        .expect("closing the producer took over 60 s")
        .expect("close");
    drop(node);
}
