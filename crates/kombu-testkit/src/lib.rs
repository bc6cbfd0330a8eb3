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
//! The descriptor is registered explicitly (a test binary may not link the transport's
//! `inventory` submission), and its name labels the report.
//!
//! The URL comes from `KOMBU_TEST_URL` when set (the xtask's test matrix sets it after starting
//! a throwaway server), else the default given. Behaviours are selected by the transport's
//! [`Capabilities`](kombu::Capabilities); every skipped behaviour is reported with its reason —
//! nothing is skipped silently. With `KOMBU_TESTKIT_REPORT=path` a JSON report is written for
//! the matrix summary; with `KOMBU_TESTKIT_DEFER=1` the suite defers to the matrix and exits.
//!
//! Tests isolate themselves by name (every queue and exchange gets a unique suffix), so one
//! broker serves the whole suite.
//!
//! Beside the suite: [`interop`] (the Rust side of the scenarios shared with Python Kombu) and
//! [`tls`] (a test certificate authority and server certificate for TLS tests).
#![forbid(unsafe_code)]

mod behaviours;
mod harness;
pub mod interop;
pub mod tls;

pub use behaviours::all as behaviours;
pub use harness::{run_main, Behaviour, BoxTest, Ctx, Failure, TestResult};

/// Define `main` for a conformance test target:
/// `conformance_main!(&DESCRIPTOR, default_url)`.
#[macro_export]
macro_rules! conformance_main {
    ($descriptor:expr, $default_url:expr) => {
        fn main() -> ::std::process::ExitCode {
            $crate::run_main($descriptor, $default_url)
        }
    };
}
