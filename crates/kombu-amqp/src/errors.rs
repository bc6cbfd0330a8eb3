//! Driver errors as kombu-rs errors.
//!
//! [`Op`] and [`reply_code_kind`] are shared by both drivers (lapin here, amiquip in
//! `amiquip_driver::errors`), so a broker refusal means the same kind whichever drives it.
//! The broker's reply codes decide the kind: 404 is `NotFound`, 406 `PreconditionFailed` (a
//! declaration turns it into `NotEquivalent`), 403 `Channel` with the broker's text, 311
//! `LimitExceeded`; a lost socket, a missed heartbeat or a hard (connection) error is a
//! recoverable `Connection` error, which the facade's retry policy acts on.

use kombu_core::{Error, ErrorKind};
use lapin::protocol::AMQPErrorKind;

/// What was being done when an error happened: names the operation in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Connect,
    OpenChannel,
    DeclareExchange,
    DeleteExchange,
    DeclareQueue,
    Bind,
    Unbind,
    Purge,
    DeleteQueue,
    Publish,
    Get,
    Consume,
    Cancel,
    Qos,
    Recover,
    Ack,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Connect => "connect",
            Op::OpenChannel => "channel.open",
            Op::DeclareExchange => "exchange.declare",
            Op::DeleteExchange => "exchange.delete",
            Op::DeclareQueue => "queue.declare",
            Op::Bind => "bind",
            Op::Unbind => "unbind",
            Op::Purge => "queue.purge",
            Op::DeleteQueue => "queue.delete",
            Op::Publish => "basic.publish",
            Op::Get => "basic.get",
            Op::Consume => "basic.consume",
            Op::Cancel => "basic.cancel",
            Op::Qos => "basic.qos",
            Op::Recover => "basic.recover",
            Op::Ack => "basic.ack",
        }
    }
}

/// A lapin error during `op` as a kombu-rs error.
pub(crate) fn from_lapin(op: Op, error: lapin::Error) -> Error {
    let kind = kind_of(op, &error);
    let mut converted = Error::new(kind, format!("amqp {} failed: {error}", op.name()));
    if op == Op::Connect && matches!(error.kind(), lapin::ErrorKind::ParsingError(_)) {
        // What a TLS listener answers to a plain AMQP header (an alert) does not parse.
        converted = converted.with_context(
            "hint",
            "the server does not speak plain AMQP 0-9-1 here; a TLS port needs amqps://",
        );
    }
    converted.with_context("operation", op.name()).with_source(error)
}

/// Whether `error` means the connection (not just one channel) is gone.
pub(crate) fn is_connection_loss(error: &lapin::Error) -> bool {
    use lapin::ErrorKind as L;
    match error.kind() {
        L::IOError(_) | L::MissingHeartbeatError | L::InvalidConnectionState(_) => true,
        L::ProtocolError(e) => matches!(e.kind(), AMQPErrorKind::Hard(_)),
        _ => false,
    }
}

/// The kind of a broker refusal with AMQP reply `code` during `op`: 404 `NotFound`, 406
/// `NotEquivalent` for a declaration and `PreconditionFailed` otherwise, 311 `LimitExceeded`,
/// 540 `Unsupported`, the other soft (channel) codes `Channel`, every hard code `Connection`.
pub(crate) fn reply_code_kind(op: Op, code: u16) -> ErrorKind {
    match code {
        404 => ErrorKind::NotFound,
        406 => match op {
            Op::DeclareExchange | Op::DeclareQueue => ErrorKind::NotEquivalent,
            _ => ErrorKind::PreconditionFailed,
        },
        311 => ErrorKind::LimitExceeded,
        540 => ErrorKind::Unsupported,
        312 | 313 | 403 | 405 => ErrorKind::Channel,
        _ => ErrorKind::Connection,
    }
}

fn kind_of(op: Op, error: &lapin::Error) -> ErrorKind {
    use lapin::ErrorKind as L;
    match error.kind() {
        L::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Soft(soft) => reply_code_kind(op, soft.get_id()),
            AMQPErrorKind::Hard(hard) => reply_code_kind(op, hard.get_id()),
        },
        L::IOError(_) | L::MissingHeartbeatError | L::InvalidConnectionState(_) => ErrorKind::Connection,
        L::InvalidChannelState(..) | L::InvalidChannel(_) => ErrorKind::Channel,
        L::ChannelsLimitReached => ErrorKind::LimitExceeded,
        L::AuthProviderError(_) | L::InvalidProtocolVersion(_) | L::ParsingError(_) if op == Op::Connect => {
            ErrorKind::Connection
        }
        _ => ErrorKind::Unexpected,
    }
}
