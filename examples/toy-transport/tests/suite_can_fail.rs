//! The conformance suite can fail: against the toy transport in its `lose_messages` mode
//! (every publish accepted, nothing stored) the behaviours whose claim is that something does
//! *not* arrive fail on their positive control, where a quiet period alone would pass them.
use std::time::Duration;

use kombu_testkit::{Outcome, Suite};

/// Behaviours that check only that nothing (else) arrives, which a transport that stores
/// nothing would pass without a positive control.
const NOTHING_ARRIVES: &[&str] = &[
    "direct_unknown_key_is_dropped",
    "publish_to_exchange_without_queues_succeeds",
    "unbind_stops_routing",
    "get_on_empty_queue_returns_none",
    "consume_on_empty_queue_times_out",
];

fn suite() -> Suite {
    Suite::new(&kombu_toy_transport::DESCRIPTOR, "toy://").patience(Duration::from_secs(1))
}

#[test]
fn positive_controls_fail_a_transport_that_loses_messages() {
    let report = suite()
        .run_with("toy:///lossy?lose_messages=true", NOTHING_ARRIVES)
        .expect("the suite runs");
    assert_eq!(report.results.len(), NOTHING_ARRIVES.len());
    for result in &report.results {
        match &result.outcome {
            Outcome::Failed(why) => assert!(
                why.contains("positive control"),
                "{} failed for another reason: {why}",
                result.name
            ),
            other => panic!("{} must fail when messages are lost, got {other:?}", result.name),
        }
    }
}

#[test]
fn the_same_behaviours_pass_when_nothing_is_lost() {
    let report = suite()
        .run_with("toy:///honest", NOTHING_ARRIVES)
        .expect("the suite runs");
    assert_eq!(report.passed().len(), NOTHING_ARRIVES.len(), "{report:?}");
}

#[test]
fn unknown_exclusions_are_refused() {
    let err = suite()
        .exclude("no_such_behaviour", "typo")
        .run_with("toy:///x", &[])
        .expect_err("an unknown exclusion is a setup error");
    assert!(err.contains("no_such_behaviour"), "{err}");
}

#[test]
fn exclusions_are_reported_with_their_reason() {
    let report = suite()
        .exclude("fifo_order_per_queue", "an example exclusion")
        .run_with("toy:///excluded", &["fifo_order_per_queue"])
        .expect("the suite runs");
    assert_eq!(
        report.outcome("fifo_order_per_queue"),
        Some(&Outcome::Excluded("an example exclusion"))
    );
    let json = report.to_json();
    assert_eq!(json["excluded"][0]["name"], "fifo_order_per_queue");
    assert_eq!(json["excluded"][0]["reason"], "an example exclusion");
}
