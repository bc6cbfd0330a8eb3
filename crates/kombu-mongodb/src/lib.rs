//! # kombu-mongodb
//!
//! The MongoDB transport of kombu-rs, on the official [`mongodb`](https://docs.rs/mongodb)
//! driver: Kombu's collections and documents, shared with Python Kombu's `mongodb://`
//! transport (pymongo) in the same database, with what Kombu's lacks: deliveries that are
//! claimed rather than deleted, FIFO within a priority, a broadcast cursor that survives, and
//! batch publishes in one `insert_many`.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu_core::Result<()> {
//! use kombu_core::{ConnectOptions, GetOptions, RawPublishOptions, Queue, RawMessage};
//! let url = "mongodb://127.0.0.1:27017/myapp".parse()?;
//! let transport = (kombu_mongodb::DESCRIPTOR.connect)(ConnectOptions::new(url)).await?;
//! let channel = transport.create_channel().await?;
//! channel.declare_queue(&Queue::new("jobs"), Default::default()).await?;
//! channel.publish(RawMessage::new("hi"), RawPublishOptions::new("", "jobs")).await?;
//! let delivery = channel.get("jobs", GetOptions::default()).await?.expect("a message");
//! assert_eq!(&delivery.message.body[..], b"hi");
//! if let Some(handle) = &delivery.ack {
//!     handle.acknowledger.ack(handle.tag).await?; // the claim is deleted
//! }
//! # transport.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## URLs
//!
//! The URL goes to the driver as Kombu hands it to pymongo: the database is the URL's path
//! (default `kombu_default`), the port defaults to 27017, and query parameters that are not
//! transport options below are the driver's URI options (`replicaSet`, `authSource`,
//! `tls`, …).
//!
//! | URL | server(s) | database |
//! |---|---|---|
//! | `mongodb://127.0.0.1:27017/myapp` | `127.0.0.1:27017` | `myapp` |
//! | `mongodb://h1` | `h1:27017` | `kombu_default` |
//! | `mongodb://user:secret@h1:27017,h2:27018/myapp?replicaSet=rs0` | a replica set | `myapp` |
//! | `mongodb+srv://cluster.example.com/myapp` or `srv://…` | SRV lookup (feature `srv`) | `myapp` |
//!
//! The password never appears in `Debug` output or error messages. TLS (`tls=true` or the
//! `ssl` option) uses rustls; `mongodb+srv://` needs this crate's `srv` feature (kombu's
//! `mongodb-srv`), which brings the driver's DNS resolver.
//!
//! ## Transport options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `ttl` | `false` | Kombu's: `expire_at` on messages (queue `x-message-ttl`, message `expiration`), bindings and queues (`x-expires`), TTL indexes, queue options in `messages.queues` |
//! | `capped_queue_size` | `100000` | bytes of the capped `messages.broadcast` collection (when this creates it) |
//! | `calc_queue_size` | `true` | `false`: queue sizes are reported as 0 (no count query) |
//! | `messages_collection`, `routing_collection`, `broadcast_collection`, `queues_collection` | `messages`, `messages.routing`, `messages.broadcast`, `messages.queues` | Kombu's collection names |
//! | `default_database`, `default_hostname`, `default_port` | `kombu_default`, `127.0.0.1`, `27017` | used when the URL has none |
//! | `connect_timeout` | the connection's (5 s) | connect and server-selection timeout: how long an operation waits for an unreachable server before a recoverable `Connection` error |
//! | `ssl` | `false` | TLS (adds `tls=true` to the driver URI) |
//! | `visibility_timeout` | `60` s | how long a claim lasts without renewal (renewed every quarter of it while the consumer lives): a consumer that died gives its messages back after this |
//! | `polling_interval` | `1` s | the longest idle wait between two looks at a queue (consumers of this process are woken at once by its publishes) |
//! | `claims_collection`, `exchanges_collection`, `malformed_collection` | `kombu_rs.claims`, `kombu_rs.exchanges`, `kombu_rs.malformed` | kombu-rs's own collections (Kombu never reads them) |
//!
//! ## Layout, and compatibility with Python Kombu 5.7
//!
//! * `messages`: `{_id: ObjectId, payload: <Kombu's JSON envelope as a string>, queue,
//!   priority: 9 - priority, [expire_at]}`, index `(queue, priority, _id)`: exactly Kombu's.
//! * `messages.routing`: `{exchange, queue, routing_key, pattern, [expire_at]}` upserted on
//!   bind (`pattern` is Kombu's regex for topic bindings, null otherwise), index
//!   `(queue, exchange)`.
//! * `messages.broadcast`: the capped collection of fanout messages `{payload, queue:
//!   <exchange>}`, index `(queue)`, read with a tailable cursor.
//! * `messages.queues` (with `ttl`): `{_id: <queue>, options: {…, arguments}, expire_at}`.
//! * kombu-rs's own: `kombu_rs.claims` (held deliveries), `kombu_rs.exchanges` (exchange
//!   types, so every process routes a fanout or topic exchange alike), `kombu_rs.malformed`.
//!
//! Python Kombu producers and consumers share these queues with kombu-rs both ways.
//!
//! ## Where it does better than Kombu's transport
//!
//! * **Nothing is lost when a consumer dies.** Kombu takes a message with
//!   `find_one_and_delete`: a crash loses it. kombu-rs *claims* it: it inserts
//!   `{_id: <the message's _id>, queue, doc: <the message>, deadline}` into `kombu_rs.claims`
//!   (a unique `_id`: a duplicate key means another consumer has it), then deletes the
//!   messages it won from `messages` (one `delete_many` per batch; a message already gone
//!   has its claim dropped). An ack deletes the claim; a requeue puts the message back under its
//!   own `_id` (its old place in the queue) and deletes the claim. While a consumer lives the
//!   core renews its claims' deadlines; once a deadline passes (the consumer died), any
//!   kombu-rs consumer puts the message back, marked redelivered.
//! * **Atomic on every MongoDB-wire server.** The claim relies only on inserts under a
//!   unique `_id` and deletes, never on `findAndModify`, whose atomicity under concurrency
//!   a server emulating MongoDB may not give (FerretDB's does not). With the claim held, no
//!   other kombu-rs consumer can delete the message, so what is still in `messages` after
//!   claiming is this consumer's. A Python Kombu consumer on the same queue ignores claims:
//!   a message both take in the same instant is delivered to both (at least once, never
//!   lost); between kombu-rs consumers a message is delivered once.
//! * **FIFO within a priority**: sorted by `priority`, then `_id` (Kombu sorts by priority
//!   only).
//! * **Acked data does not accumulate**: acks delete; nothing is kept.
//! * **Broadcast that survives**: one tailable, awaitData cursor per connection, for every
//!   subscribed exchange; when it dies (an empty capped collection gives a dead cursor, a
//!   server may kill it, a restart drops it) it is opened again and resumes after the last
//!   message it saw.
//! * **Batch publish** in one `insert_many`.
//! * **Size limit checked before sending**: a message over MongoDB's 16 MiB BSON limit is a
//!   `LimitExceeded` error, not a server error after the upload.
//! * **Malformed data** (a document whose `payload` is no Kombu envelope) is moved to
//!   `kombu_rs.malformed` and reported to the consumer as a `Decode` error; the rest of the
//!   queue flows.
//!
//! ## Capabilities
//!
//! | capability | |
//! |---|---|
//! | exchanges | direct, topic, fanout (Kombu's three) |
//! | priorities | 0–9, higher first, no queue argument needed |
//! | crash-safe acks, requeue, recover, restore on close, visibility renewal | yes (claims) |
//! | shared routing, persistent bindings | yes |
//! | FIFO within a priority, exactly-once delivery between kombu-rs consumers, exact counts | yes |
//! | message TTL, queue expiry (`ttl=true`) | Kombu's `expire_at` fields and TTL indexes are written; expiry is the server's TTL monitor (not claimed as a capability: not verified on the test server) |
//! | max length, dead lettering, headers exchanges | no |
//! | largest message | about 12 MiB of body (the envelope base64-encodes it under 16 MiB) |
//!
//! ## What was verified on which server
//!
//! No `mongod` can be installed where this crate was written: everything below was run
//! against **FerretDB v1.24.2** (SQLite backend), a MongoDB-wire server, which
//! `cargo xtask test-matrix` builds from its Go module, caches under the target directory and
//! starts on a throwaway port. The transport uses only operations a `mongod` ≥ 5.0 has
//! (inserts, `insert_many`, `delete_one`/`delete_many`, `update_one`/`update_many` with
//! upsert, sorted `find`, `count_documents`, capped collections, tailable awaitData cursors,
//! indexes); nothing FerretDB-specific.
//!
//! | suite | on FerretDB 1.24.2 |
//! |---|---|
//! | conformance (`cargo xtask test-matrix --backends mongodb`) | 63 passed, 10 skipped by capability (TTL, x-expires, max length, dead lettering, headers, exchange-to-exchange, confirms), none excluded: competing consumers, 10 000 messages from 10 producers, crash and restore behaviours included |
//! | interop with Python Kombu 5.7 / pymongo 4.18.3 (`tests/interop.rs`) | both ways: direct, topic, serializers, compression, priorities, a Celery task message; Kombu's reject/requeue; fanout through the capped collection both ways; Kombu's `ttl` option both ways; the documents as pymongo reads them |
//! | faults (`tests/faults.rs`) | consumer SIGKILLed holding 20 messages (all redelivered, marked so, nothing left behind); malformed payloads (typed `Decode` error, parked, the rest flows); a 13 MiB body (`LimitExceeded`, nothing stored); the server killed and restarted mid-stream (recoverable `Connection` error while down; the consumer resumes; what was confirmed survives) |
//!
//! `KOMBU_TEST_MONGODB_URL=mongodb://host:port` points the matrix row and the interop and
//! fault tests at a real `mongod` instead (each test uses a database of its own; the restart
//! test always starts a FerretDB it can kill).
//!
//! What FerretDB 1.24 lacks, and how it was handled:
//!
//! * `findAndModify` is not atomic under concurrency: the claim uses none (see above), and
//!   the competing-consumers behaviour passes with nothing excluded.
//! * No TTL indexes (`expireAfterSeconds` is NotImplemented): with `ttl=true` kombu-rs
//!   logs a warning and still writes `expire_at`; nothing expires there, so TTL is not
//!   claimed as a capability. Python Kombu's `ttl=True` fails to connect on FerretDB; the
//!   interop harness skips its TTL index creation.
//! * A tailable cursor closes once it has returned everything (mongod keeps it open; both
//!   close one opened on an empty collection): kombu-rs reopens it and resumes after the last
//!   message it saw. Python Kombu's fanout consumer never reopens its cursor and receives
//!   nothing there; the interop harness reopens it for Kombu at Kombu's own offset.
//! * No filter, sort or limit pushdown on the SQLite backend: every sorted query scans the
//!   whole `messages` collection (about 0.5 s with 10 000 documents, where `mongod` uses the
//!   `(queue, priority, _id)` index). Claims therefore read up to 1 000 candidates per sorted
//!   query, keep the rest for up to a second (emptied by a requeue or restore here), and
//!   delete what they won with one `delete_many`.
#![forbid(unsafe_code)]

mod backend;
mod settings;

use std::sync::Arc;

use kombu_core::registry::{ConnectFuture, TransportDescriptor};
use kombu_core::virtual_transport::{BrokerState, VirtualTransport};
use kombu_core::{Capabilities, ConnectOptions, PriorityOrder, PrioritySupport, Transport};

/// The URL schemes this transport serves (Kombu's).
pub const SCHEMES: &[&str] = &["mongodb", "mongodb+srv", "srv"];

/// The largest body whose envelope fits a document of `max_bson_size` bytes: the body is
/// base64-encoded (4/3), and 16 KiB are left for the properties, headers and fields.
pub const fn max_message_size(max_bson_size: usize) -> u64 {
    (max_bson_size.saturating_sub(16 * 1024) / 4 * 3) as u64
}

/// What the MongoDB transport supports.
pub const CAPABILITIES: Capabilities = Capabilities {
    exchange_direct: true,
    exchange_topic: true,
    exchange_fanout: true,
    priority: Some(PrioritySupport {
        max: 9,
        order: PriorityOrder::HigherFirst,
        requires_max_priority: false,
    }),
    persistent_bindings: true,
    shared_routing: true,
    crash_safe_acks: true,
    restore_unacked_on_close: true,
    recover: true,
    extend_visibility: true,
    max_message_size: Some(max_message_size(settings::MAX_BSON_SIZE)),
    cross_process: true,
    fifo_order: true,
    exactly_once_delivery: true,
    exact_counts: true,
    ..Capabilities::NONE
};

/// The registry entry of the MongoDB transport.
pub static DESCRIPTOR: TransportDescriptor = TransportDescriptor::new("mongodb", connect)
    .schemes(SCHEMES)
    .kombu_feature("mongodb")
    .description("MongoDB collections, Python Kombu's layout; claims with deadlines, tailable broadcast")
    .capabilities(CAPABILITIES);

kombu_core::inventory::submit! { kombu_core::registry::Registration(&DESCRIPTOR) }

/// Register the MongoDB transport explicitly (see [`kombu_core::registry`]).
pub fn register() {
    kombu_core::registry::register(&DESCRIPTOR);
}

fn connect(options: ConnectOptions) -> ConnectFuture {
    Box::pin(async move {
        let settings = settings::Settings::from_options(&options)?;
        let backend = backend::MongoBackend::connect(settings).await?;
        let transport: Arc<dyn Transport> =
            Arc::new(VirtualTransport::new(Arc::new(backend), BrokerState::new()));
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
