//! What a connection is configured with: the endpoint and credentials from the URL, and
//! Kombu's SQS transport options with Kombu's names and defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use kombu_core::url::Secret;
use kombu_core::{ConnectOptions, Error, ErrorKind, Result};
use serde_json::Value as Json;

/// Kombu's default `visibility_timeout`: 30 minutes.
pub(crate) const DEFAULT_VISIBILITY_TIMEOUT: u32 = 1800;
/// Kombu's default `wait_time_seconds` (SQS allows 0–20).
pub(crate) const DEFAULT_WAIT_TIME_SECONDS: u32 = 10;
/// Kombu's default region.
pub(crate) const DEFAULT_REGION: &str = "us-east-1";

/// An access key pair (and session token), redacted in `Debug`.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: Secret,
    pub(crate) session_token: Option<Secret>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"****")
            .field("session_token", &self.session_token.as_ref().map(|_| "****"))
            .finish()
    }
}

/// One entry of `predefined_queues`: a queue that exists already, by URL, with its own
/// credentials and region where given, and Kombu's per-queue backoff settings.
#[derive(Debug, Clone)]
pub(crate) struct PredefinedQueue {
    pub(crate) url: String,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) region: Option<String>,
    /// `backoff_policy`: receive count → visibility timeout in seconds, applied when a
    /// message of one of `backoff_tasks` is rejected.
    pub(crate) backoff_policy: BTreeMap<u32, u32>,
    /// `backoff_tasks`: the task names (`headers.task`) the backoff policy applies to.
    pub(crate) backoff_tasks: Vec<String>,
}

/// One entry of `predefined_exchanges`: an SNS topic that exists already, by ARN, with its
/// own credentials and region where given (nothing is created for it).
#[derive(Debug, Clone)]
#[cfg_attr(
    not(feature = "sns"),
    allow(dead_code, reason = "fanout needs the `sns` feature")
)]
pub(crate) struct PredefinedExchange {
    pub(crate) arn: String,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) region: Option<String>,
}

/// Which attributes a receive asks for (`fetch_message_attributes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FetchAttributes {
    pub(crate) system: Vec<String>,
    pub(crate) message: Vec<String>,
}

/// Everything a connection is configured with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `http(s)://host[:port]` when the URL names a host (a local moto, ElasticMQ); `None`:
    /// AWS's regional endpoint.
    pub(crate) endpoint: Option<String>,
    pub(crate) region: String,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) visibility_timeout: u32,
    pub(crate) wait_time_seconds: u32,
    pub(crate) polling_interval: Duration,
    pub(crate) queue_name_prefix: String,
    pub(crate) predefined_queues: BTreeMap<String, PredefinedQueue>,
    pub(crate) base64_encoding: bool,
    pub(crate) fetch: FetchAttributes,
    pub(crate) creation_attributes: BTreeMap<String, String>,
    pub(crate) queue_tags: BTreeMap<String, String>,
    /// `body_encoding` of the inner envelope (Kombu's virtual transport option).
    pub(crate) body_base64: bool,
    /// `supports_fanout`: fanout exchanges through SNS topics (feature `sns`).
    pub(crate) supports_fanout: bool,
    /// `predefined_exchanges`: only these topics are used, by ARN.
    #[cfg_attr(
        not(feature = "sns"),
        allow(dead_code, reason = "fanout needs the `sns` feature")
    )]
    pub(crate) predefined_exchanges: BTreeMap<String, PredefinedExchange>,
}

/// Options Kombu has that change nothing here; accepted so Kombu/Celery configurations work.
const ACCEPTED_WITHOUT_EFFECT: &[&str] = &["client-config", "regioninfo", "sts_token_buffer_time"];

/// Every option this transport reads.
const KNOWN: &[&str] = &[
    "region",
    "visibility_timeout",
    "wait_time_seconds",
    "polling_interval",
    "queue_name_prefix",
    "predefined_queues",
    "sqs_base64_encoding",
    "fetch_message_attributes",
    "sqs-creation-attributes",
    "queue_tags",
    "is_secure",
    "port",
    "supports_fanout",
    "predefined_exchanges",
    "sts_role_arn",
    "sts_token_timeout",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "body_encoding",
    "connect_timeout",
];

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, message.into())
}

fn truthy(raw: &str) -> Result<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" | "none" => Ok(false),
        _ => Err(invalid(format!("expected a boolean, got {raw:?}"))),
    }
}

/// A JSON-valued option (Kombu's dict and list options, given as JSON text).
fn json_option(options: &ConnectOptions, key: &str) -> Result<Option<Json>> {
    match options.transport_options.get(key) {
        None => Ok(None),
        Some(raw) if raw.trim().is_empty() => Ok(None),
        Some(raw) => serde_json::from_str(raw)
            .map(Some)
            .map_err(|e| invalid(format!("transport option {key} must be JSON")).with_source(e)),
    }
}

fn string_map(key: &str, value: Option<Json>) -> Result<BTreeMap<String, String>> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let Json::Object(map) = value else {
        return Err(invalid(format!("transport option {key} must be a JSON object")));
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Json::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect())
}

fn string_list(key: &str, value: &Json) -> Result<Vec<String>> {
    match value {
        Json::String(s) => Ok(vec![s.clone()]),
        Json::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(format!("{key} must list strings")))
            })
            .collect(),
        _ => Err(invalid(format!("{key} must be a list of strings"))),
    }
}

/// Kombu's `get_message_attributes`: `ApproximateReceiveCount` always among the system
/// attributes, `ALL` collapsing a list.
fn fetch_attributes(value: Option<Json>) -> Result<FetchAttributes> {
    const COUNT: &str = "ApproximateReceiveCount";
    let normalize = |mut names: Vec<String>, add_count: bool| {
        if names.iter().any(|n| n.eq_ignore_ascii_case("all")) {
            return vec!["All".to_owned()];
        }
        if add_count {
            names.push(COUNT.to_owned());
        }
        names.sort();
        names.dedup();
        names
    };
    let (system, message) = match value {
        None | Some(Json::String(_)) | Some(Json::Null) => (vec![COUNT.to_owned()], Vec::new()),
        Some(list @ Json::Array(_)) => (
            normalize(string_list("fetch_message_attributes", &list)?, true),
            Vec::new(),
        ),
        Some(Json::Object(map)) => {
            let system = match map.get("MessageSystemAttributeNames") {
                Some(v) => normalize(string_list("MessageSystemAttributeNames", v)?, true),
                None => vec![COUNT.to_owned()],
            };
            let message = match map.get("MessageAttributeNames") {
                Some(v) => {
                    let names = string_list("MessageAttributeNames", v)?;
                    if names.is_empty() {
                        names
                    } else {
                        normalize(names, false)
                    }
                }
                None => Vec::new(),
            };
            (system, message)
        }
        Some(_) => return Err(invalid("fetch_message_attributes must be a list or an object")),
    };
    Ok(FetchAttributes { system, message })
}

fn credentials_of(key: Option<&str>, secret: Option<&str>, token: Option<&str>) -> Option<Credentials> {
    match (key.filter(|k| !k.is_empty()), secret.filter(|s| !s.is_empty())) {
        (Some(key), Some(secret)) => Some(Credentials {
            access_key_id: key.to_owned(),
            secret_access_key: Secret::new(secret),
            session_token: token.filter(|t| !t.is_empty()).map(Secret::new),
        }),
        _ => None,
    }
}

fn predefined_queues(value: Option<Json>) -> Result<BTreeMap<String, PredefinedQueue>> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let Json::Object(map) = value else {
        return Err(invalid(
            "predefined_queues must be a JSON object of queue name → settings",
        ));
    };
    let mut out = BTreeMap::new();
    for (name, entry) in map {
        let Json::Object(entry) = entry else {
            return Err(invalid(format!("predefined_queues[{name:?}] must be an object")));
        };
        let text = |k: &str| entry.get(k).and_then(Json::as_str);
        let url = text("url")
            .ok_or_else(|| invalid(format!("predefined_queues[{name:?}] needs a url")))?
            .to_owned();
        let mut backoff_policy = BTreeMap::new();
        if let Some(Json::Object(policy)) = entry.get("backoff_policy") {
            for (count, secs) in policy {
                let count: u32 = count
                    .parse()
                    .map_err(|_| invalid(format!("backoff_policy key {count:?} is not a number")))?;
                let secs = secs
                    .as_u64()
                    .ok_or_else(|| invalid("backoff_policy values must be seconds"))?;
                backoff_policy.insert(count, secs.min(43_200) as u32);
            }
        }
        let backoff_tasks = match entry.get("backoff_tasks") {
            Some(v) => string_list("backoff_tasks", v)?,
            None => Vec::new(),
        };
        out.insert(
            name,
            PredefinedQueue {
                url,
                credentials: credentials_of(
                    text("access_key_id"),
                    text("secret_access_key"),
                    text("session_token"),
                ),
                region: text("region").map(str::to_owned),
                backoff_policy,
                backoff_tasks,
            },
        );
    }
    Ok(out)
}

fn predefined_exchanges(value: Option<Json>) -> Result<BTreeMap<String, PredefinedExchange>> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let Json::Object(map) = value else {
        return Err(invalid(
            "predefined_exchanges must be a JSON object of exchange name → settings",
        ));
    };
    let mut out = BTreeMap::new();
    for (name, entry) in map {
        let Json::Object(entry) = entry else {
            return Err(invalid(format!(
                "predefined_exchanges[{name:?}] must be an object"
            )));
        };
        let text = |k: &str| entry.get(k).and_then(Json::as_str);
        let arn = text("arn")
            .ok_or_else(|| invalid(format!("predefined_exchanges[{name:?}] needs an arn")))?
            .to_owned();
        out.insert(
            name,
            PredefinedExchange {
                arn,
                credentials: credentials_of(
                    text("access_key_id"),
                    text("secret_access_key"),
                    text("session_token"),
                ),
                region: text("region").map(str::to_owned),
            },
        );
    }
    Ok(out)
}

impl Settings {
    pub(crate) fn from_options(options: &ConnectOptions) -> Result<Settings> {
        let url = &options.url;
        if url.scheme() != "sqs" {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!("not an SQS URL scheme: {}", url.scheme()),
            ));
        }
        let opts = &options.transport_options;
        for key in opts.keys() {
            if !KNOWN.contains(&key.as_str()) && !ACCEPTED_WITHOUT_EFFECT.contains(&key.as_str()) {
                return Err(invalid(format!("unknown SQS transport option {key:?}")));
            }
        }
        let supports_fanout = opts
            .get("supports_fanout")
            .map(|v| truthy(v))
            .transpose()?
            .unwrap_or(false);
        if supports_fanout && !cfg!(feature = "sns") {
            return Err(Error::unsupported(
                "fanout through SNS (supports_fanout=true) needs kombu-sqs built with its feature \
                 `sns` (the kombu facade's feature `sqs-sns`)",
            ));
        }
        if opts.contains_key("sts_role_arn") {
            return Err(Error::unsupported(
                "sts_role_arn (assumed-role credentials) is not implemented by kombu-sqs yet",
            ));
        }
        let is_secure = opts
            .get("is_secure")
            .map(|v| truthy(v))
            .transpose()?
            .unwrap_or(false);
        let port = match url.port() {
            Some(p) => Some(p),
            None => options.option::<u16>("port")?,
        };
        let endpoint = url.host().filter(|h| !h.is_empty()).map(|host| {
            let scheme = if is_secure { "https" } else { "http" };
            match port {
                Some(p) => format!("{scheme}://{host}:{p}"),
                None => format!("{scheme}://{host}"),
            }
        });
        let region = opts
            .get("region")
            .filter(|r| !r.is_empty())
            .cloned()
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok().filter(|r| !r.is_empty()))
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        // Credentials: the URL, then the options, then the environment (the first link of
        // the standard AWS chain).
        let credentials = credentials_of(
            url.username(),
            url.password().map(Secret::expose),
            opts.get("session_token").map(String::as_str),
        )
        .or_else(|| {
            credentials_of(
                opts.get("access_key_id").map(String::as_str),
                opts.get("secret_access_key").map(String::as_str),
                opts.get("session_token").map(String::as_str),
            )
        })
        .or_else(|| {
            let var = |k: &str| std::env::var(k).ok();
            credentials_of(
                var("AWS_ACCESS_KEY_ID").as_deref(),
                var("AWS_SECRET_ACCESS_KEY").as_deref(),
                var("AWS_SESSION_TOKEN").as_deref(),
            )
        });
        let visibility_timeout = match options.option::<f64>("visibility_timeout")? {
            None => DEFAULT_VISIBILITY_TIMEOUT,
            Some(v) if (0.0..=43_200.0).contains(&v) => v as u32,
            Some(_) => return Err(invalid("visibility_timeout must be 0..=43200 seconds")),
        };
        let wait_time_seconds = match options.option::<f64>("wait_time_seconds")? {
            None => DEFAULT_WAIT_TIME_SECONDS,
            Some(v) if (0.0..=20.0).contains(&v) => v as u32,
            Some(_) => return Err(invalid("wait_time_seconds must be 0..=20")),
        };
        let polling_interval = match options.option::<f64>("polling_interval")? {
            None => Duration::from_secs(1),
            Some(v) => Duration::try_from_secs_f64(v)
                .map_err(|_| invalid("polling_interval must be a number of seconds"))?,
        };
        let base64_encoding = opts
            .get("sqs_base64_encoding")
            .map(|v| truthy(v))
            .transpose()?
            .unwrap_or(true);
        let body_base64 = match opts.get("body_encoding").map(|v| v.to_ascii_lowercase()) {
            None => true,
            Some(v) if v == "base64" => true,
            Some(v) if v.is_empty() || v == "utf-8" || v == "none" => false,
            Some(v) => return Err(invalid(format!("unsupported body_encoding {v:?}"))),
        };
        let creation_attributes = string_map(
            "sqs-creation-attributes",
            json_option(options, "sqs-creation-attributes")?,
        )?;
        Ok(Settings {
            endpoint,
            region,
            credentials,
            visibility_timeout,
            wait_time_seconds,
            polling_interval,
            queue_name_prefix: opts.get("queue_name_prefix").cloned().unwrap_or_default(),
            predefined_queues: predefined_queues(json_option(options, "predefined_queues")?)?,
            base64_encoding,
            fetch: fetch_attributes(json_option(options, "fetch_message_attributes")?)?,
            creation_attributes,
            queue_tags: string_map("queue_tags", json_option(options, "queue_tags")?)?,
            body_base64,
            supports_fanout,
            predefined_exchanges: predefined_exchanges(json_option(options, "predefined_exchanges")?)?,
        })
    }

    /// Kombu's `canonical_queue_name`: the prefix, then `entity_name`.
    pub(crate) fn canonical_queue_name(&self, queue: &str) -> String {
        entity_name(&format!("{}{queue}", self.queue_name_prefix))
    }
}

/// Kombu's `entity_name`: every ASCII punctuation character but `-`, `_` and `.` becomes `_`,
/// then `.` becomes `-`, except in a trailing `.fifo`.
pub(crate) fn entity_name(name: &str) -> String {
    let (stem, fifo) = match name.strip_suffix(".fifo") {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    let mut out: String = stem
        .chars()
        .map(|c| match c {
            '-' | '_' => c,
            '.' => '-',
            c if c.is_ascii_punctuation() => '_',
            c => c,
        })
        .collect();
    if fifo {
        out.push_str(".fifo");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn settings(url: &str) -> Result<Settings> {
        Settings::from_options(&ConnectOptions::new(url.parse()?))
    }

    #[test]
    fn queue_names_are_mangled_as_kombu_does() {
        assert_eq!(entity_name("celery.pidbox"), "celery-pidbox");
        assert_eq!(entity_name("a:b"), "a_b");
        assert_eq!(entity_name("x.y.fifo"), "x-y.fifo");
        assert_eq!(entity_name("we/ird@q"), "we_ird_q");
    }

    #[test]
    fn url_gives_endpoint_credentials_and_defaults() {
        let s = settings("sqs://AKID:se%2Fcret@127.0.0.1:5000").unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        let c = s.credentials.as_ref().unwrap();
        assert_eq!(c.access_key_id, "AKID");
        assert_eq!(c.secret_access_key.expose(), "se/cret");
        assert_eq!(s.visibility_timeout, 1800);
        assert_eq!(s.wait_time_seconds, 10);
        assert!(s.base64_encoding);
        assert_eq!(s.fetch.system, ["ApproximateReceiveCount"]);
        let debug = format!("{s:?}");
        assert!(!debug.contains("se/cret"), "{debug}");
    }

    #[test]
    fn options_are_read_with_kombus_names() {
        let s = settings(
            "sqs://k:s@localhost?is_secure=true&port=4443&queue_name_prefix=p-&wait_time_seconds=2&sqs_base64_encoding=false",
        )
        .unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("https://localhost:4443"));
        assert_eq!(s.canonical_queue_name("a.b"), "p-a-b");
        assert_eq!(s.wait_time_seconds, 2);
        assert!(!s.base64_encoding);
        let err = settings("sqs://k:s@localhost?nope=1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let fanout = settings("sqs://k:s@localhost?supports_fanout=true");
        if cfg!(feature = "sns") {
            assert!(fanout.unwrap().supports_fanout);
        } else {
            let err = fanout.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported);
            assert!(err.to_string().contains("sqs-sns"), "{err}");
        }
        let err = settings("sqs://k:s@localhost?wait_time_seconds=21").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn json_options() {
        let mut o = ConnectOptions::new("sqs://k:s@localhost".parse().unwrap());
        o.transport_options.insert(
            "predefined_queues".into(),
            r#"{"q": {"url": "http://x/1/q", "access_key_id": "a", "secret_access_key": "b", "backoff_policy": {"1": 10, "2": 20}, "backoff_tasks": ["t"]}}"#.into(),
        );
        o.transport_options.insert(
            "fetch_message_attributes".into(),
            r#"{"MessageAttributeNames": ["x"]}"#.into(),
        );
        o.transport_options.insert(
            "sqs-creation-attributes".into(),
            r#"{"MessageRetentionPeriod": 600}"#.into(),
        );
        let s = Settings::from_options(&o).unwrap();
        let q = &s.predefined_queues["q"];
        assert_eq!(q.url, "http://x/1/q");
        assert_eq!(q.backoff_policy[&2], 20);
        assert_eq!(s.fetch.message, ["x"]);
        assert_eq!(s.creation_attributes["MessageRetentionPeriod"], "600");
        assert!(!format!("{s:?}").contains("\"b\""));
    }

    #[test]
    fn predefined_exchanges_are_read() {
        let mut o = ConnectOptions::new("sqs://k:s@localhost".parse().unwrap());
        o.transport_options.insert(
            "predefined_exchanges".into(),
            r#"{"ex": {"arn": "arn:aws:sns:eu-west-1:1:ex", "access_key_id": "a", "secret_access_key": "sekrit", "region": "eu-west-1"}}"#.into(),
        );
        let s = Settings::from_options(&o).unwrap();
        let e = &s.predefined_exchanges["ex"];
        assert_eq!(e.arn, "arn:aws:sns:eu-west-1:1:ex");
        assert_eq!(e.region.as_deref(), Some("eu-west-1"));
        assert_eq!(e.credentials.as_ref().unwrap().access_key_id, "a");
        assert!(!format!("{s:?}").contains("sekrit"));
        o.transport_options
            .insert("predefined_exchanges".into(), r#"{"ex": {}}"#.into());
        assert_eq!(
            Settings::from_options(&o).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
