//! Scaffolding shared by the CLI's integration tests.
#![allow(dead_code)] // each test binary uses part of it

use std::path::PathBuf;

/// A scratch directory for one test under Cargo's target tmp dir, emptied first.
fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("kombu-cli")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// An SQLite broker URL in the test's scratch directory.
pub(crate) fn sqlite_url(test: &str) -> String {
    format!("sqlite://{}", scratch(test).join("broker.db").display())
}
