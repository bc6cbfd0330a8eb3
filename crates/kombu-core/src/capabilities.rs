//! What a transport can do.
//!
//! A plain struct of flags and limits (opendal's `Capability` model). The conformance suite
//! selects its behaviours from it, the CLI prints it, and an operation a transport cannot do
//! returns an [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) error — never a silent
//! no-op.

use crate::entity::ExchangeType;

/// Which priority is served first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriorityOrder {
    /// Higher numbers first (AMQP, MongoDB and ZooKeeper in Kombu, kombu-rs memory and sqlite).
    HigherFirst,
    /// Lower numbers first (Kombu's Redis transport: priority 0 beats 9).
    LowerFirst,
}

/// Priority support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrioritySupport {
    /// The highest priority value honoured (values above are clamped).
    pub max: u8,
    /// Which end is served first.
    pub order: PriorityOrder,
    /// Whether the queue must be declared with `x-max-priority` (AMQP) for priorities to apply.
    pub requires_max_priority: bool,
}

/// The capabilities of a transport. Construct with struct update syntax from
/// [`Capabilities::NONE`], which is `const`, so descriptors can be `static`.
///
/// ```
/// use kombu_core::{Capabilities, ExchangeType};
/// const CAPS: Capabilities = Capabilities {
///     exchange_direct: true,
///     exchange_topic: true,
///     ..Capabilities::NONE
/// };
/// assert!(CAPS.supports_exchange_type(ExchangeType::Topic));
/// assert!(!CAPS.supports_exchange_type(ExchangeType::Headers));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Direct exchanges.
    pub exchange_direct: bool,
    /// Topic exchanges.
    pub exchange_topic: bool,
    /// Fanout exchanges.
    pub exchange_fanout: bool,
    /// Headers exchanges.
    pub exchange_headers: bool,
    /// Exchange-to-exchange bindings.
    pub exchange_to_exchange: bool,
    /// Message priorities, if any.
    pub priority: Option<PrioritySupport>,
    /// Per-message TTL (`expiration`) and per-queue TTL (`x-message-ttl`).
    pub message_ttl: bool,
    /// Queue expiry (`x-expires`).
    pub queue_expiry: bool,
    /// `x-max-length` (oldest messages dropped on overflow).
    pub max_length: bool,
    /// Dead-letter exchanges.
    pub dead_lettering: bool,
    /// Bindings are stored on the broker, visible to other connections and processes.
    pub persistent_bindings: bool,
    /// Exchanges and bindings declared on one connection route messages published on another
    /// connection to the same broker.
    pub shared_routing: bool,
    /// A message taken by a consumer that dies without acking is delivered again.
    pub crash_safe_acks: bool,
    /// Unacked messages are made available again when the channel closes cleanly.
    pub restore_unacked_on_close: bool,
    /// `recover(requeue = true)`.
    pub recover: bool,
    /// Publisher confirms.
    pub publisher_confirms: bool,
    /// A message held by a live consumer is never handed to another one, however long it is
    /// held: where messages have a visibility deadline, it is renewed while the consumer lives
    /// (a visibility heartbeat).
    pub extend_visibility: bool,
    /// Largest message body the transport accepts, in bytes (`None`: no fixed limit).
    pub max_message_size: Option<u64>,
    /// Messages of one process can be consumed by another process.
    pub cross_process: bool,
    /// Messages of equal priority on one queue are delivered in the order they were published
    /// (from one publisher on one channel). Not so on an SQS standard queue, for example.
    pub fifo_order: bool,
    /// Under normal operation (no crash, no lost connection, no requeue) every message routed
    /// to a queue is delivered once: never duplicated, as an at-least-once broker (an SQS
    /// standard queue) may do.
    pub exactly_once_delivery: bool,
    /// The message counts a queue reports (a declaration's `message_count`, the number
    /// purged) are exact once a publish has returned, not estimates.
    pub exact_counts: bool,
}

impl Capabilities {
    /// Nothing supported: the base for struct update syntax.
    pub const NONE: Capabilities = Capabilities {
        exchange_direct: false,
        exchange_topic: false,
        exchange_fanout: false,
        exchange_headers: false,
        exchange_to_exchange: false,
        priority: None,
        message_ttl: false,
        queue_expiry: false,
        max_length: false,
        dead_lettering: false,
        persistent_bindings: false,
        shared_routing: false,
        crash_safe_acks: false,
        restore_unacked_on_close: false,
        recover: false,
        publisher_confirms: false,
        extend_visibility: false,
        max_message_size: None,
        cross_process: false,
        fifo_order: false,
        exactly_once_delivery: false,
        exact_counts: false,
    };

    /// Whether exchanges of `kind` can be declared.
    pub fn supports_exchange_type(&self, kind: ExchangeType) -> bool {
        match kind {
            ExchangeType::Direct => self.exchange_direct,
            ExchangeType::Topic => self.exchange_topic,
            ExchangeType::Fanout => self.exchange_fanout,
            ExchangeType::Headers => self.exchange_headers,
        }
    }

    /// Every flag as `(name, supported)` rows, for capability tables in docs and the CLI.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let yes_no = |b: bool| if b { "yes".to_owned() } else { "no".to_owned() };
        vec![
            ("exchange: direct", yes_no(self.exchange_direct)),
            ("exchange: topic", yes_no(self.exchange_topic)),
            ("exchange: fanout", yes_no(self.exchange_fanout)),
            ("exchange: headers", yes_no(self.exchange_headers)),
            ("exchange-to-exchange bindings", yes_no(self.exchange_to_exchange)),
            (
                "priorities",
                match self.priority {
                    None => "no".to_owned(),
                    Some(p) => format!(
                        "0..={} ({})",
                        p.max,
                        match p.order {
                            PriorityOrder::HigherFirst => "higher first",
                            PriorityOrder::LowerFirst => "lower first",
                        }
                    ),
                },
            ),
            ("message TTL", yes_no(self.message_ttl)),
            ("queue expiry", yes_no(self.queue_expiry)),
            ("max length", yes_no(self.max_length)),
            ("dead lettering", yes_no(self.dead_lettering)),
            ("persistent bindings", yes_no(self.persistent_bindings)),
            ("routing shared across connections", yes_no(self.shared_routing)),
            ("crash-safe acks", yes_no(self.crash_safe_acks)),
            ("unacked restored on close", yes_no(self.restore_unacked_on_close)),
            ("recover", yes_no(self.recover)),
            ("publisher confirms", yes_no(self.publisher_confirms)),
            ("extend visibility", yes_no(self.extend_visibility)),
            (
                "max message size",
                self.max_message_size
                    .map_or_else(|| "unlimited".to_owned(), |n| format!("{n} bytes")),
            ),
            ("cross-process", yes_no(self.cross_process)),
            ("FIFO order", yes_no(self.fifo_order)),
            ("exactly-once delivery", yes_no(self.exactly_once_delivery)),
            ("exact counts", yes_no(self.exact_counts)),
        ]
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::NONE
    }
}
