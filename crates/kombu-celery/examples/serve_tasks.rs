//! Serve Celery tasks in Rust: Python calls them as it calls any Celery task.
//!
//! Run `cargo run -p kombu-celery --features redis --example serve_tasks`, then from Python:
//!
//! ```python
//! from celery import Celery
//! app = Celery(broker="redis://localhost:6379/0", backend="redis://localhost:6379/1")
//! print(app.send_task("rust.mul", args=(6, 7)).get(timeout=10))   # 42
//! app.send_task("rust.div", args=(1, 0)).get(timeout=10)          # raises ZeroDivisionError
//! ```
//!
//! Ctrl-C (or SIGTERM) stops it gracefully; a second one at once. `KOMBU_URL` and
//! `CELERY_RESULT_BACKEND` override the broker and the Redis result backend.

use kombu::Connection;
use kombu_celery::{celery_queue, RedisBackend, TaskError, TaskRegistry};

#[tokio::main]
async fn main() -> kombu::Result<()> {
    let broker = std::env::var("KOMBU_URL").unwrap_or_else(|_| "redis://localhost:6379/0".into());
    let results =
        std::env::var("CELERY_RESULT_BACKEND").unwrap_or_else(|_| "redis://localhost:6379/1".into());
    let conn = Connection::new(&broker)?;
    let worker = TaskRegistry::new()
        .backend(RedisBackend::connect(&results).await?)
        // Arguments arrive typed through serde: `(x, y)` from `args`, kwargs ignored here.
        .task(
            "rust.mul",
            |(x, y): (i64, i64), _: serde_json::Value| async move { Ok::<_, TaskError>(x * y) },
        )
        // An error is a FAILURE that Python's `.get()` raises as this exception type.
        .task(
            "rust.div",
            |(x, y): (i64, i64), _: serde_json::Value| async move {
                x.checked_div(y)
                    .ok_or_else(|| TaskError::builtin("ZeroDivisionError", "division by zero"))
            },
        )
        .into_worker(&conn, [celery_queue("celery")]);
    worker.handle().shutdown_on_signals()?;
    println!("serving rust.mul and rust.div on queue celery of {broker}; Ctrl-C stops");
    let report = worker.run().await?;
    println!("stopped: {report:?}");
    conn.close().await
}
