//! [`VirtualBackend`] over a [`Worker`]: the async face of the SQLite store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use kombu_core::virtual_transport::{
    BrokerState, Claimed, Receipts, Requeue, Settle, StoredBinding, StoredBindings, StoredRoutes,
    VirtualBackend,
};
use kombu_core::{Capabilities, Envelope, Error, ErrorKind, Exchange, FieldTable, Queue, Result, Value};
use tokio::sync::Notify;

use crate::settings::{Location, Settings};
use crate::store::Receipt;
use crate::worker::Worker;
use crate::CAPABILITIES;

/// One connection to a database file.
#[derive(Debug)]
pub(crate) struct SqliteBackend {
    worker: Worker,
    arrivals: Arc<Notify>,
    polling_interval: Duration,
    /// How often the claims this connection's consumers hold are renewed.
    renew_every: Duration,
}

/// What connections of one process to the same file share: routing declared on one serves
/// all (as in Kombu, where a process's channels share one state), and a put on one wakes the
/// consumers of all.
struct Shared {
    state: Arc<BrokerState>,
    arrivals: Arc<Notify>,
}

type SharedByFile = HashMap<PathBuf, (Weak<BrokerState>, Weak<Notify>)>;

fn shared_for(location: &Location) -> Shared {
    let fresh = || Shared {
        state: BrokerState::new(),
        arrivals: Arc::new(Notify::new()),
    };
    let Location::File(path) = location else {
        return fresh();
    };
    let key = file_key(path);
    static FILES: OnceLock<Mutex<SharedByFile>> = OnceLock::new();
    let mut files = FILES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    files.retain(|_, (state, _)| state.strong_count() > 0);
    if let Some((state, arrivals)) = files.get(&key) {
        if let (Some(state), Some(arrivals)) = (state.upgrade(), arrivals.upgrade()) {
            return Shared { state, arrivals };
        }
    }
    let shared = fresh();
    files.insert(
        key,
        (Arc::downgrade(&shared.state), Arc::downgrade(&shared.arrivals)),
    );
    shared
}

/// The same file however it is spelled: the canonical directory (which must exist for SQLite
/// to create the file) joined with the file name.
fn file_key(path: &std::path::Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    match (std::fs::canonicalize(parent), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

impl SqliteBackend {
    /// Open the database; returns the backend and the routing state to build the transport
    /// with.
    pub(crate) async fn open(settings: Settings) -> Result<(SqliteBackend, Arc<BrokerState>)> {
        let polling_interval = settings.polling_interval;
        let renew_every =
            (settings.visibility_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let shared = shared_for(&settings.location);
        let worker = Worker::start(settings, shared.arrivals.clone()).await?;
        Ok((
            SqliteBackend {
                worker,
                arrivals: shared.arrivals,
                polling_interval,
                renew_every,
            },
            shared.state,
        ))
    }
}

fn max_priority(queue: &Queue, arguments: &FieldTable) -> Result<Option<u8>> {
    match arguments.get("x-max-priority") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .and_then(|n| u8::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    "x-max-priority must be an integer from 0 to 255",
                )
                .with_context("queue", &queue.name)
            }),
    }
}

impl VirtualBackend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    async fn declare_queue(&self, queue: &Queue, arguments: &FieldTable) -> Result<()> {
        let priority = max_priority(queue, arguments)?;
        let name = queue.name.clone();
        self.worker
            .call(move |store| store.declare_queue(&name, priority))
            .await
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        let name = queue.to_owned();
        self.worker.call(move |store| store.queue_exists(&name)).await
    }

    async fn put(&self, queue: &str, envelope: Envelope) -> Result<()> {
        // Serialised here, on the caller's task, so the SQLite thread only writes.
        let payload = envelope.to_json();
        self.worker.put(queue.to_owned(), payload).await
    }

    async fn put_batch(&self, puts: Vec<(Arc<str>, Envelope)>) -> Vec<Result<()>> {
        let items = puts
            .into_iter()
            .map(|(queue, envelope)| (queue.to_string(), envelope.to_json()))
            .collect();
        self.worker.put_all(items).await
    }

    async fn get(&self, queue: &str) -> Result<Option<Claimed>> {
        let mut out = Vec::with_capacity(1);
        self.get_batch(queue, 1, &mut out).await?;
        Ok(out.pop())
    }

    async fn get_batch(&self, queue: &str, max: usize, out: &mut Vec<Claimed>) -> Result<()> {
        let name = queue.to_owned();
        let taken = self
            .worker
            .call(move |store| {
                let mut taken = Vec::with_capacity(max.min(64));
                store.claim(&name, max, &mut taken).map(|()| taken)
            })
            .await?;
        out.extend(taken);
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let name = queue.to_owned();
        self.worker.call(move |store| store.purge(&name)).await
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        let name = queue.to_owned();
        self.worker.call(move |store| store.size(&name)).await
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let name = queue.to_owned();
        self.worker.call(move |store| store.delete_queue(&name)).await
    }

    fn wakeup(&self) -> Option<Arc<Notify>> {
        Some(self.arrivals.clone())
    }

    fn polling_interval(&self) -> Duration {
        self.polling_interval
    }

    /// Gives back whatever this connection still holds (its channels have restored their
    /// unacked messages, and the queued acks are written, already).
    async fn close(&self) -> Result<()> {
        self.worker.call(|store| store.release_claims().map(drop)).await
    }

    fn receipts(&self) -> Option<&impl Receipts> {
        Some(self)
    }

    fn stored_bindings(&self) -> Option<&impl StoredBindings> {
        Some(self)
    }
}

impl Receipts for SqliteBackend {
    async fn ack_batch(&self, batch: &[Settle]) -> Result<()> {
        let ids = batch
            .iter()
            .map(|s| Receipt::decode(s.receipt()).map(|r| r.id))
            .collect::<Result<Vec<i64>>>()?;
        // Handed to the connection thread without waiting for the commit: the thread runs
        // commands in order, so closing (which releases claims there) comes after it.
        self.worker.ack(ids)
    }

    async fn requeue(&self, queue: &str, _envelope: Envelope, receipt: &str) -> Result<()> {
        let receipt = Receipt::decode(receipt)?;
        let restored = self.worker.call(move |store| store.requeue(receipt)).await?;
        if restored {
            self.arrivals.notify_waiters();
        } else {
            tracing::debug!(
                queue,
                message_id = receipt.id,
                "requeue skipped: the claim had expired and the message was already released"
            );
        }
        Ok(())
    }

    /// One trip to the connection thread for the whole batch.
    async fn requeue_batch(&self, batch: Vec<Requeue>) -> Result<()> {
        let receipts = batch
            .iter()
            .map(|r| Receipt::decode(r.receipt()))
            .collect::<Result<Vec<Receipt>>>()?;
        let restored = self
            .worker
            .call(move |store| {
                let mut restored = 0usize;
                let mut first_error = None;
                for receipt in receipts {
                    match store.requeue(receipt) {
                        Ok(true) => restored += 1,
                        Ok(false) => {}
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                first_error.map_or(Ok(restored), Err)
            })
            .await?;
        if restored > 0 {
            self.arrivals.notify_waiters();
        }
        Ok(())
    }

    async fn renew(&self, receipts: &[&str]) -> Result<()> {
        let ids = receipts
            .iter()
            .map(|r| Receipt::decode(r).map(|r| r.id))
            .collect::<Result<Vec<i64>>>()?;
        self.worker
            .call(move |store| store.renew_claims(&ids).map(drop))
            .await
    }

    fn renewal_interval(&self) -> Option<Duration> {
        Some(self.renew_every)
    }
}

impl StoredBindings for SqliteBackend {
    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        let (name, kind) = (exchange.name.clone(), exchange.kind);
        self.worker
            .call(move |store| store.declare_exchange(&name, kind))
            .await
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<()> {
        let name = exchange.to_owned();
        self.worker.call(move |store| store.delete_exchange(&name)).await
    }

    async fn store_binding(&self, exchange: &Exchange, binding: &StoredBinding) -> Result<()> {
        let (name, kind, binding) = (exchange.name.clone(), exchange.kind, binding.clone());
        self.worker
            .call(move |store| store.store_binding(&name, kind, &binding))
            .await
    }

    async fn load_bindings(&self, exchange: &str) -> Result<Option<StoredRoutes>> {
        let name = exchange.to_owned();
        self.worker.call(move |store| store.load_routes(&name)).await
    }

    async fn remove_binding(&self, exchange: &str, binding: &StoredBinding) -> Result<()> {
        let (name, binding) = (exchange.to_owned(), binding.clone());
        self.worker
            .call(move |store| store.remove_binding(&name, &binding))
            .await
    }
}
