//! Fanout exchanges through SNS (feature `sns`, transport option `supports_fanout=true`), in
//! Kombu 5.7's layout: a fanout exchange is an SNS topic named `canonical_queue_name(exchange)`
//! (a FIFO topic when that ends `.fifo`); binding a queue subscribes it (protocol `sqs`,
//! `RawMessageDelivery`) and lets the topic send to it in the queue's `Policy`; a publish is
//! one SNS `Publish` of the JSON envelope, which SNS copies to every subscribed queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_sns::types::MessageAttributeValue;
use aws_sdk_sns::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use kombu_core::{Envelope, Error, ErrorKind, Result, Value};
use serde_json::{json, Value as Json};
use tracing::{debug, warn};

use crate::backend::{lock, sdk_error_of, Target};
use crate::settings::{Credentials, Settings};

/// SNS's limit on one message, as SQS's.
const SNS_MAX_MESSAGE: usize = 256 * 1024;
/// The Sid of the queue-policy statement that lets topics send to the queue (Kombu's).
const POLICY_SID: &str = "KombuManaged";

/// The SNS side of a connection: clients, and the topic and subscription ARNs it knows.
pub(crate) struct Fanout {
    client: Client,
    /// `predefined_exchanges`: exchange → (topic ARN, client). When any is given, no topic is
    /// created and other exchanges are errors.
    predefined: HashMap<String, (String, Client)>,
    /// Exchange → topic ARN.
    topics: Mutex<HashMap<String, String>>,
    /// Queue URL → queue ARN.
    queue_arns: Mutex<HashMap<Arc<str>, String>>,
    /// (exchange, queue) → subscription ARN.
    subscriptions: Mutex<HashMap<(String, String), String>>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("predefined", &self.predefined.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn sns_client(settings: &Settings, region: &str, credentials: &Credentials) -> Client {
    let (creds, http, timeouts) = crate::backend::client_parts(credentials);
    let mut config = aws_sdk_sns::Config::builder()
        .behavior_version(aws_sdk_sns::config::BehaviorVersion::latest())
        .region(aws_sdk_sns::config::Region::new(region.to_owned()))
        .credentials_provider(creds)
        .http_client(http)
        .timeout_config(timeouts)
        .retry_config(aws_sdk_sns::config::retry::RetryConfig::standard().with_max_attempts(2));
    if let Some(endpoint) = &settings.endpoint {
        // A local emulator (moto) serves SNS on the same endpoint as SQS.
        config = config.endpoint_url(endpoint.clone());
    }
    Client::from_conf(config.build())
}

/// Kombu's SNS message attributes: every value as a `String` attribute. A value given in
/// boto's SQS shape (`{"DataType": …, "StringValue": …}`) gives its `StringValue` (Kombu
/// would send the dict's Python text).
fn message_attributes(value: &Value) -> Result<HashMap<String, MessageAttributeValue>> {
    let Value::Table(table) = value else {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "message_attributes must be a table of name → value",
        ));
    };
    let mut out = HashMap::with_capacity(table.len());
    for (name, v) in table {
        let text = match v {
            Value::Table(t) => match t.get("StringValue") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_json().to_string(),
                None => v.to_json().to_string(),
            },
            Value::String(s) => s.clone(),
            other => other.to_json().to_string(),
        };
        let attr = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(text)
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("message attribute {name:?}: {e}"),
                )
            })?;
        out.insert(name.clone(), attr);
    }
    Ok(out)
}

fn text_property(envelope: &Envelope, key: &str) -> Option<String> {
    match envelope.message.properties.extra.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_json().to_string()),
    }
}

impl Fanout {
    /// The SNS clients for `settings` (`default` signs unless an exchange has its own keys).
    pub(crate) fn new(settings: &Settings, default: Option<&Credentials>) -> Result<Fanout> {
        let missing = || {
            Error::new(
                ErrorKind::InvalidArgument,
                "no AWS credentials for SNS: give them in the URL, the transport options or the environment",
            )
        };
        let placeholder = Credentials {
            access_key_id: String::new(),
            secret_access_key: kombu_core::Secret::new(""),
            session_token: None,
        };
        let client = sns_client(settings, &settings.region, default.unwrap_or(&placeholder));
        let mut predefined = HashMap::new();
        for (name, e) in &settings.predefined_exchanges {
            let region = e.region.as_deref().unwrap_or(&settings.region);
            let exchange_client = match (&e.credentials, e.region.is_some()) {
                (None, false) => client.clone(),
                (Some(c), _) => sns_client(settings, region, c),
                (None, true) => sns_client(settings, region, default.ok_or_else(missing)?),
            };
            predefined.insert(name.clone(), (e.arn.clone(), exchange_client));
        }
        if default.is_none() && predefined.is_empty() {
            return Err(missing());
        }
        Ok(Fanout {
            client,
            predefined,
            topics: Mutex::new(HashMap::new()),
            queue_arns: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
        })
    }

    fn client_for(&self, exchange: &str) -> &Client {
        self.predefined.get(exchange).map_or(&self.client, |(_, c)| c)
    }

    /// The topic ARN of `exchange`: predefined, cached, or created (`CreateTopic` returns the
    /// existing topic's ARN when it exists).
    pub(crate) async fn topic(&self, settings: &Settings, exchange: &str) -> Result<String> {
        if !self.predefined.is_empty() {
            return self
                .predefined
                .get(exchange)
                .map(|(arn, _)| arn.clone())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("exchange {exchange:?} must be defined in predefined_exchanges"),
                    )
                });
        }
        if let Some(arn) = lock(&self.topics).get(exchange) {
            return Ok(arn.clone());
        }
        let name = settings.canonical_queue_name(exchange);
        let fifo = name.ends_with(".fifo");
        let tag = |k: &str, v: &str| aws_sdk_sns::types::Tag::builder().key(k).value(v).build();
        let out = self
            .client
            .create_topic()
            .name(&name)
            .attributes("FifoTopic", if fifo { "true" } else { "false" })
            .tags(
                tag("ManagedBy", "Celery/Kombu")
                    .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?,
            )
            .tags(
                tag(
                    "Description",
                    "This SNS topic is used by Kombu to enable Fanout support for AWS SQS.",
                )
                .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?,
            )
            .send()
            .await
            .map_err(|e| sdk_error_of("SNS", "CreateTopic", e))?;
        let arn = out
            .topic_arn()
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, "CreateTopic returned no TopicArn"))?
            .to_owned();
        debug!(topic = %name, %arn, "SNS topic ready");
        lock(&self.topics).insert(exchange.to_owned(), arn.clone());
        Ok(arn)
    }

    async fn queue_arn(&self, target: &Target) -> Result<String> {
        if let Some(arn) = lock(&self.queue_arns).get(&target.url) {
            return Ok(arn.clone());
        }
        let arn = target
            .attribute(QueueAttributeName::QueueArn)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Unexpected, "GetQueueAttributes returned no QueueArn"))?;
        lock(&self.queue_arns).insert(target.url.clone(), arn.clone());
        Ok(arn)
    }

    /// Subscribe the queue to the exchange's topic (raw delivery) and let the topic send to
    /// it in the queue's policy. Once per connection, exchange and queue.
    pub(crate) async fn subscribe(
        &self,
        settings: &Settings,
        exchange: &str,
        queue: &str,
        target: &Target,
    ) -> Result<()> {
        let key = (exchange.to_owned(), queue.to_owned());
        if lock(&self.subscriptions).contains_key(&key) {
            return Ok(());
        }
        let queue_arn = self.queue_arn(target).await?;
        let topic_arn = self.topic(settings, exchange).await?;
        let out = self
            .client_for(exchange)
            .subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(&queue_arn)
            .attributes("RawMessageDelivery", "true")
            .return_subscription_arn(true)
            .send()
            .await
            .map_err(|e| sdk_error_of("SNS", "Subscribe", e))?;
        let subscription = out.subscription_arn().unwrap_or_default().to_owned();
        self.allow_topic(target, &queue_arn, &topic_arn).await?;
        debug!(%queue_arn, %topic_arn, "queue subscribed to SNS topic");
        lock(&self.subscriptions).insert(key, subscription);
        Ok(())
    }

    /// Add the topic to the queue policy's `KombuManaged` statement (Kombu's Sid), keeping
    /// every other statement and the topics already allowed there (Kombu keeps only the last
    /// topic, so a queue bound to two fanout exchanges would lose the first).
    async fn allow_topic(&self, target: &Target, queue_arn: &str, topic_arn: &str) -> Result<()> {
        let mut policy = match target.attribute(QueueAttributeName::Policy).await {
            Ok(existing) => existing
                .and_then(|p| serde_json::from_str::<Json>(&p).ok())
                .filter(Json::is_object)
                .unwrap_or_else(|| json!({})),
            Err(e) => {
                warn!(error = %e, "could not read the queue policy; writing a fresh one");
                json!({})
            }
        };
        let Some(map) = policy.as_object_mut() else {
            return Err(Error::new(ErrorKind::Unexpected, "queue policy is not an object"));
        };
        map.entry("Version").or_insert_with(|| json!("2012-10-17"));
        let mut statements = match map.remove("Statement") {
            Some(Json::Array(list)) => list,
            Some(one @ Json::Object(_)) => vec![one],
            _ => Vec::new(),
        };
        let mut topics: Vec<Json> = vec![json!(topic_arn)];
        if let Some(i) = statements
            .iter()
            .position(|s| s.get("Sid").and_then(Json::as_str) == Some(POLICY_SID))
        {
            let old = statements.remove(i);
            match old.pointer("/Condition/ArnLike/aws:SourceArn") {
                Some(Json::String(arn)) if arn != topic_arn => topics.push(json!(arn)),
                Some(Json::Array(arns)) => {
                    topics.extend(arns.iter().filter(|a| a.as_str() != Some(topic_arn)).cloned());
                }
                _ => {}
            }
        }
        let source = if topics.len() == 1 {
            topics.swap_remove(0)
        } else {
            Json::Array(topics)
        };
        statements.push(json!({
            "Sid": POLICY_SID,
            "Effect": "Allow",
            "Principal": {"Service": "sns.amazonaws.com"},
            "Action": "SQS:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnLike": {"aws:SourceArn": source}},
        }));
        map.insert("Statement".into(), Json::Array(statements));
        target
            .client
            .set_queue_attributes()
            .queue_url(&*target.url)
            .attributes(QueueAttributeName::Policy, policy.to_string())
            .send()
            .await
            .map_err(|e| sdk_error_of("SQS", "SetQueueAttributes", e))?;
        Ok(())
    }

    /// Unsubscribe the queue from the exchange's topic, if this connection subscribed it.
    pub(crate) async fn unsubscribe(&self, exchange: &str, queue: &str) -> Result<()> {
        let key = (exchange.to_owned(), queue.to_owned());
        let Some(subscription) = lock(&self.subscriptions).remove(&key) else {
            return Ok(());
        };
        if subscription.is_empty() {
            return Ok(());
        }
        self.client_for(exchange)
            .unsubscribe()
            .subscription_arn(&subscription)
            .send()
            .await
            .map_err(|e| sdk_error_of("SNS", "Unsubscribe", e))?;
        Ok(())
    }

    /// Unsubscribe the queue from every topic this connection subscribed it to.
    pub(crate) async fn unsubscribe_queue(&self, queue: &str) -> Result<()> {
        let exchanges: Vec<String> = lock(&self.subscriptions)
            .keys()
            .filter(|(_, q)| q == queue)
            .map(|(e, _)| e.clone())
            .collect();
        let mut first_error = None;
        for exchange in exchanges {
            if let Err(e) = self.unsubscribe(&exchange, queue).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Kombu's `_put_fanout`: `Publish` the JSON envelope (not base64) with the message
    /// attributes; a FIFO topic (the exchange name ends `.fifo`) gets the group and
    /// deduplication ids.
    pub(crate) async fn publish(
        &self,
        settings: &Settings,
        exchange: &str,
        envelope: &Envelope,
    ) -> Result<()> {
        let attributes = match envelope.message.properties.extra.get("message_attributes") {
            Some(v) => message_attributes(v)?,
            None => HashMap::new(),
        };
        let message = envelope.to_json();
        let size = message.len()
            + attributes
                .iter()
                .map(|(k, v)| k.len() + v.data_type().len() + v.string_value().map_or(0, str::len))
                .sum::<usize>();
        if size > SNS_MAX_MESSAGE {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the SNS message would be {size} bytes; SNS takes at most {SNS_MAX_MESSAGE} (256 KiB)"
                ),
            )
            .with_context("size", size));
        }
        let topic_arn = self.topic(settings, exchange).await?;
        let mut request = self
            .client_for(exchange)
            .publish()
            .topic_arn(&topic_arn)
            .message(message)
            .set_message_attributes((!attributes.is_empty()).then_some(attributes));
        if exchange.ends_with(".fifo") {
            request = request
                .message_group_id(
                    text_property(envelope, "MessageGroupId").unwrap_or_else(|| "default".into()),
                )
                .message_deduplication_id(
                    text_property(envelope, "MessageDeduplicationId")
                        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                );
        }
        request
            .send()
            .await
            .map_err(|e| sdk_error_of("SNS", "Publish", e))?;
        Ok(())
    }
}
