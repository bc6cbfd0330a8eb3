//! Kombu's JSON message envelope, as every virtual transport stores it.
//!
//! ```json
//! {"body": "eyJoZWxsbyI6ICJ3b3JsZCJ9", "content-encoding": "utf-8",
//!  "content-type": "application/json", "headers": {},
//!  "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "q"},
//!                 "priority": 0, "body_encoding": "base64",
//!                 "delivery_tag": "1f6927ba-ea7e-4da1-8bc9-112ae15d7da1"}}
//! ```
//!
//! [`Envelope::to_json`] writes it the way Python's `json.dumps` does (`", "` and `": "`
//! separators, non-ASCII escaped as `\uXXXX`), so stored messages look the same whichever side
//! wrote them. [`Envelope::from_json`] accepts anything Kombu 4.x/5.x writes, honours
//! `body_encoding` per message, and returns a typed [`ErrorKind::Decode`] error for malformed
//! input instead of panicking.

use std::io;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::message::{shared_properties, shared_text, DeliveryMode, Properties, RawMessage};
use crate::value::{FieldTable, Value};

/// How the body is stored inside the envelope (`properties.body_encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyEncoding {
    /// Standard, padded base64 (Kombu's default).
    #[default]
    Base64,
    /// The body as a JSON string (Kombu's `body_encoding=None`/`utf-8`); a body that is not
    /// UTF-8 is written with Kombu's `bytes` type tag.
    Utf8,
}

/// A message with the routing facts a virtual transport stores alongside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The message itself.
    pub message: RawMessage,
    /// `properties.delivery_info.exchange` (shared with the deliveries made from it).
    pub(crate) exchange: Arc<str>,
    /// `properties.delivery_info.routing_key` (shared likewise).
    pub(crate) routing_key: Arc<str>,
    /// `properties.delivery_tag`: a fresh uuid4 minted at publish, travelling with the message.
    pub(crate) delivery_tag: Arc<str>,
    /// Set when the message is restored or requeued.
    pub redelivered: bool,
    /// How the body is encoded when written as JSON.
    pub body_encoding: BodyEncoding,
}

impl Envelope {
    /// Wrap a message published to `exchange` with `routing_key`, minting a fresh uuid4
    /// delivery tag as Kombu's `basic_publish` does.
    pub fn new(message: RawMessage, exchange: &str, routing_key: &str) -> Self {
        Envelope::with_names(message, Arc::from(exchange), Arc::from(routing_key))
    }

    /// [`Envelope::new`] sharing the exchange and routing key (no copies).
    pub fn with_names(message: RawMessage, exchange: Arc<str>, routing_key: Arc<str>) -> Self {
        Envelope {
            message,
            exchange,
            routing_key,
            delivery_tag: new_delivery_tag(),
            redelivered: false,
            body_encoding: BodyEncoding::Base64,
        }
    }

    /// `properties.delivery_info.exchange`: the exchange it was published to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// `properties.delivery_info.routing_key`: the routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// `properties.delivery_tag`: the uuid4 minted at publish.
    pub fn delivery_tag(&self) -> &str {
        &self.delivery_tag
    }

    /// Kombu's `_get_message_priority`: the priority clamped to `0..=9` (missing → 0).
    pub fn priority(&self) -> u8 {
        self.message.properties.priority.unwrap_or(0).min(9)
    }

    /// Serialize as Kombu's JSON envelope.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.message.body.len() * 4 / 3 + 384);
        let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
        // Serializing owned, well-formed data into a Vec cannot fail.
        let _ = self.serialize(&mut ser);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Parse a stored envelope. Malformed input is an [`ErrorKind::Decode`] error.
    pub fn from_json(data: &[u8]) -> Result<Envelope> {
        let raw: RawEnvelope<'_> = serde_json::from_slice(data)
            .map_err(|e| Error::new(ErrorKind::Decode, "malformed message envelope").with_source(e))?;
        raw.into_envelope()
    }
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let msg = &self.message;
        let mut map = serializer.serialize_map(None)?;
        match self.body_encoding {
            BodyEncoding::Base64 => map.serialize_entry(
                "body",
                &base64::engine::general_purpose::STANDARD.encode(&msg.body),
            )?,
            BodyEncoding::Utf8 => match std::str::from_utf8(&msg.body) {
                Ok(text) => map.serialize_entry("body", text)?,
                Err(_) => map.serialize_entry("body", &Value::Bytes(msg.body.to_vec()))?,
            },
        }
        map.serialize_entry("content-encoding", &msg.content_encoding.as_deref())?;
        map.serialize_entry("content-type", &msg.content_type.as_deref())?;
        map.serialize_entry("headers", &msg.headers)?;
        map.serialize_entry("properties", &PropertiesOut(self))?;
        if self.redelivered {
            map.serialize_entry("redelivered", &true)?;
        }
        map.end()
    }
}

struct PropertiesOut<'a>(&'a Envelope);

impl Serialize for PropertiesOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let env = self.0;
        let p = &env.message.properties;
        let mut map = serializer.serialize_map(None)?;
        let strings = [
            ("correlation_id", &p.correlation_id),
            ("reply_to", &p.reply_to),
            ("message_id", &p.message_id),
            ("type", &p.message_type),
            ("user_id", &p.user_id),
            ("app_id", &p.app_id),
            ("expiration", &p.expiration),
        ];
        for (key, value) in strings {
            if let Some(v) = value {
                map.serialize_entry(key, v)?;
            }
        }
        if let Some(ts) = p.timestamp {
            map.serialize_entry("timestamp", &ts)?;
        }
        for (k, v) in &p.extra {
            map.serialize_entry(k, v)?;
        }
        map.serialize_entry("delivery_mode", &p.delivery_mode.unwrap_or_default().as_u8())?;
        map.serialize_entry(
            "delivery_info",
            &DeliveryInfoOut {
                exchange: &env.exchange,
                routing_key: &env.routing_key,
                redelivered: env.redelivered,
            },
        )?;
        map.serialize_entry("priority", &p.priority.unwrap_or(0))?;
        match env.body_encoding {
            BodyEncoding::Base64 => map.serialize_entry("body_encoding", "base64")?,
            BodyEncoding::Utf8 => map.serialize_entry("body_encoding", &None::<&str>)?,
        }
        map.serialize_entry("delivery_tag", &*env.delivery_tag)?;
        map.end()
    }
}

struct DeliveryInfoOut<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    redelivered: bool,
}

impl Serialize for DeliveryInfoOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("exchange", self.exchange)?;
        map.serialize_entry("routing_key", self.routing_key)?;
        if self.redelivered {
            map.serialize_entry("redelivered", &true)?;
        }
        map.end()
    }
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(default)]
    body: serde_json::Value,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(default)]
    headers: Option<FieldTable>,
    #[serde(default)]
    properties: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    redelivered: Option<serde_json::Value>,
    #[serde(skip)]
    _marker: std::marker::PhantomData<&'a ()>,
}

fn truthy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        _ => false,
    }
}

fn string_prop(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

impl RawEnvelope<'_> {
    fn into_envelope(self) -> Result<Envelope> {
        let decode_err = |msg: &str| Error::new(ErrorKind::Decode, msg.to_owned());
        let mut props_map = self.properties.unwrap_or_default();
        let mut properties = Properties::default();
        let mut exchange: Arc<str> = Arc::from("");
        let mut routing_key: Arc<str> = Arc::from("");
        let mut delivery_tag = None;
        let mut redelivered = self.redelivered.as_ref().is_some_and(truthy);
        let mut body_encoding = None;
        for (key, value) in std::mem::take(&mut props_map) {
            match key.as_str() {
                "delivery_info" => {
                    if let serde_json::Value::Object(info) = value {
                        if let Some(e) = info.get("exchange").and_then(|v| v.as_str()) {
                            exchange = Arc::from(e);
                        }
                        if let Some(r) = info.get("routing_key").and_then(|v| v.as_str()) {
                            routing_key = Arc::from(r);
                        }
                        if info.get("redelivered").is_some_and(truthy) {
                            redelivered = true;
                        }
                    }
                }
                "delivery_tag" => delivery_tag = string_prop(value),
                "body_encoding" => body_encoding = Some(string_prop(value)),
                "delivery_mode" => {
                    properties.delivery_mode = match &value {
                        serde_json::Value::Number(n) => n.as_u64().map(|m| DeliveryMode::from_u8(m as u8)),
                        serde_json::Value::String(s) if s == "transient" => Some(DeliveryMode::Transient),
                        serde_json::Value::String(_) => Some(DeliveryMode::Persistent),
                        _ => None,
                    }
                }
                "priority" => {
                    // Kombu: int(priority), invalid → 0; clamp happens at routing time.
                    properties.priority = match &value {
                        serde_json::Value::Number(n) => {
                            Some(n.as_f64().map_or(0, |f| f.clamp(0.0, 255.0) as u8))
                        }
                        serde_json::Value::String(s) => {
                            Some(s.trim().parse::<i64>().map_or(0, |p| p.clamp(0, 255) as u8))
                        }
                        _ => None,
                    }
                }
                "correlation_id" => properties.correlation_id = string_prop(value),
                "reply_to" => properties.reply_to = string_prop(value),
                "message_id" => properties.message_id = string_prop(value),
                "type" => properties.message_type = string_prop(value),
                "user_id" => properties.user_id = string_prop(value),
                "app_id" => properties.app_id = string_prop(value),
                "expiration" => properties.expiration = string_prop(value),
                "timestamp" => properties.timestamp = value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64),
                _ => {
                    properties.extra.insert(key, Value::from_json(value));
                }
            }
        }
        let encoding = match body_encoding.flatten() {
            Some(e) if e.eq_ignore_ascii_case("base64") => BodyEncoding::Base64,
            Some(e) if e.eq_ignore_ascii_case("utf-8") || e.is_empty() => BodyEncoding::Utf8,
            None => BodyEncoding::Utf8,
            Some(other) => {
                return Err(decode_err("unsupported body_encoding").with_context("body_encoding", other))
            }
        };
        let body: Bytes = match (encoding, self.body) {
            (_, serde_json::Value::Null) => Bytes::new(),
            (BodyEncoding::Base64, serde_json::Value::String(s)) => base64::engine::general_purpose::STANDARD
                .decode(s.trim_end())
                .map_err(|e| decode_err("body is not valid base64").with_source(e))?
                .into(),
            (BodyEncoding::Utf8, serde_json::Value::String(s)) => Bytes::from(s.into_bytes()),
            (_, obj @ serde_json::Value::Object(_)) => match Value::from_json(obj) {
                Value::Bytes(b) => b.into(),
                _ => return Err(decode_err("body is an object that is not a Kombu bytes tag")),
            },
            (_, _) => return Err(decode_err("body must be a string")),
        };
        Ok(Envelope {
            message: RawMessage {
                body,
                content_type: self.content_type.as_deref().map(shared_text),
                content_encoding: self.content_encoding.as_deref().map(shared_text),
                headers: self.headers.unwrap_or_default(),
                properties: shared_properties(properties),
            },
            exchange,
            routing_key,
            delivery_tag: delivery_tag.map_or_else(new_delivery_tag, Arc::from),
            redelivered,
            body_encoding: encoding,
        })
    }
}

/// A fresh uuid4 as text (the shared string itself is the only allocation: this runs per
/// publish).
pub fn new_delivery_tag() -> Arc<str> {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    Arc::from(&*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf))
}

/// A `serde_json` formatter that writes what Python's `json.dumps` writes by default:
/// `", "` and `": "` separators and `\uXXXX` escapes for every non-ASCII character.
#[derive(Debug, Clone, Copy, Default)]
pub struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.is_ascii() {
            return writer.write_all(fragment.as_bytes());
        }
        let mut buf = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut buf) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Serialize any value as Python's `json.dumps` would (see [`PythonFormatter`]).
pub fn to_python_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value
        .serialize(&mut ser)
        .map_err(|e| Error::new(ErrorKind::Encode, "JSON serialization failed").with_source(e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        let mut msg = RawMessage {
            body: Bytes::from_static(br#"{"hello": "world"}"#),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            ..RawMessage::default()
        };
        msg.headers.insert("h".into(), Value::Int(1));
        msg.properties_mut().correlation_id = Some("cid".into());
        msg.properties_mut().priority = Some(5);
        msg.properties_mut().expiration = Some("10000".into());
        msg.properties_mut().delivery_mode = Some(DeliveryMode::Persistent);
        Envelope::new(msg, "exd", "rk1")
    }

    #[test]
    fn writes_python_style_json() {
        let mut env = sample();
        env.delivery_tag = "1f6927ba-ea7e-4da1-8bc9-112ae15d7da1".into();
        assert_eq!(
            env.to_json(),
            r#"{"body": "eyJoZWxsbyI6ICJ3b3JsZCJ9", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"h": 1}, "properties": {"correlation_id": "cid", "expiration": "10000", "delivery_mode": 2, "delivery_info": {"exchange": "exd", "routing_key": "rk1"}, "priority": 5, "body_encoding": "base64", "delivery_tag": "1f6927ba-ea7e-4da1-8bc9-112ae15d7da1"}}"#
        );
    }

    #[test]
    fn round_trips() {
        let env = sample();
        let back = Envelope::from_json(env.to_json().as_bytes()).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn reads_what_python_kombu_wrote() {
        // Captured from kombu 5.7 on Redis (MONITOR).
        let python = r#"{"body": "eyJoZWxsbyI6ICJ3b3JsZCJ9", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"h": 1}, "properties": {"correlation_id": "cid", "reply_to": "rq", "delivery_mode": 2, "expiration": "10000", "delivery_info": {"exchange": "exd", "routing_key": "rk1"}, "priority": 5, "body_encoding": "base64", "delivery_tag": "1f6927ba-ea7e-4da1-8bc9-112ae15d7da1"}}"#;
        let env = Envelope::from_json(python.as_bytes()).unwrap();
        assert_eq!(&env.message.body[..], br#"{"hello": "world"}"#);
        assert_eq!(env.message.properties.reply_to.as_deref(), Some("rq"));
        assert_eq!(&*env.exchange, "exd");
        assert_eq!(&*env.routing_key, "rk1");
        assert_eq!(env.priority(), 5);
        assert_eq!(&*env.delivery_tag, "1f6927ba-ea7e-4da1-8bc9-112ae15d7da1");
        assert!(!env.redelivered);
    }

    #[test]
    fn utf8_body_encoding_and_redelivered() {
        let python = r#"{"body": "caf\u00e9", "content-type": "text/plain", "properties": {"body_encoding": null, "delivery_info": {"exchange": "", "routing_key": "q"}, "delivery_tag": "t"}, "redelivered": true}"#;
        let env = Envelope::from_json(python.as_bytes()).unwrap();
        assert_eq!(&env.message.body[..], "café".as_bytes());
        assert!(env.redelivered);
        assert!(env.to_json().contains(r#""body": "caf\u00e9""#));
    }

    #[test]
    fn malformed_envelopes_are_decode_errors() {
        for bad in [
            &b"not json"[..],
            br#"{"body": "!!notbase64", "properties": {"body_encoding": "base64"}}"#,
            br#"{"body": 5, "properties": {}}"#,
            br#"{"body": "x", "properties": {"body_encoding": "rot13"}}"#,
            br#"[1, 2]"#,
        ] {
            let err = Envelope::from_json(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Decode, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn priority_is_clamped_and_invalid_is_zero() {
        let env = |p: &str| {
            Envelope::from_json(format!(r#"{{"body": "", "properties": {{"priority": {p}}}}}"#).as_bytes())
                .unwrap()
                .priority()
        };
        assert_eq!(env("42"), 9);
        assert_eq!(env("-3"), 0);
        assert_eq!(env("\"x\""), 0);
    }
}
