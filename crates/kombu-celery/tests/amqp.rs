//! kombu-celery against a real Celery 5.7 on RabbitMQ with the `rpc://` result backend: a
//! throwaway RabbitMQ node per test, a Python Celery worker (`tests/python/celery_app.py`)
//! as a subprocess, and Celery's `send_task` / `AsyncResult.get()` as the Python client.
//!
//! Needs Debian's `rabbitmq-server` and the project venv with Celery
//! (`tests/python/requirements.txt`; `KOMBU_PYTHON` names another Python).
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs, reason = "tests")]

mod common;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{test_tasks, CeleryEnv, CeleryWorker};

use kombu::{Connection, ErrorKind, Message, PublishOptions, WorkerHandle, WorkerReport};
use kombu_celery::{
    celery_queue, send_task, ResultBackend, RpcBackend, TaskError, TaskMessage, TaskOptions, TaskRegistry,
    TaskState,
};
use serde_json::{json, Value};

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A throwaway RabbitMQ node (the shape of kombu-amqp's test one): its own node name, AMQP
/// and distribution ports on loopback, database and logs in a temp dir; stopped when dropped.
struct RabbitNode {
    port: u16,
    dir: PathBuf,
    child: Child,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl RabbitNode {
    fn start() -> RabbitNode {
        assert!(
            Path::new(RABBITMQ_SERVER).exists(),
            "{RABBITMQ_SERVER} is missing: install Debian's rabbitmq-server (cargo xtask test-matrix does)"
        );
        let port = free_port();
        let mut dist_port = free_port();
        while dist_port == port {
            dist_port = free_port();
        }
        let dir = std::env::temp_dir().join(format!("kombu-celery-amqp-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("env file");
        let log = std::fs::File::create(dir.join("server.log")).expect("log file");
        let d = dir.display().to_string();
        let mut child = Command::new(RABBITMQ_SERVER)
            .env("RABBITMQ_NODENAME", format!("kombu-celery-{port}@localhost"))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia"))
            .env("RABBITMQ_LOG_BASE", format!("{d}/log"))
            .env("RABBITMQ_CONF_ENV_FILE", format!("{d}/rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", format!("{d}/rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", format!("{d}/advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{d}/enabled_plugins"))
            .env("RABBITMQ_ENABLED_PLUGINS", "")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start rabbitmq-server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("rabbitmq-server exited ({status}); see {d}/server.log");
            }
            assert!(Instant::now() < deadline, "RabbitMQ did not start within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        RabbitNode { port, dir, child }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}//", self.port)
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        // SIGTERM to the start script stops the Erlang node; then make sure.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Celery on `rabbit` with the `rpc://` result backend.
fn celery_env(rabbit: &RabbitNode) -> CeleryEnv {
    CeleryEnv::new(rabbit.url(), Some("rpc://".to_owned()))
}

/// A Python Celery worker of `rabbit` consuming `celery`, killed when dropped.
fn celery_worker(rabbit: &RabbitNode) -> CeleryWorker {
    let name = format!("kombu-celery-amqp-{}", rabbit.port);
    CeleryWorker::start(&celery_env(rabbit), "celery_app", &name)
}

/// Run `celery_app.py ARGS` (the Python Celery client, `rpc://` results); its one JSON line.
async fn celery_client(rabbit: &RabbitNode, args: &[&str]) -> Value {
    let mut script = vec!["celery_app.py"];
    script.extend_from_slice(args);
    celery_env(rabbit).json(&script).await
}

/// Run `celery_app.py ARGS`, which may fail: whether it succeeded, and its stderr.
async fn celery_client_may_fail(rabbit: &RabbitNode, args: &[&str]) -> (bool, String) {
    let mut script = vec!["celery_app.py"];
    script.extend_from_slice(args);
    let output = celery_env(rabbit).run(&script).await;
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

type Running = (WorkerHandle, tokio::task::JoinHandle<kombu::Result<WorkerReport>>);

/// A Rust worker of `celery` serving `rust.mul`, `rust.flaky` and `rust.fail`, sending
/// results back through the rpc backend.
fn rust_worker(conn: &Connection) -> Running {
    rust_worker_on(conn, "celery")
}

/// [`rust_worker`] consuming `queue`.
fn rust_worker_on(conn: &Connection, queue: &str) -> Running {
    let worker = test_tasks(TaskRegistry::new().backend(RpcBackend::new(conn)))
        .into_worker(conn, [celery_queue(queue)]);
    let handle = worker.handle();
    (handle, tokio::spawn(worker.run()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_celery_gets_rpc_results_of_tasks_served_in_rust() {
    let rabbit = RabbitNode::start();
    let conn = Connection::new(&rabbit.url()).expect("connection");
    let (handle, running) = rust_worker(&conn);

    // (a) a success: Python's AsyncResult.get() on rpc:// returns the Rust result
    let got = celery_client(&rabbit, &["call", "rust.mul", "[6, 7]", "{}"]).await;
    assert_eq!(
        (&got["state"], &got["result"]),
        (&json!("SUCCESS"), &json!(42)),
        "{got}"
    );

    // (b) a failure: raised in Python as the Rust error's type, with its message
    let got = celery_client(&rabbit, &["call", "rust.fail", "[]"]).await;
    assert_eq!(got["state"], "FAILURE", "{got}");
    assert_eq!(got["exc_type"], "ValueError", "{got}");
    assert_eq!(got["error"], "rust.fail failed on purpose", "{got}");

    // a retry: the RETRY reply comes first, Python waits on for the second run's result
    let got = celery_client(&rabbit, &["call", "rust.flaky", "[]"]).await;
    assert_eq!(
        (&got["state"], &got["result"]),
        (&json!("SUCCESS"), &json!({"retries": 1})),
        "{got}"
    );

    // arguments that do not fit the handler's types: a TypeError, as in Python
    let got = celery_client(&rabbit, &["call", "rust.mul", "[\"six\", 7]"]).await;
    assert_eq!(
        (&got["state"], &got["exc_type"]),
        (&json!("FAILURE"), &json!("TypeError")),
        "{got}"
    );

    handle.shutdown();
    let report = running.await.expect("the worker task").expect("the worker");
    // mul, fail, flaky twice, the TypeError
    assert_eq!(
        (report.handled, report.acked, report.failed, report.poisoned),
        (5, 5, 0, 0),
        "{report:?}"
    );
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_sent_from_rust_on_rabbitmq_run_on_python_celery_with_rpc_results() {
    let rabbit = RabbitNode::start();
    let _worker = celery_worker(&rabbit);
    let conn = Connection::new(&rabbit.url()).expect("connection");
    let backend = RpcBackend::new(&conn);
    // As Celery's on_task_call: the reply queue exists before a task is sent.
    backend.declare().await.expect("the reply queue");
    let wait = Duration::from_secs(30);

    // args
    let id = send_task(&conn, "tasks.add", (2, 3), (), TaskOptions::new())
        .await
        .expect("send");
    let meta = backend.wait(&id, wait).await.expect("result");
    assert_eq!((meta.status, &meta.task_id), (TaskState::Success, &id));
    assert!(meta.date_done.is_some(), "{meta:?}");
    assert_eq!(meta.into_result::<i64>(), Ok(5));

    // kwargs
    let id = send_task(
        &conn,
        "tasks.add",
        (),
        json!({"x": 40, "y": 2}),
        TaskOptions::new(),
    )
    .await
    .expect("send");
    let meta = backend.wait(&id, wait).await.expect("result");
    assert_eq!(meta.into_result::<i64>(), Ok(42));

    // countdown: not run before it
    let sent = Instant::now();
    let id = send_task(
        &conn,
        "tasks.add",
        (1, 1),
        (),
        TaskOptions::new().countdown(Duration::from_secs(1)),
    )
    .await
    .expect("send");
    let meta = backend.wait(&id, wait).await.expect("result");
    assert_eq!(meta.into_result::<i64>(), Ok(2));
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "a countdown of 1 s ran after {:?}",
        sent.elapsed()
    );

    // priority (the message property; Celery's default queue has no x-max-priority)
    let id = send_task(&conn, "tasks.add", (4, 4), (), TaskOptions::new().priority(5))
        .await
        .expect("send");
    let meta = backend.wait(&id, wait).await.expect("result");
    assert_eq!(meta.into_result::<i64>(), Ok(8));

    // expires: held by the worker until its eta, expired by then: revoked, not run
    let id = send_task(
        &conn,
        "tasks.add",
        (1, 2),
        (),
        TaskOptions::new()
            .eta(std::time::SystemTime::now() + Duration::from_secs(2))
            .expires(Duration::from_secs(1)),
    )
    .await
    .expect("send");
    let meta = backend.wait(&id, wait).await.expect("result");
    assert_eq!(meta.status, TaskState::Revoked, "{meta:?}");

    // a chain: tasks.add(2, 3), then tasks.add(5, 10) sent on by the Python worker, whose
    // result comes back here too (send_task gives the step this task's reply_to)
    let last = kombu_celery::TaskId::new();
    let id = send_task(
        &conn,
        "tasks.add",
        (2, 3),
        (),
        TaskOptions::new().chain(vec![json!({
            "task": "tasks.add", "args": [10], "kwargs": {}, "options": {"task_id": last},
            "subtask_type": null, "immutable": false,
        })]),
    )
    .await
    .expect("send");
    let first = backend.wait(&id, wait).await.expect("result");
    assert_eq!(first.into_result::<i64>(), Ok(5));
    let next = backend.wait(&last, wait).await.expect("the chain's last result");
    assert_eq!(next.parent_id.as_ref(), Some(&id), "{next:?}");
    assert_eq!(next.into_result::<i64>(), Ok(15));

    // a Python failure comes back as a FAILURE with the exception
    let id = send_task(&conn, "tasks.fail", (), (), TaskOptions::new())
        .await
        .expect("send");
    let meta = backend.wait(&id, wait).await.expect("result");
    assert_eq!(meta.status, TaskState::Failure);
    assert!(
        meta.traceback.as_deref().unwrap_or("").contains("ValueError"),
        "{meta:?}"
    );
    assert_eq!(
        meta.into_result::<i64>(),
        Err(TaskError::builtin("ValueError", "tasks.fail failed on purpose"))
    );

    // ignore_result: the worker sends nothing back. The positive control is sent after it
    // to the same single worker, so once its result is here the ignored task has run too.
    let ignored = send_task(
        &conn,
        "tasks.add",
        (1, 2),
        (),
        TaskOptions::new().ignore_result(true),
    )
    .await
    .expect("send");
    let control = send_task(&conn, "tasks.add", (3, 4), (), TaskOptions::new())
        .await
        .expect("send");
    let meta = backend.wait(&control, wait).await.expect("the control's result");
    assert_eq!(meta.into_result::<i64>(), Ok(7));
    assert_eq!(backend.get(&ignored).await.expect("get"), None);
    let error = backend
        .wait(&ignored, Duration::from_millis(300))
        .await
        .expect_err("no result of an ignore_result task");
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");

    // a result is handed out once
    assert_eq!(backend.get(&control).await.expect("get"), None);
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tasks_on_rabbitmq_are_parked_and_the_rust_worker_goes_on() {
    let rabbit = RabbitNode::start();
    let conn = Connection::new(&rabbit.url()).expect("connection");
    let backend = RpcBackend::new(&conn);
    backend.declare().await.expect("the reply queue");
    // Queued before the worker starts, so they come first.
    let to_celery = || {
        PublishOptions::new()
            .routing_key("celery")
            .declare(celery_queue("celery"))
    };
    conn.producer()
        .publish_bytes(&b"{not json"[..], to_celery().content_type("application/json"))
        .await
        .expect("publish");
    conn.producer()
        .publish(
            &json!({"not": "a task"}),
            to_celery().header("task", "rust.mul").header("id", "x-1"),
        )
        .await
        .expect("publish");
    let unknown = send_task(&conn, "no.such.task", (1,), (), TaskOptions::new())
        .await
        .expect("send");
    let (handle, running) = rust_worker(&conn);

    // The positive control: a good task after them, its result back through rpc (a Rust
    // worker answering a Rust client).
    let good = send_task(&conn, "rust.mul", (3, 5), (), TaskOptions::new())
        .await
        .expect("send");
    let meta = backend
        .wait(&good, Duration::from_secs(30))
        .await
        .expect("result");
    assert_eq!(meta.into_result::<i64>(), Ok(15));

    // Celery's answer to an unknown task: rejected, a NotRegistered failure sent back.
    let meta = backend
        .wait(&unknown, Duration::from_secs(5))
        .await
        .expect("result");
    assert_eq!(meta.status, TaskState::Failure);
    let error = meta.into_result::<Value>().expect_err("a failure");
    assert_eq!(
        (error.exc_type.as_str(), error.message.as_str()),
        ("NotRegistered", "'no.such.task'")
    );

    handle.shutdown();
    let report = running.await.expect("the worker task").expect("the worker");
    assert_eq!(
        (report.acked, report.rejected, report.poisoned),
        (1, 1, 2),
        "{report:?}"
    );
    // Both unreadable messages are parked, unchanged, in order, with the reason; still
    // unreadable (a Decode error).
    let parked = conn.simple_queue("celery.poison");
    for expected in [
        "",
        "malformed Celery task message: the body is not [args, kwargs, embed]",
    ] {
        let message: Message = parked
            .get(Some(Duration::from_secs(10)))
            .await
            .expect("a parked message");
        let reason = message
            .headers()
            .get("x-kombu-park-reason")
            .and_then(|r| r.as_str().map(str::to_owned))
            .unwrap_or_default();
        assert!(!reason.is_empty() && reason.contains(expected), "{reason:?}");
        let error = TaskMessage::from_message(&message).expect_err("still malformed");
        assert_eq!(error.kind(), ErrorKind::Decode, "{error}");
        message.ack().await.expect("ack");
    }
    assert!(conn
        .simple_queue("celery")
        .get_nowait()
        .await
        .expect("get")
        .is_none());
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_replies_and_the_reply_queue_are_what_celery_makes() {
    let rabbit = RabbitNode::start();
    let _python = celery_worker(&rabbit);
    let conn = Connection::new(&rabbit.url()).expect("connection");
    let (handle, running) = rust_worker_on(&conn, "rust");

    // The reply queue: declared by kombu-celery, then by Celery's own RPCBackend.binding
    // under the same name, which RabbitMQ accepts only if the two are equivalent ...
    let backend = RpcBackend::new(&conn);
    backend.declare().await.expect("the reply queue");
    let got = celery_client(&rabbit, &["declare-reply-queue", backend.reply_to()]).await;
    assert_eq!(
        got,
        json!({"queue": backend.reply_to(), "durable": true, "auto_delete": true, "expires": 86400.0})
    );
    // ... and refuses a queue of that name declared otherwise (plain durable, no x-expires).
    conn.simple_queue("plain.replies")
        .qsize()
        .await
        .expect("declared");
    let (ok, stderr) = celery_client_may_fail(&rabbit, &["declare-reply-queue", "plain.replies"]).await;
    assert!(!ok && stderr.contains("PRECONDITION_FAILED"), "{stderr}");

    // A reply from the Python worker and one from the Rust worker, to a queue of ours.
    let replies = conn.simple_queue("wire.replies");
    replies.qsize().await.expect("declared");
    let to_replies = || TaskOptions::new().reply_to("wire.replies");
    let python_id = send_task(&conn, "tasks.add", (2, 3), (), to_replies())
        .await
        .expect("send");
    let python = replies
        .get(Some(Duration::from_secs(30)))
        .await
        .expect("Python's reply");
    let rust_id = send_task(&conn, "rust.mul", (2, 3), (), to_replies().queue("rust"))
        .await
        .expect("send");
    let rust = replies
        .get(Some(Duration::from_secs(30)))
        .await
        .expect("Rust's reply");
    for (message, id) in [(&python, &python_id), (&rust, &rust_id)] {
        assert_eq!(message.properties().correlation_id.as_deref(), Some(id.as_str()));
        assert_eq!(message.delivery_info().exchange(), "");
        assert_eq!(message.delivery_info().routing_key(), "wire.replies");
        message.ack().await.expect("ack");
    }
    assert_eq!(
        python.properties().delivery_mode,
        Some(kombu::DeliveryMode::Transient)
    );
    assert_eq!(rust.properties().delivery_mode, python.properties().delivery_mode);
    assert_eq!(rust.content_type(), python.content_type());
    assert_eq!(rust.content_encoding(), python.content_encoding());
    let python: Value = python.decode().expect("json");
    let rust: Value = rust.decode().expect("json");
    let keys = |v: &Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<std::collections::BTreeSet<_>>())
            .unwrap_or_default()
    };
    assert_eq!(keys(&rust), keys(&python), "{rust} vs {python}");
    for (body, id, result) in [(&python, &python_id, 5), (&rust, &rust_id, 6)] {
        assert_eq!(body["status"], "SUCCESS", "{body}");
        assert_eq!(body["result"], result, "{body}");
        assert_eq!(body["traceback"], Value::Null, "{body}");
        assert_eq!(body["children"], json!([]), "{body}");
        assert_eq!(body["task_id"], id.as_str(), "{body}");
        assert!(
            body["date_done"].as_str().is_some_and(|d| d.ends_with("+00:00")),
            "{body}"
        );
    }

    handle.shutdown();
    let report = running.await.expect("the worker task").expect("the worker");
    assert_eq!((report.handled, report.acked), (1, 1), "{report:?}");
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_chain_through_a_rust_task_answers_the_python_client_by_rpc() {
    let rabbit = RabbitNode::start();
    let _python = celery_worker(&rabbit);
    let conn = Connection::new(&rabbit.url()).expect("connection");
    let (handle, running) = rust_worker_on(&conn, "rust");
    // rust.mul(2, 3) on the Rust worker, then tasks.add(6, 10) on the Python one, whose
    // result must reach the Python client's reply queue (the reply_to Celery froze into the
    // chain's signatures), not the Rust worker's.
    let got = celery_client(
        &rabbit,
        &["chain", "rust.mul", "rust", "[2, 3]", "tasks.add", "[10]"],
    )
    .await;
    assert_eq!(
        (&got["state"], &got["result"]),
        (&json!("SUCCESS"), &json!(16)),
        "{got}"
    );
    handle.shutdown();
    let report = running.await.expect("the worker task").expect("the worker");
    assert_eq!((report.handled, report.acked), (1, 1), "{report:?}");
    conn.close().await.expect("close");
}
