//! Sending tasks: Celery protocol v2, as Celery 5.x's `app.send_task` writes it.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use kombu::{Connection, Exchange, FieldTable, Producer, PublishOptions, Queue, Result, Value};
use serde::Serialize;
use serde_json::json;

use crate::time::isoformat;
use crate::TaskId;

/// Celery's default queue (and the routing key and direct exchange of the same name).
pub const DEFAULT_QUEUE: &str = "celery";

/// The options of one [`send_task`] (the keyword arguments of Celery's `send_task` /
/// `apply_async` this crate supports). Every field is optional.
///
/// ```
/// use std::time::Duration;
/// use kombu_celery::TaskOptions;
/// let options = TaskOptions::new().queue("images").countdown(Duration::from_secs(10)).priority(5);
/// assert_eq!(options.queue.as_deref(), Some("images"));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TaskOptions {
    /// The task id (default: a new uuid4).
    pub task_id: Option<TaskId>,
    /// The queue (default `celery`): declared as Celery declares it (bound to a direct
    /// exchange of its name with its name as routing key) and published to through the
    /// default exchange, routing key = the queue's name.
    pub queue: Option<String>,
    /// Publish to this exchange (with [`routing_key`](Self::routing_key)) instead of a queue.
    pub exchange: Option<Exchange>,
    /// The routing key with [`exchange`](Self::exchange) (default: the queue's name).
    pub routing_key: Option<String>,
    /// Run no earlier than this long from now (the `eta` header).
    pub countdown: Option<Duration>,
    /// Run no earlier than this time (the `eta` header); `countdown` wins if both are set.
    pub eta: Option<SystemTime>,
    /// Expire this long from now: the `expires` header, and the message's `expiration`
    /// property (milliseconds) as Celery sets it — so a broker that honours message TTLs
    /// (RabbitMQ) drops the task once expired, and a worker that gets it late stores it as
    /// `REVOKED` without running it.
    pub expires: Option<Duration>,
    /// The message priority (Celery: `priority`).
    pub priority: Option<u8>,
    /// `reply_to` (default: this process's id, as Celery's `app.thread_oid`).
    pub reply_to: Option<String>,
    /// `root_id` (default: the task id).
    pub root_id: Option<TaskId>,
    /// `parent_id`.
    pub parent_id: Option<TaskId>,
    /// `group`.
    pub group_id: Option<TaskId>,
    /// `shadow`: the name shown in logs instead of the task's.
    pub shadow: Option<String>,
    /// `ignore_result` (Celery's `send_task` writes `null` unless told).
    pub ignore_result: Option<bool>,
    /// The hard and soft time limits in seconds (`timelimit`).
    pub time_limit: Option<f64>,
    /// The soft time limit in seconds.
    pub soft_time_limit: Option<f64>,
    /// `retries` (default 0).
    pub retries: u32,
    /// Tasks to run after this one succeeds (`callbacks`), as Celery signature dicts.
    pub link: Vec<serde_json::Value>,
    /// Tasks to run if this one fails (`errbacks`), as Celery signature dicts.
    pub link_error: Vec<serde_json::Value>,
    /// The rest of a chain (`chain`): Celery signature dicts, the next task last.
    pub chain: Vec<serde_json::Value>,
    /// The serializer (Celery's `serializer`, default `json`; `msgpack` with this crate's
    /// `msgpack` feature). The worker must accept it (Celery's `accept_content`).
    pub serializer: Option<String>,
}

impl TaskOptions {
    /// No options: Celery's defaults.
    pub fn new() -> Self {
        TaskOptions::default()
    }

    /// The task id.
    pub fn task_id(mut self, id: impl Into<TaskId>) -> Self {
        self.task_id = Some(id.into());
        self
    }

    /// The queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Publish to `exchange` with `routing_key`.
    pub fn exchange(mut self, exchange: Exchange, routing_key: impl Into<String>) -> Self {
        self.exchange = Some(exchange);
        self.routing_key = Some(routing_key.into());
        self
    }

    /// Run no earlier than `delay` from now.
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.countdown = Some(delay);
        self
    }

    /// Run no earlier than `at`.
    pub fn eta(mut self, at: SystemTime) -> Self {
        self.eta = Some(at);
        self
    }

    /// Expire `after` from now.
    pub fn expires(mut self, after: Duration) -> Self {
        self.expires = Some(after);
        self
    }

    /// The priority.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// `reply_to`.
    pub fn reply_to(mut self, reply_to: impl Into<String>) -> Self {
        self.reply_to = Some(reply_to.into());
        self
    }

    /// `ignore_result`.
    pub fn ignore_result(mut self, ignore: bool) -> Self {
        self.ignore_result = Some(ignore);
        self
    }

    /// A callback run with this task's result (a Celery signature: `{"task": name, "args":
    /// [...], "kwargs": {...}, "options": {}, "subtask_type": null, "immutable": false}`).
    pub fn link(mut self, signature: serde_json::Value) -> Self {
        self.link.push(signature);
        self
    }

    /// The rest of a chain: Celery signature dicts, run in order from the last one, each
    /// with the result of the one before (as Celery's `chain` sends them). A step without
    /// `options.reply_to` is sent with this task's, as Celery's client does.
    pub fn chain(mut self, rest: Vec<serde_json::Value>) -> Self {
        self.chain = rest;
        self
    }

    /// The serializer: `json` (the default) or `msgpack` (feature `msgpack`).
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = Some(name.into());
        self
    }

    /// An errback run if this task fails (a Celery signature).
    pub fn link_error(mut self, signature: serde_json::Value) -> Self {
        self.link_error.push(signature);
        self
    }
}

/// What [`send_task`] publishes with: a [`Producer`] (its channel and serializer are used), or a
/// [`Connection`] (its default producer).
pub trait TaskPublisher {
    /// The producer to publish with.
    fn task_producer(&self) -> Producer;
}

impl TaskPublisher for Producer {
    fn task_producer(&self) -> Producer {
        self.clone()
    }
}

impl TaskPublisher for Connection {
    fn task_producer(&self) -> Producer {
        self.producer()
    }
}

/// Send the task `name` with positional `args` (a tuple, array or `()`) and keyword `kwargs`
/// (a map, a struct or `()`) in Celery's message protocol v2 with the JSON serializer (or the
/// options' one), as Celery 5.x's `app.send_task(name, args, kwargs, **options)` does.
/// Returns the task id.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
/// use kombu::Connection;
/// use kombu_celery::{send_task, TaskMessage, TaskOptions};
///
/// let conn = Connection::new("memory:///send-task-doc")?;
/// let id = send_task(&conn, "tasks.add", (2, 3), (), TaskOptions::new()).await?;
///
/// // What a Celery worker consuming `celery` receives:
/// let message = conn.simple_queue("celery").get_nowait().await?.expect("sent");
/// let task = TaskMessage::from_message(&message)?;
/// assert_eq!((task.name.as_str(), &task.id), ("tasks.add", &id));
/// assert_eq!(task.args, serde_json::json!([2, 3]));
/// # Ok(()) }
/// ```
pub async fn send_task<A, K>(
    publisher: &impl TaskPublisher,
    name: &str,
    args: A,
    kwargs: K,
    options: TaskOptions,
) -> Result<TaskId>
where
    A: Serialize,
    K: Serialize,
{
    let args = positional(&args)?;
    let kwargs = keywords(&kwargs)?;
    let (body, publish, id) = task_message(name, args, kwargs, options, SystemTime::now());
    publisher.task_producer().publish(&body, publish).await?;
    Ok(id)
}

/// `args` as the JSON array Celery wants (`()` is an empty one, a single value a one-item one).
fn positional(args: &impl Serialize) -> Result<serde_json::Value> {
    match to_json(args)? {
        serde_json::Value::Null => Ok(json!([])),
        array @ serde_json::Value::Array(_) => Ok(array),
        single => Ok(json!([single])),
    }
}

/// `kwargs` as a JSON object (`()` is an empty one).
fn keywords(kwargs: &impl Serialize) -> Result<serde_json::Value> {
    match to_json(kwargs)? {
        serde_json::Value::Null => Ok(json!({})),
        object @ serde_json::Value::Object(_) => Ok(object),
        other => Err(kombu::Error::new(
            kombu::ErrorKind::Encode,
            format!("task keyword arguments must be a mapping, not {other}"),
        )),
    }
}

fn to_json(value: &impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| kombu::Error::new(kombu::ErrorKind::Encode, e.to_string()))
}

/// The body and publish options of a task message sent at `now` (Celery's `as_task_v2` and
/// `send_task_message`).
pub(crate) fn task_message(
    name: &str,
    args: serde_json::Value,
    kwargs: serde_json::Value,
    options: TaskOptions,
    now: SystemTime,
) -> (serde_json::Value, PublishOptions, TaskId) {
    let id = options.task_id.clone().unwrap_or_default();
    let eta = options.countdown.map(|d| now + d).or(options.eta).map(isoformat);
    let expires = options.expires.map(|d| isoformat(now + d));
    let root_id = options.root_id.as_ref().unwrap_or(&id);
    let optional = |v: Option<&TaskId>| v.map_or(Value::Null, |id| Value::from(id.as_str()));
    let seconds = |s: Option<f64>| s.map_or(Value::Null, Value::Float);
    let mut headers = FieldTable::new();
    let mut put = |key: &str, value: Value| {
        headers.insert(key.to_owned(), value);
    };
    put("lang", "py".into());
    put("task", name.into());
    put("id", id.as_str().into());
    put(
        "shadow",
        options.shadow.as_deref().map_or(Value::Null, Value::from),
    );
    put("eta", eta.map_or(Value::Null, Value::String));
    put("expires", expires.map_or(Value::Null, Value::String));
    put("group", optional(options.group_id.as_ref()));
    put("group_index", Value::Null);
    put("retries", Value::Int(i64::from(options.retries)));
    put(
        "timelimit",
        Value::Array(vec![
            seconds(options.time_limit),
            seconds(options.soft_time_limit),
        ]),
    );
    put("root_id", root_id.as_str().into());
    put("parent_id", optional(options.parent_id.as_ref()));
    put("argsrepr", python_repr_args(&args).into());
    put("kwargsrepr", python_repr(&kwargs).into());
    put("origin", origin().into());
    put(
        "ignore_result",
        options.ignore_result.map_or(Value::Null, Value::Bool),
    );
    put("replaced_task_nesting", Value::Int(0));
    put("stamped_headers", Value::Null);
    put("stamps", Value::Table(FieldTable::new()));

    let reply_to = options.reply_to.unwrap_or_else(|| thread_oid().to_owned());
    let chain = options
        .chain
        .into_iter()
        .map(|step| with_reply_to(step, &reply_to))
        .collect();
    let signatures = |list: Vec<serde_json::Value>| {
        if list.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::Array(list)
        }
    };
    let body = json!([
        args,
        kwargs,
        {
            "callbacks": signatures(options.link),
            "errbacks": signatures(options.link_error),
            "chain": signatures(chain),
            "chord": null,
        }
    ]);

    let mut publish = PublishOptions::new()
        .serializer(options.serializer.unwrap_or_else(|| "json".to_owned()))
        .correlation_id(id.as_str())
        .reply_to(reply_to)
        .delivery_mode(kombu::DeliveryMode::Persistent);
    publish.headers = headers;
    if let Some(priority) = options.priority {
        publish = publish.priority(priority);
    }
    if let Some(expires) = options.expires {
        publish = publish.expiration(expires);
    }
    publish = match options.exchange {
        // Celery's anonymous-exchange rule for a direct exchange without a routing key.
        Some(exchange) => {
            let key = options
                .routing_key
                .or(options.queue)
                .unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
            publish.exchange(exchange).routing_key(key)
        }
        None => {
            let queue = options.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
            publish
                .exchange(Exchange::default_exchange())
                .routing_key(queue.clone())
                .declare(celery_queue(&queue))
        }
    };
    (body, publish, id)
}

/// A chain step (a signature dict) with `options.reply_to` set to `reply_to` unless it has
/// one, as Celery's client freezes every step of a chain it sends: so the `rpc://` results of
/// the later steps come back to the caller too.
fn with_reply_to(mut step: serde_json::Value, reply_to: &str) -> serde_json::Value {
    if let Some(signature) = step.as_object_mut() {
        let options = signature.entry("options").or_insert_with(|| json!({}));
        if let Some(options) = options.as_object_mut() {
            options.entry("reply_to").or_insert_with(|| json!(reply_to));
        }
    }
    step
}

/// A queue as Celery declares one it creates: bound to a direct exchange of its name, routing
/// key its name.
pub fn celery_queue(name: &str) -> Queue {
    Queue::new(name)
        .exchange(Exchange::direct(name))
        .routing_key(name)
}

/// Celery's `anon_nodename()`: `gen<pid>@<hostname>`.
fn origin() -> String {
    format!("gen{}@{}", std::process::id(), hostname())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A stable id of this process, sent as `reply_to` (Celery sends its `app.thread_oid`), and
/// the name of the [`RpcBackend`](crate::RpcBackend)'s reply queue, so results of the tasks
/// this process sends come back to it.
pub(crate) fn thread_oid() -> &'static str {
    static OID: OnceLock<String> = OnceLock::new();
    OID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// `args` as Python's `repr` of a tuple: `(2, 3)`, `(1,)`, `()`.
fn python_repr_args(args: &serde_json::Value) -> String {
    match args {
        serde_json::Value::Array(items) if items.len() == 1 => format!("({},)", python_repr(&items[0])),
        serde_json::Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(python_repr).collect();
            format!("({})", inner.join(", "))
        }
        other => python_repr(other),
    }
}

/// A JSON value as Python's `repr` of what `json.loads` makes of it (Celery's `saferepr`
/// without its truncation).
fn python_repr(value: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match value {
        J::Null => "None".to_owned(),
        J::Bool(true) => "True".to_owned(),
        J::Bool(false) => "False".to_owned(),
        J::Number(n) => n.to_string(),
        J::String(s) => python_str_repr(s),
        J::Array(items) => {
            let inner: Vec<String> = items.iter().map(python_repr).collect();
            format!("[{}]", inner.join(", "))
        }
        J::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", python_str_repr(k), python_repr(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

fn python_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reprs_match_python() {
        assert_eq!(python_repr_args(&json!([2, 3])), "(2, 3)");
        assert_eq!(python_repr_args(&json!([1])), "(1,)");
        assert_eq!(python_repr_args(&json!([])), "()");
        assert_eq!(
            python_repr(&json!({"a": [true, null, 1.5], "b": "it's"})),
            r#"{'a': [True, None, 1.5], 'b': "it's"}"#
        );
        assert_eq!(python_repr(&json!("a'b\"c")), r#"'a\'b"c'"#);
    }

    #[test]
    fn chain_steps_get_the_reply_to_of_the_task_unless_they_have_one() {
        let steps = vec![
            json!({"task": "a", "options": {"reply_to": "theirs"}}),
            json!({"task": "b", "options": {"task_id": "t-b"}}),
            json!({"task": "c"}),
        ];
        let options = TaskOptions::new().reply_to("ours").chain(steps);
        let (body, publish, _) = task_message("first", json!([]), json!({}), options, SystemTime::now());
        let replies: Vec<_> = body[2]["chain"]
            .as_array()
            .map(|c| c.iter().map(|s| s["options"]["reply_to"].clone()).collect())
            .unwrap_or_default();
        assert_eq!(replies, vec![json!("theirs"), json!("ours"), json!("ours")]);
        assert_eq!(body[2]["chain"][1]["options"]["task_id"], "t-b");
        assert_eq!(publish.reply_to.as_deref(), Some("ours"));
    }

    #[test]
    fn args_and_kwargs_take_the_shapes_celery_wants() {
        assert_eq!(positional(&()).ok(), Some(json!([])));
        assert_eq!(positional(&(2, 3)).ok(), Some(json!([2, 3])));
        assert_eq!(positional(&7).ok(), Some(json!([7])));
        assert_eq!(keywords(&()).ok(), Some(json!({})));
        assert!(keywords(&[1, 2]).is_err());
    }
}
