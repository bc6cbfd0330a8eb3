//! Claims whose answer was lost: the one window the claim script alone does not close.
//!
//! The claim script moves messages from a queue into Kombu's unacked hash atomically, so a
//! message is always in one or the other. But if the connection drops after the server ran
//! the script and before its answer arrived, the client never learns which messages it now
//! holds: they sit in the unacked hash, owned by nobody, until the visibility timeout (an
//! hour by default) lets a restorer put them back. Measured: a Redis restart under a working
//! consumer stranded one to three messages in about one run in five.
//!
//! So each claim names a *receipt* key (`<prefix>_kombu_rs.claim.<uuid>`) that the script
//! fills with the delivery tags it claimed, in the same atomic step. A claim that fails for
//! a lost connection leaves its receipt key *pending*; the next claim on that queue first
//! reads the receipt (once the server is back) and hands out the messages it lists, read
//! from the unacked hash, before claiming anything new. A receipt whose answer did arrive
//! is deleted by the next claim script (no extra round trip), and any receipt expires with
//! the visibility timeout, after which the restorer owns its messages anyway. Python Kombu
//! ignores these keys.

use std::collections::HashMap;
use std::sync::Mutex;

use kombu_core::envelope::Envelope;
use kombu_core::virtual_transport::Claimed;
use kombu_core::{Error, ErrorKind, Result};
use redis::aio::ConnectionManager;
use tracing::{debug, info};

use crate::backend::redis_error;
use crate::keys::Keys;

/// The receipts of one backend: the answered ones (each deleted by a later claim) and the
/// unanswered ones per queue.
#[derive(Debug, Default)]
pub(crate) struct ClaimReceipts {
    confirmed: Mutex<Vec<String>>,
    pending: Mutex<HashMap<String, Vec<String>>>,
}

impl ClaimReceipts {
    /// A new receipt key for a claim.
    pub(crate) fn new_key(keys: &Keys) -> String {
        format!(
            "{}_kombu_rs.claim.{}",
            keys.prefix(),
            uuid::Uuid::new_v4().simple()
        )
    }

    /// An answered receipt for the next claim script to delete (taken: only one claim does).
    pub(crate) fn take_confirmed(&self) -> Option<String> {
        self.confirmed.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// The claim with receipt `key` was answered (or a receipt taken for deletion was not
    /// deleted after all).
    pub(crate) fn confirm(&self, key: String) {
        self.confirmed.lock().unwrap_or_else(|p| p.into_inner()).push(key);
    }

    /// The claim with receipt `key` on `queue` failed with a lost connection: the server may
    /// have run it.
    pub(crate) fn unanswered(&self, queue: &str, key: String) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(queue.to_owned())
            .or_default()
            .push(key);
    }

    /// Whether a claim on `queue` may have been run without its answer arriving.
    pub(crate) fn has_pending(&self, queue: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(queue)
    }

    /// Read the pending receipts of `queue` and add the messages they list (still unacked) to
    /// `out`. A receipt that cannot be read now stays pending; the first error is returned.
    pub(crate) async fn recover(
        &self,
        conn: &mut ConnectionManager,
        keys: &Keys,
        queue: &str,
        out: &mut Vec<Claimed>,
    ) -> Result<()> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(queue)
            .unwrap_or_default();
        let mut left = Vec::new();
        let mut first_error = None;
        for key in pending {
            if first_error.is_some() {
                left.push(key);
                continue;
            }
            match recover_one(conn, keys, &key, out).await {
                Ok(found) => {
                    if found > 0 {
                        info!(
                            queue,
                            found, "recovered messages claimed by a claim whose answer was lost"
                        );
                    }
                }
                Err(e) => {
                    left.push(key);
                    first_error = Some(e);
                }
            }
        }
        if !left.is_empty() {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(queue.to_owned())
                .or_default()
                .extend(left);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Read receipt `key`: push the messages it lists that are still unacked, then delete it.
/// How many were found.
async fn recover_one(
    conn: &mut ConnectionManager,
    keys: &Keys,
    key: &str,
    out: &mut Vec<Claimed>,
) -> Result<usize> {
    let receipt: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(|e| redis_error(e, "cannot read a claim receipt"))?;
    let Some(receipt) = receipt else {
        return Ok(0); // the claim never ran (or claimed nothing)
    };
    let tags: Vec<String> = serde_json::from_str(&receipt).unwrap_or_default();
    let mut found = 0;
    for tag in tags {
        let record: Option<String> = redis::cmd("HGET")
            .arg(&keys.unacked)
            .arg(&tag)
            .query_async(conn)
            .await
            .map_err(|e| redis_error(e, "cannot read the unacked hash"))?;
        // Gone: acked or restored by someone else meanwhile (after the visibility timeout).
        let Some(record) = record else { continue };
        match parse_unacked_record(&record).and_then(|(envelope, _, _)| envelope_of(&envelope)) {
            Ok(envelope) => {
                out.push(Claimed::held(envelope, tag));
                found += 1;
            }
            // Left to the restorer, which parks what it cannot read.
            Err(e) => debug!(error = %e, delivery_tag = %tag, "unreadable unacked record in a claim receipt"),
        }
    }
    let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(key).query_async(conn).await;
    Ok(found)
}

/// A Kombu unacked record `[envelope, exchange, routing_key]`.
pub(crate) fn parse_unacked_record(record: &str) -> Result<(serde_json::Value, String, String)> {
    let parsed: serde_json::Value = serde_json::from_str(record)
        .map_err(|e| Error::new(ErrorKind::Decode, "malformed unacked record").with_source(e))?;
    match parsed {
        serde_json::Value::Array(mut parts) if parts.len() == 3 => {
            let text = |v: Option<serde_json::Value>| {
                v.and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            };
            let routing_key = text(parts.pop());
            let exchange = text(parts.pop());
            Ok((parts.pop().unwrap_or_default(), exchange, routing_key))
        }
        _ => Err(Error::new(
            ErrorKind::Decode,
            "unacked record is not [envelope, exchange, routing_key]",
        )),
    }
}

fn envelope_of(value: &serde_json::Value) -> Result<Envelope> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| Error::new(ErrorKind::Decode, "cannot re-encode an unacked envelope").with_source(e))?;
    Envelope::from_json(&bytes)
}
