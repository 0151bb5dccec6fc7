//! Rate limits end to end: the real proxy in front of the real simulator, which counts exactly as
//! Meta does and reports the largest number of calls it saw in any window.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn stats(sim: &SimServer) -> Value {
    serde_json::to_value(sim.sim.stats()).unwrap()
}

fn bucket<'a>(st: &'a Value, waba: &str) -> &'a Value {
    let buckets = st["buckets"].as_object().unwrap();
    buckets
        .iter()
        .find(|(k, _)| k.ends_with(waba))
        .map(|(_, v)| v)
        .unwrap_or(&Value::Null)
}

/// `n` calls on the WABA made straight to the simulator with the app's own token, as another
/// consumer of the app would: Meta counts them, graphgate never sees them.
async fn spend_behind_graphgates_back(sim: &SimServer, n: usize) {
    let direct = client();
    let proof = graphgate::sim::appsecret_proof(APP_SECRET, SYSTEM_TOKEN, None);
    for _ in 0..n {
        let r = direct
            .get(format!("{}/v19.0/{WABA}?appsecret_proof={proof}", sim.url))
            .bearer_auth(SYSTEM_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// Simulator with a short window, and a proxy whose `[limits]` are `limits`.
async fn start_limited(
    sim_window: Duration,
    sim_limit: u32,
    limits: &str,
) -> (SimServer, TestProxy) {
    let sim = start_sim(sim_config_limited(sim_window, sim_limit)).await;
    let proxy = TestProxy::builder(&sim.url)
        .cache(false)
        .limits(limits)
        .start()
        .await;
    (sim, proxy)
}

// 1,000 concurrent callers on a bucket of 100: exactly 100 reach Meta, the rest get a
// Graph-shaped 429 that SDKs read as throttling, and Meta never throttles us.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_callers_get_exactly_n_admissions() {
    let (sim, proxy) = start_limited(Duration::from_secs(3600), 5000, "waba_active = 100").await;
    let url = format!("{}/v19.0/{WABA}", proxy.url);
    let c = client();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { c.get(&url).bearer_auth(CLIENT_KEY).send().await.unwrap() })
        })
        .collect();
    let mut ok = 0;
    let mut limited = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => limited.push(r),
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok, 100);
    assert_eq!(limited.len(), 900);
    let st = stats(&sim);
    assert_eq!(bucket(&st, WABA)["calls"], 100);
    assert_eq!(bucket(&st, WABA)["throttled"], 0);

    let r = limited.pop().unwrap();
    assert!(r.headers().contains_key("x-graphgate-error"));
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3590..=3600).contains(&retry), "retry-after {retry}");
    assert_eq!(
        r.headers()["ratelimit-policy"],
        format!("\"waba:{WABA}\";q=100;w=3600").as_str()
    );
    let v: Value = r.json().await.unwrap();
    let e = graph_error(&v);
    assert_eq!(e["code"], 80007, "pywa maps 80007 to ThrottlingError");
    assert_eq!(e["is_transient"], true);
    assert!(e["message"].as_str().unwrap().contains(WABA));
}

// Steady over-demand across several short windows: Meta (the simulator) never sees more than N
// in any window and never throttles, and the budget is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_demand_over_several_windows_never_trips_meta() {
    let window = Duration::from_millis(1000);
    let (sim, proxy) = start_limited(window, 20, "window = \"1s\"\nwaba_active = 20").await;
    let url = format!("{}/v19.0/{WABA}/phone_numbers", proxy.url);
    let started = Instant::now();
    let mut ok = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        let batch: Vec<_> = (0..8)
            .map(|_| tokio::spawn(get_status(url.clone())))
            .collect();
        for t in batch {
            if t.await.unwrap() == 200 {
                ok += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = stats(&sim);
    let b = bucket(&st, WABA);
    assert_eq!(b["throttled"], 0, "{b}");
    assert!(b["max_in_window"].as_u64().unwrap() <= 20, "{b}");
    // 3.5 windows of demand far above 20: at least three full windows were used.
    assert!(ok >= 60, "only {ok} calls admitted");
}

// When Meta reports 100% (another consumer spent the budget), graphgate stops calling until the
// regain time and answers locally.
#[tokio::test]
async fn metas_100_percent_report_stops_further_calls() {
    // The proxy believes in 50 calls, Meta allows 5.
    let (sim, proxy) = start_limited(Duration::from_secs(3600), 5, "waba_active = 50").await;
    let url = format!("{}/v19.0/{WABA}", proxy.url);
    for _ in 0..5 {
        assert_eq!(get(&url).await.status(), 200);
    }
    for _ in 0..5 {
        let r = get(&url).await;
        assert_eq!(r.status(), 429);
        assert!(
            r.headers().contains_key("x-graphgate-error"),
            "answered locally"
        );
    }
    let st = stats(&sim);
    assert_eq!(bucket(&st, WABA)["calls"], 5);
    assert_eq!(bucket(&st, WABA)["throttled"], 0);
}

// A throttling error from Meta blocks the bucket: the next calls are answered locally.
#[tokio::test]
async fn a_throttling_error_from_meta_blocks_the_bucket() {
    let (sim, proxy) = start_limited(
        Duration::from_secs(3600),
        2,
        "waba_active = 50\nthrottle_block = \"1m\"",
    )
    .await;
    // Another consumer of the app spends Meta's budget behind graphgate's back.
    spend_behind_graphgates_back(&sim, 2).await;
    let url = format!("{}/v19.0/{WABA}/message_templates", proxy.url);
    let r = get(&url).await;
    assert_eq!(r.status(), 400, "Meta's own 80008 is relayed");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 80008);
    let r = get(&url).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("x-graphgate-error"));
    assert_eq!(
        bucket(&stats(&sim), WABA)["throttled"],
        1,
        "only the first call was refused by Meta"
    );
}

// A full bucket stays full across a restart: the state file carries the window.
#[tokio::test]
async fn a_full_bucket_stays_full_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("limits.json");
    let limits = format!("waba_active = 3\nstate_file = \"{}\"", state.display());
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url)
        .cache(false)
        .limits(&limits)
        .start()
        .await;
    let url = format!("{}/v19.0/{WABA}", proxy.url);
    for _ in 0..3 {
        assert_eq!(get(&url).await.status(), 200);
    }
    proxy.shutdown().await;
    assert!(state.exists());
    let proxy = TestProxy::builder(&sim.url)
        .cache(false)
        .limits(&limits)
        .start()
        .await;
    let r = get(&format!("{}/v19.0/{WABA}", proxy.url)).await;
    assert_eq!(r.status(), 429);
}

// Wait mode holds callers in order until a slot frees; a caller may ask to wait less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_mode_holds_callers_until_a_slot_frees() {
    let (sim, proxy) = start_limited(
        Duration::from_secs(1),
        100,
        "window = \"1s\"\nwaba_active = 2\non_limit = \"wait\"\nmax_wait = \"5s\"",
    )
    .await;
    let url = format!("{}/v19.0/{WABA}", proxy.url);
    let started = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get_status(url.clone())))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "the last two waited a window ({took:?})"
    );
    assert!(took < Duration::from_secs(4));
    // Bucket full again: a caller that will wait only 100 ms gets its 429 at once.
    for _ in 0..2 {
        get(&url).await;
    }
    let t = Instant::now();
    let r = client()
        .get(&url)
        .bearer_auth(CLIENT_KEY)
        .header("X-Graphgate-Max-Wait", "100ms")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(bucket(&stats(&sim), WABA)["throttled"], 0);
}

// A batch counts each sub-request in its bucket and is refused whole when one bucket is short;
// `?ids=a,b` counts once per id.
#[tokio::test]
async fn batches_and_multi_id_calls_count_every_call() {
    let (sim, proxy) = start_limited(
        Duration::from_secs(3600),
        5000,
        "waba_active = 3\nwaba_default = 3",
    )
    .await;
    let c = client();
    let batch: String = serde_json::to_string(
        &(0..4)
            .map(|_| serde_json::json!({"method":"GET","relative_url":format!("v19.0/{WABA}")}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let r = c
        .post(format!("{}/v19.0/", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .form(&[("batch", batch)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "4 sub-calls do not fit a bucket of 3");
    assert_eq!(stats(&sim)["total_calls"], 0);
    let r = get(&format!("{}/v19.0/?ids={WABA},{OTHER_WABA}", proxy.url)).await;
    assert_ne!(r.status(), 429);
    let r = get(&format!("{}/v19.0/{WABA}", proxy.url)).await;
    assert_eq!(
        r.headers()["ratelimit"].to_str().unwrap().split(';').nth(1),
        Some("r=1"),
        "ids= took one slot of WABA"
    );
}

// An `active = "auto"` WABA is probed at start-up; a registered number lifts it to 5000.
#[tokio::test]
async fn auto_wabas_learn_their_limit_from_the_probe() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url)
        .cache(false)
        .waba_active(WABA, "auto")
        .start()
        .await;
    let url = format!("{}/v19.0/{WABA}", proxy.url);
    let mut policy = String::new();
    for _ in 0..50 {
        let r = get(&url).await;
        policy = r.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .to_string();
        if policy.contains("q=5000") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(policy.contains("q=5000"), "{policy}");
}

// The probe and the proxy share one metered path: Meta's throttling answer to a probe blocks the
// WABA's bucket exactly as an answer to a proxied call does, so the next call is refused locally.
#[tokio::test]
async fn a_probes_throttling_answer_blocks_the_bucket_like_a_proxied_call() {
    let sim = start_sim(sim_config_limited(Duration::from_secs(3600), 2)).await;
    // Another consumer of the app spends Meta's budget behind graphgate's back.
    spend_behind_graphgates_back(&sim, 2).await;
    let proxy = TestProxy::builder(&sim.url)
        .cache(false)
        .limits("throttle_block = \"1m\"")
        .waba_active(WABA, "auto")
        .start()
        .await;
    // The start-up probe is the only call graphgate makes; Meta throttles it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while bucket(&stats(&sim), WABA)["throttled"] != 1 {
        assert!(Instant::now() < deadline, "the probe never reached Meta");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = get(&format!("{}/v19.0/{WABA}/message_templates", proxy.url)).await;
    assert_eq!(r.status(), 429, "the probe's 80008 closed the bucket");
    assert!(r.headers().contains_key("x-graphgate-error"));
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Meta throttled"),
        "{v}"
    );
    assert_eq!(
        bucket(&stats(&sim), WABA)["throttled"],
        1,
        "only the probe was refused by Meta"
    );
}

// Limits that make no sense are refused at start-up, naming the key.
#[test]
fn nonsensical_limits_are_refused() {
    for (limits, key) in [
        ("waba_default = 0", "limits.waba_default"),
        ("waba_active = -5", "limits.waba_active"),
        ("credit_line = 0", "limits.credit_line"),
        ("window = \"0s\"", "limits.window"),
        ("on_limit = \"queue\"", "limits.on_limit"),
        ("reserve_percent = 95", "limits.reserve_percent"),
    ] {
        let err = TestProxy::builder("http://127.0.0.1:9")
            .cache(false)
            .limits(limits)
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{limits}: {err}");
    }
    let err = TestProxy::builder("http://127.0.0.1:9")
        .set("client[1].rate", "fast")
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains("client[1].rate"), "{err}");
}

// Cache hits cost no budget; once the bucket is spent, an expired entry answers (STALE) instead
// of a 429, and an uncached call gets the 429.
#[tokio::test]
async fn cache_hits_cost_nothing_and_a_spent_bucket_serves_stale() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url)
        .section("cache", "default_ttl = \"200ms\"\nstale_ttl = \"1h\"")
        .limits("waba_active = 2")
        .start()
        .await;
    let x = format!("{}/v19.0/{WABA}/message_templates?limit=3", proxy.url);
    assert_eq!(get(&x).await.headers()["x-cache"], "MISS");
    for _ in 0..5 {
        assert_eq!(get(&x).await.headers()["x-cache"], "HIT");
    }
    assert_eq!(
        bucket(&stats(&sim), WABA)["calls"],
        1,
        "hits never reached Meta"
    );
    assert_eq!(
        get(&format!("{}/v19.0/{WABA}", proxy.url)).await.status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get(&x).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "STALE");
    assert!(r.headers()["warning"].to_str().unwrap().starts_with("110"));
    let r = get(&format!("{}/v19.0/{WABA}/phone_numbers", proxy.url)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(bucket(&stats(&sim), WABA)["calls"], 2);
}
