//! Batch publishing on AMQP, shared by both drivers.
//!
//! RabbitMQ answers a publish to a missing exchange by closing the channel, and every publish
//! on that channel still awaiting its confirm then fails with the same error: which one of a
//! pipelined batch caused it cannot be told from the close. So before a batch is sent, each
//! exchange it names that this connection has not declared is checked once with a passive
//! declare; the messages for a missing one fail alone with `NotFound` and are never sent, and
//! the rest go out together (their confirms awaited together).

use std::collections::HashMap;

use futures_util::future::join_all;
use kombu_core::{
    Channel, DeclareOptions, Error, ErrorKind, Exchange, RawMessage, RawPublishOptions, Result,
};

use crate::topology::Topology;

/// Publish `batch` on `channel`: exchanges unknown to `topology` are checked first, then
/// every other message is published at once. One outcome per message, in order.
pub(crate) async fn publish_batch(
    channel: &(impl Channel + ?Sized),
    topology: &Topology,
    batch: Vec<(RawMessage, RawPublishOptions)>,
) -> Vec<Result<()>> {
    let mut missing: HashMap<String, Error> = HashMap::new();
    for (_, options) in &batch {
        let name = options.exchange();
        if name.is_empty() || missing.contains_key(name) || topology.has_exchange(name) {
            continue;
        }
        match channel
            .declare_exchange(&Exchange::direct(name), DeclareOptions::passive())
            .await
        {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                missing.insert(name.to_owned(), e.with_context("exchange", name));
            }
            // Present (or unknown: the publish itself will tell).
            _ => {}
        }
    }
    let mut sends = Vec::with_capacity(batch.len());
    let mut refused = Vec::with_capacity(batch.len());
    for (message, options) in batch {
        match missing.get(options.exchange()) {
            Some(e) => refused.push(Some(e.duplicate())),
            None => {
                refused.push(None);
                sends.push(channel.publish(message, options));
            }
        }
    }
    let mut sent = join_all(sends).await.into_iter();
    refused
        .into_iter()
        .map(|refusal| match refusal {
            Some(e) => Err(e),
            None => sent.next().unwrap_or_else(|| {
                Err(Error::new(
                    ErrorKind::Unexpected,
                    "a batch publish finished without an outcome",
                ))
            }),
        })
        .collect()
}
