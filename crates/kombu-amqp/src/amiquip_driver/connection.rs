//! The connection thread: the one place an `amiquip::Connection` lives.
//!
//! amiquip is blocking, and its `Connection` opens channels through `&mut self`. As in
//! sqlx's SQLite driver, one dedicated OS thread ("kombu-amiquip") owns it and runs the
//! [`ConnectionCommand`]s sent over a crossbeam channel, answering each on its own reply
//! channel; nothing blocks a tokio worker. Channel workers (`worker`) ask it for amiquip
//! channels and then own them on their own threads. Dropping the last
//! [`ConnectionHandle`] (or [`ConnectionHandle::close`]) ends the thread, which closes the
//! connection: RabbitMQ then requeues whatever its channels had unacked.
//!
//! ## Recovery
//!
//! amiquip has no recovery of its own: once its I/O thread sees the socket close, every
//! channel of that connection is dead for good. Because this thread is the only one that
//! may touch the `Connection`, it is also the only one that replaces it, and it does so
//! *lazily*, when a worker asks for a channel and opening one fails with a lost connection.
//! Workers notice a loss on their own channels (a consumer's `ServerClosedConnection`, a
//! publish whose confirm never comes) and then ask for new channels, so the first of them
//! drives the reconnection and the others queue behind it on the command channel: one
//! reconnection per loss, no lock, no extra thread. A recovery reconnects with the lapin
//! driver's policy and failover order (`session::candidates`), declares the recorded
//! [`Topology`] again on the new connection, and only then bumps the *generation*, before
//! answering the waiting request: a channel handed out is always on a connection whose
//! topology is back, and a worker whose channels are of an older generation knows they are
//! dead without having to use them first.
//!
//! Whether the connection really is gone is decided here, by trying to open a channel on
//! it, not by what a worker reported: a late error from a channel of an older generation
//! then never causes a second reconnection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use kombu_core::{ConnectOptions, Error, ErrorKind, Result};
use tracing::{debug, info, warn};

use super::errors::{closes_channel, from_amiquip, is_connection_loss};
use crate::errors::Op;
use crate::settings::{Driver, Settings};
use crate::topology::{Declaration, Topology};

/// What the connection thread does.
enum ConnectionCommand {
    /// Open a channel (recovering the connection first if it is gone) and hand it, with
    /// the generation of the connection it is on, to the asking worker.
    OpenChannel(Sender<Result<(amiquip::Channel, u64)>>),
    /// Close the connection; answered once the broker confirmed (or the socket is gone).
    Close(tokio::sync::oneshot::Sender<Result<()>>),
}

/// The state every thread of one connection shares.
#[derive(Debug)]
pub(crate) struct ConnectionState {
    /// `close` was called.
    closed: AtomicBool,
    /// A recovery ran out of attempts: the transport reports itself disconnected and the
    /// facade replaces it.
    gave_up: AtomicBool,
    /// Which connection is current: 1 for the first, one more after each recovery.
    generation: AtomicU64,
    /// What was declared through this connection, declared again by each recovery.
    pub(crate) topology: Topology,
}

impl Default for ConnectionState {
    fn default() -> ConnectionState {
        ConnectionState {
            closed: AtomicBool::new(false),
            gave_up: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            topology: Topology::default(),
        }
    }
}

impl ConnectionState {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether recovery gave up on this connection.
    pub(crate) fn gave_up(&self) -> bool {
        self.gave_up.load(Ordering::Acquire)
    }

    /// Not closed and not given up on: a lost connection still being recovered counts.
    pub(crate) fn is_usable(&self) -> bool {
        !self.is_closed() && !self.gave_up()
    }

    /// The current connection's generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `error` of `op` as a kombu-rs error. A lost connection is not recorded here: the
    /// connection thread finds out itself at the next channel request (module docs).
    pub(crate) fn observe(&self, op: Op, error: amiquip::Error) -> Error {
        from_amiquip(op, error)
    }

    /// The error for an operation on a connection recovery gave up on.
    pub(crate) fn gave_up_error(&self, display: &str) -> Error {
        Error::new(
            ErrorKind::Connection,
            format!("the amqp connection to {display} was lost and could not be recovered"),
        )
    }
}

/// Where and how to reconnect: the transport's own settings and the failover list's other
/// URLs, checked only when tried (as the lapin driver does).
#[derive(Debug, Clone)]
pub(crate) struct Recovery {
    pub(crate) settings: Settings,
    pub(crate) alternates: Vec<ConnectOptions>,
}

/// A handle to the connection thread; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionHandle {
    commands: Sender<ConnectionCommand>,
    pub(crate) state: Arc<ConnectionState>,
    /// `host:port/vhost`, for errors and logs.
    pub(crate) display: Arc<str>,
}

impl ConnectionHandle {
    /// Connect on a new "kombu-amiquip" thread; resolves once the connection is open.
    /// `recovery` says where to reconnect once it is lost.
    pub(crate) async fn open(url: String, broker: String, recovery: Recovery) -> Result<ConnectionHandle> {
        let (commands, inbox) = crossbeam_channel::unbounded();
        let (ready, opened) = tokio::sync::oneshot::channel();
        let state = Arc::new(ConnectionState::default());
        let thread_state = Arc::clone(&state);
        std::thread::Builder::new()
            .name("kombu-amiquip".into())
            .spawn(move || run(&url, &thread_state, &recovery, ready, &inbox))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unexpected,
                    "cannot start the amiquip connection thread",
                )
                .with_source(e)
            })?;
        match opened.await {
            Ok(Ok(())) => {
                info!(broker = %broker, "amqp (amiquip) connected");
                Ok(ConnectionHandle {
                    commands,
                    state,
                    display: broker.into(),
                })
            }
            Ok(Err(e)) => Err(e.with_context("broker", broker)),
            Err(_) => Err(thread_gone()),
        }
    }

    /// A new amiquip channel and the generation of the connection it is on; if the
    /// connection is gone, this waits while it is recovered (up to the whole recovery
    /// policy). Blocking: called by worker threads only.
    pub(crate) fn open_channel_blocking(&self) -> Result<(amiquip::Channel, u64)> {
        if self.state.is_closed() {
            return Err(Error::new(ErrorKind::Closed, "the amqp connection is closed"));
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.commands
            .send(ConnectionCommand::OpenChannel(reply))
            .map_err(|_| thread_gone())?;
        answer.recv().map_err(|_| thread_gone())?
    }

    /// Close the connection (idempotent).
    pub(crate) async fn close(&self) -> Result<()> {
        if self.state.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (reply, done) = tokio::sync::oneshot::channel();
        if self.commands.send(ConnectionCommand::Close(reply)).is_err() {
            return Ok(()); // the thread already ended: the connection is closed
        }
        done.await.unwrap_or(Ok(()))
    }
}

fn thread_gone() -> Error {
    Error::new(ErrorKind::Connection, "the amiquip connection thread has ended")
}

fn closed_error() -> Error {
    Error::new(ErrorKind::Closed, "the amqp connection was closed")
}

/// The connection thread's body: connect, then serve commands until closed or every handle
/// is dropped.
fn run(
    url: &str,
    state: &ConnectionState,
    recovery: &Recovery,
    ready: tokio::sync::oneshot::Sender<Result<()>>,
    inbox: &Receiver<ConnectionCommand>,
) {
    let mut current = match amiquip::Connection::insecure_open(url) {
        Ok(connection) => Current {
            connection,
            url_index: 0,
        },
        Err(e) => {
            let _ = ready.send(Err(from_amiquip(Op::Connect, e)));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        return; // nobody waits for this connection any more
    }
    let mut close_reply = None;
    for command in inbox {
        match command {
            ConnectionCommand::OpenChannel(reply) => {
                let _ = reply.send(open_channel(&mut current, state, recovery));
            }
            ConnectionCommand::Close(reply) => {
                close_reply = Some(reply);
                break;
            }
        }
    }
    // Channels still open elsewhere fail from now on; the broker requeues their unacked
    // messages. A connection that is already gone reports an error here: logged only.
    let closed = current.connection.close();
    if let Err(e) = &closed {
        debug!(error = %e, "amiquip connection close reported an error");
    }
    if let Some(reply) = close_reply {
        let _ = reply.send(Ok(()));
    }
}

/// The connection the thread owns and which URL of the failover list it is on (0: the
/// transport's own, `i`: `alternates[i - 1]`); the next recovery starts there.
struct Current {
    connection: amiquip::Connection,
    url_index: usize,
}

/// Open a channel; a connection found gone is recovered first and the channel opened on
/// the new one.
fn open_channel(
    current: &mut Current,
    state: &ConnectionState,
    recovery: &Recovery,
) -> Result<(amiquip::Channel, u64)> {
    if state.is_closed() {
        return Err(closed_error());
    }
    if state.gave_up() {
        return Err(state.gave_up_error(&recovery.settings.display));
    }
    match current.connection.open_channel(None) {
        Ok(channel) => return Ok((channel, state.generation())),
        Err(e) if !is_connection_loss(&e) => return Err(from_amiquip(Op::OpenChannel, e)),
        Err(e) => debug!(error = %e, "amiquip connection lost; recovering"),
    }
    *current = recover(current.url_index, state, recovery)?;
    let channel = current
        .connection
        .open_channel(None)
        .map_err(|e| state.observe(Op::OpenChannel, e))?;
    Ok((channel, state.generation()))
}

/// Reconnect with the recovery policy across the failover list, starting with the URL
/// the lost connection was on, and declare the recorded topology again; bumps the
/// generation on success. Giving up is final for this connection (`gave_up`).
fn recover(lost_on: usize, state: &ConnectionState, recovery: &Recovery) -> Result<Current> {
    let policy = recovery.settings.recovery;
    let candidates =
        crate::session::candidates(&recovery.settings, &recovery.alternates, lost_on, Driver::Amiquip);
    let mut last_error = None;
    // `recovery_max_retries` counts attempts over all URLs together, as in the lapin driver.
    for (attempt, (url_index, settings)) in (0..=policy.max_retries).zip(candidates.iter().cycle()) {
        if !sleep_unless_closed(state, policy.delay(attempt)) {
            return Err(closed_error());
        }
        let opened = amiquip::Connection::insecure_open(&super::amiquip_url(settings))
            .map_err(|e| from_amiquip(Op::Connect, e));
        match opened.and_then(|mut connection| replay(&mut connection, state).map(|()| connection)) {
            Ok(connection) => {
                let generation = state.generation.fetch_add(1, Ordering::AcqRel) + 1;
                info!(
                    broker = %settings.display,
                    failed_over = *url_index != lost_on,
                    generation,
                    attempts = attempt + 1,
                    "amqp (amiquip) connection recovered, topology re-declared"
                );
                return Ok(Current {
                    connection,
                    url_index: *url_index,
                });
            }
            Err(e) => {
                debug!(broker = %settings.display, error = %e, attempt, "amiquip reconnect attempt failed");
                last_error = Some(e);
            }
        }
    }
    if state.is_closed() {
        return Err(closed_error());
    }
    state.gave_up.store(true, Ordering::Release);
    let cause = last_error.map_or_else(|| "no attempt was made".to_owned(), |e| e.to_string());
    let brokers = candidates
        .iter()
        .map(|(_, s)| s.display.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    warn!(brokers = %brokers, error = %cause, "amqp (amiquip) recovery gave up");
    Err(Error::new(
        ErrorKind::Connection,
        format!(
            "amqp connection lost and not recovered after {} attempts on {brokers}: {cause}",
            policy.max_retries + 1
        ),
    ))
}

/// Wait `delay` in short steps so that `close` does not wait out a whole backoff; false
/// if the connection was closed meanwhile.
fn sleep_unless_closed(state: &ConnectionState, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    loop {
        if state.is_closed() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// Declare every recorded entity again on `connection`. One the broker now refuses (say,
/// redeclared elsewhere with other arguments) is logged and skipped so the rest come back;
/// a lost connection fails the attempt.
fn replay(connection: &mut amiquip::Connection, state: &ConnectionState) -> Result<()> {
    let entries = state.topology.entries();
    if entries.is_empty() {
        return Ok(());
    }
    let mut channel = connection
        .open_channel(None)
        .map_err(|e| from_amiquip(Op::OpenChannel, e))?;
    for declaration in &entries {
        match declare(&channel, declaration) {
            Ok(()) => {}
            Err(e) if is_connection_loss(&e) => return Err(from_amiquip(Op::Connect, e)),
            Err(e) => {
                warn!(error = %e, ?declaration, "amqp (amiquip) re-declaration refused; continuing");
                if closes_channel(&e) {
                    channel = connection
                        .open_channel(None)
                        .map_err(|e| from_amiquip(Op::OpenChannel, e))?;
                }
            }
        }
    }
    if let Err(e) = channel.close() {
        debug!(error = %e, "amiquip replay channel close reported an error");
    }
    Ok(())
}

/// Send one recorded declaration.
fn declare(channel: &amiquip::Channel, declaration: &Declaration) -> amiquip::Result<()> {
    // Arguments were accepted by the broker once, so they convert; one that no longer
    // would is declared without them rather than not at all.
    let table =
        |arguments: &kombu_core::FieldTable| super::convert::table_to_amqp(arguments).unwrap_or_default();
    match declaration {
        Declaration::Exchange(exchange) => channel
            .exchange_declare(
                super::channel::exchange_type(exchange.kind),
                exchange.name.clone(),
                amiquip::ExchangeDeclareOptions {
                    durable: exchange.durable,
                    auto_delete: exchange.auto_delete,
                    internal: false,
                    arguments: table(&exchange.arguments),
                },
            )
            .map(|_| ()),
        Declaration::Queue(queue) => channel
            .queue_declare(
                queue.name.clone(),
                amiquip::QueueDeclareOptions {
                    durable: queue.durable,
                    exclusive: queue.exclusive,
                    auto_delete: queue.auto_delete,
                    arguments: table(&queue.arguments),
                },
            )
            .map(|_| ()),
        Declaration::Binding(binding) => channel.queue_bind(
            binding.queue.clone(),
            binding.exchange.clone(),
            binding.routing_key.clone(),
            table(&binding.arguments),
        ),
        Declaration::ExchangeBinding(binding) => channel.exchange_bind(
            binding.destination.clone(),
            binding.source.clone(),
            binding.routing_key.clone(),
            table(&binding.arguments),
        ),
    }
}
