//! What a connection is configured with: the driver's URI and the database from the URL (Kombu's
//! rules), and Kombu's transport options plus kombu-rs's own.

use std::fmt;
use std::time::Duration;

use kombu_core::{ConnectOptions, Error, ErrorKind, Result};

/// Kombu's default database.
pub(crate) const DEFAULT_DATABASE: &str = "kombu_default";
/// MongoDB's default port (Kombu's `default_port`).
pub(crate) const DEFAULT_PORT: u16 = 27017;
/// Kombu's default size of the capped broadcast collection, in bytes.
pub(crate) const DEFAULT_CAPPED_SIZE: i64 = 100_000;
/// The largest BSON document a MongoDB server accepts.
pub(crate) const MAX_BSON_SIZE: usize = 16 * 1024 * 1024;

/// Transport options read here, never passed to the driver as URI options.
const OWN_OPTIONS: &[&str] = &[
    "ttl",
    "capped_queue_size",
    "calc_queue_size",
    "default_hostname",
    "default_port",
    "default_database",
    "messages_collection",
    "routing_collection",
    "broadcast_collection",
    "queues_collection",
    "claims_collection",
    "exchanges_collection",
    "malformed_collection",
    "connect_timeout",
    "ssl",
    "polling_interval",
    "visibility_timeout",
];

/// One connection's settings.
#[derive(Clone)]
pub(crate) struct Settings {
    /// The URI handed to the driver (it carries the password: never printed).
    pub(crate) uri: String,
    /// The URI with the password masked, for messages.
    pub(crate) redacted: String,
    pub(crate) database: String,
    pub(crate) messages: String,
    pub(crate) routing: String,
    pub(crate) broadcast: String,
    pub(crate) queues: String,
    /// Held deliveries (kombu-rs only; Kombu never reads it).
    pub(crate) claims: String,
    /// Exchange types (kombu-rs only).
    pub(crate) exchanges: String,
    /// Documents whose payload is no Kombu envelope, moved aside (kombu-rs only).
    pub(crate) malformed: String,
    pub(crate) ttl: bool,
    pub(crate) capped_queue_size: i64,
    pub(crate) calc_queue_size: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) polling_interval: Duration,
    /// How long a claim lasts without renewal: a consumer that died gives its messages back
    /// after this.
    pub(crate) visibility_timeout: Duration,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("uri", &self.redacted)
            .field("database", &self.database)
            .field("ttl", &self.ttl)
            .field("visibility_timeout", &self.visibility_timeout)
            .finish_non_exhaustive()
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, message.into())
}

fn boolean(options: &ConnectOptions, key: &str, default: bool) -> Result<bool> {
    match options
        .transport_options
        .get(key)
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            _ => Err(invalid(format!(
                "transport option {key} must be a boolean, got {v:?}"
            ))),
        },
    }
}

fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Settings {
    pub(crate) fn from_options(options: &ConnectOptions) -> Result<Settings> {
        let url = &options.url;
        let text = |key: &str, default: &str| -> String {
            options
                .transport_options
                .get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        // Kombu: `srv://` and `mongodb+srv://` are SRV URLs; everything else `mongodb://`.
        let srv = matches!(url.scheme(), "srv" | "mongodb+srv");
        let scheme = if srv { "mongodb+srv" } else { "mongodb" };
        let host = url
            .host()
            .map(str::to_owned)
            .unwrap_or_else(|| text("default_hostname", "127.0.0.1"));
        let port = match url.port() {
            Some(p) => Some(p),
            None if srv => None,
            None => Some(options.option::<u16>("default_port")?.unwrap_or(DEFAULT_PORT)),
        };
        // A host list (`h1:27017,h2`) stays as written; a bare IPv6 address is bracketed.
        let host = if host.contains(':') && !host.contains(',') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        let authority = match port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        let credentials = |password: &str| match (url.username(), url.password()) {
            (None, None) => String::new(),
            (user, Some(_)) => format!("{}:{password}@", percent(user.unwrap_or_default())),
            (Some(user), None) => format!("{}@", percent(user)),
        };
        let database = match url.path().map(|p| p.trim_matches('/')) {
            Some(db) if !db.is_empty() => db.to_owned(),
            _ => text("default_database", DEFAULT_DATABASE),
        };
        let ssl = boolean(options, "ssl", false)?;
        let mut query: Vec<String> = url
            .query()
            .iter()
            .filter(|(k, _)| !OWN_OPTIONS.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if ssl && !url.query().iter().any(|(k, _)| k.eq_ignore_ascii_case("tls")) {
            query.push("tls=true".to_owned());
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        let password = url.password().map(|p| percent(p.expose())).unwrap_or_default();
        let uri = format!(
            "{scheme}://{}{authority}/{}{query}",
            credentials(&password),
            percent(&database)
        );
        let redacted = format!(
            "{scheme}://{}{authority}/{}{query}",
            credentials("****"),
            percent(&database)
        );
        let capped_queue_size = options
            .option::<i64>("capped_queue_size")?
            .unwrap_or(DEFAULT_CAPPED_SIZE);
        if capped_queue_size < 4096 {
            return Err(invalid("capped_queue_size must be at least 4096 bytes"));
        }
        let connect_timeout = options
            .seconds("connect_timeout")?
            .unwrap_or(options.connect_timeout);
        let polling_interval = options
            .seconds("polling_interval")?
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(10));
        let visibility_timeout = options
            .seconds("visibility_timeout")?
            .unwrap_or(Duration::from_secs(60))
            .max(Duration::from_millis(500));
        Ok(Settings {
            uri,
            redacted,
            database,
            messages: text("messages_collection", "messages"),
            routing: text("routing_collection", "messages.routing"),
            broadcast: text("broadcast_collection", "messages.broadcast"),
            queues: text("queues_collection", "messages.queues"),
            claims: text("claims_collection", "kombu_rs.claims"),
            exchanges: text("exchanges_collection", "kombu_rs.exchanges"),
            malformed: text("malformed_collection", "kombu_rs.malformed"),
            ttl: boolean(options, "ttl", false)?,
            capped_queue_size,
            calc_queue_size: boolean(options, "calc_queue_size", true)?,
            connect_timeout,
            polling_interval,
            visibility_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(url: &str) -> Settings {
        Settings::from_options(&ConnectOptions::new(url.parse().unwrap())).unwrap()
    }

    #[test]
    fn database_from_the_path_else_kombu_default() {
        let s = settings("mongodb://h1:27018/jobs");
        assert_eq!(s.uri, "mongodb://h1:27018/jobs");
        assert_eq!(s.database, "jobs");
        let s = settings("mongodb://h1");
        assert_eq!(s.uri, "mongodb://h1:27017/kombu_default");
        let s = settings("mongodb://h1/?default_database=other");
        assert_eq!(s.database, "other");
    }

    #[test]
    fn kombu_options_stay_out_of_the_driver_uri() {
        let s = settings("mongodb://h1/db?ttl=true&replicaSet=rs0&capped_queue_size=200000");
        assert_eq!(s.uri, "mongodb://h1:27017/db?replicaSet=rs0");
        assert!(s.ttl);
        assert_eq!(s.capped_queue_size, 200_000);
        let s = settings("mongodb://h1/db?ssl=true");
        assert_eq!(s.uri, "mongodb://h1:27017/db?tls=true");
    }

    #[test]
    fn credentials_are_redacted_and_srv_has_no_port() {
        let s = settings("mongodb://user:hunter2@h1:27017/db");
        assert_eq!(s.uri, "mongodb://user:hunter2@h1:27017/db");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(s.redacted.contains("****"));
        let s = settings("srv://cluster.example.com/db");
        assert_eq!(s.uri, "mongodb+srv://cluster.example.com/db");
    }

    #[test]
    fn collection_names_are_kombus() {
        let s = settings("mongodb://h1/db");
        assert_eq!(
            [
                s.messages.as_str(),
                s.routing.as_str(),
                s.broadcast.as_str(),
                s.queues.as_str()
            ],
            [
                "messages",
                "messages.routing",
                "messages.broadcast",
                "messages.queues"
            ]
        );
    }
}
