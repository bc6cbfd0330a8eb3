//! `rediss://` against a redis-server speaking TLS only, with a certificate authority made
//! for the test (by the `openssl` command, which `cargo xtask test-matrix` installs).
#![cfg(feature = "tls")]
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kombu_core::{
    ConnectOptions, DeclareOptions, ErrorKind, GetOptions, Queue, RawMessage, RawPublishOptions,
};

struct TlsServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, a server certificate for `localhost` signed by it (kombu-testkit makes them), and a
/// TLS-only redis-server.
fn start() -> TlsServer {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port");
    let dir = std::env::temp_dir().join(format!("kombu-redis-tls-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    kombu_testkit::tls::make_test_certificates(&dir);
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--tls-cert-file", "server.pem", "--tls-key-file", "server.key"])
        .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(&dir)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed for the Redis tests");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server (TLS) did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    TlsServer { child, port, dir }
}

async fn round_trip(url: &str) -> kombu_core::Result<Vec<u8>> {
    let transport = (kombu_redis::DESCRIPTOR.connect)(ConnectOptions::new(url.parse()?)).await?;
    let channel = transport.create_channel().await?;
    channel
        .declare_queue(&Queue::new("tls"), DeclareOptions::default())
        .await?;
    let message = RawMessage::new("over tls");
    channel
        .publish(message, RawPublishOptions::new("", "tls"))
        .await?;
    let delivery = channel.get("tls", GetOptions::default()).await?;
    transport.close().await?;
    Ok(delivery.map(|d| d.message.body.to_vec()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_server_against_the_given_ca() {
    let server = start();
    let ca = server.dir.join("ca.pem");
    let url = format!(
        "rediss://localhost:{}/0?ssl_ca_certs={}",
        server.port,
        ca.display()
    );
    assert_eq!(round_trip(&url).await.expect("TLS round trip"), b"over tls");

    // Without the test CA the certificate is not trusted: a clear connection error.
    let untrusted = format!("rediss://localhost:{}/0", server.port);
    let error = round_trip(&untrusted)
        .await
        .expect_err("an unknown CA must be refused");
    assert_eq!(error.kind(), ErrorKind::Connection, "{error}");

    // ssl_cert_reqs=none turns verification off, as in redis-py.
    let insecure = format!("rediss://localhost:{}/0?ssl_cert_reqs=none", server.port);
    assert_eq!(round_trip(&insecure).await.expect("unverified TLS"), b"over tls");

    // Plain Redis on a TLS port fails, it does not hang.
    let plain = format!(
        "redis://localhost:{}/0?socket_connect_timeout=2&socket_timeout=2",
        server.port
    );
    assert!(
        round_trip(&plain).await.is_err(),
        "plain Redis against a TLS port"
    );
}

#[test]
fn tls_options_need_a_tls_url_and_valid_values() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (url, kind) in [
        (
            "redis://localhost/0?ssl_cert_reqs=none",
            ErrorKind::InvalidArgument,
        ),
        (
            "rediss://localhost/0?ssl_cert_reqs=sometimes",
            ErrorKind::InvalidArgument,
        ),
        (
            "rediss://localhost/0?ssl_certfile=/nonexistent.pem",
            ErrorKind::InvalidArgument,
        ),
        (
            "rediss://localhost/0?ssl_ca_certs=/nonexistent/ca.pem",
            ErrorKind::InvalidArgument,
        ),
    ] {
        let error = runtime
            .block_on(round_trip(url))
            .expect_err("invalid TLS settings must be refused");
        assert_eq!(error.kind(), kind, "{url}: {error}");
    }
}
