//! The SQL side: one blocking `rusqlite` connection and every statement the transport runs.
//!
//! Kombu's two tables are used exactly as its SQLAlchemy transport uses them (same DDL, same
//! payload, `visible` / `timestamp` / `version` updated the same way), so Python Kombu and
//! kombu-rs share a database file. What Kombu lacks lives in extra tables it never reads:
//! claims with a visibility deadline (crash safety), exchange types and bindings (routing
//! across processes), queue settings (priorities) and rows set aside because their payload
//! is not an envelope.
//!
//! Nothing here is async: a [`Store`] lives on the connection's own thread (see
//! [`crate::worker`]).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kombu_core::virtual_transport::{Claimed, StoredBinding, StoredRoutes};
use kombu_core::{Envelope, Error, ErrorKind, ExchangeType, FieldTable, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::settings::{Location, Settings, Tables};

/// A message row taken by this connection: what `ack` and `requeue` need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Receipt {
    /// `kombu_message.id`.
    pub(crate) id: i64,
    /// `kombu_message.version` after the claim: a requeue only touches the row if nobody
    /// claimed it since (after our claim expired).
    pub(crate) version: i64,
}

impl Receipt {
    pub(crate) fn encode(self) -> String {
        format!("{}:{}", self.id, self.version)
    }

    pub(crate) fn decode(text: &str) -> Result<Receipt> {
        let parsed = text
            .split_once(':')
            .and_then(|(id, version)| Some((id.parse().ok()?, version.parse().ok()?)));
        match parsed {
            Some((id, version)) => Ok(Receipt { id, version }),
            None => {
                Err(Error::new(ErrorKind::Unexpected, "malformed SQLite receipt")
                    .with_context("receipt", text))
            }
        }
    }
}

/// Statements with the table names spliced in once.
struct Sql {
    ensure_queue: String,
    put: String,
    any_ready: String,
    next_fifo: String,
    next_by_priority: String,
    take: String,
    claim: String,
    recover_expired: String,
    forget_expired: String,
    ack_message: String,
    ack_claim: String,
    requeue: String,
    requeue_claim: String,
    renew: String,
    release_messages: String,
    release_claims: String,
    park: String,
    unpark_row: String,
    routes: String,
}

impl Sql {
    fn new(t: &Tables) -> Sql {
        let (q, m, c) = (&t.queue, &t.message, &t.claim);
        let queue_id = format!("(SELECT id FROM {q} WHERE name = ?1)");
        Sql {
            ensure_queue: format!("INSERT OR IGNORE INTO {q} (name) VALUES (?1)"),
            // Kombu: visible=1, timestamp NULL, version 1.
            put: format!(
                "INSERT INTO {m} (visible, timestamp, payload, version, queue_id) VALUES (1, NULL, ?2, 1, {queue_id})"
            ),
            any_ready: format!(
                "SELECT EXISTS (SELECT 1 FROM {m} WHERE queue_id = {queue_id} AND visible = 1) \
                 OR EXISTS (SELECT 1 FROM {c} WHERE deadline_ms <= ?2)"
            ),
            // Ready rows all have timestamp NULL, so this is Kombu's `ORDER BY timestamp, id`.
            next_fifo: format!(
                "SELECT id, payload, version FROM {m} WHERE queue_id = {queue_id} AND visible = 1 \
                 ORDER BY id LIMIT ?2"
            ),
            next_by_priority: format!(
                "SELECT id, payload, version FROM {m} WHERE queue_id = {queue_id} AND visible = 1 \
                 ORDER BY CASE WHEN json_valid(payload) THEN \
                 min(max(CAST(coalesce(json_extract(payload, '$.properties.priority'), 0) AS INTEGER), 0), ?3) \
                 ELSE 0 END DESC, id LIMIT ?2"
            ),
            // Kombu's claim: visible=0, naive local timestamp, version+1.
            take: format!(
                "UPDATE {m} SET visible = 0, \
                 timestamp = strftime('%Y-%m-%d %H:%M:%f', 'now', 'localtime') || '000', \
                 version = version + 1 WHERE id = ?1 AND visible = 1"
            ),
            claim: format!("INSERT OR REPLACE INTO {c} (message_id, owner, deadline_ms) VALUES (?1, ?2, ?3)"),
            recover_expired: format!(
                "UPDATE {m} SET visible = 1, timestamp = NULL \
                 WHERE id IN (SELECT message_id FROM {c} WHERE deadline_ms <= ?1)"
            ),
            forget_expired: format!("DELETE FROM {c} WHERE deadline_ms <= ?1"),
            ack_message: format!("DELETE FROM {m} WHERE id = ?1"),
            ack_claim: format!("DELETE FROM {c} WHERE message_id = ?1"),
            requeue: format!(
                "UPDATE {m} SET visible = 1, timestamp = NULL WHERE id = ?1 AND version = ?2 AND visible = 0"
            ),
            requeue_claim: format!("DELETE FROM {c} WHERE message_id = ?1"),
            renew: format!("UPDATE {c} SET deadline_ms = ?1 WHERE message_id = ?2 AND owner = ?3"),
            release_messages: format!(
                "UPDATE {m} SET visible = 1, timestamp = NULL \
                 WHERE id IN (SELECT message_id FROM {c} WHERE owner = ?1)"
            ),
            release_claims: format!("DELETE FROM {c} WHERE owner = ?1"),
            park: format!(
                "INSERT INTO {} (message_id, queue, payload, error, parked_at) \
                 VALUES (?1, ?2, ?3, ?4, strftime('%Y-%m-%d %H:%M:%f', 'now'))",
                t.malformed
            ),
            unpark_row: format!("DELETE FROM {m} WHERE id = ?1"),
            routes: format!(
                "SELECT (SELECT type FROM {ex} WHERE name = ?1), b.queue, b.routing_key, b.arguments \
                 FROM (SELECT 1) LEFT JOIN {bt} AS b ON b.exchange = ?1 ORDER BY b.rowid",
                ex = t.exchange,
                bt = t.binding
            ),
        }
    }
}

/// One SQLite connection with the transport's statements.
pub(crate) struct Store {
    conn: Connection,
    tables: Tables,
    sql: Sql,
    /// Identifies this connection's claims (renewed while it lives, released when it ends).
    owner: String,
    visibility_timeout: Duration,
    /// `x-max-priority` per queue, as declared (`None`: FIFO).
    priorities: HashMap<String, Option<u8>>,
}

/// Map a SQLite failure to a kombu error: a locked database is a recoverable timeout, a full
/// or broken file a connection error.
pub(crate) fn sql_error(err: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    let kind = match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorKind::Timeout,
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::NotADatabase
            | ErrorCode::DatabaseCorrupt
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied,
        ) => ErrorKind::Connection,
        Some(ErrorCode::TooBig) => ErrorKind::LimitExceeded,
        _ => ErrorKind::Channel,
    };
    Error::new(kind, format!("SQLite: {err}"))
        .with_source(err)
        .with_context("transport", "sqlite")
}

/// A write transaction taken up front (`BEGIN IMMEDIATE`): it waits for other writers here,
/// under the busy timeout, instead of failing at its first write, and no two processes claim
/// the same row.
fn write_transaction(conn: &mut Connection) -> Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Open the database, switch it to WAL and create the tables that are missing.
    pub(crate) fn open(settings: &Settings) -> Result<Store> {
        let conn = match &settings.location {
            Location::File(path) => Connection::open(path),
            Location::Memory => Connection::open_in_memory(),
        }
        .map_err(|e| {
            let err = sql_error(e);
            match &settings.location {
                Location::File(path) => err.with_context("path", path.display()),
                Location::Memory => err,
            }
        })?;
        conn.busy_timeout(settings.busy_timeout).map_err(sql_error)?;
        if matches!(settings.location, Location::File(_)) {
            // WAL: readers never block the writer; NORMAL: durable across a process crash,
            // one fsync per checkpoint rather than per commit.
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
                .map_err(sql_error)?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(%mode, "SQLite refused WAL mode; consumers in other processes may wait on writers");
            }
            // Every commit appends a few whole pages to the WAL; a checkpoint (two fsyncs) every
            // 1000 pages, SQLite's default, would cost more than the commits themselves.
            conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 8192")
                .map_err(sql_error)?;
        }
        let mut store = Store {
            conn,
            sql: Sql::new(&settings.tables),
            tables: settings.tables.clone(),
            owner: uuid::Uuid::new_v4().to_string(),
            visibility_timeout: settings.visibility_timeout,
            priorities: HashMap::new(),
        };
        store.create_schema()?;
        Ok(store)
    }

    fn create_schema(&mut self) -> Result<()> {
        let Tables {
            queue: q,
            message: m,
            exchange,
            binding,
            queue_settings,
            claim,
            malformed,
        } = &self.tables;
        // Kombu's tables exactly as SQLAlchemy creates them on SQLite (kombu-5.7.md §3.5);
        // `IF NOT EXISTS` is not stored, so the schema text is SQLAlchemy's either way.
        let timestamp_id = if m == "kombu_message" {
            "ix_kombu_message_timestamp_id".to_owned()
        } else {
            format!("ix_{m}_timestamp_id")
        };
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {q} (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, \
               name VARCHAR(200), UNIQUE (name));
             CREATE TABLE IF NOT EXISTS {m} (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, visible BOOLEAN, \
               timestamp DATETIME, payload TEXT NOT NULL, version SMALLINT NOT NULL, queue_id INTEGER, \
               CONSTRAINT \"FK_kombu_message_queue\" FOREIGN KEY(queue_id) REFERENCES {q} (id));
             CREATE INDEX IF NOT EXISTS ix_{m}_visible ON {m} (visible);
             CREATE INDEX IF NOT EXISTS ix_{m}_timestamp ON {m} (timestamp);
             CREATE INDEX IF NOT EXISTS {timestamp_id} ON {m} (timestamp, id);
             -- kombu-rs: ready rows of a queue in order, without scanning other queues.
             CREATE INDEX IF NOT EXISTS ix_{m}_rs_ready ON {m} (queue_id, visible, id);
             CREATE TABLE IF NOT EXISTS {claim} (message_id INTEGER NOT NULL PRIMARY KEY, \
               owner TEXT NOT NULL, deadline_ms INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS ix_{claim}_deadline ON {claim} (deadline_ms);
             CREATE INDEX IF NOT EXISTS ix_{claim}_owner ON {claim} (owner);
             CREATE TABLE IF NOT EXISTS {exchange} (name TEXT NOT NULL PRIMARY KEY, type TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS {binding} (exchange TEXT NOT NULL, queue TEXT NOT NULL, \
               routing_key TEXT NOT NULL, arguments TEXT NOT NULL, \
               UNIQUE (exchange, queue, routing_key, arguments));
             CREATE TABLE IF NOT EXISTS {queue_settings} (name TEXT NOT NULL PRIMARY KEY, max_priority INTEGER);
             CREATE TABLE IF NOT EXISTS {malformed} (message_id INTEGER NOT NULL, queue TEXT NOT NULL, \
               payload TEXT NOT NULL, error TEXT NOT NULL, parked_at TEXT NOT NULL);"
        );
        let tx = write_transaction(&mut self.conn)?;
        tx.execute_batch(&ddl).map_err(sql_error)?;
        tx.commit().map_err(sql_error)
    }

    /// Kombu's `_new_queue`, plus the queue's priority setting.
    pub(crate) fn declare_queue(&mut self, name: &str, max_priority: Option<u8>) -> Result<()> {
        let tx = write_transaction(&mut self.conn)?;
        tx.prepare_cached(&self.sql.ensure_queue)
            .and_then(|mut s| s.execute([name]))
            .map_err(sql_error)?;
        let settings = &self.tables.queue_settings;
        let existing: Option<Option<i64>> = tx
            .query_row(
                &format!("SELECT max_priority FROM {settings} WHERE name = ?1"),
                [name],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql_error)?;
        let existing = existing.flatten();
        match (existing, max_priority) {
            (Some(old), Some(new)) if old != i64::from(new) => {
                return Err(Error::new(
                    ErrorKind::NotEquivalent,
                    "queue already declared with a different x-max-priority",
                )
                .with_context("queue", name)
                .with_context("declared", old)
                .with_context("requested", new));
            }
            (None, Some(new)) => {
                tx.execute(
                    &format!("INSERT OR REPLACE INTO {settings} (name, max_priority) VALUES (?1, ?2)"),
                    params![name, new],
                )
                .map_err(sql_error)?;
            }
            _ => {}
        }
        tx.commit().map_err(sql_error)?;
        let effective = max_priority.or(existing.and_then(|p| u8::try_from(p).ok()));
        self.priorities.insert(name.to_owned(), effective);
        Ok(())
    }

    pub(crate) fn queue_exists(&mut self, name: &str) -> Result<bool> {
        self.conn
            .query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {} WHERE name = ?1)",
                    self.tables.queue
                ),
                [name],
                |row| row.get(0),
            )
            .map_err(sql_error)
    }

    /// Insert messages, all in one transaction (group commit). Queues are created on first
    /// put, as Kombu does.
    pub(crate) fn put_many(&mut self, items: &[(&str, &str)]) -> Result<()> {
        let tx = write_transaction(&mut self.conn)?;
        {
            let mut ensure = tx.prepare_cached(&self.sql.ensure_queue).map_err(sql_error)?;
            let mut put = tx.prepare_cached(&self.sql.put).map_err(sql_error)?;
            for (queue, payload) in items {
                ensure.execute([queue]).map_err(sql_error)?;
                put.execute([queue, payload]).map_err(sql_error)?;
            }
        }
        tx.commit().map_err(sql_error)
    }

    fn max_priority(&mut self, queue: &str) -> Result<Option<u8>> {
        if let Some(p) = self.priorities.get(queue) {
            return Ok(*p);
        }
        let stored: Option<Option<i64>> = self
            .conn
            .query_row(
                &format!(
                    "SELECT max_priority FROM {} WHERE name = ?1",
                    self.tables.queue_settings
                ),
                [queue],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql_error)?;
        let p = stored.flatten().and_then(|p| u8::try_from(p).ok());
        self.priorities.insert(queue.to_owned(), p);
        Ok(p)
    }

    /// Take up to `max` ready messages of `queue` (highest priority first on priority queues,
    /// then oldest first) into `out`, under one `BEGIN IMMEDIATE` so two consumers never take
    /// the same row. Claims whose deadline passed are made visible again first.
    ///
    /// A row whose payload is not a Kombu envelope is moved to the malformed table (nothing is
    /// lost, the queue is not blocked); if nothing else was taken that is reported as a
    /// `Decode` error.
    pub(crate) fn claim(&mut self, queue: &str, max: usize, out: &mut Vec<Claimed>) -> Result<()> {
        let now = now_ms();
        // A read first: an idle poll must not take the write lock.
        let anything: bool = self
            .conn
            .prepare_cached(&self.sql.any_ready)
            .and_then(|mut s| s.query_row(params![queue, now], |row| row.get(0)))
            .map_err(sql_error)?;
        if !anything {
            return Ok(());
        }
        let max_priority = self.max_priority(queue)?;
        let deadline = now.saturating_add(millis(self.visibility_timeout));
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let tx = write_transaction(&mut self.conn)?;
        let recovered = tx
            .prepare_cached(&self.sql.recover_expired)
            .and_then(|mut s| s.execute([now]))
            .map_err(sql_error)?;
        if recovered > 0 {
            tx.prepare_cached(&self.sql.forget_expired)
                .and_then(|mut s| s.execute([now]))
                .map_err(sql_error)?;
            tracing::info!(
                messages = recovered,
                "claims past their visibility timeout released (their consumer stopped)"
            );
        }
        let rows: Vec<(i64, String, i64)> = {
            let map = |row: &rusqlite::Row<'_>| Ok((row.get(0)?, row.get(1)?, row.get(2)?));
            match max_priority {
                None => tx
                    .prepare_cached(&self.sql.next_fifo)
                    .and_then(|mut s| s.query_map(params![queue, limit], map)?.collect()),
                Some(p) => tx
                    .prepare_cached(&self.sql.next_by_priority)
                    .and_then(|mut s| s.query_map(params![queue, limit, p], map)?.collect()),
            }
            .map_err(sql_error)?
        };
        let mut malformed: Option<Error> = None;
        let taken_before = out.len();
        {
            let mut take = tx.prepare_cached(&self.sql.take).map_err(sql_error)?;
            let mut claim = tx.prepare_cached(&self.sql.claim).map_err(sql_error)?;
            for (id, payload, version) in rows {
                match Envelope::from_json(payload.as_bytes()) {
                    Ok(mut envelope) => {
                        // Selected in this same write transaction: the row is still ready.
                        take.execute([id]).map_err(sql_error)?;
                        claim
                            .execute(params![id, self.owner, deadline])
                            .map_err(sql_error)?;
                        // Claimed before (restored, requeued or recovered from a crash).
                        envelope.redelivered |= version > 1;
                        let receipt = Receipt {
                            id,
                            version: version + 1,
                        };
                        out.push(Claimed {
                            envelope,
                            receipt: Some(receipt.encode()),
                        });
                    }
                    Err(err) => {
                        tracing::error!(
                            queue,
                            message_id = id,
                            table = %self.tables.malformed,
                            error = %err,
                            "row is not a Kombu envelope; moved aside intact"
                        );
                        tx.prepare_cached(&self.sql.park)
                            .and_then(|mut s| s.execute(params![id, queue, payload, err.to_string()]))
                            .map_err(sql_error)?;
                        tx.prepare_cached(&self.sql.unpark_row)
                            .and_then(|mut s| s.execute([id]))
                            .map_err(sql_error)?;
                        malformed = Some(
                            err.with_context("queue", queue)
                                .with_context("message_id", id)
                                .with_context("moved_to", &self.tables.malformed),
                        );
                    }
                }
            }
        }
        tx.commit().map_err(sql_error)?;
        match malformed {
            Some(err) if out.len() == taken_before => Err(err),
            _ => Ok(()),
        }
    }

    /// Delete acknowledged messages (Kombu keeps them forever; we do not) in one transaction.
    pub(crate) fn ack_many(&mut self, ids: &[i64]) -> Result<()> {
        let tx = write_transaction(&mut self.conn)?;
        {
            let mut message = tx.prepare_cached(&self.sql.ack_message).map_err(sql_error)?;
            let mut claim = tx.prepare_cached(&self.sql.ack_claim).map_err(sql_error)?;
            for id in ids {
                message.execute([id]).map_err(sql_error)?;
                claim.execute([id]).map_err(sql_error)?;
            }
        }
        tx.commit().map_err(sql_error)
    }

    /// Make a claimed message visible again at its old position (before newer messages). A
    /// row claimed by someone else since our claim expired is left alone.
    pub(crate) fn requeue(&mut self, receipt: Receipt) -> Result<bool> {
        let tx = write_transaction(&mut self.conn)?;
        let changed = tx
            .prepare_cached(&self.sql.requeue)
            .and_then(|mut s| s.execute([receipt.id, receipt.version]))
            .map_err(sql_error)?;
        if changed > 0 {
            tx.prepare_cached(&self.sql.requeue_claim)
                .and_then(|mut s| s.execute([receipt.id]))
                .map_err(sql_error)?;
        }
        tx.commit().map_err(sql_error)?;
        Ok(changed > 0)
    }

    /// Push the deadlines of these claims of this connection forward (the core renews what
    /// its consumers still hold): a live consumer keeps its messages however long it works
    /// on them.
    pub(crate) fn renew_claims(&mut self, ids: &[i64]) -> Result<usize> {
        let deadline = now_ms().saturating_add(millis(self.visibility_timeout));
        let tx = write_transaction(&mut self.conn)?;
        let mut renewed = 0;
        {
            let mut renew = tx.prepare_cached(&self.sql.renew).map_err(sql_error)?;
            for id in ids {
                renewed += renew
                    .execute(params![deadline, id, self.owner])
                    .map_err(sql_error)?;
            }
        }
        tx.commit().map_err(sql_error)?;
        Ok(renewed)
    }

    /// Give back every message this connection still holds (the connection is ending).
    pub(crate) fn release_claims(&mut self) -> Result<usize> {
        let tx = write_transaction(&mut self.conn)?;
        let released = tx
            .execute(&self.sql.release_messages, [&self.owner])
            .map_err(sql_error)?;
        tx.execute(&self.sql.release_claims, [&self.owner])
            .map_err(sql_error)?;
        tx.commit().map_err(sql_error)?;
        Ok(released)
    }

    /// Ready messages in `queue` (Kombu: `COUNT visible`).
    pub(crate) fn size(&mut self, queue: &str) -> Result<u64> {
        let (q, m) = (&self.tables.queue, &self.tables.message);
        let n: i64 = self
            .conn
            .prepare_cached(&format!(
                "SELECT count(*) FROM {m} WHERE queue_id = (SELECT id FROM {q} WHERE name = ?1) AND visible = 1"
            ))
            .and_then(|mut s| s.query_row([queue], |row| row.get(0)))
            .map_err(sql_error)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Remove the ready messages of `queue` and the rows Python Kombu consumed and left
    /// behind; messages in flight stay (AMQP semantics). Returns the ready count removed.
    pub(crate) fn purge(&mut self, queue: &str) -> Result<u64> {
        let (q, m, c) = (&self.tables.queue, &self.tables.message, &self.tables.claim);
        let tx = write_transaction(&mut self.conn)?;
        let ready = tx
            .execute(
                &format!(
                    "DELETE FROM {m} WHERE queue_id = (SELECT id FROM {q} WHERE name = ?1) AND visible = 1"
                ),
                [queue],
            )
            .map_err(sql_error)?;
        tx.execute(
            &format!(
                "DELETE FROM {m} WHERE queue_id = (SELECT id FROM {q} WHERE name = ?1) AND visible = 0 \
                 AND id NOT IN (SELECT message_id FROM {c})"
            ),
            [queue],
        )
        .map_err(sql_error)?;
        tx.commit().map_err(sql_error)?;
        Ok(ready as u64)
    }

    /// Delete the queue with its messages, claims, settings and bindings.
    pub(crate) fn delete_queue(&mut self, queue: &str) -> Result<()> {
        let t = &self.tables;
        let (q, m, c) = (&t.queue, &t.message, &t.claim);
        let statements = [
            format!(
                "DELETE FROM {c} WHERE message_id IN \
                 (SELECT id FROM {m} WHERE queue_id = (SELECT id FROM {q} WHERE name = ?1))"
            ),
            format!("DELETE FROM {m} WHERE queue_id = (SELECT id FROM {q} WHERE name = ?1)"),
            format!("DELETE FROM {q} WHERE name = ?1"),
            format!("DELETE FROM {} WHERE name = ?1", t.queue_settings),
            format!("DELETE FROM {} WHERE queue = ?1", t.binding),
        ];
        let tx = write_transaction(&mut self.conn)?;
        for sql in &statements {
            tx.execute(sql, [queue]).map_err(sql_error)?;
        }
        tx.commit().map_err(sql_error)?;
        self.priorities.remove(queue);
        Ok(())
    }

    /// Record an exchange's type so other processes route it the same way.
    pub(crate) fn declare_exchange(&mut self, name: &str, kind: ExchangeType) -> Result<()> {
        self.conn
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO {} (name, type) VALUES (?1, ?2)",
                    self.tables.exchange
                ),
                [name, kind.as_str()],
            )
            .map(drop)
            .map_err(sql_error)
    }

    /// Forget an exchange and its bindings.
    pub(crate) fn delete_exchange(&mut self, name: &str) -> Result<()> {
        let tx = write_transaction(&mut self.conn)?;
        tx.execute(
            &format!("DELETE FROM {} WHERE name = ?1", self.tables.exchange),
            [name],
        )
        .map_err(sql_error)?;
        tx.execute(
            &format!("DELETE FROM {} WHERE exchange = ?1", self.tables.binding),
            [name],
        )
        .map_err(sql_error)?;
        tx.commit().map_err(sql_error)
    }

    pub(crate) fn store_binding(
        &mut self,
        exchange: &str,
        kind: ExchangeType,
        binding: &StoredBinding,
    ) -> Result<()> {
        let arguments = arguments_json(&binding.arguments)?;
        let tx = write_transaction(&mut self.conn)?;
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO {} (name, type) VALUES (?1, ?2)",
                self.tables.exchange
            ),
            [exchange, kind.as_str()],
        )
        .map_err(sql_error)?;
        tx.execute(
            &format!(
                "INSERT OR IGNORE INTO {} (exchange, queue, routing_key, arguments) VALUES (?1, ?2, ?3, ?4)",
                self.tables.binding
            ),
            [exchange, &binding.queue, &binding.routing_key, &arguments],
        )
        .map_err(sql_error)?;
        tx.commit().map_err(sql_error)
    }

    pub(crate) fn remove_binding(&mut self, exchange: &str, binding: &StoredBinding) -> Result<()> {
        let arguments = arguments_json(&binding.arguments)?;
        self.conn
            .execute(
                &format!(
                    "DELETE FROM {} WHERE exchange = ?1 AND queue = ?2 AND routing_key = ?3 AND arguments = ?4",
                    self.tables.binding
                ),
                [exchange, &binding.queue, &binding.routing_key, &arguments],
            )
            .map(drop)
            .map_err(sql_error)
    }

    /// The stored type and bindings of `exchange`; `None` when neither is stored.
    pub(crate) fn load_routes(&mut self, exchange: &str) -> Result<Option<StoredRoutes>> {
        // One statement (one read lock): at least one row, the type on every row, the binding
        // columns NULL when there are none. This runs on every publish to a named exchange.
        type Row = (Option<String>, Option<String>, Option<String>, Option<String>);
        let mut kind: Option<String> = None;
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let fetched: Vec<Row> = self
            .conn
            .prepare_cached(&self.sql.routes)
            .and_then(|mut s| {
                s.query_map([exchange], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .collect()
            })
            .map_err(sql_error)?;
        for (stored_kind, queue, routing_key, arguments) in fetched {
            kind = kind.or(stored_kind);
            if let (Some(queue), Some(routing_key), Some(arguments)) = (queue, routing_key, arguments) {
                rows.push((queue, routing_key, arguments));
            }
        }
        if kind.is_none() && rows.is_empty() {
            return Ok(None);
        }
        let mut bindings = Vec::with_capacity(rows.len());
        for (queue, routing_key, arguments) in rows {
            let arguments: FieldTable = serde_json::from_str(&arguments).map_err(|e| {
                Error::new(ErrorKind::Decode, "stored binding arguments are not a JSON table")
                    .with_source(e)
                    .with_context("exchange", exchange)
            })?;
            bindings.push(StoredBinding {
                queue,
                routing_key,
                arguments,
            });
        }
        let kind = kind.and_then(|k| k.parse().ok());
        Ok(Some(StoredRoutes { kind, bindings }))
    }
}

fn arguments_json(arguments: &FieldTable) -> Result<String> {
    serde_json::to_string(arguments).map_err(|e| {
        Error::new(ErrorKind::Encode, "binding arguments cannot be stored as JSON").with_source(e)
    })
}

impl Drop for Store {
    fn drop(&mut self) {
        match self.release_claims() {
            Ok(0) => {}
            Ok(n) => tracing::debug!(
                messages = n,
                "connection closing: unacked messages made visible again"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not release claims on close; they expire after the visibility timeout")
            }
        }
    }
}
