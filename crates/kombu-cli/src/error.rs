//! The CLI's error: what went wrong and which exit status it maps to.
//!
//! Every failure ends as one line on stderr, `kombu: error: …`. Kombu errors are shown with their
//! `Display`, which names the kind and context and never includes a password.

use std::fmt;
use std::process::ExitCode;

/// A failed command.
#[derive(Debug)]
pub(crate) enum CliError {
    /// A kombu operation failed (bad URL, unknown scheme, broker unreachable, missing queue, …).
    Kombu(kombu::Error),
    /// Anything else: bad input, I/O on stdin/stdout.
    Other(String),
    /// `consume --count N` stopped before N messages arrived (exit 3, so scripts can tell it
    /// apart from a broker failure).
    Timeout(String),
    /// Ctrl-C (exit 130, as shells report SIGINT).
    Interrupted(String),
}

impl CliError {
    /// A [`CliError::Other`].
    pub(crate) fn other(message: impl Into<String>) -> Self {
        CliError::Other(message.into())
    }

    /// The process exit status.
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Kombu(_) | CliError::Other(_) => ExitCode::FAILURE,
            CliError::Timeout(_) => ExitCode::from(3),
            CliError::Interrupted(_) => ExitCode::from(130),
        }
    }

    /// The one line printed on stderr.
    pub(crate) fn line(&self) -> String {
        let text = match self {
            CliError::Interrupted(what) => format!("kombu: interrupted: {what}"),
            other => format!("kombu: error: {other}"),
        };
        // One line, whatever a source error's Display contains.
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Kombu(e) => write!(f, "{e}"),
            CliError::Other(m) | CliError::Timeout(m) | CliError::Interrupted(m) => f.write_str(m),
        }
    }
}

impl From<kombu::Error> for CliError {
    fn from(e: kombu::Error) -> Self {
        CliError::Kombu(e)
    }
}

/// The result of a command.
pub(crate) type CliResult<T = ()> = Result<T, CliError>;

/// An I/O error on stdout as a [`CliError`].
pub(crate) fn stdout_error(e: std::io::Error) -> CliError {
    CliError::other(format!("cannot write to stdout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_line_with_their_exit_status() {
        let e = CliError::from(kombu::Error::new(kombu::ErrorKind::NotFound, "no such\nqueue"));
        assert_eq!(e.line(), "kombu: error: not-found: no such queue");
        assert_eq!(e.exit_code(), ExitCode::FAILURE);
        assert_eq!(CliError::Timeout("t".into()).exit_code(), ExitCode::from(3));
        assert_eq!(
            CliError::Interrupted("after 2 messages".into()).line(),
            "kombu: interrupted: after 2 messages"
        );
    }
}
