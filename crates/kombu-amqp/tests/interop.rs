//! kombu-rs ⇄ Python Kombu 5.7 (py-amqp) on one throwaway RabbitMQ node: the scripted
//! scenarios of `tests/python/interop_scenarios.py` in both directions (direct, topic,
//! serializers, compression, priorities, a Celery task message), reject/requeue across
//! languages and fanout from Python to Rust. Needs the project venv (`cargo xtask
//! test-matrix` creates it) or `KOMBU_PYTHON`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::RabbitNode;
use kombu_testkit::interop::{self, Broker};

/// Each scenario must end within this: a hang fails the test and names the scenario.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);

async fn bounded(name: &str, scenario: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(SCENARIO_LIMIT, scenario)
        .await
        .unwrap_or_else(|_| panic!("interop scenario {name:?} did not finish within {SCENARIO_LIMIT:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kombu_and_kombu_rs_share_rabbitmq() {
    let node = RabbitNode::start();
    let url = node.url();
    bounded(
        "python publishes, rust consumes",
        interop::python_scenarios_consumed_by_rust(&url, Broker::Amqp),
    )
    .await;
    bounded(
        "rust publishes, python consumes",
        interop::rust_scenarios_consumed_by_python(&url, Broker::Amqp),
    )
    .await;
    bounded(
        "python rejects with requeue, rust gets it redelivered",
        interop::python_reject_requeue_then_rust_gets_it_redelivered(&url),
    )
    .await;
    bounded(
        "python fanout reaches rust subscribers",
        interop::python_fanout_reaches_rust_subscribers(&url),
    )
    .await;
}
