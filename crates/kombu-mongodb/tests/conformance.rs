//! The shared conformance suite against the MongoDB transport.
kombu_testkit::conformance_main!(
    &kombu_mongodb::DESCRIPTOR,
    "mongodb://127.0.0.1:27017/kombu_conformance",
);
