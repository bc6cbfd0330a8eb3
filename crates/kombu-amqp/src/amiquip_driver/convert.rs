//! kombu-rs messages and values as amiquip's (amq-protocol 1.x) frames.
//!
//! The same wire format as the lapin driver (`crate::convert`): body as it is, basic
//! properties 1:1, headers as `application_headers`, integers as py-amqp writes them (`I`
//! when they fit in 32 bits, else `l`), strings as long strings `S`, bytes as byte arrays `x`.
//! The name checks, the list of text properties and the size limit are `crate::convert`'s;
//! what differs is only the type vocabulary, which amq-protocol 1.x spells with plain
//! `String`, `Vec` and `BTreeMap` where lapin has newtypes.
//!
//! One limitation is amiquip's, not ours: amq-protocol 1.x reads a long string as UTF-8, so a
//! header holding a non-UTF-8 long string (which py-amqp never writes for `str`, but a foreign
//! client may) is a malformed frame to amiquip, and it drops the connection.

use amiquip::{AmqpProperties, AmqpValue, FieldTable as AmqpTable};
use kombu_core::{DeliveryMode, FieldTable, Properties, RawMessage, Result, Value};

use crate::convert::{check_short, text_properties};

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

/// The basic properties of `message`, as py-amqp sends them.
pub(crate) fn properties_to_amqp(message: &RawMessage) -> Result<AmqpProperties> {
    let text = |value: &str, what: &'static str| check_short(value, what).map(|()| value.to_owned());
    let mut props = AmqpProperties::default();
    if let Some(ct) = &message.content_type {
        props = props.with_content_type(text(ct, "content_type")?);
    }
    if let Some(ce) = &message.content_encoding {
        props = props.with_content_encoding(text(ce, "content_encoding")?);
    }
    if !message.headers.is_empty() {
        props = props.with_headers(table_to_amqp(&message.headers)?);
    }
    let p = &message.properties;
    if let Some(mode) = p.delivery_mode {
        props = props.with_delivery_mode(mode.as_u8());
    }
    if let Some(priority) = p.priority {
        props = props.with_priority(priority);
    }
    for (value, name) in text_properties(p) {
        let Some(value) = value else { continue };
        let value = text(value, name)?;
        props = match name {
            "correlation_id" => props.with_correlation_id(value),
            "reply_to" => props.with_reply_to(value),
            "expiration" => props.with_expiration(value),
            "message_id" => props.with_message_id(value),
            "type" => props.with_type_(value),
            "user_id" => props.with_user_id(value),
            _ => props.with_app_id(value),
        };
    }
    if let Some(ts) = p.timestamp {
        props = props.with_timestamp(ts);
    }
    if let Some(cluster_id) = p.extra.get("cluster_id").and_then(Value::as_str) {
        props = props.with_cluster_id(text(cluster_id, "cluster_id")?);
    }
    Ok(props)
}

/// A received body and its properties as a [`RawMessage`].
pub(crate) fn message_from_amqp(body: Vec<u8>, props: &AmqpProperties) -> RawMessage {
    let mut extra = FieldTable::new();
    if let Some(cluster_id) = props.cluster_id() {
        extra.insert("cluster_id".into(), Value::String(cluster_id.clone()));
    }
    RawMessage {
        body: body.into(),
        content_type: props.content_type().clone(),
        content_encoding: props.content_encoding().clone(),
        headers: props.headers().as_ref().map(table_from_amqp).unwrap_or_default(),
        properties: Properties {
            delivery_mode: props.delivery_mode().map(DeliveryMode::from_u8),
            priority: *props.priority(),
            correlation_id: props.correlation_id().clone(),
            reply_to: props.reply_to().clone(),
            expiration: props.expiration().clone(),
            message_id: props.message_id().clone(),
            timestamp: *props.timestamp(),
            message_type: props.type_().clone(),
            user_id: props.user_id().clone(),
            app_id: props.app_id().clone(),
            extra,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut message = RawMessage {
            body: "x".into(),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            ..Default::default()
        };
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
        };
        let props = properties_to_amqp(&message).unwrap();
        assert_eq!(message_from_amqp(b"x".to_vec(), &props), message);
    }

    #[test]
    fn overlong_names_are_errors_not_panics() {
        let message = RawMessage {
            content_type: Some("x".repeat(256)),
            ..Default::default()
        };
        let err = properties_to_amqp(&message).unwrap_err();
        assert_eq!(err.kind(), kombu_core::ErrorKind::InvalidArgument);
    }
}
