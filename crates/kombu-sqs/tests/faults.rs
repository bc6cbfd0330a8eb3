//! Faults against a throwaway moto server: an oversized message, malformed and foreign bodies
//! on the queue, a consumer SIGKILLed with messages in flight, a handler that runs three
//! times longer than the visibility timeout, and the server restarted mid-stream.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{raw_client, Moto};
use kombu::{Connection, ErrorKind, PublishOptions, Queue};
use serde_json::{json, Value};

async fn publish_numbers(conn: &Connection, queue: &str, count: usize) {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_limit_exceeded_before_any_request() {
    // Nothing listens here: any request would be a Connection error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let conn = Connection::new(&format!(
        "sqs://testing:testing@127.0.0.1:{port}?region=us-east-1"
    ))
    .expect("connection");
    let producer = conn.producer();
    let publish = |size: usize| {
        let producer = producer.clone();
        async move {
            producer
                .publish_bytes(vec![b'x'; size], PublishOptions::new().routing_key("big"))
                .await
        }
    };
    // Over 256 KiB of body; and 200 KiB, which base64 twice makes ~356 KiB of SQS body.
    for size in [300 * 1024, 200 * 1024] {
        let err = publish(size).await.expect_err("oversized publish must fail");
        assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{size} bytes: {err}");
    }
    // Positive control: a small message does try the (absent) server.
    let err = publish(10).await.expect_err("no server");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_recoverable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_body_is_a_typed_error_and_the_rest_flows() {
    let moto = Moto::start();
    let conn = Connection::new(&moto.url()).expect("connection");
    publish_numbers(&conn, "mixed", 1).await; // creates the queue; n = 0
    let client = raw_client(&moto);
    let queue_url = client
        .get_queue_url()
        .queue_name("mixed")
        .send()
        .await
        .expect("url")
        .queue_url()
        .expect("url")
        .to_owned();
    // An envelope whose body is not base64, then a foreign body that happens to be valid
    // base64 (Kombu would decode it), then another Kombu message.
    for body in [
        r#"{"body": "!!", "properties": {"body_encoding": "base64"}}"#,
        "abcd",
    ] {
        client
            .send_message()
            .queue_url(&queue_url)
            .message_body(body)
            .send()
            .await
            .expect("raw send");
    }
    let producer = conn.producer();
    producer
        .publish(&json!({"n": 1}), PublishOptions::new().routing_key("mixed"))
        .await
        .expect("publish");
    let mut consumer = conn
        .consumer([Queue::new("mixed")])
        .accept(["json", "application/data", "text/plain"])
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");
    let mut decode_errors = 0;
    let mut numbers = Vec::new();
    let mut foreign = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (numbers.len() < 2 || foreign.is_empty() || decode_errors == 0)
        && tokio::time::Instant::now() < deadline
    {
        match consumer.recv_timeout(Duration::from_secs(5)).await {
            Ok(m) => {
                match m.content_type() {
                    Some("application/json") => {
                        numbers.push(m.decode::<Value>().expect("json")["n"].as_i64().unwrap())
                    }
                    _ => foreign.push(m.payload().expect("raw").to_vec()),
                }
                m.ack().await.expect("ack");
            }
            Err(e) if e.kind() == ErrorKind::Decode => decode_errors += 1,
            Err(e) if e.kind() == ErrorKind::Timeout => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    numbers.sort_unstable();
    assert_eq!(numbers, vec![0, 1], "the Kombu messages flow");
    assert!(decode_errors >= 1, "the malformed envelope is a Decode error");
    assert_eq!(
        foreign,
        vec![b"abcd".to_vec()],
        "the foreign body is delivered as sent"
    );
    conn.close().await.expect("close");
}

/// The child side of the SIGKILL test: take 20 messages without acking, say so, wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_holds_messages() {
    let Ok(url) = std::env::var("KOMBU_SQS_CRASH_CHILD_URL") else {
        return; // Only runs as the child of `sigkill_with_messages_in_flight_loses_none`.
    };
    let conn = Connection::new(&url).expect("connection");
    let mut consumer = conn
        .consumer([Queue::new("crash")])
        .prefetch_count(20)
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");
    let mut held = Vec::new();
    while held.len() < 20 {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_messages_in_flight_loses_none() {
    let moto = Moto::start();
    let url = moto.url_with("visibility_timeout=2");
    let conn = Connection::new(&url).expect("connection");
    publish_numbers(&conn, "crash", 20).await;
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["crash_child_holds_messages", "--exact", "--nocapture"])
        .env("KOMBU_SQS_CRASH_CHILD_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .any(|line| line.map(|l| l.contains("holding 20")).unwrap_or(false));
    assert!(ready, "the child never held 20 messages");
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    // Every one comes back after the visibility timeout, marked redelivered.
    let got = kombu_testkit::interop::take(&conn, Queue::new("crash"), 20).await;
    let mut ns: Vec<i64> = got
        .iter()
        .map(|m| m.decode::<Value>().expect("json")["n"].as_i64().unwrap_or(-1))
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..20).collect::<Vec<i64>>());
    assert!(got.iter().all(|m| m.redelivered()));
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_three_times_longer_than_the_visibility_timeout_is_delivered_once() {
    let moto = Moto::start();
    let url = moto.url_with("visibility_timeout=1");
    let worker = Connection::new(&url).expect("connection");
    let rival = Connection::new(&url).expect("connection");
    publish_numbers(&worker, "long", 1).await;
    let mut c = worker
        .consumer([Queue::new("long")])
        .prefetch_count(1)
        .build()
        .await
        .expect("consumer");
    c.consume().await.expect("consume");
    let task = c.recv_timeout(Duration::from_secs(10)).await.expect("the task");
    // A rival consumer polls all along while the handler "runs" for 3 s (3 × 1 s).
    let mut r = rival.consumer([Queue::new("long")]).build().await.expect("rival");
    r.consume().await.expect("consume");
    match r.recv_timeout(Duration::from_secs(3)).await {
        Ok(m) => panic!("the task was delivered twice: {:?}", m.decode::<Value>()),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Timeout, "{e}"),
    }
    task.ack().await.expect("ack");
    c.close().await.expect("close the worker's consumer");
    // Positive control: the rival does get a message published now. It is told apart from
    // the task by its body, not by `redelivered`: the closed consumer's last long poll may
    // still be open on the server and receive the control first, and SQS then counts the
    // rival's receive as the second (a CI run saw exactly that).
    worker
        .producer()
        .publish(
            &json!({"control": true}),
            PublishOptions::new().routing_key("long"),
        )
        .await
        .expect("publish the control");
    let control = r
        .recv_timeout(Duration::from_secs(10))
        .await
        .expect("control reaches the rival");
    assert_eq!(control.decode::<Value>().expect("json"), json!({"control": true}));
    control.ack().await.expect("ack");
    worker.close().await.expect("close");
    rival.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_stream_then_the_consumer_resumes() {
    let mut moto = Moto::start();
    let conn = Connection::new(&moto.url()).expect("connection");
    let mut c = conn
        .consumer([Queue::new("restart")])
        .build()
        .await
        .expect("consumer");
    c.consume().await.expect("consume");
    publish_numbers(&conn, "restart", 2).await;
    for _ in 0..2 {
        c.recv_timeout(Duration::from_secs(10))
            .await
            .expect("before")
            .ack()
            .await
            .expect("ack");
    }
    moto.kill();
    // While it is down: a clear, recoverable error.
    let err = conn
        .producer()
        .publish(&json!({"n": 99}), PublishOptions::new().routing_key("restart"))
        .await
        .expect_err("the server is down");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.is_recoverable(), "{err}");
    moto.restart(); // empty: moto keeps queues in memory
    publish_numbers(&conn, "restart", 2).await;
    let mut after = Vec::new();
    while after.len() < 2 {
        let m = c
            .recv_timeout(Duration::from_secs(20))
            .await
            .expect("the consumer resumes by itself");
        after.push(m.decode::<Value>().expect("json")["n"].as_i64().unwrap());
        m.ack().await.expect("ack");
    }
    after.sort_unstable();
    assert_eq!(after, vec![0, 1]);
    conn.close().await.expect("close");
}

/// Built without `sns`: a fanout exchange is `Unsupported`, and the error names the feature
/// and the option that turn it on (no request is made: the capabilities decide).
#[cfg(not(feature = "sns"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_without_the_sns_feature_says_how_to_turn_it_on() {
    use kombu::transport::DeclareOptions;
    use kombu::Exchange;
    let moto = Moto::start();
    let conn = Connection::new(&moto.url()).expect("connection");
    let channel = conn.channel().await.expect("channel");
    let err = channel
        .declare_exchange(&Exchange::fanout("fan"), DeclareOptions::default())
        .await
        .expect_err("fanout without SNS");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("sqs-sns"), "{err}");
    // Positive control: a topic exchange works.
    channel
        .declare_exchange(&Exchange::topic("top"), DeclareOptions::default())
        .await
        .expect("topic exchange");
    let err = Connection::new(&moto.url_with("supports_fanout=true"))
        .expect("connection")
        .channel()
        .await
        .expect_err("supports_fanout=true without the feature");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("sqs-sns"), "{err}");
}
