//! Publishing many messages at once: [`PublishBatch`] and its per-message [`BatchOutcome`].
//!
//! A batch is prepared (serialized, compressed) message by message as it is built, then sent
//! through the channel's [`publish_batch`](kombu_core::Channel::publish_batch): every publish
//! in flight together, so AMQP confirms are awaited together, Redis commands pipelined and
//! SQLite puts committed in groups, instead of one round trip per message.

use std::time::Duration;

use bytes::Bytes;
use kombu_core::{Error, RawMessage, Result};
use serde::Serialize;
use tracing::field::{display, Empty};
use tracing::{debug_span, Instrument};

use super::{Attempt, Body, Producer, PublishOptions};
#[cfg(feature = "metrics")]
use crate::observe;
use crate::retry::RetryPolicy;

/// Messages to publish together (built by [`Producer::batch`]).
///
/// Each message keeps its own [`PublishOptions`] (routing key, exchange, properties,
/// declarations, `retry`). [`send`](Self::send) publishes them all at once and reports one
/// outcome per message, in the order they were added: nothing is dropped silently. A
/// message whose options ask for `retry` is sent again, alone with the other failed ones,
/// after a recoverable failure (a lost connection, a broker restart), as its policy allows;
/// messages already confirmed are never sent twice.
///
/// Order: messages are handed to the transport in the order added, so messages routed the
/// same way to the same queue arrive in that order on transports that keep FIFO order
/// ([`Capabilities::fifo_order`](kombu_core::Capabilities)). A retried message comes after
/// the ones that succeeded the first time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
/// use kombu::{Connection, PublishOptions, Queue};
/// let conn = Connection::new("memory:///batch-doc")?;
/// let jobs = Queue::new("jobs");
/// let producer = conn.producer();
/// let mut batch = producer.batch();
/// for n in 0..100 {
///     batch.add(&serde_json::json!({ "n": n }), PublishOptions::new().routing_key("jobs").declare(jobs.clone()));
/// }
/// let outcome = batch.send().await;
/// assert_eq!(outcome.confirmed(), 100);
/// outcome.into_result()?; // the first failure, if any
/// assert_eq!(conn.simple_queue("jobs").qsize().await?, 100);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a batch publishes nothing until `send` is awaited"]
pub struct PublishBatch<'p> {
    producer: &'p Producer,
    entries: Vec<Entry>,
}

/// One message of a batch: built (or the error that building it gave), and what its
/// publish needs.
#[derive(Debug)]
struct Entry {
    message: Result<RawMessage>,
    attempt: Attempt,
    retry: Option<RetryPolicy>,
}

impl Producer {
    /// An empty batch on this producer: add messages, then [`send`](PublishBatch::send) them
    /// in as few round trips as the transport allows.
    pub fn batch(&self) -> PublishBatch<'_> {
        PublishBatch {
            producer: self,
            entries: Vec::new(),
        }
    }
}

impl<'p> PublishBatch<'p> {
    /// Add a serializable value (JSON unless a serializer is chosen), as
    /// [`Producer::publish`] would publish it. A value that cannot be serialized is reported
    /// as that message's outcome.
    pub fn add<T: Serialize + ?Sized>(&mut self, body: &T, options: PublishOptions) -> &mut Self {
        let body = self.producer.serialize(body, &options);
        self.push(body, options)
    }

    /// Add raw bytes, as [`Producer::publish_bytes`].
    pub fn add_bytes(&mut self, body: impl Into<Bytes>, options: PublishOptions) -> &mut Self {
        self.push(Body::Bytes(body.into()), options)
    }

    /// Add text, as [`Producer::publish_text`].
    pub fn add_text(&mut self, body: &str, options: PublishOptions) -> &mut Self {
        self.push(Body::Text(body), options)
    }

    fn push(&mut self, body: Body<'_>, options: PublishOptions) -> &mut Self {
        let message = self.producer.prepare(body, &options);
        let (attempt, retry) = Attempt::from_options(options);
        self.entries.push(Entry {
            message,
            attempt,
            retry,
        });
        self
    }

    /// Messages added so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Publish every message; one outcome per message, in the order added.
    pub async fn send(self) -> BatchOutcome {
        #[cfg(feature = "metrics")]
        let stopwatch = observe::Stopwatch::start();
        let producer = self.producer;
        let transport = producer.connection.transport_name();
        let span = debug_span!(
            "kombu.publish_batch",
            transport,
            messages = self.entries.len(),
            exchange = Empty,
            routing_key = Empty,
            failed = Empty,
            error = Empty,
        );
        if !span.is_disabled() {
            if let Some((exchange, routing_key)) = self.common_target() {
                span.record("exchange", exchange);
                span.record("routing_key", routing_key);
            }
        }
        // Each message's exchange when not the producer's (only with metrics: its label).
        #[cfg(feature = "metrics")]
        let exchanges: Vec<Option<String>> = self
            .entries
            .iter()
            .map(|entry| entry.attempt.exchange.as_ref().map(|e| e.name.clone()))
            .collect();
        let outcome = self.send_all().instrument(span.clone()).await;
        if !span.is_disabled() {
            span.record("failed", outcome.results.len() - outcome.confirmed());
            if let Some((_, e)) = outcome.failures().next() {
                span.record("error", display(e));
            }
        }
        #[cfg(feature = "metrics")]
        {
            producer.count_published(transport, &exchanges, &outcome);
            observe::batch_published(transport, stopwatch.elapsed());
        }
        outcome
    }

    /// The exchange and routing key of every message, when they all have the same.
    fn common_target(&self) -> Option<(&str, &str)> {
        let producer = self.producer;
        let mut targets = self.entries.iter().map(|entry| {
            let exchange = entry
                .attempt
                .exchange
                .as_ref()
                .map_or(&producer.exchange.name, |e| &e.name);
            let routing_key = entry
                .attempt
                .routing_key
                .as_deref()
                .unwrap_or(&producer.routing_key);
            (exchange.as_str(), routing_key)
        });
        let first = targets.next()?;
        targets.all(|target| target == first).then_some(first)
    }

    async fn send_all(self) -> BatchOutcome {
        let producer = self.producer;
        let mut results: Vec<Result<()>> = Vec::with_capacity(self.entries.len());
        // (index, message, attempt, (its retry policy, retries so far))
        let mut pending = Vec::with_capacity(self.entries.len());
        for (index, entry) in self.entries.into_iter().enumerate() {
            match entry.message {
                Ok(message) => {
                    results.push(Ok(()));
                    let retry = entry.retry.map(|policy| (policy, 0usize));
                    pending.push((index, message, entry.attempt, retry));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        while !pending.is_empty() {
            let round = producer.send_round(&pending).await;
            let mut retry = Vec::new();
            let mut wait: Option<Duration> = None;
            for ((index, message, attempt, mut policy), outcome) in pending.into_iter().zip(round) {
                let Err(error) = outcome else { continue };
                let next = match policy.as_mut() {
                    Some((policy, retries)) if error.is_recoverable() => {
                        *retries += 1;
                        policy.intervals().nth(*retries - 1)
                    }
                    _ => None,
                };
                match next {
                    Some(next) => {
                        wait = Some(wait.map_or(next, |w| w.min(next)));
                        retry.push((index, message, attempt, policy));
                    }
                    None => results[index] = Err(error),
                }
            }
            if let Some(wait) = wait {
                tracing::warn!(
                    messages = retry.len(),
                    wait_ms = wait.as_millis() as u64,
                    "batch publish failed in part, retrying the failed messages"
                );
                tokio::time::sleep(wait).await;
                // Reconnect once for the round; the sends report their own errors.
                let _ = producer
                    .connection
                    .ensure_connection(&RetryPolicy::no_retry())
                    .await;
            }
            pending = retry;
        }
        BatchOutcome { results }
    }
}

impl Producer {
    /// Count a batch's messages in `kombu_messages_published_total`: one increment per
    /// exchange and outcome, not one per message. `exchanges` are the messages' own exchanges
    /// (`None`: the producer's).
    #[cfg(feature = "metrics")]
    fn count_published(&self, transport: &'static str, exchanges: &[Option<String>], outcome: &BatchOutcome) {
        // A batch targets a handful of exchanges: a short list beats a map.
        let mut counts: Vec<(&str, bool, u64)> = Vec::new();
        for (exchange, result) in exchanges.iter().zip(outcome.results()) {
            let exchange = exchange.as_deref().unwrap_or(&self.exchange.name);
            let ok = result.is_ok();
            match counts.iter_mut().find(|(e, o, _)| *e == exchange && *o == ok) {
                Some((_, _, n)) => *n += 1,
                None => counts.push((exchange, ok, 1)),
            }
        }
        for (exchange, ok, n) in counts {
            observe::published_in_batch(transport, exchange, ok, n);
        }
    }

    /// One round of a batch: the channel, the declarations not yet cached, then every
    /// message in one `publish_batch`. Outcomes in `pending`'s order.
    async fn send_round<W>(&self, pending: &[(usize, RawMessage, Attempt, W)]) -> Vec<Result<()>> {
        // One failure for every message: each gets its own copy.
        let failed_all = |e: Error| pending.iter().map(|_| Err(e.duplicate())).collect();
        let channel = match self.channel_for_publish().await {
            Ok(channel) => channel,
            Err(e) => return failed_all(e),
        };
        let mut declare_errors = Vec::with_capacity(pending.len());
        let mut batch = Vec::with_capacity(pending.len());
        for (_, message, attempt, _) in pending {
            match self.declare_for(attempt, channel.as_ref()).await {
                Ok(()) => {
                    declare_errors.push(None);
                    batch.push((message.clone(), self.raw_options(attempt)));
                }
                Err(e) => declare_errors.push(Some(e)),
            }
        }
        let mut sent = channel.publish_batch(batch).await.into_iter();
        declare_errors
            .into_iter()
            .map(|declare_error| match declare_error {
                Some(e) => Err(e),
                None => sent.next().unwrap_or_else(|| {
                    Err(Error::new(
                        kombu_core::ErrorKind::Unexpected,
                        "the transport reported fewer outcomes than the batch had messages",
                    ))
                }),
            })
            .collect()
    }
}

/// What became of each message of a [`PublishBatch`], in the order they were added.
#[derive(Debug)]
#[must_use = "a batch's failures are reported here"]
pub struct BatchOutcome {
    results: Vec<Result<()>>,
}

impl BatchOutcome {
    /// Every message's outcome, in the order added.
    pub fn results(&self) -> &[Result<()>] {
        &self.results
    }

    /// Every message's outcome, owned.
    pub fn into_results(self) -> Vec<Result<()>> {
        self.results
    }

    /// Messages the transport accepted (confirmed, where it confirms).
    pub fn confirmed(&self) -> usize {
        self.results.iter().filter(|r| r.is_ok()).count()
    }

    /// Whether every message was accepted.
    pub fn all_ok(&self) -> bool {
        self.results.iter().all(Result::is_ok)
    }

    /// The failed messages: their index in the batch and error.
    pub fn failures(&self) -> impl Iterator<Item = (usize, &Error)> {
        self.results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
    }

    /// `Ok` when every message was accepted, else the first failure (with its index in the
    /// `batch_index` context).
    pub fn into_result(self) -> Result<()> {
        match self
            .results
            .into_iter()
            .enumerate()
            .find_map(|(i, r)| r.err().map(|e| (i, e)))
        {
            None => Ok(()),
            Some((i, e)) => Err(e.with_context("batch_index", i)),
        }
    }
}
