//! The Quick Tour of Kombu's README, in Rust.
//!
//! ```text
//! cargo run -p kombu --example quickstart                  # sqlite://kombu.sqlite3 (embedded default)
//! cargo run -p kombu --example quickstart -- memory:///demo
//! ```
//!
//! A `media` direct exchange, a `video` queue bound with routing key `video`, a producer that
//! declares the queue before publishing, and a consumer with a callback that acks.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kombu::{Connection, Exchange, Message, PublishOptions, Queue};

async fn run(url: &str) -> kombu::Result<()> {
    let media_exchange = Exchange::direct("media");
    let video_queue = Queue::new("video")
        .exchange(media_exchange.clone())
        .routing_key("video");

    let connection = Connection::new(url)?;
    println!("connected to {connection}");

    // Produce: serialize as JSON (the default), declare the queue first (cached per connection).
    let producer = connection.producer().exchange(media_exchange);
    for (name, size) in [("/tmp/lolcat1.avi", 1_301_013), ("/tmp/lolcat2.avi", 1_402_119)] {
        producer
            .publish(
                &serde_json::json!({"name": name, "size": size}),
                PublishOptions::new()
                    .routing_key("video")
                    .declare(video_queue.clone()),
            )
            .await?;
        println!("published {name}");
    }

    // Consume with a callback, as Kombu's `Consumer(callbacks=[process_media])`.
    let processed = Arc::new(AtomicUsize::new(0));
    let mut consumer = connection
        .consumer([video_queue])
        .prefetch_count(10)
        .build()
        .await?;
    let counter = processed.clone();
    consumer.on_message(move |message: Arc<Message>| {
        let counter = counter.clone();
        async move {
            let body: serde_json::Value = message.decode()?;
            println!("received {} ({} bytes)", body["name"], body["size"]);
            message.ack().await?;
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    });
    consumer.consume().await?;
    while processed.load(Ordering::Relaxed) < 2 {
        consumer.drain_events(Duration::from_secs(5)).await?;
    }
    consumer.close().await?;
    connection.close().await?;
    println!("done: 2 messages processed");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // The embedded default: a durable queue in a file of the current directory, no server.
    let default = if cfg!(feature = "sqlite") {
        "sqlite://kombu.sqlite3"
    } else {
        "memory://"
    };
    let url = std::env::args().nth(1).unwrap_or_else(|| default.to_owned());
    println!("quickstart on {url}");
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::FAILURE
        }
    }
}
