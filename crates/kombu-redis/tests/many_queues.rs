//! Issue 22: a consumer's cost must not grow with the number of queues it watches. One waiter
//! connection (RESP3 client-side tracking) watches every list, so a consumer of 300 queues
//! holds as few Redis connections as a consumer of one, and a message another connection
//! pushes — through Kombu-rs or raw, as Python Kombu does — wakes it well before the polling
//! interval (set to 30 s here, so only the tracking push can explain a quick delivery).
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use common::RedisServer;
use kombu::{Connection, PublishOptions, Queue};
use serde_json::{json, Value};

/// Most connections a consumer may hold, whatever the number of queues (commands, waiter,
/// fanout subscriber, one spare).
const MAX_CONNECTIONS: usize = 4;
/// How long a pushed message may take to arrive: far below the 30 s polling interval.
const PATIENCE: Duration = Duration::from_secs(5);
const CONSUMER_NAME: &str = "many-queues-consumer";
const PUBLISHER_NAME: &str = "many-queues-publisher";
const ADMIN_NAME: &str = "many-queues-admin";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_of_300_queues_holds_at_most_4_connections_and_wakes_on_the_last() {
    consumer_of(300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_of_1_queue_holds_at_most_4_connections_and_wakes() {
    consumer_of(1).await;
}

async fn consumer_of(n: usize) {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(ADMIN_NAME)
        .query_async(&mut admin)
        .await
        .unwrap();

    let url = format!("{}?client_name={CONSUMER_NAME}&polling_interval=30", server.url());
    let conn = Connection::new(&url).expect("connection");
    let names: Vec<String> = (0..n).map(|i| format!("many-{i}")).collect();
    let mut consumer = conn
        .consumer(names.iter().map(Queue::new))
        .prefetch_count(10)
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");

    // The waiter has read (and so tracks) every list of every queue: 4 per queue.
    wait_for_tracking(&mut admin, 4 * n as i64).await;
    let before = consumer_connections(&mut admin).await;
    assert!(
        before
            .names
            .iter()
            .any(|name| name == &format!("{CONSUMER_NAME}.waiter")),
        "the waiter connection is named: {:?}",
        before.names
    );
    // Positive control: the count sees the consumer's own connections (commands and waiter).
    assert!(before.count >= 2, "consumer connections seen: {:?}", before.names);
    assert!(
        before.count <= MAX_CONNECTIONS,
        "{n} queues: {} connections: {:?}",
        before.count,
        before.names
    );

    // Another connection publishes to the last-declared queue.
    let last = names.last().unwrap().clone();
    let publisher_url = format!("{}?client_name={PUBLISHER_NAME}", server.url());
    let publisher = Connection::new(&publisher_url).expect("connection");
    let started = Instant::now();
    publisher
        .producer()
        .publish(&json!({"n": 1}), PublishOptions::new().routing_key(last.as_str()))
        .await
        .expect("publish");
    let message = consumer
        .recv_timeout(PATIENCE)
        .await
        .expect("the message on the last queue");
    assert_eq!(message.decode::<Value>().unwrap(), json!({"n": 1}));
    assert!(started.elapsed() < PATIENCE);
    message.ack().await.expect("ack");

    // Python Kombu's publish: the JSON envelope LPUSHed straight into the list.
    let first = names[0].clone();
    lpush_envelope(&mut admin, &first, 2).await;
    let message = consumer
        .recv_timeout(PATIENCE)
        .await
        .expect("the raw LPUSHed message");
    assert_eq!(message.decode::<Value>().unwrap(), json!({"n": 2}));
    message.ack().await.expect("ack");

    // Delivering opened nothing more.
    let after = consumer_connections(&mut admin).await;
    assert!(after.count >= 2, "consumer connections seen: {:?}", after.names);
    assert!(
        after.count <= MAX_CONNECTIONS,
        "{n} queues, after deliveries: {} connections: {:?}",
        after.count,
        after.names
    );
    consumer.close().await.expect("close");
    publisher.close().await.expect("close");
}

/// Tracking is lost with the connection: after a Redis restart the waiter reconnects and
/// re-reads every list, so a message pushed before it is back is delivered, and a later one
/// wakes the consumer by the tracking push again (the polling interval is 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_waiter_tracks_every_list_again() {
    let n = 50;
    let mut server = RedisServer::start();
    let url = format!("{}?polling_interval=30", server.url());
    let conn = Connection::new(&url).expect("connection");
    let names: Vec<String> = (0..n).map(|i| format!("restart-{i}")).collect();
    let mut consumer = conn
        .consumer(names.iter().map(Queue::new))
        .prefetch_count(10)
        .build()
        .await
        .expect("consumer");
    consumer.consume().await.expect("consume");
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    wait_for_tracking(&mut admin, 4 * n as i64).await;

    server.restart();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    // Pushed at once, most likely before the waiter is back: found by the full re-read (or
    // by the dispatcher's polls while the waiter is away).
    lpush_envelope(&mut admin, &names[n / 2], 3).await;
    let message = consumer
        .recv_timeout(Duration::from_secs(20))
        .await
        .expect("pushed across the restart");
    assert_eq!(message.decode::<Value>().unwrap(), json!({"n": 3}));
    message.ack().await.expect("ack");

    wait_for_tracking(&mut admin, 4 * n as i64).await;
    lpush_envelope(&mut admin, names.last().unwrap(), 4).await;
    let message = consumer
        .recv_timeout(PATIENCE)
        .await
        .expect("woken by tracking again");
    assert_eq!(message.decode::<Value>().unwrap(), json!({"n": 4}));
    message.ack().await.expect("ack");
    consumer.close().await.expect("close");
}

/// Wait until the server tracks at least `keys` keys (the waiter read them all).
async fn wait_for_tracking(admin: &mut redis::aio::MultiplexedConnection, keys: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tracked = tracking_total_keys(admin).await;
        if tracked >= keys {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the waiter tracks {tracked} keys, not {keys}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Python Kombu's publish: the JSON envelope of `{"n": n}` LPUSHed straight into the list.
async fn lpush_envelope(admin: &mut redis::aio::MultiplexedConnection, queue: &str, n: u8) {
    let body = match n {
        2 => "eyJuIjogMn0=", // base64 of {"n": 2}
        3 => "eyJuIjogM30=",
        4 => "eyJuIjogNH0=",
        _ => panic!("no body for {n}"),
    };
    let envelope = json!({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {},
        "properties": {
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": format!("0b0b6c0e-5d1c-4f0e-9d44-2a7f1e1d2c0{n}"),
        },
    });
    let _: i64 = redis::cmd("LPUSH")
        .arg(queue)
        .arg(envelope.to_string())
        .query_async(admin)
        .await
        .unwrap();
}

async fn tracking_total_keys(admin: &mut redis::aio::MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO").arg("stats").query_async(admin).await.unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("tracking_total_keys:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

struct Seen {
    count: usize,
    names: Vec<String>,
}

/// The server's clients that are neither this test's admin connection nor the publisher's
/// (named so): the consumer's, unnamed ones included.
async fn consumer_connections(admin: &mut redis::aio::MultiplexedConnection) -> Seen {
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(admin).await.unwrap();
    let names: Vec<String> = list
        .lines()
        .map(|line| {
            line.split(' ')
                .find_map(|field| field.strip_prefix("name="))
                .unwrap_or("")
                .to_owned()
        })
        .filter(|name| name != ADMIN_NAME && !name.starts_with(PUBLISHER_NAME))
        .collect();
    Seen {
        count: names.len(),
        names,
    }
}
