//! The keys of `kombu bench --json` (and of kombu-bench's baselines, which print the same
//! `Report`), written out once for the tests that check a report against them: workload's own
//! test (the `Report` struct serializes exactly these), kombu-bench's and the CLI's.

/// Every key of a bench report, in the order `Report` serializes them.
pub(crate) const REPORT_KEYS: [&str; 19] = [
    "name",
    "transport",
    "url",
    "messages",
    "size",
    "producers",
    "consumers",
    "prefetch",
    "latency_samples",
    "batch",
    "concurrency",
    "publish_s",
    "consume_s",
    "publish_msgs_per_s",
    "consume_msgs_per_s",
    "total_msgs_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
];
