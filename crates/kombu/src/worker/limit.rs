//! A worker that takes at most N messages: the prefetch that keeps the broker from handing out
//! one more.
//!
//! The prefetch bounds the deliveries not yet settled. After the loop received `taken`
//! messages, `held` of which stay unsettled on purpose ([`Outcome::Hold`](super::Outcome::Hold)),
//! a prefetch of `limit - taken + held` lets the broker deliver at most `limit - taken` more:
//! the held ones keep occupying their share, and the ones being handled only free room once
//! settled, which can only lower what the broker may still send. Lowering the prefetch must
//! happen before the settlement that would free room, so the loop sets it as it receives a
//! message, before spawning its handler; raising it (a message turned out held) is safe at any
//! time.

/// The count of a worker with a limit.
#[derive(Debug)]
pub(crate) struct Limit {
    limit: u64,
    taken: u64,
    held: u64,
    /// The prefetch asked for (0: unlimited).
    configured: u16,
    /// The prefetch in force.
    current: u16,
}

impl Limit {
    pub(crate) fn new(limit: u64, configured: u16) -> Self {
        let mut this = Limit {
            limit,
            taken: 0,
            held: 0,
            configured,
            current: 0,
        };
        this.current = this.wanted();
        this
    }

    /// The prefetch to start consuming with.
    pub(crate) fn prefetch(&self) -> u16 {
        self.current
    }

    /// Whether every message the limit allows was taken.
    pub(crate) fn reached(&self) -> bool {
        self.taken >= self.limit
    }

    /// A message was received; the new prefetch if it must change.
    pub(crate) fn took_one(&mut self) -> Option<u16> {
        self.taken += 1;
        self.update()
    }

    /// A handler finished leaving its message unsettled; the new prefetch if it must change.
    pub(crate) fn held_one(&mut self) -> Option<u16> {
        self.held += 1;
        self.update()
    }

    fn wanted(&self) -> u16 {
        let room = (self.limit - self.taken.min(self.limit)).saturating_add(self.held);
        let room = u16::try_from(room).unwrap_or(u16::MAX);
        match self.configured {
            0 => room,
            configured => configured.min(room),
        }
    }

    fn update(&mut self) -> Option<u16> {
        let wanted = self.wanted();
        // At the limit the consumer is cancelled instead; a prefetch of 0 would mean unlimited.
        if self.reached() || wanted == self.current {
            return None;
        }
        self.current = wanted;
        Some(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefetch_shrinks_to_what_remains() {
        let mut limit = Limit::new(3, 10);
        assert_eq!(limit.prefetch(), 3);
        assert_eq!(limit.took_one(), Some(2));
        assert_eq!(limit.took_one(), Some(1));
        assert!(!limit.reached());
        assert_eq!(limit.took_one(), None, "at the limit the consumer is cancelled");
        assert!(limit.reached());
    }

    #[test]
    fn a_small_prefetch_is_kept_until_the_end_is_near() {
        let mut limit = Limit::new(100, 10);
        assert_eq!(limit.prefetch(), 10);
        for _ in 0..90 {
            assert_eq!(limit.took_one(), None);
        }
        assert_eq!(limit.took_one(), Some(9));
    }

    #[test]
    fn held_messages_keep_their_room() {
        // A peek: every message is held; the prefetch must not fall to what the held ones
        // occupy, or the broker stops before the limit.
        let mut limit = Limit::new(4, 0);
        assert_eq!(limit.prefetch(), 4);
        assert_eq!(limit.took_one(), Some(3));
        assert_eq!(limit.held_one(), Some(4));
        assert_eq!(limit.took_one(), Some(3));
        assert_eq!(limit.held_one(), Some(4));
        // Held 2, taken 2: the broker may deliver 2 more with 2 unsettled — 4 in all.
        assert_eq!(limit.prefetch(), 4);
    }
}
