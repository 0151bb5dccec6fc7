//! Ids no config names (#14): a client without a WABA allowlist naming ever new made-up ids cannot
//! grow the proxy's memory, `/admin/limits`, the state file or Redis without bound, and the budget
//! stays exact: at most `limits.max_unknown_buckets` ids own a bucket, the rest share one overflow
//! bucket of `waba_default` calls (docs/limits.md, "Ids no config names").

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use support::redis::RedisServer;
use support::spawned::Spawned;
use support::{client, start_sim, TestProxy, CLIENT_KEY, WABA};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// `GET /v19.0/{id}/phone_numbers` for `n` made-up ids (`first`, `first + 1`, ...), `conc` at a
/// time: how many answers were graphgate's own 429 (the overflow bucket spent).
async fn drive(url: &str, ids: std::ops::Range<u64>, conc: usize) -> usize {
    let c = client();
    let refused: Vec<bool> = futures_util::stream::iter(ids)
        .map(|id| {
            let req = c
                .get(format!("{url}/v19.0/9{id:014}/phone_numbers"))
                .bearer_auth(CLIENT_KEY);
            async move {
                let r = req.send().await.expect("the proxy answers");
                let local_429 =
                    r.status().as_u16() == 429 && r.headers().contains_key("x-graphgate-error");
                let _ = r.bytes().await;
                local_429
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    refused.into_iter().filter(|r| *r).count()
}

/// `/admin/limits`: its body's size and the buckets it lists.
async fn admin_limits(admin: &str) -> (usize, Vec<Value>) {
    let r = client()
        .get(format!("{admin}/admin/limits"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.bytes().await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let buckets = v["buckets"].as_array().cloned().unwrap_or_default();
    (body.len(), buckets)
}

// 50,000 made-up ids through the real binary with the default cap (1000) and waba_default (200):
// exactly 1,200 calls reach the simulator, the rest are graphgate's 429s from the overflow bucket;
// RSS grows by less than 12 MiB, /admin/limits lists at most 1,001 unknown-id buckets (under
// 400 KB) and the state file stays under 200 KB. Before #14 every id kept a bucket for the hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_ids_share_one_overflow_bucket_and_stay_bounded() {
    let sim = start_sim(support::sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("limits.json");
    let builder = TestProxy::builder(&sim.url)
        .server("access_log = false")
        .set("limits.state_file", state.display().to_string())
        .set("limits.state_interval", "1s");
    let p = Spawned::start(builder, None);
    // Warm-up: connections, thread caches, the first buckets (a configured WABA's, cached reads).
    let c = client();
    for _ in 0..200 {
        let r = c
            .get(format!("{}/v19.0/{WABA}/phone_numbers", p.url()))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap();
        let _ = r.bytes().await;
    }
    drive(&p.url(), 0..100, 32).await;
    let base = p.rss_kib() * KIB;
    let calls_before = sim.sim.stats().total_calls;
    let n = 50_000u64;
    let started = std::time::Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(240), drive(&p.url(), 100..n, 64))
        .await
        .expect("50,000 calls within 4 minutes");
    let took = started.elapsed();
    let reached = sim.sim.stats().total_calls - calls_before;
    let grown = (p.rss_kib() * KIB).saturating_sub(base);
    // 100 ids took their own buckets in the warm-up: 900 more do, then the overflow admits 200.
    assert_eq!(reached, 900 + 200, "calls that reached Meta");
    assert_eq!(refused as u64, n - 100 - 1100, "graphgate's own 429s");
    let (admin_bytes, buckets) = admin_limits(&p.admin).await;
    let unknown = buckets
        .iter()
        .filter(|b| {
            b["bucket"]
                .as_str()
                .is_some_and(|s| s.starts_with("waba:9"))
        })
        .count();
    let overflow = buckets
        .iter()
        .find(|b| b["bucket"] == "waba:*")
        .expect("the overflow bucket is listed");
    assert_eq!(unknown, 1000, "ids owning a bucket");
    assert_eq!(overflow["used"], 200);
    assert_eq!(overflow["limit"], 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let state_bytes = std::fs::metadata(&state).unwrap().len();
    eprintln!(
        "50,000 made-up ids in {took:?}: RSS base {} KiB, +{} KiB; /admin/limits {admin_bytes} \
         bytes ({} rows); state file {state_bytes} bytes",
        base / KIB,
        grown / KIB,
        buckets.len()
    );
    assert!(grown < 12 * MIB, "RSS grew by {} KiB", grown / KIB);
    assert!(
        admin_bytes < 400_000,
        "/admin/limits is {admin_bytes} bytes"
    );
    assert!(state_bytes < 200_000, "state file is {state_bytes} bytes");
}

// The same with backend = "redis" and a cap of 50: 5,000 made-up ids let exactly 50 + 200 calls
// through. Redis holds bucket keys for the 50 ids, the overflow, and the ids of the overflow's 200
// calls (each also spends its id's own bucket, so replicas that route an id differently still
// count it once; those keys expire with the window): none for the 4,750 refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_ids_keep_redis_keys_bounded() {
    let redis = RedisServer::start();
    let sim = start_sim(support::sim_config()).await;
    let proxy = TestProxy::builder(&sim.url)
        .redis(&redis.url(), "unknown")
        .set("limits.max_unknown_buckets", 50)
        .admin()
        .start()
        .await;
    // Until Redis holds this replica's calls, a new bucket admits nothing (docs/limits.md).
    let started = std::time::Instant::now();
    while proxy.gw.limiter().backend_state() != "up" {
        assert!(started.elapsed() < Duration::from_secs(10), "Redis is up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = tokio::time::timeout(Duration::from_secs(120), drive(&proxy.url, 0..5_000, 32))
        .await
        .expect("5,000 calls within 2 minutes");
    let (_, buckets) = admin_limits(&proxy.admin_url()).await;
    assert_eq!(
        buckets.iter().find(|b| b["bucket"] == "waba:*").unwrap()["used"],
        200
    );
    assert_eq!(sim.sim.stats().total_calls, 250, "calls that reached Meta");
    assert_eq!(refused, 5_000 - 250);
    let keys = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "--scan",
            "--pattern",
            "unknown:b:*",
        ])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&keys.stdout).to_string();
    let ids: std::collections::BTreeSet<&str> = keys
        .lines()
        .filter_map(|k| k.strip_prefix("unknown:b:main:waba:"))
        .map(|rest| rest.split(':').next().unwrap_or(rest))
        .collect();
    assert!(
        ids.contains("*"),
        "the overflow bucket is in Redis: {ids:?}"
    );
    assert_eq!(ids.len(), 251, "ids with bucket keys in Redis: {ids:?}");
    proxy.shutdown().await;
}

// Two replicas on one Redis, each with a cap of 2 and waba_default = 3. Replica A gives a made-up
// id X its own bucket and spends it (3 calls). Replica B reaches its cap with two other ids, so it
// routes X to the overflow: the overflow has room, but X's own bucket (in Redis) does not, and B
// refuses. Before, B admitted X through the overflow and Meta saw 6 calls on X in one window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_routed_differently_by_two_replicas_is_counted_once() {
    let redis = RedisServer::start();
    let sim = start_sim(support::sim_config()).await;
    let start = || {
        TestProxy::builder(&sim.url)
            .cache(false)
            .redis(&redis.url(), "split")
            .set("limits.max_unknown_buckets", 2)
            .set("limits.waba_default", 3)
            .set("limits.replicas", 2)
            .start()
    };
    let (a, b) = (start().await, start().await);
    for p in [&a, &b] {
        let started = std::time::Instant::now();
        while p.gw.limiter().backend_state() != "up" {
            assert!(started.elapsed() < Duration::from_secs(10), "Redis is up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // X = 9...1: its own bucket on A, spent.
    assert_eq!(drive(&a.url, 1..2, 1).await, 0);
    assert_eq!(drive(&a.url, 1..2, 1).await, 0);
    assert_eq!(drive(&a.url, 1..2, 1).await, 0);
    assert_eq!(drive(&a.url, 1..2, 1).await, 1, "X's bucket is spent on A");
    // B: two other ids take its two own buckets; X then goes to B's overflow.
    assert_eq!(drive(&b.url, 2..4, 1).await, 0);
    assert_eq!(
        drive(&b.url, 1..2, 1).await,
        1,
        "X through B's overflow is refused: its own bucket is spent"
    );
    // The overflow itself still admits a new id.
    assert_eq!(drive(&b.url, 4..5, 1).await, 0);
    assert_eq!(
        sim.sim.stats().total_calls,
        3 + 2 + 1,
        "calls that reached Meta"
    );
    a.shutdown().await;
    b.shutdown().await;
}
