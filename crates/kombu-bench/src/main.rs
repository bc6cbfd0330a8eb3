//! `kombu-bench`: the raw-driver baselines of `cargo xtask bench` — the work `kombu bench`
//! measures through kombu-rs, done over a bare channel without it, i.e. the ceiling:
//!
//! * `mpsc`: an unbounded `tokio::sync::mpsc` channel (serialize, send, receive, decode);
//! * `redis`: a bare redis-rs client on the `--url` Redis server (serialize, LPUSH, BRPOP,
//!   decode);
//! * `lapin`: a bare lapin client on the `--url` RabbitMQ (serialize, basic.publish to a direct
//!   exchange, awaiting each confirm unless the URL says `confirm_publish=false`,
//!   basic.consume with `--prefetch`, decode, basic.ack).
//!
//! The bodies, phases and report are those of `kombu bench`: this binary compiles the CLI's
//! `commands/bench/workload.rs` as its own module. A bench-only package (`publish = false`),
//! so the `kombu` CLI depends on no driver directly.
#![forbid(unsafe_code)]

// Shared with `kombu bench`, which uses all of it; the baselines leave a little unused.
#[allow(dead_code)]
#[path = "../../kombu-cli/src/commands/bench/workload.rs"]
mod workload;

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use kombu::BrokerUrl;

use crate::workload::{body, report, summary, Body, Progress, Report, Timings, Workload};

/// A failure, as the one line printed on stderr.
type Result<T = ()> = std::result::Result<T, String>;

/// The raw baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Baseline {
    /// An unbounded `tokio::sync::mpsc` channel: serialize, send, receive, decode.
    Mpsc,
    /// A bare redis-rs client on the --url Redis server: serialize, LPUSH, BRPOP, decode.
    Redis,
    /// A bare lapin client on the --url RabbitMQ: serialize, basic.publish to a direct
    /// exchange (awaiting each confirm unless the URL says `confirm_publish=false`),
    /// basic.consume with --prefetch, decode, basic.ack.
    Lapin,
}

/// The work of `kombu bench` (one producer, one consumer) over a raw channel without kombu-rs.
#[derive(Debug, Parser)]
#[command(name = "kombu-bench", version)]
struct Args {
    /// The baseline to measure.
    #[arg(value_enum)]
    baseline: Baseline,
    /// The broker URL (redis://… for redis, amqp://… for lapin; mpsc needs none).
    #[arg(long, env = "KOMBU_URL")]
    url: Option<String>,
    /// Messages published, then consumed.
    #[arg(long, value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    messages: u64,
    /// Approximate size of each serialized JSON body in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    size: usize,
    /// Publish→receive round trips timed for the p50/p99 latency.
    #[arg(long, value_name = "M", default_value_t = 2_000)]
    latency_samples: u64,
    /// Prefetch count of the consumer (lapin).
    #[arg(long, value_name = "N", default_value_t = 100)]
    prefetch: u16,
    /// Publish in batches of N: send N, then await their outcomes together (lapin: N
    /// publishes, then their confirms; redis: one pipeline of N LPUSHes).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Print one JSON object (the report `cargo xtask bench` reads) instead of a summary.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn workload(&self) -> Workload {
        Workload {
            messages: self.messages,
            size: self.size,
            producers: 1,
            consumers: 1,
            prefetch: self.prefetch,
            latency_samples: self.latency_samples,
            batch: self.batch,
            concurrency: 1,
        }
    }

    /// The `--url`, parsed.
    fn url(&self) -> Result<BrokerUrl> {
        let url = self
            .url
            .as_deref()
            .ok_or_else(|| format!("the {:?} baseline needs --url", self.baseline))?;
        BrokerUrl::parse(url).map_err(|e| e.to_string())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread, as `kombu bench` with one producer and one consumer.
    let run = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))
        .and_then(|runtime| runtime.block_on(run(&args)));
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kombu-bench: error: {}", e.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result {
    let report = measure(args, std::io::stderr().is_terminal()).await?;
    let text = if args.json {
        serde_json::to_string(&report).map_err(|e| format!("cannot render the report: {e}"))?
    } else {
        summary(&report)
    };
    writeln!(std::io::stdout(), "{text}").map_err(|e| format!("cannot write to stdout: {e}"))
}

async fn measure(args: &Args, show: bool) -> Result<Report> {
    let workload = args.workload();
    Ok(match args.baseline {
        Baseline::Mpsc => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let timings = bench_raw(&mut MpscChannel { tx, rx }, &workload, show).await?;
            report("raw tokio mpsc".into(), "mpsc", None, &workload, timings)
        }
        Baseline::Redis => {
            let url = args.url()?;
            let timings = bench_redis(&url, &workload, show).await?;
            report(
                "raw redis-rs".into(),
                "redis-raw",
                Some(url.to_string()),
                &workload,
                timings,
            )
        }
        Baseline::Lapin => {
            let url = args.url()?;
            let timings = bench_lapin(&url, &workload, show).await?;
            report(
                "raw lapin".into(),
                "amqp-raw",
                Some(url.to_string()),
                &workload,
                timings,
            )
        }
    })
}

/// A bare channel: the same serialize/send/receive/decode work as kombu-rs, without kombu-rs.
trait RawChannel {
    async fn send(&mut self, payload: Vec<u8>) -> Result;
    /// Send several, awaiting their outcomes together where the driver can (the default
    /// sends one at a time).
    async fn send_batch(&mut self, payloads: Vec<Vec<u8>>) -> Result {
        for payload in payloads {
            self.send(payload).await?;
        }
        Ok(())
    }
    async fn recv(&mut self) -> Result<Vec<u8>>;
}

/// The three phases over a raw channel: publish the bodies built beforehand (serialized in the
/// loop, as kombu-rs does), receive and decode them all, then timed round trips.
async fn bench_raw(channel: &mut impl RawChannel, workload: &Workload, show: bool) -> Result<Timings> {
    let encode = |b: &Body| serde_json::to_vec(b).map_err(|e| e.to_string());
    let decode = |bytes: &[u8]| serde_json::from_slice::<Body>(bytes).map_err(|e| e.to_string());
    let bodies: Vec<Body> = (0..workload.messages).map(|i| body(i, workload.size)).collect();

    let progress = Progress::start(show, "publish", workload.messages);
    let started = Instant::now();
    if workload.batch <= 1 {
        for b in &bodies {
            channel.send(encode(b)?).await?;
            progress.tick();
        }
    } else {
        for chunk in bodies.chunks(usize::try_from(workload.batch).unwrap_or(usize::MAX)) {
            let payloads = chunk.iter().map(encode).collect::<Result<Vec<_>>>()?;
            channel.send_batch(payloads).await?;
            for _ in chunk {
                progress.tick();
            }
        }
    }
    let publish = started.elapsed();
    progress.finish();

    let progress = Progress::start(show, "consume", workload.messages);
    let started = Instant::now();
    for _ in 0..workload.messages {
        let bytes = channel.recv().await?;
        let _decoded = decode(&bytes)?;
        progress.tick();
    }
    let consume = started.elapsed();
    progress.finish();

    let progress = Progress::start(show, "latency", workload.latency_samples);
    let mut latencies = Vec::with_capacity(usize::try_from(workload.latency_samples).unwrap_or(0));
    for i in 0..workload.latency_samples {
        let t = Instant::now();
        channel.send(encode(&body(i, workload.size))?).await?;
        let bytes = channel.recv().await?;
        let _decoded = decode(&bytes)?;
        latencies.push(t.elapsed());
        progress.tick();
    }
    progress.finish();
    Ok(Timings {
        publish,
        consume,
        latencies,
    })
}

/// A raw `tokio::sync::mpsc` channel (the in-process ceiling).
struct MpscChannel {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

impl RawChannel for MpscChannel {
    async fn send(&mut self, payload: Vec<u8>) -> Result {
        self.tx
            .send(payload)
            .map_err(|_| "the mpsc channel closed".to_owned())
    }

    async fn recv(&mut self) -> Result<Vec<u8>> {
        self.rx
            .recv()
            .await
            .ok_or_else(|| "the mpsc channel closed".to_owned())
    }
}

fn started_at_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// A Redis list with a bare redis-rs client: LPUSH, BRPOP.
struct RedisList {
    conn: redis::aio::MultiplexedConnection,
    key: String,
}

fn redis_failed(e: redis::RedisError) -> String {
    format!("redis: {e}")
}

impl RawChannel for RedisList {
    async fn send(&mut self, payload: Vec<u8>) -> Result {
        redis::cmd("LPUSH")
            .arg(&self.key)
            .arg(payload)
            .query_async::<i64>(&mut self.conn)
            .await
            .map(drop)
            .map_err(redis_failed)
    }

    async fn send_batch(&mut self, payloads: Vec<Vec<u8>>) -> Result {
        let mut pipeline = redis::pipe();
        for payload in payloads {
            pipeline.cmd("LPUSH").arg(&self.key).arg(payload).ignore();
        }
        pipeline
            .query_async::<()>(&mut self.conn)
            .await
            .map_err(redis_failed)
    }

    async fn recv(&mut self) -> Result<Vec<u8>> {
        let (_, bytes): (String, Vec<u8>) = redis::cmd("BRPOP")
            .arg(&self.key)
            .arg(0.25)
            .query_async(&mut self.conn)
            .await
            .map_err(redis_failed)?;
        Ok(bytes)
    }
}

/// The work with a bare redis-rs client: serialize + LPUSH, then BRPOP + decode.
async fn bench_redis(url: &BrokerUrl, workload: &Workload, show: bool) -> Result<Timings> {
    let client = redis::Client::open(url.as_uri(true).as_str()).map_err(redis_failed)?;
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(redis_failed)?;
    let key = format!("bench-raw-{}-{}", std::process::id(), started_at_nanos());
    bench_raw(&mut RedisList { conn, key }, workload, show).await
}

/// A queue bound to a direct exchange on RabbitMQ, through a bare lapin channel: the work
/// kombu-rs does for an AMQP publish and a delivery, without kombu-rs.
struct LapinQueue {
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    exchange: String,
    confirm: bool,
}

fn lapin_failed(e: lapin::Error) -> String {
    format!("lapin: {e}")
}

impl LapinQueue {
    /// basic.publish of one body; its confirm (resolved at once without confirms) to await.
    async fn start_publish(&self, payload: &[u8]) -> Result<lapin::PublisherConfirm> {
        let properties = lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2);
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                "bench".into(),
                lapin::options::BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await
            .map_err(lapin_failed)
    }
}

impl RawChannel for LapinQueue {
    async fn send(&mut self, payload: Vec<u8>) -> Result {
        let pending = self.start_publish(&payload).await?;
        if self.confirm {
            pending.await.map_err(lapin_failed)?;
        }
        Ok(())
    }

    /// Every basic.publish of the batch first, then every confirm.
    async fn send_batch(&mut self, payloads: Vec<Vec<u8>>) -> Result {
        let mut confirms = Vec::with_capacity(payloads.len());
        for payload in &payloads {
            confirms.push(self.start_publish(payload).await?);
        }
        if self.confirm {
            for pending in confirms {
                pending.await.map_err(lapin_failed)?;
            }
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<Vec<u8>> {
        use futures_util::StreamExt as _;
        let delivery = self
            .consumer
            .next()
            .await
            .ok_or_else(|| "lapin: the consumer ended".to_owned())?
            .map_err(lapin_failed)?;
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .map_err(lapin_failed)?;
        Ok(delivery.data)
    }
}

/// The work with a bare lapin client: serialize + basic.publish (+ confirm), then
/// basic.consume (prefetch `--prefetch`) + decode + basic.ack.
async fn bench_lapin(url: &BrokerUrl, workload: &Workload, show: bool) -> Result<Timings> {
    use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let confirm = url
        .query_value("confirm_publish")
        .is_none_or(|v| !matches!(v.to_ascii_lowercase().as_str(), "0" | "false" | "no" | "off"));
    let uri = lapin::uri::AMQPUri {
        authority: lapin::uri::AMQPAuthority {
            userinfo: lapin::uri::AMQPUserInfo {
                username: url.username().unwrap_or("guest").to_owned(),
                password: url
                    .password()
                    .map_or_else(|| "guest".to_owned(), |p| p.expose().to_owned()),
            },
            host: url.host().unwrap_or("127.0.0.1").to_owned(),
            port: url.port().unwrap_or(5672),
        },
        vhost: url.virtual_host().unwrap_or("/").to_owned(),
        ..Default::default()
    };
    let connection = lapin::Connection::connect_uri(uri, lapin::ConnectionProperties::default())
        .await
        .map_err(lapin_failed)?;
    let channel = connection.create_channel().await.map_err(lapin_failed)?;
    let consume_channel = connection.create_channel().await.map_err(lapin_failed)?;
    if confirm {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(lapin_failed)?;
    }
    let name = format!("bench-raw-{}-{}", std::process::id(), started_at_nanos());
    let exchange = "bench-raw".to_owned();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(lapin_failed)?;
    let queue_options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.as_str().into(), queue_options, FieldTable::default())
        .await
        .map_err(lapin_failed)?;
    channel
        .queue_bind(
            name.as_str().into(),
            exchange.as_str().into(),
            "bench".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .map_err(lapin_failed)?;
    consume_channel
        .basic_qos(workload.prefetch, BasicQosOptions::default())
        .await
        .map_err(lapin_failed)?;
    let consumer = consume_channel
        .basic_consume(
            name.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(lapin_failed)?;
    let mut queue = LapinQueue {
        channel,
        consumer,
        exchange,
        confirm,
    };
    let timings = bench_raw(&mut queue, workload, show).await?;
    let _ = queue
        .channel
        .queue_delete(name.as_str().into(), Default::default())
        .await;
    let _ = connection.close(200, "bench done".into()).await;
    Ok(timings)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::workload::report_keys::REPORT_KEYS as KEYS;

    #[tokio::test(flavor = "current_thread")]
    async fn the_mpsc_baseline_reports_what_xtask_reads() {
        let args = Args::parse_from([
            "kombu-bench",
            "mpsc",
            "--messages",
            "200",
            "--latency-samples",
            "20",
        ]);
        let report = serde_json::to_value(measure(&args, false).await.unwrap()).unwrap();
        let keys: std::collections::BTreeSet<&str> = report
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(keys, KEYS.into_iter().collect());
        assert_eq!(report["name"], "raw tokio mpsc");
        assert_eq!(report["transport"], "mpsc");
        assert_eq!(report["url"], serde_json::Value::Null);
        assert_eq!(report["messages"], 200);
        assert_eq!(
            (report["producers"].as_u64(), report["consumers"].as_u64()),
            (Some(1), Some(1))
        );
        assert!(report["total_msgs_per_s"].as_f64().is_some_and(|r| r > 0.0));
        assert!(report["latency_p50_ms"].as_f64() <= report["latency_p99_ms"].as_f64());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn driver_baselines_need_a_url() {
        for baseline in ["redis", "lapin"] {
            let args = Args::parse_from(["kombu-bench", baseline]);
            let args = Args { url: None, ..args };
            let err = measure(&args, false).await.unwrap_err();
            assert!(err.contains("needs --url"), "{err}");
        }
    }
}
