//! kombu-rs ⇄ Python Kombu 5.7's SQS transport on one throwaway moto server: the scripted
//! scenarios of `tests/python/interop_scenarios.py` in both directions, then the SQS-specific
//! ones of `tests/python/interop_sqs.py` (raw JSON bodies, FIFO group order, predefined
//! queues, delayed delivery, message attributes). Needs the project venv (`cargo xtask
//! test-matrix` creates it) or `KOMBU_PYTHON`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::Moto;
use kombu::{Connection, PublishOptions, Queue, Value as KValue};
use kombu_testkit::interop::{self, json_lines, run_python, take, Broker};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_scenarios_consumed_by_rust() {
    let moto = Moto::start();
    interop::python_scenarios_consumed_by_rust_at(&moto.kombu_url(), &moto.url(), Broker::Sqs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_scenarios_consumed_by_python() {
    let moto = Moto::start();
    interop::rust_scenarios_consumed_by_python_at(&moto.kombu_url(), &moto.url(), Broker::Sqs).await;
}

/// `url` with the transport option `key` set to `value` as JSON (percent-encoded).
fn with_json_option(url: &str, key: &str, value: &Value) -> String {
    let encoded: String = value
        .to_string()
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{url}&{key}={encoded}")
}

fn predefined(url: &str, name: &str, queue_url: &str) -> String {
    with_json_option(url, "predefined_queues", &json!({ name: { "url": queue_url } }))
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Python publishes raw-JSON bodies, FIFO groups, a delayed message, message attributes and
/// to a predefined queue; kombu-rs consumes every one as Python sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sqs_features_consumed_by_rust() {
    let moto = Moto::start();
    let prefix = "pysqs";
    let published = json_lines(&run_python(
        "interop_sqs.py",
        &["publish", &moto.kombu_url(), prefix],
    ));
    let pre_url = published[0]["predefined_url"].as_str().expect("url").to_owned();
    let fetch = json!({"MessageAttributeNames": ["color"]});
    let conn = Connection::new(&with_json_option(&moto.url(), "fetch_message_attributes", &fetch))
        .expect("connection");
    // Raw JSON body (sqs_base64_encoding=False on the Python side).
    let raw = take(&conn, Queue::new(format!("{prefix}-raw")), 1).await;
    assert_eq!(raw[0].decode::<Value>().expect("json"), json!({"kind": "raw"}));
    // FIFO: each group in order.
    let fifo = take(&conn, Queue::new(format!("{prefix}-group.fifo")), 5).await;
    let bodies: Vec<Value> = fifo.iter().map(|m| m.decode::<Value>().expect("json")).collect();
    for group in ["g1", "g2"] {
        let ns: Vec<i64> = bodies
            .iter()
            .filter(|b| b["group"] == group)
            .map(|b| b["n"].as_i64().unwrap_or(-1))
            .collect();
        let expected: Vec<i64> = if group == "g1" { vec![0, 1, 2] } else { vec![0, 1] };
        assert_eq!(ns, expected, "group {group} order");
    }
    assert_eq!(
        fifo[0]
            .properties()
            .extra
            .get("MessageGroupId")
            .and_then(KValue::as_str),
        Some("g1"),
        "Kombu keeps MessageGroupId in the properties"
    );
    // Delayed: not before its 2 s.
    let delayed = take(&conn, Queue::new(format!("{prefix}-delay")), 1).await;
    let body: Value = delayed[0].decode().expect("json");
    let waited = now() - body["published"].as_f64().expect("published");
    assert!(
        waited >= 1.5,
        "a DelaySeconds=2 message arrived after {waited:.2} s"
    );
    // Message attributes.
    let attrs = take(&conn, Queue::new(format!("{prefix}-attrs")), 1).await;
    let extra = &attrs[0].properties().extra;
    let color = extra
        .get("message_attributes")
        .and_then(|v| match v {
            KValue::Table(t) => t.get("color").cloned(),
            _ => None,
        })
        .and_then(|v| match v {
            KValue::Table(t) => t.get("StringValue").and_then(KValue::as_str).map(str::to_owned),
            _ => None,
        });
    assert_eq!(color.as_deref(), Some("blue"), "message attributes: {extra:?}");
    assert!(extra.contains_key("sqs_message") && extra.contains_key("sqs_queue"));
    conn.close().await.expect("close");
    // Predefined queue, by URL.
    let pre =
        Connection::new(&predefined(&moto.url(), &format!("{prefix}-pre"), &pre_url)).expect("connection");
    let got = take(&pre, Queue::new(format!("{prefix}-pre")), 1).await;
    assert_eq!(
        got[0].decode::<Value>().expect("json"),
        json!({"kind": "predefined"})
    );
    pre.close().await.expect("close");
}

/// kombu-rs publishes the same scenarios; Python Kombu consumes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sqs_features_consumed_by_python() {
    let moto = Moto::start();
    let prefix = "rssqs";
    let raw = Connection::new(&moto.url_with("sqs_base64_encoding=false")).expect("connection");
    raw.producer()
        .publish(
            &json!({"kind": "raw"}),
            PublishOptions::new()
                .routing_key(format!("{prefix}-raw"))
                .declare(Queue::new(format!("{prefix}-raw"))),
        )
        .await
        .expect("publish raw");
    raw.close().await.expect("close");
    let conn = Connection::new(&moto.url()).expect("connection");
    let producer = conn.producer();
    let fifo = Queue::new(format!("{prefix}-group.fifo"));
    for (group, n) in [("g1", 0), ("g2", 0), ("g1", 1), ("g2", 1), ("g1", 2)] {
        producer
            .publish(
                &json!({"kind": "fifo", "group": group, "n": n}),
                PublishOptions::new()
                    .routing_key(fifo.name.clone())
                    .declare(fifo.clone())
                    .property("MessageGroupId", group),
            )
            .await
            .expect("publish fifo");
    }
    let published_delay = now();
    producer
        .publish(
            &json!({"kind": "delay"}),
            PublishOptions::new()
                .routing_key(format!("{prefix}-delay"))
                .declare(Queue::new(format!("{prefix}-delay")))
                .property("DelaySeconds", 2i64),
        )
        .await
        .expect("publish delayed");
    let mut color = kombu::FieldTable::new();
    color.insert("DataType".into(), KValue::String("String".into()));
    color.insert("StringValue".into(), KValue::String("blue".into()));
    let mut attributes = kombu::FieldTable::new();
    attributes.insert("color".into(), KValue::Table(color));
    producer
        .publish(
            &json!({"kind": "attrs"}),
            PublishOptions::new()
                .routing_key(format!("{prefix}-attrs"))
                .declare(Queue::new(format!("{prefix}-attrs")))
                .property("message_attributes", KValue::Table(attributes)),
        )
        .await
        .expect("publish attrs");
    conn.close().await.expect("close");
    // The predefined queue: declared through a plain connection (moto's queue URL is
    // `http://host:port/<account>/<name>`), then used by URL only.
    let plain = Connection::new(&moto.url()).expect("connection");
    plain
        .default_channel()
        .await
        .expect("channel")
        .declare_queue(&Queue::new(format!("{prefix}-pre")), Default::default())
        .await
        .expect("declare");
    plain.close().await.expect("close");
    let pre_url = format!("http://127.0.0.1:{}/123456789012/{prefix}-pre", moto.port);
    let pre =
        Connection::new(&predefined(&moto.url(), &format!("{prefix}-pre"), &pre_url)).expect("connection");
    pre.producer()
        .publish(
            &json!({"kind": "predefined"}),
            PublishOptions::new().routing_key(format!("{prefix}-pre")),
        )
        .await
        .expect("publish to the predefined queue");
    pre.close().await.expect("close");

    let got = json_lines(&run_python(
        "interop_sqs.py",
        &["consume", &moto.kombu_url(), prefix],
    ));
    let of = |s: &str| -> Vec<&Value> { got.iter().filter(|l| l["scenario"] == s).collect() };
    assert_eq!(of("raw")[0]["body"], json!({"kind": "raw"}));
    for group in ["g1", "g2"] {
        let ns: Vec<i64> = of("fifo")
            .iter()
            .filter(|l| l["body"]["group"] == group)
            .map(|l| l["body"]["n"].as_i64().unwrap_or(-1))
            .collect();
        let expected: Vec<i64> = if group == "g1" { vec![0, 1, 2] } else { vec![0, 1] };
        assert_eq!(ns, expected, "group {group} order seen by Python");
    }
    let waited = of("delay")[0]["received"].as_f64().expect("received") - published_delay;
    assert!(
        waited >= 1.5,
        "Python got the DelaySeconds=2 message after {waited:.2} s"
    );
    assert_eq!(of("attrs")[0]["attributes"], json!({"color": "blue"}));
    assert_eq!(of("predefined")[0]["body"], json!({"kind": "predefined"}));
}

/// SNS fanout: Python Kombu publishes to a fanout exchange (`supports_fanout`), and both
/// queues kombu-rs bound to it receive the message.
#[cfg(feature = "sns")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fanout_consumed_by_rust() {
    use kombu::Exchange;
    let moto = Moto::start();
    let conn = Connection::new(&moto.url_with("supports_fanout=true")).expect("connection");
    let exchange = Exchange::fanout("pyfan");
    let queues: Vec<Queue> = ["pyfan-a", "pyfan-b"]
        .iter()
        .map(|n| Queue::new(*n).exchange(exchange.clone()).routing_key(""))
        .collect();
    let channel = conn.channel().await.expect("channel");
    for q in &queues {
        conn.maybe_declare(&q.clone().into(), channel.as_ref())
            .await
            .expect("declare and bind (subscribes the queue)");
    }
    run_python("interop_sqs.py", &["fanout-publish", &moto.kombu_url(), "pyfan"]);
    for q in &queues {
        let got = take(&conn, q.clone(), 1).await;
        assert_eq!(
            got[0].decode::<Value>().expect("json"),
            json!({"kind": "fanout", "from": "python"}),
            "{}",
            q.name
        );
    }
    conn.close().await.expect("close");
}

/// SNS fanout: kombu-rs publishes to a fanout exchange whose queues Python Kombu subscribed
/// (when it consumed them); Python receives the message on both.
#[cfg(feature = "sns")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_fanout_consumed_by_python() {
    use kombu::Exchange;
    let moto = Moto::start();
    let url = moto.kombu_url();
    run_python(
        "interop_sqs.py",
        &["fanout-subscribe", &url, "rsfan", "rsfan-a", "rsfan-b"],
    );
    let conn = Connection::new(&moto.url_with("supports_fanout=true")).expect("connection");
    let exchange = Exchange::fanout("rsfan");
    conn.producer()
        .exchange(exchange.clone())
        .publish(
            &json!({"kind": "fanout", "from": "rust"}),
            PublishOptions::new().declare(exchange),
        )
        .await
        .expect("publish");
    conn.close().await.expect("close");
    let got = json_lines(&run_python(
        "interop_sqs.py",
        &["fanout-consume", &url, "rsfan", "rsfan-a", "rsfan-b"],
    ));
    assert_eq!(got.len(), 2, "{got:?}");
    for line in &got {
        assert_eq!(line["body"], json!({"kind": "fanout", "from": "rust"}), "{line}");
    }
}
