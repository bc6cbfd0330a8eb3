//! TLS for `amqps://` (and `ssl=true`) with the keys of Kombu's `ssl` dict for py-amqp:
//! `ca_certs`, `certfile`, `keyfile`, `cert_reqs` and `server_hostname`, given in the URL
//! query or as transport options.
//!
//! The options are parsed and the certificate files read once, when the settings are made:
//! a missing or malformed file is an `InvalidArgument` error before anything connects,
//! instead of a failure on every reconnection. With the crate feature `tls` the result is a
//! rustls client configuration (ring as the crypto provider, no process-wide default is
//! installed), handed to lapin through its custom-connector entry point, because lapin's own
//! TLS settings (`OwnedTLSConfig`) can add authorities but can neither replace the built-in
//! roots nor turn verification off (`cert_reqs=none`).

use std::fmt;
use std::path::PathBuf;

use kombu_core::{ConnectOptions, Error, ErrorKind, Result};

/// The TLS options, Kombu's `ssl` dict keys for py-amqp.
pub(crate) const KEYS: &[&str] = &["ca_certs", "certfile", "keyfile", "cert_reqs", "server_hostname"];

/// How a TLS connection is set up.
#[derive(Clone)]
pub(crate) struct TlsSettings {
    /// Verify the broker's certificate chain and name (`cert_reqs` `required`, the default, or
    /// `optional`, which for a client is the same: a TLS server always presents a
    /// certificate); `none` turns verification off, as `ssl.CERT_NONE` does in py-amqp.
    pub(crate) verify: bool,
    /// PEM file of the authorities to trust instead of the built-in web roots.
    pub(crate) ca_certs: Option<PathBuf>,
    /// PEM client certificate and key, for brokers that authenticate clients.
    pub(crate) certfile: Option<PathBuf>,
    pub(crate) keyfile: Option<PathBuf>,
    /// The name sent as SNI and checked against the certificate: `server_hostname`, else the
    /// host as written in the URL (before `localhost` becomes `127.0.0.1`, since certificates
    /// name hosts, not the address the client dials).
    pub(crate) server_name: String,
    /// The rustls configuration built from the above.
    #[cfg(feature = "tls")]
    pub(crate) connector: lapin::tcp::RustlsConnector,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Paths only: the key material itself is never printed.
        f.debug_struct("TlsSettings")
            .field("verify", &self.verify)
            .field("ca_certs", &self.ca_certs)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidArgument, message)
}

/// The TLS options of `options`; `url_host` is the host as written in the URL (if any).
///
/// Errors with `InvalidArgument` for a bad `cert_reqs`, a certificate without its key (or the
/// reverse), an invalid server name, or a certificate file that cannot be read or parsed.
pub(crate) fn from_options(options: &ConnectOptions, url_host: Option<&str>) -> Result<TlsSettings> {
    let get = |key: &str| {
        options
            .transport_options
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let verify = match get("cert_reqs") {
        None => true,
        Some(raw) => parse_cert_reqs(raw)?,
    };
    let path = |key: &str| get(key).map(PathBuf::from);
    let (certfile, keyfile) = (path("certfile"), path("keyfile"));
    if certfile.is_some() != keyfile.is_some() {
        return Err(invalid("a client certificate needs both certfile and keyfile"));
    }
    let server_name = get("server_hostname")
        .or(url_host.filter(|h| !h.is_empty()))
        .unwrap_or("localhost")
        .to_owned();
    let ca_certs = path("ca_certs");
    #[cfg(feature = "tls")]
    let connector = connector(
        verify,
        ca_certs.as_ref(),
        certfile.as_ref().zip(keyfile.as_ref()),
        &server_name,
    )?;
    Ok(TlsSettings {
        verify,
        ca_certs,
        certfile,
        keyfile,
        server_name,
        #[cfg(feature = "tls")]
        connector,
    })
}

/// `cert_reqs` as py-amqp users write it: `required`/`optional`/`none`, Python's constant
/// names (`CERT_REQUIRED`, `ssl.CERT_NONE`, …) or their values (2, 1, 0).
fn parse_cert_reqs(raw: &str) -> Result<bool> {
    let lower = raw.to_ascii_lowercase();
    let name = lower.trim_start_matches("ssl.").trim_start_matches("cert_");
    match name {
        "required" | "optional" | "2" | "1" => Ok(true),
        "none" | "0" => Ok(false),
        _ => Err(invalid(format!(
            "cert_reqs must be required, optional or none, not {raw:?}"
        ))),
    }
}

/// Read the certificate files and build the rustls configuration.
#[cfg(feature = "tls")]
fn connector(
    verify: bool,
    ca_certs: Option<&PathBuf>,
    client: Option<(&PathBuf, &PathBuf)>,
    server_name: &str,
) -> Result<lapin::tcp::RustlsConnector> {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    ServerName::try_from(server_name)
        .map_err(|e| invalid(format!("invalid TLS server name {server_name:?}")).with_source(e))?;
    let unreadable = |option: &str, path: &std::path::Path, e: rustls::pki_types::pem::Error| {
        invalid(format!("cannot read {option} as PEM"))
            .with_context("path", path.display())
            .with_source(e)
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("the TLS protocol versions are not supported").with_source(e))?;
    let builder = if verify {
        let mut roots = rustls::RootCertStore::empty();
        match ca_certs {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| unreadable("ca_certs", path, e))?;
                let (added, _ignored) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(
                        invalid("ca_certs holds no usable certificate").with_context("path", path.display())
                    );
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let config = match client {
        Some((certfile, keyfile)) => {
            let chain = CertificateDer::pem_file_iter(certfile)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| unreadable("certfile", certfile, e))?;
            let key = PrivateKeyDer::from_pem_file(keyfile).map_err(|e| unreadable("keyfile", keyfile, e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                invalid("certfile and keyfile do not make a client certificate").with_source(e)
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(lapin::tcp::RustlsConnector::from(Arc::new(config)))
}

/// `cert_reqs=none`: any certificate and name are accepted (the handshake signatures are
/// still checked, so the session is encrypted, but not authenticated: py-amqp's
/// `ssl.CERT_NONE`).
#[cfg(feature = "tls")]
#[derive(Debug)]
struct NoVerification(std::sync::Arc<rustls::crypto::CryptoProvider>);

#[cfg(feature = "tls")]
impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_reqs_takes_pythons_spellings() {
        for raw in ["required", "CERT_REQUIRED", "ssl.CERT_OPTIONAL", "2", "optional"] {
            assert!(parse_cert_reqs(raw).unwrap(), "{raw}");
        }
        for raw in ["none", "CERT_NONE", "ssl.cert_none", "0"] {
            assert!(!parse_cert_reqs(raw).unwrap(), "{raw}");
        }
        assert_eq!(
            parse_cert_reqs("sometimes").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
