//! Kombu's "virtual" transport machinery, done well.
//!
//! Brokers that are not AMQP (memory, SQLite, Redis, MongoDB, SQS, ZooKeeper) only need to
//! implement the narrow [`VirtualBackend`] trait — declare, exists, put, get, purge, size,
//! delete — and opt into the abilities their broker has: [`Receipts`] (messages held until
//! settled: batched acks and renewal run here, in the core), [`StoredBindings`],
//! [`BrokerRouting`], [`NativeFanout`] (with a [`BroadcastBuffer`]) and [`ClaimingWait`].
//! [`VirtualTransport`] and [`VirtualChannel`] turn such a backend into a full
//! [`Channel`](crate::Channel):
//!
//! * exchanges are emulated by the [router](crate::router) over a [`BrokerState`] (direct,
//!   topic, fanout and headers);
//! * every publish is wrapped in Kombu's [`Envelope`](crate::Envelope) with a fresh uuid4
//!   delivery tag;
//! * consumers are served by one dispatcher task per channel that polls the consumed queues
//!   fairly (round robin, a bounded batch per queue per turn), waking promptly when the backend
//!   signals new messages and otherwise polling with the backend's interval;
//! * prefetch (QoS) bounds unacked deliveries; unacked deliveries are tracked and restored
//!   (marked `redelivered`) when the channel closes or is dropped, or on `recover`.

mod backend;
mod broadcast;
mod channel;
mod dispatch;
mod handoff;
mod publish;
mod settlement;
mod state;
mod transport;
mod unacked;

pub use backend::{
    BrokerRouting, Claimed, ClaimingWait, NativeFanout, PutNow, Receipts, Requeue, Settle, StoredBinding,
    StoredBindings, StoredRoutes, Unsupported, VirtualBackend,
};
pub use broadcast::BroadcastBuffer;
pub use channel::VirtualChannel;
pub use state::BrokerState;
pub use transport::VirtualTransport;
