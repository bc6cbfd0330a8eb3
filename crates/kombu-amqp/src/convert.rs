//! Conversions between kombu-rs's message model and AMQP 0-9-1 frames.
//!
//! Kombu's AMQP transport sends messages natively: the body as it is, the content type and
//! encoding, headers as `application_headers` and the basic properties 1:1. So do we, which
//! makes messages from Python Kombu and kombu-rs indistinguishable on the broker.
//!
//! Integers are written as py-amqp writes them (signed 32-bit `I` when they fit, else signed
//! 64-bit `l`), strings as long strings `S`, byte strings as RabbitMQ's byte arrays `x`.
//! Received long strings that are not UTF-8 become [`Value::Bytes`], never an error.

use kombu_core::{DeliveryMode, Error, ErrorKind, FieldTable, Properties, RawMessage, Result, Value};
use lapin::types::{AMQPValue, ByteArray, FieldArray, FieldTable as AmqpTable, LongString, ShortString};
use lapin::BasicProperties;

/// `value` itself if it fits an AMQP short string (at most 255 bytes), else an
/// `InvalidArgument` error naming `what`: checked before anything is sent, by both drivers.
pub(crate) fn check_short(value: &str, what: &'static str) -> Result<()> {
    if value.len() <= usize::from(u8::MAX) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::InvalidArgument,
        format!("{what} is longer than AMQP's 255-byte limit"),
    )
    .with_context("length", value.len()))
}

/// `value` as a lapin short string, or an `InvalidArgument` error naming `what` — never a
/// panic on a long name.
pub(crate) fn short(value: &str, what: &'static str) -> Result<ShortString> {
    check_short(value, what)?;
    ShortString::try_new(value).map_err(|_| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("{what} is not a valid AMQP short string"),
        )
    })
}

/// A `LimitExceeded` error for a body over RabbitMQ's 128 MiB limit, before it is sent.
/// An AMQP delivery tag as the decimal text `DeliveryInfo::delivery_tag` holds, formatted on
/// the stack (one allocation per delivery: the shared string itself).
pub(crate) fn delivery_tag_text(tag: u64) -> std::sync::Arc<str> {
    let mut buf = [0u8; 20]; // u64::MAX has 20 digits
    let (mut rest, mut start) = (tag, buf.len());
    loop {
        start -= 1;
        buf[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::sync::Arc::from(std::str::from_utf8(&buf[start..]).unwrap_or_default())
}

pub(crate) fn check_body_size(len: usize) -> Result<()> {
    if len as u64 <= crate::MAX_MESSAGE_SIZE {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::LimitExceeded,
        format!("message body of {len} bytes exceeds RabbitMQ's limit"),
    )
    .with_context("limit", crate::MAX_MESSAGE_SIZE))
}

/// The seven text properties of `properties` with their AMQP names, in the order of the
/// basic properties: one list for both drivers, so none is forgotten by one of them.
pub(crate) fn text_properties(properties: &Properties) -> [(&Option<String>, &'static str); 7] {
    [
        (&properties.correlation_id, "correlation_id"),
        (&properties.reply_to, "reply_to"),
        (&properties.expiration, "expiration"),
        (&properties.message_id, "message_id"),
        (&properties.message_type, "type"),
        (&properties.user_id, "user_id"),
        (&properties.app_id, "app_id"),
    ]
}

/// A kombu-rs table as an AMQP field table.
pub(crate) fn table_to_amqp(table: &FieldTable) -> Result<AmqpTable> {
    let mut out = AmqpTable::default();
    for (key, value) in table {
        out.insert(short(key, "a header or argument name")?, value_to_amqp(value)?);
    }
    Ok(out)
}

/// A kombu-rs value as an AMQP field value.
pub(crate) fn value_to_amqp(value: &Value) -> Result<AMQPValue> {
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Int(i) => match i32::try_from(*i) {
            Ok(small) => AMQPValue::LongInt(small),
            Err(_) => AMQPValue::LongLongInt(*i),
        },
        Value::Float(f) => AMQPValue::Double(*f),
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.as_slice())),
        Value::Array(items) => {
            let mut array = FieldArray::default();
            for item in items {
                array.push(value_to_amqp(item)?);
            }
            AMQPValue::FieldArray(array)
        }
        Value::Table(t) => AMQPValue::FieldTable(table_to_amqp(t)?),
    })
}

/// An AMQP field table as a kombu-rs table.
pub(crate) fn table_from_amqp(table: &AmqpTable) -> FieldTable {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), value_from_amqp(v)))
        .collect()
}

/// An AMQP field value as a kombu-rs value.
pub(crate) fn value_from_amqp(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => Value::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => Value::Int(*i),
        AMQPValue::Float(f) => Value::Float(f64::from(*f)),
        AMQPValue::Double(f) => Value::Float(*f),
        AMQPValue::DecimalValue(d) => Value::Float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Value::String(text.to_owned()),
            Err(_) => Value::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_from_amqp).collect()),
        AMQPValue::Timestamp(t) => Value::Int(i64::try_from(*t).unwrap_or(i64::MAX)),
        AMQPValue::FieldTable(t) => Value::Table(table_from_amqp(t)),
        AMQPValue::ByteArray(b) => Value::Bytes(b.as_slice().to_vec()),
        AMQPValue::Void => Value::Null,
    }
}

/// One driver's basic-properties type, as the shared conversions below fill and read it:
/// the mapping of kombu-rs's message model to AMQP's properties is written once, each
/// driver only says how its type stores a field. Text properties go by their AMQP names
/// (`content_type`, `content_encoding`, the seven of [`text_properties`], `cluster_id`).
pub(crate) trait BasicPropertiesModel: Default + Sized {
    /// Set text property `name` to `value` (already checked against the 255-byte limit).
    fn set_text(self, name: &'static str, value: &str) -> Result<Self>;
    /// Set `application_headers`.
    fn set_headers(self, headers: &FieldTable) -> Result<Self>;
    /// Set the delivery mode, priority and timestamp that are present.
    fn set_numbers(self, delivery_mode: Option<u8>, priority: Option<u8>, timestamp: Option<u64>) -> Self;
    /// Text property `name`, if present.
    fn text(&self, name: &'static str) -> Option<String>;
    /// `application_headers` (empty if absent).
    fn headers(&self) -> FieldTable;
    /// Delivery mode, priority and timestamp.
    fn numbers(&self) -> (Option<u8>, Option<u8>, Option<u64>);
}

/// The basic properties of `message` in a driver's type, as py-amqp sends them.
pub(crate) fn properties_to<P: BasicPropertiesModel>(message: &RawMessage) -> Result<P> {
    let mut props = P::default();
    let p = &message.properties;
    let cluster_id = p
        .extra
        .get("cluster_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let texts = [
        (message.content_type(), "content_type"),
        (message.content_encoding(), "content_encoding"),
        (cluster_id.as_deref(), "cluster_id"),
    ];
    let others = text_properties(p).map(|(value, name)| (value.as_deref(), name));
    for (value, name) in texts.into_iter().chain(others) {
        if let Some(value) = value {
            check_short(value, name)?;
            props = props.set_text(name, value)?;
        }
    }
    if !message.headers.is_empty() {
        props = props.set_headers(&message.headers)?;
    }
    Ok(props.set_numbers(p.delivery_mode.map(DeliveryMode::as_u8), p.priority, p.timestamp))
}

/// A received body and its properties (in a driver's type) as a [`RawMessage`].
pub(crate) fn message_from<P: BasicPropertiesModel>(body: Vec<u8>, props: &P) -> RawMessage {
    let mut extra = FieldTable::new();
    if let Some(cluster_id) = props.text("cluster_id") {
        extra.insert("cluster_id".into(), Value::String(cluster_id));
    }
    let (delivery_mode, priority, timestamp) = props.numbers();
    RawMessage::new(body)
        .with_content_type(props.text("content_type").as_deref().map(kombu_core::shared_text))
        .with_content_encoding(
            props
                .text("content_encoding")
                .as_deref()
                .map(kombu_core::shared_text),
        )
        .with_headers(props.headers())
        .with_properties(kombu_core::shared_properties(Properties {
            delivery_mode: delivery_mode.map(DeliveryMode::from_u8),
            priority,
            correlation_id: props.text("correlation_id"),
            reply_to: props.text("reply_to"),
            expiration: props.text("expiration"),
            message_id: props.text("message_id"),
            timestamp,
            message_type: props.text("type"),
            user_id: props.text("user_id"),
            app_id: props.text("app_id"),
            extra,
        }))
}

impl BasicPropertiesModel for BasicProperties {
    fn set_text(self, name: &'static str, value: &str) -> Result<Self> {
        let value = short(value, name)?;
        Ok(match name {
            "content_type" => self.with_content_type(value),
            "content_encoding" => self.with_content_encoding(value),
            "cluster_id" => self.with_cluster_id(value),
            "correlation_id" => self.with_correlation_id(value),
            "reply_to" => self.with_reply_to(value),
            "expiration" => self.with_expiration(value),
            "message_id" => self.with_message_id(value),
            "type" => self.with_type(value),
            "user_id" => self.with_user_id(value),
            _ => self.with_app_id(value),
        })
    }

    fn set_headers(self, headers: &FieldTable) -> Result<Self> {
        Ok(self.with_headers(table_to_amqp(headers)?))
    }

    fn set_numbers(self, delivery_mode: Option<u8>, priority: Option<u8>, timestamp: Option<u64>) -> Self {
        let mut props = self;
        if let Some(mode) = delivery_mode {
            props = props.with_delivery_mode(mode);
        }
        if let Some(priority) = priority {
            props = props.with_priority(priority);
        }
        if let Some(ts) = timestamp {
            props = props.with_timestamp(ts);
        }
        props
    }

    fn text(&self, name: &'static str) -> Option<String> {
        let value = match name {
            "content_type" => self.content_type(),
            "content_encoding" => self.content_encoding(),
            "cluster_id" => self.cluster_id(),
            "correlation_id" => self.correlation_id(),
            "reply_to" => self.reply_to(),
            "expiration" => self.expiration(),
            "message_id" => self.message_id(),
            "type" => self.kind(),
            "user_id" => self.user_id(),
            _ => self.app_id(),
        };
        value.as_ref().map(|s| s.as_str().to_owned())
    }

    fn headers(&self) -> FieldTable {
        BasicProperties::headers(self)
            .as_ref()
            .map(table_from_amqp)
            .unwrap_or_default()
    }

    fn numbers(&self) -> (Option<u8>, Option<u8>, Option<u64>) {
        (*self.delivery_mode(), *self.priority(), *self.timestamp())
    }
}

/// The lapin basic properties of `message`.
pub(crate) fn properties_to_amqp(message: &RawMessage) -> Result<BasicProperties> {
    properties_to(message)
}

/// A body and lapin properties as a [`RawMessage`].
pub(crate) fn message_from_amqp(body: Vec<u8>, props: &BasicProperties) -> RawMessage {
    message_from(body, props)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_tags_are_decimal_text() {
        for tag in [0, 7, 10, 1234567890, u64::MAX] {
            assert_eq!(&*delivery_tag_text(tag), tag.to_string());
        }
    }

    #[test]
    fn values_round_trip_through_amqp() {
        let mut nested = FieldTable::new();
        nested.insert("n".into(), Value::Int(-3));
        let cases = vec![
            Value::Null,
            Value::Bool(true),
            Value::Int(7),
            Value::Int(1 << 40),
            Value::Float(2.5),
            Value::String("héllo".into()),
            Value::Bytes(vec![0, 255, 1]),
            Value::Array(vec![Value::Int(1), Value::String("a".into())]),
            Value::Table(nested),
        ];
        for value in cases {
            let back = value_from_amqp(&value_to_amqp(&value).unwrap());
            assert_eq!(back, value);
        }
    }

    #[test]
    fn small_integers_use_py_amqp_types() {
        assert_eq!(value_to_amqp(&Value::Int(5)).unwrap(), AMQPValue::LongInt(5));
        assert_eq!(
            value_to_amqp(&Value::Int(i64::MAX)).unwrap(),
            AMQPValue::LongLongInt(i64::MAX)
        );
    }

    #[test]
    fn non_utf8_long_strings_become_bytes() {
        let v = AMQPValue::LongString(LongString::from(&[0xffu8, 0xfe][..]));
        assert_eq!(value_from_amqp(&v), Value::Bytes(vec![0xff, 0xfe]));
    }

    #[test]
    fn properties_round_trip() {
        let mut message = RawMessage::new("x")
            .with_content_type(Some("application/json".into()))
            .with_content_encoding(Some("utf-8".into()));
        message
            .headers
            .insert("compression".into(), Value::String("application/x-gzip".into()));
        message.properties = Properties {
            delivery_mode: Some(DeliveryMode::Persistent),
            priority: Some(4),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("1500".into()),
            message_id: Some("m".into()),
            timestamp: Some(1_700_000_000),
            message_type: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("a".into()),
            extra: FieldTable::new(),
        }
        .into();
        let props = properties_to_amqp(&message).unwrap();
        let back = message_from_amqp(b"x".to_vec(), &props);
        assert_eq!(back, message);
    }

    #[test]
    fn overlong_names_are_errors_not_panics() {
        let long = "x".repeat(256);
        let err = short(&long, "routing key").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let message = RawMessage::default().with_content_type(Some(long.into()));
        assert!(properties_to_amqp(&message).is_err());
    }
}
