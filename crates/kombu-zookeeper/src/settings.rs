//! What a connection is configured with: the ensemble and the path prefix from the URL (Kombu's
//! rules), and the transport options.

use std::fmt;
use std::time::Duration;

use kombu_core::url::Secret;
use kombu_core::{ConnectOptions, Error, ErrorKind, Result};

/// ZooKeeper's default client port (Kombu's too).
pub(crate) const DEFAULT_PORT: u16 = 2181;
/// The server's default `jute.maxbuffer`: the largest packet it accepts.
pub(crate) const DEFAULT_JUTE_MAXBUFFER: usize = 0xfffff;

/// One connection's settings.
#[derive(Clone)]
pub(crate) struct Settings {
    /// `h1:2181,h2:2182[/chroot]`: every host of the URL and of the failover list.
    pub(crate) connect_string: String,
    /// The path prefix of every queue: `""` for the vhost `/`, else `/<vhost>`.
    pub(crate) root: String,
    /// Digest credentials (`user:password`), from the URL.
    pub(crate) digest: Option<Secret>,
    pub(crate) session_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) polling_interval: Duration,
    pub(crate) jute_maxbuffer: usize,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("connect_string", &self.connect_string)
            .field("root", &self.root)
            .field("digest", &self.digest.as_ref().map(|_| "****"))
            .field("session_timeout", &self.session_timeout)
            .field("polling_interval", &self.polling_interval)
            .field("jute_maxbuffer", &self.jute_maxbuffer)
            .finish()
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, message.into())
}

/// `host[:port]` entries of one URL's authority. `zookeeper://h1:2181,h2:2182/` parses as host
/// `h1:2181,h2` and port 2182: joined again, every entry gets its port (default 2181).
fn hosts_of(options: &ConnectOptions, out: &mut Vec<String>) -> Result<()> {
    let url = &options.url;
    let host = url.host().unwrap_or("127.0.0.1");
    let joined = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    for entry in joined.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let entry = if entry.starts_with('[') {
            // An IPv6 address: `[::1]` or `[::1]:2181`.
            if entry.contains("]:") {
                entry.to_owned()
            } else {
                format!("{entry}:{DEFAULT_PORT}")
            }
        } else if url.host().is_some_and(|h| h.contains(':') && !h.contains(',')) {
            // A bare IPv6 host from the URL parser (brackets stripped).
            format!(
                "[{}]:{}",
                url.host().unwrap_or_default(),
                url.port().unwrap_or(DEFAULT_PORT)
            )
        } else if entry.contains(':') {
            let (_, port) = entry.rsplit_once(':').unwrap_or_default();
            port.parse::<u16>()
                .map_err(|_| invalid(format!("bad port in ZooKeeper host {entry:?}")))?;
            entry.to_owned()
        } else {
            format!("{entry}:{DEFAULT_PORT}")
        };
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    Ok(())
}

/// Kombu's queue path prefix: `'/' + vhost.strip('/')`, nothing for the vhost `/`.
pub(crate) fn root_of(vhost: Option<&str>) -> String {
    match vhost.map(|v| v.trim_matches('/')) {
        None | Some("") => String::new(),
        Some(v) => format!("/{v}"),
    }
}

impl Settings {
    pub(crate) fn from_options(options: &ConnectOptions) -> Result<Settings> {
        let mut hosts = Vec::new();
        hosts_of(options, &mut hosts)?;
        for alternate in &options.alternates {
            hosts_of(alternate, &mut hosts)?;
        }
        let mut connect_string = hosts.join(",");
        if let Some(chroot) = options
            .transport_options
            .get("chroot")
            .map(|c| c.trim().trim_end_matches('/'))
            .filter(|c| !c.is_empty())
        {
            if !chroot.starts_with('/') {
                return Err(invalid(format!(
                    "chroot must be an absolute path, got {chroot:?}"
                )));
            }
            connect_string.push_str(chroot);
        }
        let digest = match (options.url.username(), options.url.password()) {
            (None, None) => None,
            (user, password) => Some(Secret::new(format!(
                "{}:{}",
                user.unwrap_or_default(),
                password.map(Secret::expose).unwrap_or_default()
            ))),
        };
        let session_timeout = options
            .seconds("session_timeout")?
            .unwrap_or(Duration::from_secs(10));
        let polling_interval = options
            .seconds("polling_interval")?
            .unwrap_or(Duration::from_secs(5))
            .max(Duration::from_millis(10));
        let jute_maxbuffer = options
            .option::<usize>("jute_maxbuffer")?
            .unwrap_or(DEFAULT_JUTE_MAXBUFFER);
        if jute_maxbuffer < 4096 {
            return Err(invalid("jute_maxbuffer must be at least 4096 bytes"));
        }
        Ok(Settings {
            connect_string,
            root: root_of(options.url.virtual_host()),
            digest,
            session_timeout,
            connect_timeout: options.connect_timeout,
            polling_interval,
            jute_maxbuffer,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(url: &str) -> Settings {
        let urls = kombu_core::url::parse_failover(url).unwrap();
        let mut options = urls.iter().map(|u| ConnectOptions::new(u.clone()));
        let first = options
            .next()
            .unwrap()
            .with_alternates(options.collect::<Vec<_>>());
        Settings::from_options(&first).unwrap()
    }

    #[test]
    fn urls_as_kombu() {
        let s = settings("zookeeper://h1:2181;zookeeper://h2:2182/vhost");
        assert_eq!(s.connect_string, "h1:2181,h2:2182");
        let s = settings("zookeeper://h1:2181,h2:2182/vhost");
        assert_eq!(s.connect_string, "h1:2181,h2:2182");
        assert_eq!(s.root, "/vhost");
        let s = settings("zookeeper://h1,h2/");
        assert_eq!(s.connect_string, "h1:2181,h2:2181");
        assert_eq!(s.root, "");
        let s = settings("zookeeper://localhost");
        assert_eq!(s.connect_string, "localhost:2181");
        let s = settings("zookeeper://[::1]:2181/a/b/");
        assert_eq!(s.connect_string, "[::1]:2181");
        assert_eq!(s.root, "/a/b");
    }

    #[test]
    fn chroot_with_several_hosts() {
        let s = settings("zookeeper://h1:2181,h2:2182/v?chroot=/apps/kombu/");
        assert_eq!(s.connect_string, "h1:2181,h2:2182/apps/kombu");
        assert_eq!(s.root, "/v");
    }

    #[test]
    fn credentials_are_redacted() {
        let s = settings("zookeeper://user:hunter2@h1:2181/v");
        assert_eq!(s.digest.as_ref().map(Secret::expose), Some("user:hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
