//! A mandatory message nobody receives: an error with confirms, a warning and a count
//! ([`kombu_amqp::returned_messages`]) without them.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use common::RabbitNode;
use kombu_core::{ConnectOptions, DeclareOptions, ErrorKind, Queue, RawMessage, RawPublishOptions};

fn message(body: &'static str) -> RawMessage {
    RawMessage::new(body)
}

fn mandatory(routing_key: &str) -> RawPublishOptions {
    RawPublishOptions::new("", routing_key).mandatory(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_mandatory_message_is_an_error_with_confirms_and_counted_without() {
    let node = RabbitNode::start();

    // Confirms on (the default): the return is the publish's own error.
    let url = node.url().parse().expect("url");
    let transport = (kombu_amqp::DESCRIPTOR.connect)(ConnectOptions::new(url))
        .await
        .expect("connect");
    let channel = transport.create_channel().await.expect("channel");
    let before = kombu_amqp::returned_messages();
    let error = channel
        .publish(message("lost"), mandatory("nobody-home"))
        .await
        .expect_err("a returned mandatory message is an error with confirms");
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    assert_eq!(kombu_amqp::returned_messages(), before, "errors are not counted");
    transport.close().await.expect("close");

    // Confirms off: the publish succeeds; the return is counted at a later publish.
    let url = format!("{}?confirm_publish=false", node.url())
        .parse()
        .expect("url");
    let transport = (kombu_amqp::DESCRIPTOR.connect)(ConnectOptions::new(url))
        .await
        .expect("connect");
    let channel = transport.create_channel().await.expect("channel");
    channel
        .declare_queue(&Queue::new("returns-home"), DeclareOptions::default())
        .await
        .expect("declare");
    channel
        .publish(message("lost"), mandatory("nobody-home"))
        .await
        .expect("without confirms the publish itself succeeds");
    let deadline = Instant::now() + Duration::from_secs(10);
    while kombu_amqp::returned_messages() == before {
        assert!(
            Instant::now() < deadline,
            "the returned message was never reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Routable and mandatory: delivered, so never returned; collects earlier returns.
        channel
            .publish(message("kept"), mandatory("returns-home"))
            .await
            .expect("publish");
    }
    assert_eq!(kombu_amqp::returned_messages(), before + 1);

    // A return that arrives before the channel closes is reported by the close.
    channel
        .publish(message("lost again"), mandatory("nobody-home"))
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(500)).await;
    channel.close().await.expect("close");
    assert_eq!(kombu_amqp::returned_messages(), before + 2);
    transport.close().await.expect("close");
}
