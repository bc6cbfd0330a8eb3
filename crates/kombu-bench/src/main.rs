//! `kombu-bench`: publish and consume+ack throughput and round-trip latency of a kombu-rs
//! transport, or of a raw baseline doing the same work, printed as one JSON object.
//!
//! The workload matches `tests/python/bench_kombu.py` (run by `cargo xtask bench`):
//! JSON bodies `{"n": i, "pad": "xxx…"}` of about `--size` bytes; phase 1 publishes
//! `--messages` messages through a direct exchange; phase 2 consumes them (prefetch 100),
//! decoding and acking each; phase 3 times `--latency-samples` publish→receive round trips.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kombu::{Connection, Exchange, PublishOptions, Queue};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Body {
    n: u64,
    pad: String,
}

#[derive(Debug, Serialize)]
struct Report {
    name: String,
    transport: String,
    messages: u64,
    size: usize,
    publish_msgs_per_s: f64,
    consume_msgs_per_s: f64,
    total_msgs_per_s: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
}

struct Args {
    url: Option<String>,
    baseline: Option<String>,
    messages: u64,
    latency_samples: u64,
    size: usize,
    json: bool,
}

const USAGE: &str = "usage: kombu-bench (--url URL | --baseline mpsc) [--messages N] [--latency-samples M] \
                     [--size BYTES] [--json]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: None,
        baseline: None,
        messages: 100_000,
        latency_samples: 2_000,
        size: 100,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--url" => args.url = Some(value("--url")?),
            "--baseline" => args.baseline = Some(value("--baseline")?),
            "--messages" => args.messages = number(&value("--messages")?, "--messages")?,
            "--latency-samples" => {
                args.latency_samples = number(&value("--latency-samples")?, "--latency-samples")?
            }
            "--size" => args.size = number(&value("--size")?, "--size")? as usize,
            "--json" => args.json = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.url.is_none() == args.baseline.is_none() {
        return Err(format!("give exactly one of --url and --baseline\n{USAGE}"));
    }
    Ok(args)
}

fn number(text: &str, name: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{name} must be a positive integer, got {text:?}"))
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

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn report(
    name: String,
    transport: &str,
    args: &Args,
    publish: Duration,
    consume: Duration,
    mut lat: Vec<Duration>,
) -> Report {
    lat.sort();
    let n = args.messages as f64;
    Report {
        name,
        transport: transport.to_owned(),
        messages: args.messages,
        size: args.size,
        publish_msgs_per_s: n / publish.as_secs_f64(),
        consume_msgs_per_s: n / consume.as_secs_f64(),
        total_msgs_per_s: n / (publish + consume).as_secs_f64(),
        latency_p50_ms: percentile(&lat, 0.50),
        latency_p99_ms: percentile(&lat, 0.99),
    }
}

async fn bench_kombu(url: &str, args: &Args) -> kombu::Result<Report> {
    let conn = Connection::new(url)?;
    let transport = conn.urls()[0].scheme().to_owned();
    let exchange = Exchange::direct("bench");
    let queue = Queue::new(format!("bench-{}", std::process::id()))
        .exchange(exchange.clone())
        .routing_key("bench");
    let producer = conn.producer().exchange(exchange);
    let options = PublishOptions::new().routing_key("bench").declare(queue.clone());
    // Declare outside the timed loop, as the Python bench does.
    producer.publish(&body(0, args.size), options.clone()).await?;
    conn.default_channel().await?.purge_queue(&queue.name).await?;

    let bodies: Vec<Body> = (0..args.messages).map(|i| body(i, args.size)).collect();
    let t0 = Instant::now();
    for b in &bodies {
        producer.publish(b, options.clone()).await?;
    }
    let publish = t0.elapsed();

    let mut consumer = conn.consumer([queue.clone()]).prefetch_count(100).build().await?;
    consumer.consume().await?;
    let t1 = Instant::now();
    for _ in 0..args.messages {
        let message = consumer.recv_timeout(Duration::from_secs(30)).await?;
        let _decoded: Body = message.decode()?;
        message.ack().await?;
    }
    let consume = t1.elapsed();

    let mut latencies = Vec::with_capacity(args.latency_samples as usize);
    for i in 0..args.latency_samples {
        let t = Instant::now();
        producer.publish(&body(i, args.size), options.clone()).await?;
        let message = consumer.recv_timeout(Duration::from_secs(30)).await?;
        let _decoded: Body = message.decode()?;
        message.ack().await?;
        latencies.push(t.elapsed());
    }
    consumer.close().await?;
    conn.close().await?;
    Ok(report(
        format!("kombu-rs {url}"),
        &transport,
        args,
        publish,
        consume,
        latencies,
    ))
}

/// The same work over a raw `tokio::sync::mpsc` channel: serialize, send, receive, decode.
async fn bench_mpsc(args: &Args) -> Result<Report, String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let bodies: Vec<Body> = (0..args.messages).map(|i| body(i, args.size)).collect();
    let t0 = Instant::now();
    for b in &bodies {
        let bytes = serde_json::to_vec(b).map_err(|e| e.to_string())?;
        tx.send(bytes).map_err(|e| e.to_string())?;
    }
    let publish = t0.elapsed();
    let t1 = Instant::now();
    for _ in 0..args.messages {
        let bytes = rx.recv().await.ok_or("channel closed")?;
        let _decoded: Body = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    }
    let consume = t1.elapsed();
    let mut latencies = Vec::with_capacity(args.latency_samples as usize);
    for i in 0..args.latency_samples {
        let t = Instant::now();
        tx.send(serde_json::to_vec(&body(i, args.size)).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let bytes = rx.recv().await.ok_or("channel closed")?;
        let _decoded: Body = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        latencies.push(t.elapsed());
    }
    Ok(report(
        "raw tokio mpsc".into(),
        "mpsc",
        args,
        publish,
        consume,
        latencies,
    ))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kombu-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kombu-bench: cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match (&args.url, args.baseline.as_deref()) {
            (Some(url), _) => bench_kombu(url, &args).await.map_err(|e| e.to_string()),
            (None, Some("mpsc")) => bench_mpsc(&args).await,
            (None, Some(other)) => Err(format!("unknown baseline {other:?} (known: mpsc)")),
            (None, None) => Err(USAGE.to_owned()),
        }
    });
    match result {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("kombu-bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                println!(
                    "{}: publish {:.0} msg/s, consume+ack {:.0} msg/s, total {:.0} msg/s, p50 {:.3} ms, p99 {:.3} ms",
                    report.name,
                    report.publish_msgs_per_s,
                    report.consume_msgs_per_s,
                    report.total_msgs_per_s,
                    report.latency_p50_ms,
                    report.latency_p99_ms
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kombu-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
