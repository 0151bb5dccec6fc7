//! Answers whose body stalls after the head (#14): a tiny upstream on a real socket sends a head
//! and then some or none of the body, and graphgate must end each wait in bounded time:
//! `upstream.body_idle_timeout` cuts a streamed answer (the client notices; the cut is logged and
//! counted), and a body graphgate buffers (a rewrite, a cache fill) ends in a Graph-shaped 504 or a
//! stale entry, for the caller and every coalesced waiter, within the idle or total deadline.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graphgate::clock::ManualClock;
use support::{
    assert_no_secrets, client, graph_error, logs, metric_value, parse_metrics, TestProxy,
    CLIENT_KEY, WABA,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream whose behaviour is picked by a word in the request path:
/// - `ok`: a small JSON answer;
/// - `stream-stall`: a chunked `application/octet-stream` head and one chunk, then silence;
/// - `fill-then-stall`: `ok` as the upstream's first request, `stream-stall` after;
/// - `json-stall`: a JSON head with `Content-Length: 100` and 10 bytes, then silence;
/// - `drip`: a JSON head with `Content-Length: 400`, then a byte every 50 ms;
/// - `stream-drip`: a chunked `application/octet-stream` head, then a 1-byte chunk every 50 ms;
/// - `slow-head`: no answer at all until graphgate closes the connection.
///
/// Silence lasts until graphgate closes the connection.
struct Upstream {
    url: String,
    requests: Arc<AtomicUsize>,
}

async fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, count.clone()));
        }
    });
    Upstream {
        url: format!("http://{addr}"),
        requests,
    }
}

async fn serve(mut s: TcpStream, count: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        // One request head (the proxy sends GETs without a body).
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        if path.contains("/ok") || (path.contains("fill-then-stall") && n == 1) {
            let body = r#"{"id":"1","name":"fine"}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let start: &[u8] = if path.contains("slow-head") {
            b""
        } else if path.contains("stream-drip") {
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        } else if path.contains("stall") && !path.contains("json") {
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
        } else if path.contains("json-stall") {
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"data\":[1"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n"
        };
        if s.write_all(start).await.is_err() {
            return;
        }
        let drip = path.contains("drip");
        let chunk: &[u8] = if path.contains("stream-drip") {
            b"1\r\na\r\n"
        } else {
            b" "
        };
        // Silence (or a drip) until the proxy gives up and closes the connection.
        let mut sink = [0u8; 64];
        loop {
            tokio::select! {
                r = s.read(&mut sink) => if matches!(r, Ok(0) | Err(_)) { return },
                _ = tokio::time::sleep(Duration::from_millis(50)), if drip => {
                    if s.write_all(chunk).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn url(proxy: &str, word: &str, n: usize) -> String {
    format!("{proxy}/v19.0/{WABA}/{word}?n={n}")
}

async fn upstream_timeouts(admin: &str) -> f64 {
    let text = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_value(
        &parse_metrics(&text),
        "graphgate_upstream_requests_total",
        &[("status", "timeout")],
    )
}

// A streamed answer (not JSON, cache off) whose body stops after its head and first chunk: the
// client gets the head and the chunk, then its body fails (the chunked body is never terminated)
// within the idle timeout, the cut is logged with the request's id, and counted as an upstream
// timeout.
#[tokio::test]
async fn a_stalled_streamed_body_is_cut_within_the_idle_timeout_logged_and_counted() {
    let up = start_upstream().await;
    let proxy = TestProxy::builder(&up.url)
        .cache(false)
        .set("upstream.body_idle_timeout", "300ms")
        .admin()
        .start()
        .await;
    let before = upstream_timeouts(&proxy.admin_url()).await;
    let started = Instant::now();
    let r = client()
        .get(url(&proxy.url, "stream-stall", 1))
        .bearer_auth(CLIENT_KEY)
        .header("x-request-id", "stall-stream-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), r.bytes())
        .await
        .expect("the body ended within 10 s");
    let waited = started.elapsed();
    assert!(body.is_err(), "the client noticed the cut: {body:?}");
    assert!(
        waited >= Duration::from_millis(300),
        "not before the idle timeout: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "cut in bounded time: {waited:?}"
    );
    // The log line and the count are written as the body fails: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logged = logs().text().lines().any(|l| {
            l.contains("answer cut") && l.contains("stall-stream-1") && l.contains("stalled")
        });
        let counted = upstream_timeouts(&proxy.admin_url()).await - before;
        if logged && counted >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logged: {logged}, counted: {counted}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `graphgate_responses_cut_total{reason}`; present (at 0) from the start.
async fn cuts(admin: &str, reason: &str) -> Option<f64> {
    let text = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse_metrics(&text);
    let name = "graphgate_responses_cut_total";
    let present = samples
        .iter()
        .any(|s| s.name == name && s.labels.get("reason").map(String::as_str) == Some(reason));
    present.then(|| metric_value(&samples, name, &[("reason", reason)]))
}

/// The access-log lines (`done` or `cut`) of the request `id`, once `cut(reason)` counts one more
/// than `before` (waits up to 5 s: a streamed answer's line is written as its body ends).
async fn access_lines(admin: &str, id: &str, reason: &str, before: f64) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while cuts(admin, reason).await.unwrap_or(0.0) < before + 1.0 {
        assert!(Instant::now() < deadline, "a `{reason}` cut was counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = logs().text();
    assert_no_secrets("the log", &text);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["span"]["id"] == id)
        .map(|v| match v["fields"].is_object() {
            true => v["fields"].clone(),
            false => v,
        })
        .filter(|f| matches!(f["message"].as_str(), Some("done" | "cut")))
        .collect()
}

// Meta's streamed body stalls past the idle timeout: the request's one access-log line has its real
// status (200) and outcome "cut", reason "upstream", and graphgate_responses_cut_total{reason=
// "upstream"} counts it (every reason is exported at 0 beforehand).
#[tokio::test]
async fn a_stream_meta_cuts_has_one_access_log_line_marked_cut_and_is_counted() {
    let up = start_upstream().await;
    let proxy = TestProxy::builder(&up.url)
        .cache(false)
        .set("upstream.body_idle_timeout", "300ms")
        .admin()
        .start()
        .await;
    let admin = proxy.admin_url();
    for reason in ["before_head", "caller", "upstream"] {
        assert_eq!(
            cuts(&admin, reason).await,
            Some(0.0),
            "{reason} exported at 0"
        );
    }
    let r = client()
        .get(url(&proxy.url, "stream-stall", 2))
        .bearer_auth(CLIENT_KEY)
        .header("x-request-id", "cut-by-meta-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), r.bytes()).await;
    assert!(body.expect("ended").is_err(), "the client noticed the cut");
    let lines = access_lines(&admin, "cut-by-meta-1", "upstream", 0.0).await;
    assert_eq!(lines.len(), 1, "one access-log line: {lines:?}");
    let f = &lines[0];
    assert_eq!(
        (f["status"].as_u64(), f["outcome"].as_str()),
        (Some(200), Some("cut"))
    );
    assert_eq!(f["reason"], "upstream");
    assert_eq!(f["client"], "alpha");
}

// A caller reads the head and a few chunks of a streamed answer, then goes away: the request's one
// access-log line says 200, outcome "cut", reason "caller", and the cut is counted.
#[tokio::test]
async fn a_caller_leaving_mid_stream_has_one_access_log_line_marked_cut() {
    let up = start_upstream().await;
    let proxy = TestProxy::builder(&up.url)
        .cache(false)
        .admin()
        .start()
        .await;
    let admin = proxy.admin_url();
    let before = cuts(&admin, "caller").await.unwrap();
    let mut r = client()
        .get(url(&proxy.url, "stream-drip", 3))
        .bearer_auth(CLIENT_KEY)
        .header("x-request-id", "caller-left-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..3 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), r.chunk()).await;
        assert!(chunk.expect("a chunk within 5 s").unwrap().is_some());
    }
    drop(r);
    let lines = access_lines(&admin, "caller-left-1", "caller", before).await;
    assert_eq!(lines.len(), 1, "one access-log line: {lines:?}");
    let f = &lines[0];
    assert_eq!(
        (f["status"].as_u64(), f["outcome"].as_str()),
        (Some(200), Some("cut"))
    );
    assert_eq!(f["reason"], "caller");
}

// A caller gives up (closes its connection) before Meta's answer head arrives: the request gets one
// access-log line with status 499 (nginx's "client closed request"), outcome "cut", reason
// "before_head", with the client's name and no key or token; the cut is counted.
#[tokio::test]
async fn a_caller_giving_up_before_the_head_is_logged_as_499_and_counted() {
    let up = start_upstream().await;
    let proxy = TestProxy::builder(&up.url)
        .cache(false)
        .admin()
        .start()
        .await;
    let admin = proxy.admin_url();
    let before = cuts(&admin, "before_head").await.unwrap();
    let gave_up = client()
        .get(url(&proxy.url, "slow-head", 4))
        .bearer_auth(CLIENT_KEY)
        .header("x-request-id", "gave-up-1")
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err(), "the caller timed out");
    let lines = access_lines(&admin, "gave-up-1", "before_head", before).await;
    assert_eq!(lines.len(), 1, "one access-log line: {lines:?}");
    let f = &lines[0];
    assert_eq!(
        (f["status"].as_u64(), f["outcome"].as_str()),
        (Some(499), Some("cut"))
    );
    assert_eq!(f["reason"], "before_head");
    assert_eq!(f["client"], "alpha");
}

// A JSON answer that graphgate reads to rewrite stalls after 10 of its 100 bytes: the caller gets a
// Graph-shaped 504 within the idle timeout, not a hang.
#[tokio::test]
async fn a_stalled_json_body_is_a_graph_shaped_504() {
    let up = start_upstream().await;
    let proxy = TestProxy::builder(&up.url)
        .cache(false)
        .set("upstream.body_idle_timeout", "300ms")
        .start()
        .await;
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client()
            .get(url(&proxy.url, "json-stall", 1))
            .bearer_auth(CLIENT_KEY)
            .send(),
    )
    .await
    .expect("answered within 10 s")
    .unwrap();
    assert_eq!(r.status(), 504);
    assert!(r.headers().contains_key("x-graphgate-error"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(graph_error(&v)["is_transient"], true);
    assert!(started.elapsed() < Duration::from_secs(5));
}

// A body that keeps dripping (never silent for the idle timeout) is still bounded by
// `upstream.body_timeout` when graphgate reads it whole: 504 after about that long.
#[tokio::test]
async fn a_dripping_body_read_whole_ends_at_the_total_deadline() {
    let up = start_upstream().await;
    let proxy = TestProxy::builder(&up.url)
        .cache(false)
        .set("upstream.body_idle_timeout", "5s")
        .set("upstream.body_timeout", "500ms")
        .start()
        .await;
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client()
            .get(url(&proxy.url, "drip", 1))
            .bearer_auth(CLIENT_KEY)
            .send(),
    )
    .await
    .expect("answered within 10 s")
    .unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), 504);
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

// Five identical cacheable reads whose one upstream answer (not JSON, so streamed into the cache)
// stalls after its head: the leader and every coalesced waiter are released with a Graph-shaped
// 504 within the idle timeout, and Meta was called once.
#[tokio::test]
async fn coalesced_waiters_of_a_stalled_fill_get_a_504() {
    let up = start_upstream().await;
    let proxy = TestProxy::builder(&up.url)
        .set("upstream.body_idle_timeout", "300ms")
        .start()
        .await;
    let started = Instant::now();
    let calls = (0..5).map(|_| {
        let u = url(&proxy.url, "stream-stall", 7);
        tokio::spawn(async move {
            let r = client()
                .get(u)
                .bearer_auth(CLIENT_KEY)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            (status, v)
        })
    });
    let answers = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("every caller answered within 10 s");
    for a in answers {
        let (status, v) = a.unwrap();
        assert_eq!(status, 504, "{v}");
        graph_error(&v);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        1,
        "one call for all five"
    );
}

// The same stall behind an expired entry that allows stale answers: every caller gets the stale
// entry instead of the 504.
#[tokio::test]
async fn coalesced_waiters_of_a_stalled_refill_get_the_stale_entry() {
    let up = start_upstream().await;
    let clock = ManualClock::new(1_000_000_000);
    let proxy = TestProxy::builder(&up.url)
        .set("upstream.body_idle_timeout", "300ms")
        .set("cache.default_ttl", "10s")
        .clock(clock.clone())
        .start()
        .await;
    // The first call fills the entry; once it has expired, the refill stalls.
    let first = client()
        .get(format!("{}/v19.0/{WABA}/fill-then-stall", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache"], "MISS");
    clock.advance(Duration::from_secs(11));
    let calls = (0..4).map(|_| {
        let u = format!("{}/v19.0/{WABA}/fill-then-stall", proxy.url);
        tokio::spawn(async move {
            let r = client()
                .get(u)
                .bearer_auth(CLIENT_KEY)
                .send()
                .await
                .unwrap();
            let cache = r.headers()["x-cache"].to_str().unwrap().to_string();
            (r.status().as_u16(), cache)
        })
    });
    let answers = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("every caller answered within 10 s");
    for a in answers {
        assert_eq!(a.unwrap(), (200, "STALE".to_string()));
    }
    assert_eq!(
        up.requests.load(Ordering::SeqCst),
        2,
        "one fill, one refill"
    );
}
