//! A throwaway FerretDB (MongoDB-wire, SQLite files in a temp dir) per test, on a free
//! loopback port, killed on drop; or, with `KOMBU_TEST_MONGODB_URL`, a real `mongod` (each
//! test then gets a database of its own on it).
//!
//! The FerretDB binary is the one `cargo xtask test-matrix` builds and caches at
//! `<target>/ferretdb/v1.24.2/ferretdb` (or `KOMBU_FERRETDB`). A missing binary fails the
//! test with a message saying how to get it: nothing is skipped silently.
#![allow(dead_code, unreachable_pub, reason = "each test file uses part of it")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The FerretDB release the xtask builds.
pub const FERRETDB_VERSION: &str = "v1.24.2";

fn ferretdb() -> PathBuf {
    if let Some(path) = std::env::var_os("KOMBU_FERRETDB") {
        return PathBuf::from(path);
    }
    // The test binary is <target>/<profile>/deps/<name>.
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives under the target directory");
    target.join("ferretdb").join(FERRETDB_VERSION).join("ferretdb")
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// A real server from `KOMBU_TEST_MONGODB_URL` (nothing to start or stop).
    external: Option<String>,
    database: String,
}

impl Server {
    /// A FerretDB of this test's own, or the `KOMBU_TEST_MONGODB_URL` server.
    pub fn start() -> Server {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let database = format!("kombu_test_{}_{n}", std::process::id());
        if let Ok(url) = std::env::var("KOMBU_TEST_MONGODB_URL") {
            return Server {
                child: None,
                port: 0,
                dir: PathBuf::new(),
                external: Some(url.trim_end_matches('/').to_owned()),
                database,
            };
        }
        Self::start_ferretdb(database)
    }

    /// Always a FerretDB of this test's own (the tests that stop and restart the server).
    pub fn start_ferretdb(database: String) -> Server {
        let binary = ferretdb();
        assert!(
            binary.is_file(),
            "the MongoDB tests need FerretDB {FERRETDB_VERSION} at {} (run `cargo xtask test-matrix --backends mongodb`, which builds and caches it, or set KOMBU_FERRETDB or KOMBU_TEST_MONGODB_URL)",
            binary.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let dir = std::env::temp_dir().join(format!("kombu-ferretdb-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = Server {
            child: None,
            port,
            dir,
            external: None,
            database,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).expect("log");
        let child = Command::new(ferretdb())
            .arg(format!("--listen-addr=127.0.0.1:{}", self.port))
            .arg("--handler=sqlite")
            .arg(format!("--sqlite-url=file:{}/", self.dir.display()))
            .arg(format!("--state-dir={}", self.dir.display()))
            .arg("--debug-addr=-")
            .arg("--telemetry=disable")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("FerretDB starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "FerretDB did not start on port {}; see {}",
                self.port,
                self.dir.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server without a database: `mongodb://127.0.0.1:P`.
    pub fn base(&self) -> String {
        match &self.external {
            Some(url) => url
                .split('?')
                .next()
                .unwrap_or(url)
                .trim_end_matches('/')
                .to_owned(),
            None => format!("mongodb://127.0.0.1:{}", self.port),
        }
    }

    /// The URL of this test's database (Python Kombu and kombu-rs alike).
    pub fn url(&self) -> String {
        format!("{}/{}", self.base(), self.database)
    }

    /// The URL with transport options (`k=v&…`).
    pub fn url_with(&self, options: &str) -> String {
        format!("{}?{options}", self.url())
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// A driver client on the server, to look at and write what kombu-rs would not.
    pub async fn client(&self) -> mongodb::Client {
        mongodb::Client::with_uri_str(self.base())
            .await
            .expect("driver client")
    }

    /// Stop the server (SIGKILL; its files stay).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port with the same files.
    pub fn restart(&mut self) {
        assert!(self.external.is_none(), "cannot restart an external server");
        self.kill();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if self.external.is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
