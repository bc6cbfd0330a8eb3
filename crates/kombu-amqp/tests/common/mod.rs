//! A throwaway RabbitMQ node for tests that must stop and start their broker, set up like
//! xtask's (`../shared/reference/infra.md`): its own node name, AMQP and distribution ports
//! on loopback, database and logs in a temp dir. `cargo xtask test-matrix` installs
//! `rabbitmq-server`; without it these tests fail and say so.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, reason = "test support")]

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A RabbitMQ node that is stopped when dropped.
pub(crate) struct RabbitNode {
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl RabbitNode {
    /// Start a node and wait until it accepts AMQP connections.
    pub(crate) fn start() -> RabbitNode {
        assert!(
            std::path::Path::new(SERVER).exists(),
            "{SERVER} is missing: install Debian's rabbitmq-server (cargo xtask test-matrix does)"
        );
        let port = free_port();
        let mut dist_port = free_port();
        while dist_port == port {
            dist_port = free_port();
        }
        let dir = std::env::temp_dir().join(format!("kombu-amqp-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("env file");
        let mut node = RabbitNode {
            port,
            dist_port,
            dir,
            child: None,
        };
        node.spawn();
        node
    }

    /// The broker URL.
    pub(crate) fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}//", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log file");
        let d = self.dir.display().to_string();
        let child = Command::new(SERVER)
            .env("RABBITMQ_NODENAME", format!("kombu-test-{}@localhost", self.port))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia"))
            .env("RABBITMQ_LOG_BASE", format!("{d}/log"))
            .env("RABBITMQ_CONF_ENV_FILE", format!("{d}/rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", format!("{d}/rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", format!("{d}/advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{d}/enabled_plugins"))
            .env("RABBITMQ_ENABLED_PLUGINS", "")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start rabbitmq-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "rabbitmq-server exited ({status}); see {}/server.log",
                    self.dir.display()
                );
            }
            assert!(Instant::now() < deadline, "RabbitMQ did not start within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop the node (SIGTERM to the start script, which stops the Erlang node) and wait
    /// until its port is closed.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop and start again on the same ports and database (durable entities and
    /// persistent messages survive).
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
