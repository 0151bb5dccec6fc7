//! The server's certificate and key (`server.tls_cert_file` / `tls_key_file`): read, parsed and
//! fitted together into a rustls server config offering h2 and http/1.1. [`Config::load`] does it
//! so `check-config` and `serve` refuse unusable files before binding, naming the key; the listener
//! builds its acceptor from the same function.
//!
//! It must never print key material: messages name the file and what is wrong with it.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsFiles;

/// The rustls server config for `files`, or what is wrong with them.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    let (cert, key) = (&files.cert, &files.key);
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read certificates: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: cannot read private key: {e}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("TLS certificate and key do not fit: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
