//! The one error type of kombu-rs.
//!
//! Every fallible operation returns [`Error`]: a [`ErrorKind`] that says *what* went wrong,
//! whether the failure is [recoverable](Error::is_recoverable) (a retry, possibly after
//! reconnecting, may succeed — this is what drives `ensure_connection` and `retry` publishes),
//! free-form context (`key = value` pairs such as the queue or the transport) and the
//! underlying source error, if any.

use std::borrow::Cow;
use std::fmt;

/// A specialised `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. Non-exhaustive: transports may gain kinds as they grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection to the broker failed or was lost.
    Connection,
    /// A channel-level failure (AMQP channel error, a broker command failed).
    Channel,
    /// The exchange, queue or message does not exist (AMQP 404).
    NotFound,
    /// A redeclaration conflicts with the existing entity (AMQP 406 PRECONDITION_FAILED).
    NotEquivalent,
    /// A condition of the operation does not hold (`if_empty`/`if_unused` deletes, unknown
    /// delivery tags).
    PreconditionFailed,
    /// The content type of a message is not in the consumer's `accept` list.
    ContentDisallowed,
    /// A serializer or compressor is not registered.
    SerializerNotInstalled,
    /// Serializing or compressing a message body failed.
    Encode,
    /// Deserializing, decompressing or parsing a message (or a stored envelope) failed.
    Decode,
    /// The message was already acknowledged, rejected or requeued, or has no channel.
    MessageState,
    /// An operation did not finish in time.
    Timeout,
    /// The transport does not support this operation or option.
    Unsupported,
    /// The broker URL could not be parsed.
    InvalidUrl,
    /// No transport is registered for the URL's scheme.
    UnknownTransport,
    /// An argument or option value is invalid.
    InvalidArgument,
    /// A size or count limit was exceeded (message size, pool limit, channel ids).
    LimitExceeded,
    /// The connection, channel or pool was closed.
    Closed,
    /// A failure that fits no other kind.
    Unexpected,
}

impl ErrorKind {
    /// A short, stable, lower-case name (`"not-found"`, `"content-disallowed"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Channel => "channel",
            ErrorKind::NotFound => "not-found",
            ErrorKind::NotEquivalent => "not-equivalent",
            ErrorKind::PreconditionFailed => "precondition-failed",
            ErrorKind::ContentDisallowed => "content-disallowed",
            ErrorKind::SerializerNotInstalled => "serializer-not-installed",
            ErrorKind::Encode => "encode",
            ErrorKind::Decode => "decode",
            ErrorKind::MessageState => "message-state",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::InvalidUrl => "invalid-url",
            ErrorKind::UnknownTransport => "unknown-transport",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::LimitExceeded => "limit-exceeded",
            ErrorKind::Closed => "closed",
            ErrorKind::Unexpected => "unexpected",
        }
    }

    /// Whether errors of this kind are recoverable by default (a retry may succeed).
    pub fn is_recoverable_by_default(self) -> bool {
        matches!(self, ErrorKind::Connection | ErrorKind::Timeout)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error type of every kombu-rs operation.
///
/// ```
/// use kombu_core::{Error, ErrorKind};
/// let err = Error::new(ErrorKind::NotFound, "queue does not exist")
///     .with_context("queue", "videos")
///     .with_context("transport", "memory");
/// assert_eq!(err.kind(), ErrorKind::NotFound);
/// assert!(!err.is_recoverable());
/// assert_eq!(
///     err.to_string(),
///     "not-found: queue does not exist (queue=videos, transport=memory)"
/// );
/// ```
pub struct Error {
    kind: ErrorKind,
    recoverable: bool,
    message: Cow<'static, str>,
    context: Vec<(&'static str, String)>,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind`; recoverability defaults from the kind.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            recoverable: kind.is_recoverable_by_default(),
            message: message.into(),
            context: Vec::new(),
            source: None,
        }
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error naming the operation.
    pub fn unsupported(what: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Unsupported, what)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message, without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying (after reconnecting) may succeed.
    pub fn is_recoverable(&self) -> bool {
        self.recoverable
    }

    /// Override recoverability.
    pub fn set_recoverable(mut self, recoverable: bool) -> Self {
        self.recoverable = recoverable;
        self
    }

    /// Add a `key=value` pair of context.
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((key, value.to_string()));
        self
    }

    /// The context pairs, in the order they were added.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// Attach the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The underlying error, downcastable to the driver's own type.
    pub fn source_ref(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }

    /// A copy of this error for another waiter on the same failure (every message of a batch
    /// whose one request failed gets its own): the same kind, recoverability, message and
    /// context. The source cannot be cloned, so the copy keeps its text, not its type.
    ///
    /// ```
    /// use kombu_core::{Error, ErrorKind};
    /// let err = Error::new(ErrorKind::Connection, "broker went away")
    ///     .with_context("queue", "videos")
    ///     .with_source(std::io::Error::other("reset"));
    /// let copy = err.duplicate();
    /// assert_eq!(copy.kind(), ErrorKind::Connection);
    /// assert!(copy.is_recoverable());
    /// assert_eq!(copy.to_string(), err.to_string());
    /// ```
    pub fn duplicate(&self) -> Error {
        Error {
            kind: self.kind,
            recoverable: self.recoverable,
            message: self.message.clone(),
            context: self.context.clone(),
            source: self.source.as_ref().map(|s| BoxError::from(s.to_string())),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if !self.context.is_empty() {
            f.write_str(" (")?;
            for (i, (k, v)) in self.context.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}={v}")?;
            }
            f.write_str(")")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("recoverable", &self.recoverable)
            .field("message", &self.message);
        if !self.context.is_empty() {
            d.field("context", &self.context);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::new(ErrorKind::Decode, "invalid JSON").with_source(err)
    }
}
