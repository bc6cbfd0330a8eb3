//! Header and argument values.
//!
//! [`Value`] is the one value type for message headers, queue/exchange/binding arguments and
//! unknown message properties. It maps both to AMQP 0-9-1 field tables (typed integers, byte
//! strings, nested tables) and to the JSON that Python Kombu stores in its envelopes, where a
//! byte string is written with Kombu's type tag `{"__type__": "bytes", "__value__": …}`.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ordered map of header or argument names to values (an AMQP field table).
pub type FieldTable = BTreeMap<String, Value>;

/// A header, argument or property value.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// No value (JSON `null`, AMQP void).
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// A floating point number.
    Float(f64),
    /// A UTF-8 string.
    String(String),
    /// A byte string (AMQP long string that is not UTF-8; Kombu JSON `bytes`/`base64` tag).
    Bytes(Vec<u8>),
    /// A list of values.
    Array(Vec<Value>),
    /// A nested table.
    Table(FieldTable),
}

impl Value {
    /// The string, if this is a [`Value::String`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is a [`Value::Int`] (or a float with no fractional part).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Float(f) if f.fract() == 0.0 && f.is_finite() => Some(*f as i64),
            _ => None,
        }
    }

    /// The boolean, if this is a [`Value::Bool`].
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Convert to Kombu's JSON representation.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Bytes(b) => bytes_to_tagged_json(b),
            Value::Array(a) => J::Array(a.iter().map(Value::to_json).collect()),
            Value::Table(t) => J::Object(t.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    /// Convert from JSON, turning Kombu's `bytes`/`base64` type tags back into [`Value::Bytes`].
    /// Other tagged objects (datetime, uuid, …) are kept as tables so they round-trip unchanged.
    pub fn from_json(json: serde_json::Value) -> Value {
        use serde_json::Value as J;
        match json {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            J::String(s) => Value::String(s),
            J::Array(a) => Value::Array(a.into_iter().map(Value::from_json).collect()),
            J::Object(map) => {
                if let Some(bytes) = tagged_json_to_bytes(&map) {
                    return Value::Bytes(bytes);
                }
                Value::Table(map.into_iter().map(|(k, v)| (k, Value::from_json(v))).collect())
            }
        }
    }
}

/// Kombu's JSON for bytes: `bytes` with the UTF-8 text, or `base64` when not UTF-8.
fn bytes_to_tagged_json(bytes: &[u8]) -> serde_json::Value {
    let (tag, value) = match std::str::from_utf8(bytes) {
        Ok(text) => ("bytes", text.to_owned()),
        Err(_) => ("base64", base64::engine::general_purpose::STANDARD.encode(bytes)),
    };
    serde_json::json!({"__type__": tag, "__value__": value})
}

fn tagged_json_to_bytes(map: &serde_json::Map<String, serde_json::Value>) -> Option<Vec<u8>> {
    if map.len() != 2 {
        return None;
    }
    let tag = map.get("__type__")?.as_str()?;
    let value = map.get("__value__")?.as_str()?;
    match tag {
        "bytes" => Some(value.as_bytes().to_vec()),
        "base64" => base64::engine::general_purpose::STANDARD.decode(value).ok(),
        _ => None,
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::String(s) => serializer.serialize_str(s),
            Value::Bytes(b) => bytes_to_tagged_json(b).serialize(serializer),
            Value::Array(a) => a.serialize(serializer),
            Value::Table(t) => t.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Value::from_json)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => f.write_str(s),
            other => write!(f, "{}", other.to_json()),
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident as $conv:ty),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$variant(<$conv>::from(v))
            }
        })*
    };
}

value_from! {
    bool => Bool as bool,
    i8 => Int as i64,
    i16 => Int as i64,
    i32 => Int as i64,
    i64 => Int as i64,
    u8 => Int as i64,
    u16 => Int as i64,
    u32 => Int as i64,
    f32 => Float as f64,
    f64 => Float as f64,
    String => String as String,
    Vec<u8> => Bytes as Vec<u8>,
    FieldTable => Table as FieldTable,
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_owned())
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_kombu_type_tags() {
        let utf8 = Value::Bytes(b"abc".to_vec()).to_json();
        assert_eq!(utf8, serde_json::json!({"__type__": "bytes", "__value__": "abc"}));
        let binary = Value::Bytes(vec![0xff, 0x00]).to_json();
        assert_eq!(
            binary,
            serde_json::json!({"__type__": "base64", "__value__": "/wA="})
        );
        assert_eq!(Value::from_json(binary), Value::Bytes(vec![0xff, 0x00]));
    }

    #[test]
    fn other_tags_round_trip_unchanged() {
        let json = serde_json::json!({"__type__": "datetime", "__value__": "2024-01-01T00:00:00"});
        assert_eq!(Value::from_json(json.clone()).to_json(), json);
    }

    #[test]
    fn numbers_keep_integer_type() {
        assert_eq!(Value::from_json(serde_json::json!(5)), Value::Int(5));
        assert_eq!(Value::from_json(serde_json::json!(5.5)), Value::Float(5.5));
    }
}
