//! amiquip errors as kombu-rs errors.
//!
//! The broker's reply codes map through [`reply_code_kind`], as for the lapin driver. What
//! tells a dead *channel* (its amiquip handle must be replaced) from a dead *connection* (a
//! recoverable `Connection` error; the connection thread recovers it, see `connection`) is
//! decided here, once.

use kombu_core::{Error, ErrorKind};

use crate::errors::{reply_code_kind, Op};

/// An amiquip error during `op` as a kombu-rs error.
pub(crate) fn from_amiquip(op: Op, error: amiquip::Error) -> Error {
    let kind = kind_of(op, &error);
    Error::new(kind, format!("amqp {} failed: {error}", op.name()))
        .with_context("operation", op.name())
        .with_context("driver", "amiquip")
        .with_source(error)
}

/// Whether `error` means the connection (not just one channel) is gone.
pub(crate) fn is_connection_loss(error: &amiquip::Error) -> bool {
    use amiquip::Error as A;
    matches!(
        error,
        A::UnexpectedSocketClose
            | A::IoErrorReadingSocket { .. }
            | A::IoErrorWritingSocket { .. }
            | A::MalformedFrame
            | A::MissedServerHeartbeats
            | A::ServerClosedConnection { .. }
            | A::ClientClosedConnection
            | A::EventLoopDropped
            | A::EventLoopClientDropped
            | A::IoThreadPanic
            | A::FrameUnexpected
            | A::ClientException
    )
}

/// Whether `error` means the channel it was sent on is closed (the server closed it after a
/// refusal, or the connection under it is gone), so its handle must be replaced.
pub(crate) fn closes_channel(error: &amiquip::Error) -> bool {
    matches!(
        error,
        amiquip::Error::ServerClosedChannel { .. } | amiquip::Error::ClientClosedChannel
    ) || is_connection_loss(error)
}

fn kind_of(op: Op, error: &amiquip::Error) -> ErrorKind {
    use amiquip::Error as A;
    match error {
        A::ServerClosedChannel { code, .. } => reply_code_kind(op, *code),
        A::ServerClosedConnection { code, .. } => match reply_code_kind(op, *code) {
            // A connection closed for an unsupported method is still a closed connection,
            // but retrying will not help: say what was refused.
            ErrorKind::Unsupported => ErrorKind::Unsupported,
            _ => ErrorKind::Connection,
        },
        A::ClientClosedChannel | A::ClientClosedConnection => ErrorKind::Closed,
        A::ExhaustedChannelIds | A::UnavailableChannelId { .. } => ErrorKind::LimitExceeded,
        A::UrlParseError { .. }
        | A::InsecureUrl { .. }
        | A::SpecifyUrlPort { .. }
        | A::InvalidUrlScheme { .. }
        | A::UrlMissingDomain { .. }
        | A::ExtraUrlPathSegments { .. }
        | A::UrlParseHeartbeat { .. }
        | A::UrlParseChannelMax { .. }
        | A::UrlParseConnectionTimeout { .. }
        | A::UrlInvalidAuthMechanism { .. }
        | A::UrlUnsupportedParameter { .. } => ErrorKind::InvalidUrl,
        A::TlsFeatureNotEnabled => ErrorKind::Unsupported,
        A::ConnectionTimeout => ErrorKind::Timeout,
        A::UrlNoSocketAddrs { .. }
        | A::ResolveUrlToSocketAddr { .. }
        | A::FailedToConnect { .. }
        | A::InvalidCredentials
        | A::UnsupportedAuthMechanism { .. }
        | A::UnsupportedLocale { .. } => ErrorKind::Connection,
        other if is_connection_loss(other) => ErrorKind::Connection,
        _ => ErrorKind::Unexpected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_refusals_keep_their_meaning() {
        let closed = |code| amiquip::Error::ServerClosedChannel {
            channel_id: 1,
            code,
            message: "refused".into(),
        };
        assert_eq!(
            from_amiquip(Op::DeclareQueue, closed(404)).kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            from_amiquip(Op::DeclareQueue, closed(406)).kind(),
            ErrorKind::NotEquivalent
        );
        assert_eq!(
            from_amiquip(Op::DeleteQueue, closed(406)).kind(),
            ErrorKind::PreconditionFailed
        );
        assert!(closes_channel(&closed(404)));
        assert!(!is_connection_loss(&closed(404)));
        let lost = from_amiquip(Op::Publish, amiquip::Error::UnexpectedSocketClose);
        assert_eq!(lost.kind(), ErrorKind::Connection);
        assert!(lost.is_recoverable());
    }
}
