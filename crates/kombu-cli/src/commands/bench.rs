//! `kombu bench`: publish and consume+ack throughput and round-trip latency of a transport, or
//! of a raw baseline doing the same work — the one benchmark implementation, also behind
//! `cargo xtask bench`.
//!
//! The workload matches `tests/python/bench_kombu.py`, so the numbers compare with Python Kombu:
//! JSON bodies `{"n": i, "pad": "xxx…"}` of about `--size` bytes; phase 1 publishes
//! `--messages` messages through a direct exchange (declared before the clock starts); phase 2
//! consumes them (prefetch `--prefetch`), decoding and acking each; phase 3 times
//! `--latency-samples` publish→receive round trips. With one producer and one consumer (the
//! default) everything runs on one connection, exactly as the former `kombu-bench` did, so
//! reports stay comparable across versions.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kombu::{Connection, Consumer, Exchange, Producer, PublishOptions, Queue};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::cli::{Baseline, BenchArgs, GlobalArgs};
use crate::commands::connect;
use crate::error::{stdout_error, CliError, CliResult};

/// How long a consumer waits for one message before the run is declared stuck.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

/// The message body.
#[derive(Debug, Serialize, Deserialize)]
struct Body {
    n: u64,
    pad: String,
}

/// A body whose JSON is about `size` bytes.
fn body(n: u64, size: usize) -> Body {
    let overhead = serde_json::to_vec(&Body {
        n,
        pad: String::new(),
    })
    .map_or(20, |v| v.len());
    Body {
        n,
        pad: "x".repeat(size.saturating_sub(overhead)),
    }
}

/// What `kombu bench --json` prints: one object. `cargo xtask bench` reads `name`,
/// `transport`, `messages`, `size` and the five rates/latencies; the rest describes the run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// `kombu-rs <url>` or `raw tokio mpsc`.
    name: String,
    /// The transport's registered name (`memory`, `sqlite`) or the baseline's (`mpsc`).
    transport: String,
    /// The broker URL, password redacted (`null` for a baseline).
    url: Option<String>,
    messages: u64,
    size: usize,
    producers: u16,
    consumers: u16,
    prefetch: u16,
    latency_samples: u64,
    /// Wall-clock seconds of the publish phase.
    publish_s: f64,
    /// Wall-clock seconds of the consume+ack phase.
    consume_s: f64,
    publish_msgs_per_s: f64,
    consume_msgs_per_s: f64,
    /// messages ÷ (publish seconds + consume seconds).
    total_msgs_per_s: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
}

/// The raw measurements of one run.
struct Timings {
    publish: Duration,
    consume: Duration,
    latencies: Vec<Duration>,
}

/// The `p` quantile of sorted durations in milliseconds (index `round((len - 1) · p)`, the
/// method `kombu-bench` used, kept so reports stay comparable).
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn report(name: String, transport: &str, url: Option<String>, args: &BenchArgs, timings: Timings) -> Report {
    let Timings {
        publish,
        consume,
        mut latencies,
    } = timings;
    latencies.sort();
    let n = args.messages as f64;
    Report {
        name,
        transport: transport.to_owned(),
        url,
        messages: args.messages,
        size: args.size,
        producers: args.producers,
        consumers: args.consumers,
        prefetch: args.prefetch,
        latency_samples: args.latency_samples,
        publish_s: publish.as_secs_f64(),
        consume_s: consume.as_secs_f64(),
        publish_msgs_per_s: n / publish.as_secs_f64(),
        consume_msgs_per_s: n / consume.as_secs_f64(),
        total_msgs_per_s: n / (publish + consume).as_secs_f64(),
        latency_p50_ms: percentile(&latencies, 0.50),
        latency_p99_ms: percentile(&latencies, 0.99),
        latency_max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    }
}

/// A progress bar on stderr for one phase. The measured loops only bump a counter (one relaxed
/// atomic add); a separate thread draws it, so drawing never runs on the measured path. Without
/// a terminal nothing is drawn.
struct Progress {
    count: Arc<AtomicU64>,
    drawer: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Progress {
    fn start(show: bool, phase: &str, total: u64) -> Progress {
        let count = Arc::new(AtomicU64::new(0));
        let drawer = show.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{prefix:>8} [{bar:30}] {human_pos}/{human_len} ({elapsed})")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(phase.to_owned());
            let stop = Arc::new(AtomicBool::new(false));
            let (count, stop_flag) = (count.clone(), stop.clone());
            let thread = std::thread::spawn(move || {
                while !stop_flag.load(Ordering::Acquire) {
                    bar.set_position(count.load(Ordering::Relaxed));
                    std::thread::sleep(Duration::from_millis(100));
                }
                // Gone when the phase ends: the summary (or the JSON) says how it went.
                bar.finish_and_clear();
            });
            (stop, thread)
        });
        Progress { count, drawer }
    }

    fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }

    fn tick(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn finish(self) {
        if let Some((stop, thread)) = self.drawer {
            stop.store(true, Ordering::Release);
            let _ = thread.join();
        }
    }
}

/// Runs `kombu bench`.
pub(crate) async fn run(global: &GlobalArgs, args: BenchArgs) -> CliResult {
    let show = std::io::stderr().is_terminal();
    let report = match args.baseline {
        Some(Baseline::Mpsc) => {
            if args.producers != 1 || args.consumers != 1 {
                return Err(CliError::other(
                    "--baseline mpsc measures one producer and one consumer; drop --producers/--consumers",
                ));
            }
            let timings = bench_mpsc(&args, show).await?;
            report("raw tokio mpsc".into(), "mpsc", None, &args, timings)
        }
        Some(Baseline::Redis) => {
            if args.producers != 1 || args.consumers != 1 {
                return Err(CliError::other(
                    "--baseline redis measures one producer and one consumer; drop --producers/--consumers",
                ));
            }
            let connection = connect(global)?;
            let url = connection
                .urls()
                .first()
                .cloned()
                .ok_or_else(|| CliError::other("--baseline redis needs a redis:// --url"))?;
            let timings = bench_redis(&url, &args, show).await?;
            report(
                "raw redis-rs".into(),
                "redis-raw",
                Some(url.to_string()),
                &args,
                timings,
            )
        }
        Some(Baseline::Lapin) => {
            if args.producers != 1 || args.consumers != 1 {
                return Err(CliError::other(
                    "--baseline lapin measures one producer and one consumer; drop --producers/--consumers",
                ));
            }
            let connection = connect(global)?;
            let url = connection
                .urls()
                .first()
                .cloned()
                .ok_or_else(|| CliError::other("--baseline lapin needs an amqp:// --url"))?;
            let timings = bench_lapin(&url, &args, show).await?;
            report(
                "raw lapin".into(),
                "amqp-raw",
                Some(url.to_string()),
                &args,
                timings,
            )
        }
        None => {
            let connection = connect(global)?;
            let url = connection.to_string();
            let transport = match connection.urls().first() {
                Some(u) => kombu::transport::registry::lookup_url(u)?.name,
                None => "unknown",
            };
            let result = bench_kombu(&connection, &args, show).await;
            let closed = connection.close().await;
            let timings = result?;
            closed?;
            report(format!("kombu-rs {url}"), transport, Some(url), &args, timings)
        }
    };
    let text = if args.json {
        serde_json::to_string(&report)
            .map_err(|e| CliError::other(format!("cannot render the report: {e}")))?
    } else {
        summary(&report)
    };
    writeln!(std::io::stdout(), "{text}").map_err(stdout_error)
}

/// The report for people.
fn summary(r: &Report) -> String {
    format!(
        "{}: {} messages of ~{} bytes, {} producer(s), {} consumer(s), prefetch {}\n\
         publish      {:>12.0} msg/s  ({:.3} s)\n\
         consume+ack  {:>12.0} msg/s  ({:.3} s)\n\
         total        {:>12.0} msg/s\n\
         latency      p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} round trips)",
        r.name,
        r.messages,
        r.size,
        r.producers,
        r.consumers,
        r.prefetch,
        r.publish_msgs_per_s,
        r.publish_s,
        r.consume_msgs_per_s,
        r.consume_s,
        r.total_msgs_per_s,
        r.latency_p50_ms,
        r.latency_p99_ms,
        r.latency_max_ms,
        r.latency_samples
    )
}

/// Waits for every task; the first failure wins.
async fn join_all<T: 'static>(mut tasks: JoinSet<kombu::Result<T>>) -> CliResult<Vec<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|e| CliError::other(format!("a benchmark task failed: {e}")))?;
        out.push(result?);
    }
    Ok(out)
}

/// Task `i`'s connection: the first task uses the main connection (so one producer and one
/// consumer measure exactly what `kombu-bench` measured), every other task its own.
fn task_connection(main: &Connection, i: u16, extra: &mut Vec<Connection>) -> Connection {
    if i == 0 {
        main.clone()
    } else {
        let connection = main.clone_fresh();
        extra.push(connection.clone());
        connection
    }
}

async fn bench_kombu(main: &Connection, args: &BenchArgs, show: bool) -> CliResult<Timings> {
    let mut extra = Vec::new();
    let result = phases(main, args, show, &mut extra).await;
    for connection in extra {
        let _ = connection.close().await;
    }
    result
}

async fn phases(
    main: &Connection,
    args: &BenchArgs,
    show: bool,
    extra: &mut Vec<Connection>,
) -> CliResult<Timings> {
    let total = args.messages;
    let exchange = Exchange::direct("bench");
    let queue = Queue::new(format!("bench-{}", std::process::id()))
        .exchange(exchange.clone())
        .routing_key("bench");
    let options = PublishOptions::new().routing_key("bench").declare(queue.clone());
    let producers: Vec<Producer> = (0..args.producers)
        .map(|i| {
            task_connection(main, i, extra)
                .producer()
                .exchange(exchange.clone())
        })
        .collect();
    // Declare outside the timed loop, as the Python bench does.
    for producer in &producers {
        producer.publish(&body(0, args.size), options.clone()).await?;
    }
    let channel = main.default_channel().await?;
    channel.purge_queue(&queue.name).await?;

    // Phase 1: publish, the bodies built beforehand and dealt round robin to the producers.
    let mut shares: Vec<Vec<Body>> = (0..args.producers).map(|_| Vec::new()).collect();
    for i in 0..total {
        shares[(i % u64::from(args.producers)) as usize].push(body(i, args.size));
    }
    let progress = Progress::start(show, "publish", total);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (producer, bodies) in producers.iter().cloned().zip(shares) {
        let (options, counter) = (options.clone(), progress.counter());
        tasks.spawn(async move {
            for b in &bodies {
                producer.publish(b, options.clone()).await?;
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    let published = join_all(tasks).await;
    let publish = started.elapsed();
    progress.finish();
    published?;

    // Phase 2: consume+ack, the consumers started before the clock, as in the Python bench.
    let mut consumers = Vec::new();
    for i in 0..args.consumers {
        let connection = task_connection(main, i, extra);
        let mut consumer = connection
            .consumer([queue.clone()])
            .prefetch_count(args.prefetch)
            .build()
            .await?;
        consumer.consume().await?;
        consumers.push(consumer);
    }
    let progress = Progress::start(show, "consume", total);
    let done = Arc::new(Notify::new());
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, consumer) in consumers.into_iter().enumerate() {
        let (received, done) = (progress.counter(), done.clone());
        tasks.spawn(async move {
            consume_share(consumer, total, received, done)
                .await
                .map(|c| (i, c))
        });
    }
    let consumed = join_all(tasks).await;
    let consume = started.elapsed();
    progress.finish();
    let mut consumers = consumed?;
    consumers.sort_by_key(|(i, _)| *i);
    let mut consumers = consumers.into_iter().map(|(_, c)| c);
    let Some(mut consumer) = consumers.next() else {
        return Err(CliError::other("no consumer"));
    };
    for other in consumers {
        other.close().await?;
    }

    // Phase 3: round trips on the first producer and consumer.
    let Some(producer) = producers.first() else {
        return Err(CliError::other("no producer"));
    };
    let progress = Progress::start(show, "latency", args.latency_samples);
    let mut latencies = Vec::with_capacity(usize::try_from(args.latency_samples).unwrap_or(0));
    let result: kombu::Result<()> = async {
        for i in 0..args.latency_samples {
            let t = Instant::now();
            producer.publish(&body(i, args.size), options.clone()).await?;
            let message = consumer.recv_timeout(RECV_TIMEOUT).await?;
            let _decoded: Body = message.decode()?;
            message.ack().await?;
            latencies.push(t.elapsed());
            progress.tick();
        }
        Ok(())
    }
    .await;
    progress.finish();
    result?;
    consumer.close().await?;
    channel.delete_queue(&queue.name, Default::default()).await?;
    Ok(Timings {
        publish,
        consume,
        latencies,
    })
}

/// One consumer's part of phase 2: receive, decode and ack until all `total` messages were
/// received by the consumers together (the last one to count wakes the others).
async fn consume_share(
    mut consumer: Consumer,
    total: u64,
    received: Arc<AtomicU64>,
    done: Arc<Notify>,
) -> kombu::Result<Consumer> {
    let stop = done.notified();
    tokio::pin!(stop);
    stop.as_mut().enable();
    while received.load(Ordering::Acquire) < total {
        tokio::select! {
            biased;
            message = consumer.recv_timeout(RECV_TIMEOUT) => {
                let message = message?;
                let _decoded: Body = message.decode()?;
                message.ack().await?;
                if received.fetch_add(1, Ordering::AcqRel) + 1 >= total {
                    done.notify_waiters();
                }
            }
            () = &mut stop => break,
        }
    }
    Ok(consumer)
}

/// A bare channel for the baselines: the same serialize/send/receive/decode work as kombu-rs,
/// without kombu-rs.
trait RawChannel {
    async fn send(&mut self, payload: Vec<u8>) -> CliResult<()>;
    async fn recv(&mut self) -> CliResult<Vec<u8>>;
}

/// A raw `tokio::sync::mpsc` channel (the in-process ceiling).
struct MpscChannel {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

fn mpsc_closed() -> CliError {
    CliError::other("the mpsc channel closed")
}

impl RawChannel for MpscChannel {
    async fn send(&mut self, payload: Vec<u8>) -> CliResult<()> {
        self.tx.send(payload).map_err(|_| mpsc_closed())
    }

    async fn recv(&mut self) -> CliResult<Vec<u8>> {
        self.rx.recv().await.ok_or_else(mpsc_closed)
    }
}

/// A Redis list with a bare redis-rs client: LPUSH, BRPOP.
struct RedisList {
    conn: redis::aio::MultiplexedConnection,
    key: String,
}

fn redis_failed(e: redis::RedisError) -> CliError {
    CliError::other(format!("redis: {e}"))
}

impl RawChannel for RedisList {
    async fn send(&mut self, payload: Vec<u8>) -> CliResult<()> {
        redis::cmd("LPUSH")
            .arg(&self.key)
            .arg(payload)
            .query_async::<i64>(&mut self.conn)
            .await
            .map(drop)
            .map_err(redis_failed)
    }

    async fn recv(&mut self) -> CliResult<Vec<u8>> {
        let (_, bytes): (String, Vec<u8>) = redis::cmd("BRPOP")
            .arg(&self.key)
            .arg(0.25)
            .query_async(&mut self.conn)
            .await
            .map_err(redis_failed)?;
        Ok(bytes)
    }
}

/// The three phases over a raw channel: publish the bodies built beforehand (serialized in the
/// loop, as kombu-rs does), receive and decode them all, then timed round trips.
async fn bench_raw(channel: &mut impl RawChannel, args: &BenchArgs, show: bool) -> CliResult<Timings> {
    let encode = |b: &Body| serde_json::to_vec(b).map_err(|e| CliError::other(e.to_string()));
    let decode =
        |bytes: &[u8]| serde_json::from_slice::<Body>(bytes).map_err(|e| CliError::other(e.to_string()));
    let bodies: Vec<Body> = (0..args.messages).map(|i| body(i, args.size)).collect();

    let progress = Progress::start(show, "publish", args.messages);
    let started = Instant::now();
    for b in &bodies {
        channel.send(encode(b)?).await?;
        progress.tick();
    }
    let publish = started.elapsed();
    progress.finish();

    let progress = Progress::start(show, "consume", args.messages);
    let started = Instant::now();
    for _ in 0..args.messages {
        let bytes = channel.recv().await?;
        let _decoded = decode(&bytes)?;
        progress.tick();
    }
    let consume = started.elapsed();
    progress.finish();

    let progress = Progress::start(show, "latency", args.latency_samples);
    let mut latencies = Vec::with_capacity(usize::try_from(args.latency_samples).unwrap_or(0));
    for i in 0..args.latency_samples {
        let t = Instant::now();
        channel.send(encode(&body(i, args.size))?).await?;
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

/// The same work over a raw `tokio::sync::mpsc` channel: serialize, send, receive, decode.
async fn bench_mpsc(args: &BenchArgs, show: bool) -> CliResult<Timings> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    bench_raw(&mut MpscChannel { tx, rx }, args, show).await
}

fn started_at_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// The same work with a bare redis-rs client: serialize + LPUSH, then BRPOP + decode.
async fn bench_redis(
    url: &kombu::transport::url::BrokerUrl,
    args: &BenchArgs,
    show: bool,
) -> CliResult<Timings> {
    let client = redis::Client::open(url.as_uri(true).as_str()).map_err(redis_failed)?;
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(redis_failed)?;
    let key = format!("bench-raw-{}-{}", std::process::id(), started_at_nanos());
    bench_raw(&mut RedisList { conn, key }, args, show).await
}

/// A queue bound to a direct exchange on RabbitMQ, through a bare lapin channel: the work
/// kombu-rs does for an AMQP publish and a delivery, without kombu-rs.
struct LapinQueue {
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    exchange: String,
    confirm: bool,
}

fn lapin_failed(e: lapin::Error) -> CliError {
    CliError::other(format!("lapin: {e}"))
}

impl RawChannel for LapinQueue {
    async fn send(&mut self, payload: Vec<u8>) -> CliResult<()> {
        let properties = lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2);
        let pending = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                "bench".into(),
                lapin::options::BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await
            .map_err(lapin_failed)?;
        if self.confirm {
            pending.await.map_err(lapin_failed)?;
        }
        Ok(())
    }

    async fn recv(&mut self) -> CliResult<Vec<u8>> {
        use futures_util::StreamExt as _;
        let delivery = self
            .consumer
            .next()
            .await
            .ok_or_else(|| CliError::other("lapin: the consumer ended"))?
            .map_err(lapin_failed)?;
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .map_err(lapin_failed)?;
        Ok(delivery.data)
    }
}

/// The same work with a bare lapin client: serialize + basic.publish (+ confirm), then
/// basic.consume (prefetch `--prefetch`) + decode + basic.ack.
async fn bench_lapin(
    url: &kombu::transport::url::BrokerUrl,
    args: &BenchArgs,
    show: bool,
) -> CliResult<Timings> {
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
        .basic_qos(args.prefetch, BasicQosOptions::default())
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
    let timings = bench_raw(&mut queue, args, show).await?;
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

    #[test]
    fn bodies_have_the_asked_size() {
        for n in [0, 7, 123_456] {
            let json = serde_json::to_vec(&body(n, 100)).unwrap_or_default();
            assert_eq!(json.len(), 100, "n = {n}");
        }
        // Smaller than the envelope: no padding, never a panic.
        assert_eq!(body(1, 3).pad, "");
    }

    #[test]
    fn percentiles_match_kombu_bench() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.50), 51.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
