//! kombu-rs ⇄ Python Kombu 5.7 (pymongo) on one throwaway FerretDB: the scripted scenarios of
//! `tests/python/interop_scenarios.py` in both directions (direct, topic, serializers,
//! compression, priorities, a Celery task message), Kombu's reject/requeue read by kombu-rs,
//! fanout through Kombu's capped collection both ways, Kombu's `ttl` option, and the
//! documents as pymongo reads them. Needs the project venv (`cargo xtask test-matrix` creates
//! it) or `KOMBU_PYTHON`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;
use kombu::{Connection, Exchange, ExchangeType, PublishOptions, Queue};
use kombu_testkit::interop::{self, json_lines, run_python, take, Broker};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_scenarios_consumed_by_rust() {
    let server = Server::start();
    interop::python_scenarios_consumed_by_rust(&server.url(), Broker::Mongodb).await;
}

/// A mixed fleet: a Python Kombu consumer and a kombu-rs consumer on one queue lose nothing
/// (Python Kombu takes a document with find_one_and_delete and ignores claims, so a message
/// may reach both: at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_consumers_compete_without_losing_a_message() {
    let server = Server::start();
    let url = server.url();
    interop::competing_with_a_python_consumer(&url, &url, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_scenarios_consumed_by_python() {
    let server = Server::start();
    interop::rust_scenarios_consumed_by_python(&server.url(), Broker::Mongodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reject_requeue_then_rust_gets_it_redelivered() {
    let server = Server::start();
    interop::python_reject_requeue_then_rust_gets_it_redelivered(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fanout_reaches_rust_subscribers() {
    let server = Server::start();
    interop::python_fanout_reaches_rust_subscribers(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_fanout_reaches_a_python_subscriber() {
    let server = Server::start();
    let url = server.url();
    let mut child = Command::new(interop::python())
        .arg(interop::workspace_root().join("tests/python/interop_mongodb.py"))
        .args(["fanout-consume", &url, "rsfan", "rsfan.py", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.next().expect("a line").expect("line");
    assert!(ready.contains("ready"), "{ready}");
    let conn = Connection::new(&url).expect("connection");
    let exchange = Exchange::new("rsfan", ExchangeType::Fanout);
    let producer = conn.producer();
    for n in 0..3 {
        producer
            .publish(
                &json!({"kind": "fanout", "n": n}),
                // Declared by the publisher, as Kombu needs it (its exchange types live in
                // process memory): a fanout publish goes to the capped collection.
                PublishOptions::new()
                    .exchange(exchange.clone())
                    .declare(exchange.clone()),
            )
            .await
            .expect("publish");
    }
    let bodies: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.expect("line")).expect("json"))
        .collect();
    assert!(child.wait().expect("python").success());
    assert_eq!(
        bodies,
        (0..3)
            .map(|n| json!({"kind": "fanout", "n": n}))
            .collect::<Vec<_>>()
    );
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_kombus_as_pymongo_reads_them() {
    let server = Server::start();
    let url = server.url();
    let conn = Connection::new(&url).expect("connection");
    let topic = Exchange::topic("layout.topic");
    let channel = conn.default_channel().await.expect("channel");
    conn.maybe_declare(
        &Queue::new("layout")
            .exchange(topic.clone())
            .routing_key("a.*.c")
            .into(),
        channel.as_ref(),
    )
    .await
    .expect("declare");
    let producer = conn.producer();
    for p in [7u8, 0] {
        producer
            .publish(
                &json!({"p": p}),
                PublishOptions::new().routing_key("layout").priority(p),
            )
            .await
            .expect("publish");
    }
    let out = json_lines(&run_python("interop_mongodb.py", &["inspect", &url, "layout"]));
    let messages: Vec<&Value> = out.iter().filter(|l| l["collection"] == "messages").collect();
    assert_eq!(messages.len(), 2, "{out:?}");
    for m in &messages {
        assert_eq!(m["fields"], json!(["_id", "payload", "priority", "queue"]), "{m}");
        assert_eq!(m["id_type"], "ObjectId");
        assert_eq!(m["queue"], "layout");
        assert_eq!(m["expire_at"], false);
    }
    // Kombu's 9 - priority, served ascending: 7 first.
    assert_eq!(messages[0]["priority"], 2);
    assert_eq!(messages[0]["payload"]["properties"]["priority"], 7);
    assert_eq!(messages[1]["priority"], 9);
    let routing: Vec<&Value> = out
        .iter()
        .filter(|l| l["collection"] == "messages.routing")
        .collect();
    assert_eq!(routing.len(), 1, "{out:?}");
    assert_eq!(
        routing[0]["fields"],
        json!(["exchange", "pattern", "queue", "routing_key"])
    );
    assert_eq!(routing[0]["exchange"], "layout.topic");
    assert_eq!(routing[0]["routing_key"], "a.*.c");
    assert_eq!(routing[0]["pattern"], r"^a\.[^\.]+\.c$");
    assert!(out
        .iter()
        .any(|l| l["collection"] == "messages.broadcast" && l["capped"] == true));
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kombus_ttl_option_both_ways() {
    let server = Server::start();
    let url = server.url();
    let out = json_lines(&run_python("interop_mongodb.py", &["ttl-publish", &url, "ttlq"]));
    assert_eq!(out[0]["expire_at"], json!([true, true]), "Kombu wrote expire_at");
    let conn = Connection::new(&format!("{url}?ttl=true")).expect("connection");
    let got = take(&conn, Queue::new("ttlq").message_ttl(Duration::from_secs(600)), 2).await;
    let mut ns: Vec<i64> = got
        .iter()
        .map(|m| m.decode::<Value>().expect("json")["n"].as_i64().unwrap())
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, [1, 2]);
    // kombu-rs with ttl=true writes Kombu's expire_at too (queue x-message-ttl).
    conn.producer()
        .publish(
            &json!({"n": 3}),
            PublishOptions::new()
                .routing_key("ttlq")
                .declare(Queue::new("ttlq").message_ttl(Duration::from_secs(600))),
        )
        .await
        .expect("publish");
    let out = json_lines(&run_python("interop_mongodb.py", &["inspect", &url, "ttlq"]));
    let messages: Vec<&Value> = out.iter().filter(|l| l["collection"] == "messages").collect();
    assert_eq!(messages.len(), 1, "{out:?}");
    assert_eq!(messages[0]["expire_at"], true);
    assert_eq!(
        messages[0]["fields"],
        json!(["_id", "expire_at", "payload", "priority", "queue"])
    );
    conn.close().await.expect("close");
}
