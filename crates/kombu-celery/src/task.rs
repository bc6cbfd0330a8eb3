//! Reading tasks: the envelope of a Celery task message, protocol v2 (Celery 4+) or v1.

use std::fmt;
use std::time::SystemTime;

use kombu::{Error, ErrorKind, Message, Result, Value};
use serde::{Deserialize, Serialize};

use crate::time::parse_iso;

/// A task id (a uuid4 string, as Celery's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// A new random id.
    pub fn new() -> Self {
        TaskId(uuid::Uuid::new_v4().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        TaskId::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for TaskId {
    fn from(id: String) -> Self {
        TaskId(id)
    }
}

impl From<&str> for TaskId {
    fn from(id: &str) -> Self {
        TaskId(id.to_owned())
    }
}

/// The message protocol a task came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// Protocol 2 (Celery 4 and later): the envelope in the headers, `[args, kwargs, embed]`
    /// in the body.
    V2,
    /// Protocol 1 (Celery 3): everything in a body dict.
    V1,
}

/// A Celery task as a worker receives it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TaskMessage {
    /// The protocol it came in.
    pub protocol: Protocol,
    /// The task's registered name (`task`).
    pub name: String,
    /// The task id (`id`).
    pub id: TaskId,
    /// Positional arguments (a JSON array).
    pub args: serde_json::Value,
    /// Keyword arguments (a JSON object).
    pub kwargs: serde_json::Value,
    /// Callbacks (`link`), as Celery signature dicts.
    pub callbacks: Vec<serde_json::Value>,
    /// Errbacks (`link_error`).
    pub errbacks: Vec<serde_json::Value>,
    /// The rest of the chain, if any.
    pub chain: Option<serde_json::Value>,
    /// The chord this task is part of, if any.
    pub chord: Option<serde_json::Value>,
    /// Run no earlier than this (`eta`).
    pub eta: Option<SystemTime>,
    /// Expired after this (`expires`).
    pub expires: Option<SystemTime>,
    /// Retries so far.
    pub retries: u32,
    /// `root_id`.
    pub root_id: Option<TaskId>,
    /// `parent_id`.
    pub parent_id: Option<TaskId>,
    /// `group`.
    pub group: Option<TaskId>,
    /// Whether the sender asked for no result to be stored.
    pub ignore_result: bool,
    /// `reply_to`.
    pub reply_to: Option<String>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
}

fn malformed(why: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!("malformed Celery task message: {}", why.into()),
    )
}

fn text(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::to_owned)
}

fn json_text(value: Option<&serde_json::Value>) -> Option<String> {
    value.and_then(serde_json::Value::as_str).map(str::to_owned)
}

/// `eta`/`expires`: absent, null, or an ISO 8601 time (anything else is malformed).
fn time_field(name: &str, value: Option<String>) -> Result<Option<SystemTime>> {
    match value {
        None => Ok(None),
        Some(t) => parse_iso(&t)
            .map(Some)
            .ok_or_else(|| malformed(format!("{name} is not an ISO 8601 time: {t:?}"))),
    }
}

fn signatures(value: Option<&serde_json::Value>) -> Result<Vec<serde_json::Value>> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(list)) => Ok(list.clone()),
        Some(other) => Err(malformed(format!("callbacks must be a list, not {other}"))),
    }
}

fn non_null(value: Option<&serde_json::Value>) -> Option<serde_json::Value> {
    value.filter(|v| !v.is_null()).cloned()
}

impl TaskMessage {
    /// Parse a received message. A body that cannot be decoded, or is not a Celery task, is an
    /// [`ErrorKind::Decode`] error (a [`Worker`](kombu::Worker) parks it as poison); a content
    /// type outside the consumer's `accept` list is [`ErrorKind::ContentDisallowed`].
    pub fn from_message(message: &Message) -> Result<TaskMessage> {
        let body: serde_json::Value = message.decode()?;
        let headers = message.headers();
        let properties = message.properties();
        let reply_to = properties.reply_to.clone().filter(|r| !r.is_empty());
        let correlation_id = properties.correlation_id.clone();
        if headers.contains_key("task") {
            Self::v2(headers, body, reply_to, correlation_id)
        } else {
            Self::v1(body, reply_to, correlation_id)
        }
    }

    fn v2(
        headers: &kombu::FieldTable,
        body: serde_json::Value,
        reply_to: Option<String>,
        correlation_id: Option<String>,
    ) -> Result<TaskMessage> {
        let name = text(headers.get("task")).ok_or_else(|| malformed("the task header is not a string"))?;
        let id = text(headers.get("id")).ok_or_else(|| malformed("no id header"))?;
        let serde_json::Value::Array(mut parts) = body else {
            return Err(malformed("the body is not [args, kwargs, embed]"));
        };
        if !(2..=3).contains(&parts.len()) {
            return Err(malformed(format!("the body has {} parts, not 3", parts.len())));
        }
        let embed = if parts.len() == 3 { parts.pop() } else { None };
        let kwargs = parts.pop().unwrap_or_default();
        let args = parts.pop().unwrap_or_default();
        if !args.is_array() {
            return Err(malformed("args is not a list"));
        }
        if !kwargs.is_object() {
            return Err(malformed("kwargs is not a mapping"));
        }
        let embed = match embed {
            None | Some(serde_json::Value::Null) => serde_json::Map::new(),
            Some(serde_json::Value::Object(map)) => map,
            Some(_) => return Err(malformed("embed is not a mapping")),
        };
        let retries = headers.get("retries").and_then(Value::as_i64).unwrap_or(0);
        Ok(TaskMessage {
            protocol: crate::Protocol::V2,
            name,
            id: id.into(),
            args,
            kwargs,
            callbacks: signatures(embed.get("callbacks"))?,
            errbacks: signatures(embed.get("errbacks"))?,
            chain: non_null(embed.get("chain")),
            chord: non_null(embed.get("chord")),
            eta: time_field("eta", text(headers.get("eta")))?,
            expires: time_field("expires", text(headers.get("expires")))?,
            retries: u32::try_from(retries).unwrap_or(0),
            root_id: text(headers.get("root_id")).map(TaskId),
            parent_id: text(headers.get("parent_id")).map(TaskId),
            group: text(headers.get("group")).map(TaskId),
            ignore_result: matches!(headers.get("ignore_result"), Some(Value::Bool(true))),
            reply_to,
            correlation_id,
        })
    }

    fn v1(
        body: serde_json::Value,
        reply_to: Option<String>,
        correlation_id: Option<String>,
    ) -> Result<TaskMessage> {
        let serde_json::Value::Object(body) = body else {
            return Err(malformed(
                "no task header, and the body is not a protocol 1 task dict",
            ));
        };
        let name = json_text(body.get("task")).ok_or_else(|| malformed("no task name"))?;
        let id = json_text(body.get("id")).ok_or_else(|| malformed("no task id"))?;
        let args = body.get("args").cloned().unwrap_or_else(|| serde_json::json!([]));
        let kwargs = body
            .get("kwargs")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        if !args.is_array() || !kwargs.is_object() {
            return Err(malformed("args is not a list or kwargs is not a mapping"));
        }
        Ok(TaskMessage {
            protocol: Protocol::V1,
            name,
            id: id.into(),
            args,
            kwargs,
            callbacks: signatures(body.get("callbacks"))?,
            errbacks: signatures(body.get("errbacks"))?,
            chain: None,
            chord: non_null(body.get("chord")),
            eta: time_field("eta", json_text(body.get("eta")))?,
            expires: time_field("expires", json_text(body.get("expires")))?,
            retries: body
                .get("retries")
                .and_then(serde_json::Value::as_u64)
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(0),
            root_id: None,
            parent_id: None,
            group: json_text(body.get("taskset")).map(TaskId),
            ignore_result: false,
            reply_to,
            correlation_id,
        })
    }
}
