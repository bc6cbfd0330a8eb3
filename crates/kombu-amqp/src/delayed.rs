//! Kombu's native delayed delivery for RabbitMQ (`kombu.transport.native_delayed_delivery`),
//! the layout Celery 5.5+ uses for countdowns and ETAs on quorum queues.
//!
//! Twenty-eight levels, `celery_delayed_27` … `celery_delayed_0`, each a topic exchange and a
//! queue of the same name whose messages expire after 2^L seconds and are dead-lettered to the
//! next level down (level 0 to `celery_delayed_delivery`). A message's routing key starts with
//! its countdown as 28 binary digits (`0.0.…1.0.1.<routing key>`): level L holds it for 2^L s
//! when bit L is 1 and passes it straight down when it is 0, so after the countdown it reaches
//! `celery_delayed_delivery`, which routes `#.<routing key>` to the destination's exchange.
//!
//! ```no_run
//! # async fn example(channel: &dyn kombu_core::Channel) -> kombu_core::Result<()> {
//! use kombu_amqp::delayed::{self, QueueType};
//! use kombu_core::{Exchange, RawPublishOptions, Queue, RawMessage};
//! use std::time::Duration;
//!
//! delayed::declare_exchanges_and_queues(channel, QueueType::Quorum).await?;
//! let tasks = Queue::new("tasks").exchange(Exchange::topic("tasks")).routing_key("tasks");
//! delayed::bind_queue(channel, &tasks).await?;
//! // What Celery does for `apply_async(countdown=90)`:
//! let key = delayed::routing_key(Duration::from_secs(90), "tasks")?;
//! let message = RawMessage::new("[[], {}, {}]");
//! channel.publish(message, RawPublishOptions::new(delayed::ENTRY_EXCHANGE, key)).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use kombu_core::{
    Channel, Error, ErrorKind, Exchange, ExchangeBinding, ExchangeType, Queue, QueueBinding, Result, Value,
};

/// The highest level: countdowns up to 2^28 − 1 seconds (about 8.5 years).
pub const MAX_LEVEL: u32 = 27;

/// Where delayed messages are published (Celery publishes to the top level).
pub const ENTRY_EXCHANGE: &str = "celery_delayed_27";

/// Where messages arrive when their countdown is over.
pub const DELIVERY_EXCHANGE: &str = "celery_delayed_delivery";

/// The type of the level queues (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Classic queues.
    Classic,
    /// Quorum queues (dead-lettered at least once).
    Quorum,
}

/// The exchange and queue name of level `level`.
pub fn level_name(level: u32) -> String {
    format!("celery_delayed_{level}")
}

/// Declare the 28 levels and the delivery exchange, bound as Kombu binds them.
pub async fn declare_exchanges_and_queues(channel: &dyn Channel, queue_type: QueueType) -> Result<()> {
    for level in (0..=MAX_LEVEL).rev() {
        let name = level_name(level);
        channel
            .declare_exchange(&Exchange::topic(name.clone()), Default::default())
            .await?;
        let dead_letter = if level == 0 {
            DELIVERY_EXCHANGE.to_owned()
        } else {
            level_name(level - 1)
        };
        let mut queue = Queue::new(name.clone())
            .argument(
                "x-queue-type",
                match queue_type {
                    QueueType::Classic => "classic",
                    QueueType::Quorum => "quorum",
                },
            )
            .argument("x-overflow", "reject-publish")
            .argument("x-message-ttl", Value::Int((1i64 << level) * 1000))
            .argument("x-dead-letter-exchange", dead_letter);
        if queue_type == QueueType::Quorum {
            queue = queue.argument("x-dead-letter-strategy", "at-least-once");
        }
        channel.declare_queue(&queue, Default::default()).await?;
        let skip = "*.".repeat((MAX_LEVEL - level) as usize);
        channel
            .bind_queue(&QueueBinding::new(
                name.clone(),
                name.clone(),
                format!("{skip}1.#"),
            ))
            .await?;
        if level < MAX_LEVEL {
            // Zero at this bit: straight down from the level above.
            let upper = level_name(level + 1);
            let upper_skip = "*.".repeat((MAX_LEVEL - level - 1) as usize);
            channel
                .bind_exchange(&ExchangeBinding::new(
                    name.clone(),
                    upper,
                    format!("{upper_skip}0.#"),
                ))
                .await?;
        }
    }
    channel
        .declare_exchange(&Exchange::topic(DELIVERY_EXCHANGE), Default::default())
        .await?;
    channel
        .bind_exchange(&ExchangeBinding::new(
            DELIVERY_EXCHANGE,
            level_name(0),
            format!("{}0.#", "*.".repeat(MAX_LEVEL as usize)),
        ))
        .await
}

/// Bind `queue`'s exchange to the delivery exchange (and the queue to its exchange) with
/// `#.<routing key>`, so delayed messages for it arrive. A direct exchange cannot match the
/// countdown prefix: `InvalidArgument`, where Kombu only logs a warning.
pub async fn bind_queue(channel: &dyn Channel, queue: &Queue) -> Result<()> {
    let Some(exchange) = queue.exchange.as_ref().filter(|e| !e.is_default()) else {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "native delayed delivery needs the queue bound to a topic (or fanout) exchange",
        ));
    };
    if exchange.kind == ExchangeType::Direct {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "native delayed delivery cannot route through a direct exchange",
        )
        .with_context("exchange", &exchange.name));
    }
    let key = format!("#.{}", queue.routing_key);
    channel.declare_exchange(exchange, Default::default()).await?;
    channel.declare_queue(queue, Default::default()).await?;
    channel
        .bind_exchange(&ExchangeBinding::new(
            exchange.name.clone(),
            DELIVERY_EXCHANGE,
            key.clone(),
        ))
        .await?;
    channel
        .bind_queue(&QueueBinding::new(queue.name.clone(), exchange.name.clone(), key))
        .await
}

/// Kombu's `calculate_routing_key`: the countdown in whole seconds as 28 binary digits joined
/// by `.`, then `.` and the routing key (whose own 28-digit prefix, if it has one, is
/// replaced). Countdowns of 2^28 s or more are `InvalidArgument`.
pub fn routing_key(countdown: Duration, routing_key: &str) -> Result<String> {
    let seconds = countdown.as_secs();
    if seconds >= 1 << (MAX_LEVEL + 1) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "countdown too long for native delayed delivery (at most 2^28 - 1 seconds)",
        )
        .with_context("seconds", seconds));
    }
    let bits = format!("{seconds:028b}");
    let mut key = String::with_capacity(56 + routing_key.len() + 1);
    for bit in bits.chars() {
        key.push(bit);
        key.push('.');
    }
    key.push_str(strip_countdown(routing_key));
    Ok(key)
}

/// `routing_key` without a leading 28-digit countdown.
fn strip_countdown(routing_key: &str) -> &str {
    let mut rest = routing_key;
    for _ in 0..=MAX_LEVEL {
        let mut chars = rest.chars();
        match (chars.next(), chars.next()) {
            (Some('0' | '1'), Some('.')) => rest = &rest[2..],
            _ => return routing_key,
        }
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_key_is_the_countdown_in_28_bits() {
        let key = routing_key(Duration::from_secs(5), "tasks").unwrap();
        assert_eq!(key, format!("{}1.0.1.tasks", "0.".repeat(25)));
        assert_eq!(
            routing_key(Duration::from_secs(3), &key).unwrap(),
            format!("{}1.1.tasks", "0.".repeat(26))
        );
        assert!(routing_key(Duration::from_secs(1 << 28), "x").is_err());
        assert_eq!(
            strip_countdown("1.0.tasks"),
            "1.0.tasks",
            "a short prefix is kept"
        );
    }
}
