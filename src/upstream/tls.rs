//! The outbound TLS connector: rustls (ring) over hyper-util's `HttpConnector`, HTTP/1.1 and
//! HTTP/2 offered by ALPN. Used for Meta (by the pool) and for webhook deliveries.
//!
//! It must never trust roots other than the bundled web PKI roots or the configured `ca_roots`,
//! and never pick a destination or hold connections (the caller does).

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

/// An outbound connector: rustls (ring) trusting the bundled web PKI roots, or only `ca_roots`
/// when given; HTTP/1.1 and HTTP/2 by ALPN, plain HTTP allowed for loopback test upstreams, Nagle
/// off.
pub fn https_connector(
    connect_timeout: Duration,
    ca_roots: &[rustls_pki_types::CertificateDer<'static>],
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let provider = rustls::crypto::ring::default_provider();
    let builder = if ca_roots.is_empty() {
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .expect("the ring provider supports the default TLS versions")
    } else {
        let mut roots = rustls::RootCertStore::empty();
        // Certificates that are not CAs were refused by rustls here; the rest are trusted.
        let _ = roots.add_parsable_certificates(ca_roots.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
    };
    builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}
