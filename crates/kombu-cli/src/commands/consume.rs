//! `kombu consume`: print messages as they arrive, then settle them — a [`Worker`] whose
//! handler prints.
//!
//! A message is acked only after it was written *and flushed* to stdout, so a reader that goes
//! away (a closed pipe) never costs a message: the one that could not be written is held, the
//! run stops, and the worker gives back everything it holds. `--no-ack` flips that to
//! at-most-once; `--requeue` holds every message and gives them all back at the end (a peek).
//! With `--count N` no more than N messages are ever taken from the broker (the worker's
//! limit), so none is handed out and given back. A message whose body cannot be read is parked
//! in `<queue>.poison` with a warning, and the run goes on. Ctrl-C or SIGTERM stops it (exit
//! 130) after the message being printed; a second signal stops at once.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kombu::{Accept, Connection, Incident, Message, Outcome, Queue, RetryPolicy, Worker, WorkerHandle};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cli::{ConsumeArgs, GlobalArgs};
use crate::commands::{connect, seconds};
use crate::error::{stdout_error, CliError, CliResult};
use crate::output::{message_json, message_text};

/// Runs `kombu consume`.
pub(crate) async fn run(global: &GlobalArgs, args: ConsumeArgs) -> CliResult {
    let connection = connect(global)?;
    let result = consume(&connection, &args).await;
    let closed = connection.close().await;
    result?;
    closed?;
    Ok(())
}

/// The prefetch count: never more than `--count` (nothing is taken that will not be printed;
/// `--prefetch 0`, unlimited, then means `--count`), and unlimited for a peek without
/// `--count`, which holds every message until the end.
fn prefetch(args: &ConsumeArgs) -> u16 {
    let count = args.count.map(|n| u16::try_from(n).unwrap_or(u16::MAX));
    match (args.requeue, count) {
        (true, Some(n)) => n,
        (true, None) => 0,
        (false, Some(n)) if args.prefetch == 0 => n,
        (false, Some(n)) => args.prefetch.min(n),
        (false, None) => args.prefetch,
    }
}

/// What the printing handler shares with the command: how many it printed, when the last one
/// arrived, and why it asked the run to stop.
struct Printer {
    printed: AtomicU64,
    last_arrival: Mutex<Instant>,
    failure: Mutex<Option<CliError>>,
    stop: Notify,
}

impl Printer {
    /// Print one message; the outcome the worker applies.
    fn handle(&self, message: &Message, args: &ConsumeArgs) -> kombu::Result<Outcome> {
        *self.last_arrival.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let index = self.printed.load(Ordering::Relaxed) + 1;
        match print(message, index, args) {
            Ok(()) => {
                self.printed.store(index, Ordering::Relaxed);
                Ok(if args.requeue { Outcome::Hold } else { Outcome::Ack })
            }
            // A body that cannot be read: the worker parks it.
            Err(CliError::Kombu(e)) => Err(e),
            // stdout is gone: keep the message (the worker gives it back) and end the run.
            Err(e) => {
                self.failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
                self.stop.notify_one();
                Ok(Outcome::Hold)
            }
        }
    }
}

async fn consume(connection: &Connection, args: &ConsumeArgs) -> CliResult {
    let queues = args
        .queues
        .iter()
        .map(|name| Queue::new(name.clone()).passive(!args.declare));
    let printer = Arc::new(Printer {
        printed: AtomicU64::new(0),
        last_arrival: Mutex::new(Instant::now()),
        failure: Mutex::new(None),
        stop: Notify::new(),
    });
    let shared_args = Arc::new(args.clone());
    let handler_printer = printer.clone();
    let mut builder = connection
        .worker(queues)
        // An operator's tool shows whatever is in the queue, whatever its content type.
        .accept(Accept::any())
        .prefetch_count(prefetch(args))
        .no_ack(args.no_ack)
        // A broker that goes away is waited for a while (2+4+6+8+10 s), not forever.
        .reconnect_policy(RetryPolicy::default().max_retries(5))
        .on_incident(warn_incident);
    if let Some(count) = args.count {
        builder = builder.limit(count);
    }
    let worker = builder.build(move |message| {
        let (printer, args) = (handler_printer.clone(), shared_args.clone());
        async move { printer.handle(&message, &args) }
    });
    let handle = worker.handle();
    handle.shutdown_on_signals()?;
    let timed_out = watch_until_done(worker, &handle, &printer, args.timeout.map(seconds)).await?;

    let printed = printer.printed.load(Ordering::Relaxed);
    if let Some(failure) = printer.failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(failure);
    }
    if timed_out {
        return match args.count {
            None => Ok(()),
            Some(n) => Err(CliError::Timeout(format!(
                "received {printed} of {n} message(s); none arrived for {:.3}s (--timeout)",
                args.timeout.unwrap_or_default()
            ))),
        };
    }
    if handle.is_stopping() {
        return Err(CliError::Interrupted(format!("after {printed} message(s)")));
    }
    Ok(())
}

/// Run the worker until it ends: by itself (its limit reached, an error), on a signal, when
/// the handler asks (stdout gone), or after `idle` without a new message. Whether the idle
/// timeout ended it.
async fn watch_until_done(
    worker: Worker,
    handle: &WorkerHandle,
    printer: &Printer,
    idle: Option<Duration>,
) -> CliResult<bool> {
    let run = worker.run();
    tokio::pin!(run);
    let mut timed_out = false;
    loop {
        let idle_deadline =
            idle.map(|idle| *printer.last_arrival.lock().unwrap_or_else(|p| p.into_inner()) + idle);
        tokio::select! {
            ended = &mut run => {
                ended?;
                return Ok(timed_out);
            }
            () = printer.stop.notified() => handle.shutdown(),
            () = sleep_until(idle_deadline), if !timed_out => {
                // Only an idle period that no arrival cut short ends the run.
                let last = *printer.last_arrival.lock().unwrap_or_else(|p| p.into_inner());
                if idle.is_some_and(|idle| last.elapsed() >= idle) {
                    timed_out = true;
                    handle.shutdown();
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The worker's incidents, on stderr: the tool logs nothing else unless asked (`-v`).
fn warn_incident(incident: &Incident<'_>) {
    let line = match incident {
        Incident::Poison {
            error,
            parked_in: Some(parked),
            ..
        } => {
            format!("a message that cannot be read was parked in {parked}: {error}")
        }
        Incident::Poison {
            error,
            parked_in: None,
            ..
        } => format!("a message that cannot be read was rejected: {error}"),
        Incident::Malformed { error } => {
            format!("the broker holds a malformed message, set aside by the transport: {error}")
        }
        Incident::Reconnecting { error } => format!("lost the broker, reconnecting: {error}"),
        Incident::SettleFailed { error, .. } => {
            format!("settling a message failed (it will be delivered again): {error}")
        }
        Incident::HandlerFailed { error, .. } => format!("printing a message failed: {error}"),
        _ => format!("{incident:?}"),
    };
    eprintln!("kombu: warning: {line}");
}

/// Writes one message to stdout and flushes: other processes read this through a pipe. A
/// body that cannot be decompressed is an error before anything is written.
fn print(message: &Message, index: u64, args: &ConsumeArgs) -> CliResult {
    let payload = message.payload()?;
    let text = if args.json {
        let mut line = serde_json::to_string(&message_json(message, &payload))
            .map_err(|e| CliError::other(format!("cannot render the message as JSON: {e}")))?;
        line.push('\n');
        line
    } else {
        message_text(index, message, &payload)
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)
}
