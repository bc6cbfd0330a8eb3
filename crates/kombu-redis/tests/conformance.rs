//! The shared conformance suite against the Redis transport. `cargo xtask test-matrix` starts
//! a throwaway redis-server and passes its URL as `KOMBU_TEST_URL`.
kombu_testkit::conformance_main!(&kombu_redis::DESCRIPTOR, "redis://127.0.0.1:6379/15");
