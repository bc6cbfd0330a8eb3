//! A claim whose answer is lost: the server ran the claim script (the message moved to the
//! unacked hash) but the connection dropped before the answer came back. Without claim
//! receipts the message would wait out the visibility timeout (an hour); with them the
//! consumer hands it out as soon as the connection is back.
//!
//! A TCP proxy between the consumer and Redis forwards everything, except that it drops the
//! connection instead of passing on the first successful answer to a claim (a request naming
//! a `_kombu_rs.claim.` receipt key).
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::RedisServer;
use kombu::{Connection, PublishOptions, Queue};
use serde_json::{json, Value};

/// Forward `listener`'s connections to `upstream`; `armed`: drop the first successful claim
/// answer (then disarm).
fn proxy(listener: TcpListener, upstream: u16, armed: Arc<AtomicBool>, dropped: Arc<AtomicBool>) {
    for client in listener.incoming() {
        let Ok(client) = client else { return };
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
            return;
        };
        let claim_sent = Arc::new(AtomicBool::new(false));
        let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let sent = claim_sent.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = c_read.read(&mut buf) {
                if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                    break;
                }
                if buf[..n].windows(16).any(|w| w == b"_kombu_rs.claim.") {
                    sent.store(true, Ordering::SeqCst);
                }
            }
            let _ = s_write.shutdown(Shutdown::Both);
        });
        let (armed, dropped) = (armed.clone(), dropped.clone());
        std::thread::spawn(move || {
            let (mut s_read, mut c_write) = (server, client);
            let mut buf = [0u8; 65536];
            while let Ok(n) = s_read.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let answer_to_claim = claim_sent.swap(false, Ordering::SeqCst);
                // `-NOSCRIPT`: the script was not run (the client loads it and asks again).
                if answer_to_claim && buf[0] != b'-' && armed.swap(false, Ordering::SeqCst) {
                    dropped.store(true, Ordering::SeqCst);
                    break;
                }
                if c_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = c_write.shutdown(Shutdown::Both);
            let _ = s_read.shutdown(Shutdown::Both);
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_claimed_by_a_claim_whose_answer_was_lost_is_handed_out_after_the_reconnect() {
    let server = RedisServer::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    let (armed, dropped) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let upstream: u16 = server
        .url()
        .rsplit(':')
        .next()
        .and_then(|tail| tail.split('/').next())
        .and_then(|port| port.parse().ok())
        .expect("the server's port");
    {
        let (armed, dropped) = (armed.clone(), dropped.clone());
        std::thread::spawn(move || proxy(listener, upstream, armed, dropped));
    }

    // Published straight to Redis (not through the proxy).
    let direct = Connection::new(&server.url()).expect("connection");
    let queue = Queue::new("lost-claim");
    direct
        .producer()
        .publish(
            &json!("claimed in the dark"),
            PublishOptions::new()
                .routing_key("lost-claim")
                .declare(queue.clone()),
        )
        .await
        .expect("publish");

    let conn = Connection::new(&format!("redis://127.0.0.1:{proxy_port}/0")).expect("connection");
    armed.store(true, Ordering::SeqCst);
    let mut consumer = conn.consumer([queue.clone()]).consume().await.expect("consumer");
    let message = consumer
        .recv_timeout(Duration::from_secs(20))
        .await
        .expect("the message arrives after the reconnect, long before the visibility timeout");
    assert!(
        dropped.load(Ordering::SeqCst),
        "positive control: the proxy dropped a claim's answer"
    );
    assert_eq!(
        message.decode::<Value>().expect("json"),
        json!("claimed in the dark")
    );
    message.ack().await.expect("ack");
    consumer.close().await.expect("close");

    // Acked: nothing is left unacked or queued.
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let unacked: i64 = redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut redis)
        .await
        .unwrap();
    let queued: i64 = redis::cmd("LLEN")
        .arg("lost-claim")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!((unacked, queued), (0, 0));
}
