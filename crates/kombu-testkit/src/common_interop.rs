//! `kombu::common` ⇄ Python Kombu 5.7's `kombu.common`, on any transport with fanout that
//! Python Kombu also speaks: `Broadcast` consumers on both sides, and request/reply with
//! `send_reply` both ways. The Python side is `tests/python/interop_common.py`; it needs the
//! project venv (`cargo xtask test-matrix` creates it) or `KOMBU_PYTHON`. Each scenario takes
//! the broker's URL (the same for both languages) and runs its own Python processes.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test scenarios fail loudly"
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kombu::common::{send_reply, Broadcast, RpcClient};
use kombu::{Connection, Consumer, PublishOptions, Queue};
use serde_json::{json, Value};

use crate::interop::{python, run_python, workspace_root};

const WAIT: Duration = Duration::from_secs(20);

/// `interop_common.py` running in the background, its stdout read line by line.
struct PythonSide {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl PythonSide {
    fn spawn(args: &[&str]) -> PythonSide {
        let mut child = Command::new(python())
            .arg(workspace_root().join("tests/python/interop_common.py"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        PythonSide { child, lines }
    }

    /// The next JSON line (blocking this test's thread: the tests run multi-threaded).
    fn line(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("a line from the Python side");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
    }

    fn finish(mut self) {
        let status = self.child.wait().expect("python exits");
        assert!(status.success(), "the Python side failed: {status}");
    }
}

impl Drop for PythonSide {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn recv_json(consumer: &mut Consumer) -> Value {
    let message = consumer.recv_timeout(WAIT).await.expect("a message");
    message.ack().await.expect("ack");
    message.decode().expect("json")
}

/// A Python `Broadcast` consumer and a Rust one each get every message Rust publishes to
/// the broadcast exchange, on their own uniquely named queues.
///
/// # Panics
///
/// When a check fails (it is a test).
pub async fn broadcast_from_rust_reaches_python_and_rust(url: &str) {
    let url = url.to_owned();
    let python_side = PythonSide::spawn(&["broadcast-consume", &url, "bcast-rs", "2"]);
    let ready = python_side.line();
    assert_eq!(ready["ready"], json!(true), "{ready}");
    let python_queue = ready["queue"].as_str().expect("queue").to_owned();
    assert!(python_queue.starts_with("bcast."), "{python_queue}");

    let conn = Connection::new(&url).expect("connection");
    let mut rust = conn
        .consumer([Broadcast::new("bcast-rs").into_queue()])
        .consume()
        .await
        .expect("consumer");
    let rust_queue = rust.queues()[0].name.clone();
    assert!(rust_queue.starts_with("bcast.") && rust_queue != python_queue);

    let producer = conn.producer().exchange(Broadcast::exchange_for("bcast-rs"));
    for n in 0..2 {
        producer
            .publish(&json!({"n": n, "from": "rust"}), PublishOptions::new())
            .await
            .expect("publish");
    }
    for n in 0..2 {
        assert_eq!(recv_json(&mut rust).await, json!({"n": n, "from": "rust"}));
        let line = python_side.line();
        assert_eq!(line["body"], json!({"n": n, "from": "rust"}), "{line}");
        assert_eq!(line["queue"], json!(python_queue));
    }
    python_side.finish();
}

/// Two Rust `Broadcast` consumers and a Python one each get every message Python
/// publishes to the broadcast exchange.
///
/// # Panics
///
/// When a check fails (it is a test).
pub async fn broadcast_from_python_reaches_python_and_rust(url: &str) {
    let python_side = PythonSide::spawn(&["broadcast-consume", url, "bcast-py", "2"]);
    assert_eq!(python_side.line()["ready"], json!(true));
    broadcast_from_python_reaches_rust(url).await;
    for n in 0..2 {
        assert_eq!(python_side.line()["body"], json!({"n": n, "from": "python"}));
    }
    python_side.finish();
}

/// Two Rust `Broadcast` consumers each get every message Python publishes to the
/// broadcast exchange (no Python consumer: for brokers where Python Kombu cannot consume a
/// broadcast, see the MongoDB transport's tests).
///
/// # Panics
///
/// When a check fails (it is a test).
pub async fn broadcast_from_python_reaches_rust(url: &str) {
    let conn = Connection::new(url).expect("connection");
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let queue = Broadcast::new("bcast-py").into_queue();
        consumers.push(conn.consumer([queue]).consume().await.expect("consumer"));
    }
    run_python("interop_common.py", &["broadcast-publish", url, "bcast-py", "2"]);
    for consumer in &mut consumers {
        for n in 0..2 {
            assert_eq!(recv_json(consumer).await, json!({"n": n, "from": "python"}));
        }
    }
    for consumer in consumers {
        consumer.close().await.expect("close");
    }
}

/// A Rust [`RpcClient`] call answered by Python's `send_reply`: the reply carries the
/// request's correlation id and arrives on the client's reply queue.
///
/// # Panics
///
/// When a check fails (it is a test).
pub async fn rust_rpc_call_answered_by_python_send_reply(url: &str) {
    let url = url.to_owned();
    let conn = Connection::new(&url).expect("connection");
    // The request queue exists before the first request: a message to a queue nobody
    // declared would be dropped.
    conn.channel()
        .await
        .expect("channel")
        .declare_queue(&Queue::new("rpc-py"), Default::default())
        .await
        .expect("declare");
    let python_side = PythonSide::spawn(&["respond", &url, "rpc-py", "2"]);
    assert_eq!(python_side.line()["ready"], json!(true));

    let mut client = RpcClient::new(conn.producer()).await.expect("client");
    for n in [3, 4] {
        let reply = client
            .call(
                &json!({"n": n, "from": "rust"}),
                PublishOptions::new().routing_key("rpc-py"),
                WAIT,
            )
            .await
            .expect("a reply");
        assert_eq!(
            reply.decode::<Value>().expect("json"),
            json!({"reply_to_n": n, "from": "python"})
        );
        let seen = python_side.line();
        assert_eq!(seen["request"], json!({"n": n, "from": "rust"}));
        assert_eq!(seen["reply_to"], json!(client.reply_queue()));
        assert_eq!(
            seen["correlation_id"].as_str(),
            reply.properties().correlation_id.as_deref()
        );
        assert_eq!(reply.delivery_info().routing_key(), client.reply_queue());
    }
    python_side.finish();
}

/// A Python request (with `reply_to` and a correlation id) answered by Rust's
/// [`send_reply`].
///
/// # Panics
///
/// When a check fails (it is a test).
pub async fn python_request_answered_by_rust_send_reply(url: &str) {
    let url = url.to_owned();
    let conn = Connection::new(&url).expect("connection");
    let mut requests = conn
        .consumer([Queue::new("rpc-rs")])
        .consume()
        .await
        .expect("consumer");
    let producer = conn.producer();
    let responder = tokio::spawn(async move {
        let request = requests.recv_timeout(WAIT).await.expect("a request");
        let body: Value = request.decode().expect("json");
        let reply = json!({"reply_to_n": body["n"], "from": "rust"});
        send_reply(&producer, &request, &reply, PublishOptions::new())
            .await
            .expect("send_reply");
        request.ack().await.expect("ack");
        body
    });
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || run_python("interop_common.py", &["request", &url, "rpc-rs", "7"])
    })
    .await
    .expect("python");
    let line: Value = serde_json::from_str(out.trim()).expect("json line");
    assert_eq!(line["body"], json!({"reply_to_n": 7, "from": "rust"}), "{line}");
    assert_eq!(line["correlation_id"], line["sent_correlation_id"]);
    assert_eq!(line["content_type"], json!("application/json"));
    assert_eq!(
        responder.await.expect("responder"),
        json!({"n": 7, "from": "python"})
    );
}
