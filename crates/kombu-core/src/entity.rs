//! Exchanges, queues and bindings, with Kombu's options and defaults.
//!
//! These are plain declarations: nothing talks to a broker here. Channels declare them, and the
//! facade's `maybe_declare` caches the declarations per connection.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind, Result};
use crate::message::DeliveryMode;
use crate::value::{FieldTable, Value};

/// The four AMQP exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExchangeType {
    /// Deliver to queues whose binding key equals the routing key.
    #[default]
    Direct,
    /// Deliver to queues whose binding pattern (`*`, `#` wildcards) matches the routing key.
    Topic,
    /// Deliver to every bound queue.
    Fanout,
    /// Deliver by matching message headers against binding arguments (`x-match`).
    Headers,
}

impl ExchangeType {
    /// The AMQP name (`"direct"`, `"topic"`, `"fanout"`, `"headers"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Topic => "topic",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Headers => "headers",
        }
    }
}

impl fmt::Display for ExchangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExchangeType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "" | "direct" => Ok(ExchangeType::Direct),
            "topic" => Ok(ExchangeType::Topic),
            "fanout" => Ok(ExchangeType::Fanout),
            "headers" => Ok(ExchangeType::Headers),
            other => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("unknown exchange type {other:?} (expected direct, topic, fanout or headers)"),
            )),
        }
    }
}

/// An exchange declaration. Defaults are Kombu's: direct, durable, not auto-deleted.
///
/// ```
/// use kombu_core::{Exchange, ExchangeType};
/// let media = Exchange::new("media", ExchangeType::Direct).durable(false);
/// assert_eq!(media.name, "media");
/// assert!(!media.durable);
/// assert!(Exchange::default_exchange().is_default());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// Name; `""` is the default exchange (routes by queue name, never declared).
    pub name: String,
    /// Routing algorithm.
    pub kind: ExchangeType,
    /// Survives a broker restart. Kombu default: `true`.
    pub durable: bool,
    /// Deleted when its last binding goes. Kombu default: `false`.
    pub auto_delete: bool,
    /// Only check that it exists.
    pub passive: bool,
    /// Extra declaration arguments (`alternate-exchange`, …).
    pub arguments: FieldTable,
    /// Delivery mode used when a publish does not name one.
    pub delivery_mode: Option<DeliveryMode>,
    /// Never declare (the application or the broker manages it).
    pub no_declare: bool,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange::new("", ExchangeType::Direct)
    }
}

impl Exchange {
    /// A durable, non-auto-delete exchange of `kind`.
    pub fn new(name: impl Into<String>, kind: ExchangeType) -> Self {
        Exchange {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            passive: false,
            arguments: FieldTable::new(),
            delivery_mode: None,
            no_declare: false,
        }
    }

    /// The nameless default exchange.
    pub fn default_exchange() -> Self {
        Exchange::default()
    }

    /// A direct exchange.
    pub fn direct(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeType::Direct)
    }

    /// A topic exchange.
    pub fn topic(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeType::Topic)
    }

    /// A fanout exchange.
    pub fn fanout(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeType::Fanout)
    }

    /// A headers exchange.
    pub fn headers(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeType::Headers)
    }

    /// Set `durable`.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Set `auto_delete`.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Set `passive`.
    pub fn passive(mut self, passive: bool) -> Self {
        self.passive = passive;
        self
    }

    /// Add a declaration argument.
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.arguments.insert(key.into(), value.into());
        self
    }

    /// Set the default delivery mode of messages published to it.
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.delivery_mode = Some(mode);
        self
    }

    /// Never declare it.
    pub fn no_declare(mut self, no_declare: bool) -> Self {
        self.no_declare = no_declare;
        self
    }

    /// The default exchange (`""`).
    pub fn is_default(&self) -> bool {
        self.name.is_empty()
    }

    /// Whether declaring it is skipped, as Kombu does: the default exchange, `amq.*` names
    /// and `no_declare`.
    pub fn skips_declare(&self) -> bool {
        self.is_default() || self.name.starts_with("amq.") || self.no_declare
    }

    /// Whether two declarations are equivalent (AMQP: same type, durability, auto-delete and
    /// arguments); a redeclaration that is not equivalent is an error.
    pub fn is_equivalent(&self, other: &Exchange) -> bool {
        self.kind == other.kind
            && self.durable == other.durable
            && self.auto_delete == other.auto_delete
            && self.arguments == other.arguments
    }

    /// Whether the declaration may be cached per connection (not auto-delete).
    pub fn can_cache_declaration(&self) -> bool {
        !self.auto_delete
    }
}

/// A binding of a queue to an exchange, for queues bound several times.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The exchange to bind to (declared with the queue).
    pub exchange: Exchange,
    /// The binding key (pattern for topic exchanges).
    pub routing_key: String,
    /// Binding arguments (headers exchanges match on these).
    pub arguments: FieldTable,
}

impl Binding {
    /// Bind to `exchange` with `routing_key`.
    pub fn new(exchange: Exchange, routing_key: impl Into<String>) -> Self {
        Binding {
            exchange,
            routing_key: routing_key.into(),
            arguments: FieldTable::new(),
        }
    }

    /// Add a binding argument.
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.arguments.insert(key.into(), value.into());
        self
    }
}

/// A queue declaration with Kombu's options and defaults (durable, not exclusive, not
/// auto-delete, acks required).
///
/// The TTL/limit options are converted to RabbitMQ's `x-*` arguments exactly as Kombu's
/// `prepare_queue_arguments` does (seconds → integer milliseconds), and override the same keys
/// in `queue_arguments`:
///
/// ```
/// use std::time::Duration;
/// use kombu_core::{Exchange, Queue, Value};
/// let q = Queue::new("video")
///     .exchange(Exchange::direct("media"))
///     .routing_key("video")
///     .message_ttl(Duration::from_millis(1500))
///     .max_priority(9);
/// let args = q.declare_arguments();
/// assert_eq!(args.get("x-message-ttl"), Some(&Value::Int(1500)));
/// assert_eq!(args.get("x-max-priority"), Some(&Value::Int(9)));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    /// Name; empty asks the broker for a generated one (`amq.gen-…`).
    pub name: String,
    /// The exchange of the main binding (none: only `bindings`, or the default exchange).
    pub exchange: Option<Exchange>,
    /// The binding key of the main binding.
    pub routing_key: String,
    /// Further bindings.
    pub bindings: Vec<Binding>,
    /// Survives a broker restart. Kombu default: `true`.
    pub durable: bool,
    /// Used by one connection only; implies auto-delete.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Consumers of this queue do not acknowledge.
    pub no_ack: bool,
    /// Only check that it exists.
    pub passive: bool,
    /// Never declare it.
    pub no_declare: bool,
    /// Raw declaration arguments; the typed options below override the same `x-*` keys.
    pub queue_arguments: FieldTable,
    /// Arguments of the main binding.
    pub binding_arguments: FieldTable,
    /// Arguments passed to `consume`.
    pub consumer_arguments: FieldTable,
    /// Per-queue message TTL (`x-message-ttl`).
    pub message_ttl: Option<std::time::Duration>,
    /// Delete the queue after this long unused (`x-expires`).
    pub expires: Option<std::time::Duration>,
    /// Maximum number of ready messages (`x-max-length`).
    pub max_length: Option<u64>,
    /// Maximum total body bytes of ready messages (`x-max-length-bytes`).
    pub max_length_bytes: Option<u64>,
    /// Highest priority honoured (`x-max-priority`).
    pub max_priority: Option<u8>,
}

impl Default for Queue {
    fn default() -> Self {
        Queue::new("")
    }
}

fn duration_to_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Queue {
    /// A durable queue named `name`, bound to nothing yet.
    pub fn new(name: impl Into<String>) -> Self {
        Queue {
            name: name.into(),
            exchange: None,
            routing_key: String::new(),
            bindings: Vec::new(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            no_ack: false,
            passive: false,
            no_declare: false,
            queue_arguments: FieldTable::new(),
            binding_arguments: FieldTable::new(),
            consumer_arguments: FieldTable::new(),
            message_ttl: None,
            expires: None,
            max_length: None,
            max_length_bytes: None,
            max_priority: None,
        }
    }

    /// Bind to `exchange` (with [`Queue::routing_key`]).
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchange = Some(exchange);
        self
    }

    /// The binding key of the main binding.
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = key.into();
        self
    }

    /// Add a further binding.
    pub fn binding(mut self, binding: Binding) -> Self {
        self.bindings.push(binding);
        self
    }

    /// Set `durable`.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Set `exclusive` (which implies auto-delete).
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        if exclusive {
            self.auto_delete = true;
        }
        self
    }

    /// Set `auto_delete`.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Set `no_ack`.
    pub fn no_ack(mut self, no_ack: bool) -> Self {
        self.no_ack = no_ack;
        self
    }

    /// Set `passive`.
    pub fn passive(mut self, passive: bool) -> Self {
        self.passive = passive;
        self
    }

    /// Set `no_declare`.
    pub fn no_declare(mut self, no_declare: bool) -> Self {
        self.no_declare = no_declare;
        self
    }

    /// Add a raw declaration argument.
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.queue_arguments.insert(key.into(), value.into());
        self
    }

    /// Per-queue message TTL.
    pub fn message_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }

    /// Expire the queue after this long unused.
    pub fn expires(mut self, expires: std::time::Duration) -> Self {
        self.expires = Some(expires);
        self
    }

    /// Maximum number of ready messages.
    pub fn max_length(mut self, n: u64) -> Self {
        self.max_length = Some(n);
        self
    }

    /// Maximum total bytes of ready messages.
    pub fn max_length_bytes(mut self, n: u64) -> Self {
        self.max_length_bytes = Some(n);
        self
    }

    /// Highest priority honoured.
    pub fn max_priority(mut self, n: u8) -> Self {
        self.max_priority = Some(n);
        self
    }

    /// The declaration arguments: `queue_arguments` with the typed options converted to
    /// `x-expires`, `x-message-ttl` (integer ms), `x-max-length`, `x-max-length-bytes`,
    /// `x-max-priority`, as Kombu's `to_rabbitmq_queue_arguments` does.
    pub fn declare_arguments(&self) -> FieldTable {
        let mut args = self.queue_arguments.clone();
        if let Some(d) = self.expires {
            args.insert("x-expires".into(), Value::Int(duration_to_ms(d)));
        }
        if let Some(d) = self.message_ttl {
            args.insert("x-message-ttl".into(), Value::Int(duration_to_ms(d)));
        }
        if let Some(n) = self.max_length {
            args.insert("x-max-length".into(), Value::Int(n as i64));
        }
        if let Some(n) = self.max_length_bytes {
            args.insert("x-max-length-bytes".into(), Value::Int(n as i64));
        }
        if let Some(n) = self.max_priority {
            args.insert("x-max-priority".into(), Value::Int(i64::from(n)));
        }
        args
    }

    /// All bindings: the main one (if an exchange is named) followed by `bindings`.
    pub fn all_bindings(&self) -> Vec<Binding> {
        let mut all = Vec::with_capacity(self.bindings.len() + 1);
        if let Some(exchange) = self.exchange.as_ref().filter(|e| !e.is_default()) {
            all.push(Binding {
                exchange: exchange.clone(),
                routing_key: self.routing_key.clone(),
                arguments: self.binding_arguments.clone(),
            });
        }
        all.extend(self.bindings.iter().cloned());
        all
    }

    /// Whether the declaration may be cached per connection (Kombu: not auto-delete and no
    /// `x-expires`).
    pub fn can_cache_declaration(&self) -> bool {
        !self.auto_delete && self.expires.is_none() && !self.queue_arguments.contains_key("x-expires")
    }

    /// Build a queue from a Kombu/Celery queue configuration dict (`Queue.from_dict`), e.g.
    /// Celery's `task_queues` entries:
    ///
    /// ```
    /// use kombu_core::{ExchangeType, Queue};
    /// let q = Queue::from_dict("images", &serde_json::json!({
    ///     "exchange": "media", "exchange_type": "topic", "routing_key": "image.#",
    ///     "queue_durable": false, "max_priority": 10, "message_ttl": 2.5,
    /// })).unwrap();
    /// let ex = q.exchange.as_ref().unwrap();
    /// assert_eq!((ex.name.as_str(), ex.kind), ("media", ExchangeType::Topic));
    /// assert_eq!(q.routing_key, "image.#");
    /// assert!(!q.durable);
    /// assert_eq!(q.max_priority, Some(10));
    /// assert_eq!(q.message_ttl, Some(std::time::Duration::from_millis(2500)));
    /// ```
    pub fn from_dict(name: &str, options: &serde_json::Value) -> Result<Queue> {
        let map = options.as_object().ok_or_else(|| {
            Error::new(ErrorKind::InvalidArgument, "queue options must be a JSON object")
                .with_context("queue", name)
        })?;
        let get_bool = |key: &str| -> Result<Option<bool>> {
            match map.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
                Some(other) => Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("option {key:?} must be a boolean, got {other}"),
                )
                .with_context("queue", name)),
            }
        };
        let get_secs = |key: &str| -> Result<Option<std::time::Duration>> {
            match map.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| Some(std::time::Duration::from_secs_f64(s)))
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidArgument,
                            format!("option {key:?} must be a non-negative number of seconds"),
                        )
                        .with_context("queue", name)
                    }),
            }
        };
        let get_u64 = |key: &str| -> Result<Option<u64>> {
            match map.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidArgument,
                        format!("option {key:?} must be a non-negative integer"),
                    )
                    .with_context("queue", name)
                }),
            }
        };
        let get_table = |key: &str| -> Result<FieldTable> {
            match map.get(key) {
                None | Some(serde_json::Value::Null) => Ok(FieldTable::new()),
                Some(v @ serde_json::Value::Object(_)) => match Value::from_json(v.clone()) {
                    Value::Table(t) => Ok(t),
                    _ => Ok(FieldTable::new()),
                },
                Some(_) => Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("option {key:?} must be an object"),
                )
                .with_context("queue", name)),
            }
        };

        let durable = get_bool("durable")?;
        let auto_delete = get_bool("auto_delete")?;
        let mut queue = Queue::new(name);
        if let Some(ex_name) = map.get("exchange").and_then(|v| v.as_str()) {
            let kind = match map.get("exchange_type").and_then(|v| v.as_str()) {
                Some(t) => t.parse()?,
                None => ExchangeType::Direct,
            };
            let mut exchange = Exchange::new(ex_name, kind);
            if let Some(d) = get_bool("exchange_durable")?.or(durable) {
                exchange.durable = d;
            }
            if let Some(a) = get_bool("exchange_auto_delete")?.or(auto_delete) {
                exchange.auto_delete = a;
            }
            exchange.arguments = get_table("exchange_arguments")?;
            if let Some(mode) = map.get("delivery_mode") {
                exchange.delivery_mode = match mode {
                    serde_json::Value::Number(n) => {
                        Some(DeliveryMode::from_u8(n.as_u64().unwrap_or(2) as u8))
                    }
                    serde_json::Value::String(s) if s == "transient" => Some(DeliveryMode::Transient),
                    serde_json::Value::String(_) => Some(DeliveryMode::Persistent),
                    _ => None,
                };
            }
            queue.exchange = Some(exchange);
        }
        if let Some(rk) = map
            .get("routing_key")
            .or_else(|| map.get("binding_key"))
            .and_then(|v| v.as_str())
        {
            queue.routing_key = rk.to_owned();
        }
        if let Some(d) = get_bool("queue_durable")?.or(durable) {
            queue.durable = d;
        }
        if let Some(a) = get_bool("queue_auto_delete")?.or(auto_delete) {
            queue.auto_delete = a;
        }
        if let Some(e) = get_bool("exclusive")? {
            queue = queue.exclusive(e);
        }
        if let Some(n) = get_bool("no_ack")? {
            queue.no_ack = n;
        }
        queue.queue_arguments = get_table("queue_arguments")?;
        queue.binding_arguments = get_table("binding_arguments")?;
        queue.consumer_arguments = get_table("consumer_arguments")?;
        queue.expires = get_secs("expires")?;
        queue.message_ttl = get_secs("message_ttl")?;
        queue.max_length = get_u64("max_length")?;
        queue.max_length_bytes = get_u64("max_length_bytes")?;
        queue.max_priority = get_u64("max_priority")?.map(|p| u8::try_from(p).unwrap_or(u8::MAX));
        Ok(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_ttl_are_integer_milliseconds() {
        let q = Queue::new("q")
            .expires(std::time::Duration::from_secs(10))
            .argument("x-expires", 1);
        assert_eq!(q.declare_arguments().get("x-expires"), Some(&Value::Int(10_000)));
        assert!(!q.can_cache_declaration());
    }

    #[test]
    fn exclusive_implies_auto_delete() {
        let q = Queue::new("q").exclusive(true);
        assert!(q.auto_delete);
    }

    #[test]
    fn from_dict_rejects_bad_types() {
        let err = Queue::from_dict("q", &serde_json::json!({"durable": "yes"})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let err =
            Queue::from_dict("q", &serde_json::json!({"exchange": "e", "exchange_type": "x"})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn amq_and_default_exchanges_skip_declare() {
        assert!(Exchange::default_exchange().skips_declare());
        assert!(Exchange::direct("amq.direct").skips_declare());
        assert!(!Exchange::direct("media").skips_declare());
    }
}
