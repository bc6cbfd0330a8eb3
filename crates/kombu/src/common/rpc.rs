//! A request/reply client over `reply_to` and `correlation_id`.

use std::time::Duration;

use kombu_core::{Error, ErrorKind, Queue, Result};
use serde::Serialize;
use tokio::time::Instant;
use tracing::debug;

use crate::{Consumer, Message, Producer, PublishOptions};

/// Sends requests and waits for their replies: the client side of [`send_reply`].
///
/// The client declares one reply queue, `rpc.reply.<uuid4>` (exclusive, auto-delete, not
/// durable), consumes it without acks, and reuses it for every call. Each call sets
/// `reply_to` to that queue and a fresh `correlation_id` (a uuid4), publishes the request
/// with the options given (exchange, routing key, …), and waits for the reply carrying that
/// `correlation_id`; replies with another (a late answer to an earlier call that timed out)
/// are dropped. A call takes `&mut self`: one call at a time per client.
///
/// [`send_reply`]: super::send_reply
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
/// use std::time::Duration;
/// use kombu::common::{send_reply, RpcClient};
/// use kombu::{Connection, PublishOptions, Queue};
/// let conn = Connection::new("memory:///rpc-doc")?;
/// let mut server = conn.consumer([Queue::new("square")]).consume().await?;
/// let producer = conn.producer();
/// tokio::spawn(async move {
///     let request = server.recv().await?;
///     let n: i64 = request.decode()?;
///     send_reply(&producer, &request, &(n * n), PublishOptions::new()).await?;
///     request.ack().await
/// });
///
/// let mut client = RpcClient::new(conn.producer()).await?;
/// let reply = client
///     .call(&7, PublishOptions::new().routing_key("square"), Duration::from_secs(5))
///     .await?;
/// assert_eq!(reply.decode::<i64>()?, 49);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RpcClient {
    producer: Producer,
    replies: Consumer,
}

impl RpcClient {
    /// A client publishing with `producer`, its reply queue declared and consumed on the
    /// producer's connection.
    pub async fn new(producer: Producer) -> Result<RpcClient> {
        let queue = Queue::new(format!("rpc.reply.{}", uuid::Uuid::new_v4()))
            .durable(false)
            .exclusive(true)
            .auto_delete(true);
        let replies = producer
            .connection()
            .consumer([queue])
            .no_ack(true)
            .consume()
            .await?;
        Ok(RpcClient { producer, replies })
    }

    /// The reply queue's name (the `reply_to` of every request).
    pub fn reply_queue(&self) -> &str {
        &self.replies.queues()[0].name
    }

    /// Publish `body` with `options` as a request and wait at most `timeout` for its reply: an
    /// [`ErrorKind::Timeout`] error if none comes in time. `reply_to` and `correlation_id`
    /// are set by the call.
    pub async fn call<T: Serialize + ?Sized>(
        &mut self,
        body: &T,
        options: PublishOptions,
        timeout: Duration,
    ) -> Result<Message> {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let options = options
            .reply_to(self.reply_queue().to_owned())
            .correlation_id(correlation_id.clone());
        let deadline = Instant::now() + timeout;
        tokio::time::timeout_at(deadline, self.producer.publish(body, options))
            .await
            .map_err(|_| timed_out(timeout, &correlation_id))??;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match self.replies.recv_timeout(left).await {
                Err(e) if e.kind() == ErrorKind::Timeout => return Err(timed_out(timeout, &correlation_id)),
                other => other?,
            };
            if message.properties().correlation_id.as_deref() == Some(correlation_id.as_str()) {
                return Ok(message);
            }
            debug!(
                expected = %correlation_id,
                got = ?message.properties().correlation_id,
                "dropping a reply to another request"
            );
        }
    }

    /// Stop consuming the reply queue and close its channel.
    pub async fn close(self) -> Result<()> {
        self.replies.close().await
    }
}

fn timed_out(timeout: Duration, correlation_id: &str) -> Error {
    Error::new(ErrorKind::Timeout, "no reply within the timeout")
        .with_context("timeout_ms", timeout.as_millis())
        .with_context("correlation_id", correlation_id)
        .set_recoverable(false)
}

/// One request/reply with a client of its own: [`RpcClient::new`] then
/// [`RpcClient::call`], the reply queue closed afterwards. Keep an [`RpcClient`] to make
/// several calls over one reply queue.
pub async fn rpc_call<T: Serialize + ?Sized>(
    producer: &Producer,
    body: &T,
    options: PublishOptions,
    timeout: Duration,
) -> Result<Message> {
    let mut client = RpcClient::new(producer.clone()).await?;
    let result = client.call(body, options, timeout).await;
    let closed = client.close().await;
    let reply = result?;
    closed?;
    Ok(reply)
}
