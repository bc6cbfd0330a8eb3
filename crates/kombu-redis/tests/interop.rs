//! kombu-rs ⇄ Python Kombu 5.7 on one throwaway redis-server: the scripted scenarios of
//! `tests/python/interop_scenarios.py` in both directions, reject/requeue across languages,
//! fanout, and a consumer killed with SIGKILL holding 100 messages (restored by Python and
//! by Rust). Needs the project venv (`cargo xtask test-matrix` creates it) or `KOMBU_PYTHON`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{run_python, RedisServer};
use kombu::{Connection, Exchange, ExchangeType, PublishOptions, Queue};
use serde_json::{json, Value};

fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

fn scenario_queues(prefix: &str) -> Vec<(&'static str, Queue, usize)> {
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
        ("prio", Queue::new(format!("{prefix}.q.prio")), 3),
        ("celery", Queue::new(format!("{prefix}.celery")), 1),
    ]
}

async fn take(conn: &Connection, queue: Queue, count: usize) -> Vec<kombu::Message> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_scenarios_consumed_by_rust() {
    let server = RedisServer::start();
    let url = server.url();
    let prefix = "py2rs";
    run_python("interop_scenarios.py", &["publish", &url, prefix]);
    let conn = Connection::new(&url).expect("connection");
    let mut by_scenario = std::collections::HashMap::new();
    for (name, queue, count) in scenario_queues(prefix) {
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
    assert_eq!(m.properties().correlation_id.as_deref(), Some("cid-1"));
    assert_eq!(m.properties().message_id.as_deref(), Some("mid-1"));
    assert_eq!(m.properties().reply_to.as_deref(), Some("py2rs.reply"));
    assert_eq!(m.delivery_info().exchange, "py2rs.direct");
    // topic: only a.b.c was routed (Kombu's regex member, read by kombu-rs).
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
    // priorities: Kombu's Redis order, lower first.
    let order: Vec<i64> = by_scenario["prio"]
        .iter()
        .map(|m| m.decode::<Value>().expect("json")["p"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(order, vec![0, 5, 9]);
    // Celery protocol 2.
    let task = &by_scenario["celery"][0];
    assert_eq!(
        task.headers().get("task").and_then(|v| v.as_str()),
        Some("proj.tasks.add")
    );
    assert_eq!(task.delivery_info().exchange, "");
    assert_eq!(task.delivery_info().routing_key, "py2rs.celery");
    let body: Value = task.decode().expect("json");
    assert_eq!(body[0], json!([2, 3]));
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_scenarios_consumed_by_python() {
    let server = RedisServer::start();
    let url = server.url();
    let prefix = "rs2py";
    let conn = Connection::new(&url).expect("connection");
    let channel = conn.default_channel().await.expect("channel");
    let queues = scenario_queues(prefix);
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
            PublishOptions::new().routing_key(&ser).serializer("msgpack"),
        )
        .await
        .expect("msgpack");
    producer
        .publish(
            &json!({"kind": "yaml", "v": "y"}),
            PublishOptions::new().routing_key(&ser).serializer("yaml"),
        )
        .await
        .expect("yaml");
    producer
        .publish_bytes(&b"\x00\x01raw"[..], PublishOptions::new().routing_key(&ser))
        .await
        .expect("raw");
    producer
        .publish_text("plain text \u{2713}", PublishOptions::new().routing_key(&ser))
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

    let got = lines(&run_python("interop_scenarios.py", &["consume", &url, prefix]));
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
    let prio: Vec<&Value> = of("prio").iter().map(|l| &l["body"]["p"]).collect();
    assert_eq!(
        prio,
        vec![0, 5, 9],
        "Python serves Rust's priorities in Kombu's Redis order"
    );
    let task = of("celery")[0];
    assert_eq!(task["headers"]["task"], "proj.tasks.add");
    assert_eq!(task["body"][0], json!([2, 3]));
    assert_eq!(task["correlation_id"], task_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reject_requeue_then_rust_gets_it_redelivered() {
    let server = RedisServer::start();
    let url = server.url();
    let conn = Connection::new(&url).expect("connection");
    conn.producer()
        .publish(
            &json!({"n": 7}),
            PublishOptions::new().routing_key("rq").declare(Queue::new("rq")),
        )
        .await
        .expect("publish");
    let out = lines(&run_python(
        "interop_scenarios.py",
        &["reject-requeue", &url, "rq"],
    ));
    assert_eq!(out[0]["rejected"], json!({"n": 7}));
    let got = take(&conn, Queue::new("rq"), 1).await;
    assert_eq!(got[0].decode::<Value>().expect("json"), json!({"n": 7}));
    assert!(got[0].redelivered(), "Kombu's requeue marks it redelivered");
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fanout_reaches_rust_subscribers() {
    let server = RedisServer::start();
    let url = server.url();
    let conn = Connection::new(&url).expect("connection");
    let exchange = Exchange::new("fan", ExchangeType::Fanout);
    let mut a = conn
        .consumer([Queue::new("fan.a").exchange(exchange.clone())])
        .build()
        .await
        .expect("consumer");
    a.consume().await.expect("consume");
    let b_conn = Connection::new(&url).expect("connection");
    let mut b = b_conn
        .consumer([Queue::new("fan.b").exchange(exchange.clone())])
        .build()
        .await
        .expect("consumer");
    b.consume().await.expect("consume");
    run_python("interop_scenarios.py", &["fanout-publish", &url, "fan", "3"]);
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

/// The child side of the SIGKILL tests: take 100 messages without acking, say so, wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_holds_messages() {
    let Ok(url) = std::env::var("KOMBU_REDIS_CRASH_CHILD_URL") else {
        return; // Only runs as the child of `sigkill_with_100_in_flight_loses_nothing`.
    };
    let conn = Connection::new(&url).expect("connection");
    let mut consumer = conn
        .consumer([Queue::new("crash")])
        .prefetch_count(100)
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");
    let mut held = Vec::new();
    while held.len() < 100 {
        held.push(
            consumer
                .recv_timeout(Duration::from_secs(30))
                .await
                .expect("message"),
        );
    }
    println!("holding {}", held.len());
    tokio::time::sleep(Duration::from_secs(600)).await;
}

fn crash_a_consumer_holding_100(url: &str) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["crash_child_holds_messages", "--exact", "--nocapture"])
        .env("KOMBU_REDIS_CRASH_CHILD_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        if line.expect("line").contains("holding 100") {
            ready = true;
            break;
        }
    }
    assert!(ready, "the child never held 100 messages");
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

async fn publish_numbers(url: &str, queue: &str, count: usize) {
    let conn = Connection::new(url).expect("connection");
    let producer = conn.producer();
    for n in 0..count {
        producer
            .publish(
                &json!({"n": n}),
                PublishOptions::new()
                    .routing_key(queue)
                    .declare(Queue::new(queue)),
            )
            .await
            .expect("publish");
    }
    conn.close().await.expect("close");
}

async fn unacked_count(url: &str) -> usize {
    let client = redis::Client::open(url).expect("client");
    let mut c = client.get_multiplexed_async_connection().await.expect("redis");
    redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut c)
        .await
        .expect("HLEN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_100_in_flight_loses_nothing_python_restores() {
    let server = RedisServer::start();
    let url = server.url();
    publish_numbers(&url, "crash", 100).await;
    crash_a_consumer_holding_100(&url);
    assert_eq!(
        unacked_count(&url).await,
        100,
        "the dead consumer's claims are in Kombu's unacked hash"
    );
    // Python Kombu restores them after its visibility timeout and consumes them.
    let got = lines(&run_python(
        "interop_scenarios.py",
        &["drain", &url, "crash", "100", "1"],
    ));
    let mut ns: Vec<i64> = got
        .iter()
        .map(|l| l["body"]["n"].as_i64().unwrap_or(-1))
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..100).collect::<Vec<i64>>());
    assert!(got.iter().all(|l| l["redelivered"] == true));
    assert_eq!(unacked_count(&url).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_100_in_flight_loses_nothing_rust_restores() {
    let server = RedisServer::start();
    let url = server.url();
    publish_numbers(&url, "crash", 100).await;
    crash_a_consumer_holding_100(&url);
    let restorer = format!("{url}?visibility_timeout=1&unacked_restore_interval=0.2");
    let conn = Connection::new(&restorer).expect("connection");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let got = take(&conn, Queue::new("crash"), 100).await;
    let mut ns: Vec<i64> = got
        .iter()
        .map(|m| m.decode::<Value>().expect("json")["n"].as_i64().unwrap_or(-1))
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..100).collect::<Vec<i64>>());
    assert!(got.iter().all(|m| m.redelivered()));
    conn.close().await.expect("close");
    assert_eq!(unacked_count(&url).await, 0);
}
