//! Publishing to a named exchange routes over the binding set stored on the server (one Lua
//! script, or one pipelined round trip for a publisher that routes to queues itself): it must
//! agree with kombu-core's router on every topic case, whether the publisher declared the
//! exchange itself or only finds the bindings another process stored.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;

use common::RedisServer;
use kombu_core::router::TopicPattern;
use kombu_core::{
    Channel, ConnectOptions, DeclareOptions, Exchange, GetOptions, Queue, QueueBinding, RawMessage,
    RawPublishOptions, Transport,
};

/// RabbitMQ's topic semantics, including the corners where Kombu's own regexes differ.
const CASES: &[(&str, &str)] = &[
    ("*.orange.*", "quick.orange.rabbit"),
    ("*.*.rabbit", "quick.orange.rabbit"),
    ("lazy.#", "lazy.orange.elephant"),
    ("*.orange.*", "quick.brown.fox"),
    ("lazy.#", "lazy"),
    ("*.orange.*", "quick.orange.male.rabbit"),
    ("#", ""),
    ("#", "a.b.c"),
    ("*", ""),
    ("", ""),
    ("", "a"),
    ("#.b", "b"),
    ("a.#.b", "a.b"),
    ("a.#.b", "a.x.y.b"),
    ("a.#.b", "a.x.y.c"),
    ("a.*.#", "a.b"),
    ("a.*.#", "a"),
    ("#.#", "x"),
    ("a..b", "a..b"),
    ("stock.#", "stockxeuropexOSE"),
    ("stock.us.*", "stock.us.nasdaq"),
    ("stock.us.*", "stock.us.nasdaq.tech"),
];

async fn connect(url: &str) -> Arc<dyn Transport> {
    let url = url.parse().expect("url");
    (kombu_redis::DESCRIPTOR.connect)(ConnectOptions::new(url))
        .await
        .expect("connect")
}

async fn received(channel: &dyn Channel, queue: &str) -> bool {
    let got = channel.get(queue, GetOptions::default()).await.expect("get");
    if let Some(d) = &got {
        let handle = d.ack.as_ref().expect("acked delivery");
        handle.acknowledger.ack(handle.tag).await.expect("ack");
    }
    got.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_routing_on_the_server_agrees_with_the_router() {
    let server = RedisServer::start();
    let declarer = connect(&server.url()).await;
    let stranger = connect(&server.url()).await;
    let declared = declarer.create_channel().await.expect("channel");
    let undeclared = stranger.create_channel().await.expect("channel");
    for (i, (pattern, routing_key)) in CASES.iter().enumerate() {
        let exchange = format!("topic-{i}");
        let queue = format!("q-{i}");
        declared
            .declare_exchange(&Exchange::topic(exchange.as_str()), DeclareOptions::default())
            .await
            .expect("exchange");
        declared
            .declare_queue(&Queue::new(queue.as_str()), DeclareOptions::default())
            .await
            .expect("queue");
        declared
            .bind_queue(&QueueBinding::new(queue.as_str(), exchange.as_str(), *pattern))
            .await
            .expect("bind");
        let expected = TopicPattern::new(pattern).matches(routing_key);
        for (who, channel) in [("declaring", &declared), ("other", &undeclared)] {
            let message = RawMessage::new("m");
            channel
                .publish(message, RawPublishOptions::new(exchange.as_str(), *routing_key))
                .await
                .expect("publish");
            assert_eq!(
                received(channel.as_ref(), &queue).await,
                expected,
                "binding {pattern:?}, routing key {routing_key:?}, published by the {who} connection"
            );
        }
    }
    declarer.close().await.expect("close");
    stranger.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_and_direct_bindings_deliver_once_per_queue() {
    let server = RedisServer::start();
    let transport = connect(&server.url()).await;
    let channel = transport.create_channel().await.expect("channel");
    channel
        .declare_exchange(&Exchange::direct("d"), DeclareOptions::default())
        .await
        .expect("exchange");
    for (queue, key) in [("a", "k"), ("a", "k2"), ("b", "k"), ("c", "other")] {
        channel
            .declare_queue(&Queue::new(queue), DeclareOptions::default())
            .await
            .expect("queue");
        channel
            .bind_queue(&QueueBinding::new(queue, "d", key))
            .await
            .expect("bind");
    }
    channel
        .publish(RawMessage::default(), RawPublishOptions::new("d", "k"))
        .await
        .expect("publish");
    for (queue, expected) in [("a", 1), ("b", 1), ("c", 0)] {
        let size = channel
            .declare_queue(&Queue::new(queue), DeclareOptions::passive())
            .await
            .expect("passive")
            .message_count;
        assert_eq!(size, expected, "messages in {queue}");
    }
    let mandatory = RawPublishOptions::new("d", "nobody").mandatory(true);
    let error = channel
        .publish(RawMessage::default(), mandatory)
        .await
        .expect_err("unroutable mandatory publish");
    assert_eq!(error.kind(), kombu_core::ErrorKind::NotFound);
    transport.close().await.expect("close");
}

/// A publisher that declared the exchange and bound a queue itself takes the pipelined path;
/// queues another process bound (unknown to the publisher) must still get the message, once,
/// by the declared type — direct by equality, topic by AMQP words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_stored_by_another_process_reach_their_queues() {
    let server = RedisServer::start();
    let publisher = connect(&server.url()).await;
    let other = connect(&server.url()).await;
    let mine = publisher.create_channel().await.expect("channel");
    let theirs = other.create_channel().await.expect("channel");
    for (exchange, my_key, their_keys, routing_key, expected) in [
        (
            Exchange::direct("d-shared"),
            "k",
            vec![("t-k", "k"), ("t-other", "other")],
            "k",
            vec![("mine-d-shared", 1), ("t-k", 1), ("t-other", 0)],
        ),
        (
            Exchange::topic("t-shared"),
            "a.#",
            vec![("t-star", "a.*"), ("t-hash", "#.c"), ("t-miss", "b.#")],
            "a.c",
            vec![("mine-t-shared", 1), ("t-star", 1), ("t-hash", 1), ("t-miss", 0)],
        ),
    ] {
        let my_queue = format!("mine-{}", exchange.name);
        mine.declare_exchange(&exchange, DeclareOptions::default())
            .await
            .expect("exchange");
        mine.declare_queue(&Queue::new(my_queue.as_str()), DeclareOptions::default())
            .await
            .expect("queue");
        mine.bind_queue(&QueueBinding::new(
            my_queue.as_str(),
            exchange.name.as_str(),
            my_key,
        ))
        .await
        .expect("bind");
        theirs
            .declare_exchange(&exchange, DeclareOptions::default())
            .await
            .expect("exchange");
        for (queue, key) in &their_keys {
            theirs
                .declare_queue(&Queue::new(*queue), DeclareOptions::default())
                .await
                .expect("queue");
            theirs
                .bind_queue(&QueueBinding::new(*queue, exchange.name.as_str(), *key))
                .await
                .expect("bind");
        }
        // Also bound by the other process to the publisher's own queue: still one copy.
        theirs
            .bind_queue(&QueueBinding::new(
                my_queue.as_str(),
                exchange.name.as_str(),
                routing_key,
            ))
            .await
            .expect("bind");
        mine.publish(
            RawMessage::default(),
            RawPublishOptions::new(exchange.name.as_str(), routing_key),
        )
        .await
        .expect("publish");
        for (queue, count) in expected {
            let size = theirs
                .declare_queue(&Queue::new(queue), DeclareOptions::passive())
                .await
                .expect("passive")
                .message_count;
            assert_eq!(size, count, "messages in {queue} (exchange {})", exchange.name);
        }
    }
    publisher.close().await.expect("close");
    other.close().await.expect("close");
}

/// Acks are queued and written in batches; closing the connection waits for them, so nothing
/// acked is left in Kombu's `unacked` bookkeeping for a restorer to hand out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_acks_are_written_before_close_returns() {
    let server = RedisServer::start();
    let transport = connect(&server.url()).await;
    let channel = transport.create_channel().await.expect("channel");
    channel
        .declare_queue(&Queue::new("acks"), DeclareOptions::default())
        .await
        .expect("queue");
    for _ in 0..50 {
        channel
            .publish(RawMessage::default(), RawPublishOptions::new("", "acks"))
            .await
            .expect("publish");
    }
    for _ in 0..50 {
        assert!(received(channel.as_ref(), "acks").await, "a message to ack");
    }
    transport.close().await.expect("close");
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let unacked: usize = redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut conn)
        .await
        .expect("HLEN");
    let index: usize = redis::cmd("ZCARD")
        .arg("unacked_index")
        .query_async(&mut conn)
        .await
        .expect("ZCARD");
    assert_eq!((unacked, index), (0, 0), "unacked records left after close");
    let left: usize = redis::cmd("LLEN")
        .arg("acks")
        .query_async(&mut conn)
        .await
        .expect("LLEN");
    assert_eq!(left, 0, "messages left in the queue");
}
