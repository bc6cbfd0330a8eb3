//! The connection's own thread: rusqlite blocks, so each connection's [`Store`] lives on a
//! dedicated thread fed by a command channel (sqlx-sqlite's design) and no tokio worker ever
//! waits on SQLite.
//!
//! Besides running commands, the thread does **group commit**: puts queued while it was busy
//! are written in one transaction, so many concurrent producers cost one commit, not one
//! each. (Acks come in groups already, from the core's settlement queue, and the core renews
//! the claims its consumers hold.)

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kombu_core::{Error, ErrorKind, Result};
use tokio::sync::{oneshot, Notify};

use crate::settings::Settings;
use crate::store::Store;

/// How long the thread looks for a next command before it sleeps (see [`brief_wait`]).
const BRIEF_WAIT: Duration = Duration::from_micros(50);

/// The most commands written in one group transaction.
const GROUP_LIMIT: usize = 256;

type Job = Box<dyn FnOnce(&mut Store) + Send>;

enum Command {
    Put {
        queue: String,
        payload: String,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Delete acknowledged messages. Not answered, like AMQP's `basic.ack`: the core's
    /// settlement queue hands over a group and goes on, and anything sent later (the close's
    /// release of claims) runs after it on this thread.
    Ack(Vec<i64>),
    Run(Job),
}

/// Handle to a connection thread. Dropping the last handle ends the thread, which gives back
/// the messages the connection still held and closes the database.
#[derive(Debug)]
pub(crate) struct Worker {
    commands: mpsc::Sender<Command>,
}

fn stopped() -> Error {
    Error::new(ErrorKind::Closed, "the SQLite connection thread has stopped")
        .with_context("transport", "sqlite")
}

impl Worker {
    /// Open the database on a new thread; `Ok` once it is open and its tables exist.
    /// `arrivals` is notified after every committed put.
    pub(crate) async fn start(settings: Settings, arrivals: Arc<Notify>) -> Result<Worker> {
        let (commands, inbox) = mpsc::channel();
        let (ready, opened) = oneshot::channel();
        thread::Builder::new()
            .name("kombu-sqlite".into())
            .spawn(move || match Store::open(&settings) {
                Ok(store) => {
                    let _ = ready.send(Ok(()));
                    run(store, &inbox, &arrivals);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connection,
                    "could not start the SQLite connection thread",
                )
                .with_source(e)
            })?;
        opened.await.map_err(|_| stopped())??;
        Ok(Worker { commands })
    }

    /// Queue a message for insertion (committed with whatever other puts are waiting).
    pub(crate) async fn put(&self, queue: String, payload: String) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Put {
                queue,
                payload,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Queue several messages for insertion, in order, and wait for each outcome: sent
    /// together, they are committed in as few transactions as the group limit allows.
    pub(crate) async fn put_all(&self, items: Vec<(String, String)>) -> Vec<Result<()>> {
        let mut answers = Vec::with_capacity(items.len());
        for (queue, payload) in items {
            let (reply, answer) = oneshot::channel();
            let sent = self.commands.send(Command::Put {
                queue,
                payload,
                reply,
            });
            answers.push(sent.ok().map(|()| answer));
        }
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            outcomes.push(match answer {
                Some(answer) => answer.await.unwrap_or_else(|_| Err(stopped())),
                None => Err(stopped()),
            });
        }
        outcomes
    }

    /// Queue the deletion of acknowledged messages (see [`Command::Ack`]).
    pub(crate) fn ack(&self, ids: Vec<i64>) -> Result<()> {
        self.commands.send(Command::Ack(ids)).map_err(|_| stopped())
    }

    /// Run `f` on the connection thread.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            let _ = reply.send(f(store));
        });
        self.commands.send(Command::Run(job)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The thread's loop: until every handle is gone.
fn run(mut store: Store, inbox: &mpsc::Receiver<Command>, arrivals: &Notify) {
    let mut held_back: Option<Command> = None;
    loop {
        let command = match held_back.take().or_else(|| brief_wait(inbox)) {
            Some(command) => command,
            None => match inbox.recv() {
                Ok(command) => command,
                Err(mpsc::RecvError) => return,
            },
        };
        match command {
            Command::Run(job) => job(&mut store),
            Command::Ack(ids) => write_acks(&mut store, &ids),
            Command::Put {
                queue,
                payload,
                reply,
            } => {
                let mut group = vec![(queue, payload, reply)];
                while group.len() < GROUP_LIMIT {
                    match inbox.try_recv() {
                        Ok(Command::Put {
                            queue,
                            payload,
                            reply,
                        }) => group.push((queue, payload, reply)),
                        Ok(other) => {
                            held_back = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                write_puts(&mut store, group);
                arrivals.notify_waiters();
            }
        }
    }
}

/// Look for the next command for a few microseconds before sleeping: a caller that awaits
/// one command and sends the next (a publish loop) is caught awake, which saves the two
/// context switches of parking and waking this thread.
fn brief_wait(inbox: &mpsc::Receiver<Command>) -> Option<Command> {
    let until = Instant::now() + BRIEF_WAIT;
    loop {
        match inbox.try_recv() {
            Ok(command) => return Some(command),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if Instant::now() >= until => return None,
            Err(mpsc::TryRecvError::Empty) => thread::yield_now(),
        }
    }
}

/// One transaction for the group; if it fails, each put on its own so one bad message cannot
/// fail the others.
fn write_puts(store: &mut Store, group: Vec<(String, String, oneshot::Sender<Result<()>>)>) {
    let items: Vec<(&str, &str)> = group.iter().map(|(q, p, _)| (q.as_str(), p.as_str())).collect();
    let results: Vec<Result<()>> = match store.put_many(&items) {
        Ok(()) => items.iter().map(|_| Ok(())).collect(),
        Err(e) if items.len() == 1 => vec![Err(e)],
        Err(_) => items
            .iter()
            .map(|item| store.put_many(std::slice::from_ref(item)))
            .collect(),
    };
    drop(items);
    for ((_, _, reply), result) in group.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

/// Delete acknowledged messages: one transaction, or one each if the group fails, so one
/// bad row cannot keep the others. A message that could not be deleted is delivered again
/// after the visibility timeout (at least once, never lost).
fn write_acks(store: &mut Store, ids: &[i64]) {
    if let Err(e) = store.ack_many(ids) {
        for id in ids {
            if let Err(e) = store.ack_many(std::slice::from_ref(id)) {
                tracing::warn!(
                    message_id = id,
                    error = %e,
                    "could not delete an acked message; it is delivered again after the visibility timeout"
                );
            }
        }
        tracing::debug!(error = %e, "a group of acks failed and was retried one by one");
    }
}
