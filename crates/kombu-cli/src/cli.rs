//! The command line, as clap derive types. Only parsing lives here; each command's behaviour is
//! in `commands/`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use kombu::ExchangeType;

/// Where `kombu` connects when neither `--url` nor `KOMBU_URL` says otherwise: an SQLite file in
/// the current directory, so the tool works out of the box with no server.
pub(crate) const DEFAULT_URL: &str = "sqlite://kombu.sqlite3";

const EXAMPLES: &str = "\
Examples:
  # Out of the box: an SQLite file ./kombu.sqlite3 is the broker
  kombu declare queue tasks
  kombu publish --routing-key tasks '{\"job\": 42}'
  kombu consume tasks --count 1 --json

  # Any transport by URL (or export KOMBU_URL), with Kombu's transport options
  kombu --url sqlite:///var/lib/app/broker.db -o visibility_timeout=5 stats tasks

  # A topic exchange, a bound queue, and a message routed through it
  kombu declare exchange media --type topic
  kombu declare queue images --exchange media --exchange-type topic --routing-key 'image.#'
  kombu publish --exchange media --type topic --routing-key image.png '{\"size\": 1024}'

  # One message per line of stdin
  printf '{\"n\": 1}\\n{\"n\": 2}\\n' | kombu publish --routing-key tasks --lines

  # Peek at the next 5 messages without taking them
  kombu consume tasks --count 5 --requeue

  # Throughput and latency, against the in-process broker
  kombu --url memory:// bench --messages 100000

Exit status: 0 success, 1 error, 2 usage error, 3 `consume --count N` timed out with fewer
than N messages, 130 interrupted (Ctrl-C).";

/// Publish, consume, declare, inspect and benchmark over any kombu-rs transport.
///
/// Every command connects to the broker URL of `--url` (else `KOMBU_URL`, else an SQLite file
/// `kombu.sqlite3` in the current directory) with the transport options given by `-o`.
#[derive(Debug, Parser)]
#[command(name = "kombu", version, after_help = EXAMPLES, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The help heading of [`GlobalArgs`], so they stand apart from each command's own options.
const GLOBAL: &str = "Global options";

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Broker URL, or a `;`-separated failover list (e.g. `memory://`,
    /// `sqlite:///path/to/broker.db`). Passwords are never printed.
    #[arg(long, global = true, help_heading = GLOBAL, env = "KOMBU_URL", default_value = DEFAULT_URL, hide_env_values = true)]
    pub(crate) url: String,

    /// A transport option as KEY=VALUE, with Kombu's `transport_options` names (e.g.
    /// `-o visibility_timeout=5`, `-o polling_interval=0.1`). Repeatable; wins over the same
    /// key in the URL's query string.
    #[arg(short = 'o', long = "transport-option", value_name = "KEY=VALUE", global = true, help_heading = GLOBAL,
          value_parser = parse_key_value)]
    pub(crate) transport_options: Vec<(String, String)>,

    /// Seconds to wait for the broker connection before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, global = true, help_heading = GLOBAL, value_parser = parse_seconds)]
    pub(crate) connect_timeout: f64,

    /// Log what kombu does on stderr: -v info, -vv debug, -vvv trace (`RUST_LOG` overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = GLOBAL)]
    pub(crate) verbose: u8,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Publish one or more messages.
    #[command(after_help = "\
Examples:
  kombu publish --declare-queue tasks '{\"job\": 42}'
  kombu publish --exchange logs --type fanout --serializer text 'disk full'
  kombu publish --routing-key tasks --priority 9 --expiration 60 --header retries=3 '[1, 2]'
  cat big.bin | kombu publish --routing-key blobs --serializer raw --compression zstd -")]
    Publish(PublishArgs),
    /// Consume messages from queues, printing each (acked after it is printed).
    #[command(after_help = "\
Examples:
  kombu consume tasks                        # until Ctrl-C
  kombu consume tasks --count 10 --timeout 5 # exit 3 if 10 do not arrive (5 s idle limit)
  kombu consume tasks --json | jq .body      # one JSON object per line
  kombu consume tasks --count 5 --requeue    # peek: the messages stay in the queue")]
    Consume(ConsumeArgs),
    /// Declare an exchange, a queue or a binding.
    #[command(subcommand)]
    Declare(DeclareCommand),
    /// Remove every ready message from queues; prints how many were removed.
    Purge(PurgeArgs),
    /// Delete a queue or an exchange.
    #[command(subcommand)]
    Delete(DeleteCommand),
    /// Message counts of queues.
    Stats(StatsArgs),
    /// Send Celery tasks and read their results (Celery's protocol v2).
    #[command(
        subcommand,
        after_help = "\
Examples:
  kombu --url redis://localhost:6379/0 celery send tasks.add --args '[2, 3]'
  kombu --url redis://localhost:6379/0 celery result 0b5c… --backend redis://localhost:6379/1
  kombu --url amqp://localhost// celery send tasks.add --args '[2, 3]' --wait   # rpc:// result"
    )]
    Celery(CeleryCommand),
    /// The transports compiled into this binary and what each can do.
    Transports(TransportsArgs),
    /// Publish and consume throughput and round-trip latency of a transport.
    #[command(after_help = "\
Workload (the same as tests/python/bench_kombu.py, so `cargo xtask bench` compares like with like):
JSON bodies {\"n\": i, \"pad\": \"xx…\"} of about --size bytes; phase 1 publishes --messages messages
through the direct exchange `bench` to a fresh queue (timed); phase 2 consumes them, decoding and
acking each, with prefetch --prefetch (timed); phase 3 times --latency-samples publish→receive
round trips (p50/p99). With --producers/--consumers above 1 the messages are split over that
many tokio tasks, each with its own connection. The queue is deleted afterwards.

Examples:
  kombu --url memory:// bench
  kombu --url sqlite:///tmp/bench.db bench --messages 5000 --json

`cargo xtask bench` runs this next to Python Kombu and to raw-driver baselines (the bench-only
kombu-bench package) and writes docs/BENCHMARKS.md.")]
    Bench(BenchArgs),
}

/// Exchange types, as on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExchangeKind {
    /// Routes to queues whose binding key equals the routing key.
    Direct,
    /// Routes by binding patterns (`*` one word, `#` zero or more words).
    Topic,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by message headers matched against binding arguments.
    Headers,
}

impl From<ExchangeKind> for ExchangeType {
    fn from(kind: ExchangeKind) -> Self {
        match kind {
            ExchangeKind::Direct => ExchangeType::Direct,
            ExchangeKind::Topic => ExchangeType::Topic,
            ExchangeKind::Fanout => ExchangeType::Fanout,
            ExchangeKind::Headers => ExchangeType::Headers,
        }
    }
}

/// Body serializers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SerializerName {
    /// `application/json`: BODY is published as JSON if it parses as JSON, else as a JSON string.
    Json,
    /// `application/x-msgpack`: BODY read as for json, then encoded as msgpack.
    Msgpack,
    /// `application/x-yaml`: BODY read as for json, then encoded as YAML.
    Yaml,
    /// `application/data`: the bytes as given.
    Raw,
    /// `text/plain`: the text as given (must be UTF-8).
    Text,
}

impl SerializerName {
    /// Kombu's serializer name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SerializerName::Json => "json",
            SerializerName::Msgpack => "msgpack",
            SerializerName::Yaml => "yaml",
            SerializerName::Raw => "raw",
            SerializerName::Text => "text",
        }
    }
}

/// Body compressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CompressionName {
    /// zlib stream (Kombu's `application/x-gzip`).
    Zlib,
    /// bzip2.
    Bzip2,
    /// xz.
    Xz,
    /// brotli.
    Brotli,
    /// zstd.
    Zstd,
}

impl CompressionName {
    /// Kombu's compression alias.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CompressionName::Zlib => "zlib",
            CompressionName::Bzip2 => "bzip2",
            CompressionName::Xz => "xz",
            CompressionName::Brotli => "brotli",
            CompressionName::Zstd => "zstd",
        }
    }
}

/// `kombu publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The message body, or `-` to read it from stdin. Omit it with --lines.
    #[arg(value_name = "BODY|-", required_unless_present = "lines")]
    pub(crate) body: Option<String>,

    /// Read stdin and publish one message per line (empty lines are skipped).
    #[arg(long)]
    pub(crate) lines: bool,

    /// Exchange to publish to (declared first). Default: the default exchange `""`, which
    /// routes to the queue named by the routing key.
    #[arg(short, long, value_name = "NAME")]
    pub(crate) exchange: Option<String>,

    /// Type of --exchange.
    #[arg(short = 't', long = "type", value_enum, default_value_t = ExchangeKind::Direct, requires = "exchange")]
    pub(crate) exchange_type: ExchangeKind,

    /// Routing key. Default: the --declare-queue name on the default exchange, else "".
    #[arg(short, long, value_name = "KEY")]
    pub(crate) routing_key: Option<String>,

    /// Declare queue Q first, bound to --exchange with the routing key.
    #[arg(long, value_name = "Q")]
    pub(crate) declare_queue: Option<String>,

    /// Body serializer.
    #[arg(short, long, value_enum, default_value_t = SerializerName::Json)]
    pub(crate) serializer: SerializerName,

    /// Compress the body (Kombu's `compression` header says how).
    #[arg(short, long, value_enum)]
    pub(crate) compression: Option<CompressionName>,

    /// A header as KEY=VALUE; VALUE is JSON if it parses as JSON (`n=3`, `ok=true`), else a
    /// string (quote it to force a string: `'v="3"'`). Repeatable.
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) headers: Vec<(String, String)>,

    /// Message priority (0-255; most transports honour 0-9).
    #[arg(short, long, value_name = "N")]
    pub(crate) priority: Option<u8>,

    /// Per-message TTL in seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) expiration: Option<f64>,

    /// Publish each body N times.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: u64,

    /// Send up to N messages together (`Producer::batch`: one round trip for the lot where
    /// the broker allows; each message still confirmed). --lines sends what stdin has
    /// ready, never waiting to fill a batch. 1 publishes one message at a time.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) batch: u64,
}

/// `kombu consume`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConsumeArgs {
    /// Queues to consume from (they must exist unless --declare).
    #[arg(value_name = "QUEUE", required = true)]
    pub(crate) queues: Vec<String>,

    /// Stop after N messages (exit 0). Without it: consume until Ctrl-C, or until --timeout.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,

    /// Idle timeout: stop when no new message arrived for SECS. With --count, stopping before
    /// N messages is an error (exit 3); without, it is the normal end (exit 0).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) timeout: Option<f64>,

    /// Messages delivered ahead of processing; 0 = unlimited (never more than --count).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) prefetch: u16,

    /// At-most-once: ack each message as soon as it is received, before printing it (the
    /// default acks after printing, so a message that could not be written is not lost).
    #[arg(long, conflicts_with = "requeue")]
    pub(crate) no_ack: bool,

    /// Peek: print messages without taking them. They are held until the end and then
    /// rejected with requeue, in order, so the queue keeps them (marked redelivered).
    #[arg(long)]
    pub(crate) requeue: bool,

    /// Print each message as one JSON object per line: queue, body (text, or base64 for
    /// binary; see body_encoding), content_type, content_encoding, headers, properties,
    /// delivery_info.
    #[arg(long)]
    pub(crate) json: bool,

    /// Declare the queues (durable, default options) instead of requiring that they exist.
    #[arg(long)]
    pub(crate) declare: bool,
}

/// `kombu declare`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeclareCommand {
    /// Declare an exchange.
    Exchange(DeclareExchangeArgs),
    /// Declare a queue, optionally bound to an exchange.
    Queue(DeclareQueueArgs),
    /// Bind a queue to an exchange (the exchange is declared as --exchange-type).
    Binding(DeclareBindingArgs),
}

/// Durability flags shared by exchanges and queues.
#[derive(Debug, Args)]
pub(crate) struct Durability {
    /// Survive a broker restart (the default, as in Kombu).
    #[arg(long, overrides_with = "no_durable")]
    pub(crate) durable: bool,
    /// Do not survive a broker restart.
    #[arg(long, overrides_with = "durable")]
    pub(crate) no_durable: bool,
    /// Delete it when its last binding (exchange) or consumer (queue) goes.
    #[arg(long)]
    pub(crate) auto_delete: bool,
}

impl Durability {
    /// Whether durable (the default unless --no-durable came last).
    pub(crate) fn is_durable(&self) -> bool {
        !self.no_durable
    }
}

/// `kombu declare exchange`.
#[derive(Debug, Args)]
pub(crate) struct DeclareExchangeArgs {
    /// Exchange name.
    pub(crate) name: String,
    /// Exchange type.
    #[arg(short = 't', long = "type", value_enum, default_value_t = ExchangeKind::Direct)]
    pub(crate) exchange_type: ExchangeKind,
    #[command(flatten)]
    pub(crate) durability: Durability,
    /// A declaration argument as KEY=VALUE (VALUE as for `publish --header`). Repeatable.
    #[arg(short = 'a', long = "argument", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) arguments: Vec<(String, String)>,
}

/// `kombu declare queue`.
#[derive(Debug, Args)]
pub(crate) struct DeclareQueueArgs {
    /// Queue name.
    pub(crate) name: String,
    /// Bind the queue to this exchange (declared first).
    #[arg(short, long, value_name = "NAME")]
    pub(crate) exchange: Option<String>,
    /// Type of --exchange.
    #[arg(long, value_enum, default_value_t = ExchangeKind::Direct, requires = "exchange")]
    pub(crate) exchange_type: ExchangeKind,
    /// Binding key for --exchange. Default: the queue name.
    #[arg(short, long, value_name = "KEY", requires = "exchange")]
    pub(crate) routing_key: Option<String>,
    #[command(flatten)]
    pub(crate) durability: Durability,
    /// Highest priority honoured (`x-max-priority`).
    #[arg(long, value_name = "N")]
    pub(crate) max_priority: Option<u8>,
    /// Per-queue message TTL in seconds (`x-message-ttl`).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) message_ttl: Option<f64>,
    /// Delete the queue after SECS unused (`x-expires`).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) expires: Option<f64>,
    /// Maximum number of ready messages; the oldest are dropped (`x-max-length`).
    #[arg(long, value_name = "N")]
    pub(crate) max_length: Option<u64>,
    /// Maximum total body bytes of ready messages (`x-max-length-bytes`).
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_length_bytes: Option<u64>,
    /// A raw declaration argument as KEY=VALUE (VALUE as for `publish --header`). Repeatable.
    #[arg(short = 'a', long = "argument", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) arguments: Vec<(String, String)>,
}

/// `kombu declare binding`.
#[derive(Debug, Args)]
pub(crate) struct DeclareBindingArgs {
    /// The queue (must exist).
    pub(crate) queue: String,
    /// The exchange (declared as --exchange-type if needed).
    pub(crate) exchange: String,
    /// Binding key (pattern for topic exchanges).
    #[arg(short, long, value_name = "KEY", default_value = "")]
    pub(crate) routing_key: String,
    /// Type of the exchange.
    #[arg(short = 't', long, value_enum, default_value_t = ExchangeKind::Direct)]
    pub(crate) exchange_type: ExchangeKind,
    /// A binding argument as KEY=VALUE (headers exchanges match on these). Repeatable.
    #[arg(short = 'a', long = "argument", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) arguments: Vec<(String, String)>,
}

/// `kombu purge`.
#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// Queues to purge.
    #[arg(value_name = "QUEUE", required = true)]
    pub(crate) queues: Vec<String>,
}

/// `kombu delete`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeleteCommand {
    /// Delete a queue and its messages.
    Queue {
        /// Queue name.
        name: String,
        /// Only if it holds no messages.
        #[arg(long)]
        if_empty: bool,
        /// Only if it has no consumers.
        #[arg(long)]
        if_unused: bool,
    },
    /// Delete an exchange and its bindings.
    Exchange {
        /// Exchange name.
        name: String,
        /// Only if it has no bindings.
        #[arg(long)]
        if_unused: bool,
    },
}

/// `kombu stats`.
#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Queues to report on.
    #[arg(value_name = "QUEUE", required = true)]
    pub(crate) queues: Vec<String>,
    /// Print a JSON array of {"queue", "messages"} objects instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `kombu celery`.
#[derive(Debug, Subcommand)]
pub(crate) enum CeleryCommand {
    /// Send a task as Celery's `send_task` does; prints its id (or, with --wait, its result).
    Send(CelerySendArgs),
    /// Wait for a task's result in a result backend and print it as JSON.
    Result(CeleryResultArgs),
}

/// `kombu celery send`.
#[derive(Debug, Args)]
pub(crate) struct CelerySendArgs {
    /// The task's name, as registered in the Celery app (`tasks.add`).
    pub(crate) name: String,
    /// Positional arguments: a JSON array.
    #[arg(long, value_name = "JSON", default_value = "[]")]
    pub(crate) args: String,
    /// Keyword arguments: a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub(crate) kwargs: String,
    /// The queue (Celery's default is `celery`).
    #[arg(long, value_name = "QUEUE")]
    pub(crate) queue: Option<String>,
    /// Run no earlier than this many seconds from now (Celery's `countdown`).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) countdown: Option<f64>,
    /// Revoke the task if it has not started this many seconds from now.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub(crate) expires: Option<f64>,
    /// The message priority (0–255; Celery's default queues use 0–9).
    #[arg(long, value_name = "N")]
    pub(crate) priority: Option<u8>,
    /// Wait for the result and print it instead of the id (from --backend, `rpc://` by default:
    /// the result comes back to this process's reply queue).
    #[arg(long)]
    pub(crate) wait: bool,
    /// The result backend for --wait: `rpc://` or a Redis URL (`redis://host:port/db`).
    #[arg(long, value_name = "URL", default_value = "rpc://")]
    pub(crate) backend: String,
    /// How long --wait waits.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = parse_seconds)]
    pub(crate) timeout: f64,
}

/// `kombu celery result`.
#[derive(Debug, Args)]
pub(crate) struct CeleryResultArgs {
    /// The task id `kombu celery send` printed.
    pub(crate) id: String,
    /// The result backend: a Redis URL (`redis://host:port/db`, Celery's `redis://` backend).
    /// `rpc://` results go back to the process that sent the task: use `send --wait` there.
    #[arg(long, value_name = "URL")]
    pub(crate) backend: String,
    /// How long to wait for the task to finish.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = parse_seconds)]
    pub(crate) timeout: f64,
}

/// `kombu transports`.
#[derive(Debug, Args)]
pub(crate) struct TransportsArgs {
    /// Print a JSON array (name, schemes, kombu_feature, description, capabilities).
    #[arg(long)]
    pub(crate) json: bool,
}

/// `kombu bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Messages published, then consumed.
    #[arg(long, value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) messages: u64,
    /// Approximate size of each serialized JSON body in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub(crate) size: usize,
    /// Concurrent publishing tasks, each with its own connection.
    #[arg(long, value_name = "P", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) producers: u16,
    /// Concurrent consuming tasks, each with its own connection.
    #[arg(long, value_name = "C", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) consumers: u16,
    /// Publish→receive round trips timed for the p50/p99 latency.
    #[arg(long, value_name = "M", default_value_t = 2_000)]
    pub(crate) latency_samples: u64,
    /// Prefetch count of each consumer.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(crate) prefetch: u16,
    /// Publish in batches of N (`Producer::batch`: N messages in flight together, one
    /// outcome each) instead of one publish at a time.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "concurrency")]
    pub(crate) batch: u64,
    /// Keep N single-message publishes in flight from each producer (`Producer::publish`
    /// futures run together on one connection) instead of awaiting each before the next.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) concurrency: u64,
    /// Print one JSON object (the report `cargo xtask bench` reads) instead of a summary.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `KEY=VALUE` → `(KEY, VALUE)`; the key must not be empty.
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// A non-negative, finite number of seconds.
fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(secs),
        _ => Err(format!("expected a non-negative number of seconds, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn key_values_and_seconds() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("=x").is_err());
        assert!(parse_key_value("novalue").is_err());
        assert_eq!(parse_seconds("1.5"), Ok(1.5));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
    }
}
