//! `kombu bench`: publish and consume+ack throughput and round-trip latency of a transport —
//! the kombu-rs side of `cargo xtask bench`, whose raw-driver baselines (tokio mpsc, redis-rs,
//! lapin) live in the bench-only `kombu-bench` package.
//!
//! The workload and report are [`workload`]'s, shared with those baselines: JSON bodies
//! `{"n": i, "pad": "xxx…"}` of about `--size` bytes; phase 1 publishes `--messages` messages
//! through a direct exchange (declared before the clock starts); phase 2 consumes them with
//! `--consumers` [`kombu::Worker`]s (prefetch `--prefetch`) whose handler decodes and acks
//! each; phase 3 times `--latency-samples`
//! publish→receive round trips. With one producer and one consumer (the default) everything
//! runs on one connection, exactly as the former `kombu-bench` did, so reports stay comparable
//! across versions.

pub(crate) mod workload;

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use kombu::{Connection, Exchange, Outcome, Producer, PublishOptions, Queue};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use self::workload::{body, report, summary, Body, Progress, Timings, Workload};
use crate::cli::{BenchArgs, GlobalArgs};
use crate::commands::connect;
use crate::error::{stdout_error, CliError, CliResult};

/// How long a consumer waits for one message before the run is declared stuck.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `kombu bench`.
pub(crate) async fn run(global: &GlobalArgs, args: BenchArgs) -> CliResult {
    let show = std::io::stderr().is_terminal();
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
    let workload = Workload {
        messages: args.messages,
        size: args.size,
        producers: args.producers,
        consumers: args.consumers,
        prefetch: args.prefetch,
        latency_samples: args.latency_samples,
        batch: args.batch,
        concurrency: args.concurrency,
    };
    let report = report(
        format!("kombu-rs {url}"),
        transport,
        Some(url),
        &workload,
        timings,
    );
    let text = if args.json {
        serde_json::to_string(&report)
            .map_err(|e| CliError::other(format!("cannot render the report: {e}")))?
    } else {
        summary(&report)
    };
    writeln!(std::io::stdout(), "{text}").map_err(stdout_error)
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
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
    let concurrency = usize::try_from(args.concurrency).unwrap_or(usize::MAX);
    for (producer, bodies) in producers.iter().cloned().zip(shares) {
        let (options, counter) = (options.clone(), progress.counter());
        tasks.spawn(async move {
            if concurrency > 1 {
                // `concurrency` publishes in flight at a time, each awaited on its own.
                let mut in_flight = futures_util::stream::FuturesUnordered::new();
                for b in &bodies {
                    if in_flight.len() >= concurrency {
                        if let Some(published) = in_flight.next().await {
                            published?;
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    in_flight.push(producer.publish(b, options.clone()));
                }
                while let Some(published) = in_flight.next().await {
                    published?;
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(());
            }
            if batch <= 1 {
                for b in &bodies {
                    producer.publish(b, options.clone()).await?;
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(());
            }
            for chunk in bodies.chunks(batch) {
                let mut publishes = producer.batch();
                for b in chunk {
                    publishes.add(b, options.clone());
                }
                publishes.send().await.into_result()?;
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    let published = join_all(tasks).await;
    let publish = started.elapsed();
    progress.finish();
    published?;

    // Phase 2: consume+ack through `Worker`s, the long-running consumer a service runs: each
    // handler decodes and acks its message. The clock includes starting the workers (their
    // consume call), which the old plain consumers started before it: a round trip or two.
    let progress = Progress::start(show, "consume", total);
    let acked = progress.counter();
    let all_acked = Arc::new(Notify::new());
    let started = Instant::now();
    let mut workers = JoinSet::new();
    let mut handles = Vec::new();
    for i in 0..args.consumers {
        let (acked, all_acked) = (acked.clone(), all_acked.clone());
        let worker = task_connection(main, i, extra)
            .worker([queue.clone()])
            .prefetch_count(args.prefetch)
            .build(move |message| {
                let (acked, all_acked) = (acked.clone(), all_acked.clone());
                async move {
                    let _decoded: Body = message.decode()?;
                    message.ack().await?;
                    if acked.fetch_add(1, Ordering::AcqRel) + 1 == total {
                        all_acked.notify_one();
                    }
                    Ok(Outcome::Ack)
                }
            });
        handles.push(worker.handle());
        workers.spawn(worker.run());
    }
    let drained = wait_for_all(&acked, total, &all_acked, &mut workers).await;
    let consume = started.elapsed();
    progress.finish();
    for handle in &handles {
        handle.shutdown();
    }
    let stopped = join_all(workers).await;
    drained?;
    stopped?;
    let mut consumer = main
        .consumer([queue.clone()])
        .prefetch_count(args.prefetch)
        .consume()
        .await?;

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

/// Wait until `total` messages were acked (`all_acked` is notified by the handler of the
/// last); an error if a worker ends first, or if no message is acked for `RECV_TIMEOUT`.
async fn wait_for_all(
    acked: &AtomicU64,
    total: u64,
    all_acked: &Notify,
    workers: &mut JoinSet<kombu::Result<kombu::WorkerReport>>,
) -> CliResult {
    let mut seen = acked.load(Ordering::Acquire);
    while seen < total {
        tokio::select! {
            () = all_acked.notified() => {}
            ended = workers.join_next() => {
                let ended = match ended {
                    Some(Ok(Ok(report))) => format!("a worker stopped early: {report:?}"),
                    Some(Ok(Err(e))) => return Err(e.into()),
                    Some(Err(e)) => format!("a worker task failed: {e}"),
                    None => "no worker is running".to_owned(),
                };
                return Err(CliError::other(ended));
            }
            () = tokio::time::sleep(RECV_TIMEOUT) => {
                let now = acked.load(Ordering::Acquire);
                if now == seen {
                    return Err(CliError::other(format!(
                        "no message acked for {RECV_TIMEOUT:?}: {now} of {total} consumed"
                    )));
                }
            }
        }
        seen = acked.load(Ordering::Acquire);
    }
    Ok(())
}
