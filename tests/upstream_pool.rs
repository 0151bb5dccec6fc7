//! The upstream connection pool against a real HTTP/1.1 server on loopback that counts the
//! connections it accepts: connections are reused, closed ones are replaced without failing a
//! call, bodiless answers give their connection back, and the idle limits from config hold.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BODY: &str = r#"{"data":[{"name":"hello_world"}]}"#;

/// A plain HTTP/1.1 server: answers every request with a small JSON 200 (no body for HEAD, none
/// for `/empty`, which answers 204), and may close each connection after one answer without
/// saying so, as a server whose keep-alive timer fired.
struct Upstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    close_after_each: Arc<AtomicBool>,
}

async fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let close_after_each = Arc::new(AtomicBool::new(false));
    let (a, r, c) = (accepted.clone(), requests.clone(), close_after_each.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::SeqCst);
            let (r, c) = (r.clone(), c.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request head (these calls carry no body).
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    r.fetch_add(1, Ordering::SeqCst);
                    let resp = if head.contains("/empty") {
                        "HTTP/1.1 204 No Content\r\n\r\n".to_string()
                    } else if head.starts_with("HEAD ") {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            BODY.len()
                        )
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
                            BODY.len()
                        )
                    };
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    if c.load(Ordering::SeqCst) {
                        let _ = sock.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    Upstream {
        url,
        accepted,
        requests,
        close_after_each,
    }
}

/// A proxy in front of `up`, cache off so every call goes upstream, with `pool` lines added to
/// `[upstream]`.
async fn proxy(up: &Upstream, pool: &str) -> TestProxy {
    TestProxy::builder(&up.url)
        .upstream(pool)
        .cache(false)
        .start()
        .await
}

async fn call(p: &TestProxy, method: reqwest::Method, path: &str) -> reqwest::Response {
    client()
        .request(method, format!("{}{path}", p.url))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap()
}

// Sequential calls share one connection, HEAD and 204 answers included.
#[tokio::test]
async fn sequential_calls_reuse_one_connection() {
    let up = start_upstream().await;
    let p = proxy(&up, "").await;
    for i in 0..20 {
        let r = call(&p, reqwest::Method::GET, &templates_path(i)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), BODY);
    }
    for i in 0..5 {
        let r = call(&p, reqwest::Method::HEAD, &templates_path(100 + i)).await;
        assert_eq!(r.status(), 200);
        let r = call(&p, reqwest::Method::DELETE, &format!("/v19.0/{WABA}/empty")).await;
        assert_eq!(r.status(), 204);
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 30);
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "one connection for all calls"
    );
}

// A connection the upstream closed while idle is noticed and replaced: no call fails.
#[tokio::test]
async fn connections_closed_by_the_upstream_are_replaced() {
    let up = start_upstream().await;
    up.close_after_each.store(true, Ordering::SeqCst);
    let p = proxy(&up, "").await;
    for i in 0..5 {
        let r = call(&p, reqwest::Method::GET, &templates_path(i)).await;
        assert_eq!(r.status(), 200, "call {i}");
        assert_eq!(r.text().await.unwrap(), BODY);
        // Time for the connection's task to read the upstream's close, as it would between
        // real calls.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        5,
        "a fresh connection per call"
    );
    up.close_after_each.store(false, Ordering::SeqCst);
    for i in 5..10 {
        assert_eq!(
            call(&p, reqwest::Method::GET, &templates_path(i))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        6,
        "then one kept connection again"
    );
}

// Concurrent calls open connections in parallel; afterwards the pool keeps at most
// `pool_max_idle_per_host` of them and reuses those.
#[tokio::test]
async fn idle_connections_are_capped_and_reused() {
    let up = start_upstream().await;
    let p = proxy(&up, "pool_max_idle_per_host = 2").await;
    let paths: Vec<String> = (0..8).map(templates_path).collect();
    let calls = paths.iter().map(|t| call(&p, reqwest::Method::GET, t));
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.status(), 200);
    }
    let opened = up.accepted.load(Ordering::SeqCst);
    assert!(opened >= 1);
    for i in 8..20 {
        assert_eq!(
            call(&p, reqwest::Method::GET, &templates_path(i))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        opened,
        "sequential calls after the burst reuse a kept connection"
    );
}

// With no idle connections allowed, every call gets its own connection.
#[tokio::test]
async fn no_pooling_when_max_idle_is_zero() {
    let up = start_upstream().await;
    let p = proxy(&up, "pool_max_idle_per_host = 0").await;
    for i in 0..4 {
        assert_eq!(
            call(&p, reqwest::Method::GET, &templates_path(i))
                .await
                .status(),
            200
        );
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 4);
}

// A connection idle for longer than `pool_idle_timeout` is not used again.
#[tokio::test]
async fn connections_idle_past_the_timeout_are_not_reused() {
    let up = start_upstream().await;
    let p = proxy(&up, "pool_idle_timeout = \"1s\"").await;
    assert_eq!(
        call(&p, reqwest::Method::GET, &templates_path(0))
            .await
            .status(),
        200
    );
    assert_eq!(
        call(&p, reqwest::Method::GET, &templates_path(1))
            .await
            .status(),
        200
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        call(&p, reqwest::Method::GET, &templates_path(2))
            .await
            .status(),
        200
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}
