//! The shared conformance suite against the SQS transport. `cargo xtask test-matrix` starts a
//! throwaway `moto_server` (from the project venv) and passes its URL as `KOMBU_TEST_URL`;
//! the default below is such a server on moto's usual port. Queues the suite creates get a
//! one-second visibility timeout in the recovery options, so a dead consumer's message comes
//! back quickly; `wait_time_seconds=1` keeps the long polls short.
kombu_testkit::conformance_main!(
    &kombu_sqs::DESCRIPTOR,
    "sqs://testing:testing@127.0.0.1:5000?region=us-east-1&wait_time_seconds=1",
    recovery_options = [("visibility_timeout", "1")],
);
