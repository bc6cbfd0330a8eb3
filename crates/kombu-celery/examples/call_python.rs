//! Call a Python Celery task from Rust and wait for its result.
//!
//! Start a Celery worker with the project's test app (any Celery app with a `tasks.add`
//! task does):
//!
//! ```sh
//! cd tests/python
//! CELERY_BROKER_URL=redis://localhost:6379/0 CELERY_RESULT_BACKEND=redis://localhost:6379/1 \
//!     ../../.venv/bin/python -m celery -A celery_app worker --pool solo -Q celery
//! ```
//!
//! then run `cargo run -p kombu-celery --features redis --example call_python`. `KOMBU_URL` and
//! `CELERY_RESULT_BACKEND` override the broker and the Redis result backend.

use std::time::Duration;

use kombu::Connection;
use kombu_celery::{send_task, RedisBackend, ResultBackend, TaskOptions};

#[tokio::main]
async fn main() -> kombu::Result<()> {
    let broker = std::env::var("KOMBU_URL").unwrap_or_else(|_| "redis://localhost:6379/0".into());
    let results =
        std::env::var("CELERY_RESULT_BACKEND").unwrap_or_else(|_| "redis://localhost:6379/1".into());
    let conn = Connection::new(&broker)?;
    let backend = RedisBackend::connect(&results).await?;

    // `app.send_task("tasks.add", args=(2, 3), countdown=1)`, as Celery 5.7 writes it.
    let id = send_task(
        &conn,
        "tasks.add",
        (2, 3),
        (),
        TaskOptions::new().countdown(Duration::from_secs(1)),
    )
    .await?;
    println!("sent tasks.add(2, 3) as {id}");

    // `AsyncResult(id).get(timeout=30)`: a failure comes back as the Python exception.
    match backend
        .wait(&id, Duration::from_secs(30))
        .await?
        .into_result::<i64>()
    {
        Ok(sum) => println!("tasks.add(2, 3) = {sum}"),
        Err(error) => println!("tasks.add failed: {error}"),
    }
    conn.close().await
}
