//! Kombu's `send_reply`.

use kombu_core::{Error, ErrorKind, Exchange, Result};
use serde::Serialize;

use crate::{serialization, Message, Producer, PublishOptions};

/// Answer `request`: publish `body` to the queue named by its `reply_to` property, with its
/// `correlation_id` (Kombu's `kombu.common.send_reply`).
///
/// As Kombu's `send_reply`, it publishes with:
/// - routing key: the request's `reply_to`; an `InvalidArgument` error if it has none;
/// - `correlation_id`: the request's (none if it has none);
/// - serializer: the one of the request's content type, and its content encoding, so the
///   reply is in the request's format;
/// - no retry and no declaration unless `options` ask for them (Kombu's `retry=False`).
///
/// The exchange is the default exchange (the direct route to the queue `reply_to`) unless
/// `options` names one, as Kombu's `exchange` argument does; anything set in `options` wins
/// over the above, as Kombu's `**props` do. One difference: where Kombu fails with a
/// `KeyError` on a content type no serializer is registered for, this falls back to the
/// producer's serializer.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu::Result<()> {
/// use kombu::common::send_reply;
/// use kombu::{Connection, PublishOptions};
/// let conn = Connection::new("memory:///send-reply-doc")?;
/// let requests = conn.simple_queue("requests");
/// let replies = conn.simple_queue("replies");
/// requests
///     .put_with(&2, PublishOptions::new().reply_to("replies").correlation_id("c-1"))
///     .await?;
///
/// let request = requests.get(None).await?;
/// let n: i64 = request.decode()?;
/// send_reply(&conn.producer(), &request, &(n * n), PublishOptions::new()).await?;
/// request.ack().await?;
///
/// let reply = replies.get(None).await?;
/// assert_eq!(reply.decode::<i64>()?, 4);
/// assert_eq!(reply.properties().correlation_id.as_deref(), Some("c-1"));
/// # Ok(()) }
/// ```
pub async fn send_reply<T: Serialize + ?Sized>(
    producer: &Producer,
    request: &Message,
    body: &T,
    options: PublishOptions,
) -> Result<()> {
    let options = reply_options(request, options)?;
    producer.publish(body, options).await
}

/// The publish options of a reply to `request`, `options` winning.
pub(crate) fn reply_options(request: &Message, mut options: PublishOptions) -> Result<PublishOptions> {
    let properties = request.properties();
    let reply_to = properties.reply_to.as_deref().filter(|r| !r.is_empty());
    if options.routing_key.is_none() {
        let reply_to = reply_to.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                "the request has no reply_to property: there is no queue to reply to",
            )
        })?;
        options = options.routing_key(reply_to);
    }
    if options.exchange.is_none() {
        options.exchange = Some(Exchange::default_exchange());
    }
    if options.correlation_id.is_none() {
        options.correlation_id = properties.correlation_id.clone();
    }
    if options.serializer.is_none() && options.content_type.is_none() {
        if let Some(serializer) = request.content_type().and_then(serialization::for_content_type) {
            options.serializer = Some(serializer.name().to_owned());
            if options.content_encoding.is_none() {
                options.content_encoding = request.content_encoding().map(str::to_owned);
            }
        }
    }
    Ok(options)
}
