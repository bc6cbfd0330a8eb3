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
    let mut sender = BatchSender {
        producer: &producer,
        options: &plan.options,
        published: 0,
    };
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
    if args.lines {
        if args.body.as_deref().is_some_and(|b| b != "-") {
            return Err(CliError::other(
                "--lines reads the bodies from stdin: give `-` or no BODY",
            ));
        }
        // Line by line as it arrives, so `tail -f log | kombu publish --lines` streams: a
        // reader task queues the lines, and each batch takes what is queued (at least one,
        // at most --batch), never waiting for a batch to fill. While a batch is in flight
        // the next one gathers.
        let (lines, mut queued) = tokio::sync::mpsc::channel::<Vec<u8>>(batch.max(1));
        let reader = tokio::spawn(read_lines(lines));
        let mut bodies = Vec::with_capacity(batch);
        while let Some(line) = queued.recv().await {
            let mut next = Some(line);
            let mut bad_line = None;
            while let Some(line) = next.take() {
                match Prepared::new(args, &line) {
                    Ok(body) => bodies.push(body),
                    // The lines before it are still published, then the run stops.
                    Err(e) => {
                        bad_line = Some(e);
                        break;
                    }
                }
                if bodies.len() < batch {
                    next = queued.try_recv().ok();
                }
            }
            sender.send(&bodies, args.count).await?;
            bodies.clear();
            if let Some(e) = bad_line {
                return Err(CliError::other(format!(
                    "{e}; the {} message(s) before that line were published",
                    sender.published
                )));
            }
        }
        reader
            .await
            .map_err(|e| CliError::other(format!("the stdin reader failed: {e}")))??;
    } else {
        let body = match args.body.as_deref() {
            Some("-") => read_stdin().await?,
            Some(text) => text.as_bytes().to_vec(),
            None => return Err(CliError::other("give a BODY, `-` for stdin, or --lines")),
        };
        let body = Prepared::new(args, &body)?;
        let mut left = args.count;
        while left > 0 {
            let n = left.min(args.batch);
            sender.send(std::slice::from_ref(&body), n).await?;
            left -= n;
        }
    }
    Ok(sender.published)
}

/// Reads stdin line by line into `lines` (line ends and empty lines dropped).
async fn read_lines(lines: tokio::sync::mpsc::Sender<Vec<u8>>) -> CliResult<()> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    loop {
        let mut line = Vec::new();
        let n = stdin
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| CliError::other(format!("cannot read stdin: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        if line.ends_with(b"\n") {
            line.pop();
            if line.ends_with(b"\r") {
                line.pop();
            }
        }
        if line.is_empty() {
            continue;
        }
        if lines.send(line).await.is_err() {
            // The publisher stopped (it failed and says why).
            return Ok(());
        }
    }
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

/// One body in the form its serializer takes.
enum Prepared {
    Bytes(Vec<u8>),
    Text(String),
    Value(Json),
}

impl Prepared {
    fn new(args: &PublishArgs, body: &[u8]) -> CliResult<Prepared> {
        let utf8 = || {
            std::str::from_utf8(body).map_err(|_| {
                CliError::other(format!(
                    "the body is not UTF-8, which serializer {} needs (use --serializer raw for bytes)",
                    args.serializer.as_str()
                ))
            })
        };
        Ok(match args.serializer {
            SerializerName::Raw => Prepared::Bytes(body.to_vec()),
            SerializerName::Text => Prepared::Text(utf8()?.to_owned()),
            SerializerName::Json | SerializerName::Msgpack | SerializerName::Yaml => {
                let text = utf8()?;
                Prepared::Value(
                    serde_json::from_str::<Json>(text).unwrap_or_else(|_| Json::String(text.to_owned())),
                )
            }
        })
    }
}

/// Sends batches and counts what was confirmed.
struct BatchSender<'a> {
    producer: &'a Producer,
    options: &'a PublishOptions,
    published: u64,
}

impl BatchSender<'_> {
    /// Publishes each of `bodies` `times` times, as one batch. A failure ends the run: its
    /// error says how many messages were confirmed before it and how many of this batch
    /// failed (nothing is dropped silently).
    async fn send(&mut self, bodies: &[Prepared], times: u64) -> CliResult<()> {
        let mut batch = self.producer.batch();
        for body in bodies {
            for _ in 0..times {
                match body {
                    Prepared::Bytes(bytes) => batch.add_bytes(bytes.clone(), self.options.clone()),
                    Prepared::Text(text) => batch.add_text(text, self.options.clone()),
                    Prepared::Value(value) => batch.add(value, self.options.clone()),
                };
            }
        }
        let size = batch.len() as u64;
        let outcome = batch.send().await;
        let confirmed = outcome.confirmed() as u64;
        self.published += confirmed;
        if confirmed == size {
            return Ok(());
        }
        let failed = size - confirmed;
        let published = self.published;
        Err(outcome
            .into_result()
            .err()
            .map(|e| {
                e.with_context("failed_in_batch", failed)
                    .with_context("published", published)
            })
            .map_or_else(
                || CliError::other("a batch reported a failure without an error"),
                CliError::from,
            ))
    }
}
