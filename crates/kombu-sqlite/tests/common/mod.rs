//! Scaffolding shared by the integration tests: a database file in a fresh temporary
//! directory, removed afterwards.
#![allow(dead_code, clippy::unwrap_used)] // each test binary uses part of it

use std::path::PathBuf;

pub(crate) struct TempDb {
    dir: PathBuf,
}

impl TempDb {
    /// A fresh directory for the test called `test`.
    pub(crate) fn new(test: &str) -> TempDb {
        let dir = std::env::temp_dir().join(format!("kombu-sqlite-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDb { dir }
    }

    /// The database file.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join("queue.db")
    }

    /// kombu-rs's URL for the file, with `query` (`""` or `"?option=value"`) appended.
    pub(crate) fn url(&self, query: &str) -> String {
        format!("sqlite://{}{query}", self.path().display())
    }

    /// Kombu's spelling: four slashes for an absolute path.
    pub(crate) fn python_url(&self) -> String {
        format!("sqla+sqlite:///{}", self.path().display())
    }

    /// A plain SQLite connection to look at the rows.
    pub(crate) fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path()).unwrap()
    }

    /// The single integer a query returns.
    pub(crate) fn rows(&self, sql: &str) -> i64 {
        self.sql().query_row(sql, [], |row| row.get(0)).unwrap()
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
