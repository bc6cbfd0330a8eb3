//! The behaviours. Each is small, isolated by unique names, and asserts what it promises.
//!
//! Rules every behaviour follows:
//!
//! * A failure asserts its [`ErrorKind`], the same on every transport.
//! * A "nothing arrives" check has a positive control: after what must not arrive, a message
//!   that the same route must deliver ([`only_control`]); a transport that drops everything
//!   fails it.
//! * No fixed sleep before an exact count: wait until the condition holds, with a deadline
//!   ([`wait_for_count`], [`get_one`]). The only fixed waits are a message TTL running out,
//!   and a quiet period where absence cannot be shown otherwise (a prefetch limit holding, or
//!   a transport without FIFO order after its control).
//! * Assumptions of FIFO order, exactly-once delivery and exact counts are gated by
//!   capabilities.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kombu::transport::{
    Channel, DeclareOptions, DeleteQueueOptions, Delivery, ExchangeBinding, GetOptions, QueueBinding,
};
use kombu::{
    Binding, Capabilities, Connection, Consumer, ErrorKind, Exchange, ExchangeType, Message, PriorityOrder,
    PublishOptions, Queue, Value,
};
use serde::{Deserialize, Serialize};

use crate::child::Task;
use crate::harness::{Behaviour, BoxTest, Ctx, Failure, TestResult};
use crate::{check, check_eq};

mod trace;
mod worker;
use trace::trace_context_crosses_the_transport;
use worker::{
    worker_parks_poison_and_handles_the_rest, worker_retries_a_failed_handler,
    worker_stop_gives_back_held_messages,
};

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
    direct: |c: &Capabilities| c.exchange_direct => "transport does not support direct exchanges";
    topic: |c: &Capabilities| c.exchange_topic => "transport does not support topic exchanges";
    topic_once: |c: &Capabilities| c.exchange_topic && c.exactly_once_delivery
        => "transport does not support topic exchanges, or may deliver a message twice";
    fanout: |c: &Capabilities| c.exchange_fanout => "transport does not support fanout exchanges";
    headers: |c: &Capabilities| c.exchange_headers => "transport does not support headers exchanges";
    exchange_to_exchange: |c: &Capabilities| c.exchange_to_exchange && c.exchange_topic
        => "transport does not support exchange-to-exchange bindings";
    priority: |c: &Capabilities| c.priority.is_some() => "transport does not support priorities";
    ttl: |c: &Capabilities| c.message_ttl => "transport does not support message TTL";
    max_length: |c: &Capabilities| c.max_length && c.fifo_order
        => "transport does not support x-max-length, or has no FIFO order to tell the oldest";
    restore_on_close: |c: &Capabilities| c.restore_unacked_on_close
        => "transport does not restore unacked messages on close";
    recover: |c: &Capabilities| c.recover => "transport does not support recover";
    size_limit: |c: &Capabilities| c.max_message_size.is_some() => "transport has no message size limit";
    exchanges_checked: |c: &Capabilities| !c.persistent_bindings || c.publisher_confirms
        => "transport stores bindings on the broker and has no publisher confirms: an exchange undeclared here routes over them, as in Kombu";
    fifo: |c: &Capabilities| c.fifo_order => "transport does not deliver in publish order";
    exactly_once: |c: &Capabilities| c.exactly_once_delivery
        => "transport may deliver a message more than once";
    exact_counts: |c: &Capabilities| c.exact_counts => "transport reports approximate message counts";
    shared_routing: |c: &Capabilities| c.shared_routing && c.exchange_direct
        => "routing declared on one connection does not serve another";
    cross_process: |c: &Capabilities| c.cross_process => "transport does not reach other processes";
    persistent_bindings: |c: &Capabilities| c.persistent_bindings && c.cross_process && c.exchange_direct
        => "transport does not store bindings on the broker for other processes";
    held_past_deadline: |c: &Capabilities| c.extend_visibility && c.crash_safe_acks
        => "transport does not renew the deadlines of the messages its consumers hold";
    crash_safe: |c: &Capabilities| c.crash_safe_acks && c.cross_process
        => "a message taken by a consumer that dies is not delivered again (or not across processes)";
    dead_lettering: |c: &Capabilities| c.dead_lettering && c.exchange_direct
        => "transport does not support dead-letter exchanges";
    queue_expiry: |c: &Capabilities| c.queue_expiry => "transport does not support x-expires";
    confirms: |c: &Capabilities| c.publisher_confirms && c.exact_counts
        => "this connection does not use publisher confirms";
    something_unsupported: |c: &Capabilities| !(c.exchange_direct && c.exchange_topic
        && c.exchange_fanout && c.exchange_headers && c.exchange_to_exchange)
        => "transport supports every exchange type and exchange-to-exchange bindings";
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
    roundtrip_json_with_headers_and_properties: direct;
    roundtrip_unicode_text: always;
    roundtrip_binary_body: always;
    roundtrip_empty_body: always;
    roundtrip_one_mebibyte: one_mib;
    delivery_tags_unique_per_publish: always;
    default_exchange_routes_by_queue_name: always;
    direct_routing_by_key: direct;
    direct_unknown_key_is_dropped: direct;
    publish_to_exchange_without_queues_succeeds: topic;
    publish_to_undeclared_exchange_is_not_found: exchanges_checked;
    topic_star_and_hash: topic;
    topic_kombu_test_table: topic;
    topic_hash_matches_zero_words: topic;
    fanout_delivers_to_every_queue: fanout;
    headers_exchange_all_and_any: headers;
    exchange_to_exchange_binding_routes_on: exchange_to_exchange;
    unsupported_features_are_unsupported_errors: something_unsupported;
    overlapping_bindings_deliver_once: topic_once;
    multiple_bindings_per_queue: direct;
    unbind_stops_routing: direct;
    routing_shared_across_connections: shared_routing;
    messages_cross_processes: cross_process;
    bindings_persist_across_processes: persistent_bindings;
    ack_removes_message: always;
    reject_without_requeue_drops: always;
    reject_with_requeue_redelivers: always;
    requeue_redelivers: always;
    unacked_restored_on_channel_close: restore_on_close;
    unacked_restored_on_connection_close: restore_on_close;
    consumer_crash_redelivers: crash_safe;
    held_message_outlives_the_visibility_timeout: held_past_deadline;
    recover_redelivers_unacked: recover;
    prefetch_bounds_in_flight: always;
    unknown_delivery_tag_is_precondition_failed: always;
    double_ack_is_message_state_error: always;
    reject_after_ack_is_message_state_error: always;
    ack_after_requeue_is_message_state_error: always;
    get_on_empty_queue_returns_none: always;
    consume_on_empty_queue_times_out: always;
    purge_returns_count: exact_counts;
    declare_is_idempotent: direct;
    conflicting_exchange_redeclare_errors: always;
    passive_declare_missing_queue_is_not_found: always;
    passive_declare_missing_exchange_is_not_found: always;
    queue_declare_reports_message_count: exact_counts;
    confirmed_publish_is_counted_on_return: confirms;
    queue_delete_removes_queue: always;
    queue_delete_if_empty_refuses_nonempty: always;
    queue_expires_when_unused: queue_expiry;
    priority_order: priority;
    message_ttl_expires: ttl;
    queue_message_ttl_expires: ttl;
    max_length_drops_oldest: max_length;
    dead_letter_on_reject: dead_lettering;
    fifo_order_per_queue: fifo;
    batch_publish_delivers_each_message: always;
    batch_reports_each_message_outcome: exchanges_checked;
    batch_with_an_oversized_message: size_limit;
    many_queues_served_fairly: always;
    competing_consumers_get_each_message_once: exactly_once;
    ten_thousand_from_ten_producers: exactly_once;
    serializer_compression_matrix: always;
    disallowed_content_type_rejected_and_kept: always;
    kombu_json_type_tags_decode: always;
    simple_queue_put_get: always;
    simple_buffer_put_get: always;
    cancel_stops_deliveries: always;
    consume_cancel_cycles_keep_the_connection: always;
    no_ack_consumer_settles_on_delivery: always;
    nack_redelivery_until_ack: always;
    oversized_message_is_limit_exceeded: size_limit;
    closed_channel_operations_fail: always;
    unknown_scheme_is_a_clear_error: always;
    worker_parks_poison_and_handles_the_rest: always;
    worker_retries_a_failed_handler: always;
    worker_stop_gives_back_held_messages: restore_on_close;
    trace_context_crosses_the_transport: always;
}

// ---------------------------------------------------------------- helpers

/// The body of every positive control message.
const CONTROL: &str = "positive control";

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

/// Publish `body` to `queue` through the default exchange.
async fn publish_to(conn: &Connection, queue: &str, body: serde_json::Value) -> TestResult {
    publish_json(conn, &Exchange::default_exchange(), queue, body).await
}

/// Take one delivery from `queue` on `channel` with `get`, waiting up to `patience` for it to
/// appear.
async fn get_delivery(ctx: &Ctx, channel: &dyn Channel, queue: &str) -> Result<Delivery, Failure> {
    let deadline = tokio::time::Instant::now() + ctx.patience();
    loop {
        if let Some(d) = channel.get(queue, GetOptions::default()).await? {
            return Ok(d);
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

/// Take one message with `get`, waiting up to `patience` for it to appear.
async fn get_one(ctx: &Ctx, conn: &Connection, queue: &str) -> Result<Message, Failure> {
    let channel = conn.default_channel().await?;
    let d = get_delivery(ctx, channel.as_ref(), queue).await?;
    Ok(Message::new(d, Arc::new(kombu::Accept::any())))
}

/// Settle a raw delivery with an ack (nothing to do for a no-ack one).
async fn ack_delivery(d: &Delivery) -> TestResult {
    if let Some(h) = &d.ack {
        h.acknowledger.ack(h.tag).await?;
    }
    Ok(())
}

fn json_of(d: &Delivery) -> serde_json::Value {
    serde_json::from_slice(&d.message.body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&d.message.body).into_owned()))
}

/// The messages (JSON bodies) that reach `queue` before the positive control, which the
/// caller has just published through the route under test: a message that route must
/// deliver. If the control never arrives the transport lost it — a transport that silently
/// drops everything fails here instead of passing every "nothing arrives" check.
///
/// With FIFO order, whatever was routed to `queue` before the control arrives before it, so
/// no quiet period is needed; without, the queue is watched for the quiet period after the
/// control as well. Everything taken is acked.
async fn drain_to_control(
    ctx: &Ctx,
    conn: &Connection,
    queue: &str,
) -> Result<Vec<serde_json::Value>, Failure> {
    let channel = conn.default_channel().await?;
    let control = serde_json::Value::from(CONTROL);
    let deadline = tokio::time::Instant::now() + ctx.patience();
    let mut before = Vec::new();
    loop {
        match channel.get(queue, GetOptions::default()).await? {
            Some(d) => {
                ack_delivery(&d).await?;
                let body = json_of(&d);
                if body == control {
                    break;
                }
                before.push(body);
            }
            None if tokio::time::Instant::now() >= deadline => {
                return Err(Failure(format!(
                    "the positive control never reached queue {queue} within {:?} (got {before:?} before giving up): \
                     the transport lost a message this route must deliver",
                    ctx.patience()
                )));
            }
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    if !ctx.caps().fifo_order {
        tokio::time::sleep(ctx.quiet_period()).await;
    }
    while let Some(d) = channel.get(queue, GetOptions::default()).await? {
        ack_delivery(&d).await?;
        let body = json_of(&d);
        if body == control {
            check!(
                !ctx.caps().exactly_once_delivery,
                "the positive control was delivered twice to queue {queue}"
            );
            continue;
        }
        before.push(body);
    }
    Ok(before)
}

/// The negative half of a routing check, with its positive control: publish the control to
/// `exchange` with `key` (a route that must reach `queue`); nothing else may be in `queue`.
async fn only_control(
    ctx: &Ctx,
    conn: &Connection,
    exchange: &Exchange,
    key: &str,
    queue: &str,
) -> TestResult {
    publish_json(conn, exchange, key, serde_json::json!(CONTROL)).await?;
    let got = drain_to_control(ctx, conn, queue).await?;
    check!(
        got.is_empty(),
        "queue {queue} should have received nothing but the positive control, got {got:?}"
    );
    Ok(())
}

/// [`only_control`] through the default exchange.
async fn only_control_direct(ctx: &Ctx, conn: &Connection, queue: &str) -> TestResult {
    only_control(ctx, conn, &Exchange::default_exchange(), queue, queue).await
}

/// Publish the positive control to `queue` and expect `c` (consuming it) to receive it next.
async fn consumer_gets_control(ctx: &Ctx, conn: &Connection, c: &mut Consumer, queue: &str) -> TestResult {
    publish_to(conn, queue, serde_json::json!(CONTROL)).await?;
    let m = c.recv_timeout(ctx.patience()).await.map_err(|e| {
        Failure(format!(
            "the positive control never reached the consumer of {queue}: {e}"
        ))
    })?;
    let body = m.decode::<serde_json::Value>()?;
    m.ack().await?;
    check_eq!(
        body,
        serde_json::json!(CONTROL),
        "the next message after the checked ones"
    );
    Ok(())
}

/// Wait until the message count `queue` reports satisfies `ok` (`what` describes it), within
/// `patience`; the count.
async fn wait_for_count(
    ctx: &Ctx,
    conn: &Connection,
    queue: &Queue,
    what: &str,
    ok: impl Fn(u64) -> bool,
) -> Result<u64, Failure> {
    let channel = conn.channel().await?;
    let deadline = tokio::time::Instant::now() + ctx.patience();
    loop {
        let count = channel
            .declare_queue(queue, DeclareOptions::passive())
            .await?
            .message_count;
        if ok(count) {
            return Ok(count);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure(format!(
                "queue {} should report {what} within {:?}, still reports {count}",
                queue.name,
                ctx.patience()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

/// `got` in the order that can be asserted: as received with FIFO order, else sorted.
fn in_checkable_order<T: Ord>(ctx: &Ctx, mut got: Vec<T>) -> Vec<T> {
    if !ctx.caps().fifo_order {
        got.sort();
    }
    got
}

/// Run `task` in a second process (the test binary started again).
async fn second_process(ctx: &Ctx, task: Task) -> Result<String, Failure> {
    let exe = ctx.child_exe().ok_or(
        "this behaviour starts the test binary again as a second process: run the suite from \
         a harness = false test target with conformance_main! (Suite::run)",
    )?;
    crate::child::run(exe, &task).await.map_err(Failure)
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
    check_eq!(info.exchange(), ex.name.as_str(), "delivery_info.exchange");
    check_eq!(info.routing_key(), "rk", "delivery_info.routing_key");
    check!(
        !info.redelivered(),
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
    check_eq!(m.delivery_info().exchange(), "", "exchange");
    check_eq!(m.delivery_info().routing_key(), q.name.as_str(), "routing_key");
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
    for (q, key) in [(&qa, "a"), (&qb, "b")] {
        publish_json(&conn, &ex, key, serde_json::json!(CONTROL)).await?;
        let got = drain_to_control(&ctx, &conn, &q.name).await?;
        check_eq!(
            got,
            vec![serde_json::json!(format!("for {key}"))],
            "queue bound with {key}"
        );
    }
    Ok(())
}

async fn direct_unknown_key_is_dropped(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::direct(ctx.name("dropped"));
    let qa = bound(&ctx, "dropped-a", &ex, "a");
    declare(&conn, &qa).await?;
    publish_json(&conn, &ex, "nobody", serde_json::json!("lost")).await?;
    only_control(&ctx, &conn, &ex, "a", &qa.name).await
}

async fn publish_to_exchange_without_queues_succeeds(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::topic(ctx.name("lonely"));
    publish_json(&conn, &ex, "any.key", serde_json::json!({})).await?;
    // The exchange still works: a queue bound afterwards gets what is published next.
    let q = bound(&ctx, "lonely", &ex, "any.#");
    declare(&conn, &q).await?;
    only_control(&ctx, &conn, &ex, "any.key", &q.name).await
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
    for (label, qname) in &queues {
        // The control goes through the default exchange, after every case.
        publish_to(&conn, qname, serde_json::json!(CONTROL)).await?;
        let got: Vec<usize> = drain_to_control(ctx, &conn, qname)
            .await?
            .into_iter()
            .map(|v| v.as_u64().map_or(usize::MAX, |n| n as usize))
            .collect();
        let got = in_checkable_order(ctx, got);
        let want: Vec<usize> = cases
            .iter()
            .enumerate()
            .filter(|(_, (_, exp))| exp.contains(label))
            .map(|(i, _)| i)
            .collect();
        let keys = |ix: &[usize]| {
            ix.iter()
                .map(|i| cases.get(*i).map_or("?", |c| c.0))
                .collect::<Vec<_>>()
        };
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
    publish_json(&conn, &front, "orders.created", serde_json::json!(CONTROL)).await?;
    let got = drain_to_control(&ctx, &conn, &q.name).await?;
    check_eq!(
        got,
        vec![serde_json::json!("via front")],
        "bodies routed through both exchanges"
    );
    channel.unbind_exchange(&binding).await?;
    publish_json(&conn, &front, "orders.created", serde_json::json!("after unbind")).await?;
    // The queue's own binding still delivers.
    only_control(&ctx, &conn, &back, "orders.created", &q.name).await
}

async fn unsupported_features_are_unsupported_errors(ctx: Ctx) -> TestResult {
    // A capability flag that is off is an `Unsupported` error, never a silent no-op.
    let conn = ctx.conn()?;
    let channel = conn.channel().await?;
    let caps = *ctx.caps();
    for kind in [
        ExchangeType::Direct,
        ExchangeType::Topic,
        ExchangeType::Fanout,
        ExchangeType::Headers,
    ] {
        let ex = Exchange::new(ctx.name(&format!("unsupported-{kind}")), kind);
        let declared = channel.declare_exchange(&ex, DeclareOptions::default()).await;
        if caps.supports_exchange_type(kind) {
            declared?;
        } else {
            expect_error(
                declared,
                ErrorKind::Unsupported,
                &format!("declaring a {kind} exchange succeeded, but the capabilities say it is unsupported"),
            )?;
        }
    }
    if !caps.exchange_to_exchange {
        let binding = ExchangeBinding::new(ctx.name("e2e-dest"), ctx.name("e2e-src"), "#");
        expect_error(
            channel.bind_exchange(&binding).await,
            ErrorKind::Unsupported,
            "an exchange-to-exchange binding succeeded, but the capabilities say it is unsupported",
        )?;
    }
    Ok(())
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
    let both = || {
        PublishOptions::new()
            .header("format", "pdf")
            .header("type", "report")
    };
    p.publish(&"both", both()).await?;
    p.publish(&"one", PublishOptions::new().header("format", "pdf"))
        .await?;
    p.publish(&"none", PublishOptions::new().header("format", "zip"))
        .await?;
    // Matches both bindings: the positive control of each queue.
    p.publish(&CONTROL, both()).await?;
    let got = drain_to_control(&ctx, &conn, &all.name).await?;
    check_eq!(got, vec![serde_json::json!("both")], "x-match=all");
    let got = in_checkable_order(
        &ctx,
        drain_to_control(&ctx, &conn, &any.name)
            .await?
            .into_iter()
            .map(|v| v.to_string())
            .collect(),
    );
    check_eq!(
        got,
        vec!["\"both\"".to_owned(), "\"one\"".to_owned()],
        "x-match=any"
    );
    Ok(())
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
    publish_json(&conn, &ex, "a.b", serde_json::json!(CONTROL)).await?;
    let got = drain_to_control(&ctx, &conn, &q.name).await?;
    check_eq!(got, vec![serde_json::json!("once")], "copies delivered");
    Ok(())
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
    publish_json(&conn, &ex, "red", serde_json::json!(CONTROL)).await?;
    let mut got: Vec<String> = drain_to_control(&ctx, &conn, &q.name)
        .await?
        .into_iter()
        .map(|v| v.to_string())
        .collect();
    got.sort();
    check_eq!(
        got,
        vec!["\"b\"".to_owned(), "\"r\"".to_owned()],
        "messages via both bindings, none via an unbound key"
    );
    Ok(())
}

async fn unbind_stops_routing(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::direct(ctx.name("unbind"));
    let q = bound(&ctx, "unbind", &ex, "k");
    declare(&conn, &q).await?;
    // Positive control: the binding delivers before it is removed.
    publish_json(&conn, &ex, "k", serde_json::json!(CONTROL)).await?;
    check!(
        drain_to_control(&ctx, &conn, &q.name).await?.is_empty(),
        "nothing but the control was published"
    );
    let channel = conn.channel().await?;
    channel
        .unbind_queue(&QueueBinding::new(q.name.clone(), ex.name.clone(), "k"))
        .await?;
    publish_json(&conn, &ex, "k", serde_json::json!("after unbind")).await?;
    only_control_direct(&ctx, &conn, &q.name).await
}

async fn routing_shared_across_connections(ctx: Ctx) -> TestResult {
    let declaring = ctx.conn()?;
    let ex = Exchange::direct(ctx.name("shared"));
    let q = bound(&ctx, "shared", &ex, "k");
    declare(&declaring, &q).await?;
    // Another connection publishes to the exchange without declaring anything.
    let publishing = ctx.conn()?;
    let producer = publishing.producer().exchange(ex.clone()).auto_declare(false);
    producer
        .publish(&"elsewhere", PublishOptions::new().routing_key("nobody"))
        .await?;
    producer
        .publish(&"routed", PublishOptions::new().routing_key("k"))
        .await?;
    producer
        .publish(&CONTROL, PublishOptions::new().routing_key("k"))
        .await?;
    let got = drain_to_control(&ctx, &declaring, &q.name).await?;
    check_eq!(
        got,
        vec![serde_json::json!("routed")],
        "messages routed by another connection's binding"
    );
    publishing.close().await?;
    declaring.close().await?;
    Ok(())
}

async fn messages_cross_processes(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("xproc"));
    declare(&conn, &q).await?;
    second_process(
        &ctx,
        Task::Publish {
            url: ctx.url().to_owned(),
            options: BTreeMap::new(),
            exchange: String::new(),
            kind: "direct".into(),
            messages: vec![(q.name.clone(), serde_json::json!("from another process"))],
        },
    )
    .await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    check_eq!(
        m.decode::<String>()?,
        "from another process",
        "body published by the second process"
    );
    m.ack().await?;
    Ok(())
}

async fn bindings_persist_across_processes(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let ex = Exchange::direct(ctx.name("xbind"));
    let q = bound(&ctx, "xbind", &ex, "k");
    declare(&conn, &q).await?;
    // The second process declares nothing: only bindings stored on the broker route.
    second_process(
        &ctx,
        Task::Publish {
            url: ctx.url().to_owned(),
            options: BTreeMap::new(),
            exchange: ex.name.clone(),
            kind: "direct".into(),
            messages: vec![
                ("nobody".into(), serde_json::json!("unrouted")),
                ("k".into(), serde_json::json!("routed")),
                ("k".into(), serde_json::json!(CONTROL)),
            ],
        },
    )
    .await?;
    let got = drain_to_control(&ctx, &conn, &q.name).await?;
    check_eq!(
        got,
        vec![serde_json::json!("routed")],
        "messages the second process routed over the stored binding"
    );
    Ok(())
}

// ---------------------------------------------------------------- acknowledgements

async fn ack_removes_message(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("ack"));
    declare(&conn, &q).await?;
    publish_to(&conn, &q.name, serde_json::json!("x")).await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    m.ack().await?;
    check_eq!(m.state(), kombu::MessageState::Acked, "state");
    conn.close().await?;
    let conn = ctx.conn()?;
    only_control_direct(&ctx, &conn, &q.name).await
}

async fn reject_without_requeue_drops(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("rej"));
    declare(&conn, &q).await?;
    publish_to(&conn, &q.name, serde_json::json!("x")).await?;
    let m = get_one(&ctx, &conn, &q.name).await?;
    m.reject(false).await?;
    conn.close().await?;
    let conn = ctx.conn()?;
    only_control_direct(&ctx, &conn, &q.name).await
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
    publish_to(&conn, &q.name, serde_json::json!("back")).await?;
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
        publish_to(&conn, &q.name, serde_json::json!(i)).await?;
    }
    let channel = conn.channel().await?;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(get_delivery(&ctx, channel.as_ref(), &q.name).await?);
    }
    channel.close().await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = get_one(&ctx, &conn, &q.name).await?;
        got.push((m.decode::<i32>()?, m.redelivered()));
        m.ack().await?;
    }
    got.sort();
    let mut taken: Vec<i32> = held
        .iter()
        .map(|d| serde_json::from_slice(&d.message.body).unwrap_or(-1))
        .collect();
    taken.sort();
    let want: Vec<(i32, bool)> = (0..3).map(|i| (i, taken.contains(&i))).collect();
    check_eq!(got, want, "(body, redelivered) after close");
    Ok(())
}

async fn unacked_restored_on_connection_close(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("restore-conn"));
    let mut c = consumer(&conn, vec![q.clone()], Some(5)).await?;
    publish_to(&conn, &q.name, serde_json::json!("held")).await?;
    let m = c.recv_timeout(ctx.patience()).await?;
    check_eq!(m.decode::<String>()?, "held", "body");
    conn.close().await?;
    // The channel's tags died with it (the message is back in the queue): an unknown
    // delivery tag, as AMQP has it.
    expect_error(
        m.ack().await,
        ErrorKind::PreconditionFailed,
        "acking after the connection closed must fail, not pretend",
    )?;
    let conn2 = ctx.conn()?;
    let m2 = get_one(&ctx, &conn2, &q.name).await?;
    check!(m2.redelivered(), "restored message must be marked redelivered");
    m2.ack().await?;
    Ok(())
}

async fn consumer_crash_redelivers(ctx: Ctx) -> TestResult {
    let options = ctx.recovery_options().to_vec();
    let conn = ctx.conn_with(&options)?;
    let q = Queue::new(ctx.name("crash"));
    declare(&conn, &q).await?;
    publish_to(&conn, &q.name, serde_json::json!("survivor")).await?;
    // A second process takes the message and dies without acking or closing anything.
    let taken = second_process(
        &ctx,
        Task::TakeAndDie {
            url: ctx.url().to_owned(),
            options: options.into_iter().collect(),
            queue: q.name.clone(),
        },
    )
    .await?;
    check_eq!(taken.trim(), "\"survivor\"", "what the dying consumer took");
    let m = get_one(&ctx, &conn, &q.name).await.map_err(|Failure(e)| {
        Failure(format!(
            "{e}: the message of a consumer that died was not delivered again \
             (a transport with a visibility timeout needs Suite::recovery_option)"
        ))
    })?;
    check_eq!(m.decode::<String>()?, "survivor", "body delivered again");
    check!(
        m.redelivered(),
        "a message delivered again must be marked redelivered"
    );
    m.ack().await?;
    Ok(())
}

/// A live consumer keeps a message however long it holds it: with the short visibility
/// timeout of the recovery options, another connection polling all along never gets it (the
/// renewal keeps it), while a message published meanwhile does reach it (positive control).
async fn held_message_outlives_the_visibility_timeout(ctx: Ctx) -> TestResult {
    let options = ctx.recovery_options().to_vec();
    let visibility = options
        .iter()
        .find(|(k, _)| k == "visibility_timeout")
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .map(Duration::from_secs_f64);
    let Some(visibility) = visibility else {
        return Err(Failure::from(
            "needs a visibility_timeout in the recovery options (Suite::recovery_option)",
        ));
    };
    let holder = ctx.conn_with(&options)?;
    let other = ctx.conn_with(&options)?;
    let q = Queue::new(ctx.name("held"));
    declare(&holder, &q).await?;
    let mut c = consumer(&holder, vec![q.clone()], Some(1)).await?;
    publish_to(&holder, &q.name, serde_json::json!("long task")).await?;
    let held = c.recv_timeout(ctx.patience()).await?;
    check_eq!(held.decode::<String>()?, "long task", "the held message");
    // Three visibility timeouts while the holder lives: the other connection gets nothing.
    let until = tokio::time::Instant::now() + visibility * 3;
    let poller = other.channel().await?;
    while tokio::time::Instant::now() < until {
        if let Some(m) = poller.get(&q.name, Default::default()).await? {
            return Err(Failure(format!(
                "a message held by a live consumer was handed to another connection after {:?} \
                 (visibility timeout {visibility:?}): {:?}",
                visibility * 3 - until.saturating_duration_since(tokio::time::Instant::now()),
                String::from_utf8_lossy(&m.message.body)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Positive control: the same queue does serve the other connection.
    publish_to(&holder, &q.name, serde_json::json!("control")).await?;
    let control = get_one(&ctx, &other, &q.name).await?;
    check_eq!(
        control.decode::<String>()?,
        "control",
        "the control message reaches the other connection"
    );
    control.ack().await?;
    held.ack().await?;
    Ok(())
}

async fn recover_redelivers_unacked(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("recover"));
    let mut c = consumer(&conn, vec![q.clone()], Some(10)).await?;
    publish_to(&conn, &q.name, serde_json::json!("r")).await?;
    let first = c.recv_timeout(ctx.patience()).await?;
    c.recover(true).await?;
    let again = c.recv_timeout(ctx.patience()).await?;
    check_eq!(again.decode::<String>()?, "r", "recovered body");
    check!(again.redelivered(), "recovered message must be redelivered");
    again.ack().await?;
    expect_error(
        first.ack().await,
        ErrorKind::PreconditionFailed,
        "the first delivery's tag must be unknown after recover",
    )?;
    Ok(())
}

async fn prefetch_bounds_in_flight(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("prefetch"));
    declare(&conn, &q).await?;
    for i in 0..5 {
        publish_to(&conn, &q.name, serde_json::json!(i)).await?;
    }
    let mut c = consumer(&conn, vec![q.clone()], Some(2)).await?;
    let a = c.recv_timeout(ctx.patience()).await?;
    let b = c.recv_timeout(ctx.patience()).await?;
    // Absence under a prefetch limit can only be watched for; the positive control is the
    // third message arriving once one is acked.
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
    if ctx.caps().fifo_order {
        check_eq!(third.decode::<i32>()?, 2, "third message after one ack");
    }
    b.ack().await?;
    third.ack().await?;
    Ok(())
}

async fn unknown_delivery_tag_is_precondition_failed(ctx: Ctx) -> TestResult {
    // On the channel itself (below the Message state machine): a tag the channel does not
    // hold, whether settled already or never issued, is PreconditionFailed everywhere (AMQP's
    // 406 "unknown delivery tag"), and nothing is sent to the broker for it.
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("unknown-tag"));
    declare(&conn, &q).await?;
    publish_to(&conn, &q.name, serde_json::json!(1)).await?;
    let channel = conn.channel().await?;
    let d = get_delivery(&ctx, channel.as_ref(), &q.name).await?;
    let handle = d
        .ack
        .clone()
        .ok_or("a get without no_ack must return an ack handle")?;
    expect_error(
        handle.acknowledger.ack(handle.tag.wrapping_add(1_000_000)).await,
        ErrorKind::PreconditionFailed,
        "acking a delivery tag never issued succeeded",
    )?;
    handle.acknowledger.ack(handle.tag).await?;
    expect_error(
        handle.acknowledger.ack(handle.tag).await,
        ErrorKind::PreconditionFailed,
        "acking a delivery tag twice succeeded",
    )?;
    expect_error(
        handle.acknowledger.reject(handle.tag, true).await,
        ErrorKind::PreconditionFailed,
        "rejecting an acked delivery tag succeeded",
    )?;
    // The channel is still usable, and the acked message is gone.
    check!(
        channel.is_open(),
        "an unknown delivery tag must not close the channel"
    );
    publish_to(&conn, &q.name, serde_json::json!(CONTROL)).await?;
    let next = get_delivery(&ctx, channel.as_ref(), &q.name).await?;
    check_eq!(json_of(&next), serde_json::json!(CONTROL), "the next message");
    ack_delivery(&next).await
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
    publish_to(&conn, &q.name, serde_json::json!(1)).await?;
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
    publish_to(&conn, &q.name, serde_json::json!(CONTROL)).await?;
    let d = get_delivery(&ctx, channel.as_ref(), &q.name)
        .await
        .map_err(|Failure(e)| Failure(format!("the positive control was lost: {e}")))?;
    check_eq!(
        json_of(&d),
        serde_json::json!(CONTROL),
        "get once a message is there"
    );
    ack_delivery(&d).await
}

async fn consume_on_empty_queue_times_out(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("emptyconsume"));
    let mut c = consumer(&conn, vec![q.clone()], None).await?;
    match c.recv_timeout(ctx.quiet_period()).await {
        Err(e) if e.kind() == ErrorKind::Timeout => {}
        Err(e) => return Err(Failure(format!("expected a timeout error, got {e}"))),
        Ok(m) => return Err(Failure(format!("empty queue delivered {}", body_text(&m)))),
    }
    consumer_gets_control(&ctx, &conn, &mut c, &q.name).await
}

async fn purge_returns_count(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("purge"));
    declare(&conn, &q).await?;
    for i in 0..3 {
        publish_to(&conn, &q.name, serde_json::json!(i)).await?;
    }
    wait_for_count(&ctx, &conn, &q, "3 messages", |n| n == 3).await?;
    let channel = conn.channel().await?;
    let purged = channel.purge_queue(&q.name).await?;
    check_eq!(purged, 3, "purged count");
    only_control_direct(&ctx, &conn, &q.name).await
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
    publish_json(&conn, &ex, "k", serde_json::json!(CONTROL)).await?;
    let got = drain_to_control(&ctx, &conn, &q.name).await?;
    check_eq!(got, vec![serde_json::json!("one")], "one binding, one copy");
    Ok(())
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
        publish_to(&conn, &q.name, serde_json::json!(i)).await?;
    }
    // Published messages may take a moment to be counted (another channel); the count must
    // then be exactly 4, and stay so.
    wait_for_count(&ctx, &conn, &q, "4 messages", |n| n >= 4).await?;
    let channel = conn.channel().await?;
    let ok = channel.declare_queue(&q, DeclareOptions::passive()).await?;
    check_eq!(ok.message_count, 4, "message_count");
    check_eq!(ok.queue.as_str(), q.name.as_str(), "queue name");
    Ok(())
}

async fn confirmed_publish_is_counted_on_return(ctx: Ctx) -> TestResult {
    // With publisher confirms, a publish returns once the broker has the message: another
    // connection counts it at once, without waiting.
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("confirmed"));
    declare(&conn, &q).await?;
    let other = ctx.conn()?;
    let channel = other.channel().await?;
    for expected in 1..=3u64 {
        publish_to(&conn, &q.name, serde_json::json!(expected)).await?;
        let ok = channel.declare_queue(&q, DeclareOptions::passive()).await?;
        check_eq!(
            ok.message_count,
            expected,
            "messages counted right after confirmed publish #{expected}"
        );
    }
    other.close().await?;
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
    publish_to(&conn, &q.name, serde_json::json!(1)).await?;
    wait_for_count(&ctx, &conn, &q, "a message", |n| n >= 1).await?;
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

async fn queue_expires_when_unused(ctx: Ctx) -> TestResult {
    const EXPIRES: Duration = Duration::from_millis(1000);
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("expires")).expires(EXPIRES);
    declare(&conn, &q).await?;
    publish_to(&conn, &q.name, serde_json::json!("short-lived")).await?;
    // Positive control: the queue exists and holds the message while in use.
    wait_for_count(&ctx, &conn, &q, "a message", |n| n >= 1).await?;
    conn.close().await?;
    // Left unused, it goes away (with its message) once x-expires has passed. Looking counts
    // as use on some brokers (a passive declare renews RabbitMQ's lease), so look less often
    // than the expiry.
    let watcher = ctx.conn()?;
    let channel = watcher.channel().await?;
    let deadline = tokio::time::Instant::now() + ctx.patience();
    loop {
        tokio::time::sleep(EXPIRES + Duration::from_millis(500)).await;
        match channel
            .declare_queue(&Queue::new(q.name.clone()), DeclareOptions::passive())
            .await
        {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
            Ok(_) if tokio::time::Instant::now() >= deadline => {
                return Err(Failure(format!(
                    "queue {} declared with x-expires={EXPIRES:?} still exists {:?} after it was last used",
                    q.name,
                    ctx.patience()
                )))
            }
            Ok(_) => {}
        }
    }
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
    // All three must be queued before the first is taken.
    wait_for_count(&ctx, &conn, &q, "3 messages", |n| n >= 3).await?;
    let mut order = Vec::new();
    for _ in 0..3 {
        let m = get_one(&ctx, &conn, &q.name).await?;
        order.push(m.decode::<String>()?);
        m.ack().await?;
    }
    let first = order.remove(0);
    check_eq!(
        first.as_str(),
        "high",
        "the first message delivered (order {order:?} after it)"
    );
    check_eq!(
        in_checkable_order(&ctx, order),
        vec!["low1".to_owned(), "low2".into()],
        "the lower priority, in publish order"
    );
    Ok(())
}

async fn message_ttl_expires(ctx: Ctx) -> TestResult {
    const TTL: Duration = Duration::from_millis(100);
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("ttl"));
    declare(&conn, &q).await?;
    let p = conn.producer();
    p.publish(
        &"short",
        PublishOptions::new().routing_key(q.name.clone()).expiration(TTL),
    )
    .await?;
    p.publish(&"keeps", PublishOptions::new().routing_key(q.name.clone()))
        .await?;
    // Expiry takes its time by nature: wait out the TTL (counted from the publish's return,
    // after the broker has the message), then nothing more.
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    publish_to(&conn, &q.name, serde_json::json!(CONTROL)).await?;
    let got = drain_to_control(&ctx, &conn, &q.name).await?;
    check_eq!(
        got,
        vec![serde_json::json!("keeps")],
        "the unexpired message only"
    );
    Ok(())
}

async fn queue_message_ttl_expires(ctx: Ctx) -> TestResult {
    const TTL: Duration = Duration::from_millis(500);
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("qttl")).message_ttl(TTL);
    declare(&conn, &q).await?;
    publish_to(&conn, &q.name, serde_json::json!("gone")).await?;
    // Wait out the queue's TTL with room to spare: the broker's clock starts when the message
    // arrives, which on a loaded machine can be well after `publish` returned (a CI run saw
    // RabbitMQ still hold it 50 ms past the TTL). The control, published after, is taken
    // within its own TTL.
    tokio::time::sleep(TTL * 3).await;
    only_control_direct(&ctx, &conn, &q.name).await
}

async fn max_length_drops_oldest(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("maxlen")).max_length(2);
    declare(&conn, &q).await?;
    for i in 0..5 {
        publish_to(&conn, &q.name, serde_json::json!(i)).await?;
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = get_one(&ctx, &conn, &q.name).await?;
        got.push(m.decode::<i32>()?);
        m.ack().await?;
    }
    check_eq!(got, vec![3, 4], "the newest messages are kept");
    only_control_direct(&ctx, &conn, &q.name).await
}

async fn dead_letter_on_reject(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let dlx = Exchange::direct(ctx.name("dlx"));
    let dead = bound(&ctx, "dead", &dlx, "dead");
    declare(&conn, &dead).await?;
    let work = Queue::new(ctx.name("dlx-work"))
        .argument("x-dead-letter-exchange", dlx.name.clone())
        .argument("x-dead-letter-routing-key", "dead");
    declare(&conn, &work).await?;
    publish_to(&conn, &work.name, serde_json::json!("rejected")).await?;
    publish_to(&conn, &work.name, serde_json::json!("acked")).await?;
    for _ in 0..2 {
        let m = get_one(&ctx, &conn, &work.name).await?;
        match m.decode::<String>()?.as_str() {
            "rejected" => m.reject(false).await?,
            _ => m.ack().await?,
        }
    }
    let m = get_one(&ctx, &conn, &dead.name).await?;
    check_eq!(m.decode::<String>()?, "rejected", "the dead-lettered message");
    m.ack().await?;
    // The acked message is not dead-lettered.
    only_control(&ctx, &conn, &dlx, "dead", &dead.name).await
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

/// Publish `batch` (already filled) and return its per-message outcomes.
async fn send_batch(batch: kombu::PublishBatch<'_>) -> Vec<kombu::Result<()>> {
    batch.send().await.into_results()
}

/// A batch of 300 to one queue: every message arrives (once where the transport delivers
/// exactly once), in batch order where it keeps FIFO order, and every outcome is `Ok`.
async fn batch_publish_delivers_each_message(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("batch"));
    declare(&conn, &q).await?;
    let producer = conn.producer();
    let mut batch = producer.batch();
    for i in 0..300u64 {
        batch.add(&i, PublishOptions::new().routing_key(q.name.clone()));
    }
    check_eq!(batch.len(), 300, "messages in the batch");
    let outcomes = send_batch(batch).await;
    check_eq!(outcomes.len(), 300, "outcomes");
    if let Some((i, Err(e))) = outcomes.iter().enumerate().find(|(_, r)| r.is_err()) {
        return Err(Failure(format!("message {i} of the batch failed: {e}")));
    }
    publish_to(&conn, &q.name, serde_json::json!(CONTROL)).await?;
    let mut got: Vec<u64> = drain_to_control(&ctx, &conn, &q.name)
        .await?
        .into_iter()
        .map(|v| v.as_u64().unwrap_or(u64::MAX))
        .collect();
    if !ctx.caps().exactly_once_delivery {
        let mut seen = HashSet::new();
        got.retain(|n| seen.insert(*n));
    }
    let got = in_checkable_order(&ctx, got);
    check_eq!(
        got,
        (0..300).collect::<Vec<u64>>(),
        "messages of the batch, in order"
    );
    Ok(())
}

/// A message to an undeclared exchange inside a batch fails alone, with `NotFound`; every
/// message reported `Ok` arrived, and none reported failed did.
async fn batch_reports_each_message_outcome(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("batch-outcomes"));
    declare(&conn, &q).await?;
    let producer = conn.producer().auto_declare(false);
    let mut batch = producer.batch();
    let missing = Exchange::direct(ctx.name("never-declared"));
    for i in 0..20u64 {
        let options = PublishOptions::new().routing_key(q.name.clone());
        let options = if i == 10 {
            options.exchange(missing.clone())
        } else {
            options
        };
        batch.add(&i, options);
    }
    let outcomes = send_batch(batch).await;
    check_eq!(outcomes.len(), 20, "outcomes");
    match &outcomes[10] {
        Err(e) => check_eq!(e.kind(), ErrorKind::NotFound, "kind of the failure ({e})"),
        Ok(()) => {
            return Err(Failure(
                "the publish to an undeclared exchange was reported Ok".into(),
            ))
        }
    }
    let reported_ok: Vec<u64> = (0..20u64).filter(|&i| outcomes[i as usize].is_ok()).collect();
    check!(
        outcomes[0].is_ok(),
        "the first message, before the failing one, was reported failed: {:?}",
        outcomes[0]
    );
    publish_to(&conn, &q.name, serde_json::json!(CONTROL)).await?;
    let mut got: Vec<u64> = drain_to_control(&ctx, &conn, &q.name)
        .await?
        .into_iter()
        .map(|v| v.as_u64().unwrap_or(u64::MAX))
        .collect();
    got.sort_unstable();
    got.dedup();
    check_eq!(
        got,
        reported_ok,
        "the messages that arrived are exactly those reported Ok"
    );
    Ok(())
}

/// An oversized message inside a batch is `LimitExceeded` before anything is sent; the
/// others are published.
async fn batch_with_an_oversized_message(ctx: Ctx) -> TestResult {
    let Some(limit) = ctx.caps().max_message_size else {
        return Ok(());
    };
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("batch-huge"));
    declare(&conn, &q).await?;
    let producer = conn.producer();
    let mut batch = producer.batch();
    let options = || PublishOptions::new().routing_key(q.name.clone());
    batch.add(&0u64, options());
    batch.add_bytes(vec![b'x'; (limit + 1) as usize], options());
    batch.add(&2u64, options());
    let outcomes = send_batch(batch).await;
    check_eq!(outcomes.len(), 3, "outcomes");
    match &outcomes[1] {
        Err(e) => check_eq!(e.kind(), ErrorKind::LimitExceeded, "kind of the failure ({e})"),
        Ok(()) => return Err(Failure("the oversized message was reported Ok".into())),
    }
    check!(
        outcomes[0].is_ok() && outcomes[2].is_ok(),
        "the other messages failed: {outcomes:?}"
    );
    publish_to(&conn, &q.name, serde_json::json!(CONTROL)).await?;
    let got = in_checkable_order(
        &ctx,
        drain_to_control(&ctx, &conn, &q.name)
            .await?
            .into_iter()
            .map(|v| v.as_u64().unwrap_or(u64::MAX))
            .collect(),
    );
    check_eq!(got, vec![0, 2], "the messages around the oversized one");
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
    let received = Arc::new(AtomicUsize::new(0));
    let controls = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let conn = ctx.conn()?;
        let q = q.clone();
        let patience = ctx.patience();
        let mut stopped = stop.subscribe();
        let subscribed = subscribed.clone();
        let (received, controls) = (received.clone(), controls.clone());
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
                        match m.decode::<serde_json::Value>()? {
                            serde_json::Value::String(s) if s == CONTROL => {
                                controls.fetch_add(1, Ordering::SeqCst);
                            }
                            v => {
                                got.push(v.as_u64().map_or(usize::MAX, |n| n as usize));
                                received.fetch_add(1, Ordering::SeqCst);
                            }
                        }
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
    // Wait until all N have been received, then for a positive control published after
    // them: a duplicate of an earlier message would have come before it.
    let deadline = tokio::time::Instant::now() + ctx.patience();
    let mut control_sent = false;
    loop {
        if !control_sent && received.load(Ordering::SeqCst) >= N {
            publish_to(&producer_conn, &q.name, serde_json::json!(CONTROL)).await?;
            control_sent = true;
        }
        if control_sent && controls.load(Ordering::SeqCst) > 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            stop.send_replace(true);
            return Err(Failure(format!(
                "after {:?}: {} of {N} messages received, positive control {}",
                ctx.patience(),
                received.load(Ordering::SeqCst),
                if control_sent {
                    "not received"
                } else {
                    "not sent yet"
                }
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    consumer_gets_control(&ctx, &conn, &mut c, &q.name).await
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
    if ctx.caps().exact_counts {
        let deadline = tokio::time::Instant::now() + ctx.patience();
        loop {
            let n = sq.qsize().await?;
            if n >= 3 || tokio::time::Instant::now() >= deadline {
                check_eq!(n, 3, "qsize");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let m = sq.get(Some(ctx.patience())).await?;
    let first = m.decode::<serde_json::Value>()?;
    if ctx.caps().fifo_order {
        check_eq!(first, serde_json::json!({"i": 0}), "first");
    }
    m.ack().await?;
    let cleared = sq.clear().await?;
    if ctx.caps().exact_counts {
        check_eq!(cleared, 2, "cleared");
    }
    match sq.get(Some(ctx.quiet_period())).await {
        Err(e) if e.kind() == ErrorKind::Timeout => {}
        Err(e) => return Err(e.into()),
        Ok(m) => return Err(Failure(format!("empty SimpleQueue returned {}", body_text(&m)))),
    }
    check!(sq.get_nowait().await?.is_none(), "get_nowait on an empty queue");
    sq.put(&CONTROL).await?;
    let m = sq.get(Some(ctx.patience())).await?;
    check_eq!(m.decode::<String>()?, CONTROL, "the message put after clearing");
    m.ack().await?;
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
    sb.put(&CONTROL).await?;
    let m = sb.get(Some(ctx.patience())).await?;
    check_eq!(m.decode::<String>()?, CONTROL, "the next message");
    Ok(())
}

async fn cancel_stops_deliveries(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("cancel"));
    let mut c = consumer(&conn, vec![q.clone()], Some(10)).await?;
    check!(c.consuming_from(&q.name), "consuming_from after consume");
    c.cancel().await?;
    check!(!c.consuming_from(&q.name), "consuming_from after cancel");
    publish_to(&conn, &q.name, serde_json::json!("kept")).await?;
    // Had the cancelled consumer still taken it, `get` would not find it.
    let m = get_one(&ctx, &conn, &q.name).await?;
    check_eq!(m.decode::<String>()?, "kept", "message stays queued after cancel");
    m.ack().await?;
    let ended = c.recv().await;
    check!(
        matches!(&ended, Err(e) if e.kind() == ErrorKind::Closed),
        "a cancelled consumer reports Closed, as recv_timeout does"
    );
    let ended = c.recv_timeout(Duration::from_millis(50)).await;
    check!(
        matches!(&ended, Err(e) if e.kind() == ErrorKind::Closed),
        "recv_timeout agrees"
    );
    Ok(())
}

/// Consumers started and stopped over and over on one connection, by `cancel` and by
/// closing their channel, leave it working. (amiquip's I/O thread once dropped the whole
/// connection when a cancelled consumer's receiver went away before it had finished with
/// it.)
async fn consume_cancel_cycles_keep_the_connection(ctx: Ctx) -> TestResult {
    const CYCLES: usize = 60;
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("cancel-cycles"));
    let mut c = consumer(&conn, vec![q.clone()], Some(10)).await?;
    for cycle in 0..CYCLES {
        c.cancel().await?;
        check!(!c.consuming_from(&q.name), "consuming_from after cancel {cycle}");
        c.consume().await?;
        consumer(&conn, vec![q.clone()], Some(10)).await?.close().await?;
    }
    consumer_gets_control(&ctx, &conn, &mut c, &q.name).await
}

async fn no_ack_consumer_settles_on_delivery(ctx: Ctx) -> TestResult {
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("noack"));
    declare(&conn, &q).await?;
    let mut c = conn.consumer([q.clone()]).no_ack(true).build().await?;
    c.consume().await?;
    publish_to(&conn, &q.name, serde_json::json!("fire")).await?;
    let m = c.recv_timeout(ctx.patience()).await?;
    check!(
        m.delivery().ack.is_none(),
        "no_ack delivery carries no ack handle"
    );
    c.close().await?;
    let conn2 = ctx.conn()?;
    only_control_direct(&ctx, &conn2, &q.name).await
}

async fn nack_redelivery_until_ack(ctx: Ctx) -> TestResult {
    // Watermill's "resend on nack": a consumer that keeps requeueing sees the message again
    // and again, and it is gone only once acked.
    let conn = ctx.conn()?;
    let q = Queue::new(ctx.name("nack"));
    let mut c = consumer(&conn, vec![q.clone()], Some(1)).await?;
    publish_to(&conn, &q.name, serde_json::json!("retry me")).await?;
    for attempt in 0..3 {
        let m = c.recv_timeout(ctx.patience()).await?;
        check_eq!(m.redelivered(), attempt > 0, "redelivered on attempt {attempt}");
        m.requeue().await?;
    }
    let m = c.recv_timeout(ctx.patience()).await?;
    m.ack().await?;
    consumer_gets_control(&ctx, &conn, &mut c, &q.name).await
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
    only_control_direct(&ctx, &conn, &q.name).await
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
