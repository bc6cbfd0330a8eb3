//! The shared conformance suite against the AMQP transport. `cargo xtask test-matrix` starts
//! a throwaway RabbitMQ node and passes its URL as `KOMBU_TEST_URL`.
kombu_testkit::conformance_main!(&kombu_amqp::DESCRIPTOR, "amqp://guest:guest@127.0.0.1:5672//");
