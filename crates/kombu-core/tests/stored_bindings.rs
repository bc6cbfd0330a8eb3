//! Routing over bindings a backend stores on the broker (as Redis and MongoDB do): a publisher
//! that never declared the exchange still routes, as direct, like Kombu.
#![allow(clippy::unwrap_used)] // test scaffolding: a poisoned mutex should fail the test

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use kombu_core::transport::{GetOptions, RawPublishOptions};
use kombu_core::virtual_transport::{
    BrokerState, Claimed, StoredBinding, StoredBindings, StoredRoutes, VirtualBackend, VirtualTransport,
};
use kombu_core::{Capabilities, Envelope, Exchange, FieldTable, Queue, RawMessage, Result, Transport};

#[derive(Default)]
struct Shared {
    queues: Mutex<HashMap<String, VecDeque<Envelope>>>,
    bindings: Mutex<HashMap<String, Vec<StoredBinding>>>,
}

struct Backend(Arc<Shared>);

impl VirtualBackend for Backend {
    fn name(&self) -> &'static str {
        "stored"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            exchange_direct: true,
            exchange_topic: true,
            persistent_bindings: true,
            ..Capabilities::NONE
        }
    }
    async fn declare_queue(&self, queue: &Queue, _: &FieldTable) -> Result<()> {
        self.0
            .queues
            .lock()
            .unwrap()
            .entry(queue.name.clone())
            .or_default();
        Ok(())
    }
    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        Ok(self.0.queues.lock().unwrap().contains_key(queue))
    }
    async fn put(&self, queue: &str, envelope: Envelope) -> Result<()> {
        self.0
            .queues
            .lock()
            .unwrap()
            .entry(queue.into())
            .or_default()
            .push_back(envelope);
        Ok(())
    }
    async fn get(&self, queue: &str) -> Result<Option<Claimed>> {
        let env = self
            .0
            .queues
            .lock()
            .unwrap()
            .get_mut(queue)
            .and_then(VecDeque::pop_front);
        Ok(env.map(Claimed::removed))
    }
    async fn purge(&self, _: &str) -> Result<u64> {
        Ok(0)
    }
    async fn size(&self, queue: &str) -> Result<u64> {
        Ok(self
            .0
            .queues
            .lock()
            .unwrap()
            .get(queue)
            .map_or(0, |q| q.len() as u64))
    }
    async fn delete_queue(&self, _: &str) -> Result<()> {
        Ok(())
    }
    fn stored_bindings(&self) -> Option<&impl StoredBindings> {
        Some(self)
    }
}

impl StoredBindings for Backend {
    async fn declare_exchange(&self, _: &Exchange) -> Result<()> {
        Ok(())
    }
    async fn delete_exchange(&self, exchange: &str) -> Result<()> {
        self.0.bindings.lock().unwrap().remove(exchange);
        Ok(())
    }
    async fn remove_binding(&self, exchange: &str, binding: &StoredBinding) -> Result<()> {
        if let Some(list) = self.0.bindings.lock().unwrap().get_mut(exchange) {
            list.retain(|b| b != binding);
        }
        Ok(())
    }
    async fn store_binding(&self, exchange: &Exchange, binding: &StoredBinding) -> Result<()> {
        self.0
            .bindings
            .lock()
            .unwrap()
            .entry(exchange.name.clone())
            .or_default()
            .push(binding.clone());
        Ok(())
    }
    async fn load_bindings(&self, exchange: &str) -> Result<Option<StoredRoutes>> {
        let bindings = self.0.bindings.lock().unwrap().get(exchange).cloned();
        // Kombu's Redis layout: bindings without the exchange type.
        Ok(Some(StoredRoutes {
            kind: None,
            bindings: bindings.unwrap_or_default(),
        }))
    }
}

#[tokio::test]
async fn undeclared_exchange_routes_over_stored_bindings() {
    let shared = Arc::new(Shared::default());
    // Process A declares and binds.
    let a = VirtualTransport::new(Arc::new(Backend(shared.clone())), BrokerState::new());
    let ch_a = a.create_channel().await.unwrap();
    ch_a.declare_exchange(&Exchange::direct("ex"), Default::default())
        .await
        .unwrap();
    ch_a.declare_queue(&Queue::new("q"), Default::default())
        .await
        .unwrap();
    ch_a.bind_queue(&kombu_core::QueueBinding::new("q", "ex", "rk"))
        .await
        .unwrap();
    // Process B (its own routing state) never declared `ex`.
    let b = VirtualTransport::new(Arc::new(Backend(shared.clone())), BrokerState::new());
    let ch_b = b.create_channel().await.unwrap();
    let msg = RawMessage::new("hi");
    ch_b.publish(msg.clone(), RawPublishOptions::new("ex", "rk"))
        .await
        .unwrap();
    ch_b.publish(msg, RawPublishOptions::new("ex", "other"))
        .await
        .unwrap();
    let got = ch_a
        .get("q", GetOptions::default())
        .await
        .unwrap()
        .expect("routed via stored binding");
    assert_eq!(&got.message.body[..], b"hi");
    assert!(
        ch_a.get("q", GetOptions::default()).await.unwrap().is_none(),
        "direct: other key not routed"
    );
}

#[tokio::test]
async fn stored_but_empty_binding_table_routes_nothing() {
    let shared = Arc::new(Shared::default());
    let t = VirtualTransport::new(Arc::new(Backend(shared)), BrokerState::new());
    let ch = t.create_channel().await.unwrap();
    // A backend that stores bindings but has none for this exchange routes nothing (no error:
    // another process may bind later, as with Kombu on Redis).
    ch.publish(RawMessage::default(), RawPublishOptions::new("nobody", "rk"))
        .await
        .unwrap();
    assert!(ch.get("q", GetOptions::default()).await.unwrap().is_none());
}
