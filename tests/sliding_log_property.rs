//! Property test of the limiter's sliding log (#14), through its public API only: for any
//! sequence of clock steps, admissions and settles (finished, released before sending, dropped),
//! no window of `limits.window` ever holds more than N calls that were sent to Meta.

mod support;

use std::sync::Arc;
use std::time::Duration;

use graphgate::clock::ManualClock;
use graphgate::limits::{BucketKey, Limiter, Permit, Scope};
use proptest::prelude::*;
use support::{TestProxy, WABA};

const N: u32 = 3;
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Event {
    /// Move the clock forward by this many milliseconds.
    Advance(u64),
    /// Ask for `n` slots at once (a batch or `?ids=` call).
    Admit(u32),
    /// The oldest held call was sent and its answer came back.
    Finish,
    /// The oldest held call never left graphgate (connect refused).
    Release,
    /// The oldest held call was sent and its permit dropped mid-flight (caller gone).
    Drop,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0u64..4_000).prop_map(Event::Advance),
        (1u32..=2).prop_map(Event::Admit),
        Just(Event::Finish),
        Just(Event::Release),
        Just(Event::Drop),
    ]
}

fn limiter(clock: Arc<ManualClock>) -> Arc<Limiter> {
    let config = TestProxy::builder("http://127.0.0.1:9")
        .set("limits.window", "10s")
        .set("limits.waba_default", N as i64)
        .set("limits.waba_active", N as i64)
        .config();
    Arc::new(Limiter::new(&config, clock))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    // Calls sent to Meta, by the time they were admitted: every window (t - W, t] holds at most N,
    // whatever order calls are admitted, finished, released or dropped in.
    #[test]
    fn the_sliding_log_never_admits_more_than_n_in_any_window(
        events in proptest::collection::vec(event(), 1..120)
    ) {
        let start = 1_000_000_000u64;
        let clock = ManualClock::new(start);
        let l = limiter(clock.clone());
        let key = BucketKey { app: 0, scope: Scope::Waba(WABA.to_string()) };
        let mut now_ms = 0u64;
        // Held permits with their admission time and slot count, oldest first.
        let mut held: Vec<(Permit, u64, u32)> = Vec::new();
        // Admission times of calls that were (or may have been) sent, one entry per slot.
        let mut sent: Vec<u64> = Vec::new();
        for e in events {
            match e {
                Event::Advance(ms) => {
                    now_ms += ms;
                    clock.advance(Duration::from_millis(ms));
                }
                Event::Admit(n) => {
                    if let Ok(p) = l.try_admit(&[(key.clone(), n)], false) {
                        held.push((p, now_ms, n));
                    }
                }
                Event::Finish | Event::Drop if !held.is_empty() => {
                    let (mut p, at, n) = held.remove(0);
                    p.sent();
                    sent.extend(std::iter::repeat_n(at, n as usize));
                    if matches!(e, Event::Finish) {
                        p.finish();
                    } else {
                        drop(p);
                    }
                }
                Event::Release if !held.is_empty() => {
                    let (p, _, _) = held.remove(0);
                    p.release();
                }
                Event::Finish | Event::Drop | Event::Release => {}
            }
        }
        // Calls still held may yet be sent: they count too.
        for (_, at, n) in &held {
            sent.extend(std::iter::repeat_n(*at, *n as usize));
        }
        sent.sort_unstable();
        let w = WINDOW.as_millis() as u64;
        for (i, &t) in sent.iter().enumerate() {
            let in_window = sent[..=i].iter().filter(|&&a| a + w > t).count()
                + sent[i + 1..].iter().filter(|&&a| a == t).count();
            prop_assert!(
                in_window as u32 <= N,
                "{in_window} calls admitted in the window ending at {t} ms: {sent:?}"
            );
        }
    }
}
