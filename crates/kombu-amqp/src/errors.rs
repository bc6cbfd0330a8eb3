//! lapin errors as kombu-rs errors.
//!
//! The broker's reply codes decide the kind: 404 is `NotFound`, 406 `PreconditionFailed` (a
//! declaration turns it into `NotEquivalent`), 403 `Channel` with the broker's text, 311
//! `LimitExceeded`; a lost socket, a missed heartbeat or a hard (connection) error is a
//! recoverable `Connection` error, which the facade's retry policy acts on.

use kombu_core::{Error, ErrorKind};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

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
    fn name(self) -> &'static str {
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
    Error::new(kind, format!("amqp {} failed: {error}", op.name()))
        .with_context("operation", op.name())
        .with_source(error)
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

fn kind_of(op: Op, error: &lapin::Error) -> ErrorKind {
    use lapin::ErrorKind as L;
    match error.kind() {
        L::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => ErrorKind::NotFound,
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => match op {
                Op::DeclareExchange | Op::DeclareQueue => ErrorKind::NotEquivalent,
                _ => ErrorKind::PreconditionFailed,
            },
            AMQPErrorKind::Soft(AMQPSoftError::CONTENTTOOLARGE) => ErrorKind::LimitExceeded,
            AMQPErrorKind::Soft(_) => ErrorKind::Channel,
            AMQPErrorKind::Hard(AMQPHardError::NOTIMPLEMENTED) => ErrorKind::Unsupported,
            AMQPErrorKind::Hard(_) => ErrorKind::Connection,
        },
        L::IOError(_) | L::MissingHeartbeatError | L::InvalidConnectionState(_) => ErrorKind::Connection,
        L::InvalidChannelState(..) | L::InvalidChannel(_) => ErrorKind::Channel,
        L::ChannelsLimitReached => ErrorKind::LimitExceeded,
        L::AuthProviderError(_) | L::InvalidProtocolVersion(_) if op == Op::Connect => ErrorKind::Connection,
        _ => ErrorKind::Unexpected,
    }
}
