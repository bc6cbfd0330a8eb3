//! Support for the test binaries that signal their own process.
#![allow(dead_code, clippy::expect_used, reason = "test support")]

/// Send `signal` (as `kill` takes it: `-TERM`) to this process.
pub(crate) fn signal_self(signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} failed");
}
