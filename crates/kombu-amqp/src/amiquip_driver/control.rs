//! The control channel of a worker: declarations, deletions, purges and publishes.
//!
//! RabbitMQ closes a channel that a declaration was refused on (404/406), and amiquip then
//! fails every later call on it; the worker drops such a channel and the next operation
//! opens another, so a refusal is a typed error, not the end of the kombu-rs channel.
//!
//! **Publisher confirms** (on by default, `confirm_publish`): a publish waits on this thread
//! for the broker's ack of its sequence number before it is answered, one publish at a time
//! per kombu-rs channel (open more channels to publish in parallel). A mandatory message
//! that comes back (`basic.return`, which RabbitMQ sends before the ack of the same message,
//! and amiquip's I/O thread queues in that order) is a `NotFound` error; a nack is an error;
//! a channel closed before the confirm (a publish to a missing exchange) is the broker's
//! error for it. Without confirms a publish is not answered by the broker, so a refusal only
//! shows on the next call; the channel is then *unverified* and checked before that call.

use amiquip::{Confirm, ConfirmPayload, Publish, Return};
use crossbeam_channel::Receiver;
use kombu_core::{Error, ErrorKind, Result};
use tracing::debug;

use super::errors::closes_channel;
use super::worker::Core;
use crate::errors::Op;

/// An open control channel.
pub(crate) struct Control {
    pub(crate) channel: amiquip::Channel,
    /// The generation of the connection it was opened on (see `connection`).
    generation: u64,
    returns: Receiver<Return>,
    /// Publisher confirms, once enabled: the receiver and the last sequence number used.
    confirms: Option<(Receiver<Confirm>, u64)>,
    /// A publish without confirm was sent since the last answered call: the broker may have
    /// closed the channel since, which amiquip tells only when the channel is used again.
    unverified: bool,
}

impl Control {
    /// Close the channel, logging a failure (nothing is pending on a control channel).
    pub(crate) fn close(self) {
        if let Err(e) = self.channel.close() {
            debug!(error = %e, "amiquip control channel close reported an error");
        }
    }
}

/// A control operation's amiquip error that means the connection was lost.
struct Retry(amiquip::Error);

/// A message ready to be published: converted and checked on the async side.
pub(crate) struct Outgoing {
    pub(crate) body: bytes::Bytes,
    pub(crate) properties: amiquip::AmqpProperties,
    pub(crate) exchange: std::sync::Arc<str>,
    /// amiquip's `Publish` takes it as a `String`.
    pub(crate) routing_key: String,
    pub(crate) mandatory: bool,
    /// Wait for the broker's confirm.
    pub(crate) confirm: bool,
}

impl Core {
    /// The control channel (opened or replaced as needed), with confirms on when `confirms`.
    fn control(&mut self, confirms: bool) -> Result<&mut Control> {
        // A channel of a connection that recovery replaced is dead: using it would only
        // turn into an error for the caller although a working connection is there.
        let generation = self.connection.state.generation();
        if self.control.as_ref().is_some_and(|c| c.generation != generation) {
            debug!("amiquip control channel is from before a recovery; reopening");
            self.control = None;
        }
        if let Some(control) = self.control.as_mut() {
            if control.unverified {
                // A returns listener is set by the I/O thread alone, no frame is sent: it
                // fails exactly when the channel is gone.
                match control.channel.listen_for_returns() {
                    Ok(returns) => {
                        control.returns = returns;
                        control.unverified = false;
                    }
                    Err(e) => {
                        debug!(error = %e, "amiquip control channel closed after a publish; reopening");
                        self.control = None;
                    }
                }
            }
        }
        let mut control = match self.control.take() {
            Some(control) => control,
            None => {
                let (channel, generation) = self.connection.open_channel_blocking()?;
                let returns = channel
                    .listen_for_returns()
                    .map_err(|e| self.connection.state.observe(Op::OpenChannel, e))?;
                Control {
                    channel,
                    generation,
                    returns,
                    confirms: None,
                    unverified: false,
                }
            }
        };
        if confirms && control.confirms.is_none() {
            let enable = control
                .channel
                .listen_for_publisher_confirms()
                .and_then(|receiver| {
                    control.channel.enable_publisher_confirms()?;
                    Ok(receiver)
                });
            match enable {
                Ok(receiver) => control.confirms = Some((receiver, 0)),
                // The channel is dropped: the next call opens another.
                Err(e) => return Err(self.connection.state.observe(Op::OpenChannel, e)),
            }
        }
        Ok(self.control.insert(control))
    }

    /// Run `f` on the control channel; a channel the broker closed is dropped for the next.
    ///
    /// A lost connection is often first seen here (nobody has used the channel since the
    /// broker went), so `f` runs once more on a fresh channel, whose request recovers the
    /// connection: the caller then sees the recovery as a pause, not as an error. As in the
    /// lapin driver, that is for control operations only, which are declarations, deletions
    /// and purges: repeating one is harmless where the first may or may not have arrived.
    /// Publishes are not repeated (see [`Core::publish`]).
    pub(crate) fn on_control<T>(
        &mut self,
        op: Op,
        f: impl Fn(&amiquip::Channel) -> amiquip::Result<T>,
    ) -> Result<T> {
        match self.on_control_once(op, &f) {
            Err(Retry(e)) if self.connection.state.is_usable() => {
                debug!(error = %e, ?op, "amiquip control channel lost with its connection; retrying on a fresh one");
                self.on_control_once(op, &f)
                    .unwrap_or_else(|Retry(e)| Err(self.connection.state.observe(op, e)))
            }
            Err(Retry(e)) => Err(self.connection.state.observe(op, e)),
            Ok(result) => result,
        }
    }

    /// One try of [`Core::on_control`]: `Err` is a lost connection worth one more try.
    fn on_control_once<T>(
        &mut self,
        op: Op,
        f: &impl Fn(&amiquip::Channel) -> amiquip::Result<T>,
    ) -> std::result::Result<Result<T>, Retry> {
        let control = match self.control(false) {
            Ok(control) => control,
            Err(e) => return Ok(Err(e)),
        };
        match f(&control.channel) {
            Ok(value) => Ok(Ok(value)),
            Err(e) => {
                if closes_channel(&e) {
                    self.control = None;
                }
                if super::errors::is_connection_loss(&e) {
                    return Err(Retry(e));
                }
                Ok(Err(self.connection.state.observe(op, e)))
            }
        }
    }

    /// Publish one message; with confirms, answer once the broker has taken it.
    pub(crate) fn publish(&mut self, message: Outgoing) -> Result<()> {
        let control = self.control(message.confirm)?;
        // Returns of earlier unconfirmed mandatory publishes are nobody's answer any more.
        while control.returns.try_recv().is_ok() {}
        let publish = Publish {
            body: &message.body,
            routing_key: message.routing_key,
            mandatory: message.mandatory,
            immediate: false,
            properties: message.properties,
        };
        if let Err(e) = control.channel.basic_publish(&*message.exchange, publish) {
            if closes_channel(&e) {
                self.control = None;
            }
            if super::errors::is_connection_loss(&e) {
                // The frames may have reached the broker before the socket went: the caller
                // must not take the failure for "not stored" (nor a success for "stored").
                return Err(lost_before_confirm().with_source(self.connection.state.observe(Op::Publish, e)));
            }
            return Err(self.connection.state.observe(Op::Publish, e));
        }
        let Some((confirms, sequence)) = control.confirms.as_mut() else {
            control.unverified = true;
            return Ok(());
        };
        *sequence += 1;
        let mine = *sequence;
        loop {
            match confirms.recv() {
                Ok(Confirm::Ack(payload)) if covers(payload, mine) => {
                    return match control.returns.try_recv() {
                        Ok(returned) => Err(Error::new(
                            ErrorKind::NotFound,
                            format!(
                                "the broker returned the mandatory message: {} (no queue is bound for it)",
                                returned.reply_text
                            ),
                        )
                        .with_context("exchange", returned.exchange)
                        .with_context("routing_key", returned.routing_key)),
                        Err(_) => Ok(()),
                    };
                }
                Ok(Confirm::Nack(payload)) if covers(payload, mine) => {
                    return Err(Error::new(
                        ErrorKind::Channel,
                        "the broker refused the message (basic.nack): it was not stored",
                    ));
                }
                Ok(_) => continue, // an earlier publish's confirm
                Err(_) => return Err(self.closed_before_confirm(&message.exchange)),
            }
        }
    }

    /// The error for a publish whose channel closed before its confirm arrived: the
    /// broker's reason when it closed the channel (amiquip answers the next call on it
    /// with that reason), else a lost connection.
    fn closed_before_confirm(&mut self, exchange: &str) -> Error {
        let reason = self
            .control
            .take()
            .and_then(|control| control.channel.listen_for_returns().err());
        match reason {
            Some(e) if !super::errors::is_connection_loss(&e) => self
                .connection
                .state
                .observe(Op::Publish, e)
                .with_context("exchange", exchange),
            lost => {
                if let Some(e) = lost {
                    debug!(error = %e, "amiquip publish: the connection was lost before the confirm");
                }
                lost_before_confirm()
            }
        }
    }
}

/// The error for a publish caught by a lost connection: recoverable (the connection is
/// being recovered, so a retry publishes on the new one), and honest that the message's
/// fate is unknown, so that at-least-once callers retry and at-most-once callers do not.
fn lost_before_confirm() -> Error {
    Error::new(
        ErrorKind::Connection,
        "amqp basic.publish failed: the connection was lost before the broker confirmed; \
         the message may or may not have been stored",
    )
    .with_context("delivery", "unknown: the message may or may not have been stored")
}

/// Whether a confirm for `payload` covers sequence number `mine`.
fn covers(payload: ConfirmPayload, mine: u64) -> bool {
    payload.delivery_tag == mine || (payload.multiple && payload.delivery_tag >= mine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirm_covers_its_own_tag_or_all_before_a_multiple() {
        let single = |delivery_tag| ConfirmPayload {
            delivery_tag,
            multiple: false,
        };
        let multiple = |delivery_tag| ConfirmPayload {
            delivery_tag,
            multiple: true,
        };
        assert!(covers(single(3), 3));
        assert!(!covers(single(2), 3));
        assert!(covers(multiple(5), 3));
        assert!(!covers(multiple(2), 3));
    }
}
