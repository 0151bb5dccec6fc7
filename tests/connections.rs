//! Connection deadlines on real sockets (#14): silent connections, slow request heads, idle
//! HTTP/1.1 keep-alive and idle HTTP/2 connections are closed within the configured time, and a
//! request in flight is never cut by them.

mod support;

use std::time::{Duration, Instant};

use graphgate::sim::Faults;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes; returns how long that took, or `None` if it stayed open `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Writes one byte every 100 ms (for up to 20 s) until the proxy closes the connection; how long
/// that took, or `None` if it never did.
async fn trickle_until_cut(s: &mut TcpStream) -> Option<Duration> {
    let started = Instant::now();
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"x").await.is_err() {
            return Some(started.elapsed());
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
        {
            return Some(started.elapsed());
        }
    }
    None
}

fn deadlines(first_byte: &str, header: &str, idle: &str) -> String {
    format!(
        "first_byte_timeout = \"{first_byte}\"\nheader_timeout = \"{header}\"\nkeepalive_timeout = \"{idle}\""
    )
}

/// The simulator, and a proxy in front of it with these connection deadlines.
async fn proxy_with(first_byte: &str, header: &str, idle: &str) -> (SimServer, TestProxy) {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url)
        .server(&deadlines(first_byte, header, idle))
        .start()
        .await;
    (sim, proxy)
}

/// Sends a head's first line and trickles the rest: the proxy must cut it within 5 s.
async fn assert_trickled_head_is_cut(s: &mut TcpStream, what: &str) {
    s.write_all(b"GET /v19.0/1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let cut = trickle_until_cut(s)
        .await
        .unwrap_or_else(|| panic!("{what} was not cut"));
    assert!(cut < Duration::from_secs(5), "{what} cut after {cut:?}");
}

// Fifty connections that never send a byte are all closed at first_byte_timeout, while a keyed
// caller is answered meanwhile.
#[tokio::test]
async fn silent_connections_are_closed_at_the_first_byte_timeout() {
    let (_sim, proxy) = proxy_with("300ms", "10s", "60s").await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    assert_eq!(
        get(&format!("{}/v19.0/{WABA}", proxy.url)).await.status(),
        200
    );
    let mut closed = 0;
    for s in &mut silent {
        if closed_within(s, Duration::from_secs(5)).await.is_some() {
            closed += 1;
        }
    }
    assert_eq!(closed, 50, "every silent connection is closed");
}

// A request head trickled one byte every 100 ms is cut at header_timeout, however long it goes on.
#[tokio::test]
async fn a_slow_request_head_is_cut_at_the_header_timeout() {
    let (_sim, proxy) = proxy_with("10s", "500ms", "60s").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert_trickled_head_is_cut(&mut s, "the trickling head").await;
}

// The same on a reused keep-alive connection: the second head, trickled, is cut at header_timeout
// by the connection's watchdog alone (hyper's own header timer is off, issue #17).
#[tokio::test]
async fn a_slow_second_head_on_a_kept_alive_connection_is_cut_at_the_header_timeout() {
    let (_sim, proxy) = proxy_with("10s", "500ms", "60s").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /v19.0/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut s, Duration::from_secs(5)).await, 401);
    assert_trickled_head_is_cut(&mut s, "the trickling second head").await;
}

// An HTTP/1.1 keep-alive connection is reused while requests keep coming, and closed once it has
// sat idle for keepalive_timeout.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_keepalive_timeout() {
    let (_sim, proxy) = proxy_with("10s", "10s", "600ms").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let req = b"GET /v19.0/1 HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..4 {
        s.write_all(req).await.unwrap();
        assert_eq!(
            read_answer(&mut s, Duration::from_secs(5)).await,
            401,
            "no key: 401, and kept open"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let closed = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the idle connection was closed");
}

// An HTTP/2 connection with no stream open is closed (GOAWAY) at keepalive_timeout.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_at_the_keepalive_timeout() {
    let (_sim, proxy) = proxy_with("10s", "10s", "500ms").await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/v19.0/{WABA}", proxy.addr))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was closed");
}

// A request that takes longer than every connection deadline is answered, not cut.
#[tokio::test]
async fn a_request_in_flight_outlives_the_connection_deadlines() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url)
        .server(&deadlines("300ms", "300ms", "300ms"))
        .cache(false)
        .start()
        .await;
    sim.sim.set_faults(Faults {
        latency_ms: 1200,
        ..Faults::default()
    });
    assert_eq!(
        get(&format!("{}/v19.0/{WABA}", proxy.url)).await.status(),
        200
    );
}
