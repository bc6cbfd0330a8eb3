//! Task results as Celery's result backends store them.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use kombu::{Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::time::isoformat;
use crate::{TaskId, TaskMessage};

/// A task's state (Celery's `celery.states`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum TaskState {
    /// Unknown or waiting.
    Pending,
    /// Received by a worker.
    Received,
    /// Started.
    Started,
    /// Succeeded: `result` is the return value.
    Success,
    /// Failed: `result` is the exception.
    Failure,
    /// Revoked (or expired).
    Revoked,
    /// Waiting to be retried.
    Retry,
}

impl TaskState {
    /// Whether the task is done (`celery.states.READY_STATES`).
    pub fn is_ready(self) -> bool {
        matches!(self, TaskState::Success | TaskState::Failure | TaskState::Revoked)
    }
}

/// A failed task's error, as Celery stores an exception with the JSON serializer:
/// `{"exc_type": ..., "exc_message": [...], "exc_module": ...}`.
///
/// Python's `AsyncResult.get()` raises it as `exc_module.exc_type(*exc_message)`; the default
/// is a plain `builtins.Exception(message)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskError {
    /// The exception class (`exc_type`), default `Exception`.
    pub exc_type: String,
    /// Its module (`exc_module`), default `builtins`.
    pub exc_module: String,
    /// The message.
    pub message: String,
    /// Set by [`TaskError::retry`]: run the task again after this long.
    pub retry_in: Option<Duration>,
}

impl TaskError {
    /// A `builtins.Exception(message)`.
    pub fn new(message: impl Into<String>) -> Self {
        TaskError::in_module("builtins", "Exception", message)
    }

    /// Raised in Python as `exc_module.exc_type(message)`.
    pub fn in_module(
        exc_module: impl Into<String>,
        exc_type: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        TaskError {
            exc_type: exc_type.into(),
            exc_module: exc_module.into(),
            message: message.into(),
            retry_in: None,
        }
    }

    /// Ask for the task to run again after `countdown` (Celery's `self.retry(countdown=...)`):
    /// the worker sends it again with `retries` + 1 and stores the `RETRY` state, until the
    /// registry's [`max_retries`](crate::TaskRegistry::max_retries); then the task fails with
    /// `MaxRetriesExceededError`.
    pub fn retry(countdown: Duration, reason: impl Into<String>) -> Self {
        TaskError {
            retry_in: Some(countdown),
            ..TaskError::in_module("celery.exceptions", "Retry", reason)
        }
    }

    /// Raised in Python as this builtin exception class (`ValueError`, `KeyError`, ...).
    pub fn builtin(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        TaskError {
            exc_type: exc_type.into(),
            ..TaskError::new(message)
        }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "exc_type": self.exc_type,
            "exc_message": [self.message],
            "exc_module": self.exc_module,
        })
    }

    fn from_json(value: &serde_json::Value) -> TaskError {
        let message = match value.get("exc_message") {
            Some(serde_json::Value::Array(parts)) if parts.len() == 1 => parts[0]
                .as_str()
                .map_or_else(|| parts[0].to_string(), str::to_owned),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let field = |k: &str, default: &str| {
            value
                .get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        TaskError::in_module(
            field("exc_module", "builtins"),
            field("exc_type", "Exception"),
            message,
        )
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.message)
    }
}

impl std::error::Error for TaskError {}

impl From<String> for TaskError {
    fn from(message: String) -> Self {
        TaskError::new(message)
    }
}

impl From<&str> for TaskError {
    fn from(message: &str) -> Self {
        TaskError::new(message)
    }
}

impl From<Error> for TaskError {
    fn from(error: Error) -> Self {
        TaskError::new(error.to_string())
    }
}

/// A task's stored result: Celery's result meta (`Backend._get_result_meta`), field for field
/// and in Celery's order (`status`, `result`, `traceback`, `children`, `date_done`, then
/// `group_id` and `parent_id` only when the task has them, `task_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ResultMeta {
    /// The state.
    pub status: TaskState,
    /// The return value, or the error of a failure.
    pub result: serde_json::Value,
    /// The traceback of a failure.
    pub traceback: Option<String>,
    /// Subtasks started by the task.
    #[serde(default)]
    pub children: Vec<serde_json::Value>,
    /// When it finished (ISO 8601), for ready states.
    pub date_done: Option<String>,
    /// The group the task is part of (written only when set, as Celery does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<TaskId>,
    /// The task that sent this one (written only when set, as Celery does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<TaskId>,
    /// The task id.
    pub task_id: TaskId,
}

impl ResultMeta {
    /// A success returning `value`.
    pub fn success(id: TaskId, value: serde_json::Value) -> Self {
        ResultMeta::done(id, TaskState::Success, value, None)
    }

    /// A failure with `error` (and a traceback text, if any).
    pub fn failure(id: TaskId, error: &TaskError, traceback: Option<String>) -> Self {
        ResultMeta::done(id, TaskState::Failure, error.to_json(), traceback)
    }

    /// A revoked (or expired) task, as Celery stores one: a `TaskRevokedError`.
    pub fn revoked(id: TaskId, why: &str) -> Self {
        let error = TaskError::in_module("celery.exceptions", "TaskRevokedError", why);
        ResultMeta::done(id, TaskState::Revoked, error.to_json(), None)
    }

    /// Waiting to be retried, because of `error`.
    pub fn retry(id: TaskId, error: &TaskError) -> Self {
        ResultMeta {
            date_done: None,
            ..ResultMeta::done(id, TaskState::Retry, error.to_json(), None)
        }
    }

    fn done(id: TaskId, status: TaskState, result: serde_json::Value, traceback: Option<String>) -> Self {
        ResultMeta {
            status,
            result,
            traceback,
            children: Vec::new(),
            date_done: Some(isoformat(SystemTime::now())),
            group_id: None,
            parent_id: None,
            task_id: id,
        }
    }

    /// The return value as `T`, or the task's error.
    pub fn into_result<T: DeserializeOwned>(self) -> std::result::Result<T, TaskError> {
        match self.status {
            TaskState::Success => serde_json::from_value(self.result)
                .map_err(|e| TaskError::builtin("TypeError", format!("the result does not fit: {e}"))),
            _ => Err(TaskError::from_json(&self.result)),
        }
    }
}

/// Where task results are kept (a Celery result backend).
#[async_trait]
pub trait ResultBackend: Send + Sync + fmt::Debug {
    /// Store `meta` as the task's result.
    async fn store(&self, meta: &ResultMeta) -> Result<()>;

    /// Store `meta` as the result of `task`, the message it came in: what a
    /// [`TaskRegistry`](crate::TaskRegistry) calls. Backends keyed by task id need nothing
    /// more than [`store`](Self::store) (the default); the `rpc://` backend
    /// ([`RpcBackend`](crate::RpcBackend)) answers the sender, so it needs the message's
    /// `reply_to` and `correlation_id`.
    async fn store_for(&self, task: &TaskMessage, meta: &ResultMeta) -> Result<()> {
        let _ = task;
        self.store(meta).await
    }

    /// The task's stored result, if any.
    async fn get(&self, id: &TaskId) -> Result<Option<ResultMeta>>;

    /// Wait up to `timeout` for the task to be done (Celery's `AsyncResult.get(timeout=...)`,
    /// without raising the task's error: see [`ResultMeta::into_result`]). By default this
    /// polls [`get`](Self::get) every 50 ms; a [`ErrorKind::Timeout`] error when time is up.
    async fn wait(&self, id: &TaskId, timeout: Duration) -> Result<ResultMeta> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(meta) = self.get(id).await? {
                if meta.status.is_ready() {
                    return Ok(meta);
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("task {id} not done after {timeout:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_serialize_as_celery_stores_them() {
        let meta = ResultMeta::failure("t1".into(), &TaskError::builtin("ValueError", "boom"), None);
        let text = serde_json::to_string(&meta).unwrap_or_default();
        // Compared as values: the key order of a JSON object depends on serde_json's
        // `preserve_order` feature, which another crate of a build may turn on (Python reads
        // either).
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let date_done = value["date_done"].as_str().unwrap_or_default().to_owned();
        assert!(date_done.ends_with("+00:00"), "{text}");
        value["date_done"] = serde_json::Value::Null;
        assert_eq!(
            value,
            serde_json::json!({
                "status": "FAILURE",
                "result": {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"},
                "traceback": null,
                "children": [],
                "date_done": null,
                "task_id": "t1",
            }),
            "{text}"
        );
        let back: ResultMeta = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            back.into_result::<i64>(),
            Err(TaskError::builtin("ValueError", "boom"))
        );
        let ok = ResultMeta::success("t2".into(), serde_json::json!(5));
        assert_eq!(ok.into_result::<i64>(), Ok(5));
    }
}
