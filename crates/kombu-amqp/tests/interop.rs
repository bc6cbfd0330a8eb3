//! kombu-rs ⇄ Python Kombu 5.7 (py-amqp) on one throwaway RabbitMQ node: the scripted
//! scenarios of `tests/python/interop_scenarios.py` in both directions (direct, topic,
//! serializers, compression, priorities, a Celery task message), reject/requeue across
//! languages and fanout from Python to Rust. Needs the project venv (`cargo xtask
//! test-matrix` creates it) or `KOMBU_PYTHON`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::RabbitNode;
use kombu_testkit::interop::{self, Broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kombu_and_kombu_rs_share_rabbitmq() {
    let node = RabbitNode::start();
    let url = node.url();
    interop::python_scenarios_consumed_by_rust(&url, Broker::Amqp).await;
    interop::rust_scenarios_consumed_by_python(&url, Broker::Amqp).await;
    interop::python_reject_requeue_then_rust_gets_it_redelivered(&url).await;
    interop::python_fanout_reaches_rust_subscribers(&url).await;
}
