//! [`Waiter`]: one connection that watches every consumed list of a backend, whatever their
//! number, and wakes the dispatchers when one may hold a message.
//!
//! ## Why client-side tracking
//!
//! A blocking `BLMOVE list list` (or `BRPOP`) holds its connection, and Redis offers no
//! blocking command that watches many lists *without taking*: `BLMPOP`/`BRPOP` over many keys
//! would pop, which is the loss window the claim script exists to close. Keyspace
//! notifications need `notify-keyspace-events` set on the server. RESP3 client-side tracking
//! needs nothing from the server (Redis ≥ 6): after `CLIENT TRACKING ON`, the server
//! remembers every key this connection *read* and pushes one `invalidate` message on this
//! same connection when another client (Python Kombu's `LPUSH` included) modifies it. So:
//!
//! * the waiter reads every watched list with a pipelined `LLEN`, which both registers the
//!   keys for tracking and tells which lists already hold messages (the dispatchers are woken
//!   for those);
//! * an invalidation marks its keys *unknown*, wakes the dispatchers at once (the claim that
//!   follows is the only take, so the wake-up itself never takes anything, and a consumer
//!   killed at any point loses nothing) and queues a re-read, because tracking is one-shot;
//! * an invalidation without keys (a `FLUSHDB`, or the server's tracking table overflowing)
//!   and a reconnect (tracking is lost with the connection) re-read everything;
//! * every `polling_interval` everything is re-read anyway, so a lost push can only delay a
//!   wake-up, never lose one; keys no dispatcher asked for lately are dropped then.
//!
//! ## What it saves the dispatcher
//!
//! A list the waiter read as empty, with no invalidation since, *is* empty: Redis would have
//! pushed an invalidation on the first write after the read. [`Waiter::known_empty`] lets the
//! dispatcher skip the claim round trip for such a queue, so a consumer of 1,000 idle queues
//! does not run 1,000 claim scripts per polling interval, and a message on the last of them is
//! claimed without first polling the other 999. While the waiter is not connected nothing is
//! known empty and the dispatcher polls every queue, as it would without a waiter.
//!
//! A read's answer is only trusted for keys not invalidated while it was in flight (each key
//! has a generation bumped by every invalidation and local write), so an invalidation that is
//! handled before the reply that preceded it cannot leave a list wrongly marked empty.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind};
use tokio::sync::Notify;
use tracing::{debug, warn};

/// The longest pause between two connection attempts while the server is away.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(2);
/// The pause before asking again a server that refused tracking.
const REFUSED_PAUSE: Duration = Duration::from_secs(60);
/// A queue no dispatcher waited on for this many polling intervals stops being watched.
const UNWANTED_AFTER_INTERVALS: u32 = 4;
/// Keys read per pipelined round trip (bounds one reply's size at any number of queues).
const READ_CHUNK: usize = 1024;

/// How the waiter connects: a RESP3 client and the settings it needs.
pub(crate) struct WaiterConfig {
    /// A client whose connection info asks for RESP3 (pushes need it).
    pub(crate) client: redis::Client,
    /// `CLIENT SETNAME` of the waiter connection, so it can be told apart in `CLIENT LIST`.
    pub(crate) name: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    /// The safety re-read period (Kombu's `polling_interval`).
    pub(crate) polling_interval: Duration,
}

/// The handle a backend keeps; the connection lives in a task started on the first watch
/// (and started again by the next watch should its runtime have gone away).
pub(crate) struct Waiter {
    shared: Arc<Shared>,
    config: Arc<WaiterConfig>,
}

struct Shared {
    state: Mutex<State>,
    /// The dispatchers' signal (the backend's `wakeup`).
    arrived: Arc<Notify>,
    /// Wakes the waiter task: keys to read, a disconnection, or close.
    work: Notify,
    closed: AtomicBool,
    /// A task serves the waiter (cleared by the task's [`Running`] guard however it ends).
    running: AtomicBool,
    /// Whether refused tracking was already logged as a warning (it is then only debug).
    warned: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Which connection the state describes; pushes of an older one are ignored.
    epoch: u64,
    /// Connected with tracking on: only then is anything known empty.
    online: bool,
    /// Watched queues: their list keys and when a dispatcher last waited on them.
    queues: HashMap<String, WatchedQueue>,
    /// Every watched list key.
    keys: HashMap<String, WatchedKey>,
    /// Keys to (re)read.
    pending: HashSet<String>,
}

struct WatchedQueue {
    keys: Vec<String>,
    wanted_at: Instant,
    /// How many of `keys` are not known empty: the dispatcher asks [`Waiter::known_empty`]
    /// for every consumed queue on every turn, so that answer is one lookup.
    unsettled: usize,
}

struct WatchedKey {
    /// Bumped by every invalidation or local write: a read started before is not trusted.
    generation: u64,
    known: Known,
    /// The watched queues with this list (normally one).
    queues: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Known {
    /// Not read since the last change (or never): a claim must look.
    Unknown,
    /// Read empty, tracked, not invalidated since.
    Empty,
    /// Read non-empty.
    Holding,
}

impl Waiter {
    pub(crate) fn new(config: WaiterConfig, arrived: Arc<Notify>) -> Waiter {
        Waiter {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                arrived,
                work: Notify::new(),
                closed: AtomicBool::new(false),
                running: AtomicBool::new(false),
                warned: AtomicBool::new(false),
            }),
            config: Arc::new(config),
        }
    }

    /// Watch `queue`, whose lists are `keys()` (called only for a queue not yet watched):
    /// the dispatchers call this on every idle turn, which also keeps the queue wanted.
    /// Starts the waiter connection on the first call (so a publisher never opens one).
    pub(crate) fn watch(&self, queue: &str, keys: impl FnOnce() -> Vec<String>) {
        if self.shared.closed.load(Ordering::Acquire) {
            return;
        }
        let added = {
            let mut state = self.shared.lock();
            state.watch(queue, keys)
        };
        self.start();
        if added {
            self.shared.work.notify_one();
        }
    }

    /// Whether every list of `queue` is known to be empty: read empty by the waiter, tracked
    /// on a live connection, and neither invalidated nor written here since. `false` when in
    /// doubt, so the caller then asks Redis.
    pub(crate) fn known_empty(&self, queue: &str) -> bool {
        let state = self.shared.lock();
        if !state.online {
            return false;
        }
        state.queues.get(queue).is_some_and(|w| w.unsettled == 0)
    }

    /// This connection wrote to `queue`'s lists: they are no longer known empty (the
    /// invalidation Redis sends for the write comes a little later).
    pub(crate) fn touched(&self, queue: &str) {
        let mut state = self.shared.lock();
        let Some(watched) = state.queues.get(queue) else {
            return;
        };
        let keys = watched.keys.clone();
        for key in keys {
            state.invalidate(&key);
        }
    }

    /// Stop the task and drop its connection.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.work.notify_one();
    }

    fn start(&self) {
        if !self.shared.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(run(self.shared.clone(), self.config.clone()));
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A push from the connection of `epoch` (called by the connection's reader, so it only
    /// updates state and signals).
    fn on_push(&self, epoch: u64, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => {
                let mut state = self.lock();
                if state.epoch != epoch {
                    return;
                }
                match push.data.first() {
                    Some(redis::Value::Array(keys)) => {
                        for key in keys {
                            if let Some(key) = key_name(key) {
                                state.invalidate(&key);
                                state.pending.insert(key);
                            }
                        }
                    }
                    // `null`: the server flushed its tracking table (FLUSHDB, or the table
                    // overflowed). Every key may have changed.
                    _ => state.invalidate_all(),
                }
                drop(state);
                // Wake the dispatchers at once (they claim; the wake-up takes nothing), and
                // the waiter to re-read, which re-arms tracking.
                self.arrived.notify_waiters();
                self.work.notify_one();
            }
            PushKind::Disconnection => {
                let mut state = self.lock();
                if state.epoch == epoch {
                    state.online = false;
                }
                drop(state);
                self.work.notify_one();
            }
            _ => {}
        }
    }
}

fn key_name(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl State {
    fn watch(&mut self, queue: &str, keys: impl FnOnce() -> Vec<String>) -> bool {
        let now = Instant::now();
        if let Some(watched) = self.queues.get_mut(queue) {
            watched.wanted_at = now;
            return false;
        }
        let keys = keys();
        let mut unsettled = 0;
        for key in &keys {
            let entry = self.keys.entry(key.clone()).or_insert(WatchedKey {
                generation: 0,
                known: Known::Unknown,
                queues: Vec::new(),
            });
            if entry.queues.is_empty() {
                self.pending.insert(key.clone());
            }
            entry.queues.push(queue.to_owned());
            if entry.known != Known::Empty {
                unsettled += 1;
            }
        }
        self.queues.insert(
            queue.to_owned(),
            WatchedQueue {
                keys,
                wanted_at: now,
                unsettled,
            },
        );
        true
    }

    /// Set what is known of `key`, keeping its queues' `unsettled` counts.
    fn set_known(&mut self, key: &str, known: Known) {
        let Some(watched) = self.keys.get_mut(key) else {
            return;
        };
        let was_empty = watched.known == Known::Empty;
        watched.known = known;
        let is_empty = known == Known::Empty;
        if was_empty == is_empty {
            return;
        }
        for queue in &watched.queues {
            if let Some(q) = self.queues.get_mut(queue) {
                if is_empty {
                    q.unsettled = q.unsettled.saturating_sub(1);
                } else {
                    q.unsettled += 1;
                }
            }
        }
    }

    fn invalidate(&mut self, key: &str) {
        if let Some(watched) = self.keys.get_mut(key) {
            watched.generation += 1;
            self.set_known(key, Known::Unknown);
        }
    }

    fn invalidate_all(&mut self) {
        for watched in self.keys.values_mut() {
            watched.generation += 1;
            watched.known = Known::Unknown;
        }
        for queue in self.queues.values_mut() {
            queue.unsettled = queue.keys.len();
        }
        self.pending.extend(self.keys.keys().cloned());
    }

    /// Forget the queues no dispatcher waited on since `before`.
    fn drop_unwanted(&mut self, before: Instant) {
        let stale: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, w)| w.wanted_at < before)
            .map(|(q, _)| q.clone())
            .collect();
        for queue in stale {
            let Some(watched) = self.queues.remove(&queue) else {
                continue;
            };
            for key in watched.keys {
                let gone = self.keys.get_mut(&key).is_some_and(|w| {
                    w.queues.retain(|q| *q != queue);
                    w.queues.is_empty()
                });
                if gone {
                    // Its tracking entry on the server fires once more at most; ignored.
                    self.keys.remove(&key);
                    self.pending.remove(&key);
                }
            }
        }
    }

    /// The keys to read now, with their generations.
    fn take_pending(&mut self) -> Vec<(String, u64)> {
        let pending = std::mem::take(&mut self.pending);
        pending
            .into_iter()
            .filter_map(|key| {
                let generation = self.keys.get(&key)?.generation;
                Some((key, generation))
            })
            .collect()
    }

    /// Record what a read found; whether a list holds messages. A key invalidated since the
    /// read started is queued again instead.
    fn apply(&mut self, read: &[(String, u64)], lengths: &[i64]) -> bool {
        let mut holding = false;
        for ((key, generation), len) in read.iter().zip(lengths) {
            let Some(watched) = self.keys.get(key) else {
                continue;
            };
            if watched.generation != *generation {
                self.pending.insert(key.clone());
                continue;
            }
            let known = if *len > 0 {
                holding = true;
                Known::Holding
            } else {
                Known::Empty
            };
            self.set_known(key, known);
        }
        holding
    }
}

/// The waiter task: connect, turn tracking on, read, wait for pushes; again after a
/// disconnection, until closed.
async fn run(shared: Arc<Shared>, config: Arc<WaiterConfig>) {
    // However the task ends (closed, or dropped with its runtime), nothing stays known empty
    // on the word of a connection nobody serves, and the next watch starts a new task.
    let _running = Running(shared.clone());
    let mut pause = Duration::from_millis(100);
    while !shared.closed.load(Ordering::Acquire) {
        let epoch = {
            let mut state = shared.lock();
            state.epoch += 1;
            state.online = false;
            state.epoch
        };
        match connect(&shared, &config, epoch).await {
            Ok(conn) => {
                pause = Duration::from_millis(100);
                {
                    // Tracking starts empty on a new connection: nothing is known, read all.
                    let mut state = shared.lock();
                    state.invalidate_all();
                    state.online = state.epoch == epoch;
                }
                if let Err(e) = serve(&shared, &config, conn, epoch).await {
                    debug!(error = %e, "the Redis waiter connection failed; reconnecting");
                }
                shared.lock().online = false;
            }
            Err(e) => {
                debug!(error = %e, "cannot open the Redis waiter connection");
                // A server that answers but refuses (no tracking before Redis 6, an ACL) is
                // asked again rarely; one that is away, soon.
                let away = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout();
                let wait = if away { pause } else { REFUSED_PAUSE };
                // Closing cuts the pause short (the loop then ends).
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shared.work.notified() => {}
                }
                pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
            }
        }
    }
}

/// Clears `running` and `online` when the waiter task ends.
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.lock().online = false;
        self.0.running.store(false, Ordering::Release);
    }
}

async fn connect(
    shared: &Arc<Shared>,
    config: &WaiterConfig,
    epoch: u64,
) -> redis::RedisResult<MultiplexedConnection> {
    let pushes = Arc::downgrade(shared);
    let connection_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        .set_push_sender(move |push: PushInfo| match pushes.upgrade() {
            Some(shared) => {
                shared.on_push(epoch, push);
                Ok(())
            }
            None => Err(()),
        });
    let mut conn = config
        .client
        .get_multiplexed_async_connection_with_config(&connection_config)
        .await?;
    let mut pipe = redis::pipe();
    pipe.cmd("CLIENT")
        .arg("SETNAME")
        .arg(&config.name)
        .ignore()
        .cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .ignore();
    let result: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
    if let Err(e) = result {
        // Redis < 6 (no tracking) lands here too: consumers then poll every queue at
        // `polling_interval`, as without a waiter.
        if !shared.warned.swap(true, Ordering::Relaxed) {
            warn!(error = %e, "Redis refused client-side tracking; consumers fall back to polling");
        }
        return Err(e);
    }
    Ok(conn)
}

/// Read what is pending and wait for more, until the connection fails or the waiter closes.
async fn serve(
    shared: &Shared,
    config: &WaiterConfig,
    mut conn: MultiplexedConnection,
    epoch: u64,
) -> redis::RedisResult<()> {
    let mut next_sweep = Instant::now() + config.polling_interval;
    loop {
        let work = shared.work.notified();
        tokio::pin!(work);
        work.as_mut().enable();
        if shared.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let batch = {
            let mut state = shared.lock();
            if state.epoch != epoch || !state.online {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the waiter connection was closed",
                )));
            }
            state.take_pending()
        };
        if !batch.is_empty() {
            read(shared, &mut conn, &batch).await?;
            continue;
        }
        tokio::select! {
            _ = &mut work => {}
            _ = tokio::time::sleep_until(next_sweep.into()) => {
                next_sweep = Instant::now() + config.polling_interval;
                let mut state = shared.lock();
                let unwanted = config.polling_interval * UNWANTED_AFTER_INTERVALS;
                if let Some(before) = Instant::now().checked_sub(unwanted.max(Duration::from_secs(2))) {
                    state.drop_unwanted(before);
                }
                // The safety re-read: a lost push delays a wake-up by one interval at most.
                let keys: Vec<String> = state.keys.keys().cloned().collect();
                state.pending.extend(keys);
            }
        }
    }
}

/// `LLEN` every key of `batch` (which also tracks it), record the answers and wake the
/// dispatchers if a list holds messages.
async fn read(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    batch: &[(String, u64)],
) -> redis::RedisResult<()> {
    let mut holding = false;
    for chunk in batch.chunks(READ_CHUNK) {
        let mut pipe = redis::pipe();
        for (key, _) in chunk {
            pipe.llen(key);
        }
        let lengths: Vec<i64> = pipe.query_async(conn).await.inspect_err(|_| {
            // Whatever was not read is read again after the reconnect (all of it).
            shared.lock().online = false;
        })?;
        holding |= shared.lock().apply(chunk, &lengths);
    }
    if holding {
        shared.arrived.notify_waiters();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(queue: &str) -> Vec<String> {
        vec![queue.to_owned(), format!("{queue}\x06\x163")]
    }

    #[test]
    fn a_key_invalidated_during_its_read_is_not_trusted() {
        let mut state = State {
            online: true,
            ..State::default()
        };
        assert!(state.watch("q", || keys("q")));
        let read = state.take_pending();
        assert_eq!(read.len(), 2);
        state.invalidate("q");
        let holding = state.apply(&read, &[0, 0]);
        assert!(!holding);
        assert_eq!(state.keys["q"].known, Known::Unknown, "invalidated mid-read");
        assert_eq!(state.keys["q\x06\x163"].known, Known::Empty);
        assert!(state.pending.contains("q"), "read again");
    }

    #[test]
    fn unwanted_queues_are_dropped_but_shared_keys_stay() {
        let mut state = State::default();
        state.watch("a", || vec!["k".to_owned(), "a".to_owned()]);
        let later = Instant::now() + Duration::from_millis(5);
        state.watch("b", || vec!["k".to_owned()]);
        if let Some(b) = state.queues.get_mut("b") {
            b.wanted_at = later + Duration::from_secs(1);
        }
        state.drop_unwanted(later);
        assert!(!state.queues.contains_key("a"));
        assert!(state.keys.contains_key("k"), "still used by b");
        assert!(!state.keys.contains_key("a"));
    }

    #[test]
    fn a_queue_is_settled_only_while_all_its_lists_are_known_empty() {
        let mut state = State::default();
        state.watch("q", || keys("q"));
        state.watch("p", || vec!["q".to_owned()]); // shares a list with q
        assert_eq!(state.queues["q"].unsettled, 2, "nothing read yet");
        let read = state.take_pending();
        assert_eq!(read.len(), 2, "a shared list is read once");
        state.apply(&read, &[0, 0]);
        assert_eq!(state.queues["q"].unsettled, 0);
        assert_eq!(state.queues["p"].unsettled, 0);
        state.invalidate("q");
        assert_eq!(state.queues["q"].unsettled, 1);
        assert_eq!(state.queues["p"].unsettled, 1);
        state.invalidate("q");
        assert_eq!(state.queues["q"].unsettled, 1, "counted once while unknown");
        state.pending.insert("q".to_owned()); // as the invalidation push does
        let read = state.take_pending();
        assert_eq!(read.len(), 1);
        state.apply(&read, &[2]);
        assert_eq!(state.queues["q"].unsettled, 1, "holding messages");
        let read = vec![("q".to_owned(), state.keys["q"].generation)];
        state.apply(&read, &[0]);
        assert_eq!(state.queues["q"].unsettled, 0);
        state.invalidate_all();
        assert_eq!(state.queues["q"].unsettled, 2);
        assert_eq!(state.queues["p"].unsettled, 1);
    }

    #[test]
    fn a_flush_makes_everything_unknown_and_pending() {
        let mut state = State::default();
        state.watch("q", || keys("q"));
        let read = state.take_pending();
        let lengths: Vec<i64> = read.iter().map(|(k, _)| if k == "q" { 0 } else { 3 }).collect();
        assert!(state.apply(&read, &lengths), "a list holds messages");
        assert_eq!(state.keys["q"].known, Known::Empty);
        assert_eq!(state.keys["q\x06\x163"].known, Known::Holding);
        state.invalidate_all();
        assert!(state.keys.values().all(|w| w.known == Known::Unknown));
        assert_eq!(state.pending.len(), 2);
    }
}
