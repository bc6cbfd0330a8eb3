//! Failover during recovery: a connection to `url1;url2` whose first broker dies for good
//! resumes its consumer on the second by itself, with the topology it had declared (a
//! transient exchange, queue and binding that exist on node 2 only because the consumer's
//! connection declared them there). The scenario is in tests/common/failover.rs, run for
//! both drivers.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::RabbitNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_fails_over_to_the_next_url_with_its_topology() {
    common::failover::consumer_fails_over_to_the_next_url(RabbitNode::url).await;
}

/// The amiquip driver walks the same list in the same order.
#[cfg(feature = "amiquip")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_fails_over_to_the_next_url_with_its_topology_amiquip() {
    kombu_amqp::register_amiquip();
    common::failover::consumer_fails_over_to_the_next_url(|node| {
        format!("amqp+amiquip://guest:guest@127.0.0.1:{}//", node.port())
    })
    .await;
}
