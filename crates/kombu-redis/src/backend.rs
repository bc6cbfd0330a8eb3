//! [`RedisBackend`]: the virtual-transport backend over Kombu's Redis layout.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kombu_core::envelope::{to_python_json, BodyEncoding};
use kombu_core::router::CompiledBinding;
use kombu_core::virtual_transport::{
    BroadcastBuffer, BrokerRouting, Claimed, NativeFanout, Receipts, Settle, StoredBinding, StoredBindings,
    StoredRoutes, VirtualBackend,
};
use kombu_core::{
    Capabilities, Envelope, Error, ErrorKind, Exchange, ExchangeType, FieldTable, Queue, Result, Value,
};
use redis::aio::ConnectionManager;
use redis::ProtocolVersion;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::claims::{parse_unacked_record, ClaimReceipts};
use crate::fanout::Fanout;
use crate::keys::Keys;
use crate::scripts;
use crate::settings::{Address, Settings};
use crate::waiter::{Waiter, WaiterConfig};

/// The Redis backend of one connection.
pub(crate) struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    keys: Keys,
    /// Commands (reconnects by itself after the server went away).
    commands: ConnectionManager,
    /// The one connection that watches every consumed list (see [`crate::waiter`]).
    waiter: Waiter,
    /// Queues declared here with `x-expires` (milliseconds): their lists get PEXPIRE.
    expiring: Mutex<HashMap<String, u64>>,
    /// Queues declared on this connection (a passive declare of an empty one succeeds).
    declared: Mutex<HashSet<String>>,
    last_restore: Mutex<Option<Instant>>,
    /// Receipts of claims, to recover one whose answer the connection lost.
    receipts: ClaimReceipts,
    fanout: Arc<Fanout>,
    arrived: Arc<Notify>,
}

impl RedisBackend {
    /// Connect (failing fast with a typed error when the server is not there).
    pub(crate) async fn connect(settings: Settings) -> Result<RedisBackend> {
        // The waiter's client speaks RESP3 (tracking invalidations are pushes).
        let waiter_client = client(&settings, ProtocolVersion::RESP3)?;
        let client = client(&settings, ProtocolVersion::RESP2)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.socket_connect_timeout))
            .set_response_timeout(Some(settings.socket_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let mut commands = tokio::time::timeout(
            settings.socket_connect_timeout + Duration::from_secs(1),
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| {
            Error::new(ErrorKind::Connection, "timed out connecting to Redis")
                .with_context("timeout_ms", settings.socket_connect_timeout.as_millis())
        })?
        .map_err(|e| redis_error(e, "cannot connect to Redis"))?;
        // Kombu pings on channel creation; a PING here turns an unusable server into an error now.
        let _: String = redis::cmd("PING")
            .query_async(&mut commands)
            .await
            .map_err(|e| redis_error(e, "Redis did not answer PING"))?;
        if let Some(name) = &settings.client_name {
            let _: redis::RedisResult<()> = redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(name)
                .query_async(&mut commands)
                .await;
        }
        let arrived = Arc::new(Notify::new());
        let keys = Keys::new(settings.keys.clone());
        let waiter = Waiter::new(
            WaiterConfig {
                client: waiter_client,
                name: format!("{}.waiter", settings.client_name.as_deref().unwrap_or("kombu-rs")),
                connect_timeout: settings.socket_connect_timeout,
                response_timeout: settings.socket_timeout,
                polling_interval: settings.polling_interval,
            },
            arrived.clone(),
        );
        let inner = Arc::new(Inner {
            keys,
            fanout: Fanout::new(client, arrived.clone()),
            settings,
            commands,
            waiter,
            expiring: Mutex::new(HashMap::new()),
            declared: Mutex::new(HashSet::new()),
            last_restore: Mutex::new(None),
            receipts: ClaimReceipts::default(),
            arrived,
        });
        Ok(RedisBackend { inner })
    }

    pub(crate) fn body_encoding(&self) -> BodyEncoding {
        self.inner.settings.body_encoding
    }
}

/// What a connection with `settings` supports: the transport's static capabilities, less
/// what ack emulation gives when it is off (`ack_emulation=false`: a message is removed when
/// taken, so it is neither crash-safe nor renewed).
fn connection_capabilities(settings: &Settings) -> Capabilities {
    let mut caps = crate::CAPABILITIES;
    if !settings.ack_emulation {
        caps.crash_safe_acks = false;
        caps.extend_visibility = false;
    }
    caps
}

/// The client for `settings` speaking `protocol`: with the TLS certificates they name, if
/// any. Commands and fanout use RESP2; the waiter needs RESP3 for its pushes.
fn client(settings: &Settings, protocol: ProtocolVersion) -> Result<redis::Client> {
    let info = connection_info(settings, protocol)?;
    #[cfg(feature = "tls")]
    if settings.tls.ca_certs.is_some() || settings.tls.certfile.is_some() {
        return redis::Client::build_with_tls(info, tls_certificates(&settings.tls)?)
            .map_err(|e| redis_error(e, "invalid TLS settings"));
    }
    redis::Client::open(info).map_err(|e| redis_error(e, "cannot connect"))
}

#[cfg(feature = "tls")]
fn tls_certificates(tls: &crate::settings::TlsOptions) -> Result<redis::TlsCertificates> {
    let read = |option: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Error::new(ErrorKind::InvalidArgument, format!("cannot read {option}"))
                .with_context("path", path.display())
                .with_source(e)
        })
    };
    let client_tls = match (&tls.certfile, &tls.keyfile) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("ssl_certfile", cert)?,
            client_key: read("ssl_keyfile", key)?,
        }),
        _ => None,
    };
    let root_cert = match &tls.ca_certs {
        Some(path) => Some(read("ssl_ca_certs", path)?),
        None => None,
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

fn connection_info(settings: &Settings, protocol: ProtocolVersion) -> Result<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo;
    let addr = match &settings.address {
        Address::Tcp {
            host,
            port,
            tls: false,
        } => redis::ConnectionAddr::Tcp(host.clone(), *port),
        Address::Tcp {
            host,
            port,
            tls: true,
        } => tls_addr(host, *port, settings.tls.verify)?,
        Address::Unix(path) => redis::ConnectionAddr::Unix(path.clone()),
    };
    let mut redis_settings = redis::RedisConnectionInfo::default()
        .set_db(settings.db)
        .set_protocol(protocol);
    if let Some(user) = &settings.username {
        redis_settings = redis_settings.set_username(user.clone());
    }
    if let Some(password) = &settings.password {
        redis_settings = redis_settings.set_password(password.clone());
    }
    Ok(addr
        .into_connection_info()
        .map_err(|e| redis_error(e, "invalid Redis address"))?
        .set_redis_settings(redis_settings))
}

#[cfg(feature = "tls")]
fn tls_addr(host: &str, port: u16, verify: bool) -> Result<redis::ConnectionAddr> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(redis::ConnectionAddr::TcpTls {
        host: host.to_owned(),
        port,
        insecure: !verify,
        tls_params: None,
    })
}

#[cfg(not(feature = "tls"))]
fn tls_addr(host: &str, _port: u16, _verify: bool) -> Result<redis::ConnectionAddr> {
    Err(Error::unsupported("rediss:// (TLS) needs the kombu feature `redis-tls`").with_context("host", host))
}

/// A typed error from a redis error: connection trouble is recoverable, the rest is not.
pub(crate) fn redis_error(e: redis::RedisError, what: &'static str) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        // LOADING (a restarted server reading its data back), MASTERDOWN, TRYAGAIN: the
        // server is there but not ready yet, so a retry will do.
        || matches!(e.retry_method(), redis::RetryMethod::WaitAndRetry)
    {
        ErrorKind::Connection
    } else {
        ErrorKind::Channel
    };
    Error::new(kind, what).with_source(e)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

impl Inner {
    fn conn(&self) -> ConnectionManager {
        self.commands.clone()
    }

    fn expires_ms(&self, queue: &str) -> Option<u64> {
        self.expiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .copied()
    }

    /// Add to `pipe` the PEXPIRE of every list of `queue` if it was declared with
    /// `x-expires` (Redis expires the lists, as Kombu 5.7 does); whether it added any.
    fn pexpire_if_expiring(&self, pipe: &mut redis::Pipeline, queue: &str) -> bool {
        let Some(ms) = self.expires_ms(queue) else {
            return false;
        };
        for k in self.keys.queue_keys(queue) {
            pipe.pexpire(k, ms as i64).ignore();
        }
        true
    }

    async fn push(&self, queue: &str, envelope: &Envelope, consume_next: bool) -> Result<()> {
        let key = self.keys.key_for_priority(queue, envelope.priority());
        let payload = envelope.to_json();
        let mut pipe = redis::pipe();
        if consume_next {
            pipe.rpush(&key, payload).ignore();
        } else {
            pipe.lpush(&key, payload).ignore();
        }
        self.pexpire_if_expiring(&mut pipe, queue);
        let () = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| redis_error(e, "publish failed").with_context("queue", queue))?;
        self.waiter.touched(queue);
        self.arrived.notify_waiters();
        Ok(())
    }

    /// [`put_routed`](VirtualBackend::put_routed) for a publisher that declared the exchange
    /// and routes to queues itself: one pipelined round trip reads the binding set and pushes
    /// to those queues (`SMEMBERS` + `LPUSH`es, a fraction of the routing script's server
    /// time); only bindings stored by other processes that this one does not know cost a
    /// second round trip, which pushes to their queues. Routing is the script's: the declared
    /// type for every member, each queue once.
    async fn put_routed_pipelined(
        &self,
        exchange: &str,
        kind: ExchangeType,
        routing_key: &str,
        local: &[Arc<str>],
        envelope: &Envelope,
    ) -> Result<usize> {
        let payload = envelope.to_json();
        let priority = envelope.priority();
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS").arg(self.keys.binding_set(exchange));
        let mut routed: Vec<String> = Vec::with_capacity(local.len());
        for queue in local {
            if !routed.iter().any(|q| **q == **queue) {
                pipe.cmd("LPUSH")
                    .arg(self.keys.key_for_priority(queue, priority))
                    .arg(&payload)
                    .ignore();
                routed.push(queue.to_string());
            }
        }
        let (members,): (Vec<String>,) = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(e, "publish failed").with_context("exchange", exchange))?;
        let mut foreign = redis::pipe();
        let local_count = routed.len();
        for member in members.iter().filter_map(|m| self.keys.parse_member(m)) {
            if routed.contains(&member.queue) {
                continue;
            }
            // The router's matching, by the declared type, as for local bindings.
            let binding =
                CompiledBinding::new(kind, member.queue.as_str(), member.routing_key, FieldTable::new());
            if binding.matches(routing_key, &envelope.message.headers) {
                foreign
                    .cmd("LPUSH")
                    .arg(self.keys.key_for_priority(&member.queue, priority))
                    .arg(&payload)
                    .ignore();
                routed.push(member.queue);
            }
        }
        if routed.len() > local_count {
            let () = foreign.query_async(&mut conn).await.map_err(|e| {
                redis_error(e, "publish to queues bound by other processes failed")
                    .with_context("exchange", exchange)
            })?;
        }
        self.refresh_expiry(&routed).await;
        for queue in &routed {
            self.waiter.touched(queue);
        }
        self.arrived.notify_waiters();
        Ok(routed.len())
    }

    /// Push the `x-expires` deadline of the queues among `queues` that have one (Redis
    /// expires their lists, as Kombu 5.7 does). Best effort: a failure only shortens a life.
    async fn refresh_expiry(&self, queues: &[String]) {
        let mut pipe = redis::pipe();
        let mut any = false;
        for queue in queues {
            any |= self.pexpire_if_expiring(&mut pipe, queue);
        }
        if any {
            let _: redis::RedisResult<()> = pipe.query_async(&mut self.conn()).await;
        }
    }

    /// Kombu's `restore_visible`: under the `unacked_mutex` lock, give back every delivery
    /// older than the visibility timeout, re-routed as Kombu does.
    async fn restore_visible(&self) -> Result<usize> {
        let mut conn = self.conn();
        let token = uuid::Uuid::new_v4().to_string();
        let locked: Option<String> = redis::cmd("SET")
            .arg(&self.keys.unacked_mutex)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.settings.unacked_mutex_expire.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(e, "cannot take the unacked_mutex lock"))?;
        if locked.is_none() {
            return Ok(0);
        }
        let result = self.restore_expired(&mut conn).await;
        let _: redis::RedisResult<i64> = scripts::UNLOCK
            .key(&self.keys.unacked_mutex)
            .arg(&token)
            .invoke_async(&mut conn)
            .await;
        result
    }

    async fn restore_expired(&self, conn: &mut ConnectionManager) -> Result<usize> {
        let ceiling = now_secs() - self.settings.visibility_timeout.as_secs_f64();
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(&self.keys.unacked_index).arg("-inf").arg(ceiling);
        if let Some(limit) = self.settings.unacked_restore_limit {
            cmd.arg("LIMIT").arg(0).arg(limit);
        }
        let tags: Vec<String> = cmd
            .query_async(conn)
            .await
            .map_err(|e| redis_error(e, "cannot read the unacked index"))?;
        let mut restored = 0;
        for tag in tags {
            let record: Option<String> = redis::cmd("HGET")
                .arg(&self.keys.unacked)
                .arg(&tag)
                .query_async(conn)
                .await
                .map_err(|e| redis_error(e, "cannot read the unacked hash"))?;
            let Some(record) = record else {
                // Acked between the two reads: drop the stale index entry.
                let _: redis::RedisResult<i64> = redis::cmd("ZREM")
                    .arg(&self.keys.unacked_index)
                    .arg(&tag)
                    .query_async(conn)
                    .await;
                continue;
            };
            match self.restore_record(conn, &tag, &record).await {
                Ok(true) => restored += 1,
                Ok(false) => {}
                Err(e) => warn!(error = %e, delivery_tag = %tag, "could not restore an expired delivery"),
            }
        }
        if restored > 0 {
            debug!(restored, "restored deliveries past the visibility timeout");
            self.arrived.notify_waiters();
        }
        Ok(restored)
    }

    /// Restore one unacked record `[envelope, exchange, routing_key]` the way Kombu does:
    /// mark it redelivered and route it again through the exchange.
    async fn restore_record(&self, conn: &mut ConnectionManager, tag: &str, record: &str) -> Result<bool> {
        let (mut envelope, exchange, routing_key) = parse_unacked_record(record)?;
        if let serde_json::Value::Object(map) = &mut envelope {
            if let Some(serde_json::Value::Object(headers)) = map.get_mut("headers") {
                headers.insert("redelivered".into(), serde_json::Value::Bool(true));
            }
            if let Some(serde_json::Value::Object(props)) = map.get_mut("properties") {
                if let Some(serde_json::Value::Object(info)) = props.get_mut("delivery_info") {
                    info.insert("redelivered".into(), serde_json::Value::Bool(true));
                }
            }
        }
        let priority = envelope
            .pointer("/properties/priority")
            .and_then(serde_json::Value::as_f64)
            .map_or(0, |p| p.clamp(0.0, 9.0) as u8);
        let queues = self.lookup(conn, &exchange, &routing_key).await?;
        if queues.is_empty() {
            warn!(delivery_tag = %tag, exchange = %exchange, routing_key = %routing_key,
                "an expired delivery routes to no queue; it stays in the unacked hash");
            return Ok(false);
        }
        let payload = to_python_json(&envelope)?;
        let payload = String::from_utf8(payload).unwrap_or_default();
        let mut invocation = scripts::RESTORE.prepare_invoke();
        invocation.key(&self.keys.unacked).key(&self.keys.unacked_index);
        for q in &queues {
            invocation.key(self.keys.key_for_priority(q, priority));
        }
        invocation.arg(tag).arg(record).arg(payload);
        let done: i64 = invocation
            .invoke_async(conn)
            .await
            .map_err(|e| redis_error(e, "restore failed"))?;
        for q in &queues {
            self.waiter.touched(q);
        }
        Ok(done == 1)
    }

    /// Kombu's `_lookup` over the stored bindings: exchange `''` is the queue named by the
    /// routing key; topic members match by pattern, the others by equality.
    async fn lookup(
        &self,
        conn: &mut ConnectionManager,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Vec<String>> {
        if exchange.is_empty() {
            return Ok(if routing_key.is_empty() {
                vec![]
            } else {
                vec![routing_key.to_owned()]
            });
        }
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.binding_set(exchange))
            .query_async(conn)
            .await
            .map_err(|e| redis_error(e, "cannot read bindings"))?;
        let mut queues: Vec<String> = Vec::new();
        for m in members.iter().filter_map(|m| self.keys.parse_member(m)) {
            if m.matches(routing_key) && !queues.contains(&m.queue) {
                queues.push(m.queue);
            }
        }
        Ok(queues)
    }

    /// Run the claim script on `queue`'s lists: up to `max` messages move into the unacked
    /// records (or are removed, without ack emulation) in one atomic step.
    async fn claim(&self, queue: &str, max: usize, out: &mut Vec<Claimed>) -> Result<()> {
        let inner = self;
        let track = inner.settings.ack_emulation;
        if track && inner.receipts.has_pending(queue) {
            // A claim on this queue may have run without its answer arriving: hand out what it
            // took before taking more.
            let before = out.len();
            inner
                .receipts
                .recover(&mut inner.conn(), &inner.keys, queue, out)
                .await?;
            if out.len() > before {
                return Ok(());
            }
        }
        let keys = inner.keys.queue_keys(queue);
        let receipt = ClaimReceipts::new_key(&inner.keys);
        let previous = if track {
            inner.receipts.take_confirmed()
        } else {
            None
        };
        let mut invocation = scripts::CLAIM.prepare_invoke();
        invocation
            .key(&inner.keys.unacked)
            .key(&inner.keys.unacked_index)
            .key(format!("{}_kombu_rs.malformed", inner.keys.prefix()))
            .key(&receipt)
            .key(previous.as_deref().unwrap_or(""));
        for k in &keys {
            invocation.key(k);
        }
        invocation
            .arg(max)
            .arg(now_secs())
            .arg(if track { "1" } else { "0" })
            .arg(inner.settings.visibility_timeout.as_secs().max(1))
            .arg(if previous.is_some() { "1" } else { "0" });
        let reply: Vec<Vec<u8>> = match invocation.invoke_async::<Vec<Vec<u8>>>(&mut inner.conn()).await {
            Ok(reply) => {
                // The script wrote a receipt only if it took a message.
                if track && !reply.is_empty() {
                    inner.receipts.confirm(receipt);
                }
                reply
            }
            Err(e) => {
                let error = redis_error(e, "claim failed").with_context("queue", queue);
                if track && matches!(error.kind(), ErrorKind::Connection | ErrorKind::Timeout) {
                    // The server may have run it: its receipt says, once it is back.
                    inner.receipts.unanswered(queue, receipt);
                }
                if let Some(previous) = previous {
                    inner.receipts.confirm(previous);
                }
                return Err(error);
            }
        };
        let mut pipe = redis::pipe();
        if inner.pexpire_if_expiring(&mut pipe, queue) {
            let _: redis::RedisResult<()> = pipe.query_async(&mut inner.conn()).await;
        }
        let mut malformed = 0usize;
        let mut first_error = None;
        for triple in reply.chunks(3) {
            let [kind, payload, tag] = triple else { continue };
            if kind.as_slice() != b"m" {
                malformed += 1;
                continue;
            }
            let tag = String::from_utf8_lossy(tag).into_owned();
            match Envelope::from_json(payload) {
                Ok(envelope) => {
                    if inner.settings.ack_emulation {
                        out.push(Claimed::held(envelope, tag));
                    } else {
                        out.push(Claimed::removed(envelope));
                    }
                }
                Err(e) => {
                    // A JSON object Kombu could not read either: park it with the others.
                    let mut pipe = redis::pipe();
                    pipe.atomic()
                        .lpush(
                            format!("{}_kombu_rs.malformed", inner.keys.prefix()),
                            payload.as_slice(),
                        )
                        .ignore()
                        .hdel(&inner.keys.unacked, &tag)
                        .ignore()
                        .zrem(&inner.keys.unacked_index, &tag)
                        .ignore();
                    let _: redis::RedisResult<()> = pipe.query_async(&mut inner.conn()).await;
                    malformed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if malformed > 0 {
            let key = format!("{}_kombu_rs.malformed", inner.keys.prefix());
            let error = first_error
                .unwrap_or_else(|| Error::new(ErrorKind::Decode, "malformed message envelope"))
                .with_context("queue", queue)
                .with_context("moved_to", key)
                .with_context("count", malformed);
            warn!(error = %error, "parked malformed messages");
            return Err(error);
        }
        Ok(())
    }

    /// Kombu's periodic `restore_visible`, when due (best effort).
    async fn restore_if_due(&self) {
        if self.maybe_restore_due() {
            if let Err(e) = self.restore_visible().await {
                debug!(error = %e, "restore of expired deliveries failed");
            }
        }
    }

    fn maybe_restore_due(&self) -> bool {
        if !self.settings.ack_emulation {
            return false;
        }
        let mut last = self.last_restore.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= self.settings.unacked_restore_interval);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Push the index score of these deliveries to now, so live consumers' messages are
    /// never restored under them.
    async fn renew(&self, tags: &[&str]) -> Result<()> {
        let now = now_secs();
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&self.keys.unacked_index).arg("XX");
        for t in tags {
            cmd.arg(now).arg(*t);
        }
        let _: i64 = cmd
            .query_async(&mut self.conn())
            .await
            .map_err(|e| redis_error(e, "cannot renew deliveries"))?;
        Ok(())
    }
}

impl VirtualBackend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> Capabilities {
        connection_capabilities(&self.inner.settings)
    }

    async fn declare_queue(&self, queue: &Queue, arguments: &FieldTable) -> Result<()> {
        let inner = &self.inner;
        let expires = match arguments.get("x-expires") {
            Some(Value::Int(ms)) if *ms > 0 => Some(*ms as u64),
            Some(Value::Float(ms)) if *ms > 0.0 => Some(*ms as u64),
            _ => None,
        };
        if let Some(ms) = expires {
            inner
                .expiring
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(queue.name.clone(), ms);
        }
        inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.name.clone());
        Ok(())
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        if self
            .inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(queue)
        {
            return Ok(true);
        }
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.inner.keys.queue_keys(queue))
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| redis_error(e, "EXISTS failed"))?;
        Ok(n > 0)
    }

    async fn put(&self, queue: &str, envelope: Envelope) -> Result<()> {
        self.inner.push(queue, &envelope, false).await
    }

    /// One pipeline for the whole batch (`LPUSH`es in order, with the expiry refreshes of
    /// queues that expire): one round trip. Redis runs a pipeline's commands in order but not
    /// atomically, so when it fails every item reports the error: some may have been stored
    /// (at least once on a retry, never lost).
    async fn put_batch(&self, puts: Vec<(Arc<str>, Envelope)>) -> Vec<Result<()>> {
        let inner = &self.inner;
        let mut pipe = redis::pipe();
        for (queue, envelope) in &puts {
            let key = inner.keys.key_for_priority(queue, envelope.priority());
            pipe.lpush(&key, envelope.to_json()).ignore();
            inner.pexpire_if_expiring(&mut pipe, queue);
        }
        let written: redis::RedisResult<()> = pipe.query_async(&mut inner.conn()).await;
        match written {
            Ok(()) => {
                for (queue, _) in &puts {
                    inner.waiter.touched(queue);
                }
                inner.arrived.notify_waiters();
                puts.iter().map(|_| Ok(())).collect()
            }
            Err(e) => {
                let error = redis_error(e, "batch publish failed");
                puts.iter()
                    .map(|(queue, _)| Err(error.duplicate().with_context("queue", queue)))
                    .collect()
            }
        }
    }

    /// A basic get always asks Redis: another process may have pushed a moment ago, before
    /// the waiter heard of it.
    async fn get(&self, queue: &str) -> Result<Option<Claimed>> {
        let mut out = Vec::with_capacity(1);
        self.inner.restore_if_due().await;
        self.inner.claim(queue, 1, &mut out).await?;
        Ok(out.pop())
    }

    /// The dispatcher's take: a queue the waiter knows to be empty costs no round trip (the
    /// waiter wakes the dispatcher when that changes).
    async fn get_batch(&self, queue: &str, max: usize, out: &mut Vec<Claimed>) -> Result<()> {
        let inner = &self.inner;
        if max == 0 {
            return Ok(());
        }
        inner.restore_if_due().await;
        // A queue known to be empty may still have messages of an unanswered claim to hand out.
        if inner.waiter.known_empty(queue) && !inner.receipts.has_pending(queue) {
            return Ok(());
        }
        inner.claim(queue, max, out).await
    }

    /// A message taken without ack emulation (or a broadcast one: those the channel puts
    /// back in the broadcast buffer itself): back at the head of its list.
    async fn restore(&self, queue: &str, envelope: Envelope) -> Result<()> {
        self.inner.push(queue, &envelope, true).await
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let inner = &self.inner;
        let keys = inner.keys.queue_keys(queue);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for k in &keys {
            pipe.llen(k);
        }
        for k in &keys {
            pipe.del(k).ignore();
        }
        let sizes: Vec<u64> = pipe
            .query_async(&mut inner.conn())
            .await
            .map_err(|e| redis_error(e, "purge failed").with_context("queue", queue))?;
        Ok(sizes.iter().sum::<u64>())
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        let inner = &self.inner;
        let mut pipe = redis::pipe();
        for k in inner.keys.queue_keys(queue) {
            pipe.llen(k);
        }
        let sizes: Vec<u64> = pipe
            .query_async(&mut inner.conn())
            .await
            .map_err(|e| redis_error(e, "size failed").with_context("queue", queue))?;
        Ok(sizes.iter().sum::<u64>())
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let inner = &self.inner;
        let () = redis::cmd("DEL")
            .arg(inner.keys.queue_keys(queue))
            .query_async(&mut inner.conn())
            .await
            .map(|_: i64| ())
            .map_err(|e| redis_error(e, "delete failed").with_context("queue", queue))?;
        inner.fanout.remove_queue(queue).await;
        inner
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(queue);
        inner
            .expiring
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

    /// Hand the queues to the waiter (one connection watches them all, see
    /// [`crate::waiter`]), which notifies `arrived` when one may hold a message.
    async fn wait_for_messages(&self, queues: &[Arc<str>], timeout: Duration) -> Result<()> {
        let inner = &self.inner;
        for q in queues {
            if inner.fanout.is_fanout_queue(q) {
                continue;
            }
            inner.waiter.watch(q, || inner.keys.queue_keys(q));
        }
        // The waiter notifies `arrived`, which the dispatcher also waits on.
        tokio::time::sleep(timeout).await;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        inner.fanout.close();
        inner.waiter.close();
        Ok(())
    }

    fn receipts(&self) -> Option<&impl Receipts> {
        self.inner.settings.ack_emulation.then_some(self)
    }

    fn stored_bindings(&self) -> Option<&impl StoredBindings> {
        Some(self)
    }

    fn broker_routing(&self) -> Option<&impl BrokerRouting> {
        Some(self)
    }

    fn native_fanout(&self) -> Option<&impl NativeFanout> {
        Some(self)
    }
}

/// Kombu's ack emulation: a claimed message waits in the unacked hash until acked; its index
/// score (the claim time) is renewed while a consumer holds it, and Kombu's
/// `restore_visible` gives back the ones older than the visibility timeout.
impl Receipts for RedisBackend {
    /// Kombu's ack for a group: one `MULTI ZREM … HDEL … EXEC`.
    async fn ack_batch(&self, batch: &[Settle]) -> Result<()> {
        let inner = &self.inner;
        let tags: Vec<&str> = batch.iter().map(Settle::receipt).collect();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zrem(&inner.keys.unacked_index, &tags)
            .ignore()
            .hdel(&inner.keys.unacked, &tags)
            .ignore();
        let () = pipe
            .query_async(&mut inner.conn())
            .await
            .map_err(|e| redis_error(e, "ack failed").with_context("count", tags.len()))?;
        Ok(())
    }

    async fn requeue(&self, queue: &str, envelope: Envelope, receipt: &str) -> Result<()> {
        let inner = &self.inner;
        // Back to the queue it came from (Kombu re-routes through the exchange, which copies
        // the message into every other bound queue again), consumed next.
        let payload = envelope.to_json();
        let mut invocation = scripts::RESTORE.prepare_invoke();
        invocation
            .key(&inner.keys.unacked)
            .key(&inner.keys.unacked_index)
            .key(inner.keys.key_for_priority(queue, envelope.priority()))
            .arg(receipt)
            .arg("")
            .arg(payload);
        let _: i64 = invocation
            .invoke_async(&mut inner.conn())
            .await
            .map_err(|e| redis_error(e, "requeue failed").with_context("queue", queue))?;
        inner.waiter.touched(queue);
        inner.arrived.notify_waiters();
        Ok(())
    }

    async fn renew(&self, receipts: &[&str]) -> Result<()> {
        self.inner.renew(receipts).await
    }

    /// Every quarter of the visibility timeout, 100 ms to 60 s (always well inside it).
    fn renewal_interval(&self) -> Option<Duration> {
        Some(
            (self.inner.settings.visibility_timeout / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(60)),
        )
    }
}

/// Kombu's `_kombu.binding.<exchange>` sets (no exchange types: a publisher routes an
/// exchange it did not declare as direct).
impl StoredBindings for RedisBackend {
    async fn declare_exchange(&self, _exchange: &Exchange) -> Result<()> {
        Ok(())
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<()> {
        let inner = &self.inner;
        let _: i64 = redis::cmd("DEL")
            .arg(inner.keys.binding_set(exchange))
            .arg(inner.keys.binding_permanent_set(exchange))
            .query_async(&mut inner.conn())
            .await
            .map_err(|e| redis_error(e, "exchange delete failed").with_context("exchange", exchange))?;
        Ok(())
    }

    async fn store_binding(&self, exchange: &Exchange, binding: &StoredBinding) -> Result<()> {
        let inner = &self.inner;
        let member = inner
            .keys
            .member(exchange.kind, &binding.routing_key, &binding.queue);
        let set = inner.keys.binding_set(&exchange.name);
        match inner.expires_ms(&binding.queue) {
            Some(ms) => {
                let ttl = (2 * ms).max(3_600_000);
                let _: i64 = scripts::REFRESH_BINDING
                    .key(&set)
                    .key(format!("{}_kombu.binding_deadlines", inner.keys.prefix()))
                    .arg(&member)
                    .arg(ttl)
                    .arg(&exchange.name)
                    .invoke_async(&mut inner.conn())
                    .await
                    .map_err(|e| redis_error(e, "bind failed"))?;
            }
            None => {
                // Kombu 5.7 sweeps binding sets whose permanent twin is missing: write both.
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .sadd(&set, &member)
                    .ignore()
                    .sadd(inner.keys.binding_permanent_set(&exchange.name), &member)
                    .ignore();
                let () = pipe
                    .query_async(&mut inner.conn())
                    .await
                    .map_err(|e| redis_error(e, "bind failed"))?;
            }
        }
        if exchange.kind == ExchangeType::Fanout {
            let pattern = inner.keys.fanout_pattern(&exchange.name, &binding.routing_key);
            inner
                .fanout
                .subscribe(&binding.queue, &pattern)
                .await
                .map_err(|e| redis_error(e, "cannot subscribe to the fanout exchange"))?;
        }
        Ok(())
    }

    async fn load_bindings(&self, exchange: &str) -> Result<Option<StoredRoutes>> {
        let inner = &self.inner;
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(inner.keys.binding_set(exchange))
            .query_async(&mut inner.conn())
            .await
            .map_err(|e| redis_error(e, "cannot read bindings").with_context("exchange", exchange))?;
        if members.is_empty() {
            return Ok(None);
        }
        let parsed: Vec<_> = members
            .iter()
            .filter_map(|m| inner.keys.parse_member(m))
            .collect();
        // Kombu's layout does not store the exchange type; a member with a pattern is a topic
        // binding (Kombu itself would route an exchange it did not declare as direct).
        let kind = parsed
            .iter()
            .any(|m| !m.pattern.is_empty())
            .then_some(ExchangeType::Topic);
        Ok(Some(StoredRoutes {
            kind,
            bindings: parsed
                .into_iter()
                .map(|m| StoredBinding {
                    queue: m.queue,
                    routing_key: m.routing_key,
                    arguments: FieldTable::new(),
                })
                .collect(),
        }))
    }

    async fn remove_binding(&self, exchange: &str, binding: &StoredBinding) -> Result<()> {
        let inner = &self.inner;
        let members = [
            inner
                .keys
                .member(ExchangeType::Direct, &binding.routing_key, &binding.queue),
            inner
                .keys
                .member(ExchangeType::Topic, &binding.routing_key, &binding.queue),
        ];
        let mut pipe = redis::pipe();
        pipe.atomic()
            .srem(inner.keys.binding_set(exchange), &members)
            .ignore()
            .srem(inner.keys.binding_permanent_set(exchange), &members)
            .ignore();
        let () = pipe
            .query_async(&mut inner.conn())
            .await
            .map_err(|e| redis_error(e, "unbind failed"))?;
        let pattern = inner.keys.fanout_pattern(exchange, &binding.routing_key);
        inner.fanout.unsubscribe(&binding.queue, &pattern).await;
        Ok(())
    }
}

impl BrokerRouting for RedisBackend {
    async fn put_routed(
        &self,
        exchange: &str,
        kind: Option<ExchangeType>,
        routing_key: &str,
        local: &[Arc<str>],
        envelope: &Envelope,
    ) -> Result<Option<usize>> {
        let inner = &self.inner;
        let script_kind = match kind {
            None => "",
            Some(ExchangeType::Direct) => "direct",
            Some(ExchangeType::Topic) => "topic",
            Some(ExchangeType::Fanout) => "fanout",
            Some(other) => {
                return Err(Error::unsupported("this exchange type on Redis")
                    .with_context("exchange", exchange)
                    .with_context("type", other.as_str()))
            }
        };
        if let (Some(declared), false) = (kind, local.is_empty()) {
            return inner
                .put_routed_pipelined(exchange, declared, routing_key, local, envelope)
                .await
                .map(Some);
        }
        let mut invocation = scripts::ROUTE_AND_PUSH.prepare_invoke();
        invocation
            .key(inner.keys.binding_set(exchange))
            .arg(script_kind)
            .arg(routing_key)
            .arg(inner.keys.sep())
            .arg(inner.keys.prefix())
            .arg(inner.keys.suffix_for_priority(envelope.priority()))
            .arg(envelope.to_json());
        for queue in local {
            invocation.arg(&**queue);
        }
        let reply: Vec<String> = invocation
            .invoke_async(&mut inner.conn())
            .await
            .map_err(|e| redis_error(e, "publish failed").with_context("exchange", exchange))?;
        let Some((status, queues)) = reply.split_first() else {
            return Err(
                Error::new(ErrorKind::Unexpected, "unexpected reply from the routing script")
                    .with_context("exchange", exchange),
            );
        };
        if status != "routed" {
            return Ok(None);
        }
        inner.refresh_expiry(queues).await;
        for queue in queues {
            inner.waiter.touched(queue);
        }
        if !queues.is_empty() {
            inner.arrived.notify_waiters();
        }
        Ok(Some(queues.len()))
    }
}

/// Fanout exchanges over PUB/SUB, as Kombu does it.
impl NativeFanout for RedisBackend {
    async fn put_fanout(&self, exchange: &str, envelope: Envelope, routing_key: &str) -> Result<()> {
        let inner = &self.inner;
        let topic = inner.keys.fanout_topic(exchange, routing_key);
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&topic)
            .arg(envelope.to_json())
            .query_async(&mut inner.conn())
            .await
            .map_err(|e| redis_error(e, "fanout publish failed").with_context("exchange", exchange))?;
        Ok(())
    }

    fn broadcast_buffer(&self) -> &BroadcastBuffer {
        self.inner.fanout.buffer()
    }
}

#[cfg(test)]
mod tests {
    use kombu_core::{BrokerUrl, ConnectOptions};

    use super::*;

    fn caps(url: &str) -> Capabilities {
        let options = ConnectOptions::new(BrokerUrl::parse(url).unwrap());
        connection_capabilities(&Settings::from_options(&options).unwrap())
    }

    #[test]
    fn capabilities_follow_ack_emulation() {
        let emulated = caps("redis://localhost/0");
        assert!(emulated.crash_safe_acks && emulated.extend_visibility);
        let plain = caps("redis://localhost/0?ack_emulation=false");
        assert!(
            !plain.crash_safe_acks,
            "without ack emulation a taken message is gone"
        );
        assert!(!plain.extend_visibility);
        assert!(
            plain.restore_unacked_on_close,
            "a clean close still gives messages back"
        );
    }
}
