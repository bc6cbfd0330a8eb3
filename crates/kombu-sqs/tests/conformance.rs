//! The shared conformance suite against the SQS transport. `cargo xtask test-matrix` starts a
//! throwaway `moto_server` (from the project venv) and passes its URL as `KOMBU_TEST_URL`;
//! the default below is such a server on moto's usual port. Queues the suite creates get a
//! one-second visibility timeout in the recovery options, so a dead consumer's message comes
//! back quickly; `wait_time_seconds=1` keeps the long polls short. Built with the `sns`
//! feature, the connection turns fanout on (`supports_fanout=true`, also added to a
//! `KOMBU_TEST_URL` that lacks it), so the fanout behaviours run through SNS.
#[cfg(not(feature = "sns"))]
kombu_testkit::conformance_main!(
    &kombu_sqs::DESCRIPTOR,
    "sqs://testing:testing@127.0.0.1:5000?region=us-east-1&wait_time_seconds=1",
    recovery_options = [("visibility_timeout", "1")],
);

#[cfg(feature = "sns")]
fn main() -> std::process::ExitCode {
    // Before any thread starts: the suite (and the processes it starts) read the URL from
    // the environment.
    if let Ok(url) = std::env::var("KOMBU_TEST_URL") {
        if !url.contains("supports_fanout") {
            let sep = if url.contains('?') { '&' } else { '?' };
            std::env::set_var("KOMBU_TEST_URL", format!("{url}{sep}supports_fanout=true"));
        }
    }
    kombu_testkit::Suite::new(
        &kombu_sqs::DESCRIPTOR,
        "sqs://testing:testing@127.0.0.1:5000?region=us-east-1&wait_time_seconds=1&supports_fanout=true",
    )
    .recovery_option("visibility_timeout", "1")
    .run()
}
