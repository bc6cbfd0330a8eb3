//! A RabbitMQ restart mid-stream under the amiquip driver (`amqp+amiquip://`), as
//! tests/restart.rs does for lapin: every confirmed publish is consumed, the consumer
//! resumes by itself (its stream yields no error), and the topology its connection declared,
//! including a transient exchange and queue that the restart destroyed, is declared again.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::Instant;

use common::restart::BOUND;
use common::RabbitNode;
use kombu::Queue;

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
    common::restart::broker_restart_mid_stream(amiquip_url).await;
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
