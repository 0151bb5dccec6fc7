//! Compliance benchmark: drive the Graph simulator (which counts exactly as Meta does) for 20
//! windows with four demand patterns, through three limiters of the same nominal rate:
//! graphgate (the real proxy), a governor GCRA bucket (burst N, refill N per window) and a
//! fixed-window counter. Reports Meta's throttling errors, the largest count in any window, and
//! the share of the budget used. `cargo bench --bench limits_compliance`
//!
//! Last run: docs/benchmarks.md.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{Quota, RateLimiter};
use graphgate::config::Config;
use graphgate::sim::{self, Access, Sim, SimConfig, SimToken};
use tokio::net::TcpListener;
use tokio::time::Instant;

const N: u32 = 20;
const WINDOW: Duration = Duration::from_millis(1000);
const WINDOWS: u32 = 20;
const TOKEN: &str = "bench-system-token";
const KEY: &str = "bench-client-key-0001";
const WABA: &str = sim::seed::WABA_ID;

#[derive(Clone, Copy, Debug)]
enum Pattern {
    Steady,
    Bursty,
    Edge,
    Concurrent,
}

#[derive(Clone, Copy, Debug)]
enum Gate {
    Graphgate,
    Gcra,
    FixedWindow,
}

/// A local limiter in front of the simulator (for the two comparison gates).
enum Local {
    None,
    Gcra(governor::DefaultDirectRateLimiter),
    Fixed {
        start: Instant,
        state: Mutex<(u64, u32)>,
    },
}

impl Local {
    fn allow(&self) -> bool {
        match self {
            Local::None => true,
            Local::Gcra(l) => l.check().is_ok(),
            Local::Fixed { start, state } => {
                let idx = (start.elapsed().as_micros() / WINDOW.as_micros()) as u64;
                let mut s = state.lock().unwrap();
                if s.0 != idx {
                    *s = (idx, 0);
                }
                if s.1 < N {
                    s.1 += 1;
                    true
                } else {
                    false
                }
            }
        }
    }
}

struct Target {
    url: String,
    auth: String,
    local: Local,
    client: reqwest::Client,
    sent: AtomicU64,
}

impl Target {
    /// One call: refused locally (false) or sent (true).
    async fn call(&self) -> bool {
        if !self.local.allow() {
            return false;
        }
        match self
            .client
            .get(&self.url)
            .bearer_auth(&self.auth)
            .send()
            .await
        {
            Ok(r) => {
                let local_refusal =
                    r.status() == 429 && r.headers().contains_key("x-graphgate-error");
                let _ = r.bytes().await;
                if !local_refusal {
                    self.sent.fetch_add(1, Ordering::Relaxed);
                }
                !local_refusal
            }
            Err(_) => false,
        }
    }
}

async fn start_sim() -> (Sim, String) {
    let sim = Sim::new(SimConfig {
        window: WINDOW,
        waba_limit: N,
        active_waba_limit: N,
        tokens: vec![SimToken {
            token: TOKEN.into(),
            app_id: "1000000000000001".into(),
            app_secret: None,
            access: Access::All,
        }],
        ..SimConfig::default()
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(sim::serve(l, sim.clone(), std::future::pending()));
    (sim, url)
}

async fn start_proxy(upstream: &str) -> String {
    let env = HashMap::from([("T".to_string(), TOKEN.to_string())]);
    let key = graphgate::config::key_digest(KEY)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let text = format!(
        "[server]\naccess_log = false\nadmin_listen = \"off\"\n[cache]\nenabled = false\n[upstream]\nurl = \"{upstream}\"\n[limits]\nwindow = \"{}ms\"\nwaba_active = {N}\n\
         [[app]]\nname = \"a\"\nid = \"1000000000000001\"\ntoken_env = \"T\"\n[[app.waba]]\nid = \"{WABA}\"\nactive = true\n\
         [[client]]\nname = \"bench\"\nkey_sha256 = \"{key}\"\n",
        WINDOW.as_millis()
    );
    let config = Config::from_toml(&text, "bench", std::path::Path::new("."), &env).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(graphgate::run(l, config, std::future::pending()));
    url
}

async fn drive(target: Arc<Target>, pattern: Pattern, start: Instant, end: Instant) {
    let mut rng: u64 = 0x2545F4914F6CDD1D;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let burst = |t: Arc<Target>| async move {
        let calls: Vec<_> = (0..N)
            .map(|_| {
                tokio::spawn({
                    let t = t.clone();
                    async move { t.call().await }
                })
            })
            .collect();
        for c in calls {
            let _ = c.await;
        }
    };
    match pattern {
        Pattern::Steady => {
            // Twice the budget, evenly spread.
            let every = WINDOW / (2 * N);
            while Instant::now() < end {
                let t = target.clone();
                tokio::spawn(async move { t.call().await });
                tokio::time::sleep(every).await;
            }
        }
        Pattern::Bursty => {
            while Instant::now() < end {
                tokio::spawn(burst(target.clone()));
                let gap = WINDOW.as_millis() as u64 * (30 + rand() % 60) / 100;
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
        }
        Pattern::Edge => {
            // A burst just before and just after every window boundary (of the limiter's clock).
            for k in 1..=WINDOWS {
                for at in [k * 1000 - 20, k * 1000 + 20] {
                    let when =
                        start + Duration::from_millis(at as u64 * WINDOW.as_millis() as u64 / 1000);
                    if when >= end {
                        break;
                    }
                    tokio::time::sleep_until(when).await;
                    tokio::spawn(burst(target.clone()));
                }
            }
        }
        Pattern::Concurrent => {
            let workers: Vec<_> = (0..32)
                .map(|_| {
                    let t = target.clone();
                    tokio::spawn(async move {
                        while Instant::now() < end {
                            if !t.call().await {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.await;
            }
        }
    }
}

struct Row {
    gate: Gate,
    pattern: Pattern,
    sent: u64,
    throttled: u64,
    max_in_window: u64,
    utilisation: f64,
}

async fn run(gate: Gate, pattern: Pattern) -> Row {
    let (sim, sim_url) = start_sim().await;
    let (url, auth, local) = match gate {
        Gate::Graphgate => (start_proxy(&sim_url).await, KEY.to_string(), Local::None),
        Gate::Gcra => (
            sim_url.clone(),
            TOKEN.to_string(),
            Local::Gcra(RateLimiter::direct(
                Quota::with_period(WINDOW / N)
                    .unwrap()
                    .allow_burst(NonZeroU32::new(N).unwrap()),
            )),
        ),
        Gate::FixedWindow => (
            sim_url.clone(),
            TOKEN.to_string(),
            Local::Fixed {
                start: Instant::now(),
                state: Mutex::new((0, 0)),
            },
        ),
    };
    let target = Arc::new(Target {
        url: format!("{url}/v19.0/{WABA}/message_templates?limit=1"),
        auth,
        local,
        client: reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap(),
        sent: AtomicU64::new(0),
    });
    let start = Instant::now();
    let end = start + WINDOW * WINDOWS;
    drive(target.clone(), pattern, start, end).await;
    tokio::time::sleep_until(end + Duration::from_millis(300)).await;
    let st = serde_json::to_value(sim.stats()).unwrap();
    let b = st["buckets"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .cloned()
        .unwrap_or_default();
    let calls = b["calls"].as_u64().unwrap_or(0);
    let throttled = b["throttled"].as_u64().unwrap_or(0);
    Row {
        gate,
        pattern,
        sent: target.sent.load(Ordering::Relaxed),
        throttled,
        max_in_window: b["max_in_window"].as_u64().unwrap_or(0),
        utilisation: (calls - throttled) as f64 / (N * WINDOWS) as f64 * 100.0,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probe with this
    }
    println!("limits compliance: N = {N} per {WINDOW:?} window, {WINDOWS} windows per run, all runs in parallel");
    let mut runs = Vec::new();
    for pattern in [
        Pattern::Steady,
        Pattern::Bursty,
        Pattern::Edge,
        Pattern::Concurrent,
    ] {
        for gate in [Gate::Graphgate, Gate::Gcra, Gate::FixedWindow] {
            runs.push(tokio::spawn(run(gate, pattern)));
        }
    }
    println!("| pattern | limiter | calls sent | Meta throttled | largest count in any window (N = {N}) | budget used |");
    println!("|---|---|---|---|---|---|");
    for r in runs {
        let r = r.await.unwrap();
        println!(
            "| {:?} | {:?} | {} | {} | {} | {:.1}% |",
            r.pattern, r.gate, r.sent, r.throttled, r.max_in_window, r.utilisation
        );
    }
}
