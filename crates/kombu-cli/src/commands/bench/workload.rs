//! The benchmark workload and its report, shared by `kombu bench` (kombu-rs) and the raw-driver
//! baselines of the bench-only `kombu-bench` package, which includes this file by path: both
//! build the same bodies, time the same phases and print the same report, so `cargo xtask
//! bench` compares like with like. It uses std, serde, serde_json and indicatif only.
//!
//! The workload matches `tests/python/bench_kombu.py`, so the numbers compare with Python Kombu:
//! JSON bodies `{"n": i, "pad": "xxx…"}` of about `size` bytes; phase 1 publishes `messages`
//! messages; phase 2 consumes them, decoding (and acking) each; phase 3 times
//! `latency_samples` publish→receive round trips.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

/// The message body.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Body {
    n: u64,
    pad: String,
}

/// A body whose JSON is about `size` bytes.
pub(crate) fn body(n: u64, size: usize) -> Body {
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

/// The parameters of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Workload {
    pub(crate) messages: u64,
    pub(crate) size: usize,
    pub(crate) producers: u16,
    pub(crate) consumers: u16,
    pub(crate) prefetch: u16,
    pub(crate) latency_samples: u64,
    /// Messages per publish batch in phase 1 (1: one publish at a time).
    pub(crate) batch: u64,
    /// Single publishes in flight at a time per producer in phase 1 (1: each awaited before
    /// the next).
    pub(crate) concurrency: u64,
}

/// What `--json` prints: one object. `cargo xtask bench` reads `name`, `transport`, `messages`,
/// `size` and the five rates/latencies; the rest describes the run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// `kombu-rs <url>` or `raw tokio mpsc`.
    name: String,
    /// The transport's registered name (`memory`, `sqlite`) or the baseline's (`mpsc`).
    transport: String,
    /// The broker URL, password redacted (`null` for the in-process baseline).
    url: Option<String>,
    messages: u64,
    size: usize,
    producers: u16,
    consumers: u16,
    prefetch: u16,
    latency_samples: u64,
    /// Messages per publish batch (1: one publish at a time).
    batch: u64,
    /// Publishes in flight at a time per producer (1: one after another).
    concurrency: u64,
    /// Wall-clock seconds of the publish phase.
    publish_s: f64,
    /// Wall-clock seconds of the consume phase.
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
pub(crate) struct Timings {
    pub(crate) publish: Duration,
    pub(crate) consume: Duration,
    pub(crate) latencies: Vec<Duration>,
}

/// The `p` quantile of sorted durations in milliseconds (index `round((len - 1) · p)`, the
/// method the first `kombu-bench` used, kept so reports stay comparable).
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// The report of a run.
pub(crate) fn report(
    name: String,
    transport: &str,
    url: Option<String>,
    workload: &Workload,
    timings: Timings,
) -> Report {
    let Timings {
        publish,
        consume,
        mut latencies,
    } = timings;
    latencies.sort();
    let n = workload.messages as f64;
    Report {
        name,
        transport: transport.to_owned(),
        url,
        messages: workload.messages,
        size: workload.size,
        producers: workload.producers,
        consumers: workload.consumers,
        prefetch: workload.prefetch,
        latency_samples: workload.latency_samples,
        batch: workload.batch,
        concurrency: workload.concurrency,
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

/// How phase 1 published, when not one message at a time.
fn publishing(r: &Report) -> String {
    match (r.batch, r.concurrency) {
        (b, _) if b > 1 => format!(", batches of {b}"),
        (_, c) if c > 1 => format!(", {c} publishes in flight"),
        _ => String::new(),
    }
}

/// The report for people.
pub(crate) fn summary(r: &Report) -> String {
    format!(
        "{}: {} messages of ~{} bytes, {} producer(s), {} consumer(s), prefetch {}{}\n\
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
        publishing(r),
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

/// A progress bar on stderr for one phase. The measured loops only bump a counter (one relaxed
/// atomic add); a separate thread draws it, so drawing never runs on the measured path. Without
/// a terminal nothing is drawn.
pub(crate) struct Progress {
    count: Arc<AtomicU64>,
    drawer: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Progress {
    pub(crate) fn start(show: bool, phase: &str, total: u64) -> Progress {
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

    /// The counter, for tasks that count on their own.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }

    pub(crate) fn tick(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn finish(self) {
        if let Some((stop, thread)) = self.drawer {
            stop.store(true, Ordering::Release);
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
#[path = "report_keys.rs"]
pub(crate) mod report_keys;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_serializes_exactly_the_documented_keys() {
        let workload = Workload {
            messages: 10,
            size: 100,
            producers: 1,
            consumers: 1,
            prefetch: 10,
            latency_samples: 1,
            batch: 1,
            concurrency: 1,
        };
        let timings = Timings {
            publish: Duration::from_millis(1),
            consume: Duration::from_millis(1),
            latencies: vec![Duration::from_millis(1)],
        };
        let report =
            serde_json::to_value(report("t".into(), "memory", None, &workload, timings)).unwrap_or_default();
        let keys: Vec<&str> = report
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut expected = report_keys::REPORT_KEYS.to_vec();
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
    }

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
