//! # kombu-sqlite
//!
//! The embedded SQLite transport of kombu-rs: a durable queue in one file, shared by any
//! number of processes, with no server — and the same file Python Kombu's SQLAlchemy
//! transport reads and writes.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu_core::Result<()> {
//! use kombu_core::{ConnectOptions, GetOptions, RawPublishOptions, Queue, RawMessage};
//! # let dir = std::env::temp_dir().join(format!("kombu-sqlite-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).ok();
//! # let path = dir.join("doc.db");
//! let url = format!("sqlite://{}", path.display()).parse()?;
//! let transport = (kombu_sqlite::DESCRIPTOR.connect)(ConnectOptions::new(url)).await?;
//! let channel = transport.create_channel().await?;
//! channel.declare_queue(&Queue::new("jobs"), Default::default()).await?;
//! let message = RawMessage::new("hi");
//! channel.publish(message, RawPublishOptions::new("", "jobs")).await?;
//! let delivery = channel.get("jobs", GetOptions::default()).await?.expect("a message");
//! assert_eq!(&delivery.message.body[..], b"hi");
//! if let Some(handle) = &delivery.ack {
//!     handle.acknowledger.ack(handle.tag).await?; // the row is deleted
//! }
//! # transport.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## URLs
//!
//! | URL | database |
//! |---|---|
//! | `sqlite:///abs/path.db` | `/abs/path.db` |
//! | `sqlite://relative/path.db` | `relative/path.db` (from the current directory) |
//! | `sqlite://:memory:` | private in-memory database of one connection |
//! | `sqla+sqlite:///rel.db`, `sqla+sqlite:////abs/path.db` | Kombu's spelling, SQLAlchemy's slash rules |
//!
//! ## Transport options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `queue_tablename` | `kombu_queue` | Kombu's queue table |
//! | `message_tablename` | `kombu_message` | Kombu's message table |
//! | `visibility_timeout` | `3600` s | how long the messages of a consumer that died stay invisible |
//! | `polling_interval` | `1` s | longest idle wait for messages from other processes |
//! | `busy_timeout` | `5` s | how long to wait for another process's write lock |
//!
//! ## Compatibility with Python Kombu, and where it does better
//!
//! * The tables, columns, indexes and payload (the Kombu JSON envelope) are the ones Kombu's
//!   SQLAlchemy transport creates and uses; both can work on one file at the same time.
//! * **Acked messages are deleted.** Kombu never deletes consumed rows (kombu #276).
//! * **Nothing is lost when a consumer dies.** A taken message is recorded as a claim with a
//!   deadline. A live connection renews its claims; those of a consumer that died expire
//!   after `visibility_timeout` and the messages are delivered again (marked redelivered).
//!   Kombu loses such messages. Unacked messages also come back when a channel closes.
//! * **No message is taken twice**: claims run inside `BEGIN IMMEDIATE`.
//! * **Routing works across processes**: exchange types and bindings are stored in extra
//!   tables (Kombu keeps them in process memory only; it ignores these tables).
//! * **Priorities** on queues declared with `x-max-priority` (higher first, as AMQP).
//! * **Prompt consumers**: a put wakes consumers of the same file in the process at once;
//!   other processes' messages are found by polling that backs off from 10 ms to
//!   `polling_interval`.
//! * **WAL mode** and a busy timeout, so readers and writers of different processes do not
//!   block each other.
//! * A row whose payload is not a Kombu envelope is moved to `kombu_message_rs_malformed`
//!   with the reason, instead of breaking every consumer of the queue.
//!
//! Rows that Python Kombu consumed stay as Kombu leaves them (`visible = 0`); kombu-rs never
//! resurrects them, and `purge` removes them.
//!
//! ## Threads
//!
//! rusqlite blocks, so every connection owns a thread that runs its SQL, fed by a command
//! channel; tokio workers never wait on SQLite. Puts and acks that queue up while the thread
//! is busy are committed together. A publish returns once its row is committed; an ack, like
//! AMQP's `basic.ack`, returns once queued (closing the connection waits for queued acks; an
//! ack lost to a crash means the message is delivered again, never lost).
#![forbid(unsafe_code)]

mod backend;
mod settings;
mod store;
mod worker;

use std::sync::Arc;

use kombu_core::registry::{ConnectFuture, TransportDescriptor};
use kombu_core::virtual_transport::VirtualTransport;
use kombu_core::{Capabilities, ConnectOptions, PriorityOrder, PrioritySupport, Transport};

/// The URL schemes this transport serves: its own and Kombu's SQLAlchemy spellings.
pub const SCHEMES: &[&str] = &["sqlite", "sqla+sqlite", "sqlalchemy+sqlite"];

/// Largest message body accepted: SQLite's default row limit is 1 GB, and the payload holds
/// the body base64-encoded inside a JSON envelope.
pub const MAX_MESSAGE_SIZE: u64 = 256 * 1024 * 1024;

/// What the SQLite transport supports.
pub const CAPABILITIES: Capabilities = Capabilities {
    exchange_direct: true,
    exchange_topic: true,
    exchange_fanout: true,
    exchange_headers: true,
    priority: Some(PrioritySupport {
        max: 255,
        order: PriorityOrder::HigherFirst,
        requires_max_priority: true,
    }),
    persistent_bindings: true,
    shared_routing: true,
    crash_safe_acks: true,
    restore_unacked_on_close: true,
    recover: true,
    extend_visibility: true,
    max_message_size: Some(MAX_MESSAGE_SIZE),
    cross_process: true,
    fifo_order: true,
    exactly_once_delivery: true,
    exact_counts: true,
    ..Capabilities::NONE
};

/// The registry entry of the SQLite transport.
pub static DESCRIPTOR: TransportDescriptor = TransportDescriptor::new("sqlite", connect)
    .schemes(SCHEMES)
    .kombu_feature("sqlite")
    .description("embedded, durable, multi-process; Python Kombu's sqla+sqlite tables")
    .capabilities(CAPABILITIES);

kombu_core::inventory::submit! { kombu_core::registry::Registration(&DESCRIPTOR) }

/// Register the SQLite transport explicitly (see [`kombu_core::registry`]).
pub fn register() {
    kombu_core::registry::register(&DESCRIPTOR);
}

fn connect(options: ConnectOptions) -> ConnectFuture {
    Box::pin(async move {
        let settings = settings::Settings::from_options(&options)?;
        let (backend, state) = backend::SqliteBackend::open(settings).await?;
        let transport: Arc<dyn Transport> = Arc::new(VirtualTransport::new(Arc::new(backend), state));
        Ok(transport)
    })
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
