//! Decision cost of the limiter: one admission plus its completion, over 10,000 buckets, with two
//! threads contending; and the memory of one full bucket at N = 5000.
//!
//! Last run (2026-11-25, this 2-core VM): see docs/benchmarks.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use graphgate::clock::SystemClock;
use graphgate::config::Config;
use graphgate::limits::{BucketKey, Limiter, Scope};

const BUCKETS: usize = 10_000;

fn limiter() -> Arc<Limiter> {
    let env = HashMap::from([("T".to_string(), "token".to_string())]);
    let key = graphgate::config::key_digest("bench-client-key-0001")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let text = format!(
        "[limits]\nwaba_default = 5000\n[[app]]\nname = \"a\"\nid = \"1\"\ntoken_env = \"T\"\n[[client]]\nname = \"c\"\nkey_sha256 = \"{key}\"\n"
    );
    let config = Config::from_toml(&text, "bench", std::path::Path::new("."), &env).unwrap();
    Arc::new(Limiter::new(&config, SystemClock::shared()))
}

fn keys() -> Vec<Vec<(BucketKey, u32)>> {
    (0..BUCKETS)
        .map(|i| {
            vec![(
                BucketKey {
                    app: 0,
                    scope: Scope::Waba(format!("{}", 100_000 + i)),
                },
                1,
            )]
        })
        .collect()
}

fn decision_cost(c: &mut Criterion) {
    let keys = Arc::new(keys());
    let mut group = c.benchmark_group("limiter");
    group.bench_function("admit+complete, 10k buckets, 1 thread", |b| {
        let l = limiter();
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % BUCKETS;
            let mut p = l.try_admit(&keys[i], false).unwrap();
            p.sent();
            p.finish();
        })
    });
    group.bench_function("admit+complete, 10k buckets, 2 threads contending", |b| {
        b.iter_custom(|iters| {
            // A fresh limiter per sample keeps every bucket far from its limit of 5000.
            let l = limiter();
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (l, keys) = (l.clone(), keys.clone());
                    s.spawn(move || {
                        let mut i = t * 4999;
                        for _ in 0..iters / 2 {
                            i = (i + 7919) % BUCKETS;
                            let mut p = l.try_admit(&keys[i], false).unwrap();
                            p.sent();
                            p.finish();
                        }
                    });
                }
            });
            // Two threads ran in parallel: wall time per admission across both.
            start.elapsed()
        })
    });
    group.finish();

    // Memory of one bucket holding a full window at N = 5000.
    let l = limiter();
    let key = vec![(
        BucketKey {
            app: 0,
            scope: Scope::Waba("1".into()),
        },
        1,
    )];
    for _ in 0..5000 {
        let mut p = l.try_admit(&key, false).unwrap();
        p.sent();
        p.finish();
    }
    let bytes = l.bucket_bytes(&key[0].0).unwrap();
    println!("memory: one full bucket at N = 5000 holds {bytes} bytes ({:.1} bytes per call in the window)", bytes as f64 / 5000.0);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = decision_cost
}
criterion_main!(benches);
