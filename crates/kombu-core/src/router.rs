//! Exchange routing with AMQP 0-9-1 semantics.
//!
//! Bindings are compiled once ([`CompiledBinding::new`]); routing a message walks the compiled
//! table with no regex and no allocation beyond the caller's output vector.
//!
//! Topic semantics are RabbitMQ's: words are separated by `.`, `*` matches exactly one word and
//! `#` matches zero or more words, so `a.#` matches `a`. **Kombu's virtual transports differ in
//! one place**: they compile `a.#` to the regex `^a\..*?$`, which does not match `a` (nor does
//! `#.b` match `b`). Where Kombu stores a binding's pattern on the broker (Redis, MongoDB),
//! transports write [`kombu_topic_regex`] so Python publishers route to our queues exactly as
//! Kombu would; kombu-rs itself routes with AMQP semantics.

use std::sync::Arc;

use crate::entity::ExchangeType;
use crate::value::{FieldTable, Value};

/// One word of a compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Literal(Box<str>),
    /// `*`: exactly one word.
    One,
    /// `#`: zero or more words.
    Any,
}

/// A compiled topic binding key.
///
/// ```
/// use kombu_core::router::TopicPattern;
/// let p = TopicPattern::new("stock.#");
/// assert!(p.matches("stock.us.nasdaq"));
/// assert!(p.matches("stock")); // AMQP: `#` matches zero words
/// assert!(!p.matches("stockxeuropexOSE"));
/// assert!(TopicPattern::new("*.orange.*").matches("quick.orange.rabbit"));
/// assert!(!TopicPattern::new("*.orange.*").matches("orange"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    words: Vec<Word>,
}

/// Split a routing key into words; the empty key has no words.
fn words(key: &str) -> impl Iterator<Item = &str> + Clone {
    let mut it = key.split('.');
    if key.is_empty() {
        it.next();
    }
    it
}

impl TopicPattern {
    /// Compile a binding key.
    pub fn new(binding_key: &str) -> Self {
        let mut compiled: Vec<Word> = Vec::new();
        for w in words(binding_key) {
            let word = match w {
                "*" => Word::One,
                "#" => Word::Any,
                lit => Word::Literal(lit.into()),
            };
            // `#.#` is the same as `#`: collapsing keeps matching linear in practice.
            if word == Word::Any && compiled.last() == Some(&Word::Any) {
                continue;
            }
            compiled.push(word);
        }
        TopicPattern { words: compiled }
    }

    /// Whether `routing_key` matches.
    pub fn matches(&self, routing_key: &str) -> bool {
        match_words(&self.words, words(routing_key))
    }
}

fn match_words<'a, I>(pattern: &[Word], mut key: I) -> bool
where
    I: Iterator<Item = &'a str> + Clone,
{
    let mut i = 0;
    while i < pattern.len() {
        match &pattern[i] {
            Word::Literal(lit) => match key.next() {
                Some(w) if w == &**lit => {}
                _ => return false,
            },
            Word::One => {
                if key.next().is_none() {
                    return false;
                }
            }
            Word::Any => {
                let rest = &pattern[i + 1..];
                if rest.is_empty() {
                    return true;
                }
                // Try every split point: `#` swallows 0, 1, 2, … words.
                loop {
                    if match_words(rest, key.clone()) {
                        return true;
                    }
                    if key.next().is_none() {
                        return false;
                    }
                }
            }
        }
        i += 1;
    }
    key.next().is_none()
}

/// Kombu's escaping: every character that is not alphanumeric (and not in `white`) gets a
/// backslash; NUL becomes `\000`.
fn kombu_escape(text: &str, white: &str, out: &mut String) {
    for c in text.chars() {
        if c.is_alphanumeric() || white.contains(c) {
            out.push(c);
        } else if c == '\0' {
            out.push_str("\\000");
        } else {
            out.push('\\');
            out.push(c);
        }
    }
}

/// The regex Kombu 5.7's topic exchange stores for `binding_key` (`prepare_bind`):
/// `^` + words joined by `\.` + `$`, with `*` → `[^.]+`-style one-word match and `#` → `.*?`.
///
/// ```
/// use kombu_core::router::kombu_topic_regex;
/// assert_eq!(kombu_topic_regex("stock.#"), r"^stock\..*?$");
/// assert_eq!(kombu_topic_regex("a.*.c"), r"^a\.[^\.]+\.c$");
/// assert_eq!(kombu_topic_regex("a-b.#"), r"^a\-b\..*?$");
/// ```
pub fn kombu_topic_regex(binding_key: &str) -> String {
    let mut escaped = String::with_capacity(binding_key.len() * 2);
    kombu_escape(binding_key, ".#*", &mut escaped);
    let mut out = String::with_capacity(escaped.len() + 8);
    out.push('^');
    for (i, word) in escaped.split('.').enumerate() {
        if i > 0 {
            out.push_str(r"\.");
        }
        match word {
            "*" => out.push_str(r"[^\.]+"),
            "#" => out.push_str(".*?"),
            w => out.push_str(w),
        }
    }
    out.push('$');
    out
}

/// Recover the binding key from a Kombu topic regex (any 4.x/5.x form), so a binding that a
/// Python process stored on the broker can be compiled into a [`TopicPattern`]. Returns `None`
/// for text that is not a Kombu-generated pattern.
///
/// ```
/// use kombu_core::router::{binding_key_from_kombu_regex, kombu_topic_regex};
/// for key in ["stock.#", "a.*.c", "a-b.#", "#", "x_y.z"] {
///     assert_eq!(binding_key_from_kombu_regex(&kombu_topic_regex(key)).as_deref(), Some(key));
/// }
/// // Kombu <= 5.6 compiled `*` to `.*?[^\.]`:
/// assert_eq!(binding_key_from_kombu_regex(r"^a\..*?[^\.]$").as_deref(), Some("a.*"));
/// ```
pub fn binding_key_from_kombu_regex(pattern: &str) -> Option<String> {
    let mut rest = pattern.strip_prefix('^')?.strip_suffix('$')?;
    let mut key = String::with_capacity(rest.len());
    // Scan token by token: the one-word class `[^\.]+` itself contains `\.`, so the body
    // cannot simply be split on the separator.
    while !rest.is_empty() {
        let tokens: [(&str, &str); 5] = [
            (r"[^\.]+", "*"),
            (r".*?[^\.]", "*"),
            (".*?", "#"),
            (r"\.", "."),
            (r"\000", "\0"),
        ];
        if let Some((token, text)) = tokens.iter().find(|(t, _)| rest.starts_with(*t)) {
            key.push_str(text);
            rest = &rest[token.len()..];
            continue;
        }
        let mut chars = rest.chars();
        let c = chars.next()?;
        if c == '\\' {
            key.push(chars.next()?);
        } else if c.is_alphanumeric() {
            key.push(c);
        } else {
            return None;
        }
        rest = chars.as_str();
    }
    Some(key)
}

/// How a compiled binding matches.
#[derive(Debug, Clone)]
enum Matcher {
    Exact,
    Topic(TopicPattern),
    Fanout,
    Headers(HeadersMatch),
}

/// A compiled headers-exchange binding (`x-match` = `all` | `any` | `all-with-x` | `any-with-x`).
#[derive(Debug, Clone)]
struct HeadersMatch {
    any: bool,
    /// Arguments to match (without `x-match`).
    arguments: Vec<(String, Value)>,
}

impl HeadersMatch {
    fn new(arguments: &FieldTable) -> Self {
        let mode = arguments.get("x-match").and_then(Value::as_str).unwrap_or("all");
        let with_x = mode.ends_with("-with-x");
        HeadersMatch {
            any: mode.starts_with("any"),
            arguments: arguments
                .iter()
                .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.starts_with("x-")))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    fn matches(&self, headers: &FieldTable) -> bool {
        let one = |(k, v): &(String, Value)| match headers.get(k) {
            None => false,
            // A void binding value only requires the header to be present.
            Some(h) => matches!(v, Value::Null) || h == v,
        };
        if self.any {
            self.arguments.iter().any(one)
        } else {
            self.arguments.iter().all(one)
        }
    }
}

/// A binding compiled for routing.
#[derive(Debug, Clone)]
pub struct CompiledBinding {
    /// The bound queue (shared with every routing result that names it).
    pub(crate) queue: Arc<str>,
    /// The binding key as declared.
    pub routing_key: String,
    /// The binding arguments as declared.
    pub arguments: FieldTable,
    matcher: Matcher,
}

impl CompiledBinding {
    /// The bound queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Compile a binding of `queue` with `routing_key` and `arguments` on an exchange of `kind`.
    pub fn new(
        kind: ExchangeType,
        queue: impl Into<Arc<str>>,
        routing_key: impl Into<String>,
        arguments: FieldTable,
    ) -> Self {
        let routing_key = routing_key.into();
        let matcher = match kind {
            ExchangeType::Direct => Matcher::Exact,
            ExchangeType::Topic => Matcher::Topic(TopicPattern::new(&routing_key)),
            ExchangeType::Fanout => Matcher::Fanout,
            ExchangeType::Headers => Matcher::Headers(HeadersMatch::new(&arguments)),
        };
        CompiledBinding {
            queue: queue.into(),
            routing_key,
            arguments,
            matcher,
        }
    }

    /// Whether a message with `routing_key` and `headers` is routed through this binding.
    pub fn matches(&self, routing_key: &str, headers: &FieldTable) -> bool {
        match &self.matcher {
            Matcher::Exact => self.routing_key == routing_key,
            Matcher::Topic(p) => p.matches(routing_key),
            Matcher::Fanout => true,
            Matcher::Headers(h) => h.matches(headers),
        }
    }

    /// Whether this is the same binding (queue, key, arguments).
    pub fn same_as(&self, queue: &str, routing_key: &str, arguments: &FieldTable) -> bool {
        &*self.queue == queue && self.routing_key == routing_key && &self.arguments == arguments
    }
}

/// The bindings of one exchange.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    bindings: Vec<CompiledBinding>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        RouteTable::default()
    }

    /// Add a binding unless the same one exists. Returns whether it was added.
    pub fn bind(&mut self, binding: CompiledBinding) -> bool {
        if self
            .bindings
            .iter()
            .any(|b| b.same_as(&binding.queue, &binding.routing_key, &binding.arguments))
        {
            return false;
        }
        self.bindings.push(binding);
        true
    }

    /// Remove a binding. Returns whether it existed.
    pub fn unbind(&mut self, queue: &str, routing_key: &str, arguments: &FieldTable) -> bool {
        let before = self.bindings.len();
        self.bindings
            .retain(|b| !b.same_as(queue, routing_key, arguments));
        before != self.bindings.len()
    }

    /// Remove every binding of `queue`.
    pub fn remove_queue(&mut self, queue: &str) {
        self.bindings.retain(|b| &*b.queue != queue);
    }

    /// The bindings.
    pub fn bindings(&self) -> &[CompiledBinding] {
        &self.bindings
    }

    /// Append the queues a message is routed to, each at most once (overlapping bindings of
    /// one queue deliver one copy).
    pub fn route_into(&self, routing_key: &str, headers: &FieldTable, out: &mut Vec<Arc<str>>) {
        let start = out.len();
        for b in &self.bindings {
            if b.matches(routing_key, headers) && !out[start..].contains(&b.queue) {
                out.push(b.queue.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(key: &str, rk: &str) -> bool {
        TopicPattern::new(key).matches(rk)
    }

    #[test]
    fn amqp_topic_semantics() {
        // RabbitMQ tutorial table.
        assert!(topic("*.orange.*", "quick.orange.rabbit"));
        assert!(topic("*.*.rabbit", "quick.orange.rabbit"));
        assert!(topic("lazy.#", "lazy.orange.elephant"));
        assert!(!topic("*.orange.*", "quick.brown.fox"));
        assert!(topic("lazy.#", "lazy"));
        assert!(!topic("*.orange.*", "quick.orange.male.rabbit"));
        assert!(topic("lazy.#", "lazy.orange.male.rabbit"));
        assert!(topic("#", ""));
        assert!(topic("#", "a.b.c"));
        assert!(!topic("*", ""));
        assert!(topic("", ""));
        assert!(!topic("", "a"));
        assert!(topic("#.b", "b"));
        assert!(topic("a.#.b", "a.b"));
        assert!(topic("a.#.b", "a.x.y.b"));
        assert!(!topic("a.#.b", "a.x.y.c"));
        assert!(topic("a.*.#", "a.b"));
        assert!(!topic("a.*.#", "a"));
        assert!(topic("#.#", "x"));
        assert!(topic("a..b", "a..b"));
    }

    #[test]
    fn kombu_test_table() {
        // t/unit/transport/virtual/test_exchange.py
        let mut table = RouteTable::new();
        table.bind(CompiledBinding::new(
            ExchangeType::Topic,
            "rFoo",
            "stock.#",
            FieldTable::new(),
        ));
        table.bind(CompiledBinding::new(
            ExchangeType::Topic,
            "rBar",
            "stock.us.*",
            FieldTable::new(),
        ));
        let route = |rk: &str| {
            let mut out = Vec::new();
            table.route_into(rk, &FieldTable::new(), &mut out);
            out.iter().map(|q| q.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(route("stock.us.nasdaq"), ["rFoo", "rBar"]);
        assert_eq!(route("stock.europe.OSE"), ["rFoo"]);
        assert!(route("stockxeuropexOSE").is_empty());
        assert_eq!(route("stock.us.nasdaq.tech"), ["rFoo"]);
    }

    #[test]
    fn overlapping_bindings_deliver_once() {
        let mut table = RouteTable::new();
        table.bind(CompiledBinding::new(
            ExchangeType::Topic,
            "q",
            "a.*",
            FieldTable::new(),
        ));
        table.bind(CompiledBinding::new(
            ExchangeType::Topic,
            "q",
            "#",
            FieldTable::new(),
        ));
        assert!(!table.bind(CompiledBinding::new(
            ExchangeType::Topic,
            "q",
            "#",
            FieldTable::new()
        )));
        let mut out = Vec::new();
        table.route_into("a.b", &FieldTable::new(), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn headers_all_and_any() {
        let args = |mode: &str| {
            let mut t = FieldTable::new();
            t.insert("x-match".into(), mode.into());
            t.insert("format".into(), "pdf".into());
            t.insert("type".into(), "report".into());
            t
        };
        let all = CompiledBinding::new(ExchangeType::Headers, "q", "", args("all"));
        let any = CompiledBinding::new(ExchangeType::Headers, "q", "", args("any"));
        let mut h = FieldTable::new();
        h.insert("format".into(), "pdf".into());
        assert!(!all.matches("", &h));
        assert!(any.matches("", &h));
        h.insert("type".into(), "report".into());
        assert!(all.matches("ignored", &h));
        h.insert("type".into(), "log".into());
        assert!(!all.matches("", &h));
    }

    #[test]
    fn kombu_regex_escaping() {
        assert_eq!(kombu_topic_regex(""), "^$");
        assert_eq!(kombu_topic_regex("a\0b"), "^a\\000b$");
        assert_eq!(binding_key_from_kombu_regex("^a\\000b$").as_deref(), Some("a\0b"));
        assert_eq!(binding_key_from_kombu_regex("not a pattern"), None);
        assert_eq!(binding_key_from_kombu_regex("^a b$"), None);
    }
}
