//! The shared conformance suite against the MongoDB transport. `cargo xtask test-matrix`
//! starts a throwaway FerretDB (a MongoDB-wire server) and passes its URL as
//! `KOMBU_TEST_URL`. A consumer that dies is redelivered when its claims' deadline passes:
//! a short `visibility_timeout` here, for the crash behaviours. Nothing is excluded:
//! competing consumers included, the claims are atomic on FerretDB too.
kombu_testkit::conformance_main!(
    &kombu_mongodb::DESCRIPTOR,
    "mongodb://127.0.0.1:27017/kombu_conformance",
    recovery_options = [("visibility_timeout", "2")],
);
