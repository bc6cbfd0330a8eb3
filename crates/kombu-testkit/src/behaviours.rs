//! The behaviours. Each is small, isolated by unique names, and asserts what it promises.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kombu::transport::{DeclareOptions, DeleteQueueOptions, ExchangeBinding, GetOptions, QueueBinding};
use kombu::{
    Binding, Capabilities, Connection, Consumer, ErrorKind, Exchange, Message, PriorityOrder, PublishOptions,
    Queue, Value,
};
use serde::{Deserialize, Serialize};

use crate::harness::{Behaviour, BoxTest, Ctx, Failure, TestResult};
use crate::{check, check_eq};

fn always(_: &Capabilities) -> Result<(), &'static str> {
    Ok(())
}

/// `fn name(&Capabilities) -> Result<(), reason>` requiring one capability.
macro_rules! requires {
    ($($name:ident: $cond:expr => $reason:literal;)*) => {
        $(fn $name(c: &Capabilities) -> Result<(), &'static str> {
            #[allow(clippy::redundant_closure_call)]
            if ($cond)(c) { Ok(()) } else { Err($reason) }
        })*
    };
}

requires! {
    topic: |c: &Capabilities| c.exchange_topic => "transport does not support topic exchanges";
    fanout: |c: &Capabilities| c.exchange_fanout => "transport does not support fanout exchanges";
    headers: |c: &Capabilities| c.exchange_headers => "transport does not support headers exchanges";
    exchange_to_exchange: |c: &Capabilities| c.exchange_to_exchange && c.exchange_topic
        => "transport does not support exchange-to-exchange bindings";
    priority: |c: &Capabilities| c.priority.is_some() => "transport does not support priorities";
    ttl: |c: &Capabilities| c.message_ttl => "transport does not support message TTL";
    max_length: |c: &Capabilities| c.max_length => "transport does not support x-max-length";
    restore_on_close: |c: &Capabilities| c.restore_unacked_on_close
        => "transport does not restore unacked messages on close";
    recover: |c: &Capabilities| c.recover => "transport does not support recover";
    size_limit: |c: &Capabilities| c.max_message_size.is_some() => "transport has no message size limit";
    exchanges_checked: |c: &Capabilities| !c.persistent_bindings || c.publisher_confirms
        => "transport stores bindings on the broker and has no publisher confirms: an exchange undeclared here routes over them, as in Kombu";
}

fn one_mib(c: &Capabilities) -> Result<(), &'static str> {
    match c.max_message_size {
        Some(limit) if limit < 1024 * 1024 + 4096 => Err("transport's message size limit is below 1 MiB"),
        _ => Ok(()),
    }
}

macro_rules! behaviours {
    ($($name:ident: $requires:expr;)*) => {
        /// Every behaviour of the suite, in order.
        pub fn all() -> Vec<Behaviour> {
            vec![$(Behaviour {
                name: stringify!($name),
                requires: $requires,
                run: |ctx| -> BoxTest { Box::pin($name(ctx)) },
            }),*]
        }
    };
}

behaviours! {
    roundtrip_json_with_headers_and_properties: always;
    roundtrip_unicode_text: always;
    roundtrip_binary_body: always;
    roundtrip_empty_body: always;
    roundtrip_one_mebibyte: one_mib;
    delivery_tags_unique_per_publish: always;
    default_exchange_routes_by_queue_name: always;
    direct_routing_by_key: always;
    direct_unknown_key_is_dropped: always;
    publish_to_exchange_without_queues_succeeds: always;
    publish_to_undeclared_exchange_is_not_found: exchanges_checked;
    topic_star_and_hash: topic;
    topic_kombu_test_table: topic;
    topic_hash_matches_zero_words: topic;
    fanout_delivers_to_every_queue: fanout;
    headers_exchange_all_and_any: headers;
    exchange_to_exchange_binding_routes_on: exchange_to_exchange;
    overlapping_bindings_deliver_once: topic;
    multiple_bindings_per_queue: always;
    unbind_stops_routing: always;
    ack_removes_message: always;
    reject_without_requeue_drops: always;
    reject_with_requeue_redelivers: always;
    requeue_redelivers: always;
    unacked_restored_on_channel_close: restore_on_close;
    unacked_restored_on_connection_close: restore_on_close;
    recover_redelivers_unacked: recover;
    prefetch_bounds_in_flight: always;
    double_ack_is_message_state_error: always;
    reject_after_ack_is_message_state_error: always;
    ack_after_requeue_is_message_state_error: always;
    get_on_empty_queue_returns_none: always;
    consume_on_empty_queue_times_out: always;
    purge_returns_count: always;
    declare_is_idempotent: always;
    conflicting_exchange_redeclare_errors: always;
    passive_declare_missing_queue_is_not_found: always;
    passive_declare_missing_exchange_is_not_found: always;
    queue_declare_reports_message_count: always;
    queue_delete_removes_queue: always;
    queue_delete_if_empty_refuses_nonempty: always;
    priority_order: priority;
    message_ttl_expires: ttl;
    queue_message_ttl_expires: ttl;
    max_length_drops_oldest: max_length;
    fifo_order_per_queue: always;
    many_queues_served_fairly: always;
    competing_consumers_get_each_message_once: always;
    ten_thousand_from_ten_producers: always;
    serializer_compression_matrix: always;
    disallowed_content_type_rejected_and_kept: always;
    kombu_json_type_tags_decode: always;
    simple_queue_put_get: always;
    simple_buffer_put_get: always;
    cancel_stops_deliveries: always;
    no_ack_consumer_settles_on_delivery: always;
    nack_redelivery_until_ack: always;
    oversized_message_is_limit_exceeded: size_limit;
    closed_channel_operations_fail: always;
    unknown_scheme_is_a_clear_error: always;
}

// ---------------------------------------------------------------- helpers

/// Declare `queue` (with its bindings) on a fresh channel.
async fn declare(conn: &Connection, queue: &Queue) -> Result<(), Failure> {
    let channel = conn.channel().await?;
    conn.maybe_declare(&queue.clone().into(), channel.as_ref())
        .await?;
    Ok(())
}

async fn publish_json(
    conn: &Connection,
    exchange: &Exchange,
    key: &str,
    body: serde_json::Value,
) -> TestResult {
    conn.producer()
        .exchange(exchange.clone())
        .publish(&body, PublishOptions::new().routing_key(key))
        .await?;
    Ok(())
}

/// Take one message with `get`, waiting up to `patience` for it to appear.
async fn get_one(ctx: &Ctx, conn: &Connection, queue: &str) -> Result<Message, Failure> {
    let deadline = tokio::time::Instant::now() + ctx.patience();
    let channel = conn.default_channel().await?;
    loop {
        if let Some(d) = channel.get(queue, GetOptions::default()).await? {
            return Ok(Message::new(d, Arc::new(kombu::Accept::any())));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure(format!(
                "no message arrived in queue {queue} within {:?}",
                ctx.patience()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Assert that `queue` stays empty for the quiet period.
async fn assert_empty(ctx: &Ctx, conn: &Connection, queue: &str) -> TestResult {
    tokio::time::sleep(ctx.quiet_period()).await;
    let channel = conn.default_channel().await?;
    if let Some(d) = channel.get(queue, GetOptions::default()).await? {
        let body = String::from_utf8_lossy(&d.message.body).into_owned();
        if let Some(h) = &d.ack {
            let _ = h.acknowledger.reject(h.tag, true).await;
        }
        return Err(Failure(format!(
            "queue {queue} should be empty, found a message: {body}"
        )));
    }
    Ok(())
}

async fn consumer(conn: &Connection, queues: Vec<Queue>, prefetch: Option<u16>) -> Result<Consumer, Failure> {
    let mut builder = conn
        .consumer(queues)
        .accept(["json", "msgpack", "yaml", "text", "raw"]);
    if let Some(p) = prefetch {
        builder = builder.prefetch_count(p);
    }
    let mut c = builder.build().await?;
    c.consume().await?;
    Ok(c)
}

fn bound(ctx: &Ctx, base: &str, exchange: &Exchange, key: &str) -> Queue {
    Queue::new(ctx.name(base))
        .exchange(exchange.clone())
        .routing_key(key)
}

/// The error of an operation that must fail with `kind`; `if_ok` is the failure when it
/// succeeds.
fn expect_error<T>(result: kombu::Result<T>, kind: ErrorKind, if_ok: &str) -> Result<kombu::Error, Failure> {
    let err = result.err().ok_or(if_ok)?;
    check_eq!(err.kind(), kind, "kind of the error ({err})");
    Ok(err)
}

fn body_text(m: &Message) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

// ---------------------------------------------------------------- round trips

async fn roundtrip_json_with_headers_and_properties(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::direct(ctx.name("rt"));
    let q = bound(&ctx, "rt", &ex, "rk");
    declare(&conn, &q).await?;
    let body = serde_json::json!({"hello": "world", "n": [1, 2, 3], "nested": {"ok": true}});
    let mut opts = PublishOptions::new()
        .routing_key("rk")
        .header("h_int", 7)
        .header("h_str", "héllo")
        .header("h_bool", true)
        .correlation_id("corr-1")
        .reply_to("replies")
        .message_id("msg-1")
        .message_type("task")
        .app_id("testkit")
        .timestamp(1_700_000_000)
        .expiration(Duration::from_secs(60));
    if ctx.caps().priority.is_some() {
        opts = opts.priority(3);
    }
    conn.producer().exchange(ex.clone()).publish(&body, opts).await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    check_eq!(m.content_type(), Some("application/json"), "content_type");
    check_eq!(m.content_encoding(), Some("utf-8"), "content_encoding");
    check_eq!(m.decode::<serde_json::Value>()?, body, "body");
    check_eq!(m.headers().get("h_int"), Some(&Value::Int(7)), "int header");
    check_eq!(
        m.headers().get("h_str"),
        Some(&Value::from("héllo")),
        "string header"
    );
    check_eq!(m.headers().get("h_bool"), Some(&Value::Bool(true)), "bool header");
    let p = m.properties();
    check_eq!(p.correlation_id.as_deref(), Some("corr-1"), "correlation_id");
    check_eq!(p.reply_to.as_deref(), Some("replies"), "reply_to");
    check_eq!(p.message_id.as_deref(), Some("msg-1"), "message_id");
    check_eq!(p.message_type.as_deref(), Some("task"), "type");
    check_eq!(p.app_id.as_deref(), Some("testkit"), "app_id");
    check_eq!(p.timestamp, Some(1_700_000_000), "timestamp");
    check_eq!(
        p.expiration.as_deref(),
        Some("60000"),
        "expiration (ms, as Kombu)"
    );
    check_eq!(
        p.delivery_mode,
        Some(kombu::DeliveryMode::Persistent),
        "delivery_mode"
    );
    if ctx.caps().priority.is_some() {
        check_eq!(p.priority, Some(3), "priority");
    }
    let info = m.delivery_info();
    check_eq!(&*info.exchange, ex.name.as_str(), "delivery_info.exchange");
    check_eq!(&*info.routing_key, "rk", "delivery_info.routing_key");
    check!(
        !info.redelivered,
        "a first delivery must not be marked redelivered"
    );
    m.ack().await?;
    conn.close().await?;
    Ok(())
}

async fn roundtrip_unicode_text(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("uni"));
    declare(&conn, &q).await?;
    let text = "héllo wörld ✓ 日本語 🎉 \u{0} end";
    conn.producer()
        .publish_text(text, PublishOptions::new().routing_key(q.name.clone()))
        .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    check_eq!(m.content_type(), Some("text/plain"), "content_type");
    check_eq!(m.decode::<String>()?, text, "text body");
    m.ack().await?;
    Ok(())
}

async fn roundtrip_binary_body(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("bin"));
    declare(&conn, &q).await?;
    let body: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    conn.producer()
        .publish_bytes(body.clone(), PublishOptions::new().routing_key(q.name.clone()))
        .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    check_eq!(m.content_type(), Some("application/data"), "content_type");
    check_eq!(m.content_encoding(), Some("binary"), "content_encoding");
    check_eq!(&m.body()[..], &body[..], "binary body");
    m.ack().await?;
    Ok(())
}

async fn roundtrip_empty_body(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("empty"));
    declare(&conn, &q).await?;
    conn.producer()
        .publish_bytes(Bytes::new(), PublishOptions::new().routing_key(q.name.clone()))
        .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    check!(
        m.body().is_empty(),
        "empty body came back with {} bytes",
        m.body().len()
    );
    m.ack().await?;
    Ok(())
}

async fn roundtrip_one_mebibyte(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("big"));
    declare(&conn, &q).await?;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let body: Vec<u8> = (0..1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    conn.producer()
        .publish_bytes(body.clone(), PublishOptions::new().routing_key(q.name.clone()))
        .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    check!(
        m.body()[..] == body[..],
        "1 MiB body differs (got {} bytes)",
        m.body().len()
    );
    m.ack().await?;
    Ok(())
}

async fn delivery_tags_unique_per_publish(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("tags"));
    declare(&conn, &q).await?;
    let producer = conn.producer();
    for _ in 0..5 {
        producer
            .publish(&"same", PublishOptions::new().routing_key(q.name.clone()))
            .await?;
    }
    let mut tags = HashSet::new();
    for _ in 0..5 {
        let m = get_one(&ctx, &conn, &q.name).await?;
        check!(!m.delivery_tag().is_empty(), "empty delivery tag");
        tags.insert(m.delivery_tag().to_owned());
        m.ack().await?;
    }
    check_eq!(tags.len(), 5, "distinct delivery tags for 5 publishes");
    Ok(())
}

// ---------------------------------------------------------------- routing

async fn default_exchange_routes_by_queue_name(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("dflt"));
    declare(&conn, &q).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!(1),
    )
    .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    check_eq!(&*m.delivery_info().exchange, "", "exchange");
    check_eq!(&*m.delivery_info().routing_key, q.name.as_str(), "routing_key");
    m.ack().await?;
    Ok(())
}

async fn direct_routing_by_key(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::direct(ctx.name("direct"));
    let qa = bound(&ctx, "direct-a", &ex, "a");
    let qb = bound(&ctx, "direct-b", &ex, "b");
    declare(&conn, &qa).await?;
    declare(&conn, &qb).await?;
    publish_json(&conn, &ex, "a", serde_json::json!("for a")).await?;
    publish_json(&conn, &ex, "b", serde_json::json!("for b")).await?;
    let ma = get_one(&ctx, &conn, &qa.name).await?;
    check_eq!(ma.decode::<String>()?, "for a", "queue a");
    ma.ack().await?;
    let mb = get_one(&ctx, &conn, &qb.name).await?;
    check_eq!(mb.decode::<String>()?, "for b", "queue b");
    mb.ack().await?;
    assert_empty(&ctx, &conn, &qa.name).await?;
    assert_empty(&ctx, &conn, &qb.name).await
}

async fn direct_unknown_key_is_dropped(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::direct(ctx.name("dropped"));
    let qa = bound(&ctx, "dropped-a", &ex, "a");
    declare(&conn, &qa).await?;
    publish_json(&conn, &ex, "nobody", serde_json::json!("lost")).await?;
    assert_empty(&ctx, &conn, &qa.name).await
}

async fn publish_to_exchange_without_queues_succeeds(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::topic(ctx.name("lonely"));
    publish_json(&conn, &ex, "any.key", serde_json::json!({})).await
}

async fn publish_to_undeclared_exchange_is_not_found(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let err = conn
        .producer()
        .exchange(Exchange::direct(ctx.name("never-declared")))
        .auto_declare(false)
        .publish(&1, PublishOptions::new().routing_key("x"))
        .await;
    match err {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Failure(format!("expected a not-found error, got {e}"))),
        Ok(()) => Err(Failure(
            "publishing to an undeclared exchange must not silently succeed".into(),
        )),
    }
}

async fn route_table(
    ctx: &Ctx,
    kind: Exchange,
    bindings: &[(&str, &str)],
    cases: &[(&str, &[&str])],
) -> TestResult {
    let conn = ctx.conn()?;
    let mut queues = BTreeMap::new();
    for (label, key) in bindings {
        let q = bound(ctx, label, &kind, key);
        declare(&conn, &q).await?;
        queues.insert(*label, q.name);
    }
    for (i, (rk, _)) in cases.iter().enumerate() {
        publish_json(&conn, &kind, rk, serde_json::json!(i)).await?;
    }
    tokio::time::sleep(ctx.quiet_period()).await;
    let channel = conn.default_channel().await?;
    for (label, qname) in &queues {
        let mut got = Vec::new();
        while let Some(d) = channel.get(qname, GetOptions::default()).await? {
            let m = Message::new(d, Arc::new(kombu::Accept::default()));
            got.push(m.decode::<usize>()?);
            m.ack().await?;
        }
        let want: Vec<usize> = cases
            .iter()
            .enumerate()
            .filter(|(_, (_, exp))| exp.contains(label))
            .map(|(i, _)| i)
            .collect();
        let keys = |ix: &[usize]| ix.iter().map(|i| cases[*i].0).collect::<Vec<_>>();
        check!(
            got == want,
            "queue bound as {label}: expected routing keys {:?}, got {:?}",
            keys(&want),
            keys(&got)
        );
    }
    Ok(())
}

async fn topic_star_and_hash(ctx: Ctx) -> TestResult {
    // RabbitMQ's tutorial table.
    let ex = Exchange::topic(ctx.name("animals"));
    route_table(
        &ctx,
        ex,
        &[("q1", "*.orange.*"), ("q2", "*.*.rabbit"), ("q3", "lazy.#")],
        &[
            ("quick.orange.rabbit", &["q1", "q2"]),
            ("lazy.orange.elephant", &["q1", "q3"]),
            ("quick.orange.fox", &["q1"]),
            ("lazy.brown.fox", &["q3"]),
            ("lazy.pink.rabbit", &["q2", "q3"]),
            ("quick.brown.fox", &[]),
            ("orange", &[]),
            ("quick.orange.male.rabbit", &[]),
            ("lazy.orange.male.rabbit", &["q3"]),
        ],
    )
    .await
}

async fn topic_kombu_test_table(ctx: Ctx) -> TestResult {
    // Kombu's t/unit/transport/virtual/test_exchange.py.
    let ex = Exchange::topic(ctx.name("stock"));
    route_table(
        &ctx,
        ex,
        &[("rFoo", "stock.#"), ("rBar", "stock.us.*")],
        &[
            ("stock.us.nasdaq", &["rFoo", "rBar"]),
            ("stock.europe.OSE", &["rFoo"]),
            ("stockxeuropexOSE", &[]),
            ("stock.us.nasdaq.tech", &["rFoo"]),
        ],
    )
    .await
}

async fn topic_hash_matches_zero_words(ctx: Ctx) -> TestResult {
    // AMQP semantics (RabbitMQ): `a.#` matches `a`; `#` matches the empty key.
    let ex = Exchange::topic(ctx.name("zero"));
    route_table(
        &ctx,
        ex,
        &[("qa", "a.#"), ("qall", "#"), ("qmid", "a.#.z")],
        &[
            ("a", &["qa", "qall"]),
            ("a.z", &["qa", "qall", "qmid"]),
            ("b", &["qall"]),
        ],
    )
    .await
}

async fn fanout_delivers_to_every_queue(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::fanout(ctx.name("fan"));
    let queues: Vec<Queue> = (0..3).map(|i| bound(&ctx, &format!("fan{i}"), &ex, "")).collect();
    for q in &queues {
        declare(&conn, q).await?;
    }
    let mut consumers = Vec::new();
    for q in &queues {
        consumers.push(consumer(&conn, vec![q.clone()], None).await?);
    }
    publish_json(&conn, &ex, "", serde_json::json!("broadcast")).await?;
    for (i, c) in consumers.iter_mut().enumerate() {
        let m = c.recv_timeout(ctx.patience()).await?;
        check_eq!(m.decode::<String>()?, "broadcast", "fanout copy {i}");
        m.ack().await?;
    }
    Ok(())
}

async fn exchange_to_exchange_binding_routes_on(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let front = Exchange::topic(ctx.name("e2e-front"));
    let back = Exchange::direct(ctx.name("e2e-back"));
    let channel = conn.channel().await?;
    channel
        .declare_exchange(&front, DeclareOptions::default())
        .await?;
    let q = bound(&ctx, "e2e", &back, "orders.created");
    declare(&conn, &q).await?;
    let binding = ExchangeBinding::new(back.name.clone(), front.name.clone(), "orders.*");
    channel.bind_exchange(&binding).await?;
    publish_json(&conn, &front, "orders.created", serde_json::json!("via front")).await?;
    publish_json(&conn, &front, "invoices.created", serde_json::json!("not bound")).await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    check_eq!(
        m.decode::<String>()?,
        "via front",
        "body routed through both exchanges"
    );
    m.ack().await?;
    assert_empty(&ctx, &conn, &q.name).await?;
    channel.unbind_exchange(&binding).await?;
    publish_json(&conn, &front, "orders.created", serde_json::json!("after unbind")).await?;
    assert_empty(&ctx, &conn, &q.name).await
}

async fn headers_exchange_all_and_any(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::headers(ctx.name("hdr"));
    let all = Queue::new(ctx.name("hdr-all")).binding(
        Binding::new(ex.clone(), "")
            .argument("x-match", "all")
            .argument("format", "pdf")
            .argument("type", "report"),
    );
    let any = Queue::new(ctx.name("hdr-any")).binding(
        Binding::new(ex.clone(), "")
            .argument("x-match", "any")
            .argument("format", "pdf")
            .argument("type", "report"),
    );
    declare(&conn, &all).await?;
    declare(&conn, &any).await?;
    let p = conn.producer().exchange(ex);
    p.publish(
        &"both",
        PublishOptions::new()
            .header("format", "pdf")
            .header("type", "report"),
    )
    .await?;
    p.publish(&"one", PublishOptions::new().header("format", "pdf"))
        .await?;
    p.publish(&"none", PublishOptions::new().header("format", "zip"))
        .await?;
    let m = get_one(&ctx, &conn, &all.name).await?;
    check_eq!(m.decode::<String>()?, "both", "x-match=all");
    m.ack().await?;
    assert_empty(&ctx, &conn, &all.name).await?;
    for expected in ["both", "one"] {
        let m = get_one(&ctx, &conn, &any.name).await?;
        check_eq!(m.decode::<String>()?, expected, "x-match=any");
        m.ack().await?;
    }
    assert_empty(&ctx, &conn, &any.name).await
}

async fn overlapping_bindings_deliver_once(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::topic(ctx.name("overlap"));
    let q = Queue::new(ctx.name("overlap"))
        .binding(Binding::new(ex.clone(), "a.*"))
        .binding(Binding::new(ex.clone(), "#"))
        .binding(Binding::new(ex.clone(), "a.b"));
    declare(&conn, &q).await?;
    publish_json(&conn, &ex, "a.b", serde_json::json!("once")).await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    m.ack().await?;
    assert_empty(&ctx, &conn, &q.name).await
}

async fn multiple_bindings_per_queue(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::direct(ctx.name("multi"));
    let q = Queue::new(ctx.name("multi"))
        .binding(Binding::new(ex.clone(), "red"))
        .binding(Binding::new(ex.clone(), "blue"));
    declare(&conn, &q).await?;
    publish_json(&conn, &ex, "red", serde_json::json!("r")).await?;
    publish_json(&conn, &ex, "blue", serde_json::json!("b")).await?;
    publish_json(&conn, &ex, "green", serde_json::json!("g")).await?;
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = get_one(&ctx, &conn, &q.name).await?;
        got.push(m.decode::<String>()?);
        m.ack().await?;
    }
    got.sort();
    check_eq!(
        got,
        vec!["b".to_owned(), "r".to_owned()],
        "messages via both bindings"
    );
    assert_empty(&ctx, &conn, &q.name).await
}

async fn unbind_stops_routing(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::direct(ctx.name("unbind"));
    let q = bound(&ctx, "unbind", &ex, "k");
    declare(&conn, &q).await?;
    let channel = conn.channel().await?;
    channel
        .unbind_queue(&QueueBinding::new(q.name.clone(), ex.name.clone(), "k"))
        .await?;
    publish_json(&conn, &ex, "k", serde_json::json!("after unbind")).await?;
    assert_empty(&ctx, &conn, &q.name).await
}

// ---------------------------------------------------------------- acknowledgements

async fn ack_removes_message(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("ack"));
    declare(&conn, &q).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!("x"),
    )
    .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    m.ack().await?;
    check_eq!(m.state(), kombu::MessageState::Acked, "state");
    conn.close().await?;
    let conn = ctx.conn()?;
    assert_empty(&ctx, &conn, &q.name).await
}

async fn reject_without_requeue_drops(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("rej"));
    declare(&conn, &q).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!("x"),
    )
    .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    m.reject(false).await?;
    conn.close().await?;
    let conn = ctx.conn()?;
    assert_empty(&ctx, &conn, &q.name).await
}

async fn reject_with_requeue_redelivers(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("rejq"));
    declare(&conn, &q).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!("again"),
    )
    .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    check!(!m.redelivered(), "first delivery marked redelivered");
    m.reject(true).await?;
    let m2 = get_one(&ctx, &conn, &q.name).await?;
    check_eq!(m2.decode::<String>()?, "again", "redelivered body");
    check!(
        m2.redelivered(),
        "a requeued message must come back with redelivered set"
    );
    m2.ack().await?;
    Ok(())
}

async fn requeue_redelivers(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("requeue"));
    let mut c = consumer(&conn, vec![q.clone()], Some(10)).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!("back"),
    )
    .await?;
    let m = c.recv_timeout(ctx.patience()).await?;
    m.requeue().await?;
    check_eq!(m.state(), kombu::MessageState::Requeued, "state");
    let m2 = c.recv_timeout(ctx.patience()).await?;
    check_eq!(m2.decode::<String>()?, "back", "body");
    check!(m2.redelivered(), "redelivered flag after requeue()");
    m2.ack().await?;
    Ok(())
}

async fn unacked_restored_on_channel_close(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("restore"));
    declare(&conn, &q).await?;
    for i in 0..3 {
        publish_json(
            &conn,
            &Exchange::default_exchange(),
            &q.name,
            serde_json::json!(i),
        )
        .await?;
    }
    let channel = conn.channel().await?;
    let mut held = Vec::new();
    for _ in 0..2 {
        let d = channel
            .get(&q.name, GetOptions::default())
            .await?
            .ok_or("expected a message")?;
        held.push(d);
    }
    channel.close().await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = get_one(&ctx, &conn, &q.name).await?;
        got.push((m.decode::<i32>()?, m.redelivered()));
        m.ack().await?;
    }
    got.sort();
    check_eq!(
        got,
        vec![(0, true), (1, true), (2, false)],
        "(body, redelivered) after close"
    );
    Ok(())
}

async fn unacked_restored_on_connection_close(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("restore-conn"));
    let mut c = consumer(&conn, vec![q.clone()], Some(5)).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!("held"),
    )
    .await?;
    let m = c.recv_timeout(ctx.patience()).await?;
    check_eq!(m.decode::<String>()?, "held", "body");
    conn.close().await?;
    let err = m.ack().await;
    check!(
        err.is_err(),
        "acking after the connection closed must fail, not pretend"
    );
    let conn2 = ctx.conn()?;
    let m2 = get_one(&ctx, &conn2, &q.name).await?;
    check!(m2.redelivered(), "restored message must be marked redelivered");
    m2.ack().await?;
    Ok(())
}

async fn recover_redelivers_unacked(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("recover"));
    let mut c = consumer(&conn, vec![q.clone()], Some(10)).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!("r"),
    )
    .await?;
    let first = c.recv_timeout(ctx.patience()).await?;
    c.recover(true).await?;
    let again = c.recv_timeout(ctx.patience()).await?;
    check!(again.redelivered(), "recovered message must be redelivered");
    again.ack().await?;
    check!(
        first.ack().await.is_err(),
        "the first delivery's tag is gone after recover"
    );
    Ok(())
}

async fn prefetch_bounds_in_flight(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("prefetch"));
    declare(&conn, &q).await?;
    for i in 0..5 {
        publish_json(
            &conn,
            &Exchange::default_exchange(),
            &q.name,
            serde_json::json!(i),
        )
        .await?;
    }
    let mut c = consumer(&conn, vec![q.clone()], Some(2)).await?;
    let a = c.recv_timeout(ctx.patience()).await?;
    let b = c.recv_timeout(ctx.patience()).await?;
    match c.recv_timeout(ctx.quiet_period()).await {
        Err(e) if e.kind() == ErrorKind::Timeout => {}
        Err(e) => return Err(e.into()),
        Ok(m) => {
            return Err(Failure(format!(
                "prefetch=2 but a third message arrived: {}",
                body_text(&m)
            )))
        }
    }
    a.ack().await?;
    let third = c.recv_timeout(ctx.patience()).await?;
    check_eq!(third.decode::<i32>()?, 2, "third message after one ack");
    b.ack().await?;
    third.ack().await?;
    Ok(())
}

async fn double_ack_is_message_state_error(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("dack"));
    declare(&conn, &q).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!(1),
    )
    .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    m.ack().await?;
    expect_error(m.ack().await, ErrorKind::MessageState, "second ack succeeded")?;
    Ok(())
}

async fn reject_after_ack_is_message_state_error(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("rack"));
    declare(&conn, &q).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!(1),
    )
    .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    m.ack().await?;
    expect_error(
        m.reject(true).await,
        ErrorKind::MessageState,
        "reject after ack succeeded",
    )?;
    Ok(())
}

async fn ack_after_requeue_is_message_state_error(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("aareq"));
    declare(&conn, &q).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!(1),
    )
    .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    m.requeue().await?;
    expect_error(
        m.ack().await,
        ErrorKind::MessageState,
        "ack after requeue succeeded",
    )?;
    let again = get_one(&ctx, &conn, &q.name).await?;
    again.ack().await?;
    Ok(())
}

// ---------------------------------------------------------------- queues

async fn get_on_empty_queue_returns_none(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("emptyget"));
    declare(&conn, &q).await?;
    let channel = conn.channel().await?;
    check!(
        channel.get(&q.name, GetOptions::default()).await?.is_none(),
        "get on an empty queue returned a message"
    );
    Ok(())
}

async fn consume_on_empty_queue_times_out(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("emptyconsume"));
    let mut c = consumer(&conn, vec![q], None).await?;
    match c.recv_timeout(ctx.quiet_period()).await {
        Err(e) if e.kind() == ErrorKind::Timeout => Ok(()),
        Err(e) => Err(Failure(format!("expected a timeout error, got {e}"))),
        Ok(m) => Err(Failure(format!("empty queue delivered {}", body_text(&m)))),
    }
}

async fn purge_returns_count(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("purge"));
    declare(&conn, &q).await?;
    for i in 0..3 {
        publish_json(
            &conn,
            &Exchange::default_exchange(),
            &q.name,
            serde_json::json!(i),
        )
        .await?;
    }
    let channel = conn.channel().await?;
    let purged = channel.purge_queue(&q.name).await?;
    check_eq!(purged, 3, "purged count");
    assert_empty(&ctx, &conn, &q.name).await
}

async fn declare_is_idempotent(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::direct(ctx.name("idem"));
    let q = bound(&ctx, "idem", &ex, "k");
    let channel = conn.channel().await?;
    for _ in 0..3 {
        channel.declare_exchange(&ex, DeclareOptions::default()).await?;
        channel.declare_queue(&q, DeclareOptions::default()).await?;
        channel
            .bind_queue(&QueueBinding::new(q.name.clone(), ex.name.clone(), "k"))
            .await?;
    }
    publish_json(&conn, &ex, "k", serde_json::json!("one")).await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    m.ack().await?;
    assert_empty(&ctx, &conn, &q.name).await
}

async fn conflicting_exchange_redeclare_errors(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let name = ctx.name("conflict");
    let channel = conn.channel().await?;
    channel
        .declare_exchange(&Exchange::direct(name.clone()), DeclareOptions::default())
        .await?;
    let kind = if ctx.caps().exchange_fanout {
        Exchange::fanout(name.clone())
    } else {
        Exchange::direct(name.clone()).durable(false)
    };
    let channel = conn.channel().await?;
    expect_error(
        channel.declare_exchange(&kind, DeclareOptions::default()).await,
        ErrorKind::NotEquivalent,
        "redeclaring an exchange differently succeeded",
    )?;
    Ok(())
}

async fn passive_declare_missing_queue_is_not_found(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let channel = conn.channel().await?;
    expect_error(
        channel
            .declare_queue(&Queue::new(ctx.name("ghost")), DeclareOptions::passive())
            .await,
        ErrorKind::NotFound,
        "passive declare of a missing queue succeeded",
    )?;
    Ok(())
}

async fn passive_declare_missing_exchange_is_not_found(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let channel = conn.channel().await?;
    expect_error(
        channel
            .declare_exchange(&Exchange::direct(ctx.name("ghost-ex")), DeclareOptions::passive())
            .await,
        ErrorKind::NotFound,
        "passive declare of a missing exchange succeeded",
    )?;
    Ok(())
}

async fn queue_declare_reports_message_count(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("count"));
    declare(&conn, &q).await?;
    for i in 0..4 {
        publish_json(
            &conn,
            &Exchange::default_exchange(),
            &q.name,
            serde_json::json!(i),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let channel = conn.channel().await?;
    let ok = channel.declare_queue(&q, DeclareOptions::passive()).await?;
    check_eq!(ok.message_count, 4, "message_count");
    check_eq!(ok.queue.as_str(), q.name.as_str(), "queue name");
    Ok(())
}

async fn queue_delete_removes_queue(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("delete"));
    declare(&conn, &q).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!(1),
    )
    .await?;
    let channel = conn.channel().await?;
    channel
        .delete_queue(&q.name, DeleteQueueOptions::default())
        .await?;
    expect_error(
        channel.declare_queue(&q, DeclareOptions::passive()).await,
        ErrorKind::NotFound,
        "deleted queue still exists",
    )?;
    Ok(())
}

async fn queue_delete_if_empty_refuses_nonempty(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("ifempty"));
    declare(&conn, &q).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!(1),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let channel = conn.channel().await?;
    let mut options = DeleteQueueOptions::default();
    options.if_empty = true;
    expect_error(
        channel.delete_queue(&q.name, options).await,
        ErrorKind::PreconditionFailed,
        "if_empty delete of a non-empty queue succeeded",
    )?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    m.ack().await?;
    Ok(())
}

async fn priority_order(ctx: Ctx) -> TestResult {
    let Some(support) = ctx.caps().priority else {
        return Ok(());
    };
    let conn = ctx.conn()?;
    let mut q = Queue::new(ctx.name("prio"));
    if support.requires_max_priority {
        q = q.max_priority(support.max);
    }
    declare(&conn, &q).await?;
    let (low, high) = match support.order {
        PriorityOrder::HigherFirst => (1, support.max.min(8)),
        PriorityOrder::LowerFirst => (support.max.min(8), 0),
    };
    let p = conn.producer();
    for (body, prio) in [("low1", low), ("high", high), ("low2", low)] {
        p.publish(
            &body,
            PublishOptions::new().routing_key(q.name.clone()).priority(prio),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let m = get_one(&ctx, &conn, &q.name).await?;
        order.push(m.decode::<String>()?);
        m.ack().await?;
    }
    check_eq!(
        order,
        vec!["high".to_owned(), "low1".into(), "low2".into()],
        "delivery order"
    );
    Ok(())
}

async fn message_ttl_expires(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("ttl"));
    declare(&conn, &q).await?;
    let p = conn.producer();
    p.publish(
        &"short",
        PublishOptions::new()
            .routing_key(q.name.clone())
            .expiration(Duration::from_millis(100)),
    )
    .await?;
    p.publish(&"keeps", PublishOptions::new().routing_key(q.name.clone()))
        .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let m = get_one(&ctx, &conn, &q.name).await?;
    check_eq!(m.decode::<String>()?, "keeps", "the unexpired message");
    m.ack().await?;
    assert_empty(&ctx, &conn, &q.name).await
}

async fn queue_message_ttl_expires(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("qttl")).message_ttl(Duration::from_millis(100));
    declare(&conn, &q).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!("gone"),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_empty(&ctx, &conn, &q.name).await
}

async fn max_length_drops_oldest(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("maxlen")).max_length(2);
    declare(&conn, &q).await?;
    for i in 0..5 {
        publish_json(
            &conn,
            &Exchange::default_exchange(),
            &q.name,
            serde_json::json!(i),
        )
        .await?;
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = get_one(&ctx, &conn, &q.name).await?;
        got.push(m.decode::<i32>()?);
        m.ack().await?;
    }
    check_eq!(got, vec![3, 4], "the newest messages are kept");
    assert_empty(&ctx, &conn, &q.name).await
}

async fn fifo_order_per_queue(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("fifo"));
    declare(&conn, &q).await?;
    let p = conn.producer();
    for i in 0..200 {
        p.publish(&i, PublishOptions::new().routing_key(q.name.clone()))
            .await?;
    }
    let mut c = consumer(&conn, vec![q], Some(50)).await?;
    for expected in 0..200 {
        let m = c.recv_timeout(ctx.patience()).await?;
        check_eq!(m.decode::<i32>()?, expected, "FIFO position");
        m.ack().await?;
    }
    Ok(())
}

async fn many_queues_served_fairly(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let queues: Vec<Queue> = (0..3)
        .map(|i| Queue::new(ctx.name(&format!("fair{i}"))))
        .collect();
    for q in &queues {
        declare(&conn, q).await?;
    }
    let p = conn.producer();
    for (i, q) in queues.iter().enumerate() {
        for n in 0..30 {
            p.publish(&(i, n), PublishOptions::new().routing_key(q.name.clone()))
                .await?;
        }
    }
    let mut c = consumer(&conn, queues.clone(), Some(3)).await?;
    let mut seen = [0usize; 3];
    for _ in 0..30 {
        let m = c.recv_timeout(ctx.patience()).await?;
        let (i, _): (usize, usize) = m.decode()?;
        seen[i] += 1;
        m.ack().await?;
    }
    check!(
        seen.iter().all(|&n| n >= 5),
        "30 messages from 3 full queues should be shared fairly, got {seen:?}"
    );
    Ok(())
}

async fn competing_consumers_get_each_message_once(ctx: Ctx) -> TestResult {
    let q = Queue::new(ctx.name("compete"));
    let producer_conn = ctx.conn()?;
    declare(&producer_conn, &q).await?;
    const N: usize = 400;
    let mut handles = Vec::new();
    // Both consumers subscribe before the first publish: otherwise a fast consumer can drain
    // the queue before the other exists, and "both get work" would test the scheduler.
    let subscribed = Arc::new(tokio::sync::Barrier::new(3));
    // Level-triggered, so a consumer busy acking when the test ends still sees it.
    let (stop, _) = tokio::sync::watch::channel(false);
    for _ in 0..2 {
        let conn = ctx.conn()?;
        let q = q.clone();
        let patience = ctx.patience();
        let mut stopped = stop.subscribe();
        let subscribed = subscribed.clone();
        handles.push(tokio::spawn(async move {
            let consumed = consumer(&conn, vec![q], Some(5)).await;
            subscribed.wait().await;
            let mut c = consumed?;
            let mut got = Vec::new();
            loop {
                tokio::select! {
                    _ = async { stopped.wait_for(|&stop| stop).await.is_ok() } => break,
                    r = c.recv_timeout(patience) => {
                        let m = r?;
                        got.push(m.decode::<usize>()?);
                        m.ack().await?;
                        tokio::task::yield_now().await;
                    }
                }
            }
            conn.close().await?;
            Ok::<_, Failure>(got)
        }));
    }
    subscribed.wait().await;
    let p = producer_conn.producer();
    for i in 0..N {
        p.publish(&i, PublishOptions::new().routing_key(q.name.clone()))
            .await?;
    }
    let deadline = tokio::time::Instant::now() + ctx.patience();
    loop {
        let channel = producer_conn.channel().await?;
        let left = channel
            .declare_queue(&q, DeclareOptions::passive())
            .await?
            .message_count;
        if left == 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(ctx.quiet_period()).await;
    stop.send_replace(true);
    let mut all = Vec::new();
    let mut per_consumer = Vec::new();
    for h in handles {
        let got = h
            .await
            .map_err(|e| Failure(format!("consumer task failed: {e}")))??;
        per_consumer.push(got.len());
        all.extend(got);
    }
    let unique: HashSet<usize> = all.iter().copied().collect();
    check_eq!(
        all.len(),
        N,
        "messages received in total (duplicates count twice)"
    );
    check_eq!(unique.len(), N, "distinct messages received");
    check!(
        per_consumer.iter().all(|&n| n > 0),
        "both consumers should get work, got {per_consumer:?}"
    );
    Ok(())
}

async fn ten_thousand_from_ten_producers(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("10k"));
    declare(&conn, &q).await?;
    let mut c = consumer(&conn, vec![q.clone()], Some(100)).await?;
    let mut producers = Vec::new();
    for p in 0..10u32 {
        let conn = ctx.conn()?;
        let q = q.name.clone();
        producers.push(tokio::spawn(async move {
            let producer = conn.producer();
            for i in 0..1000u32 {
                producer
                    .publish(&(p, i), PublishOptions::new().routing_key(q.clone()))
                    .await?;
            }
            Ok::<_, kombu::Error>(())
        }));
    }
    let mut seen = HashSet::new();
    for _ in 0..10_000 {
        let m = c.recv_timeout(ctx.patience()).await?;
        let id: (u32, u32) = m.decode()?;
        check!(seen.insert(id), "duplicate delivery of {id:?}");
        m.ack().await?;
    }
    for p in producers {
        p.await
            .map_err(|e| Failure(format!("producer task failed: {e}")))??;
    }
    check_eq!(seen.len(), 10_000, "distinct messages");
    match c.recv_timeout(ctx.quiet_period()).await {
        Err(e) if e.kind() == ErrorKind::Timeout => Ok(()),
        Err(e) => Err(e.into()),
        Ok(m) => Err(Failure(format!("unexpected extra message {}", body_text(&m)))),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    id: u32,
    name: String,
    tags: Vec<String>,
    ratio: f64,
}

async fn serializer_compression_matrix(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("matrix"));
    declare(&conn, &q).await?;
    let sample = Sample {
        id: 42,
        name: "ünïcode".into(),
        tags: vec!["a".into(), "b".into()],
        ratio: 0.5,
    };
    let compressions = [
        None,
        Some("zlib"),
        Some("bzip2"),
        Some("xz"),
        Some("brotli"),
        Some("zstd"),
    ];
    let p = conn.producer();
    let mut c = consumer(&conn, vec![q.clone()], Some(20)).await?;
    for serializer in ["json", "msgpack", "yaml"] {
        for compression in compressions {
            let mut opts = PublishOptions::new()
                .routing_key(q.name.clone())
                .serializer(serializer);
            if let Some(comp) = compression {
                opts = opts.compression(comp);
            }
            p.publish(&sample, opts).await?;
            let m = c.recv_timeout(ctx.patience()).await?;
            let what = format!("{serializer} × {}", compression.unwrap_or("none"));
            check_eq!(m.decode::<Sample>()?, sample, "{what}");
            check_eq!(
                m.compression().is_some(),
                compression.is_some(),
                "{what}: compression header present"
            );
            m.ack().await?;
        }
    }
    for compression in compressions {
        let mut opts = PublishOptions::new().routing_key(q.name.clone());
        if let Some(comp) = compression {
            opts = opts.compression(comp);
        }
        p.publish_text("plain text ✓", opts.clone()).await?;
        let m = c.recv_timeout(ctx.patience()).await?;
        check_eq!(m.decode::<String>()?, "plain text ✓", "text × {compression:?}");
        m.ack().await?;
        p.publish_bytes(vec![0u8, 255, 7], opts).await?;
        let m = c.recv_timeout(ctx.patience()).await?;
        check_eq!(&m.payload()?[..], &[0u8, 255, 7][..], "raw × {compression:?}");
        m.ack().await?;
    }
    Ok(())
}

async fn disallowed_content_type_rejected_and_kept(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("disallowed"));
    declare(&conn, &q).await?;
    conn.producer()
        .publish(
            &serde_json::json!({"x": 1}),
            PublishOptions::new()
                .routing_key(q.name.clone())
                .serializer("yaml"),
        )
        .await?;
    let mut strict = conn.consumer([q.clone()]).accept(["json"]).build().await?;
    strict.consume().await?;
    let m = strict.recv_timeout(ctx.patience()).await?;
    expect_error(
        m.decode::<serde_json::Value>(),
        ErrorKind::ContentDisallowed,
        "yaml decoded although only json is accepted",
    )?;
    m.requeue().await?;
    strict.close().await?;
    let mut lenient = conn.consumer([q]).accept(["yaml"]).build().await?;
    lenient.consume().await?;
    let m = lenient.recv_timeout(ctx.patience()).await?;
    check_eq!(
        m.decode::<serde_json::Value>()?,
        serde_json::json!({"x": 1}),
        "body kept"
    );
    m.ack().await?;
    Ok(())
}

async fn kombu_json_type_tags_decode(ctx: Ctx) -> TestResult {
    #[derive(Deserialize)]
    struct Task {
        eta: String,
        id: uuid::Uuid,
        amount: String,
    }
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("tags"));
    declare(&conn, &q).await?;
    // Exactly what Python Kombu's JSON encoder writes for datetime, UUID and Decimal.
    let python = r#"{"eta": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05+00:00"}, "id": {"__type__": "uuid", "__value__": {"hex": "0123456789abcdef0123456789abcdef"}}, "amount": {"__type__": "decimal", "__value__": "10.50"}}"#;
    conn.producer()
        .publish_bytes(
            python.as_bytes().to_vec(),
            PublishOptions::new()
                .routing_key(q.name.clone())
                .content_type("application/json")
                .content_encoding("utf-8"),
        )
        .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    let task: Task = m.decode()?;
    check_eq!(task.eta.as_str(), "2024-01-02T03:04:05+00:00", "datetime");
    check_eq!(
        task.id.simple().to_string(),
        "0123456789abcdef0123456789abcdef",
        "uuid"
    );
    check_eq!(task.amount.as_str(), "10.50", "decimal");
    m.ack().await?;
    Ok(())
}

async fn simple_queue_put_get(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let sq = conn.simple_queue(&ctx.name("simple"));
    for i in 0..3 {
        sq.put(&serde_json::json!({"i": i})).await?;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    check_eq!(sq.qsize().await?, 3, "qsize");
    let m = sq.get(Some(ctx.patience())).await?;
    check_eq!(
        m.decode::<serde_json::Value>()?,
        serde_json::json!({"i": 0}),
        "first"
    );
    m.ack().await?;
    check_eq!(sq.clear().await?, 2, "cleared");
    match sq.get(Some(ctx.quiet_period())).await {
        Err(e) if e.kind() == ErrorKind::Timeout => {}
        Err(e) => return Err(e.into()),
        Ok(m) => return Err(Failure(format!("empty SimpleQueue returned {}", body_text(&m)))),
    }
    check!(sq.get_nowait().await?.is_none(), "get_nowait on an empty queue");
    sq.close().await?;
    Ok(())
}

async fn simple_buffer_put_get(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let sb = conn.simple_buffer(&ctx.name("buffer"));
    sb.put(&"event").await?;
    let m = sb.get(Some(ctx.patience())).await?;
    check_eq!(m.decode::<String>()?, "event", "body");
    check!(m.delivery().ack.is_none(), "SimpleBuffer deliveries need no ack");
    m.ack().await?;
    check!(sb.get_nowait().await?.is_none(), "message consumed");
    Ok(())
}

async fn cancel_stops_deliveries(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("cancel"));
    let mut c = consumer(&conn, vec![q.clone()], Some(10)).await?;
    check!(c.consuming_from(&q.name), "consuming_from after consume");
    c.cancel().await?;
    check!(!c.consuming_from(&q.name), "consuming_from after cancel");
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!("kept"),
    )
    .await?;
    tokio::time::sleep(ctx.quiet_period()).await;
    check!(c.recv().await.is_none(), "a cancelled consumer yields nothing");
    let m = get_one(&ctx, &conn, &q.name).await?;
    check_eq!(m.decode::<String>()?, "kept", "message stays queued after cancel");
    m.ack().await?;
    Ok(())
}

async fn no_ack_consumer_settles_on_delivery(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("noack"));
    declare(&conn, &q).await?;
    let mut c = conn.consumer([q.clone()]).no_ack(true).build().await?;
    c.consume().await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!("fire"),
    )
    .await?;
    let m = c.recv_timeout(ctx.patience()).await?;
    check!(
        m.delivery().ack.is_none(),
        "no_ack delivery carries no ack handle"
    );
    c.close().await?;
    let conn2 = ctx.conn()?;
    assert_empty(&ctx, &conn2, &q.name).await
}

async fn nack_redelivery_until_ack(ctx: Ctx) -> TestResult {
    // Watermill's "resend on nack": a consumer that keeps requeueing sees the message again
    // and again, and it is gone only once acked.
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("nack"));
    let mut c = consumer(&conn, vec![q.clone()], Some(1)).await?;
    publish_json(
        &conn,
        &Exchange::default_exchange(),
        &q.name,
        serde_json::json!("retry me"),
    )
    .await?;
    for attempt in 0..3 {
        let m = c.recv_timeout(ctx.patience()).await?;
        check_eq!(m.redelivered(), attempt > 0, "redelivered on attempt {attempt}");
        m.requeue().await?;
    }
    let m = c.recv_timeout(ctx.patience()).await?;
    m.ack().await?;
    match c.recv_timeout(ctx.quiet_period()).await {
        Err(e) if e.kind() == ErrorKind::Timeout => Ok(()),
        Err(e) => Err(e.into()),
        Ok(m) => Err(Failure(format!("acked message came back: {}", body_text(&m)))),
    }
}

async fn oversized_message_is_limit_exceeded(ctx: Ctx) -> TestResult {
    let Some(limit) = ctx.caps().max_message_size else {
        return Ok(());
    };
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("huge"));
    declare(&conn, &q).await?;
    let body = vec![b'x'; (limit + 1) as usize];
    expect_error(
        conn.producer()
            .publish_bytes(body, PublishOptions::new().routing_key(q.name.clone()))
            .await,
        ErrorKind::LimitExceeded,
        "oversized publish succeeded",
    )?;
    assert_empty(&ctx, &conn, &q.name).await
}

async fn closed_channel_operations_fail(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let channel = conn.channel().await?;
    channel.close().await?;
    check!(!channel.is_open(), "channel reports open after close");
    expect_error(
        channel.get(&ctx.name("closed"), GetOptions::default()).await,
        ErrorKind::Closed,
        "get on a closed channel succeeded",
    )?;
    Ok(())
}

async fn unknown_scheme_is_a_clear_error(_ctx: Ctx) -> TestResult {
    let conn = Connection::new("gopher://localhost:70/")?;
    let err = expect_error(
        conn.channel().await,
        ErrorKind::UnknownTransport,
        "connected to gopher://",
    )?;
    check!(
        err.to_string().contains("available"),
        "the error lists available schemes: {err}"
    );
    expect_error(
        Connection::new("not a url"),
        ErrorKind::InvalidUrl,
        "parsed 'not a url'",
    )?;
    Ok(())
}
