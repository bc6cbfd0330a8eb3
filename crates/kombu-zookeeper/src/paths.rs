//! The znode layout: Kombu's queues, and kombu-rs's own subtree beside them.
//!
//! ```text
//! <root>/<queue>/entry-<9-priority %03d>-<seq>   Kombu's messages (kazoo's Queue recipe)
//! <root>/_kombu_rs/claims/<queue>/<entry name>    ephemeral: held by a consumer's session
//! <root>/_kombu_rs/delivered/<queue>/<entry name> persistent: claimed before (so a later
//!                                                 claim marks the message redelivered)
//! <root>/_kombu_rs/malformed/<queue>/<entry name> parked entries that are no envelope
//! <root>/_kombu_rs/exchanges/e.<exchange>         data: the exchange type
//! <root>/_kombu_rs/exchanges/e.<exchange>/b.<queue>.<key>.<hash>   data: one binding (JSON)
//! ```
//!
//! Kombu only ever lists the children of a queue's own node, so it never sees the subtree.

use kombu_core::{Error, ErrorKind, Result};

/// The prefix of every message node (kazoo's Queue recipe).
pub(crate) const ENTRY: &str = "entry-";
/// kombu-rs's subtree under the vhost root; a queue of this name is refused.
pub(crate) const META: &str = "_kombu_rs";

#[derive(Debug, Clone)]
pub(crate) struct Paths {
    root: String,
}

impl Paths {
    pub(crate) fn new(root: String) -> Paths {
        Paths { root }
    }

    /// The vhost's root path (`/` for the vhost `/`).
    pub(crate) fn root(&self) -> &str {
        if self.root.is_empty() {
            "/"
        } else {
            &self.root
        }
    }

    /// `<root>/<queue>`: Kombu's queue node.
    pub(crate) fn queue(&self, queue: &str) -> String {
        format!("{}/{queue}", self.root)
    }

    /// The node of one message.
    pub(crate) fn entry(&self, queue: &str, name: &str) -> String {
        format!("{}/{queue}/{name}", self.root)
    }

    /// The prefix a new message is created with (ZooKeeper appends the sequence number).
    pub(crate) fn new_entry(&self, queue: &str, priority: u8) -> String {
        format!("{}/{queue}/{ENTRY}{:03}-", self.root, 9 - priority.min(9))
    }

    /// The directory of the claims of `queue`.
    pub(crate) fn claims(&self, queue: &str) -> String {
        format!("{}/{META}/claims/{queue}", self.root)
    }

    /// The claim node of one message.
    pub(crate) fn claim(&self, queue: &str, name: &str) -> String {
        format!("{}/{META}/claims/{queue}/{name}", self.root)
    }

    /// The directory of the "claimed before" markers of `queue`.
    pub(crate) fn delivered_dir(&self, queue: &str) -> String {
        format!("{}/{META}/delivered/{queue}", self.root)
    }

    /// The "claimed before" marker of one message.
    pub(crate) fn delivered(&self, queue: &str, name: &str) -> String {
        format!("{}/{META}/delivered/{queue}/{name}", self.root)
    }

    /// Where a malformed message of `queue` is parked.
    pub(crate) fn malformed(&self, queue: &str) -> String {
        format!("{}/{META}/malformed/{queue}", self.root)
    }

    pub(crate) fn exchanges(&self) -> String {
        format!("{}/{META}/exchanges", self.root)
    }

    pub(crate) fn exchange(&self, exchange: &str) -> String {
        format!("{}/{META}/exchanges/e.{}", self.root, encode(exchange))
    }

    pub(crate) fn binding(&self, exchange: &str, queue: &str, routing_key: &str, arguments: &str) -> String {
        format!(
            "{}/b.{}.{}.{:016x}",
            self.exchange(exchange),
            encode(queue),
            encode(routing_key),
            fnv1a(arguments.as_bytes())
        )
    }
}

/// Check a queue name before it becomes a path segment.
pub(crate) fn check_queue_name(queue: &str) -> Result<()> {
    let bad = queue.is_empty()
        || queue == "."
        || queue == ".."
        || queue == META
        || queue.contains('/')
        || queue.chars().any(|c| c.is_control());
    if bad {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "a ZooKeeper queue name must be a non-empty path segment (no '/', not '.', '..' or \
             '_kombu_rs', no control characters)",
        )
        .with_context("queue", queue));
    }
    Ok(())
}

/// A name as one znode segment: ASCII letters, digits and `_~*#` kept, everything else
/// (including `.`, `-`, `/`) percent-encoded, so the segments of a binding node name can be
/// told apart and every name is a valid znode name.
pub(crate) fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"_~*#".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// FNV-1a, 64 bits: a stable hash of binding arguments for the binding node's name.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kombu_layout() {
        let p = Paths::new("/vhost".into());
        assert_eq!(p.queue("q"), "/vhost/q");
        assert_eq!(p.new_entry("q", 0), "/vhost/q/entry-009-");
        assert_eq!(p.new_entry("q", 9), "/vhost/q/entry-000-");
        assert_eq!(
            p.claim("q", "entry-009-0000000001"),
            "/vhost/_kombu_rs/claims/q/entry-009-0000000001"
        );
        let p = Paths::new(String::new());
        assert_eq!(p.queue("q"), "/q");
        assert_eq!(p.root(), "/");
    }

    #[test]
    fn names_encode_to_one_segment() {
        assert_eq!(encode("a.b/c-d"), "a%2Eb%2Fc%2Dd");
        assert_eq!(encode(""), "");
        assert!(check_queue_name("a/b").is_err());
        assert!(check_queue_name("_kombu_rs").is_err());
        assert!(check_queue_name("celery").is_ok());
        let p = Paths::new(String::new());
        assert_ne!(
            p.binding("x", "q", "k", "{}"),
            p.binding("x", "q", "k", "{\"a\":1}")
        );
    }
}
