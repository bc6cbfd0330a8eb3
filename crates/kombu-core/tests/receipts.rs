//! The core's mechanisms for brokers that hold messages until settled, run over an
//! in-process broker with receipts and a claiming wait (the shape of SQS, MongoDB and
//! ZooKeeper): batched acks that `close` waits for, renewal of what consumers hold, a
//! claiming receive that wakes a consumer at once, and claims given back when nobody wants
//! them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test scaffolding

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_core::Stream;
use kombu_core::transport::{ConsumeOptions, QosOptions, RawPublishOptions};
use kombu_core::virtual_transport::{
    BrokerState, Claimed, ClaimingWait, Receipts, Requeue, Settle, VirtualBackend, VirtualTransport,
};
use kombu_core::{Capabilities, Delivery, Envelope, FieldTable, Queue, RawMessage, Result, Transport};
use tokio::sync::Notify;

/// A queue of ready messages and a table of claimed ones, by receipt.
#[derive(Default)]
struct Broker {
    ready: Mutex<HashMap<String, VecDeque<Envelope>>>,
    claimed: Mutex<BTreeMap<String, (String, Envelope)>>,
    next_receipt: Mutex<u64>,
    arrived: Notify,
    /// Every ack group written, and every renewal, in order.
    ack_groups: Mutex<Vec<Vec<String>>>,
    renewals: Mutex<Vec<Vec<String>>>,
    requeue_batches: Mutex<Vec<usize>>,
    receives: Mutex<u32>,
}

struct Backend {
    broker: Arc<Broker>,
    claiming: bool,
}

impl Broker {
    fn claim(&self, queue: &str, max: usize, out: &mut Vec<Claimed>) {
        let mut ready = self.ready.lock().unwrap();
        let Some(q) = ready.get_mut(queue) else { return };
        while out.len() < max {
            let Some(envelope) = q.pop_front() else { break };
            let receipt = {
                let mut n = self.next_receipt.lock().unwrap();
                *n += 1;
                format!("r{n}")
            };
            self.claimed
                .lock()
                .unwrap()
                .insert(receipt.clone(), (queue.to_owned(), envelope.clone()));
            out.push(Claimed::held(envelope, receipt));
        }
    }

    fn ready_len(&self, queue: &str) -> usize {
        self.ready.lock().unwrap().get(queue).map_or(0, VecDeque::len)
    }

    fn claimed_len(&self) -> usize {
        self.claimed.lock().unwrap().len()
    }
}

impl VirtualBackend for Backend {
    fn name(&self) -> &'static str {
        "receipts"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            crash_safe_acks: true,
            extend_visibility: true,
            restore_unacked_on_close: true,
            ..Capabilities::NONE
        }
    }
    async fn declare_queue(&self, queue: &Queue, _: &FieldTable) -> Result<()> {
        self.broker
            .ready
            .lock()
            .unwrap()
            .entry(queue.name.clone())
            .or_default();
        Ok(())
    }
    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        Ok(self.broker.ready.lock().unwrap().contains_key(queue))
    }
    async fn put(&self, queue: &str, envelope: Envelope) -> Result<()> {
        self.broker
            .ready
            .lock()
            .unwrap()
            .entry(queue.into())
            .or_default()
            .push_back(envelope);
        self.broker.arrived.notify_waiters();
        Ok(())
    }
    async fn get(&self, queue: &str) -> Result<Option<Claimed>> {
        let mut out = Vec::new();
        self.broker.claim(queue, 1, &mut out);
        Ok(out.pop())
    }
    async fn purge(&self, _: &str) -> Result<u64> {
        Ok(0)
    }
    async fn size(&self, queue: &str) -> Result<u64> {
        Ok(self.broker.ready_len(queue) as u64)
    }
    async fn delete_queue(&self, _: &str) -> Result<()> {
        Ok(())
    }
    fn polling_interval(&self) -> Duration {
        // Long: a consumer served within a fraction of it was woken, not polled.
        Duration::from_secs(5)
    }
    fn receipts(&self) -> Option<&impl Receipts> {
        Some(self)
    }
    fn claiming_wait(&self) -> Option<&impl ClaimingWait> {
        self.claiming.then_some(self)
    }
}

impl Receipts for Backend {
    async fn ack_batch(&self, batch: &[Settle]) -> Result<()> {
        let mut claimed = self.broker.claimed.lock().unwrap();
        for s in batch {
            claimed.remove(s.receipt());
        }
        self.broker
            .ack_groups
            .lock()
            .unwrap()
            .push(batch.iter().map(|s| s.receipt().to_owned()).collect());
        Ok(())
    }
    async fn requeue(&self, queue: &str, envelope: Envelope, receipt: &str) -> Result<()> {
        self.broker.claimed.lock().unwrap().remove(receipt);
        self.broker
            .ready
            .lock()
            .unwrap()
            .entry(queue.into())
            .or_default()
            .push_front(envelope);
        self.broker.arrived.notify_waiters();
        Ok(())
    }
    async fn requeue_batch(&self, batch: Vec<Requeue>) -> Result<()> {
        self.broker.requeue_batches.lock().unwrap().push(batch.len());
        for item in batch {
            let (queue, envelope, receipt) = item.into_parts();
            self.requeue(&queue, envelope, &receipt).await?;
        }
        Ok(())
    }
    async fn renew(&self, receipts: &[&str]) -> Result<()> {
        self.broker
            .renewals
            .lock()
            .unwrap()
            .push(receipts.iter().map(|r| (*r).to_owned()).collect());
        Ok(())
    }
    fn renewal_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}

impl ClaimingWait for Backend {
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        timeout: Duration,
        out: &mut Vec<Claimed>,
    ) -> Result<()> {
        *self.broker.receives.lock().unwrap() += 1;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.broker.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            self.broker.claim(queue, max, out);
            if !out.is_empty() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(());
            }
        }
    }
}

fn transport(claiming: bool) -> (Arc<Broker>, VirtualTransport<Backend>) {
    let broker = Arc::new(Broker::default());
    let backend = Backend {
        broker: broker.clone(),
        claiming,
    };
    (
        broker,
        VirtualTransport::new(Arc::new(backend), BrokerState::new()),
    )
}

/// A channel of `transport` with the queue `q` declared.
async fn channel_with_queue(transport: &VirtualTransport<Backend>) -> Arc<dyn kombu_core::Channel> {
    let channel = transport.create_channel().await.unwrap();
    channel
        .declare_queue(&Queue::new("q"), Default::default())
        .await
        .unwrap();
    channel
}

fn message(body: &'static str) -> RawMessage {
    RawMessage::new(body)
}

async fn next(stream: &mut (impl Stream<Item = Result<Delivery>> + Unpin)) -> Delivery {
    let item = tokio::time::timeout(
        Duration::from_secs(2),
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)),
    )
    .await
    .expect("a delivery within 2 s")
    .expect("the stream is open");
    item.expect("a delivery, not an error")
}

/// Wait until `condition` holds, failing after `limit`.
async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn publish(channel: &Arc<dyn kombu_core::Channel>, queue: &str, body: &'static str) {
    channel
        .publish(message(body), RawPublishOptions::new("", queue))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claiming_receive_wakes_the_consumer_at_once() {
    let (broker, transport) = transport(true);
    let channel = channel_with_queue(&transport).await;
    let mut consumer = channel.consume("q", ConsumeOptions::default()).await.unwrap();
    // The receive is waiting before the message exists.
    eventually(Duration::from_secs(2), "a receive waits", || {
        *broker.receives.lock().unwrap() > 0
    })
    .await;
    let started = Instant::now();
    publish(&channel, "q", "hello").await;
    let delivery = next(&mut consumer.deliveries).await;
    assert_eq!(&delivery.message.body[..], b"hello");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "delivered after {:?}, not woken by the receive (polling interval 5 s)",
        started.elapsed()
    );
    {
        let h = delivery.ack.unwrap();
        h.acknowledger.ack(h.tag).await.unwrap();
    }
    channel.close().await.unwrap();
    assert_eq!(broker.claimed_len(), 0, "the ack was written by close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_written_in_groups_and_close_waits_for_them() {
    let (broker, transport) = transport(false);
    let channel = channel_with_queue(&transport).await;
    for _ in 0..50 {
        publish(&channel, "q", "m").await;
    }
    let mut consumer = channel.consume("q", ConsumeOptions::default()).await.unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..50 {
        deliveries.push(next(&mut consumer.deliveries).await);
    }
    assert_eq!(broker.claimed_len(), 50, "held by the broker until acked");
    for d in &deliveries {
        {
            let h = d.ack.as_ref().unwrap();
            h.acknowledger.ack(h.tag).await.unwrap();
        }
    }
    transport.close().await.unwrap();
    assert_eq!(broker.claimed_len(), 0, "every ack written before close returned");
    let groups = broker.ack_groups.lock().unwrap();
    let written: usize = groups.iter().map(Vec::len).sum();
    assert_eq!(written, 50, "each ack written once");
    assert!(groups.len() <= 50, "{} groups", groups.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_are_renewed_until_settled() {
    let (broker, transport) = transport(false);
    let channel = channel_with_queue(&transport).await;
    publish(&channel, "q", "long task").await;
    let mut consumer = channel.consume("q", ConsumeOptions::default()).await.unwrap();
    let delivery = next(&mut consumer.deliveries).await;
    let receipt = broker.claimed.lock().unwrap().keys().next().cloned().unwrap();
    eventually(
        Duration::from_secs(2),
        "the held receipt is renewed twice",
        || {
            broker
                .renewals
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.contains(&receipt))
                .count()
                >= 2
        },
    )
    .await;
    {
        let h = delivery.ack.unwrap();
        h.acknowledger.ack(h.tag).await.unwrap();
    }
    transport.close().await.unwrap();
    let renewed_after_ack = broker.renewals.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        broker.renewals.lock().unwrap().len(),
        renewed_after_ack,
        "nothing is renewed once settled and closed"
    );
}

/// A consumer whose receive (waiting with room for 64) claims `a`, `b`, `c` after prefetch
/// dropped to 1: `a` is delivered, `b` and `c` wait in the channel's stash.
async fn one_delivered_two_stashed(
    broker: &Broker,
    transport: &VirtualTransport<Backend>,
) -> (Arc<dyn kombu_core::Channel>, kombu_core::ConsumerHandle, Delivery) {
    let channel = channel_with_queue(transport).await;
    let mut consumer = channel.consume("q", ConsumeOptions::default()).await.unwrap();
    eventually(Duration::from_secs(2), "a receive waits", || {
        *broker.receives.lock().unwrap() > 0
    })
    .await;
    channel.qos(QosOptions::prefetch(1)).await.unwrap();
    // All three become ready at once, so the waiting receive claims them together.
    {
        let mut ready = broker.ready.lock().unwrap();
        let q = ready.entry("q".into()).or_default();
        for body in ["a", "b", "c"] {
            q.push_back(Envelope::new(message(body), "", "q"));
        }
    }
    broker.arrived.notify_waiters();
    let first = next(&mut consumer.deliveries).await;
    assert_eq!(&first.message.body[..], b"a");
    assert_eq!(broker.claimed_len(), 3, "all three were claimed by one receive");
    (channel, consumer, first)
}

fn ready_bodies(broker: &Broker) -> Vec<Vec<u8>> {
    broker.ready.lock().unwrap()["q"]
        .iter()
        .map(|e| e.message.body.to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_gives_back_unacked_and_received_ahead_in_order() {
    let (broker, transport) = transport(true);
    let (channel, _consumer, _first) = one_delivered_two_stashed(&broker, &transport).await;
    channel.close().await.unwrap();
    eventually(Duration::from_secs(2), "every claim is given back", || {
        broker.claimed_len() == 0
    })
    .await;
    assert_eq!(
        ready_bodies(&broker),
        [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    assert!(broker.ready.lock().unwrap()["q"].iter().all(|e| e.redelivered));
    assert_eq!(
        *broker.requeue_batches.lock().unwrap(),
        [3],
        "the unacked one and the two received ahead went back in one batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_gives_back_what_was_received_ahead() {
    let (broker, transport) = transport(true);
    let (channel, consumer, first) = one_delivered_two_stashed(&broker, &transport).await;
    channel.cancel(&consumer.consumer_tag).await.unwrap();
    // The delivered one stays the consumer's to settle; the two received ahead go back.
    eventually(Duration::from_secs(2), "the stashed two are given back", || {
        broker.claimed_len() == 1
    })
    .await;
    assert_eq!(ready_bodies(&broker), [b"b".to_vec(), b"c".to_vec()]);
    let handle = first.ack.unwrap();
    handle.acknowledger.ack(handle.tag).await.unwrap();
    transport.close().await.unwrap();
    assert_eq!(broker.claimed_len(), 0);
}
