//! `kombu::common` ⇄ Python Kombu 5.7's `kombu.common` (pymongo) on one throwaway FerretDB:
//! the shared scenarios of `kombu_testkit::common_interop` — request/reply with
//! `send_reply` both ways, and a Python broadcast reaching Rust `Broadcast` consumers.
//!
//! Not here: a *Python* broadcast consumer. Python Kombu reads `messages.broadcast` with one
//! tailable cursor, which FerretDB (the MongoDB-wire server these tests run on) ends at once,
//! so Python Kombu receives no broadcast on it even from Python Kombu (checked by hand with
//! `tests/python/interop_common.py` on both sides). kombu-rs reopens its cursor from the last
//! message it saw, so the Rust side is tested.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::Server;
use kombu_testkit::common_interop as scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kombu_common_helpers_interoperate_on_mongodb() {
    let server = Server::start();
    let url = server.url();
    scenario::rust_rpc_call_answered_by_python_send_reply(&url).await;
    scenario::python_request_answered_by_rust_send_reply(&url).await;
    scenario::broadcast_from_python_reaches_rust(&url).await;
}
