//! A third-party transport in ~80 lines: implement `VirtualBackend`, describe it, register it.
//!
//! A real crate would also submit `Registration(&TOY)` with `inventory` (see `kombu-memory`); an
//! explicit `register` is what makes it work everywhere. `docs/ARCHITECTURE.md` walks through
//! this file.
//!
//! ```text
//! cargo run -p kombu --example custom_transport
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kombu::transport::registry::{ConnectFuture, TransportDescriptor};
use kombu::transport::virtual_transport::{BrokerState, Claimed, VirtualBackend, VirtualTransport};
use kombu::transport::{ConnectOptions, Envelope, Transport};
use kombu::{Capabilities, Connection, FieldTable, PublishOptions, Queue, Result};

/// The broker: named FIFO queues of envelopes, stored as Kombu's JSON text (as a networked
/// backend would).
#[derive(Default)]
struct ToyBroker {
    queues: Mutex<HashMap<String, VecDeque<String>>>,
}

impl VirtualBackend for ToyBroker {
    fn name(&self) -> &'static str {
        "toy"
    }
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }
    async fn declare_queue(&self, queue: &Queue, _arguments: &FieldTable) -> Result<()> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(queue.name.clone())
            .or_default();
        Ok(())
    }
    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        Ok(self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(queue))
    }
    async fn put(&self, queue: &str, envelope: Envelope) -> Result<()> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .entry(queue.to_owned())
            .or_default()
            .push_back(envelope.to_json());
        Ok(())
    }
    async fn get(&self, queue: &str) -> Result<Option<Claimed>> {
        let text = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(queue)
            .and_then(VecDeque::pop_front);
        // A malformed stored envelope is a typed decode error, never a panic.
        text.map(|t| Envelope::from_json(t.as_bytes()).map(Claimed::removed))
            .transpose()
    }
    async fn purge(&self, queue: &str) -> Result<u64> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        Ok(queues.get_mut(queue).map_or(0, |q| q.drain(..).count() as u64))
    }
    async fn size(&self, queue: &str) -> Result<u64> {
        Ok(self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .map_or(0, |q| q.len() as u64))
    }
    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(queue);
        Ok(())
    }
    fn polling_interval(&self) -> Duration {
        Duration::from_millis(10)
    }
}

const CAPABILITIES: Capabilities = Capabilities {
    exchange_direct: true,
    exchange_topic: true,
    exchange_fanout: true,
    restore_unacked_on_close: true,
    recover: true,
    ..Capabilities::NONE
};

fn connect(_options: ConnectOptions) -> ConnectFuture {
    Box::pin(async {
        let transport: Arc<dyn Transport> = Arc::new(VirtualTransport::new(
            Arc::new(ToyBroker::default()),
            BrokerState::new(),
        ));
        Ok(transport)
    })
}

/// What a transport crate exports (and submits with `inventory`). A third-party transport has
/// no `kombu_feature`: its users enable it by depending on its crate.
static TOY: TransportDescriptor = TransportDescriptor::new("toy", connect)
    .schemes(&["toy"])
    .description("an example third-party transport")
    .capabilities(CAPABILITIES);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    kombu::transport::registry::register(&TOY);
    let conn = Connection::new("toy://")?;
    let queue = conn.simple_queue("hello");
    queue
        .put_with(&"hi from a third-party transport", PublishOptions::new())
        .await?;
    let message = queue.get(Some(Duration::from_secs(1))).await?;
    println!("{}", message.decode::<String>()?);
    message.ack().await?;
    conn.close().await
}
