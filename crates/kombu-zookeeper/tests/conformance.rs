//! The shared conformance suite against the ZooKeeper transport. `cargo xtask test-matrix`
//! starts a throwaway ZooKeeper and passes its URL as `KOMBU_TEST_URL`. A consumer that dies
//! is redelivered when its session expires: a short session timeout here (the xtask's server
//! allows 2 s), for the crash behaviour.
kombu_testkit::conformance_main!(
    &kombu_zookeeper::DESCRIPTOR,
    "zookeeper://127.0.0.1:2181/kombu-conformance",
    recovery_options = [("session_timeout", "2")],
);
