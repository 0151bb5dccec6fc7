//! Unit tests of the limiter through its facade: sliding logs, permits, wait mode, Meta's feedback,
//! learned facts, quotas and the state file, on a manual clock.

use super::*;
use crate::clock::{Clock, ManualClock};
use std::collections::HashMap as Env;
use std::sync::{Arc, Mutex};

const SEC: Micros = 1_000_000;

fn config(limits: &str, extra_client: &str) -> Config {
    let mut env = Env::new();
    env.insert("T".to_string(), "token".to_string());
    let key = hex::encode(crate::config::key_digest("client-key-0123456789"));
    let text = format!(
        r#"
[limits]
{limits}

[[app]]
name = "main"
id = "1"
token_env = "T"
[[app.waba]]
id = "100"
active = false
[[app.waba]]
id = "200"
active = "auto"

[[client]]
name = "c"
key_sha256 = "{key}"
{extra_client}
"#
    );
    Config::from_toml(&text, "t.toml", std::path::Path::new("."), &env).unwrap()
}

fn limiter(limits: &str) -> (Arc<Limiter>, Arc<ManualClock>) {
    let clock = ManualClock::new(1_000 * SEC);
    (
        Arc::new(Limiter::new(&config(limits, ""), clock.clone())),
        clock,
    )
}

fn waba(id: &str) -> Vec<(BucketKey, u32)> {
    vec![(
        BucketKey {
            app: 0,
            scope: Scope::Waba(id.into()),
        },
        1,
    )]
}

// N calls pass, call N+1 waits exactly until the oldest leaves the window, then passes.
#[test]
fn bucket_admits_n_then_refuses_until_the_oldest_call_expires() {
    let (l, clock) = limiter("window = \"10s\"\nwaba_default = 5");
    for _ in 0..5 {
        let mut p = l.try_admit(&waba("100"), false).unwrap();
        p.sent();
        p.finish();
        clock.advance(Duration::from_millis(100));
    }
    let r = l.try_admit(&waba("100"), false).unwrap_err();
    assert_eq!(r.reason, RefusalReason::Full);
    assert_eq!(r.limit, 5);
    // First call finished at t0; now is t0+0.5s; it expires at t0+10s.
    assert_eq!(r.retry_after, Duration::from_millis(9_500));
    clock.advance(Duration::from_millis(9_499));
    assert!(
        l.try_admit(&waba("100"), false).is_err(),
        "one microsecond early is still too early"
    );
    clock.advance(Duration::from_millis(1));
    assert!(
        l.try_admit(&waba("100"), false).is_ok(),
        "call N is admitted as soon as Meta would"
    );
}

// A call's place in the window is when its response came back, not when it was admitted.
#[test]
fn a_call_counts_from_its_completion_not_its_admission() {
    let (l, clock) = limiter("window = \"10s\"\nwaba_default = 1");
    let mut p = l.try_admit(&waba("100"), false).unwrap();
    p.sent();
    clock.advance(Duration::from_secs(4));
    assert!(
        l.try_admit(&waba("100"), false).is_err(),
        "in flight holds the slot"
    );
    p.finish();
    clock.advance(Duration::from_secs(9));
    assert!(
        l.try_admit(&waba("100"), false).is_err(),
        "13s after admission, 9s after completion"
    );
    clock.advance(Duration::from_secs(1));
    assert!(l.try_admit(&waba("100"), false).is_ok());
}

// Refused calls are never recorded: hammering a full bucket does not push its reset back.
#[test]
fn refusals_are_never_recorded() {
    let (l, clock) = limiter("window = \"10s\"\nwaba_default = 2");
    for _ in 0..2 {
        let mut p = l.try_admit(&waba("100"), false).unwrap();
        p.sent();
    }
    for _ in 0..1000 {
        assert!(l.try_admit(&waba("100"), false).is_err());
        clock.advance(Duration::from_millis(5));
    }
    clock.advance(Duration::from_secs(5));
    for _ in 0..2 {
        assert!(l.try_admit(&waba("100"), false).is_ok());
    }
}

// A permit released before the request left (connection refused) gives its slot back; one
// dropped after sending counts.
#[test]
fn unsent_permits_free_their_slot_and_sent_ones_count() {
    let (l, _clock) = limiter("window = \"10s\"\nwaba_default = 1");
    let p = l.try_admit(&waba("100"), false).unwrap();
    p.release();
    let mut p = l.try_admit(&waba("100"), false).unwrap();
    p.sent();
    drop(p);
    assert!(l.try_admit(&waba("100"), false).is_err());
}

// Many simulated windows of bursty, edge-of-window traffic with random latencies: no window of the
// recorded log ever holds more than N, and demand above N uses all of N.
#[test]
fn no_window_ever_holds_more_than_n() {
    let (l, clock) = limiter("window = \"60s\"\nwaba_default = 50");
    let mut rng: u64 = 0x9E3779B97F4A7C15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut completions: Vec<Micros> = Vec::new();
    let mut pending: Vec<(Micros, Permit)> = Vec::new();
    let start = clock.now();
    for step in 0..60 * 40 {
        // Bursts around window edges, quiet stretches elsewhere.
        let burst = if step % 60 < 2 || step % 60 > 57 {
            next() % 40
        } else {
            1 + next() % 3
        };
        for _ in 0..burst {
            if let Ok(mut p) = l.try_admit(&waba("100"), false) {
                p.sent();
                let done_at = clock.now() + next() % (SEC / 2);
                pending.push((done_at, p));
            }
        }
        clock.advance(Duration::from_millis(500));
        let now = clock.now();
        let (finished, still): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(t, _)| *t <= now);
        pending = still;
        for (_, p) in finished {
            completions.push(clock.now());
            p.finish();
        }
        clock.advance(Duration::from_millis(500));
    }
    completions.sort();
    let window = 60 * SEC;
    let mut max = 0;
    let mut lo = 0;
    for hi in 0..completions.len() {
        while completions[hi] - completions[lo] >= window {
            lo += 1;
        }
        max = max.max(hi - lo + 1);
    }
    assert!(max <= 50, "largest window held {max}");
    let windows = (clock.now() - start) / window;
    let used = completions.len() as u64;
    assert!(
        used >= windows * 50 * 95 / 100,
        "used {used} of {} possible",
        windows * 50
    );
}

// 1,000 concurrent callers on a bucket of 200: exactly 200 get in.
#[test]
fn concurrent_callers_never_overfill_a_bucket() {
    let (l, _clock) = limiter("waba_default = 200");
    let admitted = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..125 {
                    if let Ok(mut p) = l.try_admit(&waba("100"), false) {
                        p.sent();
                        std::mem::forget(p);
                        admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 200);
}

// A batch takes its share of every bucket or nothing at all.
#[test]
fn batches_are_all_or_nothing_across_buckets() {
    let (l, _clock) = limiter("waba_default = 3");
    let mut p = l.try_admit(&waba("200"), false).unwrap();
    p.sent();
    let batch = vec![
        (
            BucketKey {
                app: 0,
                scope: Scope::Waba("100".into()),
            },
            2,
        ),
        (
            BucketKey {
                app: 0,
                scope: Scope::Waba("200".into()),
            },
            3,
        ),
    ];
    assert!(
        l.try_admit(&batch, false).is_err(),
        "200 has room for 2, not 3"
    );
    let snap = l.snapshot();
    assert!(
        snap.iter().all(|b| b.scope != "waba:100" || b.used == 0),
        "nothing was taken from 100"
    );
    let ok = vec![(
        BucketKey {
            app: 0,
            scope: Scope::Waba("100".into()),
        },
        3,
    )];
    assert!(l.try_admit(&ok, false).is_ok());
}

// The reserved share is for `reserve = "high"` clients only.
#[test]
fn the_reserve_is_kept_for_high_priority_clients() {
    let (l, _clock) = limiter("waba_default = 10\nreserve_percent = 20");
    for _ in 0..8 {
        l.try_admit(&waba("100"), false).unwrap().sent();
    }
    assert!(l.try_admit(&waba("100"), false).is_err());
    assert!(l.try_admit(&waba("100"), true).is_ok());
}

// Meta reporting more usage than we counted raises our count; 100% blocks until regain time.
#[test]
fn metas_usage_report_raises_the_count_and_100_percent_blocks() {
    let (l, clock) = limiter("window = \"1h\"\nwaba_default = 200");
    let mut p = l.try_admit(&waba("100"), false).unwrap();
    p.sent();
    p.finish();
    let hdr = |pct: u32, regain: u32| {
        format!(
            r#"{{"100":[{{"type":"whatsapp_business_management","call_count":{pct},"total_cputime":1,"total_time":1,"estimated_time_to_regain_access":{regain}}}]}}"#
        )
    };
    l.observe_usage(0, Some(&hdr(0, 0)), None);
    assert_eq!(
        l.snapshot()[0].used,
        1,
        "0% of 200 is consistent with our one call"
    );
    l.observe_usage(0, Some(&hdr(50, 0)), None);
    assert_eq!(
        l.snapshot()[0].used,
        100,
        "50% of 200 is at least 100 calls"
    );
    l.observe_usage(0, Some(&hdr(100, 3)), None);
    let r = l.try_admit(&waba("100"), false).unwrap_err();
    assert_eq!(r.reason, RefusalReason::Blocked);
    assert_eq!(r.retry_after, Duration::from_secs(180));
    clock.advance(Duration::from_secs(180));
    l.try_admit(&waba("100"), false)
        .expect("Meta said access returns now")
        .sent();
    assert!(
        l.try_admit(&waba("100"), false).is_err(),
        "but the bucket is still nearly full"
    );
    assert_eq!(l.snapshot()[0].reported.as_ref().unwrap().call_count, 100);
}

// An app-wide throttling code stops every bucket of the app.
#[test]
fn app_level_throttling_blocks_every_bucket_of_the_app() {
    let (l, clock) = limiter("throttle_block = \"30s\"");
    l.observe_throttle(&waba("100")[0].0, 4, None);
    assert_eq!(
        l.try_admit(&waba("200"), false).unwrap_err().reason,
        RefusalReason::Blocked
    );
    clock.advance(Duration::from_secs(30));
    assert!(l.try_admit(&waba("200"), false).is_ok());
    l.observe_throttle(&waba("100")[0].0, 80008, Some(Duration::from_secs(120)));
    assert!(l.try_admit(&waba("100"), false).is_err());
    assert!(
        l.try_admit(&waba("200"), false).is_ok(),
        "80008 blocks one WABA"
    );
}

// A learned registered phone number moves an auto WABA from 200 to 5000; fixed ones never move.
#[test]
fn learned_activity_changes_the_limit_of_auto_wabas_only() {
    let (l, _clock) = limiter("");
    let key200 = BucketKey {
        app: 0,
        scope: Scope::Waba("200".into()),
    };
    let key100 = BucketKey {
        app: 0,
        scope: Scope::Waba("100".into()),
    };
    assert_eq!(l.limit_of(&key200), Some(200));
    l.learn_active(0, "200", true);
    assert_eq!(l.limit_of(&key200), Some(5000));
    l.learn_active(0, "100", true);
    assert_eq!(
        l.limit_of(&key100),
        Some(200),
        "active = false is fixed by config"
    );
    assert_eq!(l.auto_wabas(), vec![(0, "200".to_string())]);
}

// State written at shutdown is restored at start-up: a full bucket stays full across a restart.
#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.json");
    let limits = format!("waba_default = 3\nstate_file = \"{}\"", file.display());
    let clock = ManualClock::new(1_000 * SEC);
    let l = Arc::new(Limiter::new(&config(&limits, ""), clock.clone()));
    for _ in 0..3 {
        l.try_admit(&waba("100"), false).unwrap().sent();
    }
    l.learn_allocation_config("777");
    l.learn_active(0, "200", true);
    l.save().unwrap();
    clock.advance(Duration::from_secs(60));
    let l2 = Arc::new(Limiter::new(&config(&limits, ""), clock.clone()));
    assert_eq!(l2.restore().unwrap(), 3);
    assert!(l2.try_admit(&waba("100"), false).is_err());
    assert!(l2.with_known(|k| k.allocation_configs.contains("777")));
    assert_eq!(
        l2.limit_of(&BucketKey {
            app: 0,
            scope: Scope::Waba("200".into())
        }),
        Some(5000)
    );
    clock.advance(Duration::from_secs(3600));
    let l3 = Arc::new(Limiter::new(&config(&limits, ""), clock.clone()));
    l3.restore().unwrap();
    assert!(
        l3.try_admit(&waba("100"), false).is_ok(),
        "entries older than the window are gone"
    );
}

// Calls outside Meta's table are unlimited unless `other` is configured.
#[test]
fn other_calls_are_limited_only_when_configured() {
    let other = vec![(
        BucketKey {
            app: 0,
            scope: Scope::Other,
        },
        1,
    )];
    let (l, _c) = limiter("");
    for _ in 0..1000 {
        l.try_admit(&other, false).unwrap().sent();
    }
    let (l, _c) = limiter("other = 2");
    l.try_admit(&other, false).unwrap().sent();
    l.try_admit(&other, false).unwrap().sent();
    assert!(l.try_admit(&other, false).is_err());
}

// Wait mode serves waiters in arrival order and gives up at the caller's deadline.
#[tokio::test]
async fn wait_mode_is_fifo_and_bounded() {
    let clock: SharedClock = crate::clock::SystemClock::shared();
    let l = Arc::new(Limiter::new(
        &config(
            "window = \"300ms\"\nwaba_default = 1\non_limit = \"wait\"",
            "",
        ),
        clock,
    ));
    l.try_admit(&waba("100"), false).unwrap().finish();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (l, order) = (l.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let mut p = l
                .admit(&waba("100"), false, Duration::from_secs(5))
                .await
                .unwrap();
            order.lock().unwrap().push(i);
            p.sent();
            p.finish();
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
    let started = std::time::Instant::now();
    let r = l
        .admit(&waba("100"), false, Duration::from_millis(50))
        .await;
    assert!(r.is_err(), "the next slot frees after the caller's 50 ms");
    assert!(started.elapsed() < Duration::from_millis(200));
}

// A client's own `rate` quota (governor) refuses bursts above it.
#[test]
fn client_rate_quota_refuses_bursts() {
    let clock = ManualClock::new(SEC);
    let l = Limiter::new(&config("", "rate = \"3/s\""), clock);
    for _ in 0..3 {
        assert!(l.check_client_quota(Some(ClientId(0)), 0).is_ok());
    }
    let r = l.check_client_quota(Some(ClientId(0)), 0).unwrap_err();
    assert_eq!(r.reason, RefusalReason::ClientQuota);
    assert!(r.retry_after <= Duration::from_millis(334));
}

#[test]
fn registered_numbers_and_allocation_ids_are_read_from_responses() {
    let v: serde_json::Value = serde_json::json!({"data":[{"id":"1","platform_type":"NOT_APPLICABLE"},{"id":"2","platform_type":"CLOUD_API"}]});
    assert_eq!(registered_in(&v), Some(true));
    let v = serde_json::json!({"data":[{"id":"1","platform_type":"NOT_APPLICABLE"}]});
    assert_eq!(registered_in(&v), Some(false));
    assert_eq!(
        registered_in(&serde_json::json!({"data":[{"id":"1"}]})),
        None
    );
    assert_eq!(registered_in(&serde_json::json!({"data":[]})), Some(false));
    let ids =
        allocation_ids_in(&serde_json::json!({"allocation_config_id":"9","data":[{"id":"8"}]}));
    assert!(ids.contains("9") && ids.contains("8"));
}

#[test]
fn throttling_codes_are_recognised() {
    for c in [4, 17, 32, 613, 80007, 80008, 130429] {
        assert!(is_throttling_code(c));
    }
    for c in [1, 2, 100, 190, 200] {
        assert!(!is_throttling_code(c));
    }
}

// Buckets that hold nothing are forgotten; busy, blocked or in-flight ones stay.
#[test]
fn sweeping_forgets_only_idle_buckets() {
    let (l, clock) = limiter("window = \"10s\"");
    for i in 0..100 {
        let mut p = l.try_admit(&waba(&format!("{}", 1000 + i)), false).unwrap();
        p.sent();
        p.finish();
    }
    let mut held = l.try_admit(&waba("100"), false).unwrap();
    held.sent();
    l.observe_throttle(&waba("200")[0].0, 80008, Some(Duration::from_secs(60)));
    assert_eq!(l.sweep(), 0, "everything is still in its window");
    clock.advance(Duration::from_secs(11));
    assert_eq!(l.sweep(), 100, "the 100 idle buckets go");
    assert_eq!(
        l.snapshot().len(),
        2,
        "the in-flight and the blocked bucket stay"
    );
    held.finish();
}

// With max_unknown_buckets = 2 and waba_default = 3: two made-up ids own a bucket; every further
// one shares the overflow, which admits 3 in all; a configured WABA is never moved; once the
// overflow and the two buckets are idle and swept, a new id owns a bucket again.
#[test]
fn ids_no_config_names_share_one_overflow_bucket_beyond_the_cap() {
    let (l, clock) = limiter("window = \"10s\"\nwaba_default = 3\nmax_unknown_buckets = 2");
    let call = |id: &str| {
        l.try_admit(&waba(id), false).map(|mut p| {
            let scope = p.budgets[0].scope.label();
            p.sent();
            p.finish();
            scope
        })
    };
    assert_eq!(call("9001").unwrap(), "waba:9001");
    assert_eq!(call("9002").unwrap(), "waba:9002");
    let overflow: Vec<_> = (0..5).map(|i| call(&format!("{}", 9100 + i))).collect();
    assert_eq!(
        overflow.iter().filter(|r| r.is_ok()).count(),
        3,
        "{overflow:?}"
    );
    assert_eq!(overflow[0].as_ref().unwrap(), "waba:*");
    assert_eq!(overflow[4].as_ref().unwrap_err().scope.label(), "waba:*");
    assert_eq!(
        call("9001").unwrap(),
        "waba:9001",
        "an id keeps its own bucket"
    );
    assert_eq!(
        call("100").unwrap(),
        "waba:100",
        "a configured WABA is its own"
    );
    assert_eq!(l.snapshot().len(), 4, "two ids, the overflow, WABA 100");
    clock.advance(Duration::from_secs(11));
    assert_eq!(l.sweep(), 4);
    assert_eq!(call("9200").unwrap(), "waba:9200");
}
