//! # kombu-amqp
//!
//! The AMQP 0-9-1 transport of kombu-rs for RabbitMQ (`amqp://`, `pyamqp://`, `amqps://`), over
//! [lapin](https://docs.rs/lapin). Unlike the virtual transports this is no emulation:
//! exchanges, queues, bindings, acks and prefetch are RabbitMQ's own, and messages are sent
//! the way Python Kombu's `pyamqp` transport sends them — the body as it is, the content type
//! and encoding, headers as `application_headers`, the basic properties 1:1 — so Python and
//! Rust producers and consumers share queues freely.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu_core::Result<()> {
//! use kombu_core::{GetOptions, RawPublishOptions, Queue, RawMessage};
//! kombu_amqp::register();
//! let url = "amqp://guest:guest@127.0.0.1:5672//".parse()?;
//! let transport = (kombu_amqp::DESCRIPTOR.connect)(kombu_core::ConnectOptions::new(url)).await?;
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
//! ## URLs and options
//!
//! `amqp://user:password@host:port/vhost` with Kombu's defaults: `guest`/`guest`, port 5672
//! (5671 with TLS), vhost `/` (written `//` or omitted), `localhost` meaning `127.0.0.1`.
//! `pyamqp://` and `librabbitmq://` are aliases. Transport options (or URL query parameters),
//! py-amqp's names:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `confirm_publish` | **true** | wait for the broker's publisher confirm on every publish |
//! | `heartbeat` | the broker's (60 s) | heartbeat interval in seconds |
//! | `connect_timeout` | 5 s | one connection attempt |
//! | `frame_max`, `channel_max` | negotiated | AMQP tuning |
//! | `recovery_max_retries` | 30 | reconnection attempts after a lost connection, over all URLs of a failover list |
//! | `recovery_interval_start` / `recovery_interval_max` | 0.2 s / 2 s | backoff between them |
//! | `ssl` | false (true for `amqps://`) | TLS, as py-amqp's `ssl=True` |
//! | `ca_certs` | the web's roots ([webpki-roots](https://docs.rs/webpki-roots)) | PEM file of the authorities to trust |
//! | `certfile`, `keyfile` | none | PEM client certificate and its key (both or neither) |
//! | `cert_reqs` | `required` | `required` or `optional` verify the certificate and name; `none` does not (also `CERT_NONE`, `ssl.CERT_NONE`, `0`, …) |
//! | `server_hostname` | the URL's host | the name sent (SNI) and checked against the certificate |
//!
//! `read_timeout`, `write_timeout`, `socket_settings`, `client_properties`, `login_method`
//! and `locale` are accepted and ignored; any other option is an `InvalidArgument` error.
//!
//! ## TLS
//!
//! `amqps://host//` or `ssl=true` (crate feature `tls`, `kombu` feature `amqp-tls`) connects
//! with rustls (ring, TLS 1.2 and 1.3). The last five options above are the keys of Kombu's
//! `ssl` dict for py-amqp (Celery's `broker_use_ssl`), flattened into transport options or
//! the URL query: `amqps://user:pw@rabbit//?ca_certs=/etc/rabbitmq/ca.pem`. The files are
//! read once, when the connection is made, so a missing or malformed file, a bad `cert_reqs`
//! or a TLS option without TLS is an `InvalidArgument` error before anything is sent; an
//! untrusted certificate or a wrong name is a `Connection` error. Without the feature
//! `amqps://` is an `Unsupported` error naming it. The amiquip driver has no TLS.
//!
//! ## Better than Kombu
//!
//! * **Publishes are confirmed by default.** py-amqp's default (`confirm_publish=False`) lets
//!   a publish to a missing exchange or into a full broker vanish; here it is an error.
//!   A mandatory message nobody receives comes back as a `NotFound` error. **Mandatory needs
//!   confirms to be an error**: with `confirm_publish=false` the publish succeeds before the
//!   broker's `basic.return` arrives; the return is then logged (`tracing::warn!` with exchange
//!   and routing key) and counted by [`returned_messages`], at the channel's next publish or
//!   close.
//! * **A lost connection is recovered**, not just reported: the transport reconnects with
//!   backoff, declares again every exchange, queue and binding it had declared, re-applies
//!   prefetch and resumes every consumer under its old tag. A publish caught by the loss
//!   either gets its confirm or fails with an error saying it may not have been stored.
//! * **Recovery fails over.** With a failover list (`amqp://a//;amqp://b//`) recovery tries
//!   the URL the lost connection was on, then the list's other AMQP URLs round robin (the
//!   facade hands them over as [`ConnectOptions::alternates`]), and replays the topology and
//!   resumes the consumers on whichever broker accepts; it logs at `info` the URL it recovered
//!   on (password redacted) and whether that was a failover. `recovery_max_retries` counts the
//!   attempts over all URLs together, with the same backoff. The transport options, confirms
//!   and recovery policy are the same for every URL (as Kombu applies one `transport_options`
//!   to the list); each alternate's settings are checked when it is tried, and one that is
//!   invalid (a bad option in its query, an unreadable TLS file) is logged with its error and
//!   skipped. Only when every attempt has failed does the transport report itself
//!   disconnected; the facade then starts a new transport, which has no topology to replay.
//!   The facade keeps the transport throughout, so `Connection::as_uri` still names the URL it
//!   first connected to after a failover here.
//! * **A refused declaration does not kill the channel.** RabbitMQ closes a channel on a
//!   404/406; kombu-rs answers with a typed error (`NotFound`, `NotEquivalent`,
//!   `PreconditionFailed`) and the next operation runs on a fresh channel. Consumers live on
//!   a channel of their own and are not affected.
//! * **Celery countdowns without a plugin**: [`delayed`] declares Kombu's native delayed
//!   delivery layout and computes its routing keys, so a Rust service schedules a Celery task
//!   the way Celery 5.5+ does.
//! * Names over AMQP's 255-byte limit are `InvalidArgument` errors, bodies over RabbitMQ's
//!   128 MiB limit are `LimitExceeded` errors, before anything is sent.
//!
//! ## Two drivers
//!
//! lapin (async) is the default. With the crate feature `amiquip` (`kombu` feature
//! `amqp-amiquip`) the same transport also runs over amiquip, a blocking client, on threads
//! of its own: `amqp+amiquip://` URLs, `AMIQUIP_DESCRIPTOR`. Its module docs
//! (`amiquip_driver`) have the threads, the data flow and a capability table comparing
//! the two; it recovers a lost connection the same way (same options, failover list,
//! re-declared topology, resumed consumers).
#![forbid(unsafe_code)]

#[cfg(feature = "amiquip")]
mod amiquip_driver;
mod batch;
mod channel;
mod convert;
pub mod delayed;
mod errors;
mod session;
mod settings;
mod tls;
mod topology;

use std::sync::Arc;

use async_trait::async_trait;
use kombu_core::registry::{ConnectFuture, TransportDescriptor};
use kombu_core::{Capabilities, Channel, ConnectOptions, PriorityOrder, PrioritySupport, Result, Transport};

use crate::session::Session;

#[cfg(feature = "amiquip")]
pub use amiquip_driver::{register_amiquip, AMIQUIP_CAPABILITIES, AMIQUIP_DESCRIPTOR, AMIQUIP_SCHEMES};

/// The URL schemes this transport serves.
pub const SCHEMES: &[&str] = &["amqp", "amqps", "pyamqp", "librabbitmq"];

/// RabbitMQ's default `max_message_size` (128 MiB).
pub const MAX_MESSAGE_SIZE: u64 = 128 * 1024 * 1024;

/// What the AMQP transport supports.
pub const CAPABILITIES: Capabilities = Capabilities {
    exchange_direct: true,
    exchange_topic: true,
    exchange_fanout: true,
    exchange_headers: true,
    exchange_to_exchange: true,
    priority: Some(PrioritySupport {
        max: 255,
        order: PriorityOrder::HigherFirst,
        requires_max_priority: true,
    }),
    message_ttl: true,
    queue_expiry: true,
    max_length: true,
    dead_lettering: true,
    persistent_bindings: true,
    shared_routing: true,
    crash_safe_acks: true,
    restore_unacked_on_close: true,
    recover: true,
    publisher_confirms: true,
    max_message_size: Some(MAX_MESSAGE_SIZE),
    cross_process: true,
    fifo_order: true,
    exactly_once_delivery: true,
    exact_counts: true,
    ..Capabilities::NONE
};

/// The registry entry of the AMQP transport.
pub static DESCRIPTOR: TransportDescriptor = TransportDescriptor::new("amqp", connect)
    .schemes(SCHEMES)
    .kombu_feature("amqp")
    .description("RabbitMQ over AMQP 0-9-1 (lapin); confirms, recovery with re-declared topology")
    .capabilities(CAPABILITIES);

kombu_core::inventory::submit! { kombu_core::registry::Registration(&DESCRIPTOR) }

/// How many mandatory messages RabbitMQ returned (unroutable: no queue received them) on
/// publishes made **without** publisher confirms, in this process, since it started.
///
/// With confirms (the default) such a message is a `NotFound` error of its own publish. Without
/// them (`confirm_publish=false`) the publish has succeeded before the `basic.return` arrives,
/// so the return cannot be its error: the lapin driver collects returns at the channel's next
/// publish and when the channel closes, logs each with `tracing::warn!` (exchange, routing key,
/// reply code and text) and counts it here. A return that arrives after its channel's last
/// publish and close is logged by lapin only. Process-wide because the transport API has no
/// per-connection statistics; take differences around the code you watch.
pub fn returned_messages() -> u64 {
    channel::RETURNED_WITHOUT_CONFIRMS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Register the AMQP transport explicitly (see [`kombu_core::registry`]).
pub fn register() {
    kombu_core::registry::register(&DESCRIPTOR);
}

fn connect(options: ConnectOptions) -> ConnectFuture {
    Box::pin(async move {
        let settings = settings::Settings::from_options(&options)?;
        let session = Session::connect(settings, &options).await?;
        let transport: Arc<dyn Transport> = Arc::new(AmqpTransport { session });
        Ok(transport)
    })
}

/// A connection to RabbitMQ.
#[derive(Debug)]
struct AmqpTransport {
    session: Arc<Session>,
}

#[async_trait]
impl Transport for AmqpTransport {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn capabilities(&self) -> Capabilities {
        settings::connection_capabilities(CAPABILITIES, self.session.settings.confirm_publish)
    }

    async fn create_channel(&self) -> Result<Arc<dyn Channel>> {
        if self.session.is_closed() {
            return Err(kombu_core::Error::new(
                kombu_core::ErrorKind::Closed,
                "the amqp connection is closed",
            ));
        }
        Ok(Arc::new(channel::AmqpChannel::new(Arc::clone(&self.session))))
    }

    /// True while the connection works or is being recovered: the transport reconnects by
    /// itself, so the facade must not replace it (and lose its topology) on a brief outage.
    fn is_connected(&self) -> bool {
        self.session.is_usable()
    }

    async fn close(&self) -> Result<()> {
        self.session.close().await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn inventory_holds_the_descriptor_itself() {
        assert!(
            kombu_core::registry::is_submitted(&super::DESCRIPTOR),
            "DESCRIPTOR was not submitted to inventory"
        );
    }
}
