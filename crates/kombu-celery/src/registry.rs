//! Serving Celery tasks in Rust: a registry of handlers by task name, run by a [`kombu::Worker`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kombu::{Connection, Message, Outcome, Queue, Result, Worker, WorkerBuilder};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{error, warn};

use crate::result::{ResultBackend, ResultMeta, TaskError};
use crate::send::{send_task, TaskOptions};
use crate::task::{TaskId, TaskMessage};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Handler =
    Box<dyn Fn(TaskMessage) -> BoxFuture<std::result::Result<serde_json::Value, TaskError>> + Send + Sync>;

/// Rust handlers of Celery tasks, by task name, and the result backend their results go to.
///
/// Run them with [`worker_with`](Self::worker_with) (or [`into_worker`](Self::into_worker)): for each
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
/// After a success, the task's callbacks (`link`) and the next step of its chain are sent on,
/// with the result as their first argument, as a Celery worker does (plain task signatures:
/// a group or chord callback is logged and skipped). Not yet done as a Celery worker does:
/// errbacks are not called; chords are not joined; time limits are not enforced.
///
/// A handler asks for a retry with [`TaskError::retry`]: the task is sent again (same id,
/// `retries` + 1, an `eta`) to where it came from and `RETRY` is stored, up to
/// [`max_retries`](Self::max_retries).
pub struct TaskRegistry {
    handlers: HashMap<String, Handler>,
    backend: Option<Arc<dyn ResultBackend>>,
    /// Retries a task may ask for (Celery's `max_retries`, default 3).
    max_retries: u32,
    /// Where callbacks and the next step of a chain are sent (the worker's connection).
    connection: Option<Connection>,
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

impl Default for TaskRegistry {
    fn default() -> Self {
        TaskRegistry {
            handlers: HashMap::new(),
            backend: None,
            max_retries: 3,
            connection: None,
        }
    }
}

impl TaskRegistry {
    /// No tasks, no result backend (results are dropped).
    pub fn new() -> Self {
        TaskRegistry::default()
    }

    /// How many times a task may ask to be retried ([`TaskError::retry`]; Celery's
    /// `max_retries`, default 3).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
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
    /// (to configure it, use [`worker_with`](Self::worker_with)).
    pub fn into_worker(self, connection: &Connection, queues: impl IntoIterator<Item = Queue>) -> Worker {
        self.worker_with(connection, queues, |builder| builder)
    }

    /// A worker of `queues` on `connection` running these tasks, configured by `configure`
    /// (concurrency, poison policy, ...). Callbacks and chains are sent on `connection`.
    pub fn worker_with(
        mut self,
        connection: &Connection,
        queues: impl IntoIterator<Item = Queue>,
        configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder,
    ) -> Worker {
        self.connection = Some(connection.clone());
        let builder = configure(Worker::builder(connection, queues));
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
            let error =
                TaskError::in_module("celery.exceptions", "NotRegistered", format!("'{}'", task.name));
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
            Ok(value) => {
                self.follow_up(&task, &value).await?;
                ResultMeta::success(id, value)
            }
            Err(failure) => match failure.retry_in {
                Some(countdown) if task.retries < self.max_retries => {
                    self.send_again(message, &task, countdown).await?;
                    ResultMeta::retry(id, &failure)
                }
                Some(_) => {
                    let exceeded = TaskError::in_module(
                        "celery.exceptions",
                        "MaxRetriesExceededError",
                        format!("Can't retry {}[{}]: {}", task.name, task.id, failure.message),
                    );
                    warn!(task = %task.name, id = %task.id, error = %exceeded, "celery task failed");
                    ResultMeta::failure(id, &exceeded, None)
                }
                None => {
                    warn!(task = %task.name, id = %task.id, error = %failure, "celery task failed");
                    ResultMeta::failure(id, &failure, Some(failure.to_string()))
                }
            },
        };
        self.store(&task, meta).await?;
        Ok(Outcome::Ack)
    }

    /// After a success, as a Celery worker does: send each callback (`link`) and the next
    /// step of the chain, with `value` as their first argument (unless immutable).
    async fn follow_up(&self, task: &TaskMessage, value: &serde_json::Value) -> Result<()> {
        let Some(connection) = &self.connection else {
            return Ok(());
        };
        for callback in &task.callbacks {
            send_signature(connection, task, callback, value, Vec::new()).await?;
        }
        if let Some((next, rest)) = task
            .chain
            .as_ref()
            .and_then(|c| c.as_array())
            .and_then(|c| c.split_last())
        {
            send_signature(connection, task, next, value, rest.to_vec()).await?;
        }
        Ok(())
    }

    /// Send `task` again, `retries` + 1, to run after `countdown`, where it came from (Celery's
    /// `Task.retry`).
    async fn send_again(&self, message: &Message, task: &TaskMessage, countdown: Duration) -> Result<()> {
        let Some(connection) = &self.connection else {
            return Ok(());
        };
        let info = message.delivery_info();
        let mut options = TaskOptions::new().task_id(task.id.clone()).countdown(countdown);
        if info.exchange().is_empty() {
            options.queue = Some(info.routing_key().to_owned());
        } else {
            // It exists (the task came through it), and its type is not known here.
            options.exchange = Some(kombu::Exchange::direct(info.exchange()).no_declare(true));
            options.routing_key = Some(info.routing_key().to_owned());
        }
        options.retries = task.retries + 1;
        options.root_id = task.root_id.clone();
        options.parent_id = task.parent_id.clone();
        options.group_id = task.group.clone();
        options.reply_to = task.reply_to.clone();
        options.ignore_result = Some(task.ignore_result);
        options.link = task.callbacks.clone();
        options.link_error = task.errbacks.clone();
        options.chain = match &task.chain {
            Some(serde_json::Value::Array(rest)) => rest.clone(),
            _ => Vec::new(),
        };
        send_task(
            connection,
            &task.name,
            task.args.clone(),
            task.kwargs.clone(),
            options,
        )
        .await
        .map(|_| ())
    }

    /// Store `meta` as `task`'s result (with its group and parent, as Celery's result meta
    /// has them), unless the sender asked for none.
    async fn store(&self, task: &TaskMessage, mut meta: ResultMeta) -> Result<()> {
        match &self.backend {
            Some(backend) if !task.ignore_result => {
                meta.group_id = task.group.clone();
                meta.parent_id = task.parent_id.clone();
                backend.store_for(task, &meta).await
            }
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

/// Send the Celery signature `signature` (a callback or the next chain step of `parent`) with
/// `value` prepended to its args (unless immutable), the rest of the chain `chain`.
async fn send_signature(
    connection: &Connection,
    parent: &TaskMessage,
    signature: &serde_json::Value,
    value: &serde_json::Value,
    chain: Vec<serde_json::Value>,
) -> Result<()> {
    let Some(name) = signature.get("task").and_then(serde_json::Value::as_str) else {
        warn!(parent = %parent.id, ?signature, "a callback that is not a plain task signature (a group or chord?): skipped");
        return Ok(());
    };
    if !signature
        .get("subtask_type")
        .is_none_or(serde_json::Value::is_null)
    {
        warn!(parent = %parent.id, task = name, "group and chord callbacks are not supported yet: skipped");
        return Ok(());
    }
    let immutable = signature.get("immutable").and_then(serde_json::Value::as_bool) == Some(true);
    let mut args = match signature.get("args") {
        Some(serde_json::Value::Array(args)) => args.clone(),
        _ => Vec::new(),
    };
    if !immutable {
        args.insert(0, value.clone());
    }
    let kwargs = signature
        .get("kwargs")
        .filter(|k| k.is_object())
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    let empty = serde_json::Map::new();
    let options = signature
        .get("options")
        .and_then(serde_json::Value::as_object)
        .unwrap_or(&empty);
    let text = |key: &str| options.get(key).and_then(serde_json::Value::as_str);
    let list = |key: &str| match options.get(key) {
        Some(serde_json::Value::Array(list)) => list.clone(),
        Some(one @ serde_json::Value::Object(_)) => vec![one.clone()],
        _ => Vec::new(),
    };
    let mut send = TaskOptions::new();
    send.task_id = text("task_id").map(TaskId::from);
    send.queue = text("queue").map(str::to_owned);
    // Celery freezes the caller's reply queue into each signature of a chain: the rpc://
    // result of this step must go back there, not to this process.
    send.reply_to = text("reply_to").map(str::to_owned);
    send.group_id = text("group_id").map(TaskId::from);
    send.priority = options
        .get("priority")
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u8::try_from(p).ok());
    send.root_id = Some(parent.root_id.clone().unwrap_or_else(|| parent.id.clone()));
    send.parent_id = Some(parent.id.clone());
    send.link = list("link");
    send.link_error = list("link_error");
    send.chain = chain;
    send_task(connection, name, args, kwargs, send).await.map(|_| ())
}
