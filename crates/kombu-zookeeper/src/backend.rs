//! [`VirtualBackend`] over a ZooKeeper session: Kombu's queue nodes, ephemeral claims, child
//! watches, and routing stored in kombu-rs's subtree.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use kombu_core::virtual_transport::{
    Claimed, ClaimingWait, Receipts, Requeue, Settle, StoredBinding, StoredBindings, StoredRoutes,
    VirtualBackend,
};
use kombu_core::{
    Capabilities, Envelope, Error, ErrorKind, Exchange, ExchangeType, FieldTable, Queue, Result,
};
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, info, instrument, warn};
use zookeeper_client::{
    Acls, Client, CreateMode, CreateOptions, Error as ZkError, MultiWriteError, OneshotWatcher,
};

use crate::paths::{check_queue_name, Paths, ENTRY};
use crate::settings::Settings;

const PERSISTENT: CreateOptions<'static> = CreateMode::Persistent.with_acls(Acls::anyone_all());
const SEQUENTIAL: CreateOptions<'static> = CreateMode::PersistentSequential.with_acls(Acls::anyone_all());
const EPHEMERAL: CreateOptions<'static> = CreateMode::Ephemeral.with_acls(Acls::anyone_all());

/// Operations per `multi` request (acks, requeues): well under the server's packet limit.
/// Batch publishes do not use `multi`: their creates are pipelined (see `put_batch`).
const MULTI_CHUNK: usize = 256;
/// Bytes a create request adds to its path and data (header, ACL, flags), with room to spare.
const REQUEST_OVERHEAD: usize = 256;

/// A ZooKeeper error as a kombu-rs error: connection trouble is recoverable.
pub(crate) fn zk_error(e: ZkError, operation: &'static str) -> Error {
    let kind = match &e {
        ZkError::ConnectionLoss
        | ZkError::SessionExpired
        | ZkError::Timeout
        | ZkError::NoHosts
        | ZkError::Throttled
        | ZkError::SessionMoved
        | ZkError::NotReadOnly => ErrorKind::Connection,
        ZkError::ClientClosed => ErrorKind::Closed,
        ZkError::NoNode => ErrorKind::NotFound,
        ZkError::NoAuth | ZkError::AuthFailed | ZkError::InvalidAcl => ErrorKind::PreconditionFailed,
        ZkError::BadArguments(_) => ErrorKind::InvalidArgument,
        ZkError::MarshallingError => ErrorKind::LimitExceeded,
        _ => ErrorKind::Unexpected,
    };
    let recoverable = kind == ErrorKind::Connection;
    Error::new(kind, format!("zookeeper {operation} failed: {e}"))
        .set_recoverable(recoverable)
        .with_source(e)
}

/// The routing of exchanges as last read, per ensemble and vhost, shared by the connections
/// of this process: an entry goes when a watch on its exchange node (type, deletion) or on
/// its bindings fires, or when a connection of this process changes it.
type RouteCache = Arc<Mutex<Routes>>;
/// Exchange name → its routing (`None`: nothing stored for it).
type Routes = HashMap<String, Option<StoredRoutes>>;

fn shared_routes(key: String) -> RouteCache {
    static CACHES: OnceLock<Mutex<HashMap<String, Weak<Mutex<Routes>>>>> = OnceLock::new();
    let mut caches = CACHES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    caches.retain(|_, cache| cache.strong_count() > 0);
    if let Some(cache) = caches.get(&key).and_then(Weak::upgrade) {
        return cache;
    }
    let cache = RouteCache::default();
    caches.insert(key, Arc::downgrade(&cache));
    cache
}

/// One connection: a ZooKeeper session, replaced when it expires.
pub(crate) struct ZkBackend {
    routes: RouteCache,
    /// Claims whose creation (or release) got no answer (the connection dropped): they may
    /// exist, held by this session, for messages nobody here delivers. Released (if still
    /// ours) before the next claim, so a restart strands nothing.
    uncertain: Mutex<Vec<(String, String)>>,
    settings: Settings,
    paths: Paths,
    current: Mutex<Option<Client>>,
    reconnecting: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    capabilities: Capabilities,
}

impl std::fmt::Debug for ZkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkBackend")
            .field("settings", &self.settings)
            .finish()
    }
}

async fn open_session(settings: &Settings) -> Result<Client> {
    // Not `with_fail_eagerly`: the client must keep cycling through the hosts when a
    // connection drops (a server restart), and the first connect is bounded below.
    let mut connector = Client::connector().with_session_timeout(settings.session_timeout);
    if let Some(digest) = &settings.digest {
        connector = connector.with_auth("digest", digest.expose().as_bytes());
    }
    let connect = connector.connect(&settings.connect_string);
    match tokio::time::timeout(settings.connect_timeout, connect).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(zk_error(e, "connect").with_context("hosts", &settings.connect_string)),
        Err(_) => Err(Error::new(
            ErrorKind::Connection,
            format!("no ZooKeeper session within {:?}", settings.connect_timeout),
        )
        .set_recoverable(true)
        .with_context("hosts", &settings.connect_string)),
    }
}

impl ZkBackend {
    pub(crate) async fn connect(settings: Settings) -> Result<ZkBackend> {
        let client = open_session(&settings).await?;
        info!(hosts = %settings.connect_string, session = ?client.session_id(), "zookeeper session established");
        let paths = Paths::new(settings.root.clone());
        let capabilities = Capabilities {
            max_message_size: Some(crate::max_message_size(settings.jute_maxbuffer)),
            ..crate::CAPABILITIES
        };
        let backend = ZkBackend {
            uncertain: Mutex::new(Vec::new()),
            routes: shared_routes(format!("{}|{}", settings.connect_string, settings.root)),
            settings,
            paths,
            current: Mutex::new(Some(client.clone())),
            reconnecting: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            capabilities,
        };
        if backend.paths.root() != "/" {
            backend.mkdir(&client, backend.paths.root()).await?;
        }
        Ok(backend)
    }

    fn current(&self) -> Option<Client> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The live session, a new one if it expired (watches are set again by the callers'
    /// next listing; the expired session's claims are gone, so nothing is held twice).
    async fn client(&self) -> Result<Client> {
        if let Some(client) = self.current() {
            if !client.state().is_terminated() {
                return Ok(client);
            }
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Closed,
                "the ZooKeeper connection is closed",
            ));
        }
        let _one = self.reconnecting.lock().await;
        if let Some(client) = self.current() {
            if !client.state().is_terminated() {
                return Ok(client);
            }
            warn!(state = %client.state(), "zookeeper session ended; opening a new one");
        }
        let client = open_session(&self.settings).await?;
        info!(session = ?client.session_id(), "zookeeper session re-established");
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        Ok(client)
    }

    async fn mkdir(&self, client: &Client, path: &str) -> Result<()> {
        client
            .mkdir(path, &PERSISTENT)
            .await
            .map_err(|e| zk_error(e, "mkdir").with_context("path", path))
    }

    fn check_size(&self, queue: &str, bytes: usize) -> Result<()> {
        if bytes + REQUEST_OVERHEAD > self.settings.jute_maxbuffer {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "message of {bytes} bytes (as stored) exceeds the server's jute.maxbuffer of {} bytes",
                    self.settings.jute_maxbuffer
                ),
            )
            .with_context("queue", queue));
        }
        Ok(())
    }

    /// Children of `path`, `None` when it does not exist.
    async fn children(&self, client: &Client, path: &str) -> Result<Option<Vec<String>>> {
        match client.list_children(path).await {
            Ok(children) => Ok(Some(children)),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(zk_error(e, "list").with_context("path", path)),
        }
    }

    /// The ready entries of a queue (not claimed), sorted as Kombu serves them.
    async fn ready(&self, client: &Client, queue: &str) -> Result<Option<Vec<String>>> {
        let (qpath, cpath) = (self.paths.queue(queue), self.paths.claims(queue));
        let (entries, claims) = (client.list_children(&qpath), client.list_children(&cpath));
        let entries = match entries.await {
            Ok(e) => e,
            Err(ZkError::NoNode) => return Ok(None),
            Err(e) => return Err(zk_error(e, "list").with_context("queue", queue)),
        };
        let claims: HashSet<String> = match claims.await {
            Ok(c) => c.into_iter().collect(),
            Err(ZkError::NoNode) => HashSet::new(),
            Err(e) => return Err(zk_error(e, "list").with_context("queue", queue)),
        };
        Ok(Some(unclaimed(entries, &claims)))
    }

    /// Claim up to `max - out.len()` of `candidates` (sorted) into `out`: an ephemeral claim
    /// node each (pipelined), then the data of those won (pipelined). A malformed entry is
    /// parked and reported as a `Decode` error after the rest is claimed.
    async fn claim_from(
        &self,
        client: &Client,
        queue: &str,
        candidates: Vec<String>,
        max: usize,
        out: &mut Vec<Claimed>,
    ) -> Result<()> {
        self.release_uncertain(client).await;
        let marker = format!("{:?}", client.session_id());
        let mut first_error: Option<Error> = None;
        let mut next = 0;
        while out.len() < max && next < candidates.len() && first_error.is_none() {
            let want = (max - out.len()).min(candidates.len() - next);
            let batch = &candidates[next..next + want];
            next += want;
            // One `multi` per message: the ephemeral claim plus a persistent "claimed
            // before" marker. The claim failing means another consumer holds it; the
            // marker failing means it was claimed before (by a consumer that died or
            // requeued it): claim it alone then, and mark it redelivered.
            let commits: Vec<_> = batch
                .iter()
                .map(|name| {
                    let mut multi = client.new_multi_writer();
                    let added = multi
                        .add_create(&self.paths.claim(queue, name), marker.as_bytes(), &EPHEMERAL)
                        .and_then(|()| {
                            multi.add_create(&self.paths.delivered(queue, name), &[], &PERSISTENT)
                        });
                    added.map(|()| multi.commit())
                })
                .collect();
            let mut won = Vec::with_capacity(want);
            let mut again = Vec::new();
            for (name, commit) in batch.iter().zip(commits) {
                let result = match commit {
                    Ok(commit) => commit.await,
                    Err(e) => Err(MultiWriteError::RequestFailed { source: e }),
                };
                match result {
                    Ok(_) => won.push((name, false)),
                    Err(MultiWriteError::OperationFailed {
                        index: 0,
                        source: ZkError::NodeExists,
                    }) => {}
                    Err(MultiWriteError::OperationFailed {
                        index: 1,
                        source: ZkError::NodeExists,
                    }) => {
                        again.push(name);
                    }
                    Err(MultiWriteError::OperationFailed {
                        source: ZkError::NoNode,
                        ..
                    }) => {
                        // A directory went away (the queue was deleted meanwhile).
                        for dir in [self.paths.claims(queue), self.paths.delivered_dir(queue)] {
                            if let Err(e) = self.mkdir(client, &dir).await {
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                    Err(e) => {
                        self.maybe_held(queue, name, &e);
                        first_error
                            .get_or_insert(zk_error(ZkError::from(e), "claim").with_context("queue", queue));
                    }
                }
            }
            let again_paths: Vec<String> = again.iter().map(|n| self.paths.claim(queue, n)).collect();
            let creates: Vec<_> = again_paths
                .iter()
                .map(|p| client.create(p, marker.as_bytes(), &EPHEMERAL))
                .collect();
            for (name, create) in again.into_iter().zip(creates) {
                match create.await {
                    Ok(_) => won.push((name, true)),
                    Err(ZkError::NodeExists) => {}
                    Err(e) => {
                        self.maybe_held(queue, name, &MultiWriteError::RequestFailed { source: e.clone() });
                        first_error.get_or_insert(zk_error(e, "claim").with_context("queue", queue));
                    }
                }
            }
            let gets: Vec<_> = won
                .iter()
                .map(|(n, _)| client.get_data(&self.paths.entry(queue, n)))
                .collect();
            for ((name, seen), get) in won.into_iter().zip(gets) {
                match get.await {
                    Ok((data, _)) => match Envelope::from_json(&data) {
                        Ok(mut envelope) => {
                            envelope.redelivered |= seen;
                            out.push(Claimed::held(envelope, name.as_str()));
                        }
                        Err(e) => {
                            self.park(client, queue, name, &data).await;
                            first_error.get_or_insert(
                                e.with_context("queue", queue)
                                    .with_context("entry", name)
                                    .with_context("parked_in", self.paths.malformed(queue)),
                            );
                        }
                    },
                    Err(e) => {
                        // Taken meanwhile by a Python Kombu consumer (NoNode), or trouble:
                        // release the claim either way.
                        self.release(client, queue, name).await;
                        if e != ZkError::NoNode {
                            first_error.get_or_insert(zk_error(e, "get").with_context("queue", queue));
                        }
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn release(&self, client: &Client, queue: &str, name: &str) {
        match client.delete(&self.paths.claim(queue, name), None).await {
            Ok(()) | Err(ZkError::NoNode) => {}
            Err(e) => {
                warn!(queue, entry = name, error = %e, "could not release a claim");
                self.maybe_held(queue, name, &MultiWriteError::RequestFailed { source: e });
            }
        }
    }

    /// Remember a claim whose outcome is unknown (a connection error, not a refusal).
    fn maybe_held(&self, queue: &str, name: &str, error: &MultiWriteError) {
        let source = match error {
            MultiWriteError::RequestFailed { source } | MultiWriteError::OperationFailed { source, .. } => {
                source
            }
        };
        if matches!(
            source,
            ZkError::ConnectionLoss | ZkError::Timeout | ZkError::Throttled | ZkError::SessionMoved
        ) {
            self.uncertain
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((queue.to_owned(), name.to_owned()));
        }
    }

    /// Release the claims of [`uncertain`](Self::uncertain) this session holds.
    async fn release_uncertain(&self, client: &Client) {
        let pending = std::mem::take(&mut *self.uncertain.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return;
        }
        let session = client.session_id().0;
        for (queue, name) in pending {
            let path = self.paths.claim(&queue, &name);
            let outcome = match client.check_stat(&path).await {
                Ok(Some(stat)) if stat.ephemeral_owner == session => {
                    match client.delete(&path, Some(stat.version)).await {
                        Ok(()) | Err(ZkError::NoNode) | Err(ZkError::BadVersion) => Ok(true),
                        Err(e) => Err(e),
                    }
                }
                Ok(_) => Ok(false),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(released) => debug!(queue, entry = %name, released, "settled an uncertain claim"),
                Err(e) => {
                    debug!(queue, entry = %name, error = %e, "uncertain claim still unsettled");
                    self.uncertain
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((queue, name));
                }
            }
        }
    }

    /// Move a malformed entry out of the queue (with its claim) into the malformed subtree.
    async fn park(&self, client: &Client, queue: &str, name: &str, data: &[u8]) {
        let dir = self.paths.malformed(queue);
        let result = async {
            self.mkdir(client, &dir).await?;
            let mut multi = client.new_multi_writer();
            let add = |r: std::result::Result<(), ZkError>| r.map_err(|e| zk_error(e, "park"));
            add(multi.add_create(&format!("{dir}/{name}"), data, &PERSISTENT))?;
            add(multi.add_delete(&self.paths.entry(queue, name), None))?;
            add(multi.add_delete(&self.paths.claim(queue, name), None))?;
            multi
                .commit()
                .await
                .map_err(|e| zk_error(ZkError::from(e), "park"))
        }
        .await;
        match result {
            Ok(_) => warn!(queue, entry = name, parked_in = %dir, "parked a malformed message"),
            Err(e) => {
                warn!(queue, entry = name, error = %e, "could not park a malformed message");
                self.release(client, queue, name).await;
            }
        }
    }

    /// Delete `paths` (pipelined); a missing node is fine. Returns how many were deleted.
    async fn delete_all(&self, client: &Client, paths: &[String]) -> Result<u64> {
        let deletes: Vec<_> = paths.iter().map(|p| client.delete(p, None)).collect();
        let mut deleted = 0;
        let mut first_error = None;
        for delete in deletes {
            match delete.await {
                Ok(()) => deleted += 1,
                Err(ZkError::NoNode) => {}
                Err(e) => {
                    first_error.get_or_insert(zk_error(e, "delete"));
                }
            }
        }
        first_error.map_or(Ok(deleted), Err)
    }

    /// Put a held message back: the entry gets the redelivered envelope and the claim goes,
    /// in one `multi` (the entry keeps its name, so its place in the queue).
    async fn requeue_items(&self, items: &[(&str, String, &str)]) -> Result<()> {
        let client = self.client().await?;
        for chunk in items.chunks(MULTI_CHUNK / 2) {
            let mut multi = client.new_multi_writer();
            for (queue, json, receipt) in chunk {
                multi
                    .add_set_data(&self.paths.entry(queue, receipt), json.as_bytes(), None)
                    .map_err(|e| zk_error(e, "requeue"))?;
                multi
                    .add_delete(&self.paths.claim(queue, receipt), None)
                    .map_err(|e| zk_error(e, "requeue"))?;
            }
            match multi.commit().await {
                Ok(_) => {}
                Err(MultiWriteError::OperationFailed {
                    source: ZkError::NoNode,
                    ..
                }) => {
                    // An entry was taken by a Python consumer, or a claim went with an old
                    // session: one by one, skipping what is gone.
                    for (queue, json, receipt) in chunk {
                        match client
                            .set_data(&self.paths.entry(queue, receipt), json.as_bytes(), None)
                            .await
                        {
                            Ok(_) | Err(ZkError::NoNode) => {}
                            Err(e) => return Err(zk_error(e, "requeue")),
                        }
                        self.release(&client, queue, receipt).await;
                    }
                }
                Err(e) => return Err(zk_error(ZkError::from(e), "requeue")),
            }
        }
        Ok(())
    }
}

/// The entries not claimed, in Kombu's order (lowest name first).
fn unclaimed(entries: Vec<String>, claims: &HashSet<String>) -> Vec<String> {
    let mut ready: Vec<String> = entries
        .into_iter()
        .filter(|e| e.starts_with(ENTRY) && !claims.contains(e))
        .collect();
    ready.sort_unstable();
    ready
}

/// Send a create for each prepared message at `indices` before awaiting any answer. The
/// outcome of index `i` is at `i`; `None` where nothing was sent.
async fn create_pipelined(
    client: &Client,
    prepared: &[Result<(Arc<str>, String, String)>],
    indices: &[usize],
) -> Vec<Option<std::result::Result<(), ZkError>>> {
    let sends: Vec<_> = indices
        .iter()
        .filter_map(|&i| match &prepared[i] {
            Ok((_, path, json)) => Some((i, client.create(path, json.as_bytes(), &SEQUENTIAL))),
            Err(_) => None,
        })
        .collect();
    let mut outcomes = vec![None; prepared.len()];
    for (i, send) in sends {
        outcomes[i] = Some(send.await.map(drop));
    }
    outcomes
}

impl VirtualBackend for ZkBackend {
    fn name(&self) -> &'static str {
        "zookeeper"
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    #[instrument(level = "debug", skip_all, fields(queue = %queue.name))]
    async fn declare_queue(&self, queue: &Queue, _arguments: &FieldTable) -> Result<()> {
        check_queue_name(&queue.name)?;
        let client = self.client().await?;
        self.mkdir(&client, &self.paths.queue(&queue.name)).await?;
        self.mkdir(&client, &self.paths.claims(&queue.name)).await?;
        self.mkdir(&client, &self.paths.delivered_dir(&queue.name)).await
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        check_queue_name(queue)?;
        let client = self.client().await?;
        client
            .check_stat(&self.paths.queue(queue))
            .await
            .map(|stat| stat.is_some())
            .map_err(|e| zk_error(e, "exists").with_context("queue", queue))
    }

    async fn put(&self, queue: &str, envelope: Envelope) -> Result<()> {
        check_queue_name(queue)?;
        let path = self.paths.new_entry(queue, envelope.priority());
        let json = envelope.to_json();
        self.check_size(queue, path.len() + json.len())?;
        let client = self.client().await?;
        match client.create(&path, json.as_bytes(), &SEQUENTIAL).await {
            Ok(_) => Ok(()),
            Err(ZkError::NoNode) => {
                // Kombu's kazoo queue creates its node on first use; so do we.
                self.mkdir(&client, &self.paths.queue(queue)).await?;
                client
                    .create(&path, json.as_bytes(), &SEQUENTIAL)
                    .await
                    .map(drop)
                    .map_err(|e| zk_error(e, "publish").with_context("queue", queue))
            }
            Err(e) => Err(zk_error(e, "publish").with_context("queue", queue)),
        }
    }

    /// Every create is sent before the first answer is awaited: the client pipelines them on
    /// its one connection and the server applies a session's requests in order, so a batch
    /// costs one round trip and each message keeps its own outcome. Messages to a queue whose
    /// node is missing are sent again, in order, once the node is made.
    async fn put_batch(&self, puts: Vec<(Arc<str>, Envelope)>) -> Vec<Result<()>> {
        let client = match self.client().await {
            Ok(client) => client,
            Err(e) => return puts.iter().map(|_| Err(e.duplicate())).collect(),
        };
        let prepared: Vec<Result<(Arc<str>, String, String)>> = puts
            .into_iter()
            .map(|(queue, envelope)| {
                check_queue_name(&queue)?;
                let path = self.paths.new_entry(&queue, envelope.priority());
                let json = envelope.to_json();
                self.check_size(&queue, path.len() + json.len())?;
                Ok((queue, path, json))
            })
            .collect();
        let every: Vec<usize> = (0..prepared.len()).collect();
        let mut created = create_pipelined(&client, &prepared, &every).await;
        let missing_node: Vec<usize> = every
            .into_iter()
            .filter(|&i| matches!(created[i], Some(Err(ZkError::NoNode))))
            .collect();
        let mut mkdir_failed: HashMap<Arc<str>, Error> = HashMap::new();
        if !missing_node.is_empty() {
            let mut made = HashSet::new();
            for &i in &missing_node {
                let Ok((queue, ..)) = &prepared[i] else { continue };
                if made.insert(queue.clone()) {
                    if let Err(e) = self.mkdir(&client, &self.paths.queue(queue)).await {
                        mkdir_failed.insert(queue.clone(), e);
                    }
                }
            }
            let again: Vec<usize> = missing_node
                .into_iter()
                .filter(|&i| matches!(&prepared[i], Ok((q, ..)) if !mkdir_failed.contains_key(q)))
                .collect();
            let resent = create_pipelined(&client, &prepared, &again).await;
            for i in again {
                created[i] = resent[i].clone();
            }
        }
        prepared
            .into_iter()
            .zip(created)
            .map(|(ready, outcome)| {
                let (queue, ..) = ready?;
                match outcome {
                    Some(Ok(())) => Ok(()),
                    Some(Err(ZkError::NoNode)) if mkdir_failed.contains_key(&queue) => {
                        Err(mkdir_failed[&queue].duplicate())
                    }
                    Some(Err(e)) => Err(zk_error(e, "publish").with_context("queue", &queue)),
                    None => Err(Error::new(
                        ErrorKind::Unexpected,
                        "a batch publish finished without an outcome",
                    )),
                }
            })
            .collect()
    }

    async fn get(&self, queue: &str) -> Result<Option<Claimed>> {
        let mut out = Vec::with_capacity(1);
        self.get_batch(queue, 1, &mut out).await?;
        Ok(out.pop())
    }

    async fn get_batch(&self, queue: &str, max: usize, out: &mut Vec<Claimed>) -> Result<()> {
        check_queue_name(queue)?;
        let client = self.client().await?;
        let Some(ready) = self.ready(&client, queue).await? else {
            return Ok(());
        };
        let before = out.len();
        match self.claim_from(&client, queue, ready, max, out).await {
            // What was claimed is delivered; the error (a parked malformed entry) comes with
            // the next empty-handed take.
            Err(e) if out.len() > before => {
                warn!(error = %e, queue, "claimed with an error");
                Ok(())
            }
            other => other,
        }
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        check_queue_name(queue)?;
        let client = self.client().await?;
        let Some(ready) = self.ready(&client, queue).await? else {
            return Ok(0);
        };
        let paths: Vec<String> = ready.iter().map(|n| self.paths.entry(queue, n)).collect();
        let purged = self.delete_all(&client, &paths).await?;
        let markers: Vec<String> = ready.iter().map(|n| self.paths.delivered(queue, n)).collect();
        self.delete_all(&client, &markers).await?;
        Ok(purged)
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        check_queue_name(queue)?;
        let client = self.client().await?;
        Ok(self
            .ready(&client, queue)
            .await?
            .map_or(0, |ready| ready.len() as u64))
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        check_queue_name(queue)?;
        let client = self.client().await?;
        let (qpath, cpath) = (self.paths.queue(queue), self.paths.claims(queue));
        let dpath = self.paths.delivered_dir(queue);
        if let Some(markers) = self.children(&client, &dpath).await? {
            let paths: Vec<String> = markers.iter().map(|n| format!("{dpath}/{n}")).collect();
            self.delete_all(&client, &paths).await?;
        }
        self.delete_all(&client, &[dpath]).await?;
        for _ in 0..5 {
            if let Some(entries) = self.children(&client, &qpath).await? {
                let paths: Vec<String> = entries.iter().map(|n| format!("{qpath}/{n}")).collect();
                self.delete_all(&client, &paths).await?;
            }
            if let Some(claims) = self.children(&client, &cpath).await? {
                let paths: Vec<String> = claims.iter().map(|n| format!("{cpath}/{n}")).collect();
                self.delete_all(&client, &paths).await?;
            }
            let done = match (
                client.delete(&cpath, None).await,
                client.delete(&qpath, None).await,
            ) {
                (Ok(()) | Err(ZkError::NoNode), Ok(()) | Err(ZkError::NoNode)) => true,
                (Err(ZkError::NotEmpty), _) | (_, Err(ZkError::NotEmpty)) => false,
                (Err(e), _) | (_, Err(e)) => {
                    return Err(zk_error(e, "delete queue").with_context("queue", queue))
                }
            };
            if done {
                return Ok(());
            }
        }
        Err(Error::new(
            ErrorKind::PreconditionFailed,
            "queue kept getting new messages while being deleted",
        )
        .with_context("queue", queue))
    }

    fn polling_interval(&self) -> Duration {
        self.settings.polling_interval
    }

    /// Ends the session: every claim still held goes with it (the channels restored their
    /// unacked messages already).
    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let client = self.current.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(client);
        Ok(())
    }

    fn receipts(&self) -> Option<&impl Receipts> {
        Some(self)
    }

    fn stored_bindings(&self) -> Option<&impl StoredBindings> {
        Some(self)
    }

    fn claiming_wait(&self) -> Option<&impl ClaimingWait> {
        Some(self)
    }
}

impl ClaimingWait for ZkBackend {
    /// Lists the queue and its claims with child watches, claims what is ready, and if there
    /// is nothing waits for either watch (a new entry, a released claim) or the timeout.
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        timeout: Duration,
        out: &mut Vec<Claimed>,
    ) -> Result<()> {
        check_queue_name(queue)?;
        let deadline = Instant::now() + timeout;
        let (qpath, cpath) = (self.paths.queue(queue), self.paths.claims(queue));
        loop {
            let client = self.client().await?;
            let entries = client.list_and_watch_children(&qpath);
            let claims = client.list_and_watch_children(&cpath);
            let (entries, entries_changed) = match entries.await {
                Ok(listed) => listed,
                Err(ZkError::NoNode) => {
                    self.mkdir(&client, &qpath).await?;
                    continue;
                }
                Err(e) => return Err(zk_error(e, "watch").with_context("queue", queue)),
            };
            let (claims, claims_changed) = match claims.await {
                Ok(listed) => listed,
                Err(ZkError::NoNode) => {
                    self.mkdir(&client, &cpath).await?;
                    self.mkdir(&client, &self.paths.delivered_dir(queue)).await?;
                    continue;
                }
                Err(e) => return Err(zk_error(e, "watch").with_context("queue", queue)),
            };
            let claims: HashSet<String> = claims.into_iter().collect();
            let ready = unclaimed(entries, &claims);
            self.claim_from(&client, queue, ready, max, out).await?;
            if !out.is_empty() {
                return Ok(());
            }
            tokio::select! {
                event = entries_changed.changed() => debug!(queue, ?event, "queue changed"),
                event = claims_changed.changed() => debug!(queue, ?event, "claims changed"),
                () = tokio::time::sleep_until(deadline) => return Ok(()),
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
        }
    }
}

impl Receipts for ZkBackend {
    /// Deletes each entry and its claim, many per `multi`.
    async fn ack_batch(&self, batch: &[Settle]) -> Result<()> {
        let client = self.client().await?;
        for chunk in batch.chunks(MULTI_CHUNK / 3) {
            let mut multi = client.new_multi_writer();
            for settle in chunk {
                multi
                    .add_delete(&self.paths.entry(settle.queue(), settle.receipt()), None)
                    .map_err(|e| zk_error(e, "ack"))?;
                multi
                    .add_delete(&self.paths.claim(settle.queue(), settle.receipt()), None)
                    .map_err(|e| zk_error(e, "ack"))?;
                multi
                    .add_delete(&self.paths.delivered(settle.queue(), settle.receipt()), None)
                    .map_err(|e| zk_error(e, "ack"))?;
            }
            match multi.commit().await {
                Ok(_) => {}
                Err(MultiWriteError::OperationFailed {
                    source: ZkError::NoNode,
                    ..
                }) => {
                    // Something was gone already (a Python consumer took the entry, the
                    // claim went with an expired session): one by one.
                    let paths: Vec<String> = chunk
                        .iter()
                        .flat_map(|s| {
                            [
                                self.paths.entry(s.queue(), s.receipt()),
                                self.paths.claim(s.queue(), s.receipt()),
                                self.paths.delivered(s.queue(), s.receipt()),
                            ]
                        })
                        .collect();
                    self.delete_all(&client, &paths).await?;
                }
                Err(e) => return Err(zk_error(ZkError::from(e), "ack")),
            }
        }
        Ok(())
    }

    async fn requeue(&self, queue: &str, envelope: Envelope, receipt: &str) -> Result<()> {
        self.requeue_items(&[(queue, envelope.to_json(), receipt)]).await
    }

    async fn requeue_batch(&self, batch: Vec<Requeue>) -> Result<()> {
        let items: Vec<(&str, String, &str)> = batch
            .iter()
            .map(|r| (r.queue(), r.envelope().to_json(), r.receipt()))
            .collect();
        self.requeue_items(&items).await
    }

    /// Claims live as long as the session: nothing to renew.
    async fn renew(&self, _receipts: &[&str]) -> Result<()> {
        Ok(())
    }

    fn renewal_interval(&self) -> Option<Duration> {
        None
    }
}

fn binding_arguments(arguments: &FieldTable) -> Result<String> {
    serde_json::to_string(arguments).map_err(|e| {
        Error::new(ErrorKind::Encode, "binding arguments cannot be stored as JSON").with_source(e)
    })
}

impl ZkBackend {
    fn cached_routes(&self, exchange: &str) -> Option<Option<StoredRoutes>> {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exchange)
            .cloned()
    }

    fn forget_routes(&self, exchange: &str) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(exchange);
    }

    /// Cache what was read, then evict it when either watch fires (a watch that fired
    /// before this point fires at once, so nothing stale stays).
    fn cache_routes(
        &self,
        exchange: &str,
        routes: Option<StoredRoutes>,
        node_changed: OneshotWatcher,
        bindings_changed: Option<OneshotWatcher>,
    ) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(exchange.to_owned(), routes);
        let cache = Arc::downgrade(&self.routes);
        let exchange = exchange.to_owned();
        tokio::spawn(async move {
            match bindings_changed {
                Some(bindings_changed) => {
                    tokio::select! {
                        _ = node_changed.changed() => {}
                        _ = bindings_changed.changed() => {}
                    }
                }
                None => {
                    node_changed.changed().await;
                }
            }
            if let Some(cache) = cache.upgrade() {
                cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&exchange);
            }
        });
    }

    /// Create the exchange node with its type, unless it exists.
    async fn ensure_exchange(&self, client: &Client, exchange: &Exchange, overwrite: bool) -> Result<()> {
        let path = self.paths.exchange(&exchange.name);
        let kind = exchange.kind.as_str().as_bytes();
        for attempt in 0..2 {
            match client.create(&path, kind, &PERSISTENT).await {
                Ok(_) => return Ok(()),
                Err(ZkError::NodeExists) if overwrite => {
                    return client
                        .set_data(&path, kind, None)
                        .await
                        .map(drop)
                        .map_err(|e| zk_error(e, "declare exchange"))
                }
                Err(ZkError::NodeExists) => return Ok(()),
                Err(ZkError::NoNode) if attempt == 0 => self.mkdir(client, &self.paths.exchanges()).await?,
                Err(e) => {
                    return Err(zk_error(e, "declare exchange").with_context("exchange", &exchange.name))
                }
            }
        }
        Ok(())
    }
}

impl StoredBindings for ZkBackend {
    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        if exchange.name.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let result = self.ensure_exchange(&client, exchange, true).await;
        self.forget_routes(&exchange.name);
        result
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<()> {
        let client = self.client().await?;
        let path = self.paths.exchange(exchange);
        if let Some(bindings) = self.children(&client, &path).await? {
            let paths: Vec<String> = bindings.iter().map(|b| format!("{path}/{b}")).collect();
            self.delete_all(&client, &paths).await?;
        }
        let result = self.delete_all(&client, &[path]).await.map(drop);
        self.forget_routes(exchange);
        result
    }

    async fn store_binding(&self, exchange: &Exchange, binding: &StoredBinding) -> Result<()> {
        let client = self.client().await?;
        self.ensure_exchange(&client, exchange, false).await?;
        let arguments = binding_arguments(&binding.arguments)?;
        let path = self
            .paths
            .binding(&exchange.name, &binding.queue, &binding.routing_key, &arguments);
        let data = json!({
            "queue": binding.queue,
            "routing_key": binding.routing_key,
            "arguments": binding.arguments,
        })
        .to_string();
        let result = match client.create(&path, data.as_bytes(), &PERSISTENT).await {
            Ok(_) | Err(ZkError::NodeExists) => Ok(()),
            Err(e) => Err(zk_error(e, "bind").with_context("exchange", &exchange.name)),
        };
        self.forget_routes(&exchange.name);
        result
    }

    /// From the process's route cache, else read with watches that evict it on any change.
    async fn load_bindings(&self, exchange: &str) -> Result<Option<StoredRoutes>> {
        if let Some(hit) = self.cached_routes(exchange) {
            return Ok(hit);
        }
        let client = self.client().await?;
        let path = self.paths.exchange(exchange);
        let failed = |e: ZkError| zk_error(e, "load bindings").with_context("exchange", exchange);
        let (stat, node_changed) = client.check_and_watch_stat(&path).await.map_err(failed)?;
        if stat.is_none() {
            self.cache_routes(exchange, None, node_changed, None);
            return Ok(None);
        }
        let (node, listed) = (client.get_data(&path), client.list_and_watch_children(&path));
        let kind = match node.await {
            Ok((data, _)) => std::str::from_utf8(&data)
                .ok()
                .filter(|k| !k.is_empty())
                .and_then(|k| k.parse::<ExchangeType>().ok()),
            Err(ZkError::NoNode) => return Ok(None),
            Err(e) => return Err(failed(e)),
        };
        let (children, bindings_changed) = match listed.await {
            Ok(listed) => listed,
            Err(ZkError::NoNode) => return Ok(None),
            Err(e) => return Err(failed(e)),
        };
        let gets: Vec<_> = children
            .iter()
            .map(|c| client.get_data(&format!("{path}/{c}")))
            .collect();
        let mut bindings = Vec::with_capacity(gets.len());
        for get in gets {
            let data = match get.await {
                Ok((data, _)) => data,
                Err(ZkError::NoNode) => continue,
                Err(e) => return Err(failed(e)),
            };
            bindings.push(parse_binding(&data).map_err(|e| e.with_context("exchange", exchange))?);
        }
        let routes = Some(StoredRoutes { kind, bindings });
        self.cache_routes(exchange, routes.clone(), node_changed, Some(bindings_changed));
        Ok(routes)
    }

    async fn remove_binding(&self, exchange: &str, binding: &StoredBinding) -> Result<()> {
        let client = self.client().await?;
        let arguments = binding_arguments(&binding.arguments)?;
        let path = self
            .paths
            .binding(exchange, &binding.queue, &binding.routing_key, &arguments);
        let result = self.delete_all(&client, &[path]).await.map(drop);
        self.forget_routes(exchange);
        result
    }
}

fn parse_binding(data: &[u8]) -> Result<StoredBinding> {
    let bad = |why: &str| Error::new(ErrorKind::Decode, format!("stored binding is malformed: {why}"));
    let value: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| bad("not JSON").with_source(e))?;
    let text = |key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| bad(key))
    };
    let arguments: FieldTable = match value.get("arguments") {
        None | Some(serde_json::Value::Null) => FieldTable::default(),
        Some(a) => serde_json::from_value(a.clone()).map_err(|e| bad("arguments").with_source(e))?,
    };
    Ok(StoredBinding {
        queue: text("queue")?,
        routing_key: text("routing_key")?,
        arguments,
    })
}
