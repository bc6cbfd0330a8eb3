//! # kombu-celery — Celery interop for kombu-rs
//!
//! Join a Python [Celery](https://docs.celeryq.dev/) fleet from Rust, on any kombu-rs
//! transport:
//!
//! * **Call Python tasks**: [`send_task`] writes Celery's message protocol v2 exactly as
//!   Celery 5.x's `app.send_task` does (JSON serializer), routed to Celery's default `celery`
//!   queue or the one you name, with `countdown`/`eta`, `expires`, priority and callbacks.
//! * **Serve tasks in Rust**: a [`TaskRegistry`] of async handlers by task name, with typed
//!   arguments through serde, run by a [`kombu::Worker`] (poison parking, retries, graceful
//!   stop). Reads protocol v2 and v1 ([`TaskMessage`]); a success sends the task's callbacks
//!   and the next step of its chain on, so a Python `chain` can pass through a Rust task.
//! * **Share results**: a [`ResultBackend`], so Python's `AsyncResult(id).get()` sees a Rust
//!   task's result (or raises its error), and [`ResultBackend::wait`] waits for one a Python
//!   worker stored or sent:
//!   * [`RpcBackend`], Celery's `rpc://` backend (any transport; RabbitMQ is its home): a
//!     Rust worker sends each result to the task message's `reply_to` with its
//!     `correlation_id`, as a Celery worker does; a Rust client waits on this process's
//!     reply queue, the `reply_to` that [`send_task`] sends by default;
//!   * [`RedisBackend`] (feature `redis`): results stored as Celery's Redis backend does
//!     (`celery-task-meta-<id>`, with the pub/sub notification).
//!
//! Tested against Celery 5.7.0 (a real `celery worker` and `AsyncResult.get()`) on Redis
//! (Redis results), on RabbitMQ (`rpc://` results, both ways) and, for sending, on SQLite
//! (`sqla+sqlite://`).
//!
//! Not yet: errbacks, chords and time limits in the Rust worker; other result backends
//! (database, ...); the `kombu celery` CLI.
//!
//! ## Calling a Celery task
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
//! use std::time::Duration;
//! use kombu::Connection;
//! use kombu_celery::{send_task, TaskOptions};
//!
//! let conn = Connection::new("memory:///celery-doc-send")?; // redis://, amqp://, ...
//! let id = send_task(
//!     &conn,
//!     "tasks.add",
//!     (2, 3),
//!     serde_json::json!({"round": true}),
//!     TaskOptions::new().countdown(Duration::from_secs(10)).expires(Duration::from_secs(60)),
//! )
//! .await?;
//! println!("sent {id}");
//! # Ok(()) }
//! ```
//!
//! ## Serving Celery tasks in Rust
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
//! use std::time::Duration;
//! use kombu::Connection;
//! use kombu_celery::{celery_queue, send_task, TaskError, TaskOptions, TaskRegistry};
//!
//! let conn = Connection::new("memory:///celery-doc-serve")?;
//! let worker = TaskRegistry::new()
//!     // .backend(RpcBackend::new(&conn)) to send results back (rpc://), or
//!     // .backend(RedisBackend::connect("redis://localhost/1").await?) to store them
//!     .task("rust.mul", |(x, y): (i64, i64), _: serde_json::Value| async move {
//!         x.checked_mul(y).ok_or(TaskError::builtin("OverflowError", "too big"))
//!     })
//!     .into_worker(&conn, [celery_queue("celery")]);
//! let handle = worker.handle();
//! let running = tokio::spawn(worker.run());
//!
//! send_task(&conn, "rust.mul", (6, 7), (), TaskOptions::new()).await?;
//! while handle.report().acked < 1 {
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//! }
//! handle.shutdown();
//! running.await.expect("the worker task")?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod registry;
mod result;
mod rpc_backend;
mod send;
mod task;
mod time;

#[cfg(feature = "redis")]
mod redis_backend;

#[cfg(feature = "redis")]
pub use redis_backend::{RedisBackend, TASK_KEY_PREFIX};
pub use registry::TaskRegistry;
pub use result::{ResultBackend, ResultMeta, TaskError, TaskState};
pub use rpc_backend::RpcBackend;
pub use send::{celery_queue, send_task, TaskOptions, TaskPublisher, DEFAULT_QUEUE};
pub use task::{Protocol, TaskId, TaskMessage};
