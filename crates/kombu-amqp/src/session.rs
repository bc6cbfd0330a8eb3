//! One logical connection to RabbitMQ that outlives lost sockets.
//!
//! A [`Session`] owns the current lapin connection, numbered by a generation that grows with
//! every reconnection, and the [`Topology`] declared through it. Whoever notices that the
//! connection is gone calls [`Session::recover`]: one caller reconnects (with the recovery
//! policy's backoff), replays the topology, and bumps the generation; the others wait for it
//! and reuse the result. Channels and consumers compare generations to know when to reopen.
//!
//! Recovery walks the connection's failover list: the URL the lost connection was on first,
//! then the facade's other URLs for this transport ([`ConnectOptions::alternates`]) round
//! robin, so a broker that is gone for good is replaced by the next one of the list with the
//! topology declared there, instead of the transport giving up and the facade starting a new
//! one that knows nothing of what was declared.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kombu_core::{BrokerUrl, ConnectOptions, Error, ErrorKind, Result};
use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::{ConnectionProperties, ExchangeKind};
use tracing::{debug, info, warn};

use crate::convert::{short, table_to_amqp};
use crate::errors::{from_lapin, Op};
use crate::settings::{Driver, Settings};
use crate::topology::{Declaration, Topology};

/// The lapin connection of one generation.
#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) connection: Arc<lapin::Connection>,
    pub(crate) generation: u64,
    /// Which URL of the failover list it is connected to: 0 is the one the transport was
    /// made for, `i` is `alternates[i - 1]`. The next recovery starts there.
    url_index: usize,
}

impl Live {
    /// Whether this connection still works.
    pub(crate) fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }
}

/// A connection that reconnects and re-declares its topology.
pub(crate) struct Session {
    /// The settings of the URL the transport was made for. Its behaviour (confirms, the
    /// recovery policy) holds whichever URL the session is connected to.
    pub(crate) settings: Settings,
    /// The URL the transport was made for (index 0 of the failover list).
    url: BrokerUrl,
    /// The other URLs of the failover list, tried in turn when recovering. Kept as options,
    /// not settings, so each is validated when it is tried (TLS files are read then).
    alternates: Vec<ConnectOptions>,
    current: RwLock<Live>,
    /// Held while reconnecting, so one caller reconnects and the others wait.
    reconnecting: tokio::sync::Mutex<()>,
    pub(crate) topology: Topology,
    closed: AtomicBool,
    /// Set when a recovery ran out of attempts: the facade then fails over to the next URL.
    gave_up: AtomicBool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("url", &self.url_at(self.read().url_index))
            .field("alternates", &self.alternates.len())
            .field("generation", &self.read().generation)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Session {
    /// Connect once to `options.url` (no retries, no alternates: the facade's
    /// `ensure_connection` retries and fails over first connections). `settings` are
    /// `options`' own, already validated.
    pub(crate) async fn connect(settings: Settings, options: &ConnectOptions) -> Result<Arc<Session>> {
        let connection = open(&settings).await?;
        info!(
            broker = %settings.display,
            alternates = options.alternates.len(),
            "amqp connected"
        );
        Ok(Arc::new(Session {
            settings,
            url: options.url.clone(),
            alternates: options.alternates.clone(),
            current: RwLock::new(Live {
                connection: Arc::new(connection),
                generation: 1,
                url_index: 0,
            }),
            reconnecting: tokio::sync::Mutex::new(()),
            topology: Topology::default(),
            closed: AtomicBool::new(false),
            gave_up: AtomicBool::new(false),
        }))
    }

    fn read(&self) -> Live {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether `close` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the session can still be used: not closed, and not given up on after a
    /// recovery ran out of attempts (a lost connection being recovered counts as usable).
    pub(crate) fn is_usable(&self) -> bool {
        !self.is_closed() && !self.gave_up.load(Ordering::Acquire)
    }

    /// Whether the current connection works.
    pub(crate) fn is_connected(&self) -> bool {
        !self.is_closed() && self.read().is_connected()
    }

    /// The current connection, reconnecting first if it is gone.
    pub(crate) async fn live(&self) -> Result<Live> {
        let live = self.read();
        if live.is_connected() {
            return Ok(live);
        }
        self.recover(live.generation).await
    }

    /// Open a channel on the current connection (reconnecting first if needed).
    pub(crate) async fn open_channel(&self) -> Result<(lapin::Channel, u64)> {
        let live = self.live().await?;
        match live.connection.create_channel().await {
            Ok(channel) => Ok((channel, live.generation)),
            Err(e) if crate::errors::is_connection_loss(&e) => {
                let live = self.recover(live.generation).await?;
                let channel = live
                    .connection
                    .create_channel()
                    .await
                    .map_err(|e| from_lapin(Op::OpenChannel, e))?;
                Ok((channel, live.generation))
            }
            Err(e) => Err(from_lapin(Op::OpenChannel, e)),
        }
    }

    /// Reconnect, unless someone already replaced generation `stale`; replays the topology.
    pub(crate) async fn recover(&self, stale: u64) -> Result<Live> {
        let _guard = self.reconnecting.lock().await;
        if self.is_closed() {
            return Err(Error::new(ErrorKind::Closed, "the amqp connection was closed"));
        }
        let live = self.read();
        if live.generation > stale && live.is_connected() {
            return Ok(live);
        }
        let policy = self.settings.recovery;
        let lost_on = live.url_index;
        let candidates = candidates(&self.settings, &self.alternates, lost_on, Driver::Lapin);
        let mut last_error = None;
        // `recovery_max_retries` counts attempts over all URLs together: the budget (and its
        // backoff) is the same whether the list has one URL or several.
        for (attempt, (url_index, settings)) in (0..=policy.max_retries).zip(candidates.iter().cycle()) {
            tokio::time::sleep(policy.delay(attempt)).await;
            if self.is_closed() {
                return Err(Error::new(ErrorKind::Closed, "the amqp connection was closed"));
            }
            let url = self.url_at(*url_index);
            match open(settings).await {
                Ok(connection) => {
                    let connection = Arc::new(connection);
                    if let Err(e) = self.replay(&connection).await {
                        warn!(url = %url, error = %e, attempt, "amqp topology replay failed; retrying");
                        last_error = Some(e);
                        continue;
                    }
                    let live = Live {
                        connection,
                        generation: live.generation + 1,
                        url_index: *url_index,
                    };
                    *self
                        .current
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = live.clone();
                    info!(
                        url = %url,
                        failed_over = *url_index != lost_on,
                        generation = live.generation,
                        attempts = attempt + 1,
                        "amqp connection recovered, topology re-declared"
                    );
                    return Ok(live);
                }
                Err(e) => {
                    debug!(url = %url, error = %e, attempt, "amqp reconnect attempt failed");
                    last_error = Some(e);
                }
            }
        }
        self.gave_up.store(true, Ordering::Release);
        let cause = last_error.map_or_else(|| "no attempt was made".to_owned(), |e| e.to_string());
        let urls = candidates
            .iter()
            .map(|(i, _)| self.url_at(*i).to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Err(Error::new(
            ErrorKind::Connection,
            format!(
                "amqp connection lost and not recovered after {} attempts on {urls}: {cause}",
                policy.max_retries + 1
            ),
        ))
    }

    /// The URL at `index` of the failover list (0: the transport's own).
    fn url_at(&self, index: usize) -> &BrokerUrl {
        index
            .checked_sub(1)
            .and_then(|i| self.alternates.get(i))
            .map_or(&self.url, |alternate| &alternate.url)
    }

    /// Declare every recorded entity again on `connection`.
    async fn replay(&self, connection: &lapin::Connection) -> Result<()> {
        let entries = self.topology.entries();
        if entries.is_empty() {
            return Ok(());
        }
        let mut channel = connection
            .create_channel()
            .await
            .map_err(|e| from_lapin(Op::OpenChannel, e))?;
        for declaration in &entries {
            if let Err(e) = declare(&channel, declaration).await {
                if e.kind() == ErrorKind::Connection {
                    return Err(e);
                }
                // One entity the broker now refuses (e.g. redeclared elsewhere with other
                // arguments) must not keep the rest from coming back.
                warn!(error = %e, ?declaration, "amqp re-declaration refused; continuing");
                channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| from_lapin(Op::OpenChannel, e))?;
            }
        }
        let _ = bounded_close(channel.close(200, "topology restored".into())).await;
        Ok(())
    }

    /// Close the connection; channels and consumers end.
    pub(crate) async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let live = self.read();
        if live.is_connected() {
            // Channels already closing make lapin report an error here although the
            // connection closes all the same: logged, not returned.
            let closing = live.connection.close(200, "kombu-rs connection closed".into());
            match bounded_close(closing).await {
                Some(Ok(())) => {}
                Some(Err(e)) => debug!(error = %e, "amqp connection close reported an error"),
                None => warn!("amqp connection close not confirmed within the close timeout"),
            }
        }
        Ok(())
    }
}

/// How long a close handshake (`channel.close`, `connection.close`) may wait for the broker's
/// `close-ok`.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `fut` (a close handshake), given up after [`CLOSE_TIMEOUT`] (`None`). Closing must end even
/// when the broker, or lapin's side of a connection that is going away, never answers: a hung
/// `close` would hang the application's shutdown. Dropping the handshake loses nothing: what
/// the channel had unacked the broker requeues when the socket goes.
pub(crate) async fn bounded_close<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(CLOSE_TIMEOUT, fut).await.ok()
}

/// The URLs to recover on, in the order to try them, starting with `from` (the index of the
/// URL the lost connection was on: 0 is the transport's own, whose `settings` were validated
/// when it connected, `i` is `alternates[i - 1]`), each with its index and settings.
///
/// The same transport options hold for every URL (the facade put them in each alternate's
/// options, as Kombu applies one `transport_options` to the whole list), but an alternate's
/// own query may carry a bad option, and its TLS files are read only now: an alternate whose
/// settings are invalid is logged with its typed error and left out, so it costs no attempt.
///
/// Shared by both drivers (`driver` picks the scheme rules each alternate is checked with),
/// so they fail over across the same list in the same order.
pub(crate) fn candidates(
    settings: &Settings,
    alternates: &[ConnectOptions],
    from: usize,
    driver: Driver,
) -> Vec<(usize, Settings)> {
    let mut all = Vec::with_capacity(alternates.len() + 1);
    all.push((0, settings.clone()));
    for (i, alternate) in alternates.iter().enumerate() {
        match Settings::for_driver(alternate, driver) {
            Ok(settings) => all.push((i + 1, settings)),
            Err(e) => warn!(
                url = %alternate.url,
                kind = ?e.kind(),
                error = %e,
                "amqp failover URL skipped during recovery: its settings are invalid"
            ),
        }
    }
    let start = all.iter().position(|(i, _)| *i == from).unwrap_or(0);
    all.rotate_left(start);
    all
}

/// Open one lapin connection within the connect timeout.
async fn open(settings: &Settings) -> Result<lapin::Connection> {
    let properties = ConnectionProperties::default().with_connection_name("kombu-rs".into());
    let timeout = settings.connect_timeout.max(Duration::from_millis(100));
    match tokio::time::timeout(timeout, connect(settings, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(from_lapin(Op::Connect, e).with_context("broker", &settings.display)),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("amqp connect to {} timed out", settings.display),
        )
        .with_context("timeout_ms", timeout.as_millis())),
    }
}

/// One lapin connection attempt: plain, or TLS with the settings' rustls configuration.
async fn connect(settings: &Settings, properties: ConnectionProperties) -> lapin::Result<lapin::Connection> {
    match &settings.tls {
        #[cfg(feature = "tls")]
        Some(tls) => {
            use lapin::tcp::AMQPUriTcpExt as _;
            let connector = tls.connector.clone();
            let server_name = tls.server_name.clone();
            let runtime = lapin::runtime::default_runtime()?;
            // lapin's own amqps:// path takes only extra authorities (`OwnedTLSConfig`);
            // the TCP connection is lapin's, the handshake ours, with our configuration.
            lapin::Connection::connector(
                settings.uri(),
                runtime,
                async move |uri, runtime| {
                    let mut plain = uri;
                    plain.scheme = lapin::uri::AMQPScheme::AMQP;
                    let stream = plain.connect_async(&runtime).await?;
                    Ok(stream.into_rustls(&connector, &server_name).await?)
                },
                properties,
            )
            .await
        }
        _ => lapin::Connection::connect_uri(settings.uri(), properties).await,
    }
}

/// Send one declaration.
pub(crate) async fn declare(channel: &lapin::Channel, declaration: &Declaration) -> Result<()> {
    match declaration {
        Declaration::Exchange(exchange) => {
            let options = ExchangeDeclareOptions {
                passive: false,
                durable: exchange.durable,
                auto_delete: exchange.auto_delete,
                internal: false,
                nowait: false,
            };
            channel
                .exchange_declare(
                    short(&exchange.name, "exchange name")?,
                    exchange_kind(exchange.kind),
                    options,
                    table_to_amqp(&exchange.arguments)?,
                )
                .await
                .map_err(|e| from_lapin(Op::DeclareExchange, e))
        }
        Declaration::Queue(queue) => {
            let options = QueueDeclareOptions {
                passive: false,
                durable: queue.durable,
                exclusive: queue.exclusive,
                auto_delete: queue.auto_delete,
                nowait: false,
            };
            channel
                .queue_declare(
                    short(&queue.name, "queue name")?,
                    options,
                    table_to_amqp(&queue.arguments)?,
                )
                .await
                .map(|_| ())
                .map_err(|e| from_lapin(Op::DeclareQueue, e))
        }
        Declaration::Binding(binding) => channel
            .queue_bind(
                short(&binding.queue, "queue name")?,
                short(&binding.exchange, "exchange name")?,
                short(&binding.routing_key, "routing key")?,
                QueueBindOptions::default(),
                table_to_amqp(&binding.arguments)?,
            )
            .await
            .map_err(|e| from_lapin(Op::Bind, e)),
        Declaration::ExchangeBinding(binding) => channel
            .exchange_bind(
                short(&binding.destination, "exchange name")?,
                short(&binding.source, "exchange name")?,
                short(&binding.routing_key, "routing key")?,
                ExchangeBindOptions::default(),
                table_to_amqp(&binding.arguments)?,
            )
            .await
            .map_err(|e| from_lapin(Op::Bind, e)),
    }
}

/// The lapin exchange kind.
pub(crate) fn exchange_kind(kind: kombu_core::ExchangeType) -> ExchangeKind {
    match kind {
        kombu_core::ExchangeType::Direct => ExchangeKind::Direct,
        kombu_core::ExchangeType::Topic => ExchangeKind::Topic,
        kombu_core::ExchangeType::Fanout => ExchangeKind::Fanout,
        kombu_core::ExchangeType::Headers => ExchangeKind::Headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> ConnectOptions {
        ConnectOptions::new(url.parse().unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn candidates_rotate_from_the_lost_url_and_skip_invalid_alternates() {
        let primary = options("amqp://a//");
        let settings = Settings::from_options(&primary).unwrap_or_else(|e| panic!("{e}"));
        let alternates = [
            options("amqp://b//"),
            options("amqp://bad//?no_such_option=1"),
            options("amqp://c//"),
        ];
        let order = |from| {
            candidates(&settings, &alternates, from, Driver::Lapin)
                .into_iter()
                .map(|(i, s)| (i, s.display))
                .collect::<Vec<_>>()
        };
        let a = (0, "a:5672//".to_owned());
        let b = (1, "b:5672//".to_owned());
        let c = (3, "c:5672//".to_owned());
        assert_eq!(order(0), [a.clone(), b.clone(), c.clone()]);
        assert_eq!(order(3), [c.clone(), a.clone(), b.clone()]);
        // Recovering from an alternate that has become invalid starts at the transport's URL.
        assert_eq!(order(2), [a, b, c]);
    }
}
