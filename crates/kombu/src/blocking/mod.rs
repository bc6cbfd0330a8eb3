//! A synchronous API (feature `blocking`), as `reqwest::blocking`: connections, producers,
//! consumers with Kombu's `drain_events` and callbacks, simple queues and workers, for code
//! without `async` — Python Kombu ported line by line.
//!
//! Kombu's Quick Tour, on the in-process `memory://` transport:
//!
//! ```
//! use std::time::Duration;
//! use kombu::blocking::{Connection, Message};
//! use kombu::{ErrorKind, Exchange, PublishOptions, Queue};
//!
//! let media_exchange = Exchange::direct("media");
//! let video_queue = Queue::new("video").exchange(media_exchange.clone()).routing_key("video");
//!
//! fn process_media(message: &Message) -> kombu::Result<()> {
//!     let body: serde_json::Value = message.decode()?;
//!     println!("{body}");
//!     message.ack()
//! }
//!
//! // connections
//! let conn = Connection::new("memory:///blocking-tour")?;
//!
//! // produce
//! let producer = conn.producer().serializer("json");
//! producer.publish(
//!     &serde_json::json!({"name": "/tmp/lolcat1.avi", "size": 1301013}),
//!     PublishOptions::new()
//!         .exchange(media_exchange)
//!         .routing_key("video")
//!         .declare(video_queue.clone()),
//! )?;
//!
//! // consume
//! let mut consumer = conn.consumer([video_queue.clone()]).consume()?;
//! consumer.on_message(process_media);
//! // Process messages: here until none comes for 100 ms (Kombu: `while True: conn.drain_events()`).
//! loop {
//!     match consumer.drain_events(Duration::from_millis(100)) {
//!         Ok(()) => {}
//!         Err(e) if e.kind() == ErrorKind::Timeout => break,
//!         Err(e) => return Err(e),
//!     }
//! }
//! assert_eq!(conn.simple_queue("video").qsize()?, 0, "consumed and acked");
//! # Ok::<(), kombu::Error>(())
//! ```
//!
//! Every type here wraps its async counterpart (`as_async` gives it back) and blocks the
//! calling thread until the operation is done; [`Message`]s are settled the same way.
//!
//! # The runtime
//!
//! Each [`Connection::new`] starts one tokio **`current_thread`** runtime, driven by a thread
//! of its own (`kombu-rt-N`) for as long as any clone of the connection — or any producer,
//! consumer, queue, message or worker made from it — lives; then that thread is stopped and
//! joined (no thread outlives the connection, except a worker handler still running after a
//! 5 s grace). Calls run their future from the calling thread with the runtime's handle,
//! while the runtime's thread drives the I/O, timers and the transports' background tasks
//! (dispatchers, settlement, heartbeats), between calls too.
//!
//! `current_thread` rather than a one-worker `multi_thread` runtime: a thread is needed either
//! way to keep background tasks running between calls, and with it `current_thread` is the
//! same single thread without the work-stealing scheduler, and needs no extra tokio feature.
//! What could block — the [`Worker`]'s synchronous handlers — runs on the runtime's blocking
//! pool (`spawn_blocking`, threads named `kombu-blocking-N`), never on the runtime's thread.
//!
//! # Inside an async runtime
//!
//! Blocking inside an async task would stall its runtime (and tokio would panic). Every entry
//! point here returns an [`InvalidArgument`](crate::ErrorKind::InvalidArgument) error saying
//! "kombu::blocking called from inside an async runtime; use the async API" instead. The
//! handler of a blocking [`Worker`] runs outside any async context, so it may use this API;
//! a `spawn_blocking` thread of *another* runtime counts as inside (tokio cannot tell it
//! apart from an async task), so use the async API there. Dropping the last clone of a
//! connection never panics, but it waits for the runtime's thread to end: drop it outside
//! async code too.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let error = kombu::blocking::Connection::new("memory://").unwrap_err();
//! assert_eq!(error.kind(), kombu::ErrorKind::InvalidArgument);
//! # }
//! ```

mod connection;
mod consumer;
mod message;
mod producer;
mod runtime;
mod simple;
mod worker;

pub use connection::Connection;
pub use consumer::{Consumer, ConsumerBuilder};
pub use message::Message;
pub use producer::{Producer, PublishBatch};
pub use simple::{SimpleBuffer, SimpleQueue};
pub use worker::{Worker, WorkerBuilder};

#[cfg(test)]
mod tests;
