//! Serving Celery tasks in Rust: a registry of handlers by task name, run by a [`kombu::Worker`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use kombu::{Connection, Message, Outcome, Queue, Result, Worker, WorkerBuilder};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{error, warn};

use crate::result::{ResultBackend, ResultMeta, TaskError};
use crate::task::TaskMessage;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Handler =
    Box<dyn Fn(TaskMessage) -> BoxFuture<std::result::Result<serde_json::Value, TaskError>> + Send + Sync>;

/// Rust handlers of Celery tasks, by task name, and the result backend their results go to.
///
/// Run them with [`worker`](Self::worker) (or [`into_worker`](Self::into_worker)): for each
/// message the [`kombu::Worker`] takes,
///
/// * a message that is not a readable Celery task (not JSON, not `[args, kwargs, embed]`, no
///   `id`) is poison: the worker parks it (by default in `<queue>.poison`) and goes on;
/// * an unknown task name is logged, stored as a `NotRegistered` failure and rejected, as a
///   Celery worker does;
/// * an expired task (`expires` passed) is stored as `REVOKED` and acked, unrun;
/// * a task with an `eta` in the future is held (unacked, taking a concurrency slot) until then;
/// * the handler's `Ok` is stored as `SUCCESS`, its `Err` (or arguments that do not fit its
///   types: a `TypeError`) as `FAILURE` with the message, and the message is acked — unless
///   the sender set `ignore_result`;
/// * a result that cannot be stored is a handler failure: the message comes back later (the
///   worker's `on_failure`), so the task runs again.
///
/// Not yet done as a Celery worker does: callbacks, errbacks, chains and chords in the message
/// are read ([`TaskMessage`]) but not sent on; a handler cannot ask for a retry; the time
/// limits are not enforced.
#[derive(Default)]
pub struct TaskRegistry {
    handlers: HashMap<String, Handler>,
    backend: Option<Arc<dyn ResultBackend>>,
}

impl std::fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.handlers.keys().collect();
        names.sort();
        f.debug_struct("TaskRegistry")
            .field("tasks", &names)
            .field("backend", &self.backend)
            .finish()
    }
}

impl TaskRegistry {
    /// No tasks, no result backend (results are dropped).
    pub fn new() -> Self {
        TaskRegistry::default()
    }

    /// Store results in `backend`.
    pub fn backend(mut self, backend: impl ResultBackend + 'static) -> Self {
        self.backend = Some(Arc::new(backend));
        self
    }

    /// Serve the task `name`: `handler` gets the positional arguments as `A` (a tuple, a
    /// `Vec`, a struct deserialized from the args array, `()` for none) and the keyword
    /// arguments as `K` (a struct, a map, `serde_json::Value`, `()` for none); its `Ok` value
    /// is the task's result.
    pub fn task<A, K, R, E, F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        K: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<TaskError> + Send + 'static,
        F: Fn(A, K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, E>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let boxed: Handler = Box::new(move |task: TaskMessage| {
            let handler = handler.clone();
            Box::pin(async move {
                let args: A = from_empty_or_value(task.args).map_err(|e| {
                    TaskError::builtin(
                        "TypeError",
                        format!("{}: bad positional arguments: {e}", task.name),
                    )
                })?;
                let kwargs: K = from_empty_or_value(task.kwargs).map_err(|e| {
                    TaskError::builtin("TypeError", format!("{}: bad keyword arguments: {e}", task.name))
                })?;
                let value = handler(args, kwargs).await.map_err(Into::into)?;
                serde_json::to_value(value).map_err(|e| {
                    TaskError::builtin("TypeError", format!("the result cannot be encoded: {e}"))
                })
            })
        });
        self.handlers.insert(name.into(), boxed);
        self
    }

    /// Serve the task `name` with a handler of the whole [`TaskMessage`].
    pub fn task_message<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(TaskMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<serde_json::Value, TaskError>> + Send + 'static,
    {
        self.handlers
            .insert(name.into(), Box::new(move |task| Box::pin(handler(task))));
        self
    }

    /// Whether a handler serves `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// A worker of `queues` on `connection` running these tasks, with the worker's defaults
    /// (to configure it, use [`worker`](Self::worker)).
    pub fn into_worker(self, connection: &Connection, queues: impl IntoIterator<Item = Queue>) -> Worker {
        self.worker(Worker::builder(connection, queues))
    }

    /// The worker `builder` configures, running these tasks.
    pub fn worker(self, builder: WorkerBuilder) -> Worker {
        let registry = Arc::new(self);
        builder.build(move |message| {
            let registry = registry.clone();
            async move { registry.handle(&message).await }
        })
    }

    /// One message, as the worker's handler.
    async fn handle(&self, message: &Message) -> Result<Outcome> {
        let task = TaskMessage::from_message(message)?;
        if task.expires.is_some_and(|expires| expires <= SystemTime::now()) {
            warn!(task = %task.name, id = %task.id, "celery task expired: revoked, not run");
            self.store(&task, ResultMeta::revoked(task.id.clone(), "expired"))
                .await?;
            return Ok(Outcome::Ack);
        }
        let Some(handler) = self.handlers.get(&task.name) else {
            error!(task = %task.name, id = %task.id, "received an unregistered celery task: rejected");
            let error = TaskError {
                exc_type: "NotRegistered".to_owned(),
                exc_module: "celery.exceptions".to_owned(),
                message: format!("'{}'", task.name),
            };
            self.store(&task, ResultMeta::failure(task.id.clone(), &error, None))
                .await?;
            return Ok(Outcome::Reject);
        };
        if let Some(wait) = task
            .eta
            .and_then(|eta| eta.duration_since(SystemTime::now()).ok())
        {
            tokio::time::sleep(wait).await;
        }
        let id = task.id.clone();
        let meta = match handler(task.clone()).await {
            Ok(value) => ResultMeta::success(id, value),
            Err(failure) => {
                warn!(task = %task.name, id = %task.id, error = %failure, "celery task failed");
                ResultMeta::failure(id, &failure, Some(failure.to_string()))
            }
        };
        self.store(&task, meta).await?;
        Ok(Outcome::Ack)
    }

    async fn store(&self, task: &TaskMessage, meta: ResultMeta) -> Result<()> {
        match &self.backend {
            Some(backend) if !task.ignore_result => backend.store(&meta).await,
            _ => Ok(()),
        }
    }
}

/// `value` as `T`; an empty args list or kwargs map is also `()` (as [`send_task`](crate::send_task)
/// sends `()` as an empty one).
fn from_empty_or_value<T: DeserializeOwned>(value: serde_json::Value) -> serde_json::Result<T> {
    let empty = match &value {
        serde_json::Value::Array(items) => items.is_empty(),
        serde_json::Value::Object(map) => map.is_empty(),
        _ => false,
    };
    match serde_json::from_value(value) {
        Err(_) if empty => serde_json::from_value(serde_json::Value::Null),
        parsed => parsed,
    }
}
