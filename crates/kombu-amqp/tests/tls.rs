//! `amqps://` against a RabbitMQ node with a TLS listener and a certificate authority made
//! for the test (by the `openssl` command, which `cargo xtask test-matrix` installs).
#![cfg(feature = "tls")]
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use common::RabbitNode;
use kombu_core::{
    ConnectOptions, DeclareOptions, ErrorKind, GetOptions, Queue, RawMessage, RawPublishOptions,
};

/// Connect, publish one message (confirmed) and get it back.
async fn round_trip(url: &str) -> kombu_core::Result<Vec<u8>> {
    let transport = (kombu_amqp::DESCRIPTOR.connect)(ConnectOptions::new(url.parse()?)).await?;
    let channel = transport.create_channel().await?;
    channel
        .declare_queue(&Queue::new("tls"), DeclareOptions::default())
        .await?;
    let message = RawMessage::new("over tls");
    channel
        .publish(message, RawPublishOptions::new("", "tls"))
        .await?;
    let mut get = GetOptions::default();
    get.no_ack = true;
    let delivery = channel.get("tls", get).await?;
    transport.close().await?;
    Ok(delivery.map(|d| d.message.body.to_vec()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_verifies_the_broker_against_the_given_ca() {
    let node = RabbitNode::start_tls();
    let port = node.tls_port();
    let ca = node.ca_file();

    let verified = format!("amqps://guest:guest@localhost:{port}//?ca_certs={}", ca.display());
    assert_eq!(round_trip(&verified).await.expect("TLS round trip"), b"over tls");

    // ssl=true on an amqp:// URL is TLS as well (py-amqp's switch), with the same options.
    let switched = format!(
        "amqp://guest:guest@127.0.0.1:{port}//?ssl=true&ca_certs={}&server_hostname=localhost",
        ca.display()
    );
    assert_eq!(round_trip(&switched).await.expect("ssl=true"), b"over tls");

    // Without the test CA (the web's roots) the certificate is not trusted.
    let untrusted = format!("amqps://guest:guest@localhost:{port}//");
    let error = round_trip(&untrusted)
        .await
        .expect_err("an unknown CA must be refused");
    assert_eq!(error.kind(), ErrorKind::Connection, "{error}");

    // A name the certificate does not carry is refused too.
    let wrong_name = format!(
        "amqps://guest:guest@localhost:{port}//?ca_certs={}&server_hostname=rabbit.example",
        ca.display()
    );
    let error = round_trip(&wrong_name)
        .await
        .expect_err("a certificate for another name must be refused");
    assert_eq!(error.kind(), ErrorKind::Connection, "{error}");

    // cert_reqs=none turns verification off, as ssl.CERT_NONE does in py-amqp.
    let insecure = format!("amqps://guest:guest@localhost:{port}//?cert_reqs=none");
    assert_eq!(round_trip(&insecure).await.expect("unverified TLS"), b"over tls");

    // Plain AMQP on the TLS port fails, it does not hang.
    let started = Instant::now();
    let plain = format!("amqp://guest:guest@localhost:{port}//?connect_timeout=10");
    let error = round_trip(&plain)
        .await
        .expect_err("plain AMQP against a TLS port");
    assert_eq!(error.kind(), ErrorKind::Connection, "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "plain AMQP on the TLS port took {:?}: {error}",
        started.elapsed()
    );

    // And TLS against the plain port fails as quickly.
    let started = Instant::now();
    let tls_on_plain = format!(
        "amqps://guest:guest@localhost:{}//?cert_reqs=none&connect_timeout=10",
        node.port()
    );
    let error = round_trip(&tls_on_plain)
        .await
        .expect_err("TLS against the plain AMQP port");
    assert_eq!(error.kind(), ErrorKind::Connection, "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "TLS on the plain port took {:?}: {error}",
        started.elapsed()
    );
}

#[test]
fn bad_tls_options_are_invalid_arguments() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("kombu-amqp-tls-options-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let not_pem = dir.join("not-a-certificate.pem");
    std::fs::write(&not_pem, "hello").expect("file");
    let not_pem = not_pem.display();
    for url in [
        "amqps://h//?cert_reqs=sometimes".to_owned(),
        "amqps://h//?certfile=/nonexistent/client.pem".to_owned(),
        "amqps://h//?certfile=/nonexistent/client.pem&keyfile=/nonexistent/client.key".to_owned(),
        "amqps://h//?ca_certs=/nonexistent/ca.pem".to_owned(),
        format!("amqps://h//?ca_certs={not_pem}"),
        "amqps://h//?server_hostname=not%20a%20name".to_owned(),
        "amqp://h//?ssl=sometimes".to_owned(),
        "amqp://h//?cert_reqs=none".to_owned(),
    ] {
        let error = runtime
            .block_on(round_trip(&url))
            .expect_err("invalid TLS settings must be refused");
        assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{url}: {error}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
