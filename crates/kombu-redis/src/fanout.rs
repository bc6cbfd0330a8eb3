//! Fanout over PUB/SUB, as Kombu does it: a queue bound to a fanout exchange subscribes to
//! the exchange's channel pattern; what arrives is buffered here for that queue's consumers.
//! Like in Kombu, fanout messages are not stored: nobody subscribed, nobody receives them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use kombu_core::Envelope;
use tokio::sync::Notify;
use tracing::{debug, warn};

/// The subscriptions of one connection and the messages they brought.
pub(crate) struct Fanout {
    client: redis::Client,
    /// Pattern → queues subscribed with it.
    patterns: Mutex<BTreeMap<String, BTreeSet<String>>>,
    buffers: Mutex<HashMap<String, VecDeque<Envelope>>>,
    /// Woken when a message arrives (the dispatcher's wake-up signal).
    arrived: Arc<Notify>,
    sink: tokio::sync::Mutex<Option<redis::aio::PubSubSink>>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Fanout {
    pub(crate) fn new(client: redis::Client, arrived: Arc<Notify>) -> Arc<Fanout> {
        Arc::new(Fanout {
            client,
            patterns: Mutex::new(BTreeMap::new()),
            buffers: Mutex::new(HashMap::new()),
            arrived,
            sink: tokio::sync::Mutex::new(None),
            reader: Mutex::new(None),
        })
    }

    /// Subscribe `queue` to `pattern`; returns once the server confirmed the subscription.
    pub(crate) async fn subscribe(self: &Arc<Self>, queue: &str, pattern: &str) -> redis::RedisResult<()> {
        let is_new = {
            let mut patterns = self.patterns.lock().unwrap_or_else(|p| p.into_inner());
            let queues = patterns.entry(pattern.to_owned()).or_default();
            let is_new = queues.is_empty();
            queues.insert(queue.to_owned());
            is_new
        };
        let mut sink = self.sink.lock().await;
        if sink.is_none() {
            // First subscription (or the reader is reconnecting): connect and subscribe all.
            *sink = Some(self.connect().await?);
            return Ok(());
        }
        if is_new {
            if let Some(s) = sink.as_mut() {
                s.psubscribe(pattern).await?;
            }
        }
        Ok(())
    }

    /// Stop delivering `pattern` to `queue`.
    pub(crate) async fn unsubscribe(&self, queue: &str, pattern: &str) {
        let now_unused = {
            let mut patterns = self.patterns.lock().unwrap_or_else(|p| p.into_inner());
            match patterns.get_mut(pattern) {
                Some(queues) => {
                    queues.remove(queue);
                    let unused = queues.is_empty();
                    if unused {
                        patterns.remove(pattern);
                    }
                    unused
                }
                None => false,
            }
        };
        if now_unused {
            if let Some(s) = self.sink.lock().await.as_mut() {
                if let Err(e) = s.punsubscribe(pattern).await {
                    debug!(error = %e, pattern, "punsubscribe failed");
                }
            }
        }
    }

    /// Forget every subscription of `queue` and its buffered messages.
    pub(crate) async fn remove_queue(&self, queue: &str) {
        let patterns: Vec<String> = self
            .patterns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, queues)| queues.contains(queue))
            .map(|(p, _)| p.clone())
            .collect();
        for p in patterns {
            self.unsubscribe(queue, &p).await;
        }
        self.buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(queue);
    }

    /// Take up to `max` buffered messages of `queue`.
    pub(crate) fn take(&self, queue: &str, max: usize, out: &mut Vec<Envelope>) {
        let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(buffer) = buffers.get_mut(queue) {
            let n = max.min(buffer.len());
            out.extend(buffer.drain(..n));
        }
    }

    /// Put a message back at the front of `queue`'s buffer (a rejected fanout delivery).
    pub(crate) fn push_front(&self, queue: &str, envelope: Envelope) {
        self.buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(queue.to_owned())
            .or_default()
            .push_front(envelope);
        self.arrived.notify_waiters();
    }

    pub(crate) fn buffered(&self, queue: &str) -> usize {
        self.buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .map_or(0, VecDeque::len)
    }

    pub(crate) fn is_fanout_queue(&self, queue: &str) -> bool {
        self.patterns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|queues| queues.contains(queue))
    }

    pub(crate) fn close(&self) {
        if let Some(task) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }

    /// Connect, subscribe every pattern and start the reader; returns the sink.
    async fn connect(self: &Arc<Self>) -> redis::RedisResult<redis::aio::PubSubSink> {
        let (sink, stream) = subscribe_all(self).await?;
        let task = tokio::spawn(read_loop(Arc::downgrade(self), stream));
        if let Some(old) = self
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
        Ok(sink)
    }

    fn deliver(&self, pattern: &str, payload: &[u8]) {
        let queues: Vec<String> = match self
            .patterns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pattern)
        {
            Some(queues) => queues.iter().cloned().collect(),
            None => return,
        };
        let envelope = match Envelope::from_json(payload) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, pattern, "dropping a fanout message that is not a Kombu envelope");
                return;
            }
        };
        let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        for q in queues {
            buffers.entry(q).or_default().push_back(envelope.clone());
        }
        drop(buffers);
        self.arrived.notify_waiters();
    }
}

/// Read messages until the connection drops, then reconnect (with backoff) and resubscribe.
async fn read_loop(weak: Weak<Fanout>, mut stream: redis::aio::PubSubStream) {
    loop {
        while let Some(msg) = stream.next().await {
            let Some(fanout) = weak.upgrade() else { return };
            let pattern: Option<String> = msg.get_pattern().ok().flatten();
            let pattern = pattern.unwrap_or_else(|| msg.get_channel_name().to_owned());
            fanout.deliver(&pattern, msg.get_payload_bytes());
        }
        // The connection dropped: subscribe again on a new one.
        let mut wait = Duration::from_millis(100);
        loop {
            let Some(fanout) = weak.upgrade() else { return };
            warn!("fanout subscription lost; reconnecting");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            let mut sink = fanout.sink.lock().await;
            match subscribe_all(&fanout).await {
                Ok((new_sink, new_stream)) => {
                    *sink = Some(new_sink);
                    stream = new_stream;
                    break;
                }
                Err(e) => {
                    *sink = None;
                    debug!(error = %e, "fanout reconnect failed");
                }
            }
        }
    }
}

/// A new pub/sub connection subscribed to every current pattern.
async fn subscribe_all(
    fanout: &Fanout,
) -> redis::RedisResult<(redis::aio::PubSubSink, redis::aio::PubSubStream)> {
    let pubsub = fanout.client.get_async_pubsub().await?;
    let (mut sink, stream) = pubsub.split();
    let patterns: Vec<String> = fanout
        .patterns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    for p in &patterns {
        sink.psubscribe(p).await?;
    }
    Ok((sink, stream))
}
