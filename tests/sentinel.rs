//! Redis with Sentinel as self-hosting ops run it: a master, a replica and three Sentinels
//! (Debian's redis-server, run as `--sentinel` the way redis-sentinel runs it) on loopback ports,
//! two proxies that find the master through the Sentinels, and demand above the budget. The test
//! kills the master (SIGKILL); the Sentinels promote the replica, the proxies follow it, and the
//! simulator never sees more than N calls in any window, before, during or after the failover.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graphgate::sim::Faults;
use serde_json::Value;
use support::redis::RedisServer;
use support::*;

const WINDOW: Duration = Duration::from_secs(4);
const N: u32 = 30;
const LATENCY_MS: u64 = 200;
const MASTER: &str = "ggmaster";

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < within, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Two proxies through three Sentinels: the master is killed, the replica promoted, both proxies
// follow it and keep one budget; Meta never sees more than N in a window and never throttles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_follow_a_sentinel_failover_and_keep_one_budget() {
    let mut master = RedisServer::start();
    let replica = RedisServer::replica_of(&master, &[]);
    wait_until("the replica never synced", Duration::from_secs(10), || {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    });
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::sentinel(&master, MASTER, 1000))
        .collect();
    // Each Sentinel must know the others and the replica before a failover can happen.
    wait_until(
        "the Sentinels never found each other",
        Duration::from_secs(15),
        || {
            sentinels.iter().all(|s| {
                s.cli(&["SENTINEL", "ckquorum", MASTER]).starts_with("OK 3")
                    && !s.cli(&["SENTINEL", "replicas", MASTER]).is_empty()
            })
        },
    );

    let sim = start_sim(sim_config_limited(WINDOW, N)).await;
    sim.sim.set_faults(Faults {
        latency_ms: LATENCY_MS,
        ..Faults::default()
    });
    let addrs: Vec<String> = sentinels.iter().map(|s| s.addr()).collect();
    let limits = format!(
        "window = \"{}s\"\nreplicas = 2\non_backend_error = \"local\"\nbackend_timeout = \"200ms\"",
        WINDOW.as_secs()
    );
    let mut reps = Vec::new();
    for _ in 0..2 {
        let p = TestProxy::builder(&sim.url)
            .cache(false)
            .limits(&limits)
            .set("limits.backend", "redis")
            .set("limits.redis_prefix", "sent1")
            .set("limits.redis_sentinels", addrs.clone())
            .set("limits.redis_master_name", MASTER)
            .upstream("request_timeout = \"2s\"")
            .waba_limit(WABA, N as i64)
            .start()
            .await;
        let started = Instant::now();
        while p.gw.limiter().backend_state() != "up" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never connected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reps.push(p);
    }

    // Three callers per proxy, each asking again at once after a 200 and soon after a 429.
    let stop = Arc::new(AtomicBool::new(false));
    let ok: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let odd: Arc<Mutex<Vec<u16>>> = Arc::default();
    let mut tasks = Vec::new();
    for p in &reps {
        for _ in 0..3 {
            let (stop, ok, odd) = (stop.clone(), ok.clone(), odd.clone());
            let url = format!("{}/v19.0/{WABA}", p.url);
            tasks.push(tokio::spawn(async move {
                let client = client();
                while !stop.load(Ordering::Relaxed) {
                    let status = match client.get(&url).bearer_auth(CLIENT_KEY).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    match status {
                        200 => ok.lock().unwrap().push(Instant::now()),
                        429 => tokio::time::sleep(Duration::from_millis(25)).await,
                        s => {
                            odd.lock().unwrap().push(s);
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                    }
                }
            }));
        }
    }

    tokio::time::sleep(WINDOW * 2).await;
    let killed = Instant::now();
    master.stop();
    // The Sentinels promote the replica; both proxies move to it.
    let started = Instant::now();
    loop {
        let followed = reps.iter().all(|p| {
            let link = p.gw.limiter().redis().unwrap();
            link.switches() >= 1 && p.gw.limiter().backend_state() == "up"
        });
        if followed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the proxies never followed the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let followed_after = killed.elapsed();
    assert!(
        replica.cli(&["ROLE"]).starts_with("master"),
        "the replica was not promoted"
    );
    // A window for the calls counted twice after the failover to leave, then two more windows in
    // which the two must again spend the whole budget together.
    tokio::time::sleep(WINDOW).await;
    let last_from = Instant::now();
    tokio::time::sleep(WINDOW * 2).await;
    let last_to = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    // The most answers in any window-long stretch of the last two windows (one fixed stretch
    // can miss a few on a busy host).
    let times: Vec<Instant> = ok
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|t| *t >= last_from && *t < last_to)
        .collect();
    let last = times
        .iter()
        .map(|a| {
            times
                .iter()
                .filter(|b| **b >= *a && **b < *a + WINDOW)
                .count()
        })
        .max()
        .unwrap_or(0);
    let total = ok.lock().unwrap().len();
    let st: Value = serde_json::to_value(sim.sim.stats()).unwrap();
    let b = st["buckets"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with(WABA))
        .map(|(_, v)| v.clone())
        .unwrap();
    let report = format!(
        "followed {followed_after:?} after the kill; admitted {total}, at most {last} in a window at the end; Meta: {b}"
    );
    eprintln!("{report}");
    let odd = odd.lock().unwrap().clone();
    assert!(
        odd.is_empty(),
        "answers other than 200/429: {odd:?} ({report})"
    );
    assert_eq!(b["throttled"], 0, "Meta throttled ({report})");
    assert!(b["max_in_window"].as_u64().unwrap() <= N as u64, "{report}");
    assert!(
        last >= (N as usize * 9).div_ceil(10),
        "the budget was not used again ({report})"
    );
    let text = logs().text();
    assert!(
        text.contains("the Redis master moved"),
        "no log line about the failover"
    );
}
