//! # kombu-testkit
//!
//! One conformance suite for every kombu-rs transport — ours and third parties'. A transport
//! crate runs it from a `harness = false` test target:
//!
//! ```ignore
//! // tests/conformance.rs
//! kombu_testkit::conformance_main!(&kombu_memory::DESCRIPTOR, "memory:///conformance");
//! ```
//!
//! The suite finds the transport through the registry, as an application would: the crate
//! submits its descriptor with `inventory` (nothing registers it explicitly here), and the
//! descriptor's name labels the report.
//!
//! The URL comes from `KOMBU_TEST_URL` when set (the xtask's test matrix sets it after starting
//! a throwaway server), else the default given. The suite connects first and selects
//! behaviours by the [`Capabilities`](kombu::Capabilities) that connection reports (its
//! options may turn features off); every behaviour left out is reported with its reason —
//! nothing is skipped silently. A transport crate may also exclude behaviours its
//! capabilities select, each with a reason, which the report and the matrix summary print:
//!
//! ```ignore
//! kombu_testkit::conformance_main!(
//!     &my_transport::DESCRIPTOR,
//!     "mine://",
//!     exclude = [("prefetch_bounds_in_flight", "the broker has no prefetch limit")],
//! );
//! ```
//!
//! (or [`Suite`] as a builder). With `KOMBU_TESTKIT_REPORT=path` a JSON report is written for
//! the matrix summary; with `KOMBU_TESTKIT_DEFER=1` the suite defers to the matrix and exits.
//!
//! Behaviours assert error kinds, give every "nothing arrives" check a positive control (a
//! message the same route must deliver, published after the one that must not arrive), wait
//! for conditions with a deadline instead of sleeping a fixed time, and are gated by
//! `fifo_order`, `exactly_once_delivery` and `exact_counts` where they assume them.
//!
//! Tests isolate themselves by name (every queue and exchange gets a unique suffix), so one
//! broker serves the whole suite. The cross-process behaviours start the test binary again
//! as a second process.
//!
//! Beside the suite: [`interop`] (the Rust side of the scenarios shared with Python Kombu),
//! [`faults`] (scenarios for crates whose tests can restart their broker) and
//! [`tls`] (a test certificate authority and server certificate for TLS tests).
#![forbid(unsafe_code)]

mod behaviours;
mod child;
pub mod common_interop;
pub mod faults;
mod harness;
pub mod interop;
pub mod tls;

pub use behaviours::all as behaviours;
pub use harness::{
    run_main, Behaviour, BehaviourResult, BoxTest, Ctx, Failure, Outcome, Suite, SuiteReport, TestResult,
};

/// Define `main` for a conformance test target:
/// `conformance_main!(&DESCRIPTOR, default_url)`, optionally followed by
/// `exclude = [("behaviour", "reason"), …]` and
/// `recovery_options = [("visibility_timeout", "1"), …]` (see [`Suite::recovery_option`]).
#[macro_export]
macro_rules! conformance_main {
    (
        $descriptor:expr, $default_url:expr
        $(, exclude = [$(($name:expr, $reason:expr)),* $(,)?])?
        $(, recovery_options = [$(($key:expr, $value:expr)),* $(,)?])?
        $(,)?
    ) => {
        fn main() -> ::std::process::ExitCode {
            $crate::Suite::new($descriptor, $default_url)
                $($(.exclude($name, $reason))*)?
                $($(.recovery_option($key, $value))*)?
                .run()
        }
    };
}
