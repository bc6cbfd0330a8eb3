//! The connection thread: the one place an `amiquip::Connection` lives.
//!
//! amiquip is blocking, and its `Connection` opens channels through `&mut self`. As in
//! sqlx's SQLite driver, one dedicated OS thread ("kombu-amiquip") owns it and runs the
//! [`ConnectionCommand`]s sent over a crossbeam channel, answering each on its own reply
//! channel; nothing blocks a tokio worker. Channel workers (`worker`) ask it for amiquip
//! channels and then own them on their own threads. Dropping the last
//! [`ConnectionHandle`] (or [`ConnectionHandle::close`]) ends the thread, which closes the
//! connection: RabbitMQ then requeues whatever its channels had unacked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use kombu_core::{Error, ErrorKind, Result};
use tracing::{debug, info};

use super::errors::{from_amiquip, is_connection_loss};
use crate::errors::Op;

/// What the connection thread does.
enum ConnectionCommand {
    /// Open a channel and hand it to the asking worker.
    OpenChannel(Sender<Result<amiquip::Channel>>),
    /// Close the connection; answered once the broker confirmed (or the socket is gone).
    Close(tokio::sync::oneshot::Sender<Result<()>>),
}

/// The state every thread of one connection shares.
#[derive(Debug, Default)]
pub(crate) struct ConnectionState {
    /// `close` was called.
    closed: AtomicBool,
    /// An operation found the connection gone (socket closed, heartbeats missed, the broker
    /// closed it). There is no reconnection in this driver: the transport then reports itself
    /// disconnected and the facade connects anew.
    lost: AtomicBool,
}

impl ConnectionState {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Record `error` if it means the connection is gone; returns it as a kombu-rs error.
    pub(crate) fn observe(&self, op: Op, error: amiquip::Error) -> Error {
        if is_connection_loss(&error) && !self.is_closed() {
            self.lost.store(true, Ordering::Release);
        }
        from_amiquip(op, error)
    }

    /// Mark the connection lost (a consumer saw it close).
    pub(crate) fn mark_lost(&self) {
        if !self.is_closed() {
            self.lost.store(true, Ordering::Release);
        }
    }
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
    pub(crate) async fn open(url: String, broker: String) -> Result<ConnectionHandle> {
        let (commands, inbox) = crossbeam_channel::unbounded();
        let (ready, opened) = tokio::sync::oneshot::channel();
        let state = Arc::new(ConnectionState::default());
        let thread_state = Arc::clone(&state);
        std::thread::Builder::new()
            .name("kombu-amiquip".into())
            .spawn(move || run(&url, &thread_state, ready, &inbox))
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

    /// A new amiquip channel. Blocking: called by worker threads only.
    pub(crate) fn open_channel_blocking(&self) -> Result<amiquip::Channel> {
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

/// The connection thread's body: connect, then serve commands until closed or every handle
/// is dropped.
fn run(
    url: &str,
    state: &ConnectionState,
    ready: tokio::sync::oneshot::Sender<Result<()>>,
    inbox: &Receiver<ConnectionCommand>,
) {
    let mut connection = match amiquip::Connection::insecure_open(url) {
        Ok(connection) => connection,
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
                let opened = connection
                    .open_channel(None)
                    .map_err(|e| state.observe(Op::OpenChannel, e));
                let _ = reply.send(opened);
            }
            ConnectionCommand::Close(reply) => {
                close_reply = Some(reply);
                break;
            }
        }
    }
    // Channels still open elsewhere fail from now on; the broker requeues their unacked
    // messages. A connection that is already gone reports an error here: logged only.
    let closed = connection.close();
    if let Err(e) = &closed {
        debug!(error = %e, "amiquip connection close reported an error");
    }
    if let Some(reply) = close_reply {
        let _ = reply.send(Ok(()));
    }
}
