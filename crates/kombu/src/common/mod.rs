//! Kombu's `kombu.common` helpers: broadcast queues and request/reply.
//!
//! - [`Broadcast`]: a queue of its own (`bcast.<uuid>`) on a fanout exchange, so every
//!   consumer gets every message;
//! - [`send_reply`]: answer a request on its `reply_to` queue with its `correlation_id`;
//! - [`collect_replies`]: consume a reply queue;
//! - [`RpcClient`] and [`rpc_call`]: publish a request and wait for the reply with its
//!   `correlation_id`.
//!
//! They interoperate with Python Kombu's helpers of the same names on a shared broker.

mod broadcast;
mod collect;
mod reply;
mod rpc;

pub use broadcast::Broadcast;
pub use collect::{collect_replies, Replies};
pub use reply::send_reply;
pub use rpc::{rpc_call, RpcClient};

#[cfg(all(test, feature = "memory"))]
mod tests;
