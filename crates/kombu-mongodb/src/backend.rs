//! [`VirtualBackend`] over the official MongoDB driver: Kombu's collections, claims in a
//! collection of kombu-rs's own, fanout through Kombu's capped collection.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::TryStreamExt;
use kombu_core::router::kombu_topic_regex;
use kombu_core::virtual_transport::{
    BroadcastBuffer, Claimed, NativeFanout, Receipts, Requeue, Settle, StoredBinding, StoredBindings,
    StoredRoutes, VirtualBackend,
};
use kombu_core::{
    Capabilities, Envelope, Error, ErrorKind, Exchange, ExchangeType, FieldTable, Queue, Result, Value,
};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::options::{ClientOptions, CursorType, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::settings::{Settings, MAX_BSON_SIZE};

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;
/// Bytes a stored document adds to its payload and queue name (field names, `_id`, the
/// priority, a deadline, the claim's copy of the queue name), with room to spare.
const DOCUMENT_OVERHEAD: usize = 1024;
/// Expired claims handed back per sweep.
const RESTORE_BATCH: i64 = 500;
/// Candidates read by one sorted query (the ones not claimed at once are cached).
const CANDIDATES: usize = 1000;
/// How long cached candidates are used before the queue is queried again.
const CANDIDATE_AGE: Duration = Duration::from_secs(1);
/// Payload bytes of cached candidates, at most.
const CANDIDATE_BYTES: usize = 4 * 1024 * 1024;

/// A driver error as a kombu-rs error: an unreachable server is a recoverable `Connection`
/// error.
pub(crate) fn mongo_error(e: mongodb::error::Error, operation: &'static str) -> Error {
    use mongodb::error::ErrorKind as K;
    let kind = match e.kind.as_ref() {
        K::Io(_) | K::ServerSelection { .. } | K::ConnectionPoolCleared { .. } | K::DnsResolve { .. } => {
            ErrorKind::Connection
        }
        K::Shutdown => ErrorKind::Closed,
        K::Authentication { .. } => ErrorKind::PreconditionFailed,
        K::InvalidArgument { .. } | K::InvalidTlsConfig { .. } => ErrorKind::InvalidArgument,
        K::BsonDeserialization(_) | K::InvalidResponse { .. } => ErrorKind::Decode,
        K::BsonSerialization(_) => ErrorKind::Encode,
        // BSONObjectTooLarge
        K::Command(c) if c.code == 10334 => ErrorKind::LimitExceeded,
        // Unauthorized
        K::Command(c) if c.code == 13 => ErrorKind::PreconditionFailed,
        _ => ErrorKind::Unexpected,
    };
    let recoverable = kind == ErrorKind::Connection;
    Error::new(kind, format!("mongodb {operation} failed: {e}"))
        .set_recoverable(recoverable)
        .with_source(e)
}

/// Whether an insert failed only because the `_id` exists.
fn is_duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind as K, WriteFailure};
    match e.kind.as_ref() {
        K::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        K::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|w| w.iter().all(|w| w.code == DUPLICATE_KEY))
        }
        K::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// A document `_id` as a receipt: an ObjectId's hex, else its extended JSON behind `x:`.
fn receipt_of(id: &Bson) -> String {
    match id {
        Bson::ObjectId(oid) => oid.to_hex(),
        other => format!("x:{}", other.clone().into_relaxed_extjson()),
    }
}

/// The `_id` a receipt names.
fn id_of(receipt: &str) -> Result<Bson> {
    let bad = || {
        Error::new(ErrorKind::InvalidArgument, "not a MongoDB delivery receipt")
            .with_context("receipt", receipt)
    };
    match receipt.strip_prefix("x:") {
        Some(json) => {
            let value: serde_json::Value = serde_json::from_str(json).map_err(|_| bad())?;
            Bson::try_from(value).map_err(|_| bad())
        }
        None => ObjectId::parse_str(receipt)
            .map(Bson::ObjectId)
            .map_err(|_| bad()),
    }
}

/// The payload of a stored message: Kombu writes a string (older versions bytes).
fn payload_of(doc: &Document) -> Option<&[u8]> {
    match doc.get("payload")? {
        Bson::String(s) => Some(s.as_bytes()),
        Bson::Binary(b) => Some(&b.bytes),
        _ => None,
    }
}

/// Kombu's stored priority: `9 - priority`, so an ascending sort serves the highest first.
fn stored_priority(envelope: &Envelope) -> i32 {
    9 - i32::from(envelope.priority())
}

fn datetime_after(d: Duration) -> DateTime {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2);
    DateTime::from_millis(DateTime::now().timestamp_millis().saturating_add(ms))
}

/// A positive millisecond count from a queue argument (`x-message-ttl`, `x-expires`).
fn millis_argument(arguments: &FieldTable, key: &str) -> Option<u64> {
    match arguments.get(key)? {
        Value::Int(ms) if *ms > 0 => Some(*ms as u64),
        Value::Float(ms) if *ms > 0.0 => Some(*ms as u64),
        Value::String(s) => s.trim().parse::<u64>().ok().filter(|ms| *ms > 0),
        _ => None,
    }
}

struct Inner {
    settings: Settings,
    messages: Collection<Document>,
    routing: Collection<Document>,
    broadcast: Collection<Document>,
    queues: Collection<Document>,
    claims: Collection<Document>,
    exchanges: Collection<Document>,
    malformed: Collection<Document>,
    /// Notified when this process stores a message or gives one back.
    arrived: Arc<Notify>,
    /// Broadcast messages per fanout queue, fed by the tailer.
    fanout: BroadcastBuffer,
    /// The task tailing the capped broadcast collection, while any queue is subscribed.
    tailer: Mutex<Option<JoinHandle<()>>>,
    /// Queue arguments declared through this connection (`x-message-ttl`, `x-expires`).
    declared: Mutex<HashMap<String, FieldTable>>,
    /// When expired claims were last handed back.
    last_restore: Mutex<Option<Instant>>,
    /// A `Decode` error met while other messages were claimed: reported by the next take.
    deferred_error: Mutex<Option<Error>>,
    /// Per queue: when the last sorted query ran, and its candidates not yet tried.
    candidates: Mutex<HashMap<String, (Instant, std::collections::VecDeque<Document>)>>,
    closed: AtomicBool,
    capabilities: Capabilities,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.tailer.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// One connection: a driver client (its own pool, reconnecting by itself).
pub(crate) struct MongoBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MongoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoBackend")
            .field("settings", &self.inner.settings)
            .finish()
    }
}

async fn create_index(
    collection: &Collection<Document>,
    keys: Document,
    options: Option<IndexOptions>,
) -> Result<()> {
    collection
        .create_index(IndexModel::builder().keys(keys).options(options).build())
        .await
        .map(drop)
        .map_err(|e| mongo_error(e, "create index").with_context("collection", collection.name()))
}

impl MongoBackend {
    pub(crate) async fn connect(settings: Settings) -> Result<MongoBackend> {
        let mut options = ClientOptions::parse(&settings.uri).await.map_err(|e| {
            let hint = if settings.uri.starts_with("mongodb+srv") && cfg!(not(feature = "srv")) {
                " (mongodb+srv:// URLs need the `mongodb-srv` feature of kombu, `srv` of kombu-mongodb)"
            } else {
                ""
            };
            Error::new(ErrorKind::InvalidUrl, format!("bad MongoDB URL{hint}: {e}"))
                .with_context("url", &settings.redacted)
        })?;
        options.connect_timeout = Some(settings.connect_timeout);
        options.server_selection_timeout = Some(settings.connect_timeout);
        options.app_name.get_or_insert_with(|| "kombu-rs".to_owned());
        let client = Client::with_options(options).map_err(|e| mongo_error(e, "connect"))?;
        let db: Database = client.database(&settings.database);
        db.run_command(doc! {"ping": 1})
            .await
            .map_err(|e| mongo_error(e, "connect").with_context("url", &settings.redacted))?;
        info!(url = %settings.redacted, "mongodb connected");
        let collection = |name: &str| db.collection::<Document>(name);
        let arrived = Arc::new(Notify::new());
        let capabilities = Capabilities {
            max_message_size: Some(crate::max_message_size(MAX_BSON_SIZE)),
            ..crate::CAPABILITIES
        };
        let inner = Inner {
            messages: collection(&settings.messages),
            routing: collection(&settings.routing),
            broadcast: collection(&settings.broadcast),
            queues: collection(&settings.queues),
            claims: collection(&settings.claims),
            exchanges: collection(&settings.exchanges),
            malformed: collection(&settings.malformed),
            fanout: BroadcastBuffer::new(arrived.clone()),
            arrived,
            tailer: Mutex::new(None),
            declared: Mutex::new(HashMap::new()),
            last_restore: Mutex::new(None),
            candidates: Mutex::new(HashMap::new()),
            deferred_error: Mutex::new(None),
            closed: AtomicBool::new(false),
            capabilities,
            settings,
        };
        inner.prepare(&db).await?;
        Ok(MongoBackend {
            inner: Arc::new(inner),
        })
    }
}

impl Inner {
    /// Kombu's `_create_broadcast` and `_ensure_indexes`, plus the claims' indexes.
    async fn prepare(&self, db: &Database) -> Result<()> {
        let names = db
            .list_collection_names()
            .await
            .map_err(|e| mongo_error(e, "list collections"))?;
        if !names.contains(&self.settings.broadcast) {
            match db
                .create_collection(&self.settings.broadcast)
                .capped(true)
                .size(self.settings.capped_queue_size as u64)
                .await
            {
                Ok(()) => {}
                // NamespaceExists: another process created it meanwhile.
                Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 48) => {
                }
                Err(e) => return Err(mongo_error(e, "create the capped broadcast collection")),
            }
        }
        create_index(&self.messages, doc! {"queue": 1, "priority": 1, "_id": 1}, None).await?;
        create_index(&self.broadcast, doc! {"queue": 1}, None).await?;
        create_index(&self.routing, doc! {"queue": 1, "exchange": 1}, None).await?;
        create_index(&self.claims, doc! {"deadline": 1}, None).await?;
        create_index(&self.claims, doc! {"queue": 1}, None).await?;
        if self.settings.ttl {
            let ttl = || Some(IndexOptions::builder().expire_after(Duration::ZERO).build());
            for collection in [&self.messages, &self.routing, &self.queues] {
                match create_index(collection, doc! {"expire_at": 1}, ttl()).await {
                    Ok(()) => {}
                    // NotImplemented: a server without TTL indexes (FerretDB 1.x). The
                    // `expire_at` fields are still written (Kombu's layout); nothing expires.
                    Err(e)
                        if e.message().contains("expireAfterSeconds")
                            || e.message().contains("NotImplemented") =>
                    {
                        warn!(collection = collection.name(), error = %e, "the server has no TTL indexes: expire_at is written but nothing expires");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn check_size(&self, queue: &str, payload: &str) -> Result<()> {
        let size = payload.len() + 2 * queue.len() + DOCUMENT_OVERHEAD;
        if size > MAX_BSON_SIZE {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "message of {} bytes (as stored) exceeds MongoDB's BSON document limit of {MAX_BSON_SIZE} bytes",
                    payload.len()
                ),
            )
            .with_context("queue", queue));
        }
        Ok(())
    }

    /// The queue's arguments: declared here, else stored in `messages.queues` (with `ttl`).
    async fn queue_arguments(&self, queue: &str) -> Option<FieldTable> {
        if let Some(args) = self.declared.lock().unwrap_or_else(|p| p.into_inner()).get(queue) {
            return Some(args.clone());
        }
        if !self.settings.ttl {
            return None;
        }
        let doc = self.queues.find_one(doc! {"_id": queue}).await.ok()??;
        let arguments = doc.get_document("options").ok()?.get_document("arguments").ok()?;
        let json = Bson::Document(arguments.clone()).into_relaxed_extjson();
        serde_json::from_value(json).ok()
    }

    /// Kombu's message document (with `expire_at` when `ttl` is on).
    async fn message_doc(&self, queue: &str, envelope: &Envelope) -> Result<Document> {
        let payload = envelope.to_json();
        self.check_size(queue, &payload)?;
        let mut doc = doc! {
            "payload": payload,
            "queue": queue,
            "priority": stored_priority(envelope),
        };
        if self.settings.ttl {
            let queue_ttl = self
                .queue_arguments(queue)
                .await
                .and_then(|a| millis_argument(&a, "x-message-ttl"));
            let message_ttl = envelope
                .message
                .properties
                .expiration
                .as_deref()
                .and_then(|e| e.trim().parse::<u64>().ok());
            if let Some(ms) = [queue_ttl, message_ttl].into_iter().flatten().min() {
                doc.insert("expire_at", datetime_after(Duration::from_millis(ms)));
            }
        }
        Ok(doc)
    }

    /// The next candidates of `queue` in Kombu's order (priority, then `_id`): from the
    /// connection's cache of the last sorted query while it is fresh, else from a new query
    /// (whose remainder is cached). A server without sort pushdown (FerretDB) scans the whole
    /// collection for every sorted query: one query serves many claims this way. A cached
    /// candidate may have been taken meanwhile (its claim is then a duplicate key, or its
    /// delete finds nothing); what was published after the query waits at most
    /// [`CANDIDATE_AGE`] (a requeue or restore here empties the cache at once).
    async fn candidates(&self, queue: &str, want: usize) -> Result<Vec<Document>> {
        {
            let mut cache = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, cached)) = cache.get_mut(queue) {
                if at.elapsed() < CANDIDATE_AGE && !cached.is_empty() {
                    let n = want.min(cached.len());
                    return Ok(cached.drain(..n).collect());
                }
            }
            cache.remove(queue);
        }
        let limit = i64::try_from(want.max(CANDIDATES)).unwrap_or(i64::MAX);
        let mut found: Vec<Document> = self
            .messages
            .find(doc! {"queue": queue})
            .sort(doc! {"priority": 1, "_id": 1})
            .limit(limit)
            .await
            .map_err(|e| mongo_error(e, "find").with_context("queue", queue))?
            .try_collect()
            .await
            .map_err(|e| mongo_error(e, "find").with_context("queue", queue))?;
        if found.len() > want {
            let mut bytes = 0usize;
            let rest: std::collections::VecDeque<Document> = found
                .split_off(want)
                .into_iter()
                .take_while(|d| {
                    bytes += payload_of(d).map_or(0, <[u8]>::len);
                    bytes <= CANDIDATE_BYTES
                })
                .collect();
            self.candidates
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(queue.to_owned(), (Instant::now(), rest));
        }
        Ok(found)
    }

    /// Forget the cached candidates (a message went back into a queue).
    fn forget_candidates(&self) {
        self.candidates.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Claim up to `max` ready messages of `queue` into `out`. For each batch of candidates:
    /// insert one claim per message (the `_id` is unique: a duplicate key means another
    /// kombu-rs consumer has it), then delete the messages won from `messages`. Both are
    /// writes of single documents, atomic on every server (no `findAndModify`).
    async fn claim(&self, queue: &str, max: usize, out: &mut Vec<Claimed>) -> Result<()> {
        if let Some(e) = self
            .deferred_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Err(e);
        }
        self.maybe_restore_expired().await;
        let mut claimed = 0usize;
        let mut first_error: Option<Error> = None;
        let mut rounds = 0;
        while claimed < max && rounds < 4 {
            rounds += 1;
            let batch = self.candidates(queue, max - claimed).await?;
            if batch.is_empty() {
                break;
            }
            let deadline = datetime_after(self.settings.visibility_timeout);
            let won = self.insert_claims(queue, batch, deadline).await?;
            if won.is_empty() {
                continue;
            }
            let ids: Vec<Bson> = won
                .iter()
                .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
                .collect();
            // With the claims held, no other kombu-rs consumer can delete these: what is
            // still in `messages` now is ours. A cached candidate may be gone already
            // (consumed and acked elsewhere, purged): its claim goes again.
            let current: Vec<Document> = match self.messages.find(doc! {"_id": {"$in": ids.clone()}}).await {
                Ok(cursor) => cursor.try_collect().await,
                Err(e) => Err(e),
            }
            .map_err(|e| mongo_error(e, "claim").with_context("queue", queue))?;
            let present: Vec<Bson> = current
                .iter()
                .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
                .collect();
            if present.len() < ids.len() {
                let gone: Vec<Bson> = ids.iter().filter(|id| !present.contains(id)).cloned().collect();
                let _ = self.claims.delete_many(doc! {"_id": {"$in": gone}}).await;
            }
            if present.is_empty() {
                continue;
            }
            // One delete for the batch. Fewer deleted than present means a consumer that
            // ignores claims (Python Kombu's `find_one_and_delete`) took some in the instant
            // between: which ones cannot be told, so all are delivered (at least once with
            // such a consumer on the queue; never twice among kombu-rs consumers).
            match self
                .messages
                .delete_many(doc! {"_id": {"$in": present.clone()}})
                .await
            {
                Ok(r) if (r.deleted_count as usize) < present.len() => {
                    debug!(
                        queue,
                        claimed = present.len(),
                        deleted = r.deleted_count,
                        "some messages were taken by another consumer meanwhile"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = self.claims.delete_many(doc! {"_id": {"$in": present}}).await;
                    return Err(mongo_error(e, "claim").with_context("queue", queue));
                }
            }
            // Back in Kombu's order (the `$in` query returns them in any order).
            let mut current = current;
            current.sort_by_key(|d| {
                let id = d.get("_id");
                ids.iter().position(|i| Some(i) == id).unwrap_or(usize::MAX)
            });
            let won = current;
            for message in won {
                let id = message.get("_id").cloned().unwrap_or(Bson::Null);
                match payload_of(&message).map(Envelope::from_json) {
                    Some(Ok(mut envelope)) => {
                        envelope.redelivered |= message.get_bool("redelivered").unwrap_or(false);
                        out.push(Claimed::held(envelope, receipt_of(&id)));
                        claimed += 1;
                    }
                    Some(Err(e)) => {
                        self.park(message).await;
                        first_error.get_or_insert(
                            e.with_context("queue", queue)
                                .with_context("moved_to", &self.settings.malformed),
                        );
                    }
                    None => {
                        self.park(message).await;
                        first_error.get_or_insert(
                            Error::new(ErrorKind::Decode, "message document has no string payload")
                                .with_context("queue", queue)
                                .with_context("moved_to", &self.settings.malformed),
                        );
                    }
                }
            }
        }
        match first_error {
            Some(e) if claimed == 0 => Err(e),
            Some(e) => {
                // Deliver what was claimed; the next take reports the error.
                warn!(error = %e, "malformed message parked while claiming others");
                *self.deferred_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Insert one claim per message (unordered); returns the messages whose claim was
    /// inserted (the others are held by another consumer).
    async fn insert_claims(
        &self,
        queue: &str,
        batch: Vec<Document>,
        deadline: DateTime,
    ) -> Result<Vec<Document>> {
        let claims: Vec<Document> = batch
            .iter()
            .map(|m| {
                doc! {
                    "_id": m.get("_id").cloned().unwrap_or(Bson::Null),
                    "queue": queue,
                    "deadline": deadline,
                    "doc": m.clone(),
                }
            })
            .collect();
        if claims.len() == 1 {
            return match self.claims.insert_one(&claims[0]).await {
                Ok(_) => Ok(batch),
                Err(e) if is_duplicate(&e) => Ok(Vec::new()),
                Err(e) => Err(mongo_error(e, "claim").with_context("queue", queue)),
            };
        }
        match self.claims.insert_many(claims).ordered(false).await {
            Ok(_) => Ok(batch),
            Err(e) if is_duplicate(&e) => {
                let failed: HashSet<usize> = match e.kind.as_ref() {
                    mongodb::error::ErrorKind::InsertMany(m) => {
                        m.write_errors.iter().flatten().map(|w| w.index).collect()
                    }
                    _ => (0..batch.len()).collect(),
                };
                Ok(batch
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| !failed.contains(i))
                    .map(|(_, d)| d)
                    .collect())
            }
            Err(e) => Err(mongo_error(e, "claim").with_context("queue", queue)),
        }
    }

    /// Move a message whose payload is no Kombu envelope aside (it was claimed and deleted
    /// from `messages` already), and drop its claim.
    async fn park(&self, message: Document) {
        let id = message.get("_id").cloned().unwrap_or(Bson::Null);
        if let Err(e) = self.malformed.insert_one(&message).await {
            if !is_duplicate(&e) {
                warn!(error = %e, "cannot park a malformed message");
            }
        }
        let _ = self.claims.delete_one(doc! {"_id": id}).await;
    }

    /// Hand back expired claims, at most every quarter of the visibility timeout.
    async fn maybe_restore_expired(&self) {
        let every =
            (self.settings.visibility_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        {
            let mut last = self.last_restore.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Err(e) = self.restore_expired().await {
            debug!(error = %e, "restore of expired claims failed");
        }
    }

    /// Claims whose deadline passed (their consumer died): each message back into
    /// `messages` under its own `_id` (its place in the queue), marked redelivered, then the
    /// claim deleted. A message that is back already is a duplicate key: fine.
    async fn restore_expired(&self) -> Result<usize> {
        let now = DateTime::now();
        let expired: Vec<Document> = self
            .claims
            .find(doc! {"deadline": {"$lt": now}})
            .limit(RESTORE_BATCH)
            .await
            .map_err(|e| mongo_error(e, "find expired claims"))?
            .try_collect()
            .await
            .map_err(|e| mongo_error(e, "find expired claims"))?;
        let mut restored = 0;
        for claim in expired {
            let id = claim.get("_id").cloned().unwrap_or(Bson::Null);
            let Ok(message) = claim.get_document("doc") else {
                let _ = self.claims.delete_one(doc! {"_id": id}).await;
                continue;
            };
            let message = redelivered(message.clone(), None);
            match self.messages.insert_one(&message).await {
                Ok(_) => {}
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(mongo_error(e, "restore")),
            }
            self.claims
                .delete_one(doc! {"_id": id, "deadline": {"$lt": now}})
                .await
                .map_err(|e| mongo_error(e, "restore"))?;
            restored += 1;
        }
        if restored > 0 {
            self.forget_candidates();
            info!(restored, "expired claims handed back");
            self.arrived.notify_waiters();
        }
        Ok(restored)
    }

    /// Give held messages back, each under its own `_id`, with its new payload (marked
    /// redelivered), then delete their claims.
    async fn requeue_items(&self, items: &[(&str, &Envelope, &str)]) -> Result<()> {
        let ids: Vec<Bson> = items.iter().map(|(_, _, r)| id_of(r)).collect::<Result<_>>()?;
        let stored: HashMap<String, Document> = self
            .claims
            .find(doc! {"_id": {"$in": ids.clone()}})
            .await
            .map_err(|e| mongo_error(e, "requeue"))?
            .try_collect::<Vec<Document>>()
            .await
            .map_err(|e| mongo_error(e, "requeue"))?
            .into_iter()
            .filter_map(|c| {
                let id = receipt_of(c.get("_id")?);
                Some((id, c.get_document("doc").ok()?.clone()))
            })
            .collect();
        let mut docs = Vec::with_capacity(items.len());
        for (_, envelope, receipt) in items {
            let payload = envelope.to_json();
            let doc = match stored.get(*receipt) {
                Some(doc) => redelivered(doc.clone(), Some(payload)),
                // The claim is gone (it expired and the message was handed back already):
                // the copy kept in the queue is delivered again; nothing to put.
                None => continue,
            };
            docs.push(doc);
        }
        if !docs.is_empty() {
            match self.messages.insert_many(docs).ordered(false).await {
                Ok(_) => {}
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(mongo_error(e, "requeue")),
            }
        }
        self.claims
            .delete_many(doc! {"_id": {"$in": ids}})
            .await
            .map_err(|e| mongo_error(e, "requeue"))?;
        self.forget_candidates();
        self.arrived.notify_waiters();
        Ok(())
    }

    /// Start the broadcast tailer unless it runs.
    fn ensure_tailer(self: &Arc<Self>) {
        let mut tailer = self.tailer.lock().unwrap_or_else(|p| p.into_inner());
        if tailer.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        *tailer = Some(tokio::spawn(tail(Arc::downgrade(self))));
    }
}

/// A stored message marked redelivered: the payload's envelope (Kombu reads the flag there)
/// and a `redelivered` field. `payload` replaces the stored one when given.
fn redelivered(mut message: Document, payload: Option<String>) -> Document {
    let payload = payload.or_else(|| {
        let mut envelope = Envelope::from_json(payload_of(&message)?).ok()?;
        envelope.redelivered = true;
        Some(envelope.to_json())
    });
    if let Some(payload) = payload {
        message.insert("payload", payload);
    }
    message.insert("redelivered", true);
    message
}

/// Tail the capped broadcast collection (one cursor per connection, for every subscribed
/// exchange), copying each message into the buffers of the queues subscribed to its
/// exchange. Messages stored before the tailer started are skipped (Kombu's cursor skips
/// them too). When the cursor dies (the collection was empty, the server killed it or went
/// away) it is opened again after the last message seen.
async fn tail(weak: Weak<Inner>) {
    let mut last: Option<Bson> = None;
    let mut started = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let pause = inner.settings.polling_interval.min(Duration::from_millis(500));
        let broadcast = inner.broadcast.clone();
        let max_await = inner.settings.polling_interval;
        drop(inner);
        if !started {
            match broadcast.find_one(doc! {}).sort(doc! {"$natural": -1}).await {
                Ok(newest) => {
                    last = newest.and_then(|d| d.get("_id").cloned());
                    started = true;
                }
                Err(e) => {
                    debug!(error = %e, "broadcast: cannot read the newest message");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
        }
        // Skip up to the last message seen, if it is still there (else every message in
        // the collection is newer: the capped collection dropped the older ones).
        let mut skipping = match &last {
            None => false,
            Some(id) => match broadcast.find_one(doc! {"_id": id.clone()}).await {
                Ok(found) => found.is_some(),
                Err(e) => {
                    debug!(error = %e, "broadcast: cannot look up the last message");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
        };
        let cursor = broadcast
            .find(doc! {})
            .cursor_type(CursorType::TailableAwait)
            .max_await_time(max_await)
            .await;
        let mut cursor = match cursor {
            Ok(cursor) => cursor,
            Err(e) => {
                debug!(error = %e, "broadcast: cannot open the tailable cursor");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        loop {
            match cursor.try_next().await {
                Ok(Some(doc)) => {
                    let id = doc.get("_id").cloned();
                    if skipping {
                        if id == last {
                            skipping = false;
                        }
                        continue;
                    }
                    last = id;
                    let Some(inner) = weak.upgrade() else { return };
                    let exchange = doc.get_str("queue").unwrap_or_default();
                    match payload_of(&doc).map(Envelope::from_json) {
                        Some(Ok(envelope)) => {
                            inner.fanout.deliver(exchange, &envelope);
                        }
                        _ => warn!(exchange, "broadcast: skipped a message that is no Kombu envelope"),
                    }
                }
                Ok(None) => {
                    // An empty capped collection gives a dead cursor at once.
                    debug!("broadcast: tailable cursor ended");
                    break;
                }
                Err(e) => {
                    debug!(error = %e, "broadcast: tailable cursor failed");
                    break;
                }
            }
        }
        drop(cursor);
        tokio::time::sleep(pause).await;
    }
}

impl VirtualBackend for MongoBackend {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities
    }

    /// Kombu's `_new_queue`: with `ttl`, the queue's options in `messages.queues`.
    async fn declare_queue(&self, queue: &Queue, arguments: &FieldTable) -> Result<()> {
        let inner = &self.inner;
        inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.name.clone(), arguments.clone());
        if inner.settings.ttl {
            let json = serde_json::to_value(arguments).map_err(|e| {
                Error::new(ErrorKind::Encode, "queue arguments cannot be stored").with_source(e)
            })?;
            let arguments = Bson::try_from(json).unwrap_or(Bson::Document(Document::new()));
            let expire_at = millis_argument(&queue.declare_arguments(), "x-expires")
                .map(|ms| Bson::DateTime(datetime_after(Duration::from_millis(ms))))
                .unwrap_or(Bson::Null);
            inner
                .queues
                .update_one(
                    doc! {"_id": &queue.name},
                    doc! {"$set": {
                        "_id": &queue.name,
                        "options": {
                            "durable": queue.durable,
                            "exclusive": queue.exclusive,
                            "auto_delete": queue.auto_delete,
                            "arguments": arguments,
                        },
                        "expire_at": expire_at,
                    }},
                )
                .upsert(true)
                .await
                .map_err(|e| mongo_error(e, "declare queue").with_context("queue", &queue.name))?;
        }
        Ok(())
    }

    /// Declared here, or known to the broker: messages, bindings or (with `ttl`) options.
    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        let inner = &self.inner;
        if inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(queue)
        {
            return Ok(true);
        }
        let failed = |e| mongo_error(e, "queue exists").with_context("queue", queue);
        for collection in [&inner.messages, &inner.routing, &inner.claims] {
            if collection
                .find_one(doc! {"queue": queue})
                .await
                .map_err(failed)?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(inner
            .queues
            .find_one(doc! {"_id": queue})
            .await
            .map_err(failed)?
            .is_some())
    }

    async fn put(&self, queue: &str, envelope: Envelope) -> Result<()> {
        let inner = &self.inner;
        let doc = inner.message_doc(queue, &envelope).await?;
        inner
            .messages
            .insert_one(doc)
            .await
            .map_err(|e| mongo_error(e, "publish").with_context("queue", queue))?;
        inner.arrived.notify_waiters();
        Ok(())
    }

    /// One `insert_many` (ordered) for the whole batch. On failure the items before the
    /// failing one are stored; that one and the rest report the error.
    async fn put_batch(&self, puts: Vec<(Arc<str>, Envelope)>) -> Vec<Result<()>> {
        let inner = &self.inner;
        let mut outcomes: Vec<Result<()>> = Vec::with_capacity(puts.len());
        let mut docs = Vec::with_capacity(puts.len());
        let mut slots = Vec::with_capacity(puts.len());
        for (queue, envelope) in &puts {
            match inner.message_doc(queue, envelope).await {
                Ok(doc) => {
                    slots.push(outcomes.len());
                    outcomes.push(Ok(()));
                    docs.push(doc);
                }
                Err(e) => outcomes.push(Err(e)),
            }
        }
        if docs.is_empty() {
            return outcomes;
        }
        if let Err(e) = inner.messages.insert_many(docs).ordered(true).await {
            let first_failed = match e.kind.as_ref() {
                mongodb::error::ErrorKind::InsertMany(m) => m
                    .write_errors
                    .iter()
                    .flatten()
                    .map(|w| w.index)
                    .min()
                    .unwrap_or(0),
                _ => 0,
            };
            let error = mongo_error(e, "batch publish");
            for slot in slots.iter().skip(first_failed) {
                outcomes[*slot] = Err(error.duplicate().with_context("queue", &puts[*slot].0));
            }
        }
        inner.arrived.notify_waiters();
        outcomes
    }

    async fn get(&self, queue: &str) -> Result<Option<Claimed>> {
        let mut out = Vec::with_capacity(1);
        self.inner.claim(queue, 1, &mut out).await?;
        Ok(out.pop())
    }

    async fn get_batch(&self, queue: &str, max: usize, out: &mut Vec<Claimed>) -> Result<()> {
        if max == 0 {
            return Ok(());
        }
        self.inner.claim(queue, max, out).await
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        self.inner.forget_candidates();
        let deleted = self
            .inner
            .messages
            .delete_many(doc! {"queue": queue})
            .await
            .map_err(|e| mongo_error(e, "purge").with_context("queue", queue))?;
        Ok(deleted.deleted_count)
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        if !self.inner.settings.calc_queue_size {
            return Ok(0);
        }
        self.inner
            .messages
            .count_documents(doc! {"queue": queue})
            .await
            .map_err(|e| mongo_error(e, "size").with_context("queue", queue))
    }

    /// The messages, held deliveries, bindings and stored options of the queue.
    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let inner = &self.inner;
        let failed = |e| mongo_error(e, "delete queue").with_context("queue", queue);
        inner
            .routing
            .delete_many(doc! {"queue": queue})
            .await
            .map_err(failed)?;
        inner
            .messages
            .delete_many(doc! {"queue": queue})
            .await
            .map_err(failed)?;
        inner
            .claims
            .delete_many(doc! {"queue": queue})
            .await
            .map_err(failed)?;
        if inner.settings.ttl {
            inner
                .queues
                .delete_one(doc! {"_id": queue})
                .await
                .map_err(failed)?;
        }
        inner.fanout.remove_queue(queue);
        inner.forget_candidates();
        inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(queue);
        Ok(())
    }

    fn wakeup(&self) -> Option<Arc<Notify>> {
        Some(self.inner.arrived.clone())
    }

    fn polling_interval(&self) -> Duration {
        self.inner.settings.polling_interval
    }

    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Release);
        if let Some(task) = inner.tailer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        Ok(())
    }

    fn receipts(&self) -> Option<&impl Receipts> {
        Some(self)
    }

    fn stored_bindings(&self) -> Option<&impl StoredBindings> {
        Some(self)
    }

    fn native_fanout(&self) -> Option<&impl NativeFanout> {
        Some(self)
    }
}

/// Claims in `kombu_rs.claims`, each with a deadline the core renews while the consumer lives.
impl Receipts for MongoBackend {
    /// Deletes the claims (the messages left `messages` when they were claimed).
    async fn ack_batch(&self, batch: &[Settle]) -> Result<()> {
        let ids: Vec<Bson> = batch.iter().map(|s| id_of(s.receipt())).collect::<Result<_>>()?;
        self.inner
            .claims
            .delete_many(doc! {"_id": {"$in": ids}})
            .await
            .map_err(|e| mongo_error(e, "ack").with_context("count", batch.len()))?;
        Ok(())
    }

    async fn requeue(&self, queue: &str, envelope: Envelope, receipt: &str) -> Result<()> {
        self.inner.requeue_items(&[(queue, &envelope, receipt)]).await
    }

    async fn requeue_batch(&self, batch: Vec<Requeue>) -> Result<()> {
        let items: Vec<(&str, &Envelope, &str)> = batch
            .iter()
            .map(|r| (r.queue(), r.envelope(), r.receipt()))
            .collect();
        self.inner.requeue_items(&items).await
    }

    async fn renew(&self, receipts: &[&str]) -> Result<()> {
        let ids: Vec<Bson> = receipts.iter().map(|r| id_of(r)).collect::<Result<_>>()?;
        let deadline = datetime_after(self.inner.settings.visibility_timeout);
        self.inner
            .claims
            .update_many(doc! {"_id": {"$in": ids}}, doc! {"$set": {"deadline": deadline}})
            .await
            .map_err(|e| mongo_error(e, "renew").with_context("count", receipts.len()))?;
        Ok(())
    }

    /// Every quarter of the visibility timeout, 100 ms to 60 s.
    fn renewal_interval(&self) -> Option<Duration> {
        Some(
            (self.inner.settings.visibility_timeout / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(60)),
        )
    }
}

/// Kombu's `messages.routing` documents, plus exchange types in `kombu_rs.exchanges` (Kombu
/// stores none: a Python publisher routes an exchange it did not declare as direct).
impl StoredBindings for MongoBackend {
    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        if exchange.name.is_empty() {
            return Ok(());
        }
        self.inner
            .exchanges
            .update_one(
                doc! {"_id": &exchange.name},
                doc! {"$set": {"type": exchange.kind.as_str()}},
            )
            .upsert(true)
            .await
            .map_err(|e| mongo_error(e, "declare exchange").with_context("exchange", &exchange.name))?;
        Ok(())
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<()> {
        let inner = &self.inner;
        let failed = |e| mongo_error(e, "delete exchange").with_context("exchange", exchange);
        inner
            .routing
            .delete_many(doc! {"exchange": exchange})
            .await
            .map_err(failed)?;
        inner
            .exchanges
            .delete_one(doc! {"_id": exchange})
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Kombu's `_queue_bind`: an upserted `{exchange, queue, routing_key, pattern}` (the
    /// pattern is Kombu's regex for topic bindings, null otherwise). A fanout binding also
    /// subscribes the queue to the broadcast collection.
    async fn store_binding(&self, exchange: &Exchange, binding: &StoredBinding) -> Result<()> {
        let inner = &self.inner;
        let pattern = match exchange.kind {
            ExchangeType::Topic => Bson::String(kombu_topic_regex(&binding.routing_key)),
            _ => Bson::Null,
        };
        let lookup = doc! {
            "exchange": &exchange.name,
            "queue": &binding.queue,
            "routing_key": &binding.routing_key,
            "pattern": pattern,
        };
        let mut data = lookup.clone();
        if inner.settings.ttl {
            let expires = inner
                .queue_arguments(&binding.queue)
                .await
                .and_then(|a| millis_argument(&a, "x-expires"));
            data.insert(
                "expire_at",
                expires.map_or(Bson::Null, |ms| {
                    Bson::DateTime(datetime_after(Duration::from_millis(ms)))
                }),
            );
        }
        inner
            .routing
            .update_one(lookup, doc! {"$set": data})
            .upsert(true)
            .await
            .map_err(|e| mongo_error(e, "bind").with_context("exchange", &exchange.name))?;
        if exchange.kind == ExchangeType::Fanout {
            inner.fanout.subscribe(&binding.queue, &exchange.name);
            inner.ensure_tailer();
        }
        Ok(())
    }

    async fn load_bindings(&self, exchange: &str) -> Result<Option<StoredRoutes>> {
        let inner = &self.inner;
        let failed = |e| mongo_error(e, "load bindings").with_context("exchange", exchange);
        let (routes, declared) = tokio::join!(
            async {
                inner
                    .routing
                    .find(doc! {"exchange": exchange})
                    .await?
                    .try_collect::<Vec<Document>>()
                    .await
            },
            inner.exchanges.find_one(doc! {"_id": exchange})
        );
        let routes = routes.map_err(failed)?;
        let declared = declared.map_err(failed)?;
        if routes.is_empty() && declared.is_none() {
            return Ok(None);
        }
        let stored_kind = declared
            .as_ref()
            .and_then(|d| d.get_str("type").ok())
            .and_then(|t| t.parse::<ExchangeType>().ok());
        let has_pattern = routes
            .iter()
            .any(|r| matches!(r.get("pattern"), Some(Bson::String(p)) if !p.is_empty()));
        let kind = stored_kind.or(has_pattern.then_some(ExchangeType::Topic));
        let bindings = routes
            .iter()
            .filter_map(|r| {
                Some(StoredBinding {
                    queue: r.get_str("queue").ok()?.to_owned(),
                    routing_key: r.get_str("routing_key").unwrap_or_default().to_owned(),
                    arguments: FieldTable::new(),
                })
            })
            .collect();
        Ok(Some(StoredRoutes { kind, bindings }))
    }

    async fn remove_binding(&self, exchange: &str, binding: &StoredBinding) -> Result<()> {
        let inner = &self.inner;
        inner
            .routing
            .delete_many(doc! {
                "exchange": exchange,
                "queue": &binding.queue,
                "routing_key": &binding.routing_key,
            })
            .await
            .map_err(|e| mongo_error(e, "unbind").with_context("exchange", exchange))?;
        inner.fanout.unsubscribe(&binding.queue, exchange);
        Ok(())
    }
}

/// Fanout through Kombu's capped `messages.broadcast`: `{payload, queue: <exchange>}`.
impl NativeFanout for MongoBackend {
    async fn put_fanout(&self, exchange: &str, envelope: Envelope, _routing_key: &str) -> Result<()> {
        let inner = &self.inner;
        let payload = envelope.to_json();
        inner.check_size(exchange, &payload)?;
        if payload.len() + DOCUMENT_OVERHEAD > inner.settings.capped_queue_size as usize {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "fanout message of {} bytes does not fit the capped broadcast collection ({} bytes, transport option capped_queue_size)",
                    payload.len(),
                    inner.settings.capped_queue_size
                ),
            )
            .with_context("exchange", exchange));
        }
        inner
            .broadcast
            .insert_one(doc! {"payload": payload, "queue": exchange})
            .await
            .map_err(|e| mongo_error(e, "fanout publish").with_context("exchange", exchange))?;
        Ok(())
    }

    fn broadcast_buffer(&self) -> &BroadcastBuffer {
        &self.inner.fanout
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn receipts_round_trip() {
        let oid = ObjectId::new();
        assert_eq!(
            id_of(&receipt_of(&Bson::ObjectId(oid))).unwrap(),
            Bson::ObjectId(oid)
        );
        let other = Bson::String("abc".into());
        assert_eq!(id_of(&receipt_of(&other)).unwrap(), other);
        assert!(id_of("nope").is_err());
    }

    #[test]
    fn priority_is_stored_as_kombu_does() {
        let mut m = kombu_core::RawMessage::new("x");
        m.properties_mut().priority = Some(7);
        assert_eq!(stored_priority(&Envelope::new(m, "", "q")), 2);
        assert_eq!(
            stored_priority(&Envelope::new(kombu_core::RawMessage::new("x"), "", "q")),
            9
        );
    }
}
