//! What this connection declared, so a recovered connection can declare it again.
//!
//! Neither client library replays declarations on a new connection (lapin's own recovery
//! covers channels of a connection that survived; amiquip has none): when the connection
//! itself is lost, exchanges, queues and bindings that were not durable are gone with the
//! broker, and even durable ones are missing on a fresh broker (lapin#450, the peers'
//! recurring bug). Each driver records every successful declaration here, in order, removes
//! what is deleted, and replays the record on the new connection before any channel or
//! consumer is used again. The record holds kombu-rs types only, so both drivers share it
//! (the lapin driver in `session`, the amiquip driver on its connection thread).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kombu_core::{Exchange, ExchangeBinding, FieldTable, QueueBinding};

/// A queue declaration as sent to the broker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueDeclaration {
    pub(crate) name: String,
    pub(crate) durable: bool,
    pub(crate) exclusive: bool,
    pub(crate) auto_delete: bool,
    pub(crate) arguments: FieldTable,
}

/// One recorded declaration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Declaration {
    Exchange(Exchange),
    Queue(QueueDeclaration),
    Binding(QueueBinding),
    ExchangeBinding(ExchangeBinding),
}

/// The declarations of one connection, in the order they were made. Shared by the
/// connection's channels (each records what it declared) and its recovery (which replays
/// them), so it locks itself.
#[derive(Debug, Default)]
pub(crate) struct Topology {
    entries: Mutex<Vec<Declaration>>,
    /// Exchanges declared by others that a passive check found present, and when: a batch
    /// checks such an exchange at most once per [`CHECK_VALID_FOR`], not before every batch.
    checked: Mutex<HashMap<String, Instant>>,
}

/// How long a passive check of an exchange this connection did not declare is trusted.
const CHECK_VALID_FOR: Duration = Duration::from_secs(5);

impl Topology {
    fn entries_mut(&self) -> std::sync::MutexGuard<'_, Vec<Declaration>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Record a declaration (a repeat of an identical one is not recorded twice; a changed
    /// one replaces the old entry).
    pub(crate) fn record(&self, declaration: Declaration) {
        let same_entity = |existing: &Declaration| match (existing, &declaration) {
            (Declaration::Exchange(a), Declaration::Exchange(b)) => a.name == b.name,
            (Declaration::Queue(a), Declaration::Queue(b)) => a.name == b.name,
            (Declaration::Binding(a), Declaration::Binding(b)) => a == b,
            (Declaration::ExchangeBinding(a), Declaration::ExchangeBinding(b)) => a == b,
            _ => false,
        };
        let mut entries = self.entries_mut();
        match entries.iter().position(same_entity) {
            Some(i) => entries[i] = declaration,
            None => entries.push(declaration),
        }
    }

    /// Whether this connection declared the exchange `name` (and has not deleted it).
    pub(crate) fn has_exchange(&self, name: &str) -> bool {
        self.entries_mut()
            .iter()
            .any(|d| matches!(d, Declaration::Exchange(e) if e.name == name))
    }

    /// Whether a passive check found the exchange `name` (which this connection did not
    /// declare) present within the last few seconds.
    pub(crate) fn recently_checked(&self, name: &str) -> bool {
        let checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        checked.get(name).is_some_and(|at| at.elapsed() < CHECK_VALID_FOR)
    }

    /// A passive check found the exchange `name` present (`true`) or missing (`false`).
    pub(crate) fn note_checked(&self, name: &str, present: bool) {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if present {
            checked.insert(name.to_owned(), Instant::now());
        } else {
            checked.remove(name);
        }
    }

    /// Forget a deleted exchange and the bindings to and from it.
    pub(crate) fn forget_exchange(&self, name: &str) {
        self.note_checked(name, false);
        self.entries_mut().retain(|d| match d {
            Declaration::Exchange(e) => e.name != name,
            Declaration::Binding(b) => b.exchange != name,
            Declaration::ExchangeBinding(b) => b.source != name && b.destination != name,
            Declaration::Queue(_) => true,
        });
    }

    /// Forget a deleted queue and its bindings.
    pub(crate) fn forget_queue(&self, name: &str) {
        self.entries_mut().retain(|d| match d {
            Declaration::Queue(q) => q.name != name,
            Declaration::Binding(b) => b.queue != name,
            _ => true,
        });
    }

    /// Forget one binding.
    pub(crate) fn forget(&self, declaration: &Declaration) {
        self.entries_mut().retain(|d| d != declaration);
    }

    /// Every declaration, in order: exchanges and queues come before the bindings that
    /// were made after them.
    pub(crate) fn entries(&self) -> Vec<Declaration> {
        self.entries_mut().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str) -> Declaration {
        Declaration::Queue(QueueDeclaration {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: FieldTable::new(),
        })
    }

    #[test]
    fn replays_in_order_without_duplicates_or_deleted_entities() {
        let t = Topology::default();
        t.record(Declaration::Exchange(Exchange::topic("ex")));
        t.record(queue("q1"));
        t.record(queue("q2"));
        t.record(Declaration::Binding(QueueBinding::new("q1", "ex", "a.#")));
        t.record(Declaration::Binding(QueueBinding::new("q2", "ex", "b.*")));
        t.record(queue("q1"));
        t.forget_queue("q2");
        let names: Vec<String> = t
            .entries()
            .iter()
            .map(|d| match d {
                Declaration::Exchange(e) => format!("x:{}", e.name),
                Declaration::Queue(q) => format!("q:{}", q.name),
                Declaration::Binding(b) => format!("b:{}>{}", b.exchange, b.queue),
                Declaration::ExchangeBinding(b) => format!("e:{}>{}", b.source, b.destination),
            })
            .collect();
        assert_eq!(names, ["x:ex", "q:q1", "b:ex>q1"]);
        t.forget_exchange("ex");
        assert_eq!(t.entries().len(), 1);
    }
}
