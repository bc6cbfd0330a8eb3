//! The Rust side of the interop scenarios with Python Kombu 5.7
//! (`tests/python/interop_scenarios.py`), shared by every cross-process transport's `interop`
//! test: Python publishes and kombu-rs consumes, kombu-rs publishes and Python consumes,
//! reject/requeue across languages, fanout from Python to Rust.
//!
//! These are test helpers: they panic with a readable message on the first mismatch.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test helpers fail loudly")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kombu::{Connection, Exchange, ExchangeType, Message, PublishOptions, Queue};
use serde_json::{json, Value};

/// How the broker orders priorities, which decides how the `prio` scenario is declared and
/// what order it must come out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// Kombu's Redis transport: priorities 0, 5, 9 served lower first, no queue argument.
    Redis,
    /// AMQP: the `prio` queue has `x-max-priority` 10 (as the Python script declares it on
    /// `amqp://`) and higher priorities are served first.
    Amqp,
    /// Kombu's SQS transport: no priorities, so the `prio` scenario arrives in publish order
    /// (9, 0, 5) from a queue that keeps it (moto's standard queues do).
    Sqs,
    /// Kombu's ZooKeeper transport: priorities served higher first (the node names sort
    /// `9 - priority`), no queue argument.
    Zookeeper,
    /// Kombu's MongoDB transport: priorities served higher first (documents store
    /// `9 - priority`, sorted ascending), no queue argument.
    Mongodb,
}

impl Broker {
    /// The `p` values of the `prio` scenario in the order they must arrive.
    pub fn priority_order(self) -> Vec<i64> {
        match self {
            Broker::Redis => vec![0, 5, 9],
            Broker::Amqp | Broker::Zookeeper | Broker::Mongodb => vec![9, 5, 0],
            Broker::Sqs => vec![9, 0, 5],
        }
    }

    fn max_priority(self) -> Option<u8> {
        match self {
            Broker::Redis | Broker::Sqs | Broker::Zookeeper | Broker::Mongodb => None,
            Broker::Amqp => Some(10),
        }
    }
}

/// The workspace root (where `tests/python` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python with Kombu: `KOMBU_PYTHON`, else the project venv; a clear failure otherwise.
pub fn python() -> PathBuf {
    let python = std::env::var_os("KOMBU_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "no Python with Kombu at {} (run `cargo xtask test-matrix`, which creates the \
         project venv from tests/python/requirements.txt) or set KOMBU_PYTHON",
        python.display()
    );
    python
}

/// Run `tests/python/<script>` with `args`; returns stdout, panicking with stderr on failure.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let output = Command::new(python())
        .arg(workspace_root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "python {script} {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One JSON value per line of a script's stdout.
pub fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// The scenario queues as the Python script declares them: (scenario, queue, messages).
pub fn scenario_queues(prefix: &str, broker: Broker) -> Vec<(&'static str, Queue, usize)> {
    let mut prio = Queue::new(format!("{prefix}.q.prio"));
    if let Some(max) = broker.max_priority() {
        prio = prio.max_priority(max);
    }
    vec![
        (
            "direct",
            Queue::new(format!("{prefix}.q.direct"))
                .exchange(Exchange::direct(format!("{prefix}.direct")))
                .routing_key("d"),
            1,
        ),
        (
            "topic",
            Queue::new(format!("{prefix}.q.topic"))
                .exchange(Exchange::topic(format!("{prefix}.topic")))
                .routing_key("a.*.c"),
            1,
        ),
        ("ser", Queue::new(format!("{prefix}.q.ser")), 4),
        ("comp", Queue::new(format!("{prefix}.q.comp")), 3),
        ("prio", prio, 3),
        ("celery", Queue::new(format!("{prefix}.celery")), 1),
    ]
}

/// Consume and ack `count` messages of `queue`.
pub async fn take(conn: &Connection, queue: Queue, count: usize) -> Vec<Message> {
    let mut consumer = conn
        .consumer([queue])
        .accept(["json", "msgpack", "yaml", "application/data", "text/plain"])
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");
    let mut got = Vec::new();
    while got.len() < count {
        let m = consumer
            .recv_timeout(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("after {} of {count}: {e}", got.len()));
        m.ack().await.expect("ack");
        got.push(m);
    }
    consumer.close().await.expect("close");
    got
}

/// Python Kombu publishes every scenario (prefix `py2rs`); kombu-rs consumes and checks them.
pub async fn python_scenarios_consumed_by_rust(url: &str, broker: Broker) {
    python_scenarios_consumed_by_rust_at(url, url, broker).await;
}

/// [`python_scenarios_consumed_by_rust`] where Python Kombu and kombu-rs need different URLs
/// for the same broker (Kombu's SQS transport takes no options in its URL; kombu-rs's does).
pub async fn python_scenarios_consumed_by_rust_at(python_url: &str, url: &str, broker: Broker) {
    let prefix = "py2rs";
    run_python("interop_scenarios.py", &["publish", python_url, prefix]);
    let conn = Connection::new(url).expect("connection");
    let mut by_scenario = std::collections::HashMap::new();
    for (name, queue, count) in scenario_queues(prefix, broker) {
        by_scenario.insert(name, take(&conn, queue, count).await);
    }
    // direct: Kombu's datetime tag, headers, properties.
    let m = &by_scenario["direct"][0];
    let body: Value = m.decode().expect("json");
    assert_eq!(body["kind"], "direct");
    assert_eq!(
        body["when"], "2026-11-26T12:30:45.123456",
        "Kombu's datetime tag decodes to its ISO text"
    );
    assert_eq!(
        m.headers().get("x-origin").and_then(|v| v.as_str()),
        Some("python")
    );
    assert_eq!(m.headers().get("n").and_then(|v| v.as_i64()), Some(1));
    assert_eq!(m.properties().correlation_id.as_deref(), Some("cid-1"));
    assert_eq!(m.properties().message_id.as_deref(), Some("mid-1"));
    assert_eq!(m.properties().reply_to.as_deref(), Some("py2rs.reply"));
    assert_eq!(m.delivery_info().exchange(), "py2rs.direct");
    assert_eq!(m.delivery_info().routing_key(), "d");
    // topic: only a.b.c was routed.
    let body: Value = by_scenario["topic"][0].decode().expect("json");
    assert_eq!(body, json!({"kind": "topic", "n": 1}));
    // serializers.
    let ser = &by_scenario["ser"];
    assert_eq!(ser[0].content_type(), Some("application/x-msgpack"));
    assert_eq!(
        ser[0].decode::<Value>().expect("msgpack"),
        json!({"kind": "msgpack", "v": [1, 2]})
    );
    assert_eq!(ser[1].content_type(), Some("application/x-yaml"));
    assert_eq!(
        ser[1].decode::<Value>().expect("yaml"),
        json!({"kind": "yaml", "v": "y"})
    );
    assert_eq!(ser[2].content_type(), Some("application/data"));
    assert_eq!(&ser[2].payload().expect("raw")[..], b"\x00\x01raw");
    assert_eq!(ser[3].content_type(), Some("text/plain"));
    assert_eq!(
        &ser[3].payload().expect("text")[..],
        "plain text \u{2713}".as_bytes()
    );
    // compression.
    let methods: Vec<Value> = by_scenario["comp"]
        .iter()
        .map(|m| m.decode::<Value>().expect("decompressed")["method"].clone())
        .collect();
    assert_eq!(methods, vec![json!("zlib"), json!("bzip2"), json!("lzma")]);
    // priorities, in the broker's order.
    let order: Vec<i64> = by_scenario["prio"]
        .iter()
        .map(|m| m.decode::<Value>().expect("json")["p"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(order, broker.priority_order(), "{broker:?} priority order");
    // Celery protocol 2.
    let task = &by_scenario["celery"][0];
    assert_eq!(
        task.headers().get("task").and_then(|v| v.as_str()),
        Some("proj.tasks.add")
    );
    assert_eq!(task.delivery_info().exchange(), "");
    assert_eq!(task.delivery_info().routing_key(), "py2rs.celery");
    let body: Value = task.decode().expect("json");
    assert_eq!(body[0], json!([2, 3]));
    conn.close().await.expect("close");
}

/// kombu-rs publishes every scenario (prefix `rs2py`); Python Kombu consumes them and kombu-rs
/// checks what it saw.
pub async fn rust_scenarios_consumed_by_python(url: &str, broker: Broker) {
    rust_scenarios_consumed_by_python_at(url, url, broker).await;
}

/// [`rust_scenarios_consumed_by_python`] with a URL of its own for Python Kombu (see
/// [`python_scenarios_consumed_by_rust_at`]).
pub async fn rust_scenarios_consumed_by_python_at(python_url: &str, url: &str, broker: Broker) {
    let prefix = "rs2py";
    let conn = Connection::new(url).expect("connection");
    let channel = conn.default_channel().await.expect("channel");
    let queues = scenario_queues(prefix, broker);
    for (_, q, _) in &queues {
        conn.maybe_declare(&q.clone().into(), channel.as_ref())
            .await
            .expect("declare");
    }
    let producer = conn.producer();
    let direct = Exchange::direct(format!("{prefix}.direct"));
    producer
        .publish(
            &json!({"kind": "direct", "when": {"__type__": "datetime", "__value__": "2026-11-26T12:30:45.123456"}}),
            PublishOptions::new()
                .exchange(direct)
                .routing_key("d")
                .header("x-origin", "rust")
                .correlation_id("cid-1")
                .reply_to(format!("{prefix}.reply"))
                .message_id("mid-1"),
        )
        .await
        .expect("publish");
    let topic = Exchange::topic(format!("{prefix}.topic"));
    for (n, key) in [(1, "a.b.c"), (2, "a.b.b.c"), (3, "x.y")] {
        producer
            .publish(
                &json!({"kind": "topic", "n": n}),
                PublishOptions::new().exchange(topic.clone()).routing_key(key),
            )
            .await
            .expect("publish");
    }
    let ser = format!("{prefix}.q.ser");
    producer
        .publish(
            &json!({"kind": "msgpack", "v": [1, 2]}),
            PublishOptions::new()
                .routing_key(ser.as_str())
                .serializer("msgpack"),
        )
        .await
        .expect("msgpack");
    producer
        .publish(
            &json!({"kind": "yaml", "v": "y"}),
            PublishOptions::new().routing_key(ser.as_str()).serializer("yaml"),
        )
        .await
        .expect("yaml");
    producer
        .publish_bytes(
            &b"\x00\x01raw"[..],
            PublishOptions::new().routing_key(ser.as_str()),
        )
        .await
        .expect("raw");
    producer
        .publish_text(
            "plain text \u{2713}",
            PublishOptions::new().routing_key(ser.as_str()),
        )
        .await
        .expect("text");
    for method in ["zlib", "bzip2", "lzma"] {
        producer
            .publish(
                &json!({"kind": "comp", "method": method}),
                PublishOptions::new()
                    .routing_key(format!("{prefix}.q.comp"))
                    .compression(method),
            )
            .await
            .expect("compressed");
    }
    for p in [9u8, 0, 5] {
        producer
            .publish(
                &json!({"kind": "prio", "p": p}),
                PublishOptions::new()
                    .routing_key(format!("{prefix}.q.prio"))
                    .priority(p),
            )
            .await
            .expect("prio");
    }
    let task_id = "5f8b3c1e-0000-4000-8000-000000000001";
    producer
        .publish(
            &json!([[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]),
            PublishOptions::new()
                .exchange(Exchange::default_exchange())
                .routing_key(format!("{prefix}.celery"))
                .header("lang", "py")
                .header("task", "proj.tasks.add")
                .header("id", task_id)
                .header("root_id", task_id)
                .header("retries", 0i64)
                .header("argsrepr", "(2, 3)")
                .header("kwargsrepr", "{}")
                .correlation_id(task_id)
                .reply_to(""),
        )
        .await
        .expect("celery task");
    conn.close().await.expect("close");

    let got = json_lines(&run_python(
        "interop_scenarios.py",
        &["consume", python_url, prefix],
    ));
    let of = |s: &str| -> Vec<&Value> { got.iter().filter(|l| l["scenario"] == s).collect() };
    let d = of("direct")[0];
    assert_eq!(d["body"]["kind"], "direct");
    assert_eq!(
        d["body"]["when"], "2026-11-26T12:30:45.123456",
        "Python decoded the datetime tag"
    );
    assert_eq!(d["headers"]["x-origin"], "rust");
    assert_eq!(d["correlation_id"], "cid-1");
    assert_eq!(d["message_id"], "mid-1");
    assert_eq!(d["reply_to"], "rs2py.reply");
    assert_eq!(d["delivery_info"]["exchange"], "rs2py.direct");
    assert_eq!(of("topic")[0]["body"], json!({"kind": "topic", "n": 1}));
    let ser = of("ser");
    assert_eq!(ser[0]["body"], json!({"kind": "msgpack", "v": [1, 2]}));
    assert_eq!(ser[1]["body"], json!({"kind": "yaml", "v": "y"}));
    assert_eq!(ser[2]["body"], json!({"__bytes__": [0, 1, 114, 97, 119]}));
    assert_eq!(ser[3]["body"], "plain text \u{2713}");
    let methods: Vec<&Value> = of("comp").iter().map(|l| &l["body"]["method"]).collect();
    assert_eq!(methods, vec!["zlib", "bzip2", "lzma"]);
    let prio: Vec<i64> = of("prio")
        .iter()
        .map(|l| l["body"]["p"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        prio,
        broker.priority_order(),
        "Python serves Rust's priorities in the {broker:?} order"
    );
    let task = of("celery")[0];
    assert_eq!(task["headers"]["task"], "proj.tasks.add");
    assert_eq!(task["headers"]["retries"], 0);
    assert_eq!(task["delivery_info"]["routing_key"], "rs2py.celery");
    assert_eq!(task["body"][0], json!([2, 3]));
    assert_eq!(task["correlation_id"], task_id);
}

/// Python takes a message kombu-rs published and requeues it; kombu-rs gets it redelivered.
pub async fn python_reject_requeue_then_rust_gets_it_redelivered(url: &str) {
    let conn = Connection::new(url).expect("connection");
    conn.producer()
        .publish(
            &json!({"n": 7}),
            PublishOptions::new().routing_key("rq").declare(Queue::new("rq")),
        )
        .await
        .expect("publish");
    let out = json_lines(&run_python(
        "interop_scenarios.py",
        &["reject-requeue", url, "rq"],
    ));
    assert_eq!(out[0]["rejected"], json!({"n": 7}));
    let got = take(&conn, Queue::new("rq"), 1).await;
    assert_eq!(got[0].decode::<Value>().expect("json"), json!({"n": 7}));
    assert!(got[0].redelivered(), "Kombu's requeue marks it redelivered");
    conn.close().await.expect("close");
}

/// Python publishes to a fanout exchange; two kombu-rs subscribers (on two connections) get
/// every message.
pub async fn python_fanout_reaches_rust_subscribers(url: &str) {
    let conn = Connection::new(url).expect("connection");
    let exchange = Exchange::new("fan", ExchangeType::Fanout);
    let mut a = conn
        .consumer([Queue::new("fan.a").exchange(exchange.clone())])
        .build()
        .await
        .expect("consumer");
    a.consume().await.expect("consume");
    let b_conn = Connection::new(url).expect("connection");
    let mut b = b_conn
        .consumer([Queue::new("fan.b").exchange(exchange.clone())])
        .build()
        .await
        .expect("consumer");
    b.consume().await.expect("consume");
    run_python("interop_scenarios.py", &["fanout-publish", url, "fan", "3"]);
    for consumer in [&mut a, &mut b] {
        for n in 0..3 {
            let m = consumer
                .recv_timeout(Duration::from_secs(10))
                .await
                .expect("fanout message");
            assert_eq!(
                m.decode::<Value>().expect("json"),
                json!({"kind": "fanout", "n": n})
            );
            m.ack().await.expect("ack");
        }
    }
    a.close().await.expect("close");
    b.close().await.expect("close");
}

/// A Python Kombu consumer and a kombu-rs consumer compete for one queue while kombu-rs
/// publishes `messages` messages to it, paced so both get some: every message is consumed
/// by one side or the other (nothing is lost in a mixed fleet), and each side gets at least
/// one (the positive control that they did compete). A message may reach both sides: Python
/// Kombu ignores kombu-rs's claims, so a mixed fleet is at-least-once; the split is printed.
pub async fn competing_with_a_python_consumer(url: &str, python_url: &str, messages: u64) {
    use std::collections::BTreeSet;
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;

    let name = format!("compete-{}", uuid::Uuid::new_v4().simple());
    let queue = Queue::new(name.clone());
    let conn = Connection::new(url).expect("connection");
    // The queue exists before either consumer starts.
    conn.channel()
        .await
        .expect("channel")
        .declare_queue(&queue, Default::default())
        .await
        .expect("declare");

    let mut child = Command::new(python())
        .arg(workspace_root().join("tests/python/interop_kombu.py"))
        .args(["drain", python_url, &name, "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = lines_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the Python consumer said it is ready");
    assert!(ready.contains("ready"), "{ready}");

    // One message at a time, with a little work each: a kombu-rs consumer that claims the
    // moment a message is stored (MongoDB's awaitData cursor, ZooKeeper's watch) would
    // otherwise take every message before a polling Python consumer looks, and the two
    // would not compete.
    let mut consumer = conn
        .consumer([queue.clone()])
        .prefetch_count(1)
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");

    // Publish in small batches with pauses, while both consume.
    let publisher = tokio::spawn({
        let conn = conn.clone();
        let name = name.clone();
        async move {
            let producer = conn.producer();
            for first in (0..messages).step_by(10) {
                let mut batch = producer.batch();
                for n in first..(first + 10).min(messages) {
                    batch.add(
                        &json!({ "n": n }),
                        PublishOptions::new().routing_key(name.clone()),
                    );
                }
                batch.send().await.into_result().expect("publish");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    let mut rust = BTreeSet::new();
    let mut idle_since = std::time::Instant::now();
    // Until the publisher is done and the queue stayed quiet for 3 s here too.
    while !publisher.is_finished() || idle_since.elapsed() < Duration::from_secs(3) {
        match consumer.recv_timeout(Duration::from_millis(200)).await {
            Ok(m) => {
                let body: Value = m.decode().expect("json");
                rust.insert(body["n"].as_u64().expect("n"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                m.ack().await.expect("ack");
                idle_since = std::time::Instant::now();
            }
            Err(e) if e.kind() == kombu::ErrorKind::Timeout => {}
            Err(e) => panic!("the kombu-rs consumer failed: {e}"),
        }
    }
    publisher.await.expect("publisher");
    consumer.close().await.expect("close");

    let status = child.wait().expect("python exits");
    assert!(status.success(), "the Python consumer failed: {status}");
    reader.join().expect("reader");
    let mut python_took = BTreeSet::new();
    for line in lines_rx.try_iter() {
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
        python_took.insert(value["body"]["n"].as_u64().expect("n"));
    }
    let all: BTreeSet<u64> = rust.union(&python_took).copied().collect();
    let lost: Vec<u64> = (0..messages).filter(|n| !all.contains(n)).collect();
    assert!(lost.is_empty(), "consumed by neither side: {lost:?}");
    assert!(
        !rust.is_empty(),
        "kombu-rs took no message (no competition happened)"
    );
    assert!(
        !python_took.is_empty(),
        "Python Kombu took no message (no competition happened)"
    );
    let both = rust.intersection(&python_took).count();
    eprintln!(
        "competing consumers: {messages} messages; kombu-rs took {}, Python Kombu took {}, both took {both}",
        rust.len(),
        python_took.len()
    );
    let channel = conn.channel().await.expect("channel");
    let _ = channel.delete_queue(&name, Default::default()).await;
    conn.close().await.expect("close");
}
