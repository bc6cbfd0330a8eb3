//! Kombu 5.7's Redis key layout: queue lists per priority bucket, binding sets, the unacked
//! bookkeeping and the fanout channels. Every name gets `global_keyprefix`.

use kombu_core::router::{binding_key_from_kombu_regex, kombu_topic_regex};
use kombu_core::ExchangeType;

use crate::settings::KeyOptions;

/// Names keys and channels exactly as Kombu does.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    options: KeyOptions,
    pub(crate) unacked: String,
    pub(crate) unacked_index: String,
    pub(crate) unacked_mutex: String,
}

/// One binding as Kombu stores it in `_kombu.binding.<exchange>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) routing_key: String,
    /// The topic regex, or empty for direct and fanout bindings.
    pub(crate) pattern: String,
    pub(crate) queue: String,
}

impl Keys {
    pub(crate) fn new(options: KeyOptions) -> Keys {
        let p = &options.global_keyprefix;
        Keys {
            unacked: format!("{p}{}", options.unacked_key),
            unacked_index: format!("{p}{}", options.unacked_index_key),
            unacked_mutex: format!("{p}{}", options.unacked_mutex_key),
            options,
        }
    }

    pub(crate) fn sep(&self) -> &str {
        &self.options.sep
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.options.global_keyprefix
    }

    /// Kombu's bucket for a priority: the largest step not above it (0-2 → 0, 3-5 → 3, …).
    pub(crate) fn bucket(&self, priority: u8) -> u8 {
        let p = priority.min(9);
        self.options
            .priority_steps
            .iter()
            .copied()
            .filter(|s| *s <= p)
            .max()
            .unwrap_or(0)
    }

    /// The list holding `queue`'s messages of priority bucket `step` (bucket 0 is the bare name).
    pub(crate) fn queue_key(&self, queue: &str, step: u8) -> String {
        format!("{}{queue}{}", self.prefix(), self.step_suffix(step))
    }

    /// What follows the queue name in the list of bucket `step`: nothing for bucket 0, else
    /// the separator and the step.
    fn step_suffix(&self, step: u8) -> String {
        if step == 0 {
            String::new()
        } else {
            format!("{}{step}", self.sep())
        }
    }

    /// What follows the queue name in the list a message of `priority` goes to.
    pub(crate) fn suffix_for_priority(&self, priority: u8) -> String {
        self.step_suffix(self.bucket(priority))
    }

    /// The list a message of `priority` goes to.
    pub(crate) fn key_for_priority(&self, queue: &str, priority: u8) -> String {
        self.queue_key(queue, self.bucket(priority))
    }

    /// Every bucket list of `queue`, in the order Kombu's BRPOP serves them (bucket 0 first).
    pub(crate) fn queue_keys(&self, queue: &str) -> Vec<String> {
        self.options
            .priority_steps
            .iter()
            .map(|step| self.queue_key(queue, *step))
            .collect()
    }

    pub(crate) fn binding_set(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix())
    }

    pub(crate) fn binding_permanent_set(&self, exchange: &str) -> String {
        format!("{}_kombu.binding_permanent.{exchange}", self.prefix())
    }

    /// `<rk>\x06\x16<pattern>\x06\x16<queue>`, the pattern being Kombu's topic regex.
    pub(crate) fn member(&self, kind: ExchangeType, routing_key: &str, queue: &str) -> String {
        let pattern = match kind {
            ExchangeType::Topic => kombu_topic_regex(routing_key),
            _ => String::new(),
        };
        format!("{routing_key}{sep}{pattern}{sep}{queue}", sep = self.sep())
    }

    /// Parse a set member (the queue is after the last separator, the key before the first).
    pub(crate) fn parse_member(&self, member: &str) -> Option<Member> {
        let sep = self.sep();
        let (routing_key, rest) = member.split_once(sep)?;
        let (pattern, queue) = rest.rsplit_once(sep)?;
        Some(Member {
            routing_key: routing_key.to_owned(),
            pattern: pattern.to_owned(),
            queue: queue.to_owned(),
        })
    }

    /// The channel a fanout message is published on.
    pub(crate) fn fanout_topic(&self, exchange: &str, routing_key: &str) -> String {
        let fanout_prefix = self.options.fanout_prefix.as_deref().unwrap_or("");
        if !routing_key.is_empty() && self.options.fanout_patterns {
            format!("{}{fanout_prefix}{exchange}/{routing_key}", self.prefix())
        } else {
            format!("{}{fanout_prefix}{exchange}", self.prefix())
        }
    }

    /// The PSUBSCRIBE pattern of a queue bound to a fanout exchange (`#` becomes Redis's `*`).
    pub(crate) fn fanout_pattern(&self, exchange: &str, binding_key: &str) -> String {
        self.fanout_topic(exchange, &binding_key.replace('#', "*"))
    }
}

impl Member {
    /// Whether a message published with `routing_key` goes to this binding's queue: topic
    /// bindings (those with a pattern) match by their binding key with AMQP semantics where the
    /// pattern is Kombu's regex of that key, direct ones by equality.
    pub(crate) fn matches(&self, routing_key: &str) -> bool {
        if self.pattern.is_empty() {
            return self.routing_key == routing_key;
        }
        let key = binding_key_from_kombu_regex(&self.pattern).unwrap_or_else(|| self.routing_key.clone());
        kombu_core::router::TopicPattern::new(&key).matches(routing_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use kombu_core::{BrokerUrl, ConnectOptions};

    fn keys(url: &str) -> Keys {
        let options = ConnectOptions::new(BrokerUrl::parse(url).expect("url"));
        Keys::new(Settings::from_options(&options).expect("settings").keys)
    }

    #[test]
    fn queue_keys_and_buckets_match_kombu() {
        let k = keys("redis://h/0");
        assert_eq!(
            k.queue_keys("celery"),
            vec!["celery", "celery\x06\x163", "celery\x06\x166", "celery\x06\x169"]
        );
        let buckets: Vec<u8> = (0..=10).map(|p| k.bucket(p)).collect();
        assert_eq!(buckets, vec![0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9]);
        let k = keys("redis://h/0?global_keyprefix=app:");
        assert_eq!(k.key_for_priority("q", 7), "app:q\x06\x166");
        assert_eq!(k.unacked, "app:unacked");
    }

    #[test]
    fn binding_members_round_trip() {
        let k = keys("redis://h/0");
        let m = k.member(ExchangeType::Topic, "a.*.c", "q");
        assert_eq!(m, "a.*.c\x06\x16^a\\.[^\\.]+\\.c$\x06\x16q");
        let parsed = k.parse_member(&m).expect("member");
        assert_eq!(parsed.queue, "q");
        assert!(parsed.matches("a.b.c"));
        assert!(!parsed.matches("a.b.b.c"));
        let direct = k
            .parse_member(&k.member(ExchangeType::Direct, "rk", "q2"))
            .expect("member");
        assert_eq!(direct.pattern, "");
        assert!(direct.matches("rk") && !direct.matches("rk2"));
    }

    #[test]
    fn fanout_channels_match_kombu() {
        let k = keys("redis://h/2");
        assert_eq!(k.fanout_topic("ex", ""), "/2.ex");
        assert_eq!(k.fanout_topic("ex", "a.b"), "/2.ex/a.b");
        assert_eq!(k.fanout_pattern("ex", "a.#"), "/2.ex/a.*");
        let k = keys("redis://h/2?fanout_patterns=false&fanout_prefix=false");
        assert_eq!(k.fanout_topic("ex", "a.b"), "ex");
    }
}
