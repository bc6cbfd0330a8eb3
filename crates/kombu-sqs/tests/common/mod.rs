//! A throwaway moto server (SQS emulator) per test: loopback, a free port, killed on drop.
//! `moto_server` comes from the project venv (`cargo xtask test-matrix` installs it from
//! `tests/python/requirements.txt`), else `PATH`.
#![allow(dead_code, unreachable_pub, reason = "each test file uses part of it")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Option<Child>,
    pub port: u16,
}

fn moto_server() -> PathBuf {
    let venv = kombu_testkit::interop::workspace_root().join(".venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

impl Moto {
    /// Start one; panics with a clear message when `moto_server` is missing.
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut server = Moto { child: None, port };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed for the SQS tests (run `cargo xtask test-matrix`, which installs it into the project venv)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The URL Python Kombu gets (no query: Kombu reads options from `transport_options`).
    pub fn kombu_url(&self) -> String {
        format!("sqs://testing:testing@127.0.0.1:{}", self.port)
    }

    /// The URL kombu-rs gets: short long polls.
    pub fn url(&self) -> String {
        format!("{}?region=us-east-1&wait_time_seconds=1", self.kombu_url())
    }

    /// The URL with more options (`k=v&…`).
    pub fn url_with(&self, options: &str) -> String {
        format!("{}&{options}", self.url())
    }

    /// Kill the server (all its queues are lost: moto keeps them in memory).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An SQS client on the moto server, to set up what kombu-rs would never write or create.
pub fn raw_client(moto: &Moto) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(format!("http://127.0.0.1:{}", moto.port))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}
