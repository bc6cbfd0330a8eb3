//! Kombu's JSON type tags.
//!
//! Python Kombu's JSON encoder writes values JSON lacks as `{"__type__": T, "__value__": V}`:
//! `datetime`, `date`, `time` (ISO 8601 text), `decimal` (text), `uuid` (`{"hex": …}`), `bytes`
//! (UTF-8 text) and `base64`. When decoding, kombu-rs replaces every tagged object by its
//! natural JSON form ([`untag`]) so plain serde types (`String`, `uuid::Uuid`, `chrono` types
//! that parse ISO text, …) just work. To *send* tagged values that Python decodes into
//! `datetime`, `Decimal`, `UUID` or `bytes`, wrap them in the types of this module:
//!
//! ```
//! use kombu::json::{DateTime, Uuid};
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Task { eta: DateTime, id: Uuid }
//! let task = Task { eta: DateTime("2024-05-01T12:00:00+00:00".into()), id: Uuid(uuid::Uuid::nil()) };
//! let json = serde_json::to_string(&task).unwrap();
//! assert_eq!(json, r#"{"eta":{"__type__":"datetime","__value__":"2024-05-01T12:00:00+00:00"},"id":{"__type__":"uuid","__value__":{"hex":"00000000000000000000000000000000"}}}"#);
//! // They also decode from plain values:
//! let back: Task = serde_json::from_str(r#"{"eta": "2024-05-01T12:00:00", "id": "00000000-0000-0000-0000-000000000000"}"#).unwrap();
//! assert_eq!(back.eta.0, "2024-05-01T12:00:00");
//! ```

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Cheap pre-check: could `data` contain a Kombu type tag? (A vectorized substring search:
/// it runs on every decoded JSON body.)
pub(crate) fn may_contain_tags(data: &[u8]) -> bool {
    memchr::memmem::find(data, b"__type__").is_some()
}

/// Replace every Kombu-tagged object in `value` by its natural JSON form: datetime/date/time/
/// decimal/bytes → string, uuid → hyphenated string, base64 → the decoded text if UTF-8, else
/// an array of byte values. Unknown tags are left as they are.
pub fn untag(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Array(items) => items.iter_mut().for_each(untag),
        serde_json::Value::Object(map) => {
            if map.len() == 2 {
                if let (Some(serde_json::Value::String(tag)), Some(inner)) =
                    (map.get("__type__"), map.get("__value__"))
                {
                    if let Some(plain) = untag_one(tag, inner) {
                        *value = plain;
                        return;
                    }
                }
            }
            map.values_mut().for_each(untag);
        }
        _ => {}
    }
}

fn untag_one(tag: &str, inner: &serde_json::Value) -> Option<serde_json::Value> {
    match tag {
        "datetime" | "date" | "time" | "decimal" | "bytes" => inner.as_str().map(|s| s.into()),
        "uuid" => {
            let hex = inner
                .get("hex")
                .and_then(|h| h.as_str())
                .or_else(|| inner.as_str())?;
            let id = uuid::Uuid::parse_str(hex).ok()?;
            Some(id.hyphenated().to_string().into())
        }
        "base64" => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(inner.as_str()?)
                .ok()?;
            Some(match String::from_utf8(raw) {
                Ok(text) => text.into(),
                Err(e) => e.into_bytes().into_iter().map(serde_json::Value::from).collect(),
            })
        }
        _ => None,
    }
}

fn tagged<S: Serializer>(serializer: S, tag: &str, value: impl Serialize) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(2))?;
    map.serialize_entry("__type__", tag)?;
    map.serialize_entry("__value__", &value)?;
    map.end()
}

/// Accepts a tagged object or a plain value.
#[derive(Deserialize)]
#[serde(untagged)]
enum MaybeTagged {
    Tagged {
        #[serde(rename = "__type__")]
        _tag: String,
        #[serde(rename = "__value__")]
        value: serde_json::Value,
    },
    Plain(serde_json::Value),
}

impl MaybeTagged {
    fn into_text(self) -> Option<String> {
        match self {
            MaybeTagged::Tagged { value, .. } | MaybeTagged::Plain(value) => match value {
                serde_json::Value::String(s) => Some(s),
                serde_json::Value::Object(o) => o.get("hex").and_then(|h| h.as_str()).map(str::to_owned),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            },
        }
    }
}

macro_rules! text_tag {
    ($(#[$doc:meta])* $name:ident, $tag:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub String);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                tagged(serializer, $tag, &self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                MaybeTagged::deserialize(deserializer)?
                    .into_text()
                    .map($name)
                    .ok_or_else(|| serde::de::Error::custom(concat!("expected a ", $tag)))
            }
        }
    };
}

text_tag!(
    /// An ISO 8601 date-time, sent as Kombu's `datetime` tag (Python gets a `datetime`).
    DateTime,
    "datetime"
);
text_tag!(
    /// An ISO 8601 date, sent as Kombu's `date` tag.
    Date,
    "date"
);
text_tag!(
    /// An ISO 8601 time, sent as Kombu's `time` tag.
    Time,
    "time"
);
text_tag!(
    /// A decimal number as text, sent as Kombu's `decimal` tag (Python gets a `Decimal`).
    Decimal,
    "decimal"
);

/// A UUID, sent as Kombu's `uuid` tag (Python gets a `uuid.UUID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid(pub uuid::Uuid);

impl Serialize for Uuid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        tagged(
            serializer,
            "uuid",
            serde_json::json!({"hex": self.0.simple().to_string()}),
        )
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = MaybeTagged::deserialize(deserializer)?
            .into_text()
            .ok_or_else(|| serde::de::Error::custom("expected a uuid"))?;
        uuid::Uuid::parse_str(&text)
            .map(Uuid)
            .map_err(serde::de::Error::custom)
    }
}

/// Bytes, sent as Kombu's `bytes` tag (UTF-8) or `base64` tag (Python gets `bytes`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => tagged(serializer, "bytes", text),
            Err(_) => tagged(
                serializer,
                "base64",
                base64::engine::general_purpose::STANDARD.encode(&self.0),
            ),
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match MaybeTagged::deserialize(deserializer)? {
            MaybeTagged::Tagged { _tag, value } if _tag == "base64" => {
                let text = value
                    .as_str()
                    .ok_or_else(|| serde::de::Error::custom("expected base64 text"))?;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map(Bytes)
                    .map_err(serde::de::Error::custom)
            }
            MaybeTagged::Tagged { value, .. } | MaybeTagged::Plain(value) => match value {
                serde_json::Value::String(s) => Ok(Bytes(s.into_bytes())),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .map(Bytes)
                    .ok_or_else(|| serde::de::Error::custom("expected bytes")),
                _ => Err(serde::de::Error::custom("expected bytes")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untag_python_values() {
        // As written by Python Kombu's JSON encoder.
        let mut v = serde_json::json!({
            "when": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05.000006+00:00"},
            "id": {"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}},
            "price": {"__type__": "decimal", "__value__": "1.10"},
            "raw": {"__type__": "base64", "__value__": "/wA="},
            "nested": [{"__type__": "bytes", "__value__": "abc"}],
            "other": {"__type__": "custom", "__value__": 1},
        });
        untag(&mut v);
        assert_eq!(v["when"], "2024-01-02T03:04:05.000006+00:00");
        assert_eq!(v["id"], "12345678-1234-5678-1234-567812345678");
        assert_eq!(v["price"], "1.10");
        assert_eq!(v["raw"], serde_json::json!([255, 0]));
        assert_eq!(v["nested"][0], "abc");
        assert_eq!(v["other"]["__type__"], "custom");
    }

    #[test]
    fn bytes_round_trip() {
        let b = Bytes(vec![0xff, 1]);
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"__type__": "base64", "__value__": "/wE="})
        );
        assert_eq!(serde_json::from_value::<Bytes>(json).unwrap(), b);
    }
}
