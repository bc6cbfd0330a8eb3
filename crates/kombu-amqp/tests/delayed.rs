//! Kombu's native delayed delivery on a real RabbitMQ node: a message published with a
//! countdown arrives after it, not before, through the 28 levels.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use common::RabbitNode;
use kombu::{Connection, Exchange, PublishOptions, Queue};
use kombu_amqp::delayed::{self, QueueType};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn countdown_delays_delivery_through_the_levels() {
    let node = RabbitNode::start();
    let conn = Connection::new(&node.url()).expect("connection");
    let channel = conn.channel().await.expect("channel");
    delayed::declare_exchanges_and_queues(channel.as_ref(), QueueType::Classic)
        .await
        .expect("levels declared");
    let queue = Queue::new("delayed-tasks")
        .exchange(Exchange::topic("delayed-tasks"))
        .routing_key("delayed-tasks");
    delayed::bind_queue(channel.as_ref(), &queue)
        .await
        .expect("bound");
    let direct = Queue::new("d").exchange(Exchange::direct("d"));
    assert!(
        delayed::bind_queue(channel.as_ref(), &direct).await.is_err(),
        "direct exchanges refused"
    );

    let mut consumer = conn.consumer([queue]).build().await.expect("consumer");
    consumer.consume().await.expect("consume");
    let producer = conn.producer().exchange(Exchange::topic(delayed::ENTRY_EXCHANGE));
    let started = Instant::now();
    for (seconds, body) in [(2u64, "after two seconds"), (0, "at once")] {
        let key = delayed::routing_key(Duration::from_secs(seconds), "delayed-tasks").expect("key");
        producer
            .publish(&body, PublishOptions::new().routing_key(key))
            .await
            .expect("publish");
    }
    let first = consumer
        .recv_timeout(Duration::from_secs(5))
        .await
        .expect("first");
    assert_eq!(first.decode::<String>().expect("json"), "at once");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "a zero countdown is not held"
    );
    first.ack().await.expect("ack");
    let second = consumer
        .recv_timeout(Duration::from_secs(10))
        .await
        .expect("second");
    assert_eq!(second.decode::<String>().expect("json"), "after two seconds");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "delivered after {waited:?}, before the countdown"
    );
    assert!(waited < Duration::from_secs(6), "delivered only after {waited:?}");
    second.ack().await.expect("ack");
    conn.close().await.expect("close");
}
