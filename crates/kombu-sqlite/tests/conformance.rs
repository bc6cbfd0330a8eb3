//! The shared conformance suite against the SQLite transport, on a fresh database file (or
//! `KOMBU_TEST_URL`). A consumer that dies is redelivered after `visibility_timeout`: short
//! here, for the crash behaviour.
kombu_testkit::conformance_main!(
    &kombu_sqlite::DESCRIPTOR,
    &kombu_sqlite_test_url(),
    recovery_options = [("visibility_timeout", "1")],
);

fn kombu_sqlite_test_url() -> String {
    let dir = std::env::temp_dir().join(format!("kombu-sqlite-conformance-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    format!("sqlite://{}", dir.join("conformance.db").display())
}
