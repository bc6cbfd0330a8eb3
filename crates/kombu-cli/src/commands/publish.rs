//! `kombu publish`: one body (argument or stdin), or one message per stdin line.

use kombu::{Connection, Exchange, Producer, PublishOptions, Queue};
use serde_json::Value as Json;
use tokio::io::AsyncBufReadExt as _;

use crate::cli::{GlobalArgs, PublishArgs, SerializerName};
use crate::commands::{connect, seconds};
use crate::error::{stdout_error, CliError, CliResult};
use crate::output::value_from_text;

/// Where and how every message of this run is published.
struct Plan {
    exchange: Exchange,
    routing_key: String,
    options: PublishOptions,
}

impl Plan {
    fn new(args: &PublishArgs) -> CliResult<Plan> {
        let exchange = match &args.exchange {
            Some(name) => Exchange::new(name.clone(), args.exchange_type.into()),
            None => Exchange::default_exchange(),
        };
        // On the default exchange the routing key *is* the queue name, so a declared queue
        // is where the message should go.
        let routing_key = match (&args.routing_key, &args.exchange, &args.declare_queue) {
            (Some(key), _, _) => key.clone(),
            (None, None, Some(queue)) => queue.clone(),
            (None, None, None) => {
                return Err(CliError::other(
                    "publishing to the default exchange needs --routing-key (the queue name) or \
                     --declare-queue",
                ))
            }
            (None, Some(_), _) => String::new(),
        };
        let mut options = PublishOptions::new()
            .routing_key(routing_key.clone())
            .serializer(args.serializer.as_str());
        if let Some(compression) = args.compression {
            options = options.compression(compression.as_str());
        }
        for (key, value) in &args.headers {
            options = options.header(key.clone(), value_from_text(value));
        }
        if let Some(priority) = args.priority {
            options = options.priority(priority);
        }
        if let Some(ttl) = args.expiration {
            options = options.expiration(seconds(ttl));
        }
        if let Some(name) = &args.declare_queue {
            let queue = if exchange.is_default() {
                Queue::new(name.clone())
            } else {
                Queue::new(name.clone())
                    .exchange(exchange.clone())
                    .routing_key(routing_key.clone())
            };
            options = options.declare(queue);
        }
        Ok(Plan {
            exchange,
            routing_key,
            options,
        })
    }

    /// `exchange "media", routing key "image.png"`, for the summary line.
    fn destination(&self) -> String {
        let exchange = if self.exchange.is_default() {
            "the default exchange".to_owned()
        } else {
            format!("exchange {:?} ({})", self.exchange.name, self.exchange.kind)
        };
        format!("{exchange}, routing key {:?}", self.routing_key)
    }
}

/// Runs `kombu publish`.
pub(crate) async fn run(global: &GlobalArgs, args: PublishArgs) -> CliResult {
    let plan = Plan::new(&args)?;
    let connection = connect(global)?;
    let result = publish_all(&connection, &plan, &args).await;
    let closed = connection.close().await;
    let published = result?;
    closed?;
    let plural = if published == 1 { "" } else { "s" };
    let line = format!("published {published} message{plural} to {}", plan.destination());
    use std::io::Write as _;
    writeln!(std::io::stdout(), "{line}").map_err(stdout_error)?;
    Ok(())
}

async fn publish_all(connection: &Connection, plan: &Plan, args: &PublishArgs) -> CliResult<u64> {
    let producer = connection.producer().exchange(plan.exchange.clone());
    let mut published = 0;
    if args.lines {
        if args.body.as_deref().is_some_and(|b| b != "-") {
            return Err(CliError::other(
                "--lines reads the bodies from stdin: give `-` or no BODY",
            ));
        }
        // Line by line as it arrives, so `tail -f log | kombu publish --lines` streams.
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = stdin
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| CliError::other(format!("cannot read stdin: {e}")))?;
            if n == 0 {
                break;
            }
            let body = line
                .strip_suffix(b"\n")
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .unwrap_or(&line);
            if body.is_empty() {
                continue;
            }
            published += publish_body(&producer, &plan.options, args, body).await?;
        }
    } else {
        let body = match args.body.as_deref() {
            Some("-") => read_stdin().await?,
            Some(text) => text.as_bytes().to_vec(),
            None => return Err(CliError::other("give a BODY, `-` for stdin, or --lines")),
        };
        published += publish_body(&producer, &plan.options, args, &body).await?;
    }
    Ok(published)
}

async fn read_stdin() -> CliResult<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut body = Vec::new();
    tokio::io::stdin()
        .read_to_end(&mut body)
        .await
        .map_err(|e| CliError::other(format!("cannot read stdin: {e}")))?;
    Ok(body)
}

/// Publishes `body` `args.count` times with the chosen serializer; returns how many.
async fn publish_body(
    producer: &Producer,
    options: &PublishOptions,
    args: &PublishArgs,
    body: &[u8],
) -> CliResult<u64> {
    let utf8 = || {
        std::str::from_utf8(body).map_err(|_| {
            CliError::other(format!(
                "the body is not UTF-8, which serializer {} needs (use --serializer raw for bytes)",
                args.serializer.as_str()
            ))
        })
    };
    match args.serializer {
        SerializerName::Raw => {
            for _ in 0..args.count {
                producer.publish_bytes(body.to_vec(), options.clone()).await?;
            }
        }
        SerializerName::Text => {
            let text = utf8()?;
            for _ in 0..args.count {
                producer.publish_text(text, options.clone()).await?;
            }
        }
        SerializerName::Json | SerializerName::Msgpack | SerializerName::Yaml => {
            let text = utf8()?;
            let value = serde_json::from_str::<Json>(text).unwrap_or_else(|_| Json::String(text.to_owned()));
            for _ in 0..args.count {
                producer.publish(&value, options.clone()).await?;
            }
        }
    }
    Ok(args.count)
}
