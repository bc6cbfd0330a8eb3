//! Connection settings: the URL and transport options, with Kombu's names and defaults.
//!
//! Kombu passes its AMQP `transport_options` straight to py-amqp's `Connection`; the options
//! that mean something to a lapin connection keep py-amqp's names here. Options that only tune
//! py-amqp's socket (`read_timeout`, `socket_settings`, …) are accepted and have no effect, so
//! a Celery configuration can be reused as it is. Any other option is an error.

use std::fmt;
use std::time::Duration;

use crate::tls::{self, TlsSettings};
use kombu_core::{Capabilities, ConnectOptions, Error, ErrorKind, Result};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};

/// Options accepted for compatibility with py-amqp that have no effect on a lapin connection.
const ACCEPTED_WITHOUT_EFFECT: &[&str] = &[
    "read_timeout",
    "write_timeout",
    "socket_settings",
    "client_properties",
    "login_method",
    "locale",
];

/// How a lost connection is re-established.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RecoveryPolicy {
    /// Reconnection attempts before giving up (`recovery_max_retries`, default 30).
    pub(crate) max_retries: u32,
    /// Wait before the second attempt (`recovery_interval_start`, default 0.2 s); doubled
    /// after each failure.
    pub(crate) interval_start: Duration,
    /// Longest wait between attempts (`recovery_interval_max`, default 2 s).
    pub(crate) interval_max: Duration,
}

impl RecoveryPolicy {
    /// The wait before attempt `attempt` (0-based; the first attempt does not wait).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.interval_start.saturating_mul(factor).min(self.interval_max)
    }
}

/// Everything the transport needs to connect and behave.
#[derive(Clone)]
pub(crate) struct Settings {
    /// The lapin URI (credentials included: never printed).
    uri: AMQPUri,
    /// `host:port/vhost` for logs and errors.
    pub(crate) display: String,
    /// Wait for a publisher confirm on every publish (`confirm_publish`, default **true**;
    /// py-amqp's default is false).
    pub(crate) confirm_publish: bool,
    /// How lost connections are re-established.
    pub(crate) recovery: RecoveryPolicy,
    /// Time allowed for one connection attempt.
    pub(crate) connect_timeout: Duration,
    /// TLS (`amqps://` or `ssl=true`), if on.
    pub(crate) tls: Option<TlsSettings>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("broker", &self.display)
            .field("user", &self.uri.authority.userinfo.username)
            .field("password", &"****")
            .field("heartbeat", &self.uri.query.heartbeat)
            .field("frame_max", &self.uri.query.frame_max)
            .field("channel_max", &self.uri.query.channel_max)
            .field("confirm_publish", &self.confirm_publish)
            .field("recovery", &self.recovery)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

/// What a connection with these confirm settings supports: `base` (the driver's static
/// capabilities) without publisher confirms when `confirm_publish` is off (a publish then
/// succeeds before the broker stored it, unless it asks for a confirm itself).
pub(crate) fn connection_capabilities(base: Capabilities, confirm_publish: bool) -> Capabilities {
    let mut caps = base;
    caps.publisher_confirms &= confirm_publish;
    caps
}

impl Settings {
    /// Settings for the lapin driver from connect options (URL plus transport options).
    pub(crate) fn from_options(options: &ConnectOptions) -> Result<Settings> {
        Settings::for_driver(options, Driver::Lapin)
    }

    /// Settings for `driver` from connect options: the same URL rules and options for both
    /// drivers, only the scheme says which one (`amqp://` lapin, `amqp+amiquip://` amiquip).
    pub(crate) fn for_driver(options: &ConnectOptions, driver: Driver) -> Result<Settings> {
        let url = &options.url;
        let full_scheme = url.scheme().to_ascii_lowercase();
        let scheme = match (driver, full_scheme.strip_suffix(AMIQUIP_SUFFIX)) {
            (Driver::Amiquip, Some(base)) => base.to_owned(),
            (Driver::Lapin, None) => url.inner_scheme().to_ascii_lowercase(),
            (Driver::Lapin, Some(_)) => {
                return Err(Error::new(
                    ErrorKind::InvalidUrl,
                    format!(
                        "scheme {full_scheme:?} selects the amiquip driver; enable the \
                         `amqp-amiquip` feature of the `kombu` crate"
                    ),
                ))
            }
            (Driver::Amiquip, None) => full_scheme.clone(),
        };
        let tls = match scheme.as_str() {
            "amqp" | "pyamqp" | "librabbitmq" => false,
            "amqps" => true,
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidUrl,
                    format!("the amqp transport does not serve scheme {other:?}"),
                ))
            }
        };
        // py-amqp's `ssl=True` turns TLS on whatever the scheme; `amqps://` always is TLS.
        let tls = match options.transport_options.get("ssl") {
            Some(raw) => parse_bool("ssl", raw)? || tls,
            None => tls,
        };
        if !tls {
            if let Some(key) = tls::KEYS
                .iter()
                .find(|k| options.transport_options.contains_key(**k))
            {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("transport option {key} needs TLS: an amqps:// URL or ssl=true"),
                ));
            }
        } else if driver == Driver::Amiquip {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "the amiquip driver has no TLS; use amqps:// with the lapin driver (the `amqp-tls` \
                 feature of the `kombu` crate)",
            ));
        } else if !cfg!(feature = "tls") {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "TLS (amqps:// or ssl=true) needs the `amqp-tls` feature of the `kombu` crate (the \
                 `tls` feature of kombu-amqp)",
            ));
        }
        for key in options.transport_options.keys() {
            if !KNOWN_OPTIONS.contains(&key.as_str())
                && !tls::KEYS.contains(&key.as_str())
                && !ACCEPTED_WITHOUT_EFFECT.contains(&key.as_str())
            {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("unknown transport option {key:?} for the amqp transport"),
                )
                .with_context("known", KNOWN_OPTIONS.join(", ")));
            }
        }

        // Kombu: localhost → 127.0.0.1 (py-amqp would otherwise try ::1 first).
        let host = match url.host() {
            None | Some("") | Some("localhost") => "127.0.0.1".to_owned(),
            Some(host) => host.to_owned(),
        };
        // Kombu's pyamqp transport: 5671 for TLS, 5672 otherwise.
        let port = url.port().unwrap_or(if tls { 5671 } else { 5672 });
        let tls = if tls {
            Some(tls::from_options(options, url.host())?)
        } else {
            None
        };
        let username = url
            .username()
            .filter(|u| !u.is_empty())
            .unwrap_or("guest")
            .to_owned();
        let password = url
            .password()
            .map(|p| p.expose().to_owned())
            .unwrap_or_else(|| "guest".to_owned());
        let vhost = url.virtual_host().unwrap_or("/").to_owned();

        let heartbeat = match options.seconds("heartbeat")? {
            Some(d) => Some(d),
            None => options.heartbeat,
        };
        // AMQP negotiates whole seconds.
        let heartbeat = heartbeat.map(|d| u16::try_from(d.as_secs().max(1)).unwrap_or(u16::MAX));
        let connect_timeout = options
            .seconds("connect_timeout")?
            .unwrap_or(options.connect_timeout);
        let query = AMQPQueryString {
            frame_max: options.option::<u32>("frame_max")?,
            channel_max: options.option::<u16>("channel_max")?,
            heartbeat,
            connection_timeout: Some(u64::try_from(connect_timeout.as_millis()).unwrap_or(u64::MAX)),
            ..Default::default()
        };
        let uri = AMQPUri {
            scheme: if tls.is_some() {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo { username, password },
                host: host.clone(),
                port,
            },
            vhost: vhost.clone(),
            query,
        };
        let confirm_publish = match options.transport_options.get("confirm_publish") {
            None => true,
            Some(raw) => parse_bool("confirm_publish", raw)?,
        };
        let recovery = RecoveryPolicy {
            max_retries: options.option::<u32>("recovery_max_retries")?.unwrap_or(30),
            interval_start: options
                .seconds("recovery_interval_start")?
                .unwrap_or(Duration::from_millis(200)),
            interval_max: options
                .seconds("recovery_interval_max")?
                .unwrap_or(Duration::from_secs(2)),
        };
        Ok(Settings {
            uri,
            display: format!("{host}:{port}/{vhost}"),
            confirm_publish,
            recovery,
            connect_timeout,
            tls,
        })
    }

    /// The lapin URI to connect with.
    pub(crate) fn uri(&self) -> AMQPUri {
        self.uri.clone()
    }
}

/// The suffix of the schemes that select the amiquip driver (`amqp+amiquip://`).
pub(crate) const AMIQUIP_SUFFIX: &str = "+amiquip";

/// Which AMQP client library a transport drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    /// lapin, async (`amqp://`, `pyamqp://`).
    Lapin,
    /// amiquip, blocking, on its own threads (`amqp+amiquip://`, `pyamqp+amiquip://`).
    Amiquip,
}

/// Transport options with an effect.
const KNOWN_OPTIONS: &[&str] = &[
    "heartbeat",
    "connect_timeout",
    "frame_max",
    "channel_max",
    "confirm_publish",
    "recovery_max_retries",
    "recovery_interval_start",
    "recovery_interval_max",
    "ssl",
];

fn parse_bool(key: &str, raw: &str) -> Result<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("transport option {key} must be true or false, not {raw:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_confirm_publish() {
        let on = connection_capabilities(crate::CAPABILITIES, true);
        assert!(on.publisher_confirms);
        let off = connection_capabilities(crate::CAPABILITIES, false);
        assert!(
            !off.publisher_confirms,
            "without confirms the connection does not confirm"
        );
        assert_eq!(
            Capabilities {
                publisher_confirms: true,
                ..off
            },
            on
        );
    }

    fn settings(url: &str) -> Result<Settings> {
        let url = url.parse().map_err(|e: Error| e)?;
        Settings::from_options(&ConnectOptions::new(url))
    }

    #[test]
    fn kombu_defaults() {
        let s = settings("amqp://").unwrap();
        assert_eq!(s.uri.authority.host, "127.0.0.1");
        assert_eq!(s.uri.authority.port, 5672);
        assert_eq!(s.uri.authority.userinfo.username, "guest");
        assert_eq!(s.uri.authority.userinfo.password, "guest");
        assert_eq!(s.uri.vhost, "/");
        assert!(s.confirm_publish);
    }

    #[test]
    fn vhost_user_and_options_from_the_url() {
        let s =
            settings("pyamqp://bob:s%40cret@rabbit:5673/prod?heartbeat=10&confirm_publish=false").unwrap();
        assert_eq!(s.uri.authority.host, "rabbit");
        assert_eq!(s.uri.authority.port, 5673);
        assert_eq!(s.uri.authority.userinfo.password, "s@cret");
        assert_eq!(s.uri.vhost, "prod");
        assert_eq!(s.uri.query.heartbeat, Some(10));
        assert!(!s.confirm_publish);
        let shown = format!("{s:?}");
        assert!(!shown.contains("s@cret"), "password leaked: {shown}");
        assert_eq!(settings("amqp://h//").unwrap().uri.vhost, "/");
    }

    #[test]
    fn bad_options_are_typed_errors() {
        let err = settings("amqp://h/?visibility_timeout=3").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let err = settings("amqp://h/?confirm_publish=maybe").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let err = settings("amqp://h/?ssl=maybe").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let err = settings("amqp://h/?ca_certs=/etc/ca.pem").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("needs TLS"), "{err}");
        assert!(settings("amqp://h/?read_timeout=5").is_ok());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_without_the_feature_names_the_feature() {
        for url in ["amqps://h/", "amqp://h/?ssl=true"] {
            let err = settings(url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{url}");
            assert!(err.to_string().contains("amqp-tls"), "{err}");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_defaults_to_port_5671_and_the_url_host() {
        let s = settings("amqps://bob:s%40cret@localhost/prod").unwrap();
        assert_eq!(s.uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(s.uri.authority.port, 5671);
        let tls = s.tls.as_ref().unwrap();
        assert!(tls.verify);
        assert_eq!(tls.server_name, "localhost");
        let shown = format!("{s:?}");
        assert!(!shown.contains("s@cret"), "password leaked: {shown}");
        let s = settings("amqp://rabbit/?ssl=true&cert_reqs=CERT_NONE&server_hostname=mq.example").unwrap();
        assert_eq!(s.uri.authority.port, 5671);
        let tls = s.tls.as_ref().unwrap();
        assert!(!tls.verify);
        assert_eq!(tls.server_name, "mq.example");
        assert!(settings("amqps://h:5000/?ssl=false").unwrap().tls.is_some());
        assert_eq!(settings("amqps://h:5000/").unwrap().uri.authority.port, 5000);
    }

    #[test]
    fn the_scheme_selects_the_driver() {
        let options = |url: &str| ConnectOptions::new(url.parse().unwrap());
        let s = Settings::for_driver(
            &options("pyamqp+amiquip://bob:pw@rabbit:5673/prod"),
            Driver::Amiquip,
        )
        .unwrap();
        assert_eq!(s.uri().authority.host, "rabbit");
        assert_eq!(s.uri().vhost, "prod");
        let err = Settings::from_options(&options("amqp+amiquip://h/")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUrl);
        assert!(err.to_string().contains("amqp-amiquip"), "{err}");
        let err = Settings::for_driver(&options("amqps+amiquip://h/"), Driver::Amiquip).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }

    #[test]
    fn recovery_backoff_doubles_up_to_the_cap() {
        let p = settings("amqp://").unwrap().recovery;
        assert_eq!(p.delay(0), Duration::ZERO);
        assert_eq!(p.delay(1), Duration::from_millis(200));
        assert_eq!(p.delay(2), Duration::from_millis(400));
        assert_eq!(p.delay(10), Duration::from_secs(2));
    }
}
