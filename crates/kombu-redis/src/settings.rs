//! What a connection is configured with: the server from the URL and Kombu's Redis transport
//! options, with Kombu's names and defaults.

use std::path::PathBuf;
use std::time::Duration;

use kombu_core::envelope::BodyEncoding;
use kombu_core::{BrokerUrl, ConnectOptions, Error, ErrorKind, Result};

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    /// TCP, optionally with TLS (`rediss://`).
    Tcp { host: String, port: u16, tls: bool },
    /// A Unix socket (`redis+socket:///path`, `socket:///path`).
    Unix(PathBuf),
}

/// TLS for `rediss://`, with redis-py's / Kombu's option names (`ssl_cert_reqs`,
/// `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`), given in the URL query or as transport
/// options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    /// Verify the server's certificate and name (`ssl_cert_reqs` `required`, the default, or
    /// `optional`, which is treated as required); `none` turns verification off.
    pub(crate) verify: bool,
    /// PEM file of the certificate authorities to trust instead of the built-in web roots.
    pub(crate) ca_certs: Option<PathBuf>,
    /// PEM client certificate and key, for servers that authenticate clients.
    pub(crate) certfile: Option<PathBuf>,
    pub(crate) keyfile: Option<PathBuf>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            verify: true,
            ca_certs: None,
            certfile: None,
            keyfile: None,
        }
    }
}

impl TlsOptions {
    const KEYS: [&'static str; 4] = ["ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"];

    fn from_options(options: &ConnectOptions, tls: bool) -> Result<TlsOptions> {
        let get = |key: &str| options.transport_options.get(key).filter(|v| !v.is_empty());
        let invalid = |message: String| Error::new(ErrorKind::InvalidArgument, message);
        if !tls {
            if let Some(key) = Self::KEYS.iter().find(|k| get(k).is_some()) {
                return Err(invalid(format!(
                    "transport option {key} needs a TLS URL (rediss://)"
                )));
            }
            return Ok(TlsOptions::default());
        }
        let verify = match get("ssl_cert_reqs").map(|v| v.to_ascii_lowercase()) {
            None => true,
            Some(v) => match v.trim_start_matches("cert_").trim_start_matches("ssl.cert_") {
                "required" | "optional" => true,
                "none" => false,
                _ => {
                    return Err(invalid(format!(
                        "ssl_cert_reqs must be required, optional or none, got {v:?}"
                    )))
                }
            },
        };
        let path = |key: &str| get(key).map(PathBuf::from);
        let (certfile, keyfile) = (path("ssl_certfile"), path("ssl_keyfile"));
        if certfile.is_some() != keyfile.is_some() {
            return Err(invalid(
                "a client certificate needs both ssl_certfile and ssl_keyfile".into(),
            ));
        }
        Ok(TlsOptions {
            verify,
            ca_certs: path("ssl_ca_certs"),
            certfile,
            keyfile,
        })
    }
}

/// Everything a connection is configured with.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) address: Address,
    pub(crate) tls: TlsOptions,
    pub(crate) db: i64,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) keys: KeyOptions,
    /// Kombu's `ack_emulation`: record deliveries in the unacked hash so a crashed consumer's
    /// messages come back.
    pub(crate) ack_emulation: bool,
    /// How long a delivered message may stay unacknowledged by a consumer that stopped
    /// renewing it (crashed) before any consumer restores it.
    pub(crate) visibility_timeout: Duration,
    /// How many expired deliveries one restore pass moves back (`None`: all).
    pub(crate) unacked_restore_limit: Option<usize>,
    /// How often a consumer looks for expired deliveries to restore.
    pub(crate) unacked_restore_interval: Duration,
    /// Expiry of the restore lock (`unacked_mutex`).
    pub(crate) unacked_mutex_expire: Duration,
    /// The blocking wait of an idle consumer (Kombu's BRPOP timeout).
    pub(crate) polling_interval: Duration,
    /// How long a command may wait for its reply (`socket_timeout`).
    pub(crate) socket_timeout: Duration,
    /// How long connecting may take (`socket_connect_timeout`).
    pub(crate) socket_connect_timeout: Duration,
    pub(crate) body_encoding: BodyEncoding,
    pub(crate) client_name: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("address", &self.address)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .field("visibility_timeout", &self.visibility_timeout)
            .finish_non_exhaustive()
    }
}

/// The options that name keys and channels (all of them get `global_keyprefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyOptions {
    pub(crate) global_keyprefix: String,
    pub(crate) sep: String,
    pub(crate) priority_steps: Vec<u8>,
    pub(crate) unacked_key: String,
    pub(crate) unacked_index_key: String,
    pub(crate) unacked_mutex_key: String,
    /// `None`: no prefix (`fanout_prefix=False`); otherwise the prefix, `{db}` filled in.
    pub(crate) fanout_prefix: Option<String>,
    pub(crate) fanout_patterns: bool,
}

/// Kombu's default `visibility_timeout`: one hour.
pub(crate) const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Options Kombu has that change nothing here (connection pooling and keep-alive are handled
/// by the client); accepted so Kombu/Celery configurations work unchanged.
const ACCEPTED_WITHOUT_EFFECT: &[&str] = &[
    "max_connections",
    "health_check_interval",
    "reauth_check_interval",
    "socket_keepalive",
    "socket_keepalive_options",
    "retry_on_timeout",
    "unacked_restore_throttle",
    "queue_order_strategy",
    "brpop_timeout",
];

impl Settings {
    pub(crate) fn from_options(options: &ConnectOptions) -> Result<Settings> {
        let url = &options.url;
        let invalid =
            |message: String| Error::new(ErrorKind::InvalidUrl, message).with_context("url", url.to_string());
        let scheme = url.scheme();
        let address = match scheme {
            "redis" | "rediss" => Address::Tcp {
                host: url
                    .host()
                    .filter(|h| !h.is_empty())
                    .unwrap_or("localhost")
                    .to_owned(),
                port: url.port().unwrap_or(6379),
                tls: scheme == "rediss",
            },
            "redis+socket" | "socket" | "redis+unix" | "unix" => {
                let path = url.path().filter(|p| !p.is_empty()).ok_or_else(|| {
                    invalid("a socket URL needs the socket's path (redis+socket:///run/redis.sock)".into())
                })?;
                Address::Unix(PathBuf::from(format!("{}{path}", url.host().unwrap_or(""))))
            }
            "sentinel" => {
                return Err(Error::unsupported(
                    "Redis Sentinel (sentinel://) is not supported yet; connect to the master with redis://",
                )
                .with_context("url", url.to_string()))
            }
            other => return Err(invalid(format!("not a Redis URL scheme: {other}"))),
        };
        let db = match &address {
            Address::Tcp { .. } => db_from_vhost(url).map_err(invalid)?,
            Address::Unix(_) => match options
                .transport_options
                .get("virtual_host")
                .or(options.transport_options.get("db"))
            {
                None => 0,
                Some(v) => v
                    .parse::<i64>()
                    .ok()
                    .filter(|d| *d >= 0)
                    .ok_or_else(|| invalid(format!("the database must be a number, got {v:?}")))?,
            },
        };
        for key in options.transport_options.keys() {
            if !KNOWN_OPTIONS.contains(&key.as_str()) && !ACCEPTED_WITHOUT_EFFECT.contains(&key.as_str()) {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("unknown Redis transport option {key:?}"),
                )
                .with_context("known", KNOWN_OPTIONS.join(", ")));
            }
        }
        let text = |key: &str, default: &str| -> String {
            options
                .transport_options
                .get(key)
                .cloned()
                .unwrap_or_else(|| default.to_owned())
        };
        let fanout_prefix = match options.transport_options.get("fanout_prefix").map(String::as_str) {
            None => Some(format!("/{db}.")),
            Some(v) => match parse_bool(v) {
                Some(true) => Some(format!("/{db}.")),
                Some(false) => None,
                None => Some(v.replace("{db}", &db.to_string())),
            },
        };
        let sep = text("sep", "\x06\x16");
        if sep.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "transport option sep must not be empty",
            ));
        }
        let keys = KeyOptions {
            global_keyprefix: text("global_keyprefix", ""),
            sep,
            priority_steps: priority_steps(options.transport_options.get("priority_steps"))?,
            unacked_key: text("unacked_key", "unacked"),
            unacked_index_key: text("unacked_index_key", "unacked_index"),
            unacked_mutex_key: text("unacked_mutex_key", "unacked_mutex"),
            fanout_prefix,
            fanout_patterns: flag(options, "fanout_patterns")?.unwrap_or(true),
        };
        let body_encoding = match options.transport_options.get("body_encoding").map(String::as_str) {
            None => BodyEncoding::Base64,
            Some(v) if v.eq_ignore_ascii_case("base64") => BodyEncoding::Base64,
            Some(v) if v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("none") || v.is_empty() => {
                BodyEncoding::Utf8
            }
            Some(v) => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "transport option body_encoding must be base64 or utf-8",
                )
                .with_context("body_encoding", v))
            }
        };
        Ok(Settings {
            db,
            username: url.username().filter(|u| !u.is_empty()).map(str::to_owned),
            password: url
                .password()
                .map(|p| p.expose().to_owned())
                .filter(|p| !p.is_empty()),
            tls: TlsOptions::from_options(options, matches!(address, Address::Tcp { tls: true, .. }))?,
            address,
            keys,
            ack_emulation: flag(options, "ack_emulation")?.unwrap_or(true),
            visibility_timeout: options
                .seconds("visibility_timeout")?
                .unwrap_or(DEFAULT_VISIBILITY_TIMEOUT),
            unacked_restore_limit: options.option::<usize>("unacked_restore_limit")?,
            unacked_restore_interval: options
                .seconds("unacked_restore_interval")?
                .unwrap_or(Duration::from_secs(10)),
            unacked_mutex_expire: options
                .seconds("unacked_mutex_expire")?
                .unwrap_or(Duration::from_secs(300)),
            polling_interval: options
                .seconds("polling_interval")?
                .unwrap_or(Duration::from_secs(1)),
            socket_timeout: options
                .seconds("socket_timeout")?
                .unwrap_or(Duration::from_secs(30)),
            socket_connect_timeout: options
                .seconds("socket_connect_timeout")?
                .unwrap_or(options.connect_timeout),
            body_encoding,
            client_name: options.transport_options.get("client_name").cloned(),
        })
    }
}

/// The options this transport reads.
const KNOWN_OPTIONS: &[&str] = &[
    "sep",
    "ack_emulation",
    "unacked_key",
    "unacked_index_key",
    "unacked_mutex_key",
    "unacked_mutex_expire",
    "visibility_timeout",
    "unacked_restore_limit",
    "unacked_restore_interval",
    "fanout_prefix",
    "fanout_patterns",
    "global_keyprefix",
    "priority_steps",
    "polling_interval",
    "socket_timeout",
    "socket_connect_timeout",
    "body_encoding",
    "client_name",
    "virtual_host",
    "db",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
];

/// Kombu: the database is the virtual host, `''`/`'/'` → 0, otherwise a number.
fn db_from_vhost(url: &BrokerUrl) -> std::result::Result<i64, String> {
    match url.virtual_host() {
        None | Some("/") | Some("") => Ok(0),
        Some(v) => v
            .trim_matches('/')
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| {
                format!("the database in a Redis URL must be a number (redis://host:6379/0), got {v:?}")
            }),
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn flag(options: &ConnectOptions, key: &'static str) -> Result<Option<bool>> {
    match options.transport_options.get(key) {
        None => Ok(None),
        Some(v) => parse_bool(v).map(Some).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("transport option {key} must be true or false"),
            )
            .with_context(key, v)
        }),
    }
}

/// `priority_steps`: `[0, 3, 6, 9]`, `0,3,6,9`; sorted, starting at 0, at most 10 steps.
fn priority_steps(raw: Option<&String>) -> Result<Vec<u8>> {
    let Some(raw) = raw else {
        return Ok(vec![0, 3, 6, 9]);
    };
    let invalid = || {
        Error::new(
            ErrorKind::InvalidArgument,
            "transport option priority_steps must be ascending numbers 0..=9 starting with 0, like [0,3,6,9]",
        )
        .with_context("priority_steps", raw)
    };
    let steps: Vec<u8> = raw
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().parse::<u8>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| invalid())?;
    let ascending = steps.windows(2).all(|w| w[0] < w[1]);
    if steps.first() != Some(&0) || !ascending || steps.iter().any(|s| *s > 9) {
        return Err(invalid());
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<Settings> {
        Settings::from_options(&ConnectOptions::new(BrokerUrl::parse(url)?))
    }

    #[test]
    fn urls_follow_kombu() -> Result<()> {
        let s = settings("redis://")?;
        assert_eq!(
            s.address,
            Address::Tcp {
                host: "localhost".into(),
                port: 6379,
                tls: false
            }
        );
        assert_eq!(s.db, 0);
        let s = settings("redis://u:p@10.0.0.1:6390/3")?;
        assert_eq!(s.db, 3);
        assert_eq!(s.username.as_deref(), Some("u"));
        assert_eq!(s.password.as_deref(), Some("p"));
        assert!(!format!("{s:?}").contains("\"p\""), "password redacted in Debug");
        assert_eq!(s.keys.fanout_prefix.as_deref(), Some("/3."));
        let s = settings("redis+socket:///run/redis.sock?virtual_host=2")?;
        assert_eq!(s.address, Address::Unix("/run/redis.sock".into()));
        assert_eq!(s.db, 2);
        assert!(matches!(
            settings("rediss://h:1/0")?.address,
            Address::Tcp { tls: true, .. }
        ));
        Ok(())
    }

    #[test]
    fn bad_urls_and_options_are_typed_errors() {
        let kind = |url: &str| settings(url).err().map(|e| e.kind());
        assert_eq!(kind("redis://h/notanumber"), Some(ErrorKind::InvalidUrl));
        assert_eq!(kind("redis+socket://"), Some(ErrorKind::InvalidUrl));
        assert_eq!(kind("sentinel://h:26379"), Some(ErrorKind::Unsupported));
        assert_eq!(
            kind("redis://h/0?visibility_timeout=-1"),
            Some(ErrorKind::InvalidArgument)
        );
        assert_eq!(
            kind("redis://h/0?priority_steps=3,1"),
            Some(ErrorKind::InvalidArgument)
        );
        assert_eq!(
            kind("redis://h/0?no_such_option=1"),
            Some(ErrorKind::InvalidArgument)
        );
        assert_eq!(
            kind("redis://h/0?max_connections=20"),
            None,
            "Kombu options without effect are accepted"
        );
    }

    #[test]
    fn options_keep_kombu_names_and_defaults() -> Result<()> {
        let s = settings("redis://h/0")?;
        assert_eq!(s.keys.sep, "\x06\x16");
        assert_eq!(s.keys.priority_steps, vec![0, 3, 6, 9]);
        assert_eq!(s.visibility_timeout, Duration::from_secs(3600));
        assert_eq!(s.keys.unacked_key, "unacked");
        let s = settings("redis://h/0?fanout_prefix=false&global_keyprefix=app:&priority_steps=[0,5]")?;
        assert_eq!(s.keys.fanout_prefix, None);
        assert_eq!(s.keys.global_keyprefix, "app:");
        assert_eq!(s.keys.priority_steps, vec![0, 5]);
        Ok(())
    }
}
