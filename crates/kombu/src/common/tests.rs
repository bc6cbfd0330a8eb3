//! Behaviour of the helpers on the memory transport.

use std::time::Duration;

use super::*;
use crate::{Connection, ErrorKind, Exchange, PublishOptions, Queue};

const WAIT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn broadcast_reaches_every_consumer() {
    let conn = Connection::new("memory:///common-broadcast").unwrap();
    let mut first = conn
        .consumer([Broadcast::new("news").into()])
        .consume()
        .await
        .unwrap();
    let mut second = conn
        .consumer([Broadcast::new("news").into()])
        .consume()
        .await
        .unwrap();
    conn.producer()
        .exchange(Exchange::fanout("news"))
        .publish("extra", PublishOptions::new())
        .await
        .unwrap();
    for consumer in [&mut first, &mut second] {
        let message = consumer.recv_timeout(WAIT).await.unwrap();
        assert_eq!(message.decode::<String>().unwrap(), "extra");
        message.ack().await.unwrap();
        // Each got one copy, not both.
        let more = consumer.recv_timeout(Duration::from_millis(100)).await;
        assert_eq!(more.unwrap_err().kind(), ErrorKind::Timeout);
    }
}

/// A responder answering every request on `queue` with the square of its body (after a
/// decoy reply with another correlation id if `decoy_first`).
async fn square_server(
    conn: &Connection,
    queue: &str,
    decoy_first: bool,
) -> crate::Result<tokio::task::JoinHandle<crate::Result<()>>> {
    let mut server = conn.consumer([Queue::new(queue)]).consume().await?;
    let producer = conn.producer();
    Ok(tokio::spawn(async move {
        loop {
            let request = server.recv().await?;
            let n: i64 = request.decode()?;
            if decoy_first {
                let decoy = PublishOptions::new().correlation_id("someone-else");
                send_reply(&producer, &request, &-1, decoy).await?;
            }
            send_reply(&producer, &request, &(n * n), PublishOptions::new()).await?;
            request.ack().await?;
        }
    }))
}

#[tokio::test]
async fn rpc_round_trip_answered_by_send_reply() {
    let conn = Connection::new("memory:///common-rpc").unwrap();
    let server = square_server(&conn, "square", false).await.unwrap();
    let mut client = RpcClient::new(conn.producer()).await.unwrap();
    for n in [3_i64, 4] {
        let reply = client
            .call(&n, PublishOptions::new().routing_key("square"), WAIT)
            .await
            .unwrap();
        assert_eq!(reply.decode::<i64>().unwrap(), n * n);
        assert_eq!(reply.content_type(), Some("application/json"));
    }
    let reply = rpc_call(
        &conn.producer(),
        &5,
        PublishOptions::new().routing_key("square"),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(reply.decode::<i64>().unwrap(), 25);
    assert!(!server.is_finished(), "the responder is still serving");
    server.abort();
}

#[tokio::test]
async fn a_reply_with_another_correlation_id_is_ignored() {
    let conn = Connection::new("memory:///common-rpc-decoy").unwrap();
    let server = square_server(&conn, "square", true).await.unwrap();
    let mut client = RpcClient::new(conn.producer()).await.unwrap();
    let reply = client
        .call(&6, PublishOptions::new().routing_key("square"), WAIT)
        .await
        .unwrap();
    // The decoy (-1) came first and was dropped; the right reply still arrived.
    assert_eq!(reply.decode::<i64>().unwrap(), 36);
    let id = reply.properties().correlation_id.clone().unwrap();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id} is a uuid");
    assert!(!server.is_finished(), "the responder is still serving");
    server.abort();
}

#[tokio::test]
async fn rpc_without_a_reply_times_out() {
    let conn = Connection::new("memory:///common-rpc-timeout").unwrap();
    let unanswered = Queue::new("nobody-home");
    let options = PublishOptions::new()
        .routing_key("nobody-home")
        .declare(unanswered);
    let err = rpc_call(&conn.producer(), &1, options, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    // The request was published (with reply_to and a correlation_id), just not answered.
    let request = conn
        .simple_queue("nobody-home")
        .get_nowait()
        .await
        .unwrap()
        .unwrap();
    let properties = request.properties();
    assert!(properties.reply_to.as_deref().unwrap().starts_with("rpc.reply."));
    assert!(properties.correlation_id.is_some());
}

#[tokio::test]
async fn send_reply_needs_reply_to_and_keeps_the_request_format() {
    let conn = Connection::new("memory:///common-send-reply").unwrap();
    let requests = conn.simple_queue("requests");
    requests.put(&1).await.unwrap();
    let request = requests.get(Some(WAIT)).await.unwrap();
    let err = send_reply(&conn.producer(), &request, &2, PublishOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);

    requests
        .put_with(&1, PublishOptions::new().reply_to("out").correlation_id("c-9"))
        .await
        .unwrap();
    let request = requests.get(Some(WAIT)).await.unwrap();
    // The producer's own serializer is not the request's: the request's wins.
    let producer = conn.producer().serializer("text");
    let out = conn.simple_queue("out");
    out.qsize().await.unwrap();
    send_reply(&producer, &request, "hi", PublishOptions::new())
        .await
        .unwrap();
    let reply = out.get(Some(WAIT)).await.unwrap();
    assert_eq!(reply.properties().correlation_id.as_deref(), Some("c-9"));
    assert_eq!(reply.content_type(), Some("application/json"));
    assert_eq!(reply.decode::<String>().unwrap(), "hi");
    assert_eq!(reply.content_encoding(), request.content_encoding());
    assert_eq!(reply.delivery_info().exchange(), "");
    assert_eq!(reply.delivery_info().routing_key(), "out");
}

#[tokio::test]
async fn collect_replies_acks_unless_no_ack_and_deletes_the_queue() {
    let conn = Connection::new("memory:///common-collect").unwrap();
    let mut replies = collect_replies(&conn, Queue::new("collected"), false)
        .await
        .unwrap();
    conn.producer()
        .publish("r", PublishOptions::new().routing_key("collected"))
        .await
        .unwrap();
    let reply = replies.recv_timeout(WAIT).await.unwrap();
    assert!(reply.acknowledged(), "no_ack=false: collect_replies acks");
    let channel = conn.channel().await.unwrap();
    let there = channel
        .declare_queue(&Queue::new("collected"), kombu_core::DeclareOptions::passive())
        .await;
    assert!(there.is_ok(), "the queue exists before close: {there:?}");
    replies.close().await.unwrap();
    let gone = channel
        .declare_queue(&Queue::new("collected"), kombu_core::DeclareOptions::passive())
        .await;
    assert!(gone.is_err(), "the queue is deleted after a reply: {gone:?}");
}
