//! kombu-rs messages and values as amiquip's (amq-protocol 1.x) frames.
//!
//! The same wire format as the lapin driver (`crate::convert`): body as it is, basic
//! properties 1:1, headers as `application_headers`, integers as py-amqp writes them (`I`
//! when they fit in 32 bits, else `l`), strings as long strings `S`, bytes as byte arrays `x`.
//! The mapping of the message model to the basic properties, the name checks and the size
//! limit are `crate::convert`'s (this module implements its `BasicPropertiesModel`); what is
//! here is only the type vocabulary, which amq-protocol 1.x spells with plain `String`, `Vec`
//! and `BTreeMap` where lapin has newtypes.
//!
//! One limitation is amiquip's, not ours: amq-protocol 1.x reads a long string as UTF-8, so a
//! header holding a non-UTF-8 long string (which py-amqp never writes for `str`, but a foreign
//! client may) is a malformed frame to amiquip, and it drops the connection.

use amiquip::{AmqpProperties, AmqpValue, FieldTable as AmqpTable};
use kombu_core::{FieldTable, RawMessage, Result, Value};

use crate::convert::{check_short, message_from, properties_to, BasicPropertiesModel};

/// A kombu-rs table as an amiquip field table (every name checked against AMQP's limit).
pub(crate) fn table_to_amqp(table: &FieldTable) -> Result<AmqpTable> {
    let mut out = AmqpTable::new();
    for (key, value) in table {
        check_short(key, "a header or argument name")?;
        out.insert(key.clone(), value_to_amqp(value)?);
    }
    Ok(out)
}

fn value_to_amqp(value: &Value) -> Result<AmqpValue> {
    Ok(match value {
        Value::Null => AmqpValue::Void,
        Value::Bool(b) => AmqpValue::Boolean(*b),
        Value::Int(i) => match i32::try_from(*i) {
            Ok(small) => AmqpValue::LongInt(small),
            Err(_) => AmqpValue::LongLongInt(*i),
        },
        Value::Float(f) => AmqpValue::Double(*f),
        Value::String(s) => AmqpValue::LongString(s.clone()),
        Value::Bytes(b) => AmqpValue::ByteArray(b.clone()),
        Value::Array(items) => AmqpValue::FieldArray(items.iter().map(value_to_amqp).collect::<Result<_>>()?),
        Value::Table(t) => AmqpValue::FieldTable(table_to_amqp(t)?),
    })
}

/// An amiquip field table as a kombu-rs table.
pub(crate) fn table_from_amqp(table: &AmqpTable) -> FieldTable {
    table
        .iter()
        .map(|(k, v)| (k.clone(), value_from_amqp(v)))
        .collect()
}

fn value_from_amqp(value: &AmqpValue) -> Value {
    match value {
        AmqpValue::Boolean(b) => Value::Bool(*b),
        AmqpValue::ShortShortInt(i) => Value::Int(i64::from(*i)),
        AmqpValue::ShortShortUInt(i) => Value::Int(i64::from(*i)),
        AmqpValue::ShortInt(i) => Value::Int(i64::from(*i)),
        AmqpValue::ShortUInt(i) => Value::Int(i64::from(*i)),
        AmqpValue::LongInt(i) => Value::Int(i64::from(*i)),
        AmqpValue::LongUInt(i) => Value::Int(i64::from(*i)),
        AmqpValue::LongLongInt(i) => Value::Int(*i),
        AmqpValue::Float(f) => Value::Float(f64::from(*f)),
        AmqpValue::Double(f) => Value::Float(*f),
        AmqpValue::DecimalValue(d) => Value::Float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AmqpValue::LongString(s) => Value::String(s.clone()),
        AmqpValue::FieldArray(a) => Value::Array(a.iter().map(value_from_amqp).collect()),
        AmqpValue::Timestamp(t) => Value::Int(i64::try_from(*t).unwrap_or(i64::MAX)),
        AmqpValue::FieldTable(t) => Value::Table(table_from_amqp(t)),
        AmqpValue::ByteArray(b) => Value::Bytes(b.clone()),
        AmqpValue::Void => Value::Null,
    }
}

impl BasicPropertiesModel for AmqpProperties {
    fn set_text(self, name: &'static str, value: &str) -> Result<Self> {
        let value = value.to_owned();
        Ok(match name {
            "content_type" => self.with_content_type(value),
            "content_encoding" => self.with_content_encoding(value),
            "cluster_id" => self.with_cluster_id(value),
            "correlation_id" => self.with_correlation_id(value),
            "reply_to" => self.with_reply_to(value),
            "expiration" => self.with_expiration(value),
            "message_id" => self.with_message_id(value),
            "type" => self.with_type_(value),
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
        match name {
            "content_type" => self.content_type(),
            "content_encoding" => self.content_encoding(),
            "cluster_id" => self.cluster_id(),
            "correlation_id" => self.correlation_id(),
            "reply_to" => self.reply_to(),
            "expiration" => self.expiration(),
            "message_id" => self.message_id(),
            "type" => self.type_(),
            "user_id" => self.user_id(),
            _ => self.app_id(),
        }
        .clone()
    }

    fn headers(&self) -> FieldTable {
        AmqpProperties::headers(self)
            .as_ref()
            .map(table_from_amqp)
            .unwrap_or_default()
    }

    fn numbers(&self) -> (Option<u8>, Option<u8>, Option<u64>) {
        (*self.delivery_mode(), *self.priority(), *self.timestamp())
    }
}

/// The amiquip basic properties of `message`, as py-amqp sends them.
pub(crate) fn properties_to_amqp(message: &RawMessage) -> Result<AmqpProperties> {
    properties_to(message)
}

/// A body and amiquip properties as a [`RawMessage`].
pub(crate) fn message_from_amqp(body: Vec<u8>, props: &AmqpProperties) -> RawMessage {
    message_from(body, props)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kombu_core::{DeliveryMode, Properties};

    #[test]
    fn values_round_trip_with_py_amqp_types() {
        let mut nested = FieldTable::new();
        nested.insert("n".into(), Value::Int(-3));
        let mut headers = FieldTable::new();
        for (i, value) in [
            Value::Null,
            Value::Bool(true),
            Value::Int(7),
            Value::Int(1 << 40),
            Value::Float(2.5),
            Value::String("héllo".into()),
            Value::Bytes(vec![0, 255, 1]),
            Value::Array(vec![Value::Int(1), Value::String("a".into())]),
            Value::Table(nested),
        ]
        .into_iter()
        .enumerate()
        {
            headers.insert(format!("h{i}"), value);
        }
        let amqp = table_to_amqp(&headers).unwrap();
        assert_eq!(amqp.get("h2"), Some(&AmqpValue::LongInt(7)));
        assert_eq!(amqp.get("h3"), Some(&AmqpValue::LongLongInt(1 << 40)));
        assert_eq!(table_from_amqp(&amqp), headers);
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
        assert_eq!(message_from_amqp(b"x".to_vec(), &props), message);
    }

    #[test]
    fn overlong_names_are_errors_not_panics() {
        let message = RawMessage::default().with_content_type(Some("x".repeat(256).into()));
        let err = properties_to_amqp(&message).unwrap_err();
        assert_eq!(err.kind(), kombu_core::ErrorKind::InvalidArgument);
    }
}
