//! The SQS backend: queues by URL, Kombu's message body, receipts, long polling.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials as AwsCredentials, Region};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageAttributeValue,
    MessageSystemAttributeName, QueueAttributeName,
};
use aws_sdk_sqs::Client;
use base64::Engine as _;
use futures_util::future::join_all;
use kombu_core::envelope::BodyEncoding;
use kombu_core::virtual_transport::{Claimed, ClaimingWait, Receipts, Requeue, Settle, VirtualBackend};
use kombu_core::{Capabilities, Envelope, Error, ErrorKind, FieldTable, Queue, RawMessage, Result, Value};
use tracing::{debug, instrument, warn};

use crate::batch::SendBatcher;
use crate::settings::{Credentials, Settings};

/// SQS's limit on one message: body plus attributes.
pub(crate) const SQS_MAX_MESSAGE: usize = 256 * 1024;
/// SQS's batch size (receive, send, delete, change visibility).
pub(crate) const SQS_BATCH: usize = 10;

/// How long a queue's RedrivePolicy (or its absence) is trusted before it is read again
/// (Kombu's `redrive_policy_cache_ttl`).
const REDRIVE_POLICY_TTL: Duration = Duration::from_secs(300);

/// A resolved queue: its URL and the client that may use it (predefined queues may have
/// their own credentials and region, and a backoff policy).
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) url: Arc<str>,
    pub(crate) client: Client,
    pub(crate) backoff: Option<Arc<Backoff>>,
}

impl Target {
    /// One attribute of the queue (`GetQueueAttributes`); `None` when the queue has none of
    /// that name (a queue without a RedrivePolicy, without a Policy).
    pub(crate) async fn attribute(&self, name: QueueAttributeName) -> Result<Option<String>> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&*self.url)
            .attribute_names(name.clone())
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", e))?;
        Ok(out.attributes().and_then(|a| a.get(&name)).cloned())
    }
}

/// A predefined queue's `backoff_policy` for its `backoff_tasks` (both given, as Kombu needs).
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: BTreeMap<u32, u32>,
    tasks: Vec<String>,
}

/// What a reject without requeue does to a held message (Kombu 5.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnReject {
    /// Deleted, unless its queue has a RedrivePolicy: then left for SQS to move to the
    /// dead-letter queue after `maxReceiveCount` receives.
    Discard,
    /// A task of the queue's `backoff_tasks`: never deleted; visible again after the policy's
    /// seconds for its receive count (`None`: the policy has no entry for that count, and the
    /// message comes back after its visibility timeout).
    Backoff(Option<u32>),
}

/// A message this connection holds: its queue, and what a reject does to it.
#[derive(Clone, Debug)]
struct Held {
    target: Target,
    on_reject: OnReject,
}

pub(crate) struct SqsBackend {
    settings: Settings,
    client: Client,
    /// Predefined queues by canonical name.
    predefined: HashMap<String, Target>,
    /// Queue URLs by canonical name (Kombu's `_queue_cache`).
    urls: Mutex<HashMap<String, Target>>,
    /// Receipts held by this connection → their queue (renewal needs the URL).
    held: Mutex<HashMap<String, Held>>,
    /// Queue URL → whether it has a RedrivePolicy, and when that was read.
    redrive: Mutex<HashMap<Arc<str>, (bool, Instant)>>,
    pub(crate) batcher: SendBatcher,
    capabilities: Capabilities,
    /// SNS fanout, when `supports_fanout` is on.
    #[cfg(feature = "sns")]
    fanout: Option<crate::sns::Fanout>,
    /// Always empty: SNS copies a fanout message into each queue, where it is received as
    /// any other message (the core's native-fanout path needs a buffer all the same).
    #[cfg(feature = "sns")]
    broadcast: kombu_core::virtual_transport::BroadcastBuffer,
}

impl std::fmt::Debug for SqsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBackend")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every AWS client of a connection is built from: the credentials, the HTTP client
/// (rustls with ring where `tls` is on) and the timeouts.
pub(crate) fn client_parts(
    credentials: &Credentials,
) -> (
    AwsCredentials,
    aws_sdk_sqs::config::SharedHttpClient,
    aws_sdk_sqs::config::timeout::TimeoutConfig,
) {
    let creds = AwsCredentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.expose().to_owned(),
        credentials.session_token.as_ref().map(|t| t.expose().to_owned()),
        None,
        "kombu-sqs",
    );
    let mut http = aws_smithy_http_client::Builder::new();
    http = http.pool_idle_timeout(Duration::from_secs(30));
    #[cfg(feature = "tls")]
    let http = http
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    #[cfg(not(feature = "tls"))]
    let http = http.build_http();
    let timeouts = aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .build();
    (creds, http, timeouts)
}

fn build_client(settings: &Settings, region: &str, credentials: &Credentials) -> Client {
    let (creds, http, timeouts) = client_parts(credentials);
    let mut config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(creds)
        .http_client(http)
        .timeout_config(timeouts)
        // The core retries recoverable errors itself; one retry here smooths a dropped
        // keep-alive connection.
        .retry_config(aws_sdk_sqs::config::retry::RetryConfig::standard().with_max_attempts(2));
    if let Some(endpoint) = &settings.endpoint {
        config = config.endpoint_url(endpoint.clone());
    }
    Client::from_conf(config.build())
}

/// Map an SDK error to a kombu error: transport failures are recoverable `Connection` errors,
/// service errors by their code.
pub(crate) fn sdk_error<E, R>(op: &'static str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    sdk_error_of("SQS", op, err)
}

/// [`sdk_error`] for a service by name (SQS, SNS).
pub(crate) fn sdk_error_of<E, R>(service: &'static str, op: &'static str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = err.code().map(str::to_owned);
    let detail = err.message().map(str::to_owned);
    let (kind, recoverable) = match &err {
        SdkError::ConstructionFailure(_) => (ErrorKind::InvalidArgument, false),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (ErrorKind::Connection, true)
        }
        SdkError::ServiceError(_) => match code.as_deref() {
            Some(c) if is_missing_queue(c) => (ErrorKind::NotFound, false),
            // SNS: a topic or subscription that does not exist.
            Some("NotFound" | "NotFoundException") => (ErrorKind::NotFound, false),
            Some("QueueAlreadyExists" | "QueueNameExists") => (ErrorKind::NotEquivalent, false),
            Some("QueueDeletedRecently") => (ErrorKind::PreconditionFailed, true),
            Some(
                "AccessDenied"
                | "AccessDeniedException"
                | "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
                | "UnrecognizedClientException"
                | "MissingAuthenticationToken"
                | "ExpiredToken"
                | "AuthorizationError",
            ) => (ErrorKind::PreconditionFailed, false),
            Some("MessageTooLong" | "BatchRequestTooLong" | "TooManyEntriesInBatchRequest") => {
                (ErrorKind::LimitExceeded, false)
            }
            Some(
                "Throttling"
                | "ThrottlingException"
                | "RequestThrottled"
                | "ServiceUnavailable"
                | "InternalFailure"
                | "InternalError"
                | "KmsThrottled",
            ) => (ErrorKind::Connection, true),
            _ => (ErrorKind::Channel, false),
        },
        _ => (ErrorKind::Connection, true),
    };
    let mut message = format!("{service} {op} failed");
    if let Some(c) = &code {
        message.push_str(&format!(": {c}"));
    }
    if let Some(d) = &detail {
        message.push_str(&format!(" ({d})"));
    }
    if kind == ErrorKind::Connection {
        message.push_str(&format!(" — is the {service} endpoint reachable?"));
    }
    Error::new(kind, message)
        .set_recoverable(recoverable)
        .with_source(aws_sdk_sqs::error::DisplayErrorContext(err).to_string())
}

fn is_missing_queue(code: &str) -> bool {
    matches!(
        code,
        "QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue" | "NonExistentQueue"
    )
}

/// What a received message body holds.
enum Body {
    /// A Kombu envelope.
    Kombu(Envelope),
    /// Something else: wrapped as Kombu does, the body text untouched.
    Foreign,
}

/// Strict base64 (padded, standard alphabet) of a whole string, or `None`.
fn strict_base64(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    if t.is_empty() || !t.len().is_multiple_of(4) {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(t).ok()
}

fn looks_like_envelope(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .is_some_and(|v| v.get("properties").is_some_and(serde_json::Value::is_object))
}

/// Read an SQS body as Kombu 5.7 writes it: base64 of the JSON envelope, or the JSON itself.
/// Only a body that *is* an envelope (an object with `properties`) once decoded is taken as
/// one; anything else is a foreign message and keeps its exact text (Kombu replaces a
/// foreign body that happens to be valid base64 by its decoding).
fn read_body(text: &str) -> Result<Body> {
    if let Some(decoded) = strict_base64(text) {
        if looks_like_envelope(&decoded) {
            return Envelope::from_json(&decoded).map(Body::Kombu);
        }
    }
    if looks_like_envelope(text.as_bytes()) {
        return Envelope::from_json(text.as_bytes()).map(Body::Kombu);
    }
    Ok(Body::Foreign)
}

/// Kombu's `message_attributes` property (boto's shape) → SQS message attributes.
fn message_attributes(value: &Value) -> Result<HashMap<String, MessageAttributeValue>> {
    let invalid = |m: String| Error::new(ErrorKind::InvalidArgument, m);
    let Value::Table(table) = value else {
        return Err(invalid(
            "message_attributes must be a table of name → {DataType, StringValue|BinaryValue}".into(),
        ));
    };
    let mut out = HashMap::with_capacity(table.len());
    for (name, attr) in table {
        let Value::Table(attr) = attr else {
            return Err(invalid(format!("message attribute {name:?} must be a table")));
        };
        let data_type = attr.get("DataType").and_then(Value::as_str).unwrap_or("String");
        let mut builder = MessageAttributeValue::builder().data_type(data_type);
        match (attr.get("StringValue"), attr.get("BinaryValue")) {
            (Some(Value::String(s)), _) => builder = builder.string_value(s.clone()),
            (Some(v @ (Value::Int(_) | Value::Float(_))), _) => {
                builder = builder.string_value(v.to_json().to_string())
            }
            (_, Some(Value::Bytes(b))) => builder = builder.binary_value(Blob::new(b.clone())),
            (_, Some(Value::String(s))) => builder = builder.binary_value(Blob::new(s.as_bytes().to_vec())),
            _ => {
                return Err(invalid(format!(
                    "message attribute {name:?} needs a StringValue or BinaryValue"
                )))
            }
        }
        let built = builder
            .build()
            .map_err(|e| invalid(format!("message attribute {name:?}: {e}")))?;
        out.insert(name.clone(), built);
    }
    Ok(out)
}

fn attributes_size(attrs: &HashMap<String, MessageAttributeValue>) -> usize {
    attrs
        .iter()
        .map(|(k, v)| {
            k.len()
                + v.data_type().len()
                + v.string_value().map_or(0, str::len)
                + v.binary_value().map_or(0, |b| b.as_ref().len())
        })
        .sum()
}

/// One message ready to send: what `SendMessage` / a `SendMessageBatch` entry carries.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) body: String,
    pub(crate) attributes: Option<HashMap<String, MessageAttributeValue>>,
    pub(crate) group_id: Option<String>,
    pub(crate) dedup_id: Option<String>,
    pub(crate) delay_seconds: Option<i32>,
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Null => None,
        other => Some(other.to_json().to_string()),
    }
}

impl SqsBackend {
    pub(crate) fn new(settings: Settings, capabilities: Capabilities) -> Result<SqsBackend> {
        let default_credentials = settings.credentials.clone();
        let missing = || {
            Error::new(
                ErrorKind::InvalidArgument,
                "no AWS credentials: give them in the URL (sqs://KEY:SECRET@…), as the transport \
                 options access_key_id/secret_access_key, or in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            )
        };
        let client = match &default_credentials {
            Some(c) => build_client(&settings, &settings.region, c),
            None if !settings.predefined_queues.is_empty()
                && settings
                    .predefined_queues
                    .values()
                    .all(|q| q.credentials.is_some()) =>
            {
                // Every queue has its own keys; the default client is never used to sign.
                let placeholder = Credentials {
                    access_key_id: String::new(),
                    secret_access_key: kombu_core::Secret::new(""),
                    session_token: None,
                };
                build_client(&settings, &settings.region, &placeholder)
            }
            None => return Err(missing()),
        };
        let mut predefined = HashMap::new();
        for (name, q) in &settings.predefined_queues {
            let region = q.region.as_deref().unwrap_or(&settings.region);
            let queue_client = match (&q.credentials, q.region.is_some()) {
                (None, false) => client.clone(),
                (Some(c), _) => build_client(&settings, region, c),
                (None, true) => build_client(
                    &settings,
                    region,
                    default_credentials.as_ref().ok_or_else(missing)?,
                ),
            };
            let backoff = (!q.backoff_policy.is_empty() && !q.backoff_tasks.is_empty()).then(|| {
                Arc::new(Backoff {
                    policy: q.backoff_policy.clone(),
                    tasks: q.backoff_tasks.clone(),
                })
            });
            predefined.insert(
                settings.canonical_queue_name(name),
                Target {
                    url: Arc::from(q.url.as_str()),
                    client: queue_client,
                    backoff,
                },
            );
        }
        #[cfg(feature = "sns")]
        let fanout = if settings.supports_fanout {
            Some(crate::sns::Fanout::new(&settings, default_credentials.as_ref())?)
        } else {
            None
        };
        Ok(SqsBackend {
            #[cfg(feature = "sns")]
            fanout,
            #[cfg(feature = "sns")]
            broadcast: kombu_core::virtual_transport::BroadcastBuffer::new(Arc::new(
                tokio::sync::Notify::new(),
            )),
            settings,
            client,
            predefined,
            urls: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            redrive: Mutex::new(HashMap::new()),
            batcher: SendBatcher::default(),
            capabilities,
        })
    }

    /// The queue's URL and client: predefined, cached, looked up, or (`create`) created.
    pub(crate) async fn resolve(&self, queue: &str, create: bool) -> Result<Target> {
        let name = self.settings.canonical_queue_name(queue);
        if !self.predefined.is_empty() {
            return self.predefined.get(&name).cloned().ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("queue {name:?} must be defined in predefined_queues"),
                )
            });
        }
        if let Some(t) = lock(&self.urls).get(&name) {
            return Ok(t.clone());
        }
        let url = match self.client.get_queue_url().queue_name(&name).send().await {
            Ok(out) => out.queue_url().map(str::to_owned),
            Err(e) => {
                let e = sdk_error("GetQueueUrl", e);
                if e.kind() != ErrorKind::NotFound {
                    return Err(e);
                }
                None
            }
        };
        let url = match url {
            Some(url) => url,
            None if create => self.create_queue(&name, name.ends_with(".fifo")).await?,
            None => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("queue {name:?} does not exist in SQS"),
                ))
            }
        };
        let target = Target {
            url: Arc::from(url),
            client: self.client.clone(),
            backoff: None,
        };
        lock(&self.urls).insert(name, target.clone());
        Ok(target)
    }

    async fn create_queue(&self, name: &str, fifo: bool) -> Result<String> {
        let mut attributes = HashMap::new();
        attributes.insert(
            QueueAttributeName::VisibilityTimeout,
            self.settings.visibility_timeout.to_string(),
        );
        if fifo {
            attributes.insert(QueueAttributeName::FifoQueue, "true".to_owned());
        }
        for (k, v) in &self.settings.creation_attributes {
            attributes.insert(QueueAttributeName::from(k.as_str()), v.clone());
        }
        let mut request = self
            .client
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attributes));
        if !self.settings.queue_tags.is_empty() {
            request = request.set_tags(Some(
                self.settings
                    .queue_tags
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ));
        }
        let out = request.send().await.map_err(|e| sdk_error("CreateQueue", e))?;
        debug!(queue = name, "created SQS queue");
        out.queue_url()
            .map(str::to_owned)
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, "CreateQueue returned no QueueUrl"))
    }

    /// Send through the batcher; a cached queue URL that vanished (deleted, or an emulator
    /// restarted) is created again, as Kombu's `_new_queue` would, and the message sent once more.
    async fn send_to(&self, queue: &str, target: Target, outgoing: Outgoing) -> Result<()> {
        match self.batcher.send(&target, outgoing.clone()).await {
            Err(e) if e.kind() == ErrorKind::NotFound && self.predefined.is_empty() => {
                self.forget(queue);
                let target = self.resolve(queue, true).await?;
                self.batcher.send(&target, outgoing).await
            }
            other => other,
        }
    }

    /// Forget a cached URL whose queue vanished (deleted, or the server restarted empty).
    fn forget(&self, queue: &str) {
        let name = self.settings.canonical_queue_name(queue);
        lock(&self.urls).remove(&name);
    }

    /// The envelope as SQS message fields (Kombu's `_put`): `message_attributes` popped into
    /// the message attributes, FIFO group and deduplication ids, `DelaySeconds`; the body
    /// base64 of the JSON envelope unless `sqs_base64_encoding` is off. Checked against SQS's
    /// size limit before anything is sent.
    pub(crate) fn outgoing(&self, fifo: bool, mut envelope: Envelope) -> Result<Outgoing> {
        let extra = &envelope.message.properties.extra;
        let needs_edit = ["message_attributes", "sqs_message", "sqs_queue"]
            .iter()
            .any(|k| extra.contains_key(*k));
        let mut attributes = None;
        if needs_edit {
            let props = envelope.message.properties_mut();
            props.extra.remove("sqs_message");
            props.extra.remove("sqs_queue");
            if let Some(v) = props.extra.remove("message_attributes") {
                let attrs = message_attributes(&v)?;
                if !attrs.is_empty() {
                    attributes = Some(attrs);
                }
            }
        }
        let extra = &envelope.message.properties.extra;
        let (group_id, dedup_id, delay_seconds) = if fifo {
            (
                Some(
                    extra
                        .get("MessageGroupId")
                        .and_then(text_of)
                        .unwrap_or_else(|| "default".to_owned()),
                ),
                Some(
                    extra
                        .get("MessageDeduplicationId")
                        .and_then(text_of)
                        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                ),
                None,
            )
        } else {
            let delay = extra
                .get("DelaySeconds")
                .or_else(|| extra.get("delay_seconds"))
                .and_then(|v| {
                    v.as_i64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                })
                .map(|d| d.clamp(0, 900) as i32);
            // Standard queues take a group id too (SQS fair queues).
            (extra.get("MessageGroupId").and_then(text_of), None, delay)
        };
        let json = envelope.to_json();
        let body = if self.settings.base64_encoding {
            base64::engine::general_purpose::STANDARD.encode(json.as_bytes())
        } else {
            json
        };
        let size = body.len() + attributes.as_ref().map_or(0, attributes_size);
        if size > SQS_MAX_MESSAGE {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the SQS message would be {size} bytes; SQS takes at most {SQS_MAX_MESSAGE} (256 KiB)"
                ),
            )
            .with_context("size", size));
        }
        Ok(Outgoing {
            body,
            attributes,
            group_id,
            dedup_id,
            delay_seconds,
        })
    }

    /// A received SQS message as a claimed envelope, with Kombu's SQS facts in its properties
    /// (`sqs_queue`, `sqs_message` with the message id, receipt handle and attributes; the
    /// message attributes as `message_attributes`).
    fn to_claimed(&self, queue: &str, target: &Target, message: &Message) -> Result<Option<Claimed>> {
        let Some(receipt) = message.receipt_handle() else {
            return Ok(None);
        };
        let text = message.body().unwrap_or("");
        let mut envelope = match read_body(text) {
            Ok(Body::Kombu(envelope)) => envelope,
            Ok(Body::Foreign) => {
                let mut envelope = Envelope::new(RawMessage::new(text.as_bytes().to_vec()), "", queue);
                envelope.body_encoding = BodyEncoding::Utf8;
                envelope
            }
            Err(e) => {
                // Left invisible until its visibility timeout: a redrive policy moves it to
                // its dead-letter queue after maxReceiveCount receives.
                return Err(e
                    .with_context("queue", queue)
                    .with_context("message_id", message.message_id().unwrap_or("?")));
            }
        };
        // SQS counts receives: a message received before (requeued, or back after its
        // visibility timeout) is a redelivery.
        let receive_count = message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|n| n.trim().parse::<u32>().ok());
        if receive_count.is_some_and(|n| n > 1) {
            envelope.redelivered = true;
        }
        let on_reject = match &target.backoff {
            Some(backoff)
                if envelope
                    .message
                    .headers
                    .get("task")
                    .and_then(Value::as_str)
                    .is_some_and(|task| backoff.tasks.iter().any(|t| t == task)) =>
            {
                OnReject::Backoff(receive_count.and_then(|n| backoff.policy.get(&n).copied()))
            }
            _ => OnReject::Discard,
        };
        let props = envelope.message.properties_mut();
        let mut sqs = FieldTable::new();
        if let Some(id) = message.message_id() {
            sqs.insert("MessageId".into(), Value::String(id.to_owned()));
        }
        sqs.insert("ReceiptHandle".into(), Value::String(receipt.to_owned()));
        if let Some(attrs) = message.attributes() {
            let table = attrs
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.clone())))
                .collect();
            sqs.insert("Attributes".into(), Value::Table(table));
        }
        if let Some(attrs) = message.message_attributes() {
            let mut table = FieldTable::new();
            for (name, value) in attrs {
                let mut v = FieldTable::new();
                v.insert("DataType".into(), Value::String(value.data_type().to_owned()));
                if let Some(s) = value.string_value() {
                    v.insert("StringValue".into(), Value::String(s.to_owned()));
                }
                if let Some(b) = value.binary_value() {
                    v.insert("BinaryValue".into(), Value::Bytes(b.as_ref().to_vec()));
                }
                table.insert(name.clone(), Value::Table(v));
            }
            props
                .extra
                .insert("message_attributes".into(), Value::Table(table));
        }
        props.extra.insert("sqs_message".into(), Value::Table(sqs));
        props
            .extra
            .insert("sqs_queue".into(), Value::String(target.url.to_string()));
        lock(&self.held).insert(
            receipt.to_owned(),
            Held {
                target: target.clone(),
                on_reject,
            },
        );
        Ok(Some(Claimed::held(envelope, receipt)))
    }

    /// One `ReceiveMessage`: up to `max` (≤ 10) messages, waiting up to `wait` seconds.
    async fn receive_once(&self, queue: &str, max: usize, wait: u32, out: &mut Vec<Claimed>) -> Result<()> {
        let target = self.resolve(queue, true).await?;
        let fetch = &self.settings.fetch;
        let result = target
            .client
            .receive_message()
            .queue_url(&*target.url)
            .max_number_of_messages(max.clamp(1, SQS_BATCH) as i32)
            .wait_time_seconds(wait as i32)
            .set_message_system_attribute_names(Some(
                fetch
                    .system
                    .iter()
                    .map(|n| MessageSystemAttributeName::from(n.as_str()))
                    .collect(),
            ))
            .set_message_attribute_names((!fetch.message.is_empty()).then(|| fetch.message.clone()))
            .send()
            .await;
        let output = match result {
            Ok(o) => o,
            Err(e) => {
                let e = sdk_error("ReceiveMessage", e);
                if e.kind() == ErrorKind::NotFound && self.predefined.is_empty() {
                    // The queue vanished under us (deleted, or an emulator restarted empty):
                    // the next receive declares it again, as Kombu's `_new_queue` would.
                    self.forget(queue);
                    return Err(Error::new(
                        ErrorKind::Connection,
                        format!("SQS queue {queue:?} vanished; it will be created again"),
                    )
                    .set_recoverable(true));
                }
                return Err(e);
            }
        };
        let mut first_error = None;
        for message in output.messages() {
            match self.to_claimed(queue, &target, message) {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, queue, "malformed message on SQS queue");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn forget_receipts<'a>(&self, receipts: impl IntoIterator<Item = &'a str>) {
        let mut held = lock(&self.held);
        for r in receipts {
            held.remove(r);
        }
    }

    /// `ChangeMessageVisibilityBatch` for receipts of one queue, in groups of 10. Receipts
    /// that are no longer valid (the message was deleted, or its visibility ran out) are
    /// skipped, as Kombu forgets them.
    async fn change_visibility(&self, target: &Target, receipts: &[&str], timeout: u32) -> Result<()> {
        for chunk in receipts.chunks(SQS_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*r)
                        .visibility_timeout(timeout as i32)
                        .build()
                        .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            let out = target
                .client
                .change_message_visibility_batch()
                .queue_url(&*target.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_error("ChangeMessageVisibilityBatch", e))?;
            for failed in out.failed() {
                debug!(code = failed.code(), "visibility change skipped");
            }
        }
        Ok(())
    }

    /// Receipts grouped by the queue they were received from.
    fn group_by_target<'a>(
        &self,
        receipts: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(Target, Vec<&'a str>)> {
        let held = lock(&self.held);
        let mut groups: Vec<(Target, Vec<&'a str>)> = Vec::new();
        for r in receipts {
            if let Some(Held { target: t, .. }) = held.get(r) {
                match groups.iter_mut().find(|(g, _)| g.url == t.url) {
                    Some((_, list)) => list.push(r),
                    None => groups.push((t.clone(), vec![r])),
                }
            }
        }
        groups
    }
}

impl SqsBackend {
    /// Whether the queue has a RedrivePolicy (`GetQueueAttributes`, trusted for
    /// [`REDRIVE_POLICY_TTL`]). When it cannot be read the answer is `true`, as Kombu's: a
    /// rejected message is then left on the queue rather than lost.
    async fn has_redrive_policy(&self, target: &Target) -> bool {
        let now = Instant::now();
        if let Some((has, read_at)) = lock(&self.redrive).get(&target.url).copied() {
            if now.duration_since(read_at) < REDRIVE_POLICY_TTL {
                return has;
            }
        }
        match target.attribute(QueueAttributeName::RedrivePolicy).await {
            Ok(policy) => {
                let has = policy.is_some();
                lock(&self.redrive).insert(target.url.clone(), (has, now));
                has
            }
            Err(e) => {
                warn!(
                    error = %e,
                    queue = %target.url,
                    "could not read the queue's redrive policy; the rejected message is left on the queue"
                );
                if e.kind() == ErrorKind::PreconditionFailed {
                    // Access denied: asking again at once would be denied again.
                    lock(&self.redrive).insert(target.url.clone(), (true, now));
                }
                true
            }
        }
    }

    /// Settle messages rejected without requeue as Kombu 5.7 does; returns the receipts to
    /// delete. A backoff task's message gets the policy's visibility instead; a message of a
    /// queue with a RedrivePolicy is left for SQS to dead-letter. Either way this connection
    /// stops holding (and renewing) it.
    async fn settle_rejects<'a>(&self, receipts: Vec<&'a str>) -> Vec<&'a str> {
        let held: Vec<(&'a str, Held)> = {
            let held = lock(&self.held);
            receipts
                .into_iter()
                .filter_map(|r| held.get(r).map(|h| (r, h.clone())))
                .collect()
        };
        let mut delete = Vec::new();
        let mut left = Vec::new();
        // (queue, seconds) → receipts, for ChangeMessageVisibilityBatch.
        let mut backoff: Vec<(Target, u32, Vec<&'a str>)> = Vec::new();
        for (receipt, h) in held {
            match h.on_reject {
                OnReject::Backoff(Some(secs)) => {
                    match backoff
                        .iter_mut()
                        .find(|(t, s, _)| t.url == h.target.url && *s == secs)
                    {
                        Some((_, _, list)) => list.push(receipt),
                        None => backoff.push((h.target, secs, vec![receipt])),
                    }
                }
                OnReject::Backoff(None) => left.push(receipt),
                OnReject::Discard => {
                    if self.has_redrive_policy(&h.target).await {
                        left.push(receipt);
                    } else {
                        delete.push(receipt);
                    }
                }
            }
        }
        for (target, secs, receipts) in &backoff {
            if let Err(e) = self.change_visibility(target, receipts, *secs).await {
                warn!(error = %e, "could not apply the backoff policy to a rejected message");
            }
            left.extend(receipts.iter().copied());
        }
        self.forget_receipts(left);
        delete
    }
}

impl VirtualBackend for SqsBackend {
    fn name(&self) -> &'static str {
        "sqs"
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    #[instrument(level = "debug", skip_all, fields(queue = %queue.name))]
    async fn declare_queue(&self, queue: &Queue, _arguments: &FieldTable) -> Result<()> {
        self.resolve(&queue.name, true).await.map(|_| ())
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        match self.resolve(queue, false).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    #[instrument(level = "debug", skip_all, fields(queue))]
    async fn put(&self, queue: &str, envelope: Envelope) -> Result<()> {
        // The size check comes before any request.
        let fifo = self.settings.canonical_queue_name(queue).ends_with(".fifo");
        let outgoing = self.outgoing(fifo, envelope)?;
        let target = self.resolve(queue, true).await?;
        self.send_to(queue, target, outgoing).await
    }

    /// Every message is size-checked and its queue resolved first; then all sends reach the
    /// batcher together, in order, so they leave as `SendMessageBatch` requests of up to ten
    /// per queue (a FIFO queue keeps the batch's order).
    async fn put_batch(&self, puts: Vec<(Arc<str>, Envelope)>) -> Vec<Result<()>> {
        let mut prepared = Vec::with_capacity(puts.len());
        for (queue, envelope) in puts {
            let fifo = self.settings.canonical_queue_name(&queue).ends_with(".fifo");
            let ready = match self.outgoing(fifo, envelope) {
                Ok(outgoing) => self
                    .resolve(&queue, true)
                    .await
                    .map(|target| (queue, target, outgoing)),
                Err(e) => Err(e),
            };
            prepared.push(ready);
        }
        // `join_all` polls in order, and a send joins its queue's batch on its first poll.
        join_all(prepared.into_iter().map(|ready| async move {
            let (queue, target, outgoing) = ready?;
            self.send_to(&queue, target, outgoing).await
        }))
        .await
    }

    async fn get(&self, queue: &str) -> Result<Option<Claimed>> {
        let mut out = Vec::with_capacity(1);
        self.receive_once(queue, 1, 0, &mut out).await?;
        Ok(out.pop())
    }

    async fn get_batch(&self, queue: &str, max: usize, out: &mut Vec<Claimed>) -> Result<()> {
        if max == 0 {
            return Ok(());
        }
        self.receive_once(queue, max, 0, out).await
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let size = self.size(queue).await?;
        let target = self.resolve(queue, true).await?;
        target
            .client
            .purge_queue()
            .queue_url(&*target.url)
            .send()
            .await
            .map_err(|e| sdk_error("PurgeQueue", e))?;
        Ok(size)
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        let target = self.resolve(queue, true).await?;
        Ok(target
            .attribute(QueueAttributeName::ApproximateNumberOfMessages)
            .await?
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        if !self.predefined.is_empty() {
            // Kombu never deletes predefined queues.
            return Ok(());
        }
        let target = match self.resolve(queue, false).await {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        self.forget(queue);
        #[cfg(feature = "sns")]
        if let Some(fanout) = &self.fanout {
            // Kombu unsubscribes a deleted queue from its fanout topics.
            if let Err(e) = fanout.unsubscribe_queue(queue).await {
                warn!(error = %e, queue, "could not unsubscribe a deleted queue from its SNS topics");
            }
        }
        match target.client.delete_queue().queue_url(&*target.url).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = sdk_error("DeleteQueue", e);
                if e.kind() == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    fn polling_interval(&self) -> Duration {
        if self.settings.wait_time_seconds > 0 {
            Duration::from_secs(u64::from(self.settings.wait_time_seconds))
        } else {
            self.settings.polling_interval
        }
    }

    fn receipts(&self) -> Option<&impl Receipts> {
        Some(self)
    }

    #[cfg(feature = "sns")]
    fn stored_bindings(&self) -> Option<&impl kombu_core::virtual_transport::StoredBindings> {
        self.fanout.as_ref().map(|_| self)
    }

    #[cfg(feature = "sns")]
    fn native_fanout(&self) -> Option<&impl kombu_core::virtual_transport::NativeFanout> {
        self.fanout.as_ref().map(|_| self)
    }

    fn claiming_wait(&self) -> Option<&impl ClaimingWait> {
        Some(self)
    }
}

/// Fanout exchanges as SNS topics: declaring one creates its topic, binding a queue
/// subscribes it; nothing is stored for other exchange types (they route in the publishing
/// process, as without SNS).
#[cfg(feature = "sns")]
impl kombu_core::virtual_transport::StoredBindings for SqsBackend {
    async fn declare_exchange(&self, exchange: &kombu_core::Exchange) -> Result<()> {
        match &self.fanout {
            Some(fanout) if exchange.kind == kombu_core::ExchangeType::Fanout => {
                fanout.topic(&self.settings, &exchange.name).await.map(|_| ())
            }
            _ => Ok(()),
        }
    }

    async fn delete_exchange(&self, _exchange: &str) -> Result<()> {
        // Kombu leaves the topic (other processes may publish to it).
        Ok(())
    }

    async fn store_binding(
        &self,
        exchange: &kombu_core::Exchange,
        binding: &kombu_core::virtual_transport::StoredBinding,
    ) -> Result<()> {
        match &self.fanout {
            Some(fanout) if exchange.kind == kombu_core::ExchangeType::Fanout => {
                let target = self.resolve(&binding.queue, true).await?;
                fanout
                    .subscribe(&self.settings, &exchange.name, &binding.queue, &target)
                    .await
            }
            _ => Ok(()),
        }
    }

    async fn load_bindings(
        &self,
        _exchange: &str,
    ) -> Result<Option<kombu_core::virtual_transport::StoredRoutes>> {
        Ok(None)
    }

    async fn remove_binding(
        &self,
        exchange: &str,
        binding: &kombu_core::virtual_transport::StoredBinding,
    ) -> Result<()> {
        match &self.fanout {
            Some(fanout) => fanout.unsubscribe(exchange, &binding.queue).await,
            None => Ok(()),
        }
    }
}

#[cfg(feature = "sns")]
impl kombu_core::virtual_transport::NativeFanout for SqsBackend {
    async fn put_fanout(&self, exchange: &str, envelope: Envelope, _routing_key: &str) -> Result<()> {
        match &self.fanout {
            Some(fanout) => fanout.publish(&self.settings, exchange, &envelope).await,
            None => Err(Error::unsupported(
                "fanout exchanges on SQS need the transport option supports_fanout=true",
            )),
        }
    }

    fn broadcast_buffer(&self) -> &kombu_core::virtual_transport::BroadcastBuffer {
        &self.broadcast
    }
}

impl Receipts for SqsBackend {
    /// Acks are deleted (`DeleteMessageBatch`); rejects without requeue as Kombu 5.7 settles
    /// them (see [`SqsBackend::settle_rejects`]).
    async fn ack_batch(&self, batch: &[Settle]) -> Result<()> {
        let mut delete: Vec<&str> = batch
            .iter()
            .filter(|s| !s.rejected())
            .map(Settle::receipt)
            .collect();
        if batch.iter().any(Settle::rejected) {
            let rejects = batch
                .iter()
                .filter(|s| s.rejected())
                .map(Settle::receipt)
                .collect();
            delete.extend(self.settle_rejects(rejects).await);
        }
        let groups = self.group_by_target(delete);
        let mut first_error = None;
        for (target, receipts) in &groups {
            for chunk in receipts.chunks(SQS_BATCH) {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(*r)
                            .build()
                            .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let result = target
                    .client
                    .delete_message_batch()
                    .queue_url(&*target.url)
                    .set_entries(Some(entries))
                    .send()
                    .await;
                match result {
                    Ok(out) => {
                        for failed in out.failed() {
                            if failed.code() != "ReceiptHandleIsInvalid" {
                                warn!(
                                    code = failed.code(),
                                    "SQS could not delete an acknowledged message"
                                );
                            }
                        }
                        self.forget_receipts(chunk.iter().copied());
                    }
                    Err(e) => {
                        let e = sdk_error("DeleteMessageBatch", e);
                        if e.is_recoverable() {
                            return Err(e);
                        }
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn requeue(&self, _queue: &str, _envelope: Envelope, receipt: &str) -> Result<()> {
        for (target, receipts) in self.group_by_target([receipt]) {
            self.change_visibility(&target, &receipts, 0).await?;
        }
        self.forget_receipts([receipt]);
        Ok(())
    }

    async fn requeue_batch(&self, batch: Vec<Requeue>) -> Result<()> {
        let groups = self.group_by_target(batch.iter().map(Requeue::receipt));
        let mut first_error = None;
        for (target, receipts) in &groups {
            if let Err(e) = self.change_visibility(target, receipts, 0).await {
                first_error.get_or_insert(e);
            }
        }
        self.forget_receipts(batch.iter().map(Requeue::receipt));
        first_error.map_or(Ok(()), Err)
    }

    async fn renew(&self, receipts: &[&str]) -> Result<()> {
        let timeout = self.settings.visibility_timeout;
        for (target, group) in self.group_by_target(receipts.iter().copied()) {
            self.change_visibility(&target, &group, timeout).await?;
        }
        Ok(())
    }

    fn renewal_interval(&self) -> Option<Duration> {
        let vt = Duration::from_secs(u64::from(self.settings.visibility_timeout.max(1)));
        Some((vt / 3).max(Duration::from_millis(250)))
    }
}

impl ClaimingWait for SqsBackend {
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        timeout: Duration,
        out: &mut Vec<Claimed>,
    ) -> Result<()> {
        let wait = (timeout.as_secs() as u32)
            .min(self.settings.wait_time_seconds)
            .min(20);
        self.receive_once(queue, max, wait, out).await?;
        if out.is_empty() && wait == 0 {
            tokio::time::sleep(
                self.settings
                    .polling_interval
                    .min(timeout.max(Duration::from_millis(50))),
            )
            .await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn bodies_are_read_as_kombu_writes_them() {
        let env = Envelope::new(RawMessage::new(&b"{\"a\": 1}"[..]), "", "q");
        let json = env.to_json();
        let b64 = base64::engine::general_purpose::STANDARD.encode(json.as_bytes());
        for text in [&json, &b64] {
            match read_body(text).unwrap() {
                Body::Kombu(e) => assert_eq!(&e.message.body[..], b"{\"a\": 1}"),
                Body::Foreign => panic!("not read as an envelope: {text}"),
            }
        }
        // Foreign bodies keep their text, even when they happen to be base64.
        for foreign in ["abcd", "hello world", "{\"task\": \"x\"}", "[1, 2]"] {
            assert!(matches!(read_body(foreign).unwrap(), Body::Foreign), "{foreign}");
        }
        // An envelope whose body is broken is a typed error.
        let bad = r#"{"body": "!!", "properties": {"body_encoding": "base64"}}"#;
        assert_eq!(read_body(bad).err().unwrap().kind(), ErrorKind::Decode);
    }
}
