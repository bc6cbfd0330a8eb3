//! kombu-celery against a real Celery 5.7 on Redis: a throwaway redis-server per test, a
//! Python Celery worker (`tests/python/celery_app.py`) as a subprocess, and Celery's
//! `send_task` / `AsyncResult.get()` as the Python client.
//!
//! Needs `redis-server` and the project venv with Celery (`tests/python/requirements.txt`;
//! `KOMBU_PYTHON` names another Python).
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs, reason = "tests")]

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{test_tasks, CeleryEnv, CeleryWorker};

use kombu::{Connection, Message, PublishOptions, Worker, WorkerHandle};
use kombu_celery::{
    celery_queue, send_task, RedisBackend, ResultBackend, TaskError, TaskId, TaskOptions, TaskRegistry,
    TaskState,
};
use serde_json::{json, Value};

/// A throwaway redis-server on a free loopback port (the shape of kombu-redis's test one).
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the Redis tests (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, port }
    }

    /// The broker (db 0).
    fn broker(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The result backend (db 1).
    fn backend(&self) -> String {
        format!("redis://127.0.0.1:{}/1", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Celery with `broker` and the result backend of `redis`.
fn celery_env(broker: &str, redis: &RedisServer) -> CeleryEnv {
    CeleryEnv::new(broker, Some(redis.backend()))
}

/// A Python Celery worker of `broker` (the broker of `redis` unless given), storing results
/// in `redis`.
fn celery_worker(broker: Option<&str>, redis: &RedisServer) -> CeleryWorker {
    let broker = broker.map_or_else(|| redis.broker(), str::to_owned);
    let name = format!("kombu-celery-test-{}", redis.port);
    CeleryWorker::start(&celery_env(&broker, redis), "celery_app", &name)
}

/// Run `celery_app.py ARGS` (the Python Celery client); its one JSON line.
async fn celery_client(redis: &RedisServer, args: &[&str]) -> Value {
    celery_client_with(redis, "json", args).await
}

/// [`celery_client`] sending tasks with `serializer`.
async fn celery_client_with(redis: &RedisServer, serializer: &str, args: &[&str]) -> Value {
    let mut env = celery_env(&redis.broker(), redis);
    env.serializer = Some(serializer.to_owned());
    let mut script = vec!["celery_app.py"];
    script.extend_from_slice(args);
    env.json(&script).await
}

/// Take one message of `queue`, acked.
async fn take(conn: &Connection, queue: &str) -> Message {
    let message = conn
        .simple_queue(queue)
        .get(Some(Duration::from_secs(10)))
        .await
        .unwrap_or_else(|e| panic!("a message in {queue}: {e}"));
    message.ack().await.expect("ack");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_sent_from_rust_run_on_a_python_celery_worker() {
    let redis = RedisServer::start();
    let _worker = celery_worker(None, &redis);
    let conn = Connection::new(&redis.broker()).expect("connection");
    let backend = RedisBackend::connect(&redis.backend()).await.expect("backend");
    let wait = Duration::from_secs(30);

    // args
    let id = send_task(&conn, "tasks.add", (2, 3), (), TaskOptions::new())
        .await
        .expect("send");
    let meta = backend.wait(&id, wait).await.expect("result");
    assert_eq!(meta.status, TaskState::Success);
    assert_eq!(meta.task_id, id);
    assert_eq!(meta.into_result::<i64>(), Ok(5));

    // kwargs, through a producer
    let producer = conn.producer();
    let id = send_task(
        &producer,
        "tasks.add",
        (),
        json!({"x": 40, "y": 2}),
        TaskOptions::new(),
    )
    .await
    .expect("send");
    assert_eq!(
        backend
            .wait(&id, wait)
            .await
            .expect("result")
            .into_result::<i64>(),
        Ok(42)
    );

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
    assert_eq!(
        backend
            .wait(&id, wait)
            .await
            .expect("result")
            .into_result::<i64>(),
        Ok(2)
    );
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "a countdown of 1 s ran after {:?}",
        sent.elapsed()
    );

    // an expired task is revoked, not run
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

    // a priority (Kombu's Redis transport: a queue key per priority step)
    let id = send_task(&conn, "tasks.add", (4, 4), (), TaskOptions::new().priority(5))
        .await
        .expect("send");
    assert_eq!(
        backend
            .wait(&id, wait)
            .await
            .expect("result")
            .into_result::<i64>(),
        Ok(8)
    );

    // a callback in the embed, as Celery's `link`: the Python worker runs it with the result
    let callback = TaskId::new();
    let id = send_task(
        &conn,
        "tasks.add",
        (2, 3),
        (),
        TaskOptions::new().link(json!({
            "task": "tasks.add", "args": [10], "kwargs": {}, "options": {"task_id": callback},
            "subtask_type": null, "immutable": false,
        })),
    )
    .await
    .expect("send");
    assert_eq!(
        backend
            .wait(&id, wait)
            .await
            .expect("result")
            .into_result::<i64>(),
        Ok(5)
    );
    assert_eq!(
        backend
            .wait(&callback, wait)
            .await
            .expect("callback")
            .into_result::<i64>(),
        Ok(15)
    );

    // msgpack
    #[cfg(feature = "msgpack")]
    {
        let id = send_task(
            &conn,
            "tasks.add",
            (20, 3),
            (),
            TaskOptions::new().serializer("msgpack"),
        )
        .await
        .expect("send");
        assert_eq!(
            backend
                .wait(&id, wait)
                .await
                .expect("result")
                .into_result::<i64>(),
            Ok(23)
        );
    }

    // a failing task: its exception, as Celery stores it
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
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_task_writes_what_celery_send_task_writes() {
    let redis = RedisServer::start();
    let conn = Connection::new(&redis.broker()).expect("connection");
    let sent = celery_client(&redis, &["send", "tasks.add", "[2, 3]", "wire.py"]).await;
    let id = send_task(
        &conn,
        "tasks.add",
        (2, 3),
        (),
        TaskOptions::new().queue("wire.rs"),
    )
    .await
    .expect("send");
    let python = take(&conn, "wire.py").await;
    let rust = take(&conn, "wire.rs").await;

    let keys = |m: &Message| m.headers().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&rust), keys(&python), "the same headers");
    for same in [
        "lang",
        "task",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
    ] {
        assert_eq!(
            rust.headers().get(same),
            python.headers().get(same),
            "header {same}"
        );
    }
    for (message, id) in [(&rust, id.as_str()), (&python, sent["id"].as_str().expect("id"))] {
        let headers = message.headers();
        assert_eq!(headers.get("id").and_then(|v| v.as_str()), Some(id));
        assert_eq!(headers.get("root_id").and_then(|v| v.as_str()), Some(id));
        assert!(headers
            .get("origin")
            .and_then(|v| v.as_str())
            .is_some_and(|o| o.starts_with("gen") && o.contains('@')));
        assert_eq!(message.properties().correlation_id.as_deref(), Some(id));
        assert!(message
            .properties()
            .reply_to
            .as_deref()
            .is_some_and(|r| r.len() == 36));
        assert_eq!(message.delivery_info().exchange(), "");
    }
    assert_eq!(rust.properties().delivery_mode, python.properties().delivery_mode);
    assert_eq!(rust.properties().priority, python.properties().priority);
    assert_eq!(rust.content_type(), python.content_type());
    assert_eq!(rust.content_encoding(), python.content_encoding());
    assert_eq!(rust.delivery_info().routing_key(), "wire.rs");
    assert_eq!(python.delivery_info().routing_key(), "wire.py");
    assert_eq!(
        rust.decode::<Value>().expect("json"),
        python.decode::<Value>().expect("json")
    );
    conn.close().await.expect("close");
}

/// A Rust worker serving `rust.mul` and `rust.fail`, storing results in the Redis backend.
async fn rust_worker(
    redis: &RedisServer,
    conn: &Connection,
) -> (
    WorkerHandle,
    tokio::task::JoinHandle<kombu::Result<kombu::WorkerReport>>,
) {
    rust_worker_on(redis, conn, "celery").await
}

/// [`rust_worker`] consuming `queue`.
async fn rust_worker_on(
    redis: &RedisServer,
    conn: &Connection,
    queue: &str,
) -> (
    WorkerHandle,
    tokio::task::JoinHandle<kombu::Result<kombu::WorkerReport>>,
) {
    let backend = RedisBackend::connect(&redis.backend()).await.expect("backend");
    let worker: Worker = test_tasks(TaskRegistry::new().backend(backend)).worker_with(
        conn,
        [celery_queue(queue)],
        |builder| builder.accept(kombu::Accept::new(["json", "application/x-msgpack"]).expect("serializers")),
    );
    let handle = worker.handle();
    (handle, tokio::spawn(worker.run()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_celery_calls_tasks_served_in_rust() {
    let redis = RedisServer::start();
    let conn = Connection::new(&redis.broker()).expect("connection");
    let (handle, running) = rust_worker(&redis, &conn).await;

    let got = celery_client(&redis, &["call", "rust.mul", "[6, 7]"]).await;
    assert_eq!(got["state"], "SUCCESS", "{got}");
    assert_eq!(got["result"], 42);

    let got = celery_client(&redis, &["call", "rust.fail", "[]"]).await;
    assert_eq!(got["state"], "FAILURE", "{got}");
    assert_eq!(got["exc_type"], "ValueError", "{got}");
    assert_eq!(got["error"], "rust.fail failed on purpose");

    #[cfg(feature = "msgpack")]
    {
        let got = celery_client_with(&redis, "msgpack", &["call", "rust.mul", "[3, 3]"]).await;
        assert_eq!(
            (&got["state"], &got["result"]),
            (&json!("SUCCESS"), &json!(9)),
            "{got}"
        );
    }

    // a retry: Python waits through the RETRY state for the second run's result
    let got = celery_client(&redis, &["call", "rust.flaky", "[]"]).await;
    assert_eq!(
        (&got["state"], &got["result"]),
        (&json!("SUCCESS"), &json!({"retries": 1})),
        "{got}"
    );

    // arguments that do not fit the handler's types: a TypeError, as in Python
    let got = celery_client(&redis, &["call", "rust.mul", "[\"six\", 7]"]).await;
    assert_eq!(got["state"], "FAILURE", "{got}");
    assert_eq!(got["exc_type"], "TypeError", "{got}");

    handle.shutdown();
    let report = running.await.expect("the worker task").expect("the worker");
    let expected = if cfg!(feature = "msgpack") { 6 } else { 5 };
    assert_eq!(
        (report.handled, report.acked, report.failed),
        (expected, expected, 0),
        "{report:?}"
    );
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_tasks_do_not_stop_the_rust_worker() {
    let redis = RedisServer::start();
    let conn = Connection::new(&redis.broker()).expect("connection");
    let backend = RedisBackend::connect(&redis.backend()).await.expect("backend");
    // Queued before the worker starts, so they come first.
    let unknown = send_task(&conn, "no.such.task", (1,), (), TaskOptions::new())
        .await
        .expect("send");
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
    let (handle, running) = rust_worker(&redis, &conn).await;

    // The positive control: a good task after them.
    let good = send_task(&conn, "rust.mul", (3, 5), (), TaskOptions::new())
        .await
        .expect("send");
    let meta = backend
        .wait(&good, Duration::from_secs(30))
        .await
        .expect("result");
    assert_eq!(meta.into_result::<i64>(), Ok(15));

    // Celery's answer to an unknown task: rejected, a NotRegistered failure.
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
    // Both unreadable messages are parked, unchanged, with the reason.
    for _ in 0..2 {
        let parked = take(&conn, "celery.poison").await;
        assert!(parked.headers().contains_key("x-kombu-park-reason"), "{parked:?}");
    }
    assert!(conn
        .simple_queue("celery")
        .get_nowait()
        .await
        .expect("get")
        .is_none());
    let _: TaskId = unknown;
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_sent_from_rust_over_sqlite_run_on_a_python_celery_worker() {
    let redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!(
        "kombu-celery-sqlite-{}-{}",
        std::process::id(),
        redis.port
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Kombu's spelling (four slashes: an absolute path), for Celery and kombu-rs alike.
    let broker = format!("sqla+sqlite:///{}", dir.join("broker.db").display());
    let conn = Connection::new(&broker).expect("connection");
    let backend = RedisBackend::connect(&redis.backend()).await.expect("backend");
    // Sent before the worker starts: the queue is created by kombu-rs.
    let first = send_task(&conn, "tasks.add", (2, 3), (), TaskOptions::new())
        .await
        .expect("send");
    let worker = celery_worker(Some(&broker), &redis);
    let second = send_task(
        &conn,
        "tasks.add",
        (),
        json!({"x": 1, "y": 2}),
        TaskOptions::new(),
    )
    .await
    .expect("send");
    let wait = Duration::from_secs(30);
    assert_eq!(
        backend
            .wait(&first, wait)
            .await
            .expect("result")
            .into_result::<i64>(),
        Ok(5)
    );
    assert_eq!(
        backend
            .wait(&second, wait)
            .await
            .expect("result")
            .into_result::<i64>(),
        Ok(3)
    );
    drop(worker);
    conn.close().await.expect("close");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_chain_goes_through_a_rust_task_and_on_to_a_python_one() {
    let redis = RedisServer::start();
    let _python = celery_worker(None, &redis);
    let conn = Connection::new(&redis.broker()).expect("connection");
    let (handle, running) = rust_worker_on(&redis, &conn, "rust").await;
    // rust.mul(2, 3) on the Rust worker, then tasks.add(6, 10) on the Python one.
    let got = celery_client(
        &redis,
        &["chain", "rust.mul", "rust", "[2, 3]", "tasks.add", "[10]"],
    )
    .await;
    assert_eq!(got["state"], "SUCCESS", "{got}");
    assert_eq!(got["result"], 16, "{got}");
    handle.shutdown();
    let report = running.await.expect("the worker task").expect("the worker");
    assert_eq!((report.handled, report.acked), (1, 1), "{report:?}");
    conn.close().await.expect("close");
}
