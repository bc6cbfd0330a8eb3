//! Broker URLs in Kombu's forms.
//!
//! `scheme://user:pass@host:port/vhost?key=value`, failover lists `url1;url2`, and
//! `transport+url` prefixes (`sqla+sqlite:///…`, `redis+socket:///…`). User, password, host,
//! path and query are percent-decoded. The password is a [`Secret`]: every `Debug` and
//! `Display` of a URL shows `****` instead.

use std::fmt;
use std::str::FromStr;

use percent_encoding::percent_decode_str;

use crate::error::{Error, ErrorKind, Result};

/// A string that never appears in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for handing to a driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"****\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// Query keys whose values are redacted like passwords.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "credential", "key"]
        .iter()
        .any(|s| key.contains(s))
}

/// A parsed broker URL.
///
/// ```
/// use kombu_core::BrokerUrl;
/// let url: BrokerUrl = "amqp://guest:s%40cret@rabbit:5672//?heartbeat=10".parse().unwrap();
/// assert_eq!(url.scheme(), "amqp");
/// assert_eq!(url.host(), Some("rabbit"));
/// assert_eq!(url.port(), Some(5672));
/// assert_eq!(url.username(), Some("guest"));
/// assert_eq!(url.password().map(|p| p.expose()), Some("s@cret"));
/// assert_eq!(url.virtual_host(), Some("/"));
/// assert_eq!(url.query_value("heartbeat"), Some("10"));
/// // The password never shows:
/// assert_eq!(url.to_string(), "amqp://guest:****@rabbit:5672//?heartbeat=10");
/// assert!(!format!("{url:?}").contains("cret"));
/// ```
#[derive(Clone, PartialEq)]
pub struct BrokerUrl {
    scheme: String,
    username: Option<String>,
    password: Option<Secret>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    query: Vec<(String, String)>,
}

impl BrokerUrl {
    /// Parse one URL (not a failover list; see [`parse_failover`]).
    pub fn parse(input: &str) -> Result<BrokerUrl> {
        let input = input.trim();
        let invalid = |msg: &str| {
            Error::new(ErrorKind::InvalidUrl, msg.to_owned()).with_context("url", redact_raw(input))
        };
        if input.is_empty() {
            return Err(invalid("empty broker URL"));
        }
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| invalid("missing \"://\" after the transport scheme"))?;
        if scheme.is_empty() {
            return Err(invalid("missing transport scheme"));
        }
        let valid_scheme = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '_');
        if !valid_scheme {
            return Err(invalid(
                "invalid transport scheme (letters, digits, '+', '-' and '_' only; \
                 module paths are not accepted)",
            ));
        }

        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], Some(&before_query[i..])),
            None => (before_query, None),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let decode = |s: &str| -> Result<String> {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| invalid("percent-encoded text is not UTF-8"))
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (
                    Some(decode(u)?).filter(|u| !u.is_empty()),
                    Some(Secret(decode(p)?)),
                ),
                None => (Some(decode(info)?).filter(|u| !u.is_empty()), None),
            },
        };
        let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
            let end = stripped
                .find(']')
                .ok_or_else(|| invalid("unterminated IPv6 address"))?;
            let host = &stripped[..end];
            let after = &stripped[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) if !p.is_empty() => Some(parse_port(p).map_err(|m| invalid(&m))?),
                Some(_) | None if after.is_empty() || after == ":" => None,
                _ => return Err(invalid("unexpected text after IPv6 address")),
            };
            (Some(host.to_owned()), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => {
                    let port = if p.is_empty() {
                        None
                    } else {
                        Some(parse_port(p).map_err(|m| invalid(&m))?)
                    };
                    (Some(decode(h)?), port)
                }
                None => (Some(decode(hostport)?), None),
            }
        };
        let host = host.filter(|h| !h.is_empty());
        let path = path.map(decode).transpose()?;
        let mut pairs = Vec::new();
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let k = decode(&k.replace('+', " "))?;
                let v = decode(&v.replace('+', " "))?;
                pairs.push((k, v));
            }
        }
        Ok(BrokerUrl {
            scheme: scheme.to_ascii_lowercase(),
            username,
            password,
            host,
            port,
            path,
            query: pairs,
        })
    }

    /// The full scheme, lower-cased (`"amqp"`, `"sqla+sqlite"`).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The transport prefix of a `transport+url` scheme (`"sqla"` for `sqla+sqlite`), else the
    /// scheme.
    pub fn transport_prefix(&self) -> &str {
        self.scheme.split_once('+').map_or(&self.scheme, |(p, _)| p)
    }

    /// The scheme after a `transport+` prefix (`"sqlite"` for `sqla+sqlite`), else the scheme.
    pub fn inner_scheme(&self) -> &str {
        self.scheme.split_once('+').map_or(&self.scheme, |(_, s)| s)
    }

    /// User name, percent-decoded.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Password, percent-decoded.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// Host name or address (IPv6 without brackets).
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Port.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The path after the authority, percent-decoded, including its leading `/`.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// Kombu's virtual host: the path minus its first `/` (`//` → `/`, `/vh` → `vh`), or
    /// `None` when the URL has no path.
    pub fn virtual_host(&self) -> Option<&str> {
        let path = self.path.as_deref()?;
        let vhost = path.strip_prefix('/').unwrap_or(path);
        Some(if vhost.is_empty() { "/" } else { vhost })
    }

    /// Query parameters in order.
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }

    /// The last value of query parameter `key`.
    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The URL as text; the password only when `include_password` (Kombu's `as_uri`).
    pub fn as_uri(&self, include_password: bool) -> String {
        let mut out = format!("{}://", self.scheme);
        if self.username.is_some() || self.password.is_some() {
            if let Some(u) = &self.username {
                out.push_str(&encode_component(u));
            }
            if let Some(p) = &self.password {
                out.push(':');
                if include_password {
                    out.push_str(&encode_component(p.expose()));
                } else {
                    out.push_str("****");
                }
            }
            out.push('@');
        }
        if let Some(h) = &self.host {
            if h.contains(':') {
                out.push('[');
                out.push_str(h);
                out.push(']');
            } else {
                out.push_str(h);
            }
        }
        if let Some(p) = self.port {
            out.push(':');
            out.push_str(&p.to_string());
        }
        if let Some(p) = &self.path {
            out.push_str(p);
        }
        for (i, (k, v)) in self.query.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(k);
            out.push('=');
            if !include_password && is_secret_key(k) {
                out.push_str("****");
            } else {
                out.push_str(v);
            }
        }
        out
    }
}

fn parse_port(p: &str) -> std::result::Result<u16, String> {
    p.parse::<u16>()
        .map_err(|_| format!("invalid port {p:?} (expected 0-65535)"))
}

fn encode_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2D", "-")
        .replace("%2E", ".")
        .replace("%5F", "_")
}

/// Redact the password of a raw URL string that may not even parse.
pub fn redact_raw(input: &str) -> String {
    input
        .split(';')
        .map(|one| {
            let Some((scheme, rest)) = one.split_once("://") else {
                return one.to_owned();
            };
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let authority = &rest[..authority_end];
            match authority.rfind('@') {
                Some(at) => match authority[..at].split_once(':') {
                    Some((user, _)) => format!(
                        "{scheme}://{user}:****@{}{}",
                        &authority[at + 1..],
                        &rest[authority_end..]
                    ),
                    None => one.to_owned(),
                },
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

impl FromStr for BrokerUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BrokerUrl::parse(s)
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_uri(false))
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({:?})", self.as_uri(false))
    }
}

/// Parse a Kombu failover list: URLs separated by `;` (`"amqp://a//;amqp://b//"`).
///
/// ```
/// let urls = kombu_core::url::parse_failover("redis://a:6379/0; redis://b:6380/0").unwrap();
/// assert_eq!(urls.len(), 2);
/// assert_eq!(urls[1].port(), Some(6380));
/// ```
pub fn parse_failover(input: &str) -> Result<Vec<BrokerUrl>> {
    let urls: Vec<BrokerUrl> = input
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(BrokerUrl::parse)
        .collect::<Result<_>>()?;
    if urls.is_empty() {
        return Err(Error::new(ErrorKind::InvalidUrl, "empty broker URL"));
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_host_follows_kombu() {
        let vh = |u: &str| BrokerUrl::parse(u).unwrap().virtual_host().map(str::to_owned);
        assert_eq!(vh("amqp://h//").as_deref(), Some("/"));
        assert_eq!(vh("amqp://h/vh").as_deref(), Some("vh"));
        assert_eq!(vh("amqp://h/").as_deref(), Some("/"));
        assert_eq!(vh("amqp://h"), None);
        assert_eq!(vh("redis://h:6379/3").as_deref(), Some("3"));
    }

    #[test]
    fn transport_prefix_and_paths() {
        let u = BrokerUrl::parse("sqla+sqlite:////tmp/kombu.db").unwrap();
        assert_eq!(u.transport_prefix(), "sqla");
        assert_eq!(u.inner_scheme(), "sqlite");
        assert_eq!(u.host(), None);
        assert_eq!(u.path(), Some("//tmp/kombu.db"));
        let m = BrokerUrl::parse("memory://").unwrap();
        assert_eq!((m.host(), m.path()), (None, None));
    }

    #[test]
    fn ipv6_hosts() {
        let u = BrokerUrl::parse("redis://[::1]:6380/0").unwrap();
        assert_eq!(u.host(), Some("::1"));
        assert_eq!(u.port(), Some(6380));
        assert_eq!(u.to_string(), "redis://[::1]:6380/0");
    }

    #[test]
    fn bad_urls_are_invalid_url_errors_without_passwords() {
        for bad in [
            "",
            "localhost",
            "://x",
            "amqp://u:hunter2@h:99999//",
            "kombu.transport.redis:Transport://x",
            "1amqp://h",
            "redis://[::1",
        ] {
            let err = BrokerUrl::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{bad}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn secrets_in_query_are_redacted() {
        let u = BrokerUrl::parse("sqs://AKIA:abc%2Fdef@h?aws_secret=zzz&region=eu").unwrap();
        assert_eq!(u.password().map(Secret::expose), Some("abc/def"));
        let shown = u.to_string();
        assert!(!shown.contains("zzz") && !shown.contains("abc"), "{shown}");
        assert!(shown.contains("region=eu"));
        assert_eq!(
            BrokerUrl::parse(&u.as_uri(true))
                .unwrap()
                .password()
                .map(Secret::expose),
            Some("abc/def")
        );
    }

    #[test]
    fn redact_raw_handles_unparseable_lists() {
        assert_eq!(
            redact_raw("amqp://u:p@h//;redis://x:y@r:1/0"),
            "amqp://u:****@h//;redis://x:****@r:1/0"
        );
    }

    #[test]
    fn failover_lists() {
        assert_eq!(parse_failover("memory://;memory://").unwrap().len(), 2);
        assert_eq!(parse_failover(" ; ").unwrap_err().kind(), ErrorKind::InvalidUrl);
    }
}
