//! Fanout over PUB/SUB, as Kombu does it: a queue bound to a fanout exchange subscribes to
//! the exchange's channel pattern; what arrives waits in the core's [`BroadcastBuffer`] (keyed
//! by pattern) for that queue's consumers. Like in Kombu, fanout messages are not stored:
//! nobody subscribed, nobody receives them.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use kombu_core::virtual_transport::BroadcastBuffer;
use kombu_core::Envelope;
use tokio::sync::Notify;
use tracing::{debug, warn};

/// The subscriptions of one connection and the messages they brought.
pub(crate) struct Fanout {
    client: redis::Client,
    /// Pattern → subscribed queues, and the messages waiting for each queue.
    buffer: BroadcastBuffer,
    sink: tokio::sync::Mutex<Option<redis::aio::PubSubSink>>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Fanout {
    /// `arrived` is notified when a message arrives (the dispatcher's wake-up signal).
    pub(crate) fn new(client: redis::Client, arrived: Arc<Notify>) -> Arc<Fanout> {
        Arc::new(Fanout {
            client,
            buffer: BroadcastBuffer::new(arrived),
            sink: tokio::sync::Mutex::new(None),
            reader: Mutex::new(None),
        })
    }

    /// Where broadcast messages wait for their queues.
    pub(crate) fn buffer(&self) -> &BroadcastBuffer {
        &self.buffer
    }

    /// Subscribe `queue` to `pattern`; returns once the server confirmed the subscription.
    pub(crate) async fn subscribe(self: &Arc<Self>, queue: &str, pattern: &str) -> redis::RedisResult<()> {
        let is_new = self.buffer.subscribe(queue, pattern);
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
        if self.buffer.unsubscribe(queue, pattern) {
            self.punsubscribe(pattern).await;
        }
    }

    /// Forget every subscription of `queue` and its buffered messages.
    pub(crate) async fn remove_queue(&self, queue: &str) {
        for pattern in self.buffer.remove_queue(queue) {
            self.punsubscribe(&pattern).await;
        }
    }

    async fn punsubscribe(&self, pattern: &str) {
        if let Some(s) = self.sink.lock().await.as_mut() {
            if let Err(e) = s.punsubscribe(pattern).await {
                debug!(error = %e, pattern, "punsubscribe failed");
            }
        }
    }

    pub(crate) fn is_fanout_queue(&self, queue: &str) -> bool {
        self.buffer.is_subscribed(queue)
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
        match Envelope::from_json(payload) {
            Ok(envelope) => {
                self.buffer.deliver(pattern, &envelope);
            }
            Err(e) => warn!(error = %e, pattern, "dropping a fanout message that is not a Kombu envelope"),
        }
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
    let patterns = fanout.buffer.keys();
    for p in &patterns {
        sink.psubscribe(p).await?;
    }
    Ok((sink, stream))
}
