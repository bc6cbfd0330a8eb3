//! A throwaway RabbitMQ node for tests that must stop and start their broker, set up like
//! xtask's (`../shared/reference/infra.md`): its own node name, AMQP and distribution ports
//! on loopback, database and logs in a temp dir. `cargo xtask test-matrix` installs
//! `rabbitmq-server`; without it these tests fail and say so. [`RabbitNode::start_tls`] adds
//! a TLS listener with a certificate authority made for the test by the `openssl` command
//! (which the matrix installs too).
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, reason = "test support")]

pub(crate) mod failover;
pub(crate) mod restart;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A RabbitMQ node that is stopped when dropped.
pub(crate) struct RabbitNode {
    port: u16,
    dist_port: u16,
    /// The TLS listener's port, when started with [`RabbitNode::start_tls`].
    tls_port: Option<u16>,
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
        RabbitNode::start_with(false)
    }

    /// Start a node that also listens for TLS (AMQPS) on [`RabbitNode::tls_port`], with a
    /// server certificate for `localhost` and `127.0.0.1` signed by the test CA in
    /// [`RabbitNode::ca_file`]; clients are not asked for certificates.
    pub(crate) fn start_tls() -> RabbitNode {
        RabbitNode::start_with(true)
    }

    fn start_with(tls: bool) -> RabbitNode {
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
        let tls_port = tls.then(|| {
            let mut tls_port = free_port();
            while tls_port == port || tls_port == dist_port {
                tls_port = free_port();
            }
            kombu_testkit::tls::make_test_certificates(&dir);
            let d = dir.display();
            // RabbitMQ 3.10's new-style configuration (RABBITMQ_CONFIG_FILE names it without
            // the .conf extension).
            std::fs::write(
                dir.join("rabbitmq.conf"),
                format!(
                    "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
                     ssl_options.cacertfile = {d}/ca.pem\n\
                     ssl_options.certfile = {d}/server.pem\n\
                     ssl_options.keyfile = {d}/server.key\n\
                     ssl_options.verify = verify_none\n\
                     ssl_options.fail_if_no_peer_cert = false\n"
                ),
            )
            .expect("rabbitmq.conf");
            tls_port
        });
        let mut node = RabbitNode {
            port,
            dist_port,
            tls_port,
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

    /// The plain AMQP port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The TLS listener's port (nodes from [`RabbitNode::start_tls`] only).
    pub(crate) fn tls_port(&self) -> u16 {
        self.tls_port.expect("a node started with start_tls")
    }

    /// The PEM file of the CA that signed the node's TLS certificate.
    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
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
        if let Some(tls_port) = self.tls_port {
            while TcpStream::connect((Ipv4Addr::LOCALHOST, tls_port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "RabbitMQ's TLS listener did not start within 60 s; see {}/server.log",
                    self.dir.display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
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
