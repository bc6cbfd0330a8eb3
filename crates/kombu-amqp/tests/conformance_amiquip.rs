//! The shared conformance suite against the amiquip driver of the AMQP transport.
//! `cargo xtask test-matrix` starts a throwaway RabbitMQ node and passes its URL as
//! `KOMBU_TEST_URL`.
kombu_testkit::conformance_main!(
    &kombu_amqp::AMIQUIP_DESCRIPTOR,
    "amqp+amiquip://guest:guest@127.0.0.1:5672//"
);
