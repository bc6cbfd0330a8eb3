//! One failover scenario for both drivers (tests/failover.rs).

use std::time::{Duration, Instant};

use kombu::{Connection, Exchange, PublishOptions, Queue};
use serde_json::{json, Value};

use super::RabbitNode;

/// Every wait of the scenario ends by then.
const BOUND: Duration = Duration::from_secs(60);

/// The scenario: a connection to `url1;url2` consumes a transient queue bound to a transient
/// exchange on node 1; node 1 goes away for good; the consumer must resume on node 2 by
/// itself, with the exchange, queue and binding declared there by its recovery, and the
/// same transport. `url_for` gives the driver's URL of a node.
pub(crate) async fn consumer_fails_over_to_the_next_url(url_for: fn(&RabbitNode) -> String) {
    let started = Instant::now();
    // Both nodes start at once (each takes seconds).
    let (node1, node2) = tokio::join!(
        tokio::task::spawn_blocking(RabbitNode::start),
        tokio::task::spawn_blocking(RabbitNode::start)
    );
    let (node1, node2) = (node1.expect("node 1"), node2.expect("node 2"));
    let url2 = url_for(&node2);

    let exchange = Exchange::direct("failover-ex").durable(false);
    let queue = Queue::new("failover-q")
        .exchange(exchange.clone())
        .routing_key("k")
        .durable(false);

    // The default recovery policy: node 1 refuses at once, node 2 is the second attempt.
    let conn = Connection::new(&format!("{};{url2}", url_for(&node1))).expect("connection");
    let mut consumer = conn
        .consumer([queue.clone()])
        .prefetch_count(5)
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");

    let producer = conn.producer().exchange(exchange.clone());
    for n in 0..3 {
        producer
            .publish(
                &json!({"node": 1, "n": n}),
                PublishOptions::new().routing_key("k"),
            )
            .await
            .expect("confirmed publish on node 1");
    }
    for n in 0..3 {
        let m = consumer
            .recv_timeout(BOUND)
            .await
            .expect("a message published on node 1");
        assert_eq!(m.decode::<Value>().expect("json"), json!({"node": 1, "n": n}));
        m.ack().await.expect("ack on node 1");
    }

    // Node 2 knows nothing of the topology yet.
    let direct = Connection::new(&url2).expect("connection to node 2");
    let probe = direct.channel().await.expect("channel on node 2");
    let err = probe
        .declare_queue(&queue, kombu_core::DeclareOptions::passive())
        .await
        .expect_err("the queue is not on node 2 before the failover");
    assert_eq!(err.kind(), kombu::ErrorKind::NotFound, "{err}");

    let transport = conn.transport().await.expect("transport");

    // Node 1 goes away for good.
    tokio::task::spawn_blocking(move || drop(node1))
        .await
        .expect("stop node 1");

    // The consumer's connection re-declares the exchange, queue and binding on node 2 and
    // consumes again there (while its consumer is being read, as an application does):
    // the queue shows its consumer.
    loop {
        match consumer.recv_timeout(Duration::from_millis(500)).await {
            Ok(m) => panic!(
                "no message was published during the failover: {:?}",
                m.decode::<Value>()
            ),
            Err(e) if e.kind() == kombu::ErrorKind::Timeout => {}
            Err(e) => panic!("the consumer failed instead of failing over: {e}"),
        }
        let resumed = match probe
            .declare_queue(&queue, kombu_core::DeclareOptions::passive())
            .await
        {
            Ok(ok) => ok.consumer_count == 1,
            Err(e) if e.kind() == kombu::ErrorKind::NotFound => false,
            Err(e) => panic!("probing node 2 failed: {e}"),
        };
        if resumed {
            break;
        }
        assert!(
            started.elapsed() < BOUND,
            "timed out after {:?}: the consumer did not resume on node 2's re-declared queue",
            started.elapsed()
        );
    }
    assert!(
        std::sync::Arc::ptr_eq(&transport, &conn.transport().await.expect("transport")),
        "the transport recovered by itself: the facade did not replace it"
    );
    probe
        .declare_exchange(&exchange, kombu_core::DeclareOptions::passive())
        .await
        .expect("the exchange was re-declared on node 2");

    // A message published on node 2 by another connection reaches the consumer; mandatory
    // with confirms fails unless the binding is there too.
    direct
        .producer()
        .exchange(exchange.clone())
        .publish(
            &json!({"node": 2, "via": "direct"}),
            PublishOptions::new().routing_key("k").mandatory(true),
        )
        .await
        .expect("a routed, confirmed publish on node 2 (the binding exists)");
    let m = consumer
        .recv_timeout(BOUND.saturating_sub(started.elapsed()))
        .await
        .expect("the consumer receives what was published on node 2");
    assert_eq!(
        m.decode::<Value>().expect("json"),
        json!({"node": 2, "via": "direct"})
    );
    m.ack().await.expect("ack on node 2");

    // The consumer's own connection publishes on node 2 too.
    producer
        .publish(
            &json!({"node": 2, "via": "same"}),
            PublishOptions::new().routing_key("k").mandatory(true),
        )
        .await
        .expect("the failed-over connection publishes on node 2");
    let m = consumer
        .recv_timeout(BOUND.saturating_sub(started.elapsed()))
        .await
        .expect("the consumer receives its own connection's publish");
    assert_eq!(
        m.decode::<Value>().expect("json"),
        json!({"node": 2, "via": "same"})
    );
    m.ack().await.expect("ack on node 2");

    consumer.close().await.expect("close consumer");
    conn.close().await.expect("close");
    direct.close().await.expect("close direct");
    drop(node2);
}
