//! Serializers, by name and content type, as Kombu's `kombu.serialization` registry.
//!
//! | name | content type | content encoding | feature |
//! |---|---|---|---|
//! | `json` (default) | `application/json` | `utf-8` | always |
//! | `msgpack` | `application/x-msgpack` | `binary` | `msgpack` |
//! | `yaml` | `application/x-yaml` | `utf-8` | `yaml` |
//! | `raw` | `application/data` | `binary` | always |
//! | `text` | `text/plain` | `utf-8` | always |
//!
//! JSON reads and writes Kombu's type tags (`{"__type__": "datetime", "__value__": …}`, see
//! [`crate::json`]), so Python-sent datetimes, UUIDs, decimals and bytes decode into plain
//! serde types. Register your own with [`register`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use kombu_core::{Error, ErrorKind, Result};

/// Visits a type-erased deserializer (used by [`Serializer::deserialize`]).
pub type Visit<'a> = dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<()> + 'a;

/// A message body serializer.
pub trait Serializer: Send + Sync + 'static {
    /// Registry name (`"json"`).
    fn name(&self) -> &str;
    /// MIME type written to `content_type`.
    fn content_type(&self) -> &str;
    /// Written to `content_encoding` (`utf-8`, `binary`).
    fn content_encoding(&self) -> &str;
    /// Serialize a value.
    fn serialize(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>>;
    /// Hand a deserializer over `data` to `visit`.
    fn deserialize(&self, data: &[u8], visit: &mut Visit<'_>) -> Result<()>;
}

fn encode_error(name: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Encode, format!("{name} serialization failed")).with_source(e)
}

pub(crate) fn decode_error(name: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Decode, format!("{name} deserialization failed")).with_source(e)
}

/// JSON with Kombu's type tags.
#[derive(Debug, Default)]
pub struct JsonSerializer;

impl Serializer for JsonSerializer {
    fn name(&self) -> &str {
        "json"
    }
    fn content_type(&self) -> &str {
        "application/json"
    }
    fn content_encoding(&self) -> &str {
        "utf-8"
    }
    fn serialize(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        kombu_core::envelope::to_python_json(value)
    }
    fn deserialize(&self, data: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        if crate::json::may_contain_tags(data) {
            let mut value: serde_json::Value =
                serde_json::from_slice(data).map_err(|e| decode_error("json", e))?;
            crate::json::untag(&mut value);
            let mut erased = <dyn erased_serde::Deserializer<'_>>::erase(value);
            return visit(&mut erased);
        }
        let mut de = serde_json::Deserializer::from_slice(data);
        let mut erased = <dyn erased_serde::Deserializer<'_>>::erase(&mut de);
        visit(&mut erased)?;
        de.end().map_err(|e| decode_error("json", e))
    }
}

/// `text/plain`: a string body.
#[derive(Debug, Default)]
pub struct TextSerializer;

impl Serializer for TextSerializer {
    fn name(&self) -> &str {
        "text"
    }
    fn content_type(&self) -> &str {
        "text/plain"
    }
    fn content_encoding(&self) -> &str {
        "utf-8"
    }
    fn serialize(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        match serde_json::to_value(value).map_err(|e| encode_error("text", e))? {
            serde_json::Value::String(s) => Ok(s.into_bytes()),
            other => Ok(other.to_string().into_bytes()),
        }
    }
    fn deserialize(&self, data: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        let text = std::str::from_utf8(data).map_err(|e| decode_error("text", e))?;
        let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(text);
        visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(de))
    }
}

/// `application/data`: bytes passed through.
#[derive(Debug, Default)]
pub struct RawSerializer;

impl Serializer for RawSerializer {
    fn name(&self) -> &str {
        "raw"
    }
    fn content_type(&self) -> &str {
        "application/data"
    }
    fn content_encoding(&self) -> &str {
        "binary"
    }
    fn serialize(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        match serde_json::to_value(value).map_err(|e| encode_error("raw", e))? {
            serde_json::Value::String(s) => Ok(s.into_bytes()),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|v| v.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| Error::new(ErrorKind::Encode, "raw bodies must be bytes or a string")),
            _ => Err(Error::new(
                ErrorKind::Encode,
                "raw bodies must be bytes or a string",
            )),
        }
    }
    fn deserialize(&self, data: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        match std::str::from_utf8(data) {
            Ok(text) => {
                let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(text);
                visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(de))
            }
            Err(_) => {
                let de = serde::de::value::BytesDeserializer::<serde::de::value::Error>::new(data);
                visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(de))
            }
        }
    }
}

/// msgpack (maps with string keys, binary as `bin`, as Python's `msgpack.packb`).
#[cfg(feature = "msgpack")]
#[derive(Debug, Default)]
pub struct MsgpackSerializer;

#[cfg(feature = "msgpack")]
impl Serializer for MsgpackSerializer {
    fn name(&self) -> &str {
        "msgpack"
    }
    fn content_type(&self) -> &str {
        "application/x-msgpack"
    }
    fn content_encoding(&self) -> &str {
        "binary"
    }
    fn serialize(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(value).map_err(|e| encode_error("msgpack", e))
    }
    fn deserialize(&self, data: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        let mut de = rmp_serde::Deserializer::new(data);
        visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(&mut de))
    }
}

/// YAML (safe subset).
#[cfg(feature = "yaml")]
#[derive(Debug, Default)]
pub struct YamlSerializer;

#[cfg(feature = "yaml")]
impl Serializer for YamlSerializer {
    fn name(&self) -> &str {
        "yaml"
    }
    fn content_type(&self) -> &str {
        "application/x-yaml"
    }
    fn content_encoding(&self) -> &str {
        "utf-8"
    }
    fn serialize(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        serde_norway::to_string(value)
            .map(String::into_bytes)
            .map_err(|e| encode_error("yaml", e))
    }
    fn deserialize(&self, data: &[u8], visit: &mut Visit<'_>) -> Result<()> {
        let de = serde_norway::Deserializer::from_slice(data);
        visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(de))
    }
}

/// Whether the built-in JSON serializer was replaced (disables the monomorphized fast path).
static JSON_REPLACED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Built-in JSON in, the fast way: no registry lookup, no type erasure.
fn json_fast_path(name_or_content_type: &str) -> bool {
    (name_or_content_type == "json" || name_or_content_type == "application/json")
        && !JSON_REPLACED.load(std::sync::atomic::Ordering::Relaxed)
}

#[derive(Default)]
struct Registry {
    by_name: HashMap<String, Arc<dyn Serializer>>,
    by_content_type: HashMap<String, Arc<dyn Serializer>>,
}

fn registry() -> &'static RwLock<Registry> {
    static REGISTRY: OnceLock<RwLock<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut r = Registry::default();
        let builtins: Vec<Arc<dyn Serializer>> = vec![
            Arc::new(JsonSerializer),
            Arc::new(TextSerializer),
            Arc::new(RawSerializer),
            #[cfg(feature = "msgpack")]
            Arc::new(MsgpackSerializer),
            #[cfg(feature = "yaml")]
            Arc::new(YamlSerializer),
        ];
        for s in builtins {
            r.by_name.insert(s.name().to_owned(), s.clone());
            r.by_content_type.insert(s.content_type().to_owned(), s);
        }
        r.by_name
            .insert("application/text".into(), Arc::new(TextSerializer));
        RwLock::new(r)
    })
}

/// Register (or replace) a serializer under its name and content type.
pub fn register(serializer: Arc<dyn Serializer>) {
    if serializer.name() == "json" || serializer.content_type() == "application/json" {
        JSON_REPLACED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let mut r = registry().write().unwrap_or_else(|p| p.into_inner());
    r.by_name.insert(serializer.name().to_owned(), serializer.clone());
    r.by_content_type
        .insert(serializer.content_type().to_owned(), serializer);
}

/// Remove a serializer by name.
pub fn unregister(name: &str) {
    let mut r = registry().write().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = r.by_name.remove(name) {
        r.by_content_type.remove(s.content_type());
    }
}

/// The serializer registered as `name` (or with that content type).
pub fn get(name_or_content_type: &str) -> Result<Arc<dyn Serializer>> {
    let r = registry().read().unwrap_or_else(|p| p.into_inner());
    r.by_name
        .get(name_or_content_type)
        .or_else(|| r.by_content_type.get(name_or_content_type))
        .cloned()
        .ok_or_else(|| {
            let mut names: Vec<&str> = r.by_name.keys().map(String::as_str).collect();
            names.sort_unstable();
            Error::new(
                ErrorKind::SerializerNotInstalled,
                format!(
                    "no serializer {name_or_content_type:?} (registered: {}); msgpack and yaml need \
                     the `msgpack`/`yaml` features of the kombu crate",
                    names.join(", ")
                ),
            )
        })
}

/// The serializer for a content type, if registered.
pub fn for_content_type(content_type: &str) -> Option<Arc<dyn Serializer>> {
    let r = registry().read().unwrap_or_else(|p| p.into_inner());
    r.by_content_type.get(content_type).cloned()
}

/// Serialize `value` with the serializer `name` → `(content_type, content_encoding, bytes)`.
pub fn dumps<T: serde::Serialize + ?Sized>(value: &T, name: &str) -> Result<(Arc<str>, Arc<str>, Vec<u8>)> {
    use kombu_core::shared_text;
    if json_fast_path(name) {
        let body = kombu_core::envelope::to_python_json(value)?;
        return Ok((shared_text("application/json"), shared_text("utf-8"), body));
    }
    let s = get(name)?;
    let body = s.serialize(&value as &dyn erased_serde::Serialize)?;
    Ok((
        shared_text(s.content_type()),
        shared_text(s.content_encoding()),
        body,
    ))
}

/// Deserialize `data` of `content_type` into `T`. Unknown content types are decoded as text
/// (or bytes when `content_encoding` is `binary`), as Kombu does.
pub fn loads<T: serde::de::DeserializeOwned>(
    data: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Result<T> {
    if content_type.is_some_and(json_fast_path) && !crate::json::may_contain_tags(data) {
        return serde_json::from_slice(data).map_err(|e| decode_error("json", e));
    }
    let serializer: Arc<dyn Serializer> = match content_type.and_then(for_content_type) {
        Some(s) => s,
        None => match content_encoding {
            Some(enc) if enc.eq_ignore_ascii_case("utf-8") || enc.eq_ignore_ascii_case("utf8") => {
                Arc::new(TextSerializer)
            }
            _ => Arc::new(RawSerializer),
        },
    };
    let name = serializer.name().to_owned();
    let mut out: Option<T> = None;
    serializer.deserialize(data, &mut |de| {
        out = Some(erased_serde::deserialize::<T>(de).map_err(|e| decode_error(&name, e))?);
        Ok(())
    })?;
    out.ok_or_else(|| Error::new(ErrorKind::Decode, "deserializer produced no value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_python_style() {
        let (ct, enc, body) = dumps(&serde_json::json!({"a": [1, 2], "b": "é"}), "json").unwrap();
        assert_eq!((&*ct, &*enc), ("application/json", "utf-8"));
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"a": [1, 2], "b": "\u00e9"}"#
        );
    }

    #[test]
    fn unknown_serializer_is_a_typed_error() {
        let err = dumps(&1, "pickle").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SerializerNotInstalled);
    }

    #[test]
    fn loads_falls_back_to_text_and_bytes() {
        let s: String = loads(b"hello", Some("text/x-unknown"), Some("utf-8")).unwrap();
        assert_eq!(s, "hello");
        let err = loads::<u32>(b"{", Some("application/json"), None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
    }
}
