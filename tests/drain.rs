//! Graceful drain, end to end: the real binary (SIGTERM sent with `kill`) in front of the real
//! simulator, and in process for HTTP/2. During `server.drain_delay` no caller is refused, `/readyz`
//! says 503 at once, keep-alive answers carry `Connection: close` and HTTP/2 connections get a
//! GOAWAY; then new connections are refused, the call in flight finishes, the state is saved, the
//! admin listener answers to the end, and the process exits 0 in time. A second SIGTERM skips the
//! rest of the delay. SIGHUP reloads and never ends the process. A call outlasting the grace gets a
//! Graph-shaped 503.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use graphgate::sim::Faults;
use support::spawned::Spawned;
use support::*;

/// The drain delay the tests use (the default is 5 s).
const DELAY: Duration = Duration::from_secs(1);
/// How long the slow call takes at the simulator.
const SLOW: Duration = Duration::from_millis(1600);

/// What the callers saw: answers, failures (with why), and `Connection: close` answers.
#[derive(Default)]
struct Seen {
    ok: AtomicUsize,
    closes: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Seen {
    fn record(&self, what: &str, r: Result<reqwest::Response, reqwest::Error>) {
        match r {
            Ok(r) if r.status() == 200 => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let close = r
                    .headers()
                    .get("connection")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                if close {
                    self.closes.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(r) => self
                .failures
                .lock()
                .unwrap()
                .push(format!("{what}: status {}", r.status())),
            Err(e) => self.failures.lock().unwrap().push(format!("{what}: {e:?}")),
        }
    }
}

/// Cached reads in a loop until `stop`: on a fresh connection each (`fresh`), or on one pooled
/// keep-alive client.
fn hammer(
    url: String,
    fresh: bool,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pooled = client();
        while !stop.load(Ordering::Relaxed) {
            let c = if fresh {
                reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap()
            } else {
                pooled.clone()
            };
            let r = c
                .get(&url)
                .bearer_auth(CLIENT_KEY)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            seen.record(
                if fresh {
                    "new connection"
                } else {
                    "keep-alive"
                },
                r,
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

fn log_has(p: &Spawned, needle: &str) -> bool {
    p.logs.lock().unwrap().iter().any(|l| l.contains(needle))
}

// Callers on new and keep-alive connections hammer the binary across a SIGTERM: none is refused
// or fails during the 1 s drain delay, /readyz says 503 (draining) at once, keep-alive answers say
// `Connection: close`; a slow call started before the signal ends with 200; after the delay new
// connections are refused while /metrics still answers; the process exits 0 within delay + grace
// and has written its state file, logging each phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_without_refusing_callers_and_exits_after_the_delay() {
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("limits.json");
    let builder = TestProxy::builder(&sim.url)
        .set("server.drain_delay", "1s")
        .set("server.shutdown_grace", "5s")
        .set("upstream.request_timeout", "5s")
        .set("limits.state_file", state.display().to_string());
    let p = tokio::task::spawn_blocking(move || Spawned::start(builder, None))
        .await
        .unwrap();
    let cached = format!("{}/v19.0/{WABA}", p.url());
    assert_eq!(get(&cached).await.status(), 200, "warm the cache");
    assert_eq!(admin_get(&p.admin, "/readyz", None).await.status(), 200);

    // Meta slows down; cached reads do not reach it, the slow call does.
    sim.sim.set_faults(Faults {
        latency_ms: SLOW.as_millis() as u64,
        ..Faults::default()
    });
    let slow = tokio::spawn(get_status(format!(
        "{}/v19.0/{WABA}/message_templates",
        p.url()
    )));
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let hammers = [true, true, false, false]
        .map(|fresh| hammer(cached.clone(), fresh, seen.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = seen.ok.load(Ordering::Relaxed);

    let sent = Instant::now();
    let sent_at = SystemTime::now();
    p.signal("TERM");
    // /readyz flips at once, with a body that says why.
    let flipped = loop {
        let r = admin_get(&p.admin, "/readyz", None).await;
        if r.status() == 503 {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["draining"], true, "{v}");
            assert!(v["reason"].as_str().unwrap().contains("draining"), "{v}");
            break sent.elapsed();
        }
        assert!(sent.elapsed() < DELAY, "/readyz still 200 during the drain");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Keep hammering through most of the delay.
    tokio::time::sleep((DELAY - Duration::from_millis(200)).saturating_sub(sent.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    for h in hammers {
        h.await.unwrap();
    }
    let during = seen.ok.load(Ordering::Relaxed) - before;
    let failures = seen.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "callers failed during the drain: {failures:?}"
    );
    assert!(during > 20, "only {during} answers during the drain");
    assert!(
        seen.closes.load(Ordering::Relaxed) > 0,
        "no keep-alive answer carried Connection: close"
    );

    // After the delay: no new connections, the admin listener still answers.
    let refused = loop {
        if tokio::net::TcpStream::connect(p.addr).await.is_err() {
            break sent.elapsed();
        }
        assert!(
            sent.elapsed() < DELAY + Duration::from_millis(1500),
            "the proxy still accepts after the drain delay"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        refused >= DELAY,
        "refused after {refused:?}, before the delay"
    );
    assert_eq!(admin_get(&p.admin, "/metrics", None).await.status(), 200);

    assert_eq!(slow.await.unwrap(), 200, "the call in flight finished");
    let p = p.exits_cleanly(Duration::from_secs(6)).await;
    let exited = sent.elapsed();
    assert!(
        exited < DELAY + Duration::from_secs(5),
        "exited after {exited:?}"
    );
    let modified = std::fs::metadata(&state).unwrap().modified().unwrap();
    assert!(
        modified >= sent_at,
        "the state file was not written at shutdown"
    );
    let _: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    for phase in [
        "draining: /readyz answers 503",
        "drain delay over",
        "calls in flight finished",
        "limiter state saved",
        "drain complete",
    ] {
        assert!(log_has(&p, phase), "no log line for {phase:?}");
    }
    eprintln!(
        "readyz 503 after {flipped:?}; {during} answers during the delay, {} with Connection: close; \
         refused after {refused:?}; exited after {exited:?}",
        seen.closes.load(Ordering::Relaxed)
    );
}

// A second SIGTERM during a long drain delay skips the rest of it (and says so): the process exits
// 0 well before the delay would have ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_skips_the_rest_of_the_drain_delay() {
    let sim = start_sim(sim_config()).await;
    let builder = TestProxy::builder(&sim.url).set("server.drain_delay", "60s");
    let p = tokio::task::spawn_blocking(move || Spawned::start(builder, None))
        .await
        .unwrap();
    let sent = p.term_until_draining().await;
    // The proxy still serves during the delay.
    assert_eq!(
        get(&format!("{}/v19.0/{WABA}", p.url())).await.status(),
        200
    );
    p.signal("TERM");
    let p = p.exits_cleanly(Duration::from_secs(10)).await;
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
    assert!(log_has(&p, "skipping the rest of the drain delay"));
}

// SIGHUP reloads the config: it neither kills the process nor starts a drain; the proxy keeps
// serving and stays ready, and a SIGTERM still drains. (Its handler is installed before anything
// is served, with the stop signals: a SIGHUP that comes early must not end the process either.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_never_ends_the_process() {
    let sim = start_sim(sim_config()).await;
    let builder = TestProxy::builder(&sim.url).set("server.drain_delay", "0s");
    let mut p = tokio::task::spawn_blocking(move || Spawned::start(builder, None))
        .await
        .unwrap();
    p.signal("HUP");
    let sent = Instant::now();
    while !log_has(&p, "config reloaded") {
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(p.wait_exit(Duration::ZERO).is_none(), "SIGHUP killed it");
    assert_eq!(admin_get(&p.admin, "/readyz", None).await.status(), 200);
    assert_eq!(
        get(&format!("{}/v19.0/{WABA}", p.url())).await.status(),
        200
    );
    p.signal("TERM");
    let _p = p.exits_cleanly(Duration::from_secs(10)).await;
}

// In process, over HTTP/2 with prior knowledge: when the drain begins, an open HTTP/2 connection
// gets a GOAWAY (the client's connection ends) while the proxy still accepts and serves new
// connections for the rest of the delay.
#[tokio::test]
async fn http2_connections_get_a_goaway_when_the_drain_begins() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url)
        .set("server.drain_delay", "1s")
        .start()
        .await;
    let io =
        hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = || {
        http::Request::get(format!("http://{}/v19.0/{WABA}", proxy.addr))
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    assert_eq!(send.send_request(req()).await.unwrap().status(), 200);
    let addr = proxy.addr;
    let url = proxy.url.clone();
    let began = Instant::now();
    let stopping = tokio::spawn(proxy.shutdown());
    // The GOAWAY ends the client's connection well before the delay is over.
    let ended = tokio::time::timeout(Duration::from_millis(900), conn).await;
    assert!(ended.is_ok(), "the HTTP/2 connection was not told to go");
    assert!(began.elapsed() < Duration::from_millis(900));
    // New connections are still accepted and served meanwhile.
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    assert_eq!(get(&format!("{url}/v19.0/{WABA}")).await.status(), 200);
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the proxy stops after the delay")
        .unwrap();
}

// `server.drain_delay`: 5 s when unset, "0s" allowed (stop accepting at once), over ten minutes
// refused with the key named, like every other config problem.
#[test]
fn drain_delay_defaults_to_five_seconds_allows_zero_and_refuses_over_ten_minutes() {
    let b = || TestProxy::builder("http://127.0.0.1:9");
    let unset = b().remove("server.drain_delay").config();
    assert_eq!(unset.server.drain_delay, Duration::from_secs(5));
    let zero = b().set("server.drain_delay", "0s").config();
    assert_eq!(zero.server.drain_delay, Duration::ZERO);
    let e = b().set("server.drain_delay", "11m").load().unwrap_err();
    assert!(e.to_string().contains("server.drain_delay"), "{e}");
    let e = b().set("server.drain_delay", 5).load().unwrap_err();
    assert!(e.to_string().contains("drain_delay"), "{e}");
}

// A call still running when the shutdown grace is nearly over gets a Graph-shaped 503 it can retry
// elsewhere, not an empty reply when its connection closes; the process still exits 0 in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outlasting_the_grace_gets_a_graph_shaped_503_not_an_empty_reply() {
    let sim = start_sim(sim_config()).await;
    let builder = TestProxy::builder(&sim.url)
        .set("server.drain_delay", "0s")
        .set("server.shutdown_grace", "2s")
        .set("upstream.request_timeout", "20s");
    let p = tokio::task::spawn_blocking(move || Spawned::start(builder, None))
        .await
        .unwrap();
    sim.sim.set_faults(Faults {
        latency_ms: 10_000,
        ..Faults::default()
    });
    let url = format!("{}/v19.0/{WABA}/message_templates", p.url());
    let slow = tokio::spawn(async move {
        client()
            .get(&url)
            .bearer_auth(CLIENT_KEY)
            .timeout(Duration::from_secs(15))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    p.signal("TERM");
    let r = slow.await.unwrap().expect("an answer, not an empty reply");
    let took = sent.elapsed();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    let e = &body["error"];
    assert!(
        e["message"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );
    assert!(e["code"].is_number() && e["type"].is_string() && e["fbtrace_id"].is_string());
    assert!(
        took < Duration::from_millis(1900),
        "answered {took:?} after SIGTERM"
    );
    let _p = p.exits_cleanly(Duration::from_secs(10)).await;
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "{:?}",
        sent.elapsed()
    );
}
