//! One module per command; this one holds what they share.

pub(crate) mod admin;
pub(crate) mod bench;
pub(crate) mod celery;
pub(crate) mod consume;
pub(crate) mod declare;
pub(crate) mod publish;
pub(crate) mod transports;

use std::time::Duration;

use kombu::{Connection, ConnectionOptions};

use crate::cli::GlobalArgs;
use crate::error::CliResult;

/// The connection every command uses: `--url` with the `-o` transport options.
///
/// Nothing connects yet (connections are lazy), but the scheme is looked up at once, so an
/// unknown one fails before any work with the list of schemes this build has.
pub(crate) fn connect(global: &GlobalArgs) -> CliResult<Connection> {
    let options = ConnectionOptions {
        transport_options: global.transport_options.iter().cloned().collect(),
        connect_timeout: seconds(global.connect_timeout),
        ..ConnectionOptions::default()
    };
    let connection = Connection::with_options(&global.url, options)?;
    connection.capabilities()?;
    Ok(connection)
}

/// Seconds from the command line (already checked to be finite and non-negative) as a
/// duration, capped at a year so that no timer arithmetic can overflow.
pub(crate) fn seconds(secs: f64) -> Duration {
    const YEAR: f64 = 365.0 * 24.0 * 3600.0;
    Duration::try_from_secs_f64(secs.min(YEAR)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_never_overflow() {
        assert_eq!(seconds(1.5), Duration::from_millis(1500));
        assert_eq!(seconds(1e300), Duration::from_secs(365 * 24 * 3600));
    }
}
