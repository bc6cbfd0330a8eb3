//! Celery's `rpc://` result backend: results are messages sent back to the caller.
//!
//! The wire, as Celery 5.7's `celery/backends/rpc.py` writes and reads it:
//!
//! * a result is published through the default (nameless) exchange with routing key = the
//!   task message's `reply_to`, `correlation_id` = the task message's `correlation_id` (else
//!   the task id), serialized with `result_serializer` (JSON), delivery mode 1 (transient:
//!   `result_persistent` is off by default), declaring nothing, retried as Celery's
//!   `retry_policy` says;
//! * the body is the result meta ([`ResultMeta`]: `status`, `result`, `traceback`,
//!   `children`, `date_done`, `group_id`/`parent_id` when set, `task_id`); every state change
//!   is sent (`RETRY` as well as the final one);
//! * a task without `reply_to` has nowhere to go: its result is dropped;
//! * the caller receives on one queue per process, named by its `app.thread_oid` and sent
//!   as every task's `reply_to`: durable, auto-delete, `x-expires` = `result_expires` (one
//!   day), bound to nothing but the default exchange; it is declared before the first task
//!   is sent, and a reply is matched to its task by `correlation_id`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use kombu::{
    Connection, DeliveryMode, Error, ErrorKind, Exchange, Message, PublishOptions, Queue, Result,
    RetryPolicy, SimpleQueue,
};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::result::{ResultBackend, ResultMeta};
use crate::send::thread_oid;
use crate::{TaskId, TaskMessage};

/// Celery's default `result_expires`: an unused reply queue is deleted after a day.
const REPLY_QUEUE_EXPIRES: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest pause between two looks at the reply queue while [waiting](ResultBackend::wait).
const MAX_POLL: Duration = Duration::from_millis(50);

/// Celery's `rpc://` result backend, on the broker of a [`Connection`].
///
/// * **As a worker's backend** ([`TaskRegistry::backend`](crate::TaskRegistry::backend)):
///   each result (`SUCCESS`, `FAILURE`, `RETRY`, `REVOKED`) is published to the task
///   message's `reply_to` with its `correlation_id`, exactly as a Celery worker with
///   `result_backend = 'rpc://'` does, so Python's `AsyncResult(id).get()` returns it.
/// * **As a client's backend**: [`send_task`](crate::send_task) sets `reply_to` to this
///   process's reply queue ([`reply_to`](Self::reply_to)), and [`wait`](ResultBackend::wait)
///   takes the result from there, whoever ran the task (a Python Celery worker with the
///   `rpc://` backend, or a Rust one). Call [`declare`](Self::declare) before sending the
///   tasks whose results you want (a reply to a queue that does not exist yet is lost, as
///   with Celery). One backend per process and broker: replies are matched by task id among
///   everything that arrives on the queue.
///
/// As with Celery, a result is a message, not a stored record: [`wait`](ResultBackend::wait)
/// hands a result out once (it is then forgotten); [`get`](ResultBackend::get) peeks at the
/// ones received so far. Replies are read by polling (`basic.get`), backing off to 50 ms.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
/// use std::time::Duration;
/// use kombu::Connection;
/// use kombu_celery::{celery_queue, send_task, ResultBackend, RpcBackend, TaskError, TaskOptions, TaskRegistry};
///
/// let conn = Connection::new("memory:///rpc-doc")?; // amqp://... as Celery's rpc:// wants
/// // A Rust worker answering through rpc:// (a Python Celery worker would do the same).
/// let worker = TaskRegistry::new()
///     .backend(RpcBackend::new(&conn))
///     .task("rust.mul", |(x, y): (i64, i64), _: ()| async move { Ok::<_, TaskError>(x * y) })
///     .into_worker(&conn, [celery_queue("celery")]);
/// let handle = worker.handle();
/// let running = tokio::spawn(worker.run());
///
/// let results = RpcBackend::new(&conn);
/// results.declare().await?; // before sending, so no reply is lost
/// let id = send_task(&conn, "rust.mul", (6, 7), (), TaskOptions::new()).await?;
/// let meta = results.wait(&id, Duration::from_secs(10)).await?;
/// assert_eq!(meta.into_result::<i64>(), Ok(42));
/// handle.shutdown();
/// running.await.expect("the worker task")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RpcBackend {
    connection: Connection,
    replies: Arc<SimpleQueue>,
    /// Replies taken off the queue, by task id: the latest state of each task.
    received: Arc<Mutex<HashMap<TaskId, ResultMeta>>>,
    delivery_mode: DeliveryMode,
}

impl fmt::Debug for RpcBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcBackend")
            .field("reply_to", &self.reply_to())
            .field("delivery_mode", &self.delivery_mode)
            .finish_non_exhaustive()
    }
}

/// Celery's `RPCBackend.retry_policy` for sending a result: up to 20 retries, at once and
/// then every second, reconnecting as needed (a result that still cannot be sent fails the
/// task's handling: the worker gets the message again).
fn store_retry_policy() -> RetryPolicy {
    RetryPolicy::publish_default()
        .max_retries(20)
        .interval_start(Duration::ZERO)
}

/// The reply queue as Celery's `RPCBackend.binding` declares it.
fn reply_queue(name: &str) -> Queue {
    Queue::new(name)
        .durable(true)
        .auto_delete(true)
        .expires(REPLY_QUEUE_EXPIRES)
}

impl RpcBackend {
    /// The backend on `connection`'s broker; nothing is declared yet (a worker needs no reply
    /// queue of its own).
    pub fn new(connection: &Connection) -> RpcBackend {
        RpcBackend {
            connection: connection.clone(),
            replies: Arc::new(SimpleQueue::with_queue(
                connection,
                reply_queue(thread_oid()),
                true,
            )),
            received: Arc::new(Mutex::new(HashMap::new())),
            delivery_mode: DeliveryMode::Transient,
        }
    }

    /// Send results as persistent messages (Celery's `result_persistent = True`); by default
    /// they are transient, as Celery's.
    pub fn persistent(mut self, persistent: bool) -> RpcBackend {
        self.delivery_mode = if persistent {
            DeliveryMode::Persistent
        } else {
            DeliveryMode::Transient
        };
        self
    }

    /// The reply queue: the `reply_to` [`send_task`](crate::send_task) sends by default.
    pub fn reply_to(&self) -> &str {
        &self.replies.queue().name
    }

    /// Declare the reply queue (as Celery does before sending a task), so results of the
    /// tasks sent after this come back; idempotent. Replies already waiting are taken in.
    pub async fn declare(&self) -> Result<()> {
        self.drain().await
    }

    /// Take every reply waiting on the queue into `received`.
    async fn drain(&self) -> Result<()> {
        while let Some(message) = self.replies.get_nowait().await? {
            match reply_of(&message) {
                Ok((id, meta)) => {
                    let mut received = self.received.lock().unwrap_or_else(PoisonError::into_inner);
                    // A final state is never replaced by an earlier, non-final one.
                    let stale = received
                        .get(&id)
                        .is_some_and(|had| had.status.is_ready() && !meta.status.is_ready());
                    if !stale {
                        received.insert(id, meta);
                    }
                }
                Err(error) => {
                    warn!(queue = self.reply_to(), %error, "an unreadable reply on the rpc result queue: dropped")
                }
            }
        }
        Ok(())
    }

    /// The received result of `id` if it is ready, taken out of `received`.
    fn take_ready(&self, id: &TaskId) -> Option<ResultMeta> {
        let mut received = self.received.lock().unwrap_or_else(PoisonError::into_inner);
        if received.get(id).is_some_and(|meta| meta.status.is_ready()) {
            received.remove(id)
        } else {
            None
        }
    }
}

/// A reply's task id (its `correlation_id`, else the body's `task_id`, as Celery's
/// `_get_message_task_id`) and result meta.
fn reply_of(message: &Message) -> Result<(TaskId, ResultMeta)> {
    let meta: ResultMeta = message.decode()?;
    let id = message
        .properties()
        .correlation_id
        .clone()
        .map_or_else(|| meta.task_id.clone(), TaskId::from);
    Ok((id, meta))
}

#[async_trait]
impl ResultBackend for RpcBackend {
    /// Unsupported: a result goes to the `reply_to` of the task's message, which `meta` does
    /// not have (Celery raises "RPC backend missing task request" here). The registry calls
    /// [`store_for`](ResultBackend::store_for).
    async fn store(&self, meta: &ResultMeta) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the rpc result backend sends a result to its task message's reply_to: use store_for (task {})",
                meta.task_id
            ),
        ))
    }

    async fn store_for(&self, task: &TaskMessage, meta: &ResultMeta) -> Result<()> {
        let Some(reply_to) = task.reply_to.as_deref() else {
            debug!(task = %task.name, id = %task.id, "no reply_to: the rpc result is dropped, as Celery does");
            return Ok(());
        };
        let correlation_id = task.correlation_id.clone().unwrap_or_else(|| task.id.to_string());
        let options = PublishOptions::new()
            .exchange(Exchange::default_exchange())
            .routing_key(reply_to)
            .correlation_id(correlation_id)
            .serializer("json")
            .delivery_mode(self.delivery_mode)
            .retry(store_retry_policy());
        self.connection.producer().publish(meta, options).await
    }

    async fn get(&self, id: &TaskId) -> Result<Option<ResultMeta>> {
        self.drain().await?;
        let received = self.received.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(received.get(id).cloned())
    }

    /// Wait for the task's final state on the reply queue (a `RETRY` on the way is passed
    /// over, as Python's `AsyncResult.get()` does), and hand it out: it is forgotten here.
    async fn wait(&self, id: &TaskId, timeout: Duration) -> Result<ResultMeta> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            self.drain().await?;
            if let Some(meta) = self.take_ready(id) {
                return Ok(meta);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no rpc result of task {id} on {} after {timeout:?}",
                        self.reply_to()
                    ),
                ));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }
}
