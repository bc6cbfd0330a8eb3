//! The shared conformance suite against the Redis transport. `cargo xtask test-matrix` starts
//! a throwaway redis-server and passes its URL as `KOMBU_TEST_URL`. A consumer that dies is
//! redelivered after `visibility_timeout`, checked every `unacked_restore_interval`: short
//! here, for the crash behaviour.
kombu_testkit::conformance_main!(
    &kombu_redis::DESCRIPTOR,
    "redis://127.0.0.1:6379/15",
    recovery_options = [("visibility_timeout", "1"), ("unacked_restore_interval", "0.2")],
);
