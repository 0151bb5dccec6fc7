//! The upstream over TLS, as graph.facebook.com is reached: a real TLS server on loopback (its CA
//! trusted through `upstream.ca_file`) that answers over whichever protocol ALPN chose. HTTP/2,
//! which Meta negotiates, carries every call on one connection; HTTP/1.1 pools as usual; an
//! upstream whose certificate is not trusted is never sent a request.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpListener;

const BODY: &str = r#"{"data":[{"name":"hello_world"}]}"#;

struct TlsUpstream {
    url: String,
    ca_pem: String,
    accepted: Arc<AtomicUsize>,
    /// (HTTP version, Authorization) of every request received.
    seen: Arc<Mutex<Vec<(http::Version, String)>>>,
}

/// A TLS server for `localhost` signed by its own CA, offering `alpn` (most preferred first).
async fn start_tls_upstream(alpn: &[&[u8]]) -> TlsUpstream {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();

    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (a, s) = (accepted.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::SeqCst);
            let (acceptor, s) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let auth = req
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    s.lock().unwrap().push((req.version(), auth));
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(bytes::Bytes::from_static(BODY.as_bytes())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TlsUpstream {
        url: format!("https://localhost:{port}"),
        ca_pem: ca.pem(),
        accepted,
        seen,
    }
}

/// A proxy in front of `up`, cache off, trusting `ca_pem` when given.
async fn proxy(up: &TlsUpstream, ca_pem: Option<&str>) -> (TestProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = TestProxy::builder(&up.url).cache(false);
    if let Some(pem) = ca_pem {
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, pem).unwrap();
        proxy = proxy.set("upstream.ca_file", path.display().to_string());
    }
    (proxy.start().await, dir)
}

async fn get_ok(p: &TestProxy, path: &str) {
    let r = get(&format!("{}{path}", p.url)).await;
    assert_eq!(r.status(), 200, "{path}");
    assert_eq!(r.text().await.unwrap(), BODY);
}

// Meta's case: ALPN picks HTTP/2, and sequential and concurrent calls all share one connection,
// each with our token.
#[tokio::test]
async fn http2_upstream_carries_every_call_on_one_connection() {
    let up = start_tls_upstream(&[b"h2", b"http/1.1"]).await;
    let (p, _dir) = proxy(&up, Some(&up.ca_pem)).await;
    for i in 0..5 {
        get_ok(&p, &templates_path(i)).await;
    }
    let paths: Vec<String> = (5..25).map(templates_path).collect();
    futures_util::future::join_all(paths.iter().map(|t| get_ok(&p, t))).await;
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 25);
    assert!(
        seen.iter().all(|(v, _)| *v == http::Version::HTTP_2),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .all(|(_, auth)| *auth == format!("Bearer {SYSTEM_TOKEN}")));
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

// An upstream that only speaks HTTP/1.1 over TLS is pooled like a plain one.
#[tokio::test]
async fn http1_over_tls_reuses_its_connection() {
    let up = start_tls_upstream(&[b"http/1.1"]).await;
    let (p, _dir) = proxy(&up, Some(&up.ca_pem)).await;
    for i in 0..10 {
        get_ok(&p, &templates_path(i)).await;
    }
    let seen = up.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|(v, _)| *v == http::Version::HTTP_11));
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

// Without its CA (the bundled web PKI roots only), the upstream's certificate is refused: a
// Graph-shaped 502, and no request (so no token) ever reaches it.
#[tokio::test]
async fn an_untrusted_upstream_certificate_gets_no_request() {
    let up = start_tls_upstream(&[b"h2", b"http/1.1"]).await;
    let (p, _dir) = proxy(&up, None).await;
    let r = get(&format!("{}{}", p.url, templates_path(0))).await;
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(graph_error(&v)["is_transient"], true);
    assert!(up.seen.lock().unwrap().is_empty());
}

// A ca_file that cannot be read, or holds no certificate, fails the load naming the key.
#[test]
fn a_bad_ca_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for (file, want) in [
        (dir.path().join("missing.pem"), "cannot read"),
        (empty, "no PEM certificate"),
    ] {
        let err = TestProxy::builder("https://graph.facebook.com")
            .set("upstream.ca_file", file.display().to_string())
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("upstream.ca_file") && err.contains(want),
            "{err}"
        );
        assert!(err.contains("test.toml"), "{err}");
    }
}
