//! Exchanges and their compiled routing tables.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::entity::{Exchange, ExchangeType};
use crate::error::{Error, ErrorKind, Result};
use crate::router::{CompiledBinding, RouteTable};
use crate::value::FieldTable;

#[derive(Debug)]
struct ExchangeEntry {
    exchange: Exchange,
    table: RouteTable,
}

/// Exchanges by name, looked up on every publish: foldhash (seeded per process) instead of
/// SipHash, whose DoS resistance costs more than the lookup itself.
type ExchangeMap = HashMap<String, ExchangeEntry, foldhash::fast::RandomState>;

/// Declared exchanges and their bindings.
///
/// Kombu keeps one such state per connection (memory: per process). kombu-rs lets each
/// backend choose its scope: the memory transport shares one per virtual host across the
/// process, so routing declared on one connection serves every other.
#[derive(Debug, Default)]
pub struct BrokerState {
    exchanges: RwLock<ExchangeMap>,
}

/// The result of routing a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// The exchange is known locally; queues were appended.
    Local(ExchangeType),
    /// The exchange is not declared here.
    UnknownExchange,
}

impl BrokerState {
    /// An empty state.
    pub fn new() -> Arc<Self> {
        Arc::new(BrokerState::default())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ExchangeMap> {
        self.exchanges.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ExchangeMap> {
        self.exchanges.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Declare an exchange: passive checks existence; an existing exchange must be equivalent.
    pub fn declare_exchange(&self, exchange: &Exchange, passive: bool) -> Result<()> {
        let mut map = self.write();
        match map.get(&exchange.name) {
            Some(existing) => {
                if !passive && !existing.exchange.is_equivalent(exchange) {
                    return Err(Error::new(
                        ErrorKind::NotEquivalent,
                        format!(
                            "exchange {:?} already declared as {} (durable={}, auto_delete={}); \
                             cannot redeclare as {} (durable={}, auto_delete={})",
                            exchange.name,
                            existing.exchange.kind,
                            existing.exchange.durable,
                            existing.exchange.auto_delete,
                            exchange.kind,
                            exchange.durable,
                            exchange.auto_delete
                        ),
                    )
                    .with_context("exchange", &exchange.name));
                }
                Ok(())
            }
            None if passive => {
                Err(Error::new(ErrorKind::NotFound, "no such exchange")
                    .with_context("exchange", &exchange.name))
            }
            None => {
                map.insert(
                    exchange.name.clone(),
                    ExchangeEntry {
                        exchange: exchange.clone(),
                        table: RouteTable::new(),
                    },
                );
                Ok(())
            }
        }
    }

    /// The declaration of an exchange, if declared.
    pub fn exchange(&self, name: &str) -> Option<Exchange> {
        self.read().get(name).map(|e| e.exchange.clone())
    }

    /// Delete an exchange and its bindings.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<()> {
        let mut map = self.write();
        match map.get(name) {
            None => Err(Error::new(ErrorKind::NotFound, "no such exchange").with_context("exchange", name)),
            Some(e) if if_unused && !e.table.bindings().is_empty() => Err(Error::new(
                ErrorKind::PreconditionFailed,
                "exchange has bindings (if_unused)",
            )
            .with_context("exchange", name)),
            Some(_) => {
                map.remove(name);
                Ok(())
            }
        }
    }

    /// Bind `queue` to a declared exchange. Returns the exchange declaration.
    pub fn bind(
        &self,
        exchange: &str,
        queue: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<Exchange> {
        let mut map = self.write();
        let entry = map.get_mut(exchange).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "cannot bind to an exchange that was not declared",
            )
            .with_context("exchange", exchange)
            .with_context("queue", queue)
        })?;
        let kind = entry.exchange.kind;
        entry
            .table
            .bind(CompiledBinding::new(kind, queue, routing_key, arguments.clone()));
        Ok(entry.exchange.clone())
    }

    /// Remove a binding. Returns the exchange declaration, if the exchange is declared.
    pub fn unbind(
        &self,
        exchange: &str,
        queue: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Option<Exchange> {
        let mut map = self.write();
        let entry = map.get_mut(exchange)?;
        entry.table.unbind(queue, routing_key, arguments);
        Some(entry.exchange.clone())
    }

    /// Remove every binding of `queue` (it was deleted).
    pub fn remove_queue(&self, queue: &str) {
        for entry in self.write().values_mut() {
            entry.table.remove_queue(queue);
        }
    }

    /// Bindings of `queue`, as `(exchange, routing_key, arguments)`.
    pub fn bindings_of(&self, queue: &str) -> Vec<(String, String, FieldTable)> {
        self.read()
            .iter()
            .flat_map(|(name, e)| {
                e.table
                    .bindings()
                    .iter()
                    .filter(|b| &*b.queue == queue)
                    .map(move |b| (name.clone(), b.routing_key.clone(), b.arguments.clone()))
            })
            .collect()
    }

    /// Route a message published to `exchange`; matching queues are appended to `out`.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: &FieldTable,
        out: &mut Vec<Arc<str>>,
    ) -> Routed {
        match self.read().get(exchange) {
            Some(entry) => {
                entry.table.route_into(routing_key, headers, out);
                Routed::Local(entry.exchange.kind)
            }
            None => Routed::UnknownExchange,
        }
    }
}
