//! End-to-end tests of the `kombu` binary: exit codes, stderr lines, exact JSON.
//!
//! `memory://` lives inside one process, so everything that spans invocations (publish in one,
//! consume in the next) runs on an SQLite file in a fresh directory per test.

use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{json, Value};

mod common;
use common::sqlite_url;

/// What one invocation did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The stdout lines parsed as JSON, one value per line.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", self.stdout))
    }

    #[track_caller]
    fn success(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{self:#?}");
        self
    }

    /// Failed with `code` and exactly one stderr line `kombu: error: …` containing `needle`.
    #[track_caller]
    fn error_line(&self, code: i32, needle: &str) -> &str {
        assert_eq!(self.code, Some(code), "{self:#?}");
        let line = self.stderr.trim_end();
        assert!(!line.contains('\n'), "more than one stderr line: {self:#?}");
        assert!(line.starts_with("kombu: error: "), "{self:#?}");
        assert!(line.contains(needle), "{needle:?} not in {line:?}");
        assert!(!line.contains("panicked"), "{line}");
        line
    }
}

/// Runs `kombu args…` with `stdin`, in the scratch area (never the repository) and without an
/// inherited `KOMBU_URL`.
fn kombu_with_stdin(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kombu"))
        .args(args)
        .env_remove("KOMBU_URL")
        .env_remove("RUST_LOG")
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run kombu: {e}"));
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin)
            .unwrap_or_else(|e| panic!("cannot write stdin: {e}"));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("kombu did not finish: {e}"));
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn kombu(args: &[&str]) -> Run {
    kombu_with_stdin(args, b"")
}

/// `kombu --url URL stats QUEUE --json` → the message count.
fn count(url: &str, queue: &str) -> u64 {
    let stats = kombu(&["--url", url, "stats", queue, "--json"]);
    stats.success();
    assert_eq!(stats.json()[0]["queue"], queue);
    stats.json()[0]["messages"]
        .as_u64()
        .unwrap_or_else(|| panic!("{stats:#?}"))
}

#[test]
fn transports_lists_every_compiled_transport_with_capabilities() {
    let run = kombu(&["transports", "--json"]);
    run.success();
    let list = run.json();
    let names: Vec<&str> = list
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        [
            "amqp",
            "amqp-amiquip",
            "memory",
            "mongodb",
            "redis",
            "sqlite",
            "sqs",
            "zookeeper"
        ]
    );
    let amqp = &list[0];
    assert_eq!(amqp["kombu_feature"], "amqp");
    assert_eq!(amqp["capabilities"]["exchange: headers"], "yes");
    let amiquip = &list[1];
    assert_eq!(amiquip["schemes"], json!(["amqp+amiquip", "pyamqp+amiquip"]));
    assert_eq!(amiquip["kombu_feature"], "amqp-amiquip");
    let memory = &list[2];
    assert_eq!(memory["schemes"], json!(["memory"]));
    assert_eq!(memory["kombu_feature"], "memory");
    assert_eq!(memory["capabilities"]["exchange: topic"], "yes");
    assert_eq!(memory["capabilities"]["priorities"], "0..=9 (higher first)");
    assert_eq!(
        memory["capabilities"].as_object().map(|o| o.len()),
        Some(kombu::Capabilities::NONE.rows().len())
    );

    let table = kombu(&["transports"]);
    table.success();
    assert!(table
        .stdout
        .lines()
        .any(|l| l.starts_with("memory ") && l.contains("memory://")));
    assert!(table
        .stdout
        .lines()
        .any(|l| l.starts_with("capability ") && l.contains("memory") && l.contains("sqlite")));
}

#[test]
fn bad_urls_are_one_clear_line_without_the_password() {
    let run = kombu(&["--url", "nonsense", "stats", "q"]);
    run.error_line(1, "invalid-url: missing \"://\"");

    let run = kombu(&["--url", "gopher://user:hunter2@host/", "stats", "q"]);
    let line = run.error_line(1, "unknown-transport: no transport for scheme \"gopher\"");
    assert!(line.contains("available: amqp,"), "{line}");
    assert!(line.contains(" memory,"), "{line}");
    assert!(line.contains("sqlite"), "{line}");
    assert!(!line.contains("hunter2"), "{line}");

    let run = kombu(&[
        "--url",
        "amqp://user:hunter2@host:port/",
        "publish",
        "-r",
        "q",
        "x",
    ]);
    let line = run.error_line(1, "invalid-url");
    assert!(!line.contains("hunter2"), "{line}");
    assert!(run.stdout.is_empty());
}

#[test]
fn usage_errors_exit_2_and_help_has_examples() {
    assert_eq!(kombu(&["publish"]).code, Some(2));
    assert_eq!(kombu(&["consume"]).code, Some(2));
    assert_eq!(kombu(&["consume", "q", "--requeue", "--no-ack"]).code, Some(2));
    let help = kombu(&["--help"]);
    help.success();
    assert!(help.stdout.contains("Examples:"), "{}", help.stdout);
    assert!(help.stdout.contains("kombu consume tasks --count 1 --json"));
    assert!(help.stdout.contains("KOMBU_URL"));
}

#[test]
fn consume_needs_an_existing_queue_and_times_out_with_exit_3() {
    // memory:// is per process: a fresh one has no queues.
    let run = kombu(&["--url", "memory://", "consume", "ghost", "--count", "1"]);
    run.error_line(1, "not-found: no such queue (queue=ghost)");

    let run = kombu(&[
        "--url",
        "memory://",
        "consume",
        "ghost",
        "--declare",
        "--count",
        "1",
        "--timeout",
        "0.2",
    ]);
    run.error_line(3, "received 0 of 1 message(s)");
    assert!(run.stdout.is_empty());
}

/// The keys of `kombu bench --json`, which `cargo xtask bench` reads (a subset) and documents.
#[path = "../src/commands/bench/report_keys.rs"]
mod report_keys;
use report_keys::REPORT_KEYS as BENCH_KEYS;

#[track_caller]
fn check_report(report: &Value, messages: u64) {
    let keys: std::collections::BTreeSet<&str> = report
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(keys, BENCH_KEYS.into_iter().collect(), "{report}");
    assert_eq!(report["messages"], messages);
    let number = |key: &str| report[key].as_f64().unwrap_or(f64::NAN);
    for key in [
        "publish_msgs_per_s",
        "consume_msgs_per_s",
        "total_msgs_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
    ] {
        assert!(number(key).is_finite() && number(key) > 0.0, "{key}: {report}");
    }
    assert!(number("latency_p50_ms") <= number("latency_p99_ms"));
    assert!(number("latency_p99_ms") <= number("latency_max_ms"));
    let total = messages as f64 / (number("publish_s") + number("consume_s"));
    assert!(
        (number("total_msgs_per_s") - total).abs() / total < 1e-9,
        "{report}"
    );
}

#[test]
fn bench_reports_the_fields_xtask_reads() {
    let run = kombu(&[
        "--url",
        "memory://",
        "bench",
        "--messages",
        "300",
        "--latency-samples",
        "30",
        "--size",
        "64",
        "--json",
    ]);
    run.success();
    // No terminal: no progress bar, nothing on stderr.
    assert_eq!(run.stderr, "");
    let report = run.json();
    check_report(&report, 300);
    assert_eq!(report["name"], "kombu-rs memory://");
    assert_eq!(report["transport"], "memory");
    assert_eq!(report["url"], "memory://");
    assert_eq!(report["size"], 64);
    assert_eq!(report["latency_samples"], 30);
    assert_eq!(
        (report["producers"].as_u64(), report["consumers"].as_u64()),
        (Some(1), Some(1))
    );

    let run = kombu(&[
        "--url",
        "memory://",
        "bench",
        "--messages",
        "500",
        "--latency-samples",
        "10",
        "--producers",
        "3",
        "--consumers",
        "2",
        "--json",
    ]);
    run.success();
    let report = run.json();
    check_report(&report, 500);
    assert_eq!(
        (report["producers"].as_u64(), report["consumers"].as_u64()),
        (Some(3), Some(2))
    );
}

#[test]
fn published_messages_are_consumed_as_exact_json() {
    let url = &sqlite_url("round-trip");
    kombu(&["--url", url, "declare", "queue", "tasks"]).success();
    let run = kombu(&[
        "--url",
        url,
        "publish",
        "--routing-key",
        "tasks",
        "--header",
        "retries=3",
        "-H",
        "source=cli",
        "--priority",
        "5",
        "--expiration",
        "60",
        "--count",
        "2",
        r#"{"job": 42}"#,
    ]);
    run.success();
    assert_eq!(
        run.stdout,
        "published 2 messages to the default exchange, routing key \"tasks\"\n"
    );
    assert_eq!(count(url, "tasks"), 2);

    let run = kombu(&["--url", url, "consume", "tasks", "--count", "2", "--json"]);
    run.success();
    let messages = run.json_lines();
    assert_eq!(messages.len(), 2);
    for m in &messages {
        let mut keys: Vec<&str> = m
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "body",
                "body_encoding",
                "content_encoding",
                "content_type",
                "delivery_info",
                "headers",
                "properties",
                "queue"
            ]
        );
        assert_eq!(m["queue"], "tasks");
        assert_eq!(m["body"], r#"{"job": 42}"#);
        assert_eq!(m["body_encoding"], "utf-8");
        assert_eq!(m["content_type"], "application/json");
        assert_eq!(m["content_encoding"], "utf-8");
        assert_eq!(m["headers"], json!({"retries": 3, "source": "cli"}));
        assert_eq!(m["properties"]["priority"], 5);
        assert_eq!(m["properties"]["expiration"], "60000");
        assert_eq!(m["properties"]["delivery_mode"], 2);
        assert_eq!(m["delivery_info"]["exchange"], "");
        assert_eq!(m["delivery_info"]["routing_key"], "tasks");
        assert_eq!(m["delivery_info"]["redelivered"], false);
        assert_eq!(m["delivery_info"]["queue"], "tasks");
    }
    assert_ne!(
        messages[0]["delivery_info"]["delivery_tag"],
        messages[1]["delivery_info"]["delivery_tag"]
    );
    assert_eq!(count(url, "tasks"), 0, "acked after printing");
}

#[test]
fn requeue_peeks_in_order_and_count_takes_no_extra_message() {
    let url = &sqlite_url("peek");
    let run = kombu_with_stdin(
        &["--url", url, "publish", "--declare-queue", "q", "--lines"],
        b"{\"n\": 1}\n\n{\"n\": 2}\r\n{\"n\": 3}\n",
    );
    run.success();
    assert!(run.stdout.starts_with("published 3 messages"), "{}", run.stdout);

    let peek = kombu(&[
        "--url",
        url,
        "consume",
        "q",
        "--count",
        "2",
        "--requeue",
        "--json",
    ]);
    peek.success();
    let bodies: Vec<Value> = peek.json_lines().iter().map(|m| m["body"].clone()).collect();
    assert_eq!(bodies, [json!("{\"n\": 1}"), json!("{\"n\": 2}")]);
    assert_eq!(count(url, "q"), 3);

    // --count 1 with the default prefetch: only the first message is taken.
    let one = kombu(&["--url", url, "consume", "q", "--count", "1", "--json"]);
    one.success();
    assert_eq!(one.json_lines()[0]["body"], "{\"n\": 1}");
    assert_eq!(one.json_lines()[0]["delivery_info"]["redelivered"], true);

    let rest = kombu(&["--url", url, "consume", "q", "--count", "2", "--json"]);
    rest.success();
    let rest = rest.json_lines();
    assert_eq!(rest[0]["body"], "{\"n\": 2}");
    assert_eq!(rest[1]["body"], "{\"n\": 3}");
    assert_eq!(
        rest[1]["delivery_info"]["redelivered"], false,
        "never handed out before"
    );
    assert_eq!(count(url, "q"), 0);
}

#[test]
fn binary_bodies_are_base64_and_compression_is_undone() {
    let url = &sqlite_url("binary");
    let bytes: Vec<u8> = (0..=255u8).rev().collect();
    kombu_with_stdin(
        &[
            "--url",
            url,
            "publish",
            "--declare-queue",
            "blobs",
            "-s",
            "raw",
            "-c",
            "zstd",
            "-",
        ],
        &bytes,
    )
    .success();
    let run = kombu(&["--url", url, "consume", "blobs", "-n", "1", "--json"]);
    run.success();
    let m = &run.json_lines()[0];
    assert_eq!(m["body_encoding"], "base64");
    assert_eq!(m["content_type"], "application/data");
    assert_eq!(m["headers"]["compression"], "application/zstd");
    let body = base64::engine::general_purpose::STANDARD
        .decode(m["body"].as_str().unwrap_or_default())
        .unwrap_or_default();
    assert_eq!(body, bytes);

    // Text serializer with a body that is not UTF-8: refused before anything is published.
    let run = kombu_with_stdin(
        &["--url", url, "publish", "-r", "blobs", "-s", "text", "-"],
        &bytes,
    );
    run.error_line(1, "not UTF-8");
    assert_eq!(count(url, "blobs"), 0);
}

#[test]
fn topic_routing_purge_delete_and_timeouts() {
    let url = &sqlite_url("topic");
    kombu(&["--url", url, "declare", "exchange", "media", "--type", "topic"]).success();
    let run = kombu(&[
        "--url",
        url,
        "declare",
        "queue",
        "images",
        "--exchange",
        "media",
        "--exchange-type",
        "topic",
        "--routing-key",
        "image.#",
    ]);
    run.success();
    assert_eq!(
        run.stdout,
        "declared queue \"images\" (0 messages), bound to exchange \"media\" with routing key \"image.#\"\n"
    );
    for key in ["image.png", "video.mp4", "image.raw.tiff"] {
        kombu(&[
            "--url", url, "publish", "-e", "media", "-t", "topic", "-r", key, "x",
        ])
        .success();
    }
    assert_eq!(count(url, "images"), 2);

    // Two wanted, one more arrives within the idle timeout: exit 3, the one printed and acked.
    kombu(&["--url", url, "purge", "images"]).success();
    kombu(&[
        "--url",
        url,
        "publish",
        "-e",
        "media",
        "-t",
        "topic",
        "-r",
        "image.gif",
        "{}",
    ])
    .success();
    let run = kombu(&[
        "--url",
        url,
        "consume",
        "images",
        "--count",
        "2",
        "--timeout",
        "0.3",
        "--json",
    ]);
    run.error_line(3, "received 1 of 2 message(s)");
    assert_eq!(run.json_lines().len(), 1);
    assert_eq!(run.json_lines()[0]["delivery_info"]["routing_key"], "image.gif");
    assert_eq!(count(url, "images"), 0);

    kombu(&[
        "--url",
        url,
        "publish",
        "-e",
        "media",
        "-t",
        "topic",
        "-r",
        "image.jpg",
        "{}",
    ])
    .success();
    let run = kombu(&["--url", url, "purge", "images"]);
    run.success();
    assert_eq!(run.stdout, "purged 1 message from queue \"images\"\n");
    let run = kombu(&["--url", url, "delete", "queue", "images"]);
    run.success();
    assert_eq!(run.stdout, "deleted queue \"images\" (0 messages)\n");
    kombu(&["--url", url, "stats", "images"]).error_line(1, "not-found: no such queue (queue=images)");
    kombu(&["--url", url, "purge", "images"]).error_line(1, "not-found");
}

#[test]
fn publish_sends_lines_and_copies_in_batches_and_keeps_their_order() {
    let url = &sqlite_url("batches");
    let lines: String = (1..=250).map(|n| format!("{{\"n\": {n}}}\n")).collect();
    let run = kombu_with_stdin(
        &[
            "--url",
            url,
            "publish",
            "--declare-queue",
            "q",
            "--lines",
            "--batch",
            "100",
        ],
        lines.as_bytes(),
    );
    run.success();
    assert!(run.stdout.starts_with("published 250 messages"), "{}", run.stdout);
    let copies = kombu(&[
        "--url",
        url,
        "publish",
        "--routing-key",
        "q",
        "--count",
        "230",
        "--batch",
        "100",
        "{\"n\": 0}",
    ]);
    copies.success();
    assert!(
        copies.stdout.starts_with("published 230 messages"),
        "{}",
        copies.stdout
    );
    assert_eq!(count(url, "q"), 480);

    let consumed = kombu(&["--url", url, "consume", "q", "--count", "480", "--json"]);
    consumed.success();
    let numbers: Vec<u64> = consumed
        .json_lines()
        .iter()
        .map(|m| {
            let body: Value = serde_json::from_str(m["body"].as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{e}: {m}"));
            body["n"].as_u64().unwrap_or_else(|| panic!("{m}"))
        })
        .collect();
    let expected: Vec<u64> = (1..=250).chain(std::iter::repeat_n(0, 230)).collect();
    assert_eq!(numbers, expected, "lines in order, then the copies");
}

#[test]
fn a_bad_line_stops_publish_lines_after_the_lines_before_it_are_sent() {
    let url = &sqlite_url("bad-line");
    let run = kombu_with_stdin(
        &["--url", url, "publish", "--declare-queue", "q", "--lines"],
        b"{\"n\": 1}\n{\"n\": 2}\n\xff\xfe\n{\"n\": 3}\n",
    );
    run.error_line(1, "the 2 message(s) before that line were published");
    assert_eq!(count(url, "q"), 2, "the lines before the bad one are not lost");
}

#[test]
fn a_message_that_cannot_be_read_is_parked_and_consuming_goes_on() {
    let url = &sqlite_url("consume-poison");
    // Says it is gzip-compressed, but is not: no consumer can read it.
    kombu(&[
        "--url",
        url,
        "publish",
        "--declare-queue",
        "q",
        "-H",
        "compression=application/x-gzip",
        "1",
    ])
    .success();
    kombu(&["--url", url, "publish", "--declare-queue", "q", "2"]).success();
    let run = kombu(&["--url", url, "consume", "q", "--timeout", "0.5", "--json"]);
    run.success();
    let printed: Vec<Value> = run.json_lines().iter().map(|m| m["body"].clone()).collect();
    assert_eq!(printed, [json!("2")], "the readable message is printed: {run:#?}");
    assert!(
        run.stderr
            .contains("kombu: warning: a message that cannot be read was parked in q.poison"),
        "{run:#?}"
    );
    assert_eq!((count(url, "q"), count(url, "q.poison")), (0, 1));
}

#[test]
fn celery_send_writes_a_celery_task_and_refuses_bad_arguments() {
    let url = common::sqlite_url("celery-send");
    let sent = kombu(&[
        "--url",
        &url,
        "celery",
        "send",
        "tasks.add",
        "--args",
        "[2, 3]",
        "--kwargs",
        "{\"round\": true}",
        "--queue",
        "jobs",
        "--priority",
        "3",
        "--countdown",
        "60",
    ]);
    sent.success();
    let id = sent.stdout.trim();
    assert_eq!(id.len(), 36, "a uuid: {id:?}");

    let got = kombu(&["--url", &url, "consume", "jobs", "--count", "1", "--json"]);
    got.success();
    let message = &got.json_lines()[0];
    assert_eq!(message["headers"]["task"], "tasks.add", "{message}");
    assert_eq!(message["headers"]["id"], id);
    assert_eq!(message["headers"]["lang"], "py");
    assert!(
        message["headers"]["eta"].is_string(),
        "countdown sets eta: {message}"
    );
    let body: Value =
        serde_json::from_str(message["body"].as_str().expect("a JSON text body")).expect("json");
    assert_eq!(body[0], json!([2, 3]));
    assert_eq!(body[1], json!({"round": true}));
    assert_eq!(message["properties"]["priority"], 3);

    kombu(&["--url", &url, "celery", "send", "t", "--args", "{\"x\": 1}"])
        .error_line(1, "--args must be a JSON array");
    kombu(&["--url", &url, "celery", "send", "t", "--kwargs", "[1]"])
        .error_line(1, "--kwargs must be a JSON object");
    kombu(&["--url", &url, "celery", "send", "t", "--args", "[1,"]).error_line(1, "--args is not JSON");
    kombu(&["--url", &url, "celery", "result", id, "--backend", "rpc://"])
        .error_line(1, "use `kombu celery send --wait`");
}

#[test]
fn celery_send_wait_prints_the_result_a_worker_sent_back_by_rpc() {
    use kombu_celery::{celery_queue, RpcBackend, TaskError, TaskRegistry};

    let url = common::sqlite_url("celery-wait");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let conn = kombu::Connection::new(&url).expect("connection");
    let worker = TaskRegistry::new()
        .backend(RpcBackend::new(&conn))
        .task("rust.mul", |(x, y): (i64, i64), _: Value| async move {
            Ok::<_, TaskError>(x * y)
        })
        .task("rust.fail", |(): (), _: Value| async move {
            Err::<i64, _>(TaskError::builtin("ValueError", "failed on purpose"))
        })
        .into_worker(&conn, [celery_queue("celery")]);
    let handle = worker.handle();
    let running = runtime.spawn(worker.run());

    let done = kombu(&[
        "--url",
        &url,
        "celery",
        "send",
        "rust.mul",
        "--args",
        "[6, 7]",
        "--wait",
        "--timeout",
        "30",
    ]);
    done.success();
    let line = done.json();
    assert_eq!(
        (&line["state"], &line["result"]),
        (&json!("SUCCESS"), &json!(42)),
        "{line}"
    );

    let failed = kombu(&["--url", &url, "celery", "send", "rust.fail", "--wait"]);
    assert_eq!(failed.code, Some(1), "{failed:#?}");
    let line: Value = serde_json::from_str(failed.stdout.trim()).expect("a JSON line");
    assert_eq!(line["state"], "FAILURE");
    assert_eq!(line["result"]["exc_type"], "ValueError", "{line}");
    assert!(failed.stderr.contains("ended \"FAILURE\""), "{failed:#?}");

    // Nobody serves this one: exit 3 once --timeout passes.
    let waited = kombu(&[
        "--url",
        &url,
        "celery",
        "send",
        "nobody.serves",
        "--queue",
        "idle",
        "--wait",
        "--timeout",
        "0.5",
    ]);
    waited.error_line(3, "did not finish within");

    handle.shutdown();
    runtime
        .block_on(running)
        .expect("the worker task")
        .expect("the worker");
}

#[test]
fn celery_result_reads_a_result_from_the_redis_backend() {
    use kombu_celery::{celery_queue, RedisBackend, TaskError, TaskRegistry};

    // A throwaway redis-server (the test matrix installs it) for the result backend.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (cargo xtask test-matrix installs it)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let backend_url = format!("redis://127.0.0.1:{port}/1");

    let url = common::sqlite_url("celery-result");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let conn = kombu::Connection::new(&url).expect("connection");
    let backend = runtime
        .block_on(RedisBackend::connect(&backend_url))
        .expect("backend");
    let worker = TaskRegistry::new()
        .backend(backend)
        .task("rust.mul", |(x, y): (i64, i64), _: Value| async move {
            Ok::<_, TaskError>(x * y)
        })
        .into_worker(&conn, [celery_queue("celery")]);
    let handle = worker.handle();
    let running = runtime.spawn(worker.run());

    let sent = kombu(&["--url", &url, "celery", "send", "rust.mul", "--args", "[2, 5]"]);
    sent.success();
    let id = sent.stdout.trim().to_owned();
    let got = kombu(&["celery", "result", &id, "--backend", &backend_url]);
    got.success();
    let line = got.json();
    assert_eq!(
        (&line["id"], &line["state"], &line["result"]),
        (&json!(id), &json!("SUCCESS"), &json!(10)),
        "{line}"
    );
    // An id nobody ran: exit 3 after --timeout.
    kombu(&[
        "celery",
        "result",
        "no-such-id",
        "--backend",
        &backend_url,
        "--timeout",
        "0.3",
    ])
    .error_line(3, "did not finish within");

    handle.shutdown();
    runtime
        .block_on(running)
        .expect("the worker task")
        .expect("the worker");
    let _ = redis.kill();
    let _ = redis.wait();
}
