//! The TaskRegistry's decisions on the memory transport, with a result backend in memory:
//! what is run, stored, rejected, parked, held and skipped.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs, reason = "tests")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kombu::{Connection, ErrorKind, PublishOptions, WorkerReport};
use kombu_celery::{
    celery_queue, send_task, ResultBackend, ResultMeta, RpcBackend, TaskError, TaskId, TaskMessage,
    TaskOptions, TaskRegistry, TaskState,
};
use serde_json::{json, Value};

#[derive(Debug, Clone, Default)]
struct MemoryBackend(Arc<Mutex<HashMap<TaskId, ResultMeta>>>);

#[async_trait]
impl ResultBackend for MemoryBackend {
    async fn store(&self, meta: &ResultMeta) -> kombu::Result<()> {
        self.0.lock().unwrap().insert(meta.task_id.clone(), meta.clone());
        Ok(())
    }

    async fn get(&self, id: &TaskId) -> kombu::Result<Option<ResultMeta>> {
        Ok(self.0.lock().unwrap().get(id).cloned())
    }
}

#[derive(serde::Deserialize)]
struct Scale {
    factor: i64,
}

/// Run a registry worker on `conn` until `settled` messages are settled; its report.
async fn serve(conn: &Connection, backend: &MemoryBackend, settled: u64) -> WorkerReport {
    let worker = TaskRegistry::new()
        .backend(backend.clone())
        .task("mul", |(x, y): (i64, i64), _: ()| async move {
            Ok::<_, TaskError>(x * y)
        })
        .task("scale", |(x,): (i64,), kw: Scale| async move {
            Ok::<_, TaskError>(x * kw.factor)
        })
        .task("fail", |(): (), (): ()| async move { Err::<(), _>("it failed") })
        .task_message("whole", |task: TaskMessage| async move {
            Ok(json!({"name": task.name, "retries": task.retries, "callbacks": task.callbacks.len()}))
        })
        .into_worker(conn, [celery_queue("celery")]);
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    let deadline = Instant::now() + Duration::from_secs(10);
    while {
        let r = handle.report();
        r.acked + r.rejected + r.poisoned < settled
    } {
        assert!(Instant::now() < deadline, "only {:?}", handle.report());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown();
    running.await.expect("the worker task").expect("the worker")
}

#[tokio::test]
async fn tasks_run_with_typed_arguments_and_their_results_are_stored() {
    let conn = Connection::new("memory:///celery-typed").expect("connection");
    let backend = MemoryBackend::default();
    let mul = send_task(&conn, "mul", (6, 7), (), TaskOptions::new())
        .await
        .expect("send");
    let scale = send_task(&conn, "scale", (5,), json!({"factor": 3}), TaskOptions::new())
        .await
        .expect("send");
    let fail = send_task(&conn, "fail", (), (), TaskOptions::new())
        .await
        .expect("send");
    let bad_args = send_task(&conn, "mul", ("six", 7), (), TaskOptions::new())
        .await
        .expect("send");
    let whole = send_task(
        &conn,
        "whole",
        (),
        (),
        TaskOptions::new().link(json!({"task": "next", "args": [], "kwargs": {}})),
    )
    .await
    .expect("send");
    let ignored = send_task(&conn, "mul", (1, 1), (), TaskOptions::new().ignore_result(true))
        .await
        .expect("send");
    // ... and `whole`'s callback `next`, which nobody serves: rejected.
    let report = serve(&conn, &backend, 7).await;
    assert_eq!(
        (report.acked, report.rejected, report.poisoned),
        (6, 1, 0),
        "{report:?}"
    );

    let result = |id: &TaskId| backend.0.lock().unwrap().get(id).cloned();
    assert_eq!(result(&mul).unwrap().into_result::<i64>(), Ok(42));
    assert_eq!(result(&scale).unwrap().into_result::<i64>(), Ok(15));
    let failed = result(&fail).unwrap();
    assert_eq!(failed.status, TaskState::Failure);
    assert_eq!(failed.into_result::<()>(), Err(TaskError::new("it failed")));
    let error = result(&bad_args).unwrap().into_result::<i64>().unwrap_err();
    assert_eq!(error.exc_type, "TypeError", "{error}");
    assert_eq!(
        result(&whole).unwrap().into_result::<Value>(),
        Ok(json!({"name": "whole", "retries": 0, "callbacks": 1}))
    );
    assert!(result(&ignored).is_none(), "ignore_result: nothing stored");
}

#[tokio::test]
async fn unknown_tasks_are_rejected_and_unreadable_ones_parked() {
    let conn = Connection::new("memory:///celery-refused").expect("connection");
    let backend = MemoryBackend::default();
    let unknown = send_task(&conn, "nobody.serves.this", (), (), TaskOptions::new())
        .await
        .expect("send");
    let to_celery = || {
        PublishOptions::new()
            .routing_key("celery")
            .declare(celery_queue("celery"))
    };
    let producer = conn.producer();
    producer
        .publish_text("plain text", to_celery())
        .await
        .expect("publish");
    producer
        .publish(
            &json!([[1, 2], "not kwargs", {}]),
            to_celery().header("task", "mul").header("id", "t-1"),
        )
        .await
        .expect("publish");
    producer
        .publish(&json!({"no": "task"}), to_celery())
        .await
        .expect("publish");
    let good = send_task(&conn, "mul", (2, 2), (), TaskOptions::new())
        .await
        .expect("send");
    let report = serve(&conn, &backend, 5).await;
    assert_eq!(
        (report.acked, report.rejected, report.poisoned),
        (1, 1, 3),
        "{report:?}"
    );
    let meta = backend.get(&unknown).await.unwrap().expect("stored");
    assert_eq!(meta.status, TaskState::Failure);
    assert_eq!(meta.into_result::<()>().unwrap_err().exc_type, "NotRegistered");
    assert_eq!(
        backend.get(&good).await.unwrap().unwrap().into_result::<i64>(),
        Ok(4)
    );
    let parked = conn.simple_queue("celery.poison");
    for _ in 0..3 {
        parked
            .get_nowait()
            .await
            .expect("get")
            .expect("parked")
            .ack()
            .await
            .expect("ack");
    }
}

#[tokio::test]
async fn expired_tasks_are_revoked_and_eta_is_waited_for() {
    let conn = Connection::new("memory:///celery-time").expect("connection");
    let backend = MemoryBackend::default();
    // Expired in its header only: a message TTL (which `expires` also sets) would have the
    // transport drop it before the worker saw it.
    conn.producer()
        .publish(
            &json!([[1, 2], {}, {}]),
            PublishOptions::new()
                .routing_key("celery")
                .declare(celery_queue("celery"))
                .header("task", "mul")
                .header("id", "expired-1")
                .header("expires", "2000-01-01T00:00:00+00:00"),
        )
        .await
        .expect("publish");
    let expired = TaskId::from("expired-1");
    let sent = Instant::now();
    let later = send_task(
        &conn,
        "mul",
        (2, 3),
        (),
        TaskOptions::new().countdown(Duration::from_millis(500)),
    )
    .await
    .expect("send");
    let report = serve(&conn, &backend, 2).await;
    assert_eq!(report.acked, 2, "{report:?}");
    assert!(
        sent.elapsed() >= Duration::from_millis(500),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(
        backend.get(&expired).await.unwrap().unwrap().status,
        TaskState::Revoked
    );
    assert_eq!(
        backend.get(&later).await.unwrap().unwrap().into_result::<i64>(),
        Ok(6)
    );
}

#[tokio::test]
async fn protocol_one_tasks_are_read() {
    let conn = Connection::new("memory:///celery-v1").expect("connection");
    conn.producer()
        .publish(
            &json!({"task": "mul", "id": "v1-id", "args": [4, 5], "kwargs": {}, "retries": 2,
                    "eta": null, "expires": null, "utc": true, "callbacks": null, "errbacks": null,
                    "timelimit": [null, null], "taskset": null, "chord": null}),
            PublishOptions::new()
                .routing_key("celery")
                .declare(celery_queue("celery")),
        )
        .await
        .expect("publish");
    let message = conn
        .simple_queue("celery")
        .get_nowait()
        .await
        .expect("get")
        .expect("sent");
    let task = TaskMessage::from_message(&message).expect("a v1 task");
    assert_eq!(task.protocol, kombu_celery::Protocol::V1);
    assert_eq!(
        (task.name.as_str(), task.id.as_str(), task.retries),
        ("mul", "v1-id", 2)
    );
    assert_eq!(task.args, json!([4, 5]));
}

#[tokio::test]
async fn callbacks_and_chains_are_sent_on_with_the_result() {
    let conn = Connection::new("memory:///celery-canvas").expect("connection");
    let backend = MemoryBackend::default();
    let first = send_task(
        &conn,
        "mul",
        (2, 3),
        (),
        TaskOptions::new()
            .link(json!({"task": "scale", "args": [], "kwargs": {"factor": 10},
                         "options": {"task_id": "link-1"}, "subtask_type": null, "immutable": false}))
            .link(json!({"task": "mul", "args": [1, 1], "kwargs": {},
                         "options": {"task_id": "frozen-1"}, "subtask_type": null, "immutable": true}))
            .chain(vec![
                json!({"task": "mul", "args": [100], "kwargs": {}, "options": {"task_id": "chain-3"}}),
                json!({"task": "mul", "args": [7], "kwargs": {}, "options": {"task_id": "chain-2"}}),
            ]),
    )
    .await
    .expect("send");
    // mul(2, 3); scale(6, factor=10); mul(1, 1); mul(6, 7); mul(42, 100)
    let report = serve(&conn, &backend, 5).await;
    assert_eq!(report.acked, 5, "{report:?}");
    let value = |id: &str| {
        backend
            .0
            .lock()
            .unwrap()
            .get(&TaskId::from(id))
            .cloned()
            .unwrap()
            .into_result::<i64>()
    };
    assert_eq!(value(first.as_str()), Ok(6));
    assert_eq!(value("link-1"), Ok(60));
    assert_eq!(value("frozen-1"), Ok(1));
    assert_eq!(value("chain-2"), Ok(42));
    assert_eq!(value("chain-3"), Ok(4200));
}

#[tokio::test]
async fn a_task_asking_for_a_retry_runs_again_until_max_retries() {
    let conn = Connection::new("memory:///celery-retry").expect("connection");
    let backend = MemoryBackend::default();
    let runs = Arc::new(Mutex::new(Vec::<u32>::new()));
    let seen = runs.clone();
    let worker = TaskRegistry::new()
        .backend(backend.clone())
        .max_retries(2)
        .task_message("flaky", move |task: TaskMessage| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(task.retries);
                // succeeds on the second retry, unless told to never succeed
                if task.retries < 2 || task.args[0] == json!("never") {
                    return Err(TaskError::retry(Duration::from_millis(50), "not yet"));
                }
                Ok(json!(task.retries))
            }
        })
        .into_worker(&conn, [celery_queue("celery")]);
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    let ok = send_task(&conn, "flaky", ("soon",), (), TaskOptions::new())
        .await
        .expect("send");
    let ok_meta = backend.wait(&ok, Duration::from_secs(10)).await.expect("result");
    assert_eq!(ok_meta.into_result::<u32>(), Ok(2));
    let never = send_task(&conn, "flaky", ("never",), (), TaskOptions::new())
        .await
        .expect("send");
    let meta = backend
        .wait(&never, Duration::from_secs(10))
        .await
        .expect("result");
    handle.shutdown();
    let report = running.await.expect("the worker task").expect("the worker");
    assert_eq!(report.acked, 6, "{report:?}");
    assert_eq!(*runs.lock().unwrap(), vec![0, 1, 2, 0, 1, 2]);
    let error = meta.into_result::<u32>().unwrap_err();
    assert_eq!(
        (error.exc_module.as_str(), error.exc_type.as_str()),
        ("celery.exceptions", "MaxRetriesExceededError")
    );
    assert!(error.message.contains("not yet"), "{error}");
}

#[tokio::test]
async fn rpc_results_go_back_to_reply_to_and_are_waited_for() {
    let conn = Connection::new("memory:///celery-rpc").expect("connection");
    let client = RpcBackend::new(&conn);
    client.declare().await.expect("the reply queue");
    // Without the task's message there is no reply_to to send to.
    let error = client
        .store(&ResultMeta::success("t".into(), json!(1)))
        .await
        .expect_err("unsupported");
    assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");

    let worker = TaskRegistry::new()
        .backend(RpcBackend::new(&conn))
        .task("mul", |(x, y): (i64, i64), _: ()| async move {
            Ok::<_, TaskError>(x * y)
        })
        .task("fail", |(): (), (): ()| async move { Err::<(), _>("it failed") })
        .task_message("flaky", |task: TaskMessage| async move {
            if task.retries == 0 {
                return Err(TaskError::retry(Duration::from_millis(20), "once more"));
            }
            Ok(json!(task.retries))
        })
        .into_worker(&conn, [celery_queue("celery")]);
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    let wait = Duration::from_secs(10);

    let mul = send_task(&conn, "mul", (6, 7), (), TaskOptions::new())
        .await
        .expect("send");
    assert_eq!(
        client.reply_to().len(),
        36,
        "this process's oid, send_task's reply_to"
    );
    let meta = client.wait(&mul, wait).await.expect("result");
    assert_eq!(meta.into_result::<i64>(), Ok(42));
    // handed out once
    assert_eq!(client.get(&mul).await.expect("get"), None);

    let fail = send_task(&conn, "fail", (), (), TaskOptions::new())
        .await
        .expect("send");
    let meta = client.wait(&fail, wait).await.expect("result");
    assert_eq!(meta.into_result::<()>(), Err(TaskError::new("it failed")));

    // A retry sends RETRY, then the final state; wait passes over the RETRY.
    let flaky = send_task(&conn, "flaky", (), (), TaskOptions::new())
        .await
        .expect("send");
    let meta = client.wait(&flaky, wait).await.expect("result");
    assert_eq!(meta.into_result::<u32>(), Ok(1));

    // Both replies of a retried task as they are sent, to a queue of ours: the same
    // correlation id, the task's parent and group in the meta, date_done only when done.
    let raw = conn.simple_queue("raw.replies");
    raw.qsize().await.expect("declared");
    let mut options = TaskOptions::new().reply_to("raw.replies");
    options.parent_id = Some("the-parent".into());
    options.group_id = Some("the-group".into());
    let id = send_task(&conn, "flaky", (), (), options).await.expect("send");
    let mut states = Vec::new();
    for _ in 0..2 {
        let reply = raw.get(Some(wait)).await.expect("a reply");
        assert_eq!(reply.properties().correlation_id.as_deref(), Some(id.as_str()));
        let body: Value = reply.decode().expect("json");
        assert_eq!(
            (&body["task_id"], &body["parent_id"], &body["group_id"]),
            (&json!(id.as_str()), &json!("the-parent"), &json!("the-group")),
            "{body}"
        );
        states.push((body["status"].clone(), body["date_done"].is_string()));
        reply.ack().await.expect("ack");
    }
    assert_eq!(states, vec![(json!("RETRY"), false), (json!("SUCCESS"), true)]);

    // No reply_to (an empty one): the result has nowhere to go and is dropped. The control,
    // sent after it, is answered; once both are acked, nothing came for the first.
    let nowhere = send_task(&conn, "mul", (1, 1), (), TaskOptions::new().reply_to(""))
        .await
        .expect("send");
    let control = send_task(&conn, "mul", (2, 2), (), TaskOptions::new())
        .await
        .expect("send");
    assert_eq!(
        client
            .wait(&control, wait)
            .await
            .expect("result")
            .into_result::<i64>(),
        Ok(4)
    );
    let deadline = Instant::now() + wait;
    while handle.report().acked < 8 {
        assert!(Instant::now() < deadline, "{:?}", handle.report());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(client.get(&nowhere).await.expect("get"), None);
    assert!(raw.get_nowait().await.expect("get").is_none(), "no stray reply");

    handle.shutdown();
    let report = running.await.expect("the worker task").expect("the worker");
    // mul, fail, flaky twice, flaky twice, nowhere, control
    assert_eq!(
        (report.acked, report.failed, report.poisoned),
        (8, 0, 0),
        "{report:?}"
    );
}
