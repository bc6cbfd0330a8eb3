//! `kombu::common` ⇄ Python Kombu 5.7's `kombu.common` (py-amqp) on one throwaway RabbitMQ
//! node: the shared scenarios of `kombu_testkit::common_interop` (Broadcast both ways,
//! request/reply with `send_reply` both ways), one after the other on the same node.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::RabbitNode;
use kombu_testkit::common_interop as scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kombu_common_helpers_interoperate_on_rabbitmq() {
    let node = RabbitNode::start();
    let url = node.url();
    scenario::broadcast_from_rust_reaches_python_and_rust(&url).await;
    scenario::broadcast_from_python_reaches_python_and_rust(&url).await;
    scenario::rust_rpc_call_answered_by_python_send_reply(&url).await;
    scenario::python_request_answered_by_rust_send_reply(&url).await;
}
