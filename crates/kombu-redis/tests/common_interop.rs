//! `kombu::common` ⇄ Python Kombu 5.7's `kombu.common` on one throwaway redis-server per test:
//! the shared scenarios of `kombu_testkit::common_interop` (Broadcast both ways, request/reply
//! with `send_reply` both ways).
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::RedisServer;
use kombu_testkit::common_interop as scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_broadcast_consumers_both_get_a_rust_message() {
    let server = RedisServer::start();
    scenario::broadcast_from_rust_reaches_python_and_rust(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_broadcast_consumers_all_get_a_python_message() {
    let server = RedisServer::start();
    scenario::broadcast_from_python_reaches_python_and_rust(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_rpc_call_answered_by_python_send_reply() {
    let server = RedisServer::start();
    scenario::rust_rpc_call_answered_by_python_send_reply(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_request_answered_by_rust_send_reply() {
    let server = RedisServer::start();
    scenario::python_request_answered_by_rust_send_reply(&server.url()).await;
}
