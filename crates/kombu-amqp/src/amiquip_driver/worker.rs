//! The channel worker: one OS thread per kombu-rs channel that owns its amiquip channels.
//!
//! An amiquip `Consumer<'c>` borrows the amiquip `Channel` it consumes on, so consumers
//! cannot be stored next to their channel in one long-lived struct; they can live on the
//! stack of a thread that owns the channel. That is why every kombu-rs channel has a thread
//! ("kombu-amiquip-ch") rather than sharing the connection thread: it opens its channels
//! through the connection thread, holds the consume channel and the consumers borrowing it
//! in one stack frame, and serves two kinds of input with one crossbeam `Select`:
//!
//! * **jobs** from the async side ([`Job`]: a closure run on the worker, answered on a tokio
//!   oneshot), so a blocking amiquip call never runs on a tokio worker;
//! * **consumer messages** from amiquip's per-consumer receivers, forwarded (converted to
//!   kombu-rs deliveries) into each consumer's tokio mpsc. That channel is unbounded because
//!   a bounded one could block this thread while the application waits for an ack that only
//!   this thread can send; what is in flight is bounded by prefetch (`qos`), as in amiquip.
//!
//! Like the lapin driver, a kombu-rs channel uses two amiquip channels: *control*
//! (declarations, deletions, purges, publishes with their confirms; replaced after a 404/406
//! closes it) and *consume* (consumers, `basic.get`, acks, QoS, recover), so a refused
//! declaration never takes the consumers down. Should the consume channel be closed anyway
//! (an exclusive consume refused, say), its consumers end with the error, and the next
//! operation opens a new one: a new *epoch*, whose acknowledgers refuse tags of the old one.
//!
//! **After a lost connection** the epoch ends the same way, but the consumers are not ended:
//! each is kept as a [`Resume`] (queue, options, kombu-rs tag and the sender its stream reads
//! from) and consumed again at the start of the next epoch, whose channel request is what
//! recovers the connection (see `connection`). The application's stream never notices
//! beyond a pause and redeliveries; acks of the old epoch's deliveries are
//! `PreconditionFailed` errors (the broker redelivers those messages). A job that arrives while the consume
//! channel is of an older generation is held back ([`Core::pending`]) and run first in the
//! new epoch, so it is served on the recovered connection instead of failing on the dead one.
//!
//! The thread ends when the channel is closed or when the last [`WorkerLink`] (held by the
//! kombu-rs channel, its consumer streams and its unsettled deliveries) is dropped.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use crossbeam_channel::{Receiver, Select, Sender};
use kombu_core::{Error, ErrorKind, QosOptions, Result};
use tracing::debug;

use super::connection::ConnectionHandle;
use super::consume::{ConsumerEntry, Resume, Tracking};
use super::control::Control;

/// Work for a channel worker, run on its thread.
pub(crate) type Job = Box<dyn for<'c> FnOnce(&mut Worker<'c>) + Send>;

/// What keeps a worker alive, held by everything on the async side that may still send it
/// jobs. Dropping the last one stops the worker (it closes its channels on the way out).
pub(crate) struct WorkerLink {
    jobs: Sender<Job>,
}

impl std::fmt::Debug for WorkerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLink").finish_non_exhaustive()
    }
}

impl Drop for WorkerLink {
    fn drop(&mut self) {
        let _ = self
            .jobs
            .send(Box::new(|worker: &mut Worker<'_>| worker.core.stop = true));
    }
}

impl WorkerLink {
    /// Run `f` on the worker thread and await its answer.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&mut Worker<'c>) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |worker: &mut Worker<'_>| {
                let _ = reply.send(f(worker));
            }))
            .map_err(|_| worker_gone())?;
        answer.await.map_err(|_| worker_gone())?
    }

    /// Stop the worker and wait until it closed its amiquip channels (RabbitMQ requeues
    /// their unacked messages before it confirms the close).
    pub(crate) async fn close(&self) -> Result<()> {
        let (reply, closed) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |worker: &mut Worker<'_>| {
            worker.core.stop = true;
            worker.core.close_replies.push(reply);
        });
        if self.jobs.send(job).is_err() {
            return Ok(()); // already stopped, channels closed
        }
        let _ = closed.await;
        Ok(())
    }
}

/// The error for a job sent to a worker that has stopped.
pub(crate) fn worker_gone() -> Error {
    Error::new(ErrorKind::Closed, "the channel is closed")
}

/// Start a worker thread for one kombu-rs channel.
pub(crate) fn spawn(connection: ConnectionHandle) -> Result<Arc<WorkerLink>> {
    let (jobs, inbox) = crossbeam_channel::unbounded();
    let link = Arc::new(WorkerLink { jobs });
    let core = Core {
        connection,
        link: Arc::downgrade(&link),
        control: None,
        qos: None,
        epoch: 0,
        stop: false,
        close_replies: Vec::new(),
        resume: Vec::new(),
        pending: None,
    };
    std::thread::Builder::new()
        .name("kombu-amiquip-ch".into())
        .spawn(move || run(core, &inbox))
        .map_err(|e| {
            Error::new(ErrorKind::LimitExceeded, "cannot start an amiquip channel thread").with_source(e)
        })?;
    Ok(link)
}

/// The state of a worker that outlives a consume channel.
pub(crate) struct Core {
    pub(crate) connection: ConnectionHandle,
    /// To hand out acknowledgers without keeping the worker alive itself.
    pub(crate) link: Weak<WorkerLink>,
    /// The control channel, opened on first use and replaced after the server closed it.
    pub(crate) control: Option<Control>,
    /// The prefetch setting, applied to every consume channel this worker opens.
    pub(crate) qos: Option<QosOptions>,
    /// Which consume channel is current (acks carry it).
    pub(crate) epoch: u64,
    /// Set to end the thread after the current job.
    pub(crate) stop: bool,
    /// `close` calls to answer once the channels are closed.
    close_replies: Vec<tokio::sync::oneshot::Sender<Result<()>>>,
    /// Consumers of an epoch that ended with the connection, to consume again.
    pub(crate) resume: Vec<Resume>,
    /// A job received while the consume channel was of an older connection, run first in
    /// the next epoch.
    pending: Option<Job>,
}

/// A worker with its current consume channel (opened on first use) and the consumers on it.
pub(crate) struct Worker<'c> {
    pub(crate) core: Core,
    pub(crate) consume: &'c OnceCell<amiquip::Channel>,
    pub(crate) consumers: HashMap<Arc<str>, ConsumerEntry<'c>>,
    pub(crate) tracking: Tracking,
    /// The server closed the consume channel: serve no more on it, open a new one.
    pub(crate) consume_closed: bool,
    /// The consume channel went with the connection: its consumers are resumed in the next
    /// epoch rather than ended.
    pub(crate) lost: bool,
    /// The generation of the connection the consume channel is on, once opened.
    pub(crate) consume_generation: u64,
}

fn run(mut core: Core, inbox: &Receiver<Job>) {
    loop {
        let consume = OnceCell::new();
        let reopen;
        (core, reopen) = {
            let mut worker = Worker {
                tracking: Tracking::new(core.epoch, core.link.clone()),
                core,
                consume: &consume,
                consumers: HashMap::new(),
                consume_closed: false,
                lost: false,
                consume_generation: 0,
            };
            worker.serve(inbox);
            let reopen = worker.consume_closed && !worker.core.stop;
            (worker.into_core(), reopen)
        };
        if let Some(channel) = consume.into_inner() {
            if let Err(e) = channel.close() {
                debug!(error = %e, "amiquip consume channel close reported an error");
            }
        }
        if !reopen {
            break;
        }
        core.epoch += 1;
    }
    if let Some(control) = core.control.take() {
        control.close();
    }
    for reply in core.close_replies.drain(..) {
        let _ = reply.send(Ok(()));
    }
}

impl Worker<'_> {
    /// The state to keep; the consumers (which borrow the consume channel) are cancelled
    /// before the channel is closed (see [`ConsumerEntry::stop`] for why not just dropped).
    /// What they received and did not hand out is requeued by the broker with the channel.
    fn into_core(mut self) -> Core {
        if self.lost && !self.core.stop {
            for (tag, entry) in self.consumers.drain() {
                if let Some(resume) = entry.into_resume(tag) {
                    self.core.resume.push(resume);
                }
            }
        }
        for (_, entry) in self.consumers.drain() {
            if let Err(e) = entry.stop(drop) {
                debug!(error = %e, "amiquip: cancelling a consumer before closing its channel failed");
            }
        }
        self.core
    }

    /// Whether the consume channel is on a connection that recovery has replaced.
    fn is_stale(&self) -> bool {
        self.consume.get().is_some() && self.consume_generation != self.core.connection.state.generation()
    }

    /// Serve jobs and consumer messages until stopped or the consume channel is closed.
    fn serve(&mut self, inbox: &Receiver<Job>) {
        // The held-back job before resuming: it may be the `cancel` of a consumer to resume.
        if let Some(job) = self.core.pending.take() {
            job(self);
        }
        if !self.core.stop && !self.consume_closed {
            self.resume_consumers();
        }
        while !self.core.stop && !self.consume_closed {
            // Cloned receivers (cheap handles) so the select borrows nothing of `self`.
            let receivers: Vec<(Arc<str>, Receiver<amiquip::ConsumerMessage>)> = self
                .consumers
                .iter()
                .map(|(tag, entry)| (Arc::clone(tag), entry.receiver()))
                .collect();
            let mut select = Select::new();
            let jobs = select.recv(inbox);
            for (_, receiver) in &receivers {
                select.recv(receiver);
            }
            let ready = select.select();
            let index = ready.index();
            if index == jobs {
                match ready.recv(inbox) {
                    Ok(job) if self.is_stale() => {
                        self.core.pending = Some(job);
                        self.lost = true;
                        self.consume_closed = true;
                    }
                    Ok(job) => job(self),
                    Err(_) => self.core.stop = true, // every link dropped
                }
            } else if let Some((tag, receiver)) = receivers.get(index - 1) {
                let message = ready.recv(receiver).ok();
                self.on_consumer_message(tag, message);
            }
        }
    }
}
