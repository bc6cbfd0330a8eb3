//! A RabbitMQ restart mid-stream under the amiquip driver (`amqp+amiquip://`), as
//! tests/restart.rs does for lapin: every confirmed publish is consumed, the consumer
//! resumes by itself (its stream yields no error), and the topology its connection declared,
//! including a transient exchange and queue that the restart destroyed, is declared again.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::RabbitNode;
use kombu::{Connection, Exchange, PublishOptions, Queue, RetryPolicy};
use serde_json::{json, Value};

/// Every wait of this test ends by then.
const BOUND: Duration = Duration::from_secs(60);

/// The node's URL for the amiquip driver; recovery retries long enough to outlast a
/// restart of the node (stop, then a cold start).
fn amiquip_url(node: &RabbitNode) -> String {
    format!(
        "amqp+amiquip://guest:guest@127.0.0.1:{}//?recovery_max_retries=60",
        node.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_no_confirmed_message_amiquip() {
    kombu_amqp::register_amiquip();
    let node = tokio::task::spawn_blocking(RabbitNode::start)
        .await
        .expect("node");
    let url = amiquip_url(&node);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_that_runs_out_of_attempts_reports_the_transport_disconnected() {
    let node = tokio::task::spawn_blocking(RabbitNode::start)
        .await
        .expect("node");
    let url = format!(
        "amqp+amiquip://guest:guest@127.0.0.1:{}//?recovery_max_retries=2\
         &recovery_interval_start=0.05&recovery_interval_max=0.1",
        node.port()
    );
    let options = kombu_core::ConnectOptions::new(url.parse().expect("url"));
    let transport = tokio::time::timeout(BOUND, (kombu_amqp::AMIQUIP_DESCRIPTOR.connect)(options))
        .await
        .expect("connecting took over 60 s")
        .expect("connect");
    let channel = transport.create_channel().await.expect("channel");
    let queue = Queue::new("giveup-q").durable(false);
    tokio::time::timeout(BOUND, channel.declare_queue(&queue, Default::default()))
        .await
        .expect("declare took over 60 s")
        .expect("declare");

    let mut node = node;
    let node = tokio::task::spawn_blocking(move || {
        node.stop();
        node
    })
    .await
    .expect("stop");
    assert!(
        transport.is_connected(),
        "a lost connection that recovery may still bring back counts as connected"
    );
    // The first call may fail on the dead channel; a later one drives the recovery, which
    // gives up after its three attempts against the stopped node.
    let deadline = Instant::now() + BOUND;
    while transport.is_connected() {
        let err = tokio::time::timeout(BOUND, channel.declare_queue(&queue, Default::default()))
            .await
            .expect("a declare during recovery took over 60 s")
            .expect_err("the broker is down");
        assert_eq!(err.kind(), kombu::ErrorKind::Connection, "{err}");
        assert!(err.is_recoverable(), "{err}");
        assert!(
            Instant::now() < deadline,
            "recovery did not give up within 60 s (last error: {err})"
        );
    }
    let err = transport
        .create_channel()
        .await
        .expect_err("a transport recovery gave up on opens no channel");
    assert_eq!(err.kind(), kombu::ErrorKind::Connection, "{err}");
    tokio::time::timeout(BOUND, transport.close())
        .await
        .expect("close took over 60 s")
        .expect("close");
    drop(node);
}
