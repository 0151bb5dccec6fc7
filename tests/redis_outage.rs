//! One budget through Redis failures: three replicas on one real redis-server that the test kills
//! and restarts empty, or hangs (SIGSTOP) and lets go on, against the simulator with a slow
//! upstream, a short window and demand above N throughout. Meta never throttles and never sees
//! more than N in any rolling window, before, during and after the outage; during it the three
//! together still use at least 90% of N; after it one replica alone can use all of N again.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graphgate::sim::Faults;
use serde_json::Value;
use support::redis::RedisServer;
use support::*;

const WINDOW: Duration = Duration::from_secs(4);
const N: u32 = 30;
const REPLICAS: usize = 3;
/// Each call takes this long at "Meta", after it was counted.
const LATENCY_MS: u64 = 200;

/// Callers that keep asking each replica, more than the budget allows, until told to stop.
struct Load {
    stop: Vec<Arc<AtomicBool>>,
    /// (replica, when its answer came) of every call admitted.
    ok: Arc<Mutex<Vec<(usize, Instant)>>>,
    /// Answers other than 200 and 429.
    odd: Arc<Mutex<Vec<u16>>>,
    refused: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(urls: &[String], per_replica: usize) -> Load {
        let stop: Vec<_> = urls
            .iter()
            .map(|_| Arc::new(AtomicBool::new(false)))
            .collect();
        let ok = Arc::new(Mutex::new(Vec::new()));
        let odd = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (r, url) in urls.iter().enumerate() {
            for _ in 0..per_replica {
                let (stop, ok, odd, refused) =
                    (stop[r].clone(), ok.clone(), odd.clone(), refused.clone());
                let url = format!("{url}/v19.0/{WABA}");
                tasks.push(tokio::spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) {
                        let status = match client.get(&url).bearer_auth(CLIENT_KEY).send().await {
                            Ok(r) => r.status().as_u16(),
                            Err(_) => 0,
                        };
                        match status {
                            200 => ok.lock().unwrap().push((r, Instant::now())),
                            429 => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(25)).await;
                            }
                            s => {
                                odd.lock().unwrap().push(s);
                                tokio::time::sleep(Duration::from_millis(25)).await;
                            }
                        }
                    }
                }));
            }
        }
        Load {
            stop,
            ok,
            odd,
            refused,
            tasks,
        }
    }

    /// Calls admitted with answers in `[from, to)`, by any replica or by `only` one.
    fn admitted(&self, from: Instant, to: Instant, only: Option<usize>) -> usize {
        self.ok
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, t)| *t >= from && *t < to && only.is_none_or(|o| o == *r))
            .count()
    }

    async fn finish(self) -> (Vec<u16>, usize) {
        for s in &self.stop {
            s.store(true, Ordering::Relaxed);
        }
        for t in self.tasks {
            t.await.unwrap();
        }
        let odd = self.odd.lock().unwrap().clone();
        (odd, self.refused.load(Ordering::Relaxed))
    }
}

enum Outage {
    /// SIGKILL, and a new empty server (no persistence) on the same port.
    KillAndRestartEmpty,
    /// SIGSTOP: connections stay open and nothing answers; then SIGCONT.
    Hang,
}

async fn through(outage: Outage, prefix: &str) {
    let mut redis = RedisServer::start();
    let sim = start_sim(sim_config_limited(WINDOW, N)).await;
    sim.sim.set_faults(Faults {
        latency_ms: LATENCY_MS,
        ..Faults::default()
    });
    let limits = format!(
        "window = \"{}s\"\nreplicas = {REPLICAS}\non_backend_error = \"local\"\nbackend_timeout = \"200ms\"",
        WINDOW.as_secs()
    );
    let mut reps = Vec::new();
    for _ in 0..REPLICAS {
        let p = TestProxy::builder(&sim.url)
            .cache(false)
            .redis(&redis.url(), prefix)
            .limits(&limits)
            .upstream("request_timeout = \"2s\"")
            .waba_limit(WABA, N as i64)
            .start()
            .await;
        let started = Instant::now();
        while p.gw.limiter().backend_state() != "up" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never connected to Redis"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reps.push(p);
    }
    let urls: Vec<String> = reps.iter().map(|p| p.url.clone()).collect();
    let load = Load::start(&urls, 3);

    tokio::time::sleep(WINDOW * 2).await;
    let outage_start = Instant::now();
    match outage {
        Outage::KillAndRestartEmpty => redis.stop(),
        Outage::Hang => redis.pause(),
    }
    tokio::time::sleep(WINDOW * 3).await;
    let outage_end = Instant::now();
    match outage {
        Outage::KillAndRestartEmpty => redis.restart(),
        Outage::Hang => redis.resume(),
    }
    tokio::time::sleep(WINDOW * 2).await;
    // Replica 0 alone from here: once the others' calls have left the window, it may use all of N.
    for s in &load.stop[1..] {
        s.store(true, Ordering::Relaxed);
    }
    let others_stopped = Instant::now();
    tokio::time::sleep(WINDOW + Duration::from_millis(LATENCY_MS * 3)).await;
    let alone_from = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let alone_to = Instant::now();

    let before = load.admitted(outage_start - WINDOW, outage_start, None);
    let during = load.admitted(outage_end - WINDOW, outage_end, None);
    let after = load.admitted(others_stopped - WINDOW, others_stopped, None);
    let alone = load.admitted(alone_from, alone_to, Some(0));
    let shared_again = reps.iter().all(|p| p.gw.limiter().backend_state() == "up");
    let unshared: Vec<usize> = reps
        .iter()
        .map(|p| p.gw.limiter().unshared_calls())
        .collect();
    let (odd, refused) = load.finish().await;

    let st: Value = serde_json::to_value(sim.sim.stats()).unwrap();
    let b = st["buckets"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with(WABA))
        .map(|(_, v)| v.clone())
        .unwrap();
    let report = format!(
        "admitted in the last window before the outage {before}, during it {during}, after it \
         {after}, one replica alone {alone}; refused {refused}; Meta: {b}; unshared left {unshared:?}"
    );
    eprintln!("{report}");
    assert!(
        odd.is_empty(),
        "answers other than 200/429: {odd:?} ({report})"
    );
    assert_eq!(b["throttled"], 0, "Meta throttled ({report})");
    assert!(b["max_in_window"].as_u64().unwrap() <= N as u64, "{report}");
    let ninety = (N as usize * 9).div_ceil(10);
    assert!(before >= ninety, "{report}");
    assert!(
        during >= ninety,
        "the three used less than 90% of N during the outage ({report})"
    );
    assert!(after >= ninety, "{report}");
    assert!(
        alone >= ninety,
        "one replica alone could not use N after the outage ({report})"
    );
    assert!(
        shared_again,
        "a replica did not go back to Redis ({report})"
    );
    assert!(unshared.iter().all(|&u| u == 0), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_budget_through_a_redis_killed_and_restarted_empty() {
    through(Outage::KillAndRestartEmpty, "o1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_budget_through_a_hung_redis() {
    through(Outage::Hang, "o2").await;
}
