//! # kombu-sqs
//!
//! The Amazon SQS transport of kombu-rs (`sqs://`), on the AWS SDK for Rust
//! (`aws-sdk-sqs`), reading and writing messages exactly as Python Kombu 5.7's SQS transport
//! does: Python and Rust producers and consumers share queues.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kombu_core::Result<()> {
//! use kombu_core::{GetOptions, RawPublishOptions, Queue, RawMessage};
//! // A local SQS (moto, ElasticMQ) at 127.0.0.1:5000; on AWS leave the host out and set
//! // `region` (and `is_secure=true` if you name an endpoint).
//! let url = "sqs://AKIDEXAMPLE:secret@127.0.0.1:5000?region=eu-west-1&wait_time_seconds=1".parse()?;
//! let transport = (kombu_sqs::DESCRIPTOR.connect)(kombu_core::ConnectOptions::new(url)).await?;
//! let channel = transport.create_channel().await?;
//! channel.declare_queue(&Queue::new("jobs"), Default::default()).await?;
//! channel.publish(RawMessage::new("hi"), RawPublishOptions::new("", "jobs")).await?;
//! if let Some(delivery) = channel.get("jobs", GetOptions::default()).await? {
//!     if let Some(handle) = &delivery.ack {
//!         handle.acknowledger.ack(handle.tag).await?; // DeleteMessageBatch, queued
//!     }
//! }
//! transport.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## The wire format (Kombu 5.7)
//!
//! * Queue names are Kombu's `canonical_queue_name`: `queue_name_prefix` + the name with
//!   every ASCII punctuation but `-` `_` `.` turned into `_`, then `.` into `-`, a trailing
//!   `.fifo` kept (`celery.pidbox` → `celery-pidbox`). A name ending `.fifo` is a FIFO queue.
//! * The message body is **base64 of Kombu's JSON envelope**, whose own body is base64 too
//!   (`body_encoding`): double base64. `sqs_base64_encoding=false` writes the JSON as is.
//!   Reading accepts both, whatever the option.
//! * `message_attributes` in the message properties (boto's shape:
//!   `{"name": {"DataType": "String", "StringValue": "v"}}`) are sent as SQS message
//!   attributes and removed from the envelope, as Kombu does.
//! * FIFO queues: `MessageGroupId` from the property of that name, else `default`;
//!   `MessageDeduplicationId` likewise, else a fresh uuid4. Standard queues: the
//!   `DelaySeconds` (or `delay_seconds`) property delays delivery (clamped to 0–900 s), and a
//!   `MessageGroupId` is passed on (SQS fair queues).
//! * Received messages carry Kombu's SQS facts in their properties: `sqs_queue` (the queue
//!   URL), `sqs_message` (`MessageId`, `ReceiptHandle`, system `Attributes` such as
//!   `ApproximateReceiveCount`) and `message_attributes`. Bodies that are not Kombu
//!   envelopes (other producers) are delivered as Kombu wraps them: the SQS body as the
//!   message body, no content type.
//!
//! ## Capabilities
//!
//! | capability | |
//! |---|---|
//! | exchanges | direct and topic (routed in the publishing process, as Kombu does); fanout through SNS with the `sns` feature and `supports_fanout=true` (see below), else `Unsupported` (the connection's capabilities report fanout only then) |
//! | crash-safe acks | yes: a message is deleted when acknowledged; a dead consumer's messages come back after `visibility_timeout` |
//! | long tasks | the visibility of held messages is extended every `visibility_timeout / 3` while the consumer lives (`ChangeMessageVisibilityBatch`) |
//! | requeue, recover, close | `ChangeMessageVisibility(Batch)` to 0: available again at once |
//! | reject without requeue | as Kombu 5.7: deleted, unless the queue has a RedrivePolicy (read with `GetQueueAttributes`, trusted 300 s; unreadable counts as present): then left for SQS to move to the dead-letter queue after `maxReceiveCount` receives. A predefined queue's `backoff_tasks` (`headers.task`) are never deleted: their visibility becomes `backoff_policy[ApproximateReceiveCount]` seconds |
//! | order | FIFO queues keep order per group; standard queues do not (`fifo_order` false) |
//! | delivery | at least once on standard queues (`exactly_once_delivery` false) |
//! | counts | approximate (`ApproximateNumberOfMessages`) |
//! | priorities, TTL, max length, dead lettering by argument | no (a queue's RedrivePolicy is SQS's own) |
//! | largest message | 256 KiB of SQS body (checked before any request: `LimitExceeded`) |
//!
//! ## Transport options (Kombu's names and defaults)
//!
//! | option | default | |
//! |---|---|---|
//! | `region` | `AWS_REGION`, `AWS_DEFAULT_REGION`, else `us-east-1` | |
//! | `visibility_timeout` | 1800 | seconds; set on queues this transport creates, and the renewal step |
//! | `wait_time_seconds` | 10 | long polling (0–20) |
//! | `polling_interval` | 1 | seconds between short polls when `wait_time_seconds=0` |
//! | `queue_name_prefix` | `""` | |
//! | `predefined_queues` | none | JSON `{name: {url, access_key_id, secret_access_key, region, backoff_policy, backoff_tasks}}`: only these queues are used, by URL; nothing is created, listed or deleted. `backoff_policy` (`{receive count: seconds}`) applies to a rejected message of the queue whose `headers.task` is in `backoff_tasks` |
//! | `sqs_base64_encoding` | true | |
//! | `fetch_message_attributes` | `["ApproximateReceiveCount"]` | JSON list (system attributes) or `{"MessageSystemAttributeNames": […], "MessageAttributeNames": […]}` |
//! | `sqs-creation-attributes` | none | JSON object of `CreateQueue` attributes |
//! | `queue_tags` | none | JSON object of tags for created queues |
//! | `is_secure` | false | `https://` for an endpoint named in the URL (feature `tls`) |
//! | `port` | none | the endpoint's port when the URL has none |
//! | `access_key_id`, `secret_access_key`, `session_token` | none | credentials when the URL has none; then `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` |
//! | `body_encoding` | `base64` | the envelope's inner body encoding |
//! | `supports_fanout` | false | fanout exchanges through SNS (feature `sns`; without it `true` is an `Unsupported` error at connect) |
//! | `predefined_exchanges` | none | JSON `{name: {arn, access_key_id, secret_access_key, region}}`: only these SNS topics are used, by ARN; none is created, and another fanout exchange is a `NotFound` error |
//!
//! `sts_role_arn` is an `Unsupported` error (not implemented);
//! `client-config`, `regioninfo` are accepted without effect; any other option is an
//! `InvalidArgument` error. Credentials never appear in `Debug` or `Display` output. No
//! instance-metadata (IMDS) lookup is ever made.
//!
//! ## Fanout through SNS (feature `sns`, `supports_fanout=true`)
//!
//! Kombu 5.7's layout, so Python and Rust publishers and consumers share fanout exchanges:
//!
//! * A fanout exchange is an SNS topic named `canonical_queue_name(exchange)` (a FIFO topic
//!   when that ends `.fifo`), tagged `ManagedBy=Celery/Kombu`; declaring the exchange creates
//!   it (`CreateTopic` returns an existing topic's ARN).
//! * Binding a queue to it subscribes the queue (`Subscribe`, protocol `sqs`,
//!   `RawMessageDelivery=true`) and adds the topic to the queue policy's `KombuManaged`
//!   statement (`SQS:SendMessage` from `sns.amazonaws.com` for that topic ARN), keeping the
//!   policy's other statements. Unbinding or deleting the queue unsubscribes it.
//! * A publish to it is one `Publish` of the JSON envelope (not base64), the
//!   `message_attributes` property as `String` message attributes, and on a `.fifo` exchange
//!   `MessageGroupId` (property, else `default`) and `MessageDeduplicationId` (property,
//!   else a uuid4). SNS puts a copy in every subscribed queue, received as any message.
//!
//! Kombu subscribes a queue when it starts consuming it; kombu-rs when the queue is bound,
//! so a message published between binding and consuming is not missed. Kombu's cleanup of
//! subscriptions whose queue was deleted (on exchange declare) is not done.
//!
//! ## `delivery_tag`: kept, by decision
//!
//! Kombu overwrites a received envelope's `properties.delivery_tag` with the SQS receipt
//! handle (its QoS keys deliveries by it). kombu-rs keeps the producer's uuid4, as every
//! kombu-rs transport does: a message's delivery tag is the same on each redelivery (a
//! receipt handle changes with every receive), so it can serve as an idempotency key.
//! Interop does not depend on it: Python Kombu overwrites the tag on its own receive, and
//! neither side settles by the other's tag. The receipt handle is in the delivery's
//! `sqs_message.ReceiptHandle` property, as in Kombu's `delivery_info`.
//!
//! ## Better than Kombu
//!
//! * **A long task is never redelivered under a live consumer** (Kombu #337): the core's
//!   renewal task extends the visibility of everything the connection holds.
//! * **Nothing is left invisible on shutdown**: closing a channel, cancelling a consumer or
//!   `recover` gives every held and prefetched message back at once
//!   (`ChangeMessageVisibilityBatch` to 0), and a requeued message is visible at once (Kombu
//!   waits `wait_time_seconds`).
//! * **Acks are batched**: `DeleteMessageBatch` for all acks queued meanwhile; publishes to a
//!   queue that wait at the same time go out as `SendMessageBatch` groups of 10, each
//!   publish answered by its own entry (a refused entry is that publish's error).
//! * **Backoff follows the queue a message came from**: Kombu looks the predefined queue up
//!   by the message's routing key (the same name for Celery's default routing), kombu-rs by
//!   the queue it was received from. Backoff applies to `reject(requeue=false)`; a requeue
//!   makes the message visible at once, as every requeue here does.
//! * **A queue bound to two fanout exchanges receives from both**: the `KombuManaged` policy
//!   statement lists every topic (Kombu's holds only the last one bound).
//! * **Predefined queues never call `ListQueues`** or `GetQueueUrl`; other queues are looked
//!   up by exact name with `GetQueueUrl` (no 1,000-queue listing limit).
//! * **Foreign bodies are not garbled**: only a body that decodes to a Kombu envelope is
//!   taken as base64; any other text is delivered exactly as sent.
//! * An envelope that cannot be decoded is a typed `Decode` error for the consumer, the other
//!   messages keep flowing, and the broken one stays on the queue (a redrive policy moves it
//!   to its dead-letter queue).
//! * A queue that vanishes (deleted, or an emulator restarted) is created again by the next
//!   receive; consumers resume by themselves after the endpoint comes back.
//!
//! ## Not yet implemented
//!
//! * Credentials come from the URL, the options or the environment only: no profile files,
//!   web identity, STS role (`sts_role_arn` is an `Unsupported` error) or instance metadata.
//!   The standard chain through `aws-config` is held back for its build cost: measured on
//!   the 2-core dev machine, its new crates take about 165 s of compile time in a kombu-sqs
//!   build (aws-config 17 s, aws-sdk-sts 31 s, the rest the `url`/ICU stack and syn 3, which
//!   the amqp and mongodb transports already bring into a `full` build), and switching it
//!   on rebuilds the AWS stack once for tokio's extra features.
//!
//! ## Rust version
//!
//! aws-sdk-sqs 1.119 (and its smithy crates) declare `rust-version = 1.94.1`, which is
//! therefore the workspace's one MSRV (every crate inherits it).
//!
//! ## Features
//!
//! * `tls` (default): HTTPS through rustls with ring (no aws-lc, no OpenSSL) and the
//!   platform's root certificates. Without it only `http://` endpoints work.
//! * `sns`: fanout exchanges through SNS (`aws-sdk-sns`, with the same lean features as
//!   aws-sdk-sqs), turned on per connection by `supports_fanout=true`. The kombu facade's
//!   feature `sqs-sns`.
#![forbid(unsafe_code)]

mod backend;
mod batch;
mod settings;
#[cfg(feature = "sns")]
mod sns;

use std::sync::Arc;

use kombu_core::registry::{ConnectFuture, TransportDescriptor};
use kombu_core::virtual_transport::{BrokerState, VirtualTransport};
use kombu_core::{BodyEncoding, Capabilities, ConnectOptions, ExchangeType, Transport};

/// The URL schemes this transport serves (Kombu's `sqs`; `SQS` is the same scheme).
pub const SCHEMES: &[&str] = &["sqs"];

/// Largest message body accepted: SQS takes 256 KiB per message, and the envelope carries
/// the body base64-encoded (twice by default), so the exact check is made on the SQS body.
pub const MAX_MESSAGE_SIZE: u64 = 256 * 1024;

/// What the SQS transport supports (standard queues; FIFO queues also keep order per group).
pub const CAPABILITIES: Capabilities = Capabilities {
    exchange_direct: true,
    exchange_topic: true,
    crash_safe_acks: true,
    restore_unacked_on_close: true,
    recover: true,
    extend_visibility: true,
    max_message_size: Some(MAX_MESSAGE_SIZE),
    cross_process: true,
    ..Capabilities::NONE
};

/// How to turn fanout on, in the `Unsupported` error of a fanout exchange.
const FANOUT_HINT: &str = if cfg!(feature = "sns") {
    "fanout on SQS goes through SNS: set the transport option supports_fanout=true"
} else {
    "fanout on SQS goes through SNS: build kombu-sqs with its feature `sns` (kombu's `sqs-sns`) \
     and set the transport option supports_fanout=true"
};

/// The registry entry of the SQS transport.
pub static DESCRIPTOR: TransportDescriptor = TransportDescriptor::new("sqs", connect)
    .schemes(SCHEMES)
    .kombu_feature("sqs")
    .description("Amazon SQS, Python Kombu's message format; receipts, long polling, batches")
    .capabilities(CAPABILITIES);

kombu_core::inventory::submit! { kombu_core::registry::Registration(&DESCRIPTOR) }

/// Register the SQS transport explicitly (see [`kombu_core::registry`]).
pub fn register() {
    kombu_core::registry::register(&DESCRIPTOR);
}

fn connect(options: ConnectOptions) -> ConnectFuture {
    Box::pin(async move {
        let settings = settings::Settings::from_options(&options)?;
        let encoding = if settings.body_base64 {
            BodyEncoding::Base64
        } else {
            BodyEncoding::Utf8
        };
        // Fanout works only through SNS: built with `sns` and turned on per connection.
        let capabilities = Capabilities {
            exchange_fanout: cfg!(feature = "sns") && settings.supports_fanout,
            ..CAPABILITIES
        };
        let backend = backend::SqsBackend::new(settings, capabilities)?;
        let mut transport =
            VirtualTransport::new(Arc::new(backend), BrokerState::new()).with_body_encoding(encoding);
        if !capabilities.exchange_fanout {
            transport = transport.with_unsupported_hint(ExchangeType::Fanout, FANOUT_HINT);
        }
        let transport: Arc<dyn Transport> = Arc::new(transport);
        Ok(transport)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn inventory_holds_the_descriptor_itself() {
        assert!(
            kombu_core::registry::is_submitted(&super::DESCRIPTOR),
            "DESCRIPTOR was not submitted to inventory"
        );
    }
}
