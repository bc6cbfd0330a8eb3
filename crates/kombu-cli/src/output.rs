//! Rendering: aligned text tables, messages as readable text or as one JSON object, and the
//! reverse direction — command-line text to header values.

use std::fmt::Write as _;

use base64::Engine as _;
use kombu::{DeliveryInfo, FieldTable, Message, Properties, Value};
use serde_json::{json, Map, Value as Json};

/// Command-line text as a header or argument value: JSON if it parses as JSON (`3`, `true`,
/// `"quoted"`, `[1, 2]`), else the text itself as a string.
pub(crate) fn value_from_text(text: &str) -> Value {
    match serde_json::from_str::<Json>(text) {
        Ok(json) => Value::from_json(json),
        Err(_) => Value::String(text.to_owned()),
    }
}

/// `KEY=VALUE` pairs as a field table (values per [`value_from_text`]).
pub(crate) fn field_table(pairs: &[(String, String)]) -> FieldTable {
    pairs
        .iter()
        .map(|(key, value)| (key.clone(), value_from_text(value)))
        .collect()
}

/// Rows (the first is the header) as lines with left-aligned columns two spaces apart.
pub(crate) fn table(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[c].saturating_sub(cell.chars().count());
                    let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
                }
            }
            line
        })
        .collect()
}

/// A body as `(encoding, text)`: `utf-8` and the text when it is UTF-8, else `base64`.
pub(crate) fn body_text(payload: &[u8]) -> (&'static str, String) {
    match std::str::from_utf8(payload) {
        Ok(text) => ("utf-8", text.to_owned()),
        Err(_) => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(payload),
        ),
    }
}

fn table_json(table: &FieldTable) -> Json {
    Json::Object(table.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

/// The basic properties that are set, with AMQP's names (`type` for the message type).
pub(crate) fn properties_json(p: &Properties) -> Json {
    let mut map = Map::new();
    let mut put = |key: &str, value: Option<Json>| {
        if let Some(value) = value {
            map.insert(key.to_owned(), value);
        }
    };
    put("delivery_mode", p.delivery_mode.map(|m| json!(m.as_u8())));
    put("priority", p.priority.map(|n| json!(n)));
    put("correlation_id", p.correlation_id.as_ref().map(|s| json!(s)));
    put("reply_to", p.reply_to.as_ref().map(|s| json!(s)));
    put("expiration", p.expiration.as_ref().map(|s| json!(s)));
    put("message_id", p.message_id.as_ref().map(|s| json!(s)));
    put("timestamp", p.timestamp.map(|n| json!(n)));
    put("type", p.message_type.as_ref().map(|s| json!(s)));
    put("user_id", p.user_id.as_ref().map(|s| json!(s)));
    put("app_id", p.app_id.as_ref().map(|s| json!(s)));
    for (key, value) in &p.extra {
        map.insert(key.clone(), value.to_json());
    }
    Json::Object(map)
}

/// Kombu's `delivery_info`, plus the queue and consumer tag.
pub(crate) fn delivery_info_json(info: &DeliveryInfo) -> Json {
    json!({
        "exchange": info.exchange(),
        "routing_key": info.routing_key(),
        "redelivered": info.redelivered(),
        "delivery_tag": info.delivery_tag(),
        "consumer_tag": info.consumer_tag(),
        "queue": info.queue(),
    })
}

/// One message as the JSON object `consume --json` prints. `payload` is the decompressed body.
pub(crate) fn message_json(message: &Message, payload: &[u8]) -> Json {
    let (encoding, body) = body_text(payload);
    json!({
        "queue": message.delivery_info().queue(),
        "body": body,
        "body_encoding": encoding,
        "content_type": message.content_type(),
        "content_encoding": message.content_encoding(),
        "headers": table_json(message.headers()),
        "properties": properties_json(message.properties()),
        "delivery_info": delivery_info_json(message.delivery_info()),
    })
}

/// `k=v, k2=v2` (strings bare, other values as JSON), or `-` when empty.
fn pairs_text(pairs: impl IntoIterator<Item = (String, String)>) -> String {
    let text: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.join(", ")
    }
}

/// The body for people: structured content types decoded to pretty JSON, text as is, binary
/// summarised with its base64.
fn readable_body(message: &Message, payload: &[u8]) -> String {
    let structured = matches!(
        message.content_type(),
        Some("application/json" | "application/x-msgpack" | "application/x-yaml")
    );
    if structured {
        if let Ok(value) = message.decode_value() {
            if let Ok(text) = serde_json::to_string_pretty(&value) {
                return text;
            }
        }
    }
    match body_text(payload) {
        ("utf-8", text) => text,
        (_, base64) => format!("<{} bytes of binary data; base64: {base64}>", payload.len()),
    }
}

/// One message as readable text (ends with a blank line). `index` counts from 1.
pub(crate) fn message_text(index: u64, message: &Message, payload: &[u8]) -> String {
    let info = message.delivery_info();
    let exchange = if info.exchange().is_empty() {
        "\"\" (default exchange)".to_owned()
    } else {
        info.exchange().to_owned()
    };
    let content = match (message.content_type(), message.content_encoding()) {
        (Some(t), Some(e)) => format!("{t} ({e})"),
        (Some(t), None) => t.to_owned(),
        (None, _) => "- (raw bytes)".to_owned(),
    };
    let headers = pairs_text(message.headers().iter().map(|(k, v)| (k.clone(), v.to_string())));
    let properties = match properties_json(message.properties()) {
        Json::Object(map) => pairs_text(map.into_iter().map(|(k, v)| {
            let text = match v {
                Json::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })),
        _ => "-".to_owned(),
    };
    let mut out = String::new();
    let _ = writeln!(out, "--- message {index} from queue {:?}", info.queue());
    let _ = writeln!(out, "exchange:     {exchange}");
    let _ = writeln!(out, "routing key:  {}", info.routing_key());
    let _ = writeln!(
        out,
        "delivery:     tag {}, redelivered: {}",
        info.delivery_tag(),
        if info.redelivered() { "yes" } else { "no" }
    );
    let _ = writeln!(out, "content:      {content}");
    let _ = writeln!(out, "headers:      {headers}");
    let _ = writeln!(out, "properties:   {properties}");
    let _ = writeln!(out, "body:\n{}\n", readable_body(message, payload));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_json_when_they_parse() {
        assert_eq!(value_from_text("3"), Value::Int(3));
        assert_eq!(value_from_text("true"), Value::Bool(true));
        assert_eq!(value_from_text("\"3\""), Value::String("3".into()));
        assert_eq!(value_from_text("cli"), Value::String("cli".into()));
        assert_eq!(value_from_text("007"), Value::String("007".into()));
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["queue".to_owned(), "messages".to_owned()],
            vec!["a-long-name".to_owned(), "3".to_owned()],
        ];
        assert_eq!(table(&rows), vec!["queue        messages", "a-long-name  3"]);
    }

    #[test]
    fn binary_bodies_are_base64() {
        assert_eq!(body_text(b"hi"), ("utf-8", "hi".to_owned()));
        assert_eq!(body_text(&[0xff, 0x00]), ("base64", "/wA=".to_owned()));
    }
}
