//! Batch publishing on AMQP, shared by both drivers.
//!
//! RabbitMQ answers a publish to a missing exchange by closing the channel, and every publish
//! on that channel still awaiting its confirm then fails with the same error: which one of a
//! pipelined batch caused it cannot be told from the close. So before a batch is sent, each
//! exchange it names that this connection has not declared is checked once with a passive
//! declare; the messages for a missing one fail alone with `NotFound` and are never sent, and
//! the rest go out together (their confirms awaited together). A check that found the
//! exchange is trusted for a few seconds (`Topology::recently_checked`), so a producer sending
//! many batches to an exchange another process declared pays one round trip per few seconds,
//! not one per batch; should the exchange vanish within that window, that batch fails as a
//! whole with `NotFound` and the next one checks again.

use std::collections::{HashMap, HashSet};

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
    // One look per distinct exchange of the batch (usually one), not per message.
    let mut missing: HashMap<String, Error> = HashMap::new();
    let mut present: HashSet<&str> = HashSet::new();
    // Exchanges sent to on the strength of an earlier passive check, not a declaration.
    let mut trusted_checks: Vec<String> = Vec::new();
    for (_, options) in &batch {
        let name = options.exchange();
        if name.is_empty() || present.contains(name) || missing.contains_key(name) {
            continue;
        }
        if topology.has_exchange(name) {
            present.insert(name);
            continue;
        }
        if topology.recently_checked(name) {
            present.insert(name);
            trusted_checks.push(name.to_owned());
            continue;
        }
        match channel
            .declare_exchange(&Exchange::direct(name), DeclareOptions::passive())
            .await
        {
            Ok(()) => {
                topology.note_checked(name, true);
                present.insert(name);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                topology.note_checked(name, false);
                missing.insert(name.to_owned(), e.with_context("exchange", name));
            }
            // Unknown: the publish itself will tell.
            Err(_) => {
                present.insert(name);
            }
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
    let sent = join_all(sends).await;
    // A NotFound closes the channel for every publish in flight, so which exchange vanished
    // cannot be told: every check this batch trusted is dropped, and the next batch checks
    // again.
    if sent
        .iter()
        .any(|r| matches!(r, Err(e) if e.kind() == ErrorKind::NotFound))
    {
        for name in &trusted_checks {
            topology.note_checked(name, false);
        }
    }
    let mut sent = sent.into_iter();
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
