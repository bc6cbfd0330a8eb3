//! `kombu declare exchange|queue|binding`.

use std::io::Write as _;

use kombu::transport::{DeclareOptions, QueueBinding};
use kombu::{Connection, Exchange, Queue};

use crate::cli::{DeclareBindingArgs, DeclareCommand, DeclareExchangeArgs, DeclareQueueArgs, GlobalArgs};
use crate::commands::{connect, seconds};
use crate::error::{stdout_error, CliResult};
use crate::output::field_table;

/// Runs `kombu declare …`.
pub(crate) async fn run(global: &GlobalArgs, command: DeclareCommand) -> CliResult {
    let connection = connect(global)?;
    let result = match command {
        DeclareCommand::Exchange(args) => exchange(&connection, args).await,
        DeclareCommand::Queue(args) => queue(&connection, args).await,
        DeclareCommand::Binding(args) => binding(&connection, args).await,
    };
    let closed = connection.close().await;
    let line = result?;
    closed?;
    writeln!(std::io::stdout(), "{line}").map_err(stdout_error)
}

async fn exchange(connection: &Connection, args: DeclareExchangeArgs) -> CliResult<String> {
    let mut exchange = Exchange::new(args.name, args.exchange_type.into())
        .durable(args.durability.is_durable())
        .auto_delete(args.durability.auto_delete);
    exchange.arguments = field_table(&args.arguments);
    let channel = connection.default_channel().await?;
    channel
        .declare_exchange(&exchange, DeclareOptions::default())
        .await?;
    Ok(format!(
        "declared exchange {:?} ({}, {})",
        exchange.name,
        exchange.kind,
        if exchange.durable { "durable" } else { "transient" }
    ))
}

async fn queue(connection: &Connection, args: DeclareQueueArgs) -> CliResult<String> {
    let mut queue = Queue::new(args.name.clone())
        .durable(args.durability.is_durable())
        .auto_delete(args.durability.auto_delete);
    queue.queue_arguments = field_table(&args.arguments);
    queue.max_priority = args.max_priority;
    queue.message_ttl = args.message_ttl.map(seconds);
    queue.expires = args.expires.map(seconds);
    queue.max_length = args.max_length;
    queue.max_length_bytes = args.max_length_bytes;
    let mut bound = String::new();
    if let Some(exchange) = &args.exchange {
        let routing_key = args.routing_key.clone().unwrap_or_else(|| args.name.clone());
        bound = format!(", bound to exchange {exchange:?} with routing key {routing_key:?}");
        queue = queue
            .exchange(Exchange::new(exchange.clone(), args.exchange_type.into()))
            .routing_key(routing_key);
    }
    let channel = connection.default_channel().await?;
    // The facade declares the exchange, the queue and the binding, as Kombu's Queue.declare.
    connection.maybe_declare_queue(&queue, channel.as_ref()).await?;
    let ok = channel
        .declare_queue(&Queue::new(args.name.clone()), DeclareOptions::passive())
        .await?;
    Ok(format!(
        "declared queue {:?} ({} message{}){bound}",
        ok.queue,
        ok.message_count,
        if ok.message_count == 1 { "" } else { "s" }
    ))
}

async fn binding(connection: &Connection, args: DeclareBindingArgs) -> CliResult<String> {
    let channel = connection.default_channel().await?;
    // The queue must exist: binding a name nobody declared is almost always a typo.
    channel
        .declare_queue(&Queue::new(args.queue.clone()), DeclareOptions::passive())
        .await?;
    // Virtual transports keep exchanges per connection, so the exchange is declared here too
    // (a no-op where it already exists with the same type).
    let exchange = Exchange::new(args.exchange.clone(), args.exchange_type.into());
    connection
        .maybe_declare_exchange(&exchange, channel.as_ref())
        .await?;
    let mut binding = QueueBinding::new(
        args.queue.clone(),
        args.exchange.clone(),
        args.routing_key.clone(),
    );
    binding.arguments = field_table(&args.arguments);
    channel.bind_queue(&binding).await?;
    Ok(format!(
        "bound queue {:?} to exchange {:?} with routing key {:?}",
        args.queue, args.exchange, args.routing_key
    ))
}
