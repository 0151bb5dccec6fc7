//! The admin listener end to end: the real proxy with its admin listener, both on `127.0.0.1:0`, in
//! front of the real simulator. `/metrics` counts scripted traffic exactly and grows no series for
//! hostile input; health and readiness follow the upstream; the admin JSON matches the limiter; the
//! admin token is enforced; the proxy port never serves admin paths; nothing shows a secret.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::*;

const ADMIN_TOKEN: &str = "adm-TOKEN-secret-7Hq2Lw";

/// The standard test config, with the admin token in the environment (named by
/// `server.admin_token_env` where a test sets it).
fn with_admin_token(upstream: &str) -> ProxyBuilder {
    TestProxy::builder(upstream).env("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
}

/// A proxy whose admin listener requires `ADMIN_TOKEN` (`server.admin_token_env`).
fn guarded_admin(upstream: &str) -> ProxyBuilder {
    with_admin_token(upstream)
        .server("admin_token_env = \"TEST_ADMIN_TOKEN\"")
        .admin()
}

async fn get(proxy: &TestProxy, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap()
}

async fn scrape(admin: &str) -> (String, Vec<Sample>) {
    let r = admin_get(admin, "/metrics", None).await;
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text().await.unwrap();
    let samples = parse_metrics(&text);
    (text, samples)
}

fn x_cache(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- /metrics

// Three reads fetched once each, then seven repeats answered from cache: /metrics says 3 misses,
// 7 hits, 3 upstream calls with their latencies, and 10 requests split by cache result.
#[tokio::test]
async fn metrics_count_three_misses_and_seven_hits_after_scripted_traffic() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).admin().start().await;
    let (gw, admin) = (proxy.gw.clone(), proxy.admin_url());
    let paths = [
        format!("/v19.0/{WABA}"),
        format!("/v19.0/{WABA}/message_templates"),
        format!("/v19.0/{WABA}/phone_numbers"),
    ];
    for p in &paths {
        let r = get(&proxy, p).await;
        assert_eq!((r.status().as_u16(), x_cache(&r)), (200, "MISS".into()));
    }
    for i in 0..7 {
        let r = get(&proxy, &paths[i % 3]).await;
        assert_eq!((r.status().as_u16(), x_cache(&r)), (200, "HIT".into()));
    }
    let (_, m) = scrape(&admin).await;
    let v = |name: &str, want: &[(&str, &str)]| metric_value(&m, name, want);
    assert_eq!(
        v("graphgate_cache_requests_total", &[("result", "hit")]),
        7.0
    );
    assert_eq!(
        v("graphgate_cache_requests_total", &[("result", "miss")]),
        3.0
    );
    let req = |cache: &str| {
        v(
            "graphgate_requests_total",
            &[
                ("app", "main"),
                ("client", "alpha"),
                ("class", "waba"),
                ("method", "GET"),
                ("status", "200"),
                ("cache", cache),
            ],
        )
    };
    assert_eq!((req("hit"), req("miss")), (7.0, 3.0));
    assert_eq!(v("graphgate_requests_total", &[]), 10.0);
    assert_eq!(
        v(
            "graphgate_upstream_requests_total",
            &[("app", "main"), ("class", "waba"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        v("graphgate_upstream_request_duration_seconds_count", &[]),
        3.0
    );
    let bucket = format!("waba:{WABA}");
    let b = [("app", "main"), ("bucket", bucket.as_str())];
    // Used is the limiter's count: our 3 calls, raised to what Meta's rounded-down usage report
    // may stand for (docs/limits.md).
    let snap = gw.limiter().snapshot();
    let used = snap.iter().find(|b| b.scope == bucket).unwrap().used;
    assert!(used >= 3);
    assert_eq!(v("graphgate_bucket_used", &b), f64::from(used));
    assert_eq!(v("graphgate_bucket_limit", &b), 5000.0);
    // The simulator reports usage like Meta does: one call of its active-WABA budget.
    assert!(m
        .iter()
        .any(|s| s.name == "graphgate_upstream_usage_percent"
            && s.labels["object"] == WABA
            && s.labels["type"] == "whatsapp_business_management"
            && s.labels["metric"] == "call_count"));
    assert!(v("graphgate_cache_entries", &[]) >= 3.0);
    assert!(v("graphgate_cache_bytes", &[]) > 0.0);
    assert_eq!(
        v(
            "graphgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

/// Requests a caller could use to mint series: random ids in paths, `ids=`, batches, unknown
/// edges and methods, unknown keys, long junk paths.
async fn hostile_round(proxy: &TestProxy, round: u32) {
    let c = client();
    for i in 0..200u32 {
        let id: u64 = 100_000_000_000_000 + u64::from(round) * 1_000_000 + u64::from(i) * 7919;
        let junk = format!("x{}y{}", rand_word(i, round), i);
        let rb = match i % 8 {
            0 => c.get(format!("{}/v19.0/{id}/message_templates", proxy.url)),
            1 => c.get(format!("{}/v19.0/{id}", proxy.url)),
            2 => c.get(format!("{}/v19.0/{id}/{junk}?fields={junk}", proxy.url)),
            3 => c.get(format!("{}/{junk}/{junk}/{junk}", proxy.url)),
            4 => c.get(format!("{}/v19.0/?ids={id},{}", proxy.url, id + 1)),
            5 => c.request(
                reqwest::Method::from_bytes(b"PROPFIND").unwrap(),
                format!("{}/v19.0/{id}", proxy.url),
            ),
            6 => c
                .post(format!("{}/v19.0/{id}/subscribed_apps", proxy.url))
                .header("x-request-id", junk.clone()),
            _ => {
                // An unknown key: no client, no app.
                let r = c
                    .get(format!("{}/v19.0/{id}", proxy.url))
                    .bearer_auth(format!("ggkey-{junk}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 401);
                continue;
            }
        };
        let r = rb.bearer_auth(CLIENT_KEY).send().await.unwrap();
        assert!(r.status().as_u16() >= 200, "{}", r.status());
    }
}

fn rand_word(i: u32, round: u32) -> String {
    format!(
        "{:x}",
        ((i as u64 + 1) * 2_654_435_761) ^ ((round as u64) << 20)
    )
}

/// Series by name and labels; a histogram's buckets, sum and count are one series.
fn series(samples: &[Sample]) -> BTreeSet<String> {
    samples
        .iter()
        .map(|s| {
            let mut labels = s.labels.clone();
            labels.remove("le");
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|x| s.name.strip_suffix(x))
                .unwrap_or(&s.name);
            format!("{name}{labels:?}")
        })
        .collect()
}

// Two rounds of 200 hostile requests each (random ids, paths, methods, keys): the first adds a
// bounded handful of series (fixed statuses, `waba:other`, method `other`), the second adds none,
// and no id or path from a request shows up in /metrics.
#[tokio::test]
async fn hostile_paths_and_ids_create_no_new_series() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).admin().start().await;
    let admin = proxy.admin_url();
    get(&proxy, &format!("/v19.0/{WABA}")).await;
    let (_, before) = scrape(&admin).await;
    hostile_round(&proxy, 1).await;
    let (_, first) = scrape(&admin).await;
    hostile_round(&proxy, 2).await;
    let (text, second) = scrape(&admin).await;
    let (b, f, s) = (series(&before), series(&first), series(&second));
    assert!(
        f.len() <= b.len() + 40,
        "{} series before, {} after 200 hostile requests: {:#?}",
        b.len(),
        f.len(),
        f.difference(&b).collect::<Vec<_>>()
    );
    assert_eq!(
        s.difference(&f).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "a second round of new ids and paths made new series"
    );
    // Label values only: a sample's value (a latency sum, say) may contain any digits.
    let values: Vec<&String> = second.iter().flat_map(|s| s.labels.values()).collect();
    let junk = rand_word(3, 2);
    assert!(
        !values.iter().any(|v| v.contains("100000")),
        "a random id is a label value"
    );
    assert!(
        !values.iter().any(|v| v.contains(&junk)) && !text.contains(&junk),
        "a random path is a label value"
    );
    assert!(text.contains("bucket=\"waba:other\""), "{text}");
}

// ---------------------------------------------------------------- health and readiness

// /healthz answers while the process runs. With Meta gone, a replica with the cache on stays ready
// (it serves cached and stale answers) but says it is degraded, in /readyz, /admin/status and
// `graphgate_degraded{reason="upstream"}`; with the cache off /readyz turns 503 with a reason. Both
// are ready, and no longer degraded, once Meta is back on its address.
#[tokio::test]
async fn readiness_flips_to_503_when_the_upstream_goes_away_and_back_when_it_returns() {
    let sim = start_sim(sim_config()).await;
    let addr = sim.addr;
    let cached = TestProxy::builder(&sim.url)
        .cache(true)
        .admin()
        .start()
        .await;
    let uncached = TestProxy::builder(&sim.url)
        .cache(false)
        .admin()
        .start()
        .await;
    let degraded = |admin: String| async move {
        let (_, samples) = scrape(&admin).await;
        metric_value(&samples, "graphgate_degraded", &[("reason", "upstream")])
    };
    for proxy in [&cached, &uncached] {
        let admin = proxy.admin_url();
        assert_eq!(admin_get(&admin, "/healthz", None).await.status(), 200);
        let r = admin_get(&admin, "/readyz", None).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["degraded"], serde_json::json!([]), "{v}");
        assert_eq!(get(proxy, &format!("/v19.0/{WABA}")).await.status(), 200);
        assert_eq!(degraded(admin).await, 0.0, "exported at 0");
    }

    drop(sim);
    wait_until_closed(addr).await;
    for proxy in [&cached, &uncached] {
        let r = get(proxy, &format!("/v19.0/{WABA}/message_templates")).await;
        assert!(r.status().is_server_error(), "{}", r.status());
    }
    // The cache on: still serving what it holds, so ready, and degraded.
    let admin = cached.admin_url();
    assert_eq!(get(&cached, &format!("/v19.0/{WABA}")).await.status(), 200);
    let r = admin_get(&admin, "/readyz", None).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["degraded"], serde_json::json!(["upstream"]), "{v}");
    assert!(
        v["upstream"].as_str().unwrap().contains("unreachable"),
        "{v}"
    );
    let s: Value = admin_get(&admin, "/admin/status", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s["degraded"], serde_json::json!(["upstream"]), "{s}");
    assert_eq!(s["ready"], true);
    assert_eq!(degraded(admin).await, 1.0);
    // The cache off: nothing to serve, so not ready.
    let admin = uncached.admin_url();
    let r = admin_get(&admin, "/readyz", None).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["ready"], false);
    assert!(v["reason"].as_str().unwrap().contains("unreachable"), "{v}");
    assert_eq!(v["degraded"], serde_json::json!(["upstream"]), "{v}");
    assert_eq!(admin_get(&admin, "/healthz", None).await.status(), 200);

    let _back = restart_sim_on(addr).await;
    for proxy in [&cached, &uncached] {
        let r = admin_get(&proxy.admin_url(), "/readyz", None).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["degraded"], serde_json::json!([]), "{v}");
        assert_eq!(degraded(proxy.admin_url()).await, 0.0);
    }
}

// Redis shares the buckets under `on_backend_error = "reject"`: while it hangs (SIGSTOP) every
// call would be refused, so /readyz turns 503 within backend_timeout plus a health interval (its
// real round trips find it), with `graphgate_degraded{reason="limits_backend"}` at 1; once it goes
// on, 200 again.
#[tokio::test]
async fn readiness_follows_a_hung_redis_under_the_reject_policy() {
    let redis = support::redis::RedisServer::start();
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url)
        .redis(&redis.url(), "readyz")
        .limits("on_backend_error = \"reject\"\nbackend_timeout = \"200ms\"")
        .admin()
        .start()
        .await;
    let admin = proxy.admin_url();
    let ready = || async {
        let r = admin_get(&admin, "/readyz", None).await;
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    let t = std::time::Instant::now();
    while ready().await.0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never ready with Redis up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.pause();
    let paused = std::time::Instant::now();
    let v = loop {
        let (status, v) = ready().await;
        if status == 503 {
            break v;
        }
        // backend_timeout (200 ms) after a health check that comes every 500 ms, with room.
        assert!(
            paused.elapsed() < Duration::from_secs(3),
            "still ready: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = paused.elapsed();
    assert!(v["reason"].as_str().unwrap().contains("Redis"), "{v}");
    assert_eq!(v["degraded"], serde_json::json!(["limits_backend"]), "{v}");
    let (_, samples) = scrape(&admin).await;
    assert_eq!(
        metric_value(
            &samples,
            "graphgate_degraded",
            &[("reason", "limits_backend")]
        ),
        1.0
    );
    redis.resume();
    let resumed = std::time::Instant::now();
    while ready().await.0 != 200 {
        assert!(
            resumed.elapsed() < Duration::from_secs(5),
            "never ready again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "503 {took:?} after SIGSTOP; 200 {:?} after SIGCONT",
        resumed.elapsed()
    );
}

async fn wait_until_closed(addr: std::net::SocketAddr) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the simulator on {addr} did not stop");
}

/// A new simulator on the old address (the listener socket is SO_REUSEADDR, so this binds once
/// the old one is closed).
async fn restart_sim_on(addr: std::net::SocketAddr) -> tokio::sync::oneshot::Sender<()> {
    for _ in 0..100 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let sim = graphgate::sim::Sim::new(sim_config());
            tokio::spawn(graphgate::sim::serve(l, sim, async move {
                let _ = rx.await;
            }));
            return tx;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr} again");
}

// ---------------------------------------------------------------- admin JSON

// With a limit of 3 on the active WABA, three reads pass and the fourth is refused: /admin/limits
// shows every bucket exactly as the limiter's snapshot has it, with Meta's usage and the refusal,
// and /metrics counts the refusal on the same bucket.
#[tokio::test]
async fn admin_limits_json_matches_the_limiter_buckets() {
    let sim = start_sim(sim_config()).await;
    let proxy = with_admin_token(&sim.url)
        .waba_limit(WABA, 3)
        .admin()
        .start()
        .await;
    let (gw, admin) = (proxy.gw.clone(), proxy.admin_url());
    for p in ["", "/message_templates", "/phone_numbers"] {
        assert_eq!(
            get(&proxy, &format!("/v19.0/{WABA}{p}")).await.status(),
            200
        );
    }
    let r = get(&proxy, &format!("/v19.0/{WABA}/subscribed_apps")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        get(&proxy, &format!("/v19.0/{OTHER_WABA}")).await.status(),
        200
    );

    let v: Value = admin_get(&admin, "/admin/limits", None)
        .await
        .json()
        .await
        .unwrap();
    let snapshot = gw.limiter().snapshot();
    let buckets = v["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), snapshot.len(), "{v}");
    for b in &snapshot {
        let j = buckets
            .iter()
            .find(|j| j["app"] == b.app.as_str() && j["bucket"] == b.scope.as_str())
            .unwrap_or_else(|| panic!("no entry for {} {} in {v}", b.app, b.scope));
        assert_eq!(j["limit"], b.limit);
        assert_eq!(j["used"], b.used);
        assert_eq!(j["remaining"], b.remaining);
        assert_eq!(j["rejected"], b.rejected);
        assert_eq!(j["blocked_for_secs"], b.blocked_for_secs);
    }
    let main = buckets
        .iter()
        .find(|j| j["waba"] == WABA)
        .expect("the active WABA");
    assert_eq!(main["class"], "waba");
    assert_eq!(main["bucket"], format!("waba:{WABA}"));
    assert_eq!(
        (main["limit"].as_u64(), main["used"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(main["remaining"], 0);
    assert!(main["reset_at_unix"].as_u64().unwrap() > 1_700_000_000);
    assert!(main["meta_usage"]["call_count"].is_u64(), "{main}");
    let other = buckets.iter().find(|j| j["waba"] == OTHER_WABA).unwrap();
    assert_eq!(
        (other["limit"].as_u64(), other["used"].as_u64()),
        (Some(200), Some(1))
    );
    let rejections = v["recent_rejections"].as_array().unwrap();
    assert_eq!(rejections.len(), 1, "{v}");
    assert_eq!(rejections[0]["bucket"], format!("waba:{WABA}"));
    assert_eq!(rejections[0]["reason"], "full");
    assert_eq!(v["app_usage"][0]["app"], "main");

    let (_, m) = scrape(&admin).await;
    let bucket = format!("waba:{WABA}");
    assert_eq!(
        metric_value(
            &m,
            "graphgate_ratelimit_rejected_total",
            &[("app", "main"), ("bucket", &bucket)]
        ),
        1.0
    );
}

// /admin/cache reports entries, bytes, counts and the hit ratio; a purge of one WABA's prefix drops
// its entries, so the next read is a miss again; bad purge bodies get a 4xx with a JSON reason.
#[tokio::test]
async fn admin_cache_stats_and_purge_drop_entries_under_a_prefix() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).admin().start().await;
    let admin = proxy.admin_url();
    let path = format!("/v19.0/{WABA}/message_templates");
    for _ in 0..4 {
        get(&proxy, &path).await;
    }
    let v: Value = admin_get(&admin, "/admin/cache", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["entries"], 1, "{v}");
    assert!(v["bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["requests"]["hit"], 3);
    assert_eq!(v["requests"]["miss"], 1);
    assert_eq!(v["hit_ratio"], 0.75);

    let purge = |body: String| {
        let admin = admin.clone();
        async move {
            client()
                .post(format!("{admin}/admin/cache/purge"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = purge(format!(r#"{{"app":"main","prefix":"/{WABA}"}}"#)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["purged"], 1);
    assert_eq!(x_cache(&get(&proxy, &path).await), "MISS");

    let r = purge(r#"{"app":"nope","prefix":"/1"}"#.into()).await;
    assert_eq!(r.status(), 404);
    let r = purge(r#"{"app":"main","prefix":"no-slash"}"#.into()).await;
    assert_eq!(r.status(), 400);
    let r = purge("not json".into()).await;
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
}

// ---------------------------------------------------------------- token and separation

// With server.admin_token_env set, every admin path but /healthz answers 401 (with a
// WWW-Authenticate challenge) without the token or with a wrong one, and 200 with it.
#[tokio::test]
async fn admin_token_is_required_everywhere_but_healthz() {
    let sim = start_sim(sim_config()).await;
    let proxy = guarded_admin(&sim.url).start().await;
    let admin = proxy.admin_url();
    for path in [
        "/metrics",
        "/readyz",
        "/admin/limits",
        "/admin/cache",
        "/admin/status",
        "/admin",
        "/",
        "/nope",
    ] {
        let r = admin_get(&admin, path, None).await;
        assert_eq!(r.status(), 401, "{path} without a token");
        assert!(r.headers().contains_key("www-authenticate"));
        let r = admin_get(&admin, path, Some("adm-TOKEN-secret-7Hq2L")).await;
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let r = admin_get(&admin, path, Some(ADMIN_TOKEN)).await;
        let want = if path == "/nope" { 404 } else { 200 };
        assert_eq!(r.status(), want, "{path} with the token");
    }
    assert_eq!(admin_get(&admin, "/healthz", None).await.status(), 200);
    let r = client()
        .post(format!("{admin}/admin/cache/purge"))
        .body(r#"{"app":"main","prefix":"/"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

// On the proxy port /metrics, /healthz and /admin are Graph paths like any other: without a key
// they get the Graph 401, with one they are forwarded; never the admin answers.
#[tokio::test]
async fn the_proxy_port_never_serves_admin_paths() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).admin().start().await;
    for path in ["/metrics", "/healthz", "/readyz", "/admin", "/admin/limits"] {
        let r = client()
            .get(format!("{}{path}", proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let v: Value = r.json().await.unwrap();
        graph_error(&v);
        let r = get(&proxy, path).await;
        let body = r.text().await.unwrap();
        assert!(!body.contains("graphgate_requests"), "{path}: {body}");
        assert!(!body.contains("<html"), "{path}: {body}");
        assert!(!body.contains("\"buckets\""), "{path}: {body}");
    }
    let forwarded = sim
        .sim
        .stats()
        .requests
        .iter()
        .filter(|r| r.path.ends_with("/metrics"))
        .count();
    assert_eq!(forwarded, 1, "the keyed /metrics went to the Graph API");
}

// The admin listener's config: default loopback address, "off" and "" disable it, an inline token
// is refused like every other secret, and sharing the proxy's address is an error.
#[test]
fn admin_listener_config_defaults_disables_and_refuses_inline_tokens() {
    let c = with_admin_token("http://127.0.0.1:1").config();
    assert_eq!(
        c.server.admin_listen,
        Some("127.0.0.1:9090".parse().unwrap())
    );
    assert!(c.server.admin_token.is_none());
    for off in ["off", "", "OFF"] {
        let c = with_admin_token("http://127.0.0.1:1")
            .server(&format!("admin_listen = \"{off}\""))
            .config();
        assert_eq!(c.server.admin_listen, None, "{off:?}");
    }
    let c = with_admin_token("http://127.0.0.1:1")
        .server("admin_listen = \"0.0.0.0:9191\"\nadmin_token_env = \"TEST_ADMIN_TOKEN\"")
        .config();
    assert_eq!(c.server.admin_listen, Some("0.0.0.0:9191".parse().unwrap()));
    assert_eq!(c.server.admin_token.unwrap().expose(), ADMIN_TOKEN);

    let err = |extra: &str| {
        with_admin_token("http://127.0.0.1:1")
            .set("server.listen", "127.0.0.1:8080")
            .server(extra)
            .load()
            .unwrap_err()
            .to_string()
    };
    let e = err(&format!("admin_token = \"{ADMIN_TOKEN}\""));
    assert!(e.contains("server.admin_token"), "{e}");
    assert!(e.contains("inline secret"), "{e}");
    assert!(!e.contains(ADMIN_TOKEN), "{e}");
    let e = err("admin_listen = \"127.0.0.1:8080\"");
    assert!(e.contains("server.admin_listen"), "{e}");
    let e = err("admin_listen = \"nine-oh-nine-oh\"");
    assert!(e.contains("server.admin_listen"), "{e}");
}

// ---------------------------------------------------------------- logs and secrets

// Traffic that carries every secret (keys in headers, query and form bodies, per-WABA tokens, app
// secret proofs, the admin token): /metrics, the admin JSON, the status page and the logs hold
// none of them, and the request log lines carry the bucket and cache fields.
#[tokio::test]
async fn secrets_never_appear_in_metrics_admin_json_status_page_or_logs() {
    let logs = logs();
    let sim = start_sim(sim_config()).await;
    let proxy = guarded_admin(&sim.url).start().await;
    let admin = proxy.admin_url();
    let c = client();
    let marker = "admin-secret-scan-0001";
    for _ in 0..2 {
        let r = c
            .get(format!("{}/v19.0/{WABA}/message_templates", proxy.url))
            .bearer_auth(CLIENT_KEY)
            .header("x-request-id", marker)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    c.get(format!(
        "{}/v19.0/{OTHER_WABA}?access_token={CLIENT_KEY}",
        proxy.url
    ))
    .send()
    .await
    .unwrap();
    c.post(format!("{}/v19.0/{WABA}/subscribed_apps", proxy.url))
        .form(&[("access_token", CLIENT_KEY)])
        .send()
        .await
        .unwrap();
    c.get(format!("{}/v19.0/{WABA}", proxy.url))
        .bearer_auth(LIMITED_KEY)
        .send()
        .await
        .unwrap();
    c.get(format!(
        "{}/v19.0/{WABA}?access_token={SYSTEM_TOKEN}",
        proxy.url
    ))
    .bearer_auth(CLIENT_KEY)
    .send()
    .await
    .unwrap();
    // Wrong admin tokens, and one that is a client key: refused, and not logged.
    admin_get(&admin, "/metrics", Some(CLIENT_KEY)).await;
    admin_get(&admin, "/metrics", Some("adm-TOKEN-secret-7Hq2Lx")).await;

    let mut seen = String::new();
    for path in [
        "/metrics",
        "/admin/limits",
        "/admin/cache",
        "/admin/status",
        "/admin",
        "/readyz",
    ] {
        let r = admin_get(&admin, path, Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status(), 200, "{path}");
        seen.push_str(&r.text().await.unwrap());
    }
    proxy.shutdown().await;
    let logs = logs.text();
    for (what, text) in [("admin output", &seen), ("logs", &logs)] {
        assert_no_secrets(what, text);
        assert!(
            !text.contains(ADMIN_TOKEN),
            "{what} contains the admin token"
        );
    }
    // The access line, inside the request span (which carries the id): client, app, class,
    // bucket, cache result, upstream status.
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| l.contains(marker) && l.contains("\"done\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{logs}");
    let span = |i: usize, k: &str| {
        let l = &lines[i];
        if l["fields"][k].is_null() {
            l[k].clone()
        } else {
            l["fields"][k].clone()
        }
    };
    assert!(
        lines.iter().all(|l| l["span"]["id"].is_string()),
        "the span carries the request id"
    );
    assert_eq!(span(0, "client"), "alpha");
    assert_eq!(span(0, "app"), "main");
    assert_eq!(span(0, "class"), "waba");
    assert_eq!(span(0, "bucket"), format!("waba:{WABA}"));
    assert_eq!(span(0, "upstream_status"), 200);
    let caches: BTreeSet<String> = (0..2)
        .map(|i| span(i, "cache").as_str().unwrap().to_string())
        .collect();
    assert_eq!(caches, BTreeSet::from(["hit".into(), "miss".into()]));
}

// ---------------------------------------------------------------- the binary

// `graphgate serve` binds server.admin_listen itself (here 127.0.0.1:0), logs where (and its version
// at start), and serves /healthz there.
#[tokio::test]
async fn the_binary_binds_the_admin_listener_from_config() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("graphgate.toml");
    std::fs::write(
        &path,
        TestProxy::builder("http://127.0.0.1:9")
            .server("admin_listen = \"127.0.0.1:0\"")
            .toml(),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_graphgate"))
        .args(["--log-format", "json", "--config"])
        .arg(&path)
        .envs(env())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (version_tx, version_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["fields"]["message"] == "graphgate listening"
                || v["message"] == "graphgate listening"
            {
                let version = v["fields"]["version"]
                    .as_str()
                    .or(v["version"].as_str())
                    .unwrap_or("")
                    .to_string();
                let _ = version_tx.send(version);
            }
            if let Some(addr) = v["admin"].as_str() {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20));
    let status = match &addr {
        Ok(a) => Some(
            admin_get(&format!("http://{a}"), "/healthz", None)
                .await
                .status(),
        ),
        Err(_) => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    let addr = addr.expect("no admin listener address logged within 20 s");
    assert_eq!(status.map(|s| s.as_u16()), Some(200), "/healthz on {addr}");
    // The start-up line names the version.
    let version = version_rx.recv_timeout(Duration::from_secs(5));
    assert_eq!(version.as_deref(), Ok(env!("CARGO_PKG_VERSION")));
}

// ---------------------------------------------------------------- /admin/status

// /admin/status (the status page's health section) says who was refused, grouped by client and
// bucket with counts, that Redis is down and Meta failing, the upstream error rate, and the
// version and uptime; /readyz and it agree.
#[tokio::test]
async fn admin_status_groups_refusals_by_client_and_reports_redis_and_meta() {
    let sim = start_sim(sim_config()).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TestProxy::builder(&sim.url)
        .waba_limit(WABA, 1)
        .limits(&format!(
            "backend = \"redis\"\nredis_url = \"redis://{closed}\"\nbackend_timeout = \"200ms\"\nwindow = \"3s\""
        ))
        .upstream("request_timeout = \"1s\"")
        .admin()
        .start()
        .await;
    // A replica that starts without Redis admits nothing for a window plus request_timeout (what
    // it spent before a restart is unknown); then from its share.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let c = client();
    let call = |key: &'static str, n: u32| {
        c.get(format!(
            "{}/v19.0/{WABA}/message_templates?n={n}",
            proxy.url
        ))
        .bearer_auth(key)
        .send()
    };
    assert_eq!(call(CLIENT_KEY, 0).await.unwrap().status(), 200);
    for n in 1..=3 {
        assert_eq!(call(CLIENT_KEY, n).await.unwrap().status(), 429);
    }
    for n in 4..=5 {
        assert_eq!(call(LIMITED_KEY, n).await.unwrap().status(), 429);
    }
    sim.sim.set_faults(graphgate::sim::Faults {
        fail_next: 1,
        fail_status: 503,
        ..Default::default()
    });
    assert_eq!(
        get(&proxy, &format!("/v19.0/{OTHER_WABA}")).await.status(),
        503
    );

    let s: Value = admin_get(&proxy.admin_url(), "/admin/status", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["revision"].is_string());
    assert!(s["started_at_unix"].as_u64().unwrap() > 1_600_000_000);
    assert!(s["uptime_secs"].as_u64().unwrap() < 600);
    // `connecting` until the first attempt fails, then `down`: either way not up.
    let backend = s["limits_backend"].as_str().unwrap().to_string();
    assert!(["down", "connecting"].contains(&backend.as_str()), "{s}");
    assert_eq!(
        s["meta"]["state"], "answering",
        "Meta answered (with a 503): {s}"
    );
    assert_eq!(s["meta"]["calls"], 2);
    assert_eq!(s["meta"]["failed"], 1);
    assert_eq!(s["meta"]["error_rate"], 0.5);
    let refused = s["refused"].as_array().unwrap();
    let groups: Vec<(String, String, u64)> = refused
        .iter()
        .map(|g| {
            (
                g["client"].as_str().unwrap().to_string(),
                g["bucket"].as_str().unwrap().to_string(),
                g["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let bucket = format!("waba:{WABA}");
    assert_eq!(
        groups,
        [
            ("alpha".into(), bucket.clone(), 3),
            ("bravo".into(), bucket, 2)
        ],
        "{s}"
    );
    assert!(refused
        .iter()
        .all(|g| g["reason"] == "full" && g["app"] == "main"));
    let ready: Value = admin_get(&proxy.admin_url(), "/readyz", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], s["ready"]);
    assert!(["down", "connecting"].contains(&ready["limits_backend"].as_str().unwrap()));
}
