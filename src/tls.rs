//! rustls settings, built from files named in the config: the listener's acceptor (h2 and
//! http/1.1 by ALPN) and the client settings for `https://` upstreams and JWKS fetches.
//! One crypto backend: aws-lc-rs.

use std::path::Path;
use std::sync::Arc;

/// Why the listener's TLS settings cannot be built, by the config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    CertFile(String),
    #[error("{0}")]
    KeyFile(String),
    #[error("{0}")]
    Settings(String),
}

impl TlsError {
    /// The `gateway.yaml` key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::CertFile(_) => "server.tls.cert_file",
            TlsError::KeyFile(_) => "server.tls.key_file",
            TlsError::Settings(_) => "server.tls",
        }
    }
}

/// A TLS acceptor from PEM files, offering h2 and http/1.1 by ALPN.
pub fn tls_acceptor(
    cert_file: &Path,
    key_file: &Path,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let cert_error =
        |err: &dyn std::fmt::Display| TlsError::CertFile(format!("{}: {err}", cert_file.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|err| cert_error(&err))?
        .collect::<Result<_, _>>()
        .map_err(|err| cert_error(&err))?;
    if certs.is_empty() {
        return Err(cert_error(&"holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|err| TlsError::KeyFile(format!("{}: {err}", key_file.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| TlsError::Settings(err.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|err| TlsError::KeyFile(format!("the key does not fit the certificate: {err}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// rustls client settings: the system's roots plus an optional extra CA file.
pub fn tls_client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system store may hold certificates rustls cannot use; skip those.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|err| format!("{} is not a PEM certificate file: {err}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no certificate", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|err| format!("{}: {err}", path.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| err.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
