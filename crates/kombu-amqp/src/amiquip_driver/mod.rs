//! # The amiquip driver (`amqp+amiquip://`)
//!
//! The AMQP transport over [amiquip](https://docs.rs/amiquip), a blocking RabbitMQ client,
//! as an alternative to the default lapin driver: same URLs (with `+amiquip` in the
//! scheme), same transport options, same messages on the wire (body as it is, basic
//! properties 1:1, headers as `application_headers`, as py-amqp sends them), same typed
//! errors. Enabled by this crate's `amiquip` feature (`kombu` feature `amqp-amiquip`);
//! amiquip is built without native-tls, so `amqps://` is `Unsupported` here too.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu_core::Result<()> {
//! use kombu_core::{GetOptions, RawPublishOptions, Queue, RawMessage};
//! kombu_amqp::register_amiquip();
//! let url = "amqp+amiquip://guest:guest@127.0.0.1:5672//".parse()?;
//! let transport = (kombu_amqp::AMIQUIP_DESCRIPTOR.connect)(kombu_core::ConnectOptions::new(url)).await?;
//! let channel = transport.create_channel().await?;
//! channel.declare_queue(&Queue::new("jobs"), Default::default()).await?;
//! let message = RawMessage::new("hi");
//! channel.publish(message, RawPublishOptions::new("", "jobs")).await?; // waits for the confirm
//! let delivery = channel.get("jobs", GetOptions::default()).await?.expect("a message");
//! if let Some(handle) = &delivery.ack {
//!     handle.acknowledger.ack(handle.tag).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! ## Threads and data flow
//!
//! amiquip blocks, so, as sqlx does for SQLite, no amiquip call ever runs on a tokio worker:
//!
//! * the **connection thread** ("kombu-amiquip", `connection`) owns the `amiquip::Connection`
//!   and opens channels on request; amiquip adds its own I/O thread under it;
//! * each kombu-rs channel has a **worker thread** ("kombu-amiquip-ch", `worker`) that owns
//!   its two amiquip channels (control, consume) and the consumers on them. The async
//!   methods send it jobs over a crossbeam channel and await a tokio oneshot; the worker
//!   `select`s over its jobs and its consumers' amiquip receivers, converts each delivery
//!   and pushes it into the consumer's tokio mpsc, which is the consumer's `Stream`.
//!
//! A worker per channel (rather than one thread for everything) is forced by amiquip's
//! API: a `Consumer` borrows its `Channel`, so consumers can only live in a stack frame
//! that owns the channel. Acks go to the worker that delivered the message and are checked
//! there against the outstanding tags (a second ack is a `PreconditionFailed` error, never sent).
//!
//! ## Capabilities, compared with the lapin driver
//!
//! | | lapin (`amqp://`) | amiquip (`amqp+amiquip://`) |
//! |---|---|---|
//! | exchanges direct, topic, fanout, headers | ✅ | ✅ |
//! | exchange-to-exchange bindings | ✅ | ✅ |
//! | priorities (0–255 on `x-max-priority` queues), TTL, expiry, max length, dead lettering | ✅ | ✅ |
//! | delayed delivery (Kombu's native layout, [`crate::delayed`]) | ✅ | ✅ (the declarations are the transport's) |
//! | publisher confirms (default on, `confirm_publish`) | ✅ pipelined | ✅ one publish at a time per channel |
//! | mandatory message returned → `NotFound` | ✅ | ✅ (with confirms) |
//! | refused declaration (404/406) → typed error, channel reopened | ✅ | ✅ |
//! | consumers on their own channel | ✅ | ✅ |
//! | ack tag tracking (unknown tag → `PreconditionFailed`) | ✅ | ✅ |
//! | unacked restored on close, crash-safe acks | ✅ broker-side | ✅ broker-side |
//! | `recover(requeue = true)` | ✅ | ✅ |
//! | **lost connection** | reconnects, re-declares the topology, resumes consumers | the same, with the same recovery options and failover order; the reconnection starts when a channel is next needed (a consumer's channel needs one at once) |
//! | operation caught by the loss | control operations retried once on the new connection | the same for declarations, deletions and purges; a `get`, `qos` or `recover` on the dead consume channel is a recoverable `Connection` error once, the next call runs on the new connection |
//! | publish caught by the loss | confirm, or a recoverable `Connection` error: may or may not have been stored | the same (never retried by the driver) |
//! | channel `close` during a recovery | at once | waits for the recovery to end (the worker is blocked in it) |
//! | `frame_max` option | ✅ | no effect (amiquip negotiates its own) |
//! | headers with non-UTF-8 long strings (`S`) received | as bytes | amiquip's parser rejects the frame and drops the connection |
//! | broker-chosen consumer tag | the kombu-rs tag is sent | amiquip always lets the broker name the consumer; deliveries carry the kombu-rs tag |
//! | TLS | not yet | not yet (amiquip built without native-tls) |
//!
//! Each flag in [`AMIQUIP_CAPABILITIES`] is what the conformance suite checks.

mod channel;
mod connection;
mod consume;
mod control;
mod convert;
mod errors;
mod worker;

use std::sync::Arc;

use async_trait::async_trait;
use kombu_core::registry::{ConnectFuture, TransportDescriptor};
use kombu_core::{Capabilities, Channel, ConnectOptions, Error, ErrorKind, Result, Transport};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use crate::settings::{Driver, Settings};
use connection::ConnectionHandle;

/// The URL schemes of the amiquip driver.
pub const AMIQUIP_SCHEMES: &[&str] = &["amqp+amiquip", "pyamqp+amiquip"];

/// What the amiquip driver supports: RabbitMQ's model, as the lapin driver; what differs
/// has no capability flag and is in the table above.
pub const AMIQUIP_CAPABILITIES: Capabilities = crate::CAPABILITIES;

/// The registry entry of the amiquip driver.
pub static AMIQUIP_DESCRIPTOR: TransportDescriptor = TransportDescriptor::new("amqp-amiquip", connect)
    .schemes(AMIQUIP_SCHEMES)
    .kombu_feature("amqp-amiquip")
    .description("RabbitMQ over AMQP 0-9-1 (amiquip, blocking, on its own threads); confirms")
    .capabilities(AMIQUIP_CAPABILITIES);

kombu_core::inventory::submit! { kombu_core::registry::Registration(&AMIQUIP_DESCRIPTOR) }

/// Register the amiquip driver explicitly (see [`kombu_core::registry`]).
pub fn register_amiquip() {
    kombu_core::registry::register(&AMIQUIP_DESCRIPTOR);
}

fn connect(options: ConnectOptions) -> ConnectFuture {
    Box::pin(async move {
        let settings = Settings::for_driver(&options, Driver::Amiquip)?;
        let url = amiquip_url(&settings);
        let timeout = settings
            .connect_timeout
            .max(std::time::Duration::from_millis(100));
        // amiquip's own `connection_timeout` covers the TCP connect; this covers the
        // handshake too (the thread finishes on its own and closes what it opened).
        let connection = tokio::time::timeout(
            timeout + std::time::Duration::from_secs(1),
            ConnectionHandle::open(
                url,
                settings.display.clone(),
                connection::Recovery {
                    settings: settings.clone(),
                    alternates: options.alternates.clone(),
                },
            ),
        )
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!("amqp connect to {} timed out", settings.display),
            )
            .with_context("timeout_ms", timeout.as_millis())
        })??;
        let transport: Arc<dyn Transport> = Arc::new(AmiquipTransport {
            connection,
            confirm_publish: settings.confirm_publish,
        });
        Ok(transport)
    })
}

/// The URL amiquip connects with, written from the parsed settings (credentials and vhost
/// percent-encoded; `heartbeat`, `channel_max` and the connect timeout as its query).
pub(super) fn amiquip_url(settings: &Settings) -> String {
    let endpoint = settings.uri();
    let encode = |text: &str| utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
    let user = &endpoint.authority.userinfo;
    let mut query = vec![format!(
        "connection_timeout={}",
        settings.connect_timeout.as_millis().max(1)
    )];
    if let Some(heartbeat) = endpoint.query.heartbeat {
        query.push(format!("heartbeat={heartbeat}"));
    }
    if let Some(channel_max) = endpoint.query.channel_max {
        query.push(format!("channel_max={channel_max}"));
    }
    format!(
        "amqp://{}:{}@{}:{}/{}?{}",
        encode(&user.username),
        encode(&user.password),
        endpoint.authority.host,
        endpoint.authority.port,
        encode(&endpoint.vhost),
        query.join("&")
    )
}

/// A connection to RabbitMQ through amiquip.
#[derive(Debug)]
struct AmiquipTransport {
    connection: ConnectionHandle,
    confirm_publish: bool,
}

#[async_trait]
impl Transport for AmiquipTransport {
    fn name(&self) -> &'static str {
        "amqp-amiquip"
    }

    fn capabilities(&self) -> Capabilities {
        crate::settings::connection_capabilities(AMIQUIP_CAPABILITIES, self.confirm_publish)
    }

    async fn create_channel(&self) -> Result<Arc<dyn Channel>> {
        if self.connection.state.is_closed() {
            return Err(Error::new(ErrorKind::Closed, "the amqp connection is closed"));
        }
        if self.connection.state.gave_up() {
            return Err(self.connection.state.gave_up_error(&self.connection.display));
        }
        let channel = channel::AmiquipChannel::new(self.connection.clone(), self.confirm_publish)?;
        Ok(Arc::new(channel))
    }

    /// True while the connection works or may still be recovered: the driver reconnects by
    /// itself, so the facade must not replace it (and lose its topology and consumers) on
    /// a brief outage. False once closed, or once recovery ran out of attempts.
    fn is_connected(&self) -> bool {
        self.connection.state.is_usable()
    }

    async fn close(&self) -> Result<()> {
        self.connection.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_holds_the_descriptor_itself() {
        assert!(
            kombu_core::registry::is_submitted(&AMIQUIP_DESCRIPTOR),
            "AMIQUIP_DESCRIPTOR was not submitted to inventory"
        );
    }

    #[test]
    fn the_amiquip_url_encodes_credentials_and_vhost() {
        let url = "amqp+amiquip://bob:p%40ss@rabbit:5673/prod%2Fa?heartbeat=10"
            .parse()
            .unwrap();
        let settings = Settings::for_driver(&ConnectOptions::new(url), Driver::Amiquip).unwrap();
        assert_eq!(
            amiquip_url(&settings),
            "amqp://bob:p%40ss@rabbit:5673/prod%2Fa?connection_timeout=5000&heartbeat=10"
        );
        let url = "amqp+amiquip://".parse().unwrap();
        let settings = Settings::for_driver(&ConnectOptions::new(url), Driver::Amiquip).unwrap();
        assert_eq!(
            amiquip_url(&settings),
            "amqp://guest:guest@127.0.0.1:5672/%2F?connection_timeout=5000"
        );
    }
}
