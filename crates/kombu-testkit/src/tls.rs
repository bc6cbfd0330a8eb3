//! Certificates for TLS tests against real servers: a certificate authority made for the
//! test and a server certificate it signed, by the `openssl` command (which
//! `cargo xtask test-matrix` installs). Shared by every transport crate's TLS tests.
#![allow(clippy::expect_used, reason = "test helpers fail loudly")]

use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command must be installed for the TLS test (apt-get install openssl, or run `cargo xtask test-matrix`)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Write into `dir`: `ca.pem` + `ca.key` (a CA made for the test) and `server.pem` +
/// `server.key`, a certificate for `localhost` and `127.0.0.1` that it signed, valid for two
/// days. P-256 keys: quick to make. Panics with the command's error when `openssl` fails.
pub fn make_test_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = [
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=kombu-rs test CA",
    ];
    openssl(dir, &[&["req", "-x509"][..], &ec, &ca].concat());
    let csr = [
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ];
    openssl(dir, &[&["req"][..], &ec, &csr].concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}
