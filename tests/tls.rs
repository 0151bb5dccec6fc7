//! The optional TLS listener (for Meta's Node SDK, which only speaks HTTPS).

mod support;

use support::*;

// With a certificate configured the proxy speaks HTTPS, offers HTTP/2 by ALPN, and forwards.
#[tokio::test]
async fn tls_listener_serves_https_and_http2() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();

    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url)
        .set("server.tls_cert_file", cert_path.display().to_string())
        .set("server.tls_key_file", key_path.display().to_string())
        .start()
        .await;
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let c = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(root)
        .resolve("localhost", proxy.addr)
        .build()
        .unwrap();
    let url = format!(
        "https://localhost:{}/v19.0/{WABA}/message_templates?limit=2",
        proxy.addr.port()
    );
    let r = c.get(&url).bearer_auth(CLIENT_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let v: serde_json::Value = r.json().await.unwrap();
    let next = v["paging"]["next"].as_str().unwrap();
    assert!(
        next.starts_with(&format!("https://localhost:{}/", proxy.addr.port())),
        "{next}"
    );
}
