//! Exact rolling-window call counting per (app, WABA) and per (app, credit line), as Meta's BUC table says.
//! Owns only timestamps and counters; never decides which calls are counted (see `routes`) and never sleeps.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// What a bucket counts against: one WABA, or the app's credit line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    Waba(String),
    CreditLine,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BucketKey {
    pub app: String,
    pub scope: Scope,
}

impl BucketKey {
    /// `<app>/<waba id>` or `<app>/credit_line`, the key used in stats.
    pub(crate) fn label(&self) -> String {
        match &self.scope {
            Scope::Waba(w) => format!("{}/{w}", self.app),
            Scope::CreditLine => format!("{}/credit_line", self.app),
        }
    }

    /// The object id Meta keys `X-Business-Use-Case-Usage` by.
    pub(crate) fn usage_id(&self) -> &str {
        match &self.scope {
            Scope::Waba(w) => w,
            Scope::CreditLine => &self.app,
        }
    }
}

/// The verdict on one call, with what the usage headers need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Admission {
    pub allowed: bool,
    /// Calls in the window including this one.
    pub count: u64,
    pub limit: u32,
    /// Whole minutes (rounded up) until the oldest call in the window expires; 0 when allowed.
    pub regain_minutes: u64,
}

impl Admission {
    /// Integer percent of the limit used including this call, capped at 100 (floor, like a whole-number gauge).
    pub(crate) fn percent(&self) -> u64 {
        (self.count * 100 / u64::from(self.limit.max(1))).min(100)
    }
}

#[derive(Debug, Default)]
struct Bucket {
    /// Arrival times of every recorded call (allowed or throttled) still inside the window, oldest first.
    times: VecDeque<Instant>,
    calls: u64,
    throttled: u64,
    max_in_window: u64,
    limit: u32,
}

/// Counters for one bucket as reported by stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BucketSnapshot {
    pub label: String,
    pub calls: u64,
    pub throttled: u64,
    pub max_in_window: u64,
    pub in_window: u64,
    pub limit: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Limits {
    buckets: HashMap<BucketKey, Bucket>,
}

impl Limits {
    /// Records a call arriving at `now` and says whether it is allowed. The call sees the number of earlier
    /// calls with timestamp > now - window; at or over `limit` it is throttled. Throttled calls are recorded
    /// too: Meta says continuing to call keeps raising the count.
    pub(crate) fn admit(
        &mut self,
        key: &BucketKey,
        limit: u32,
        now: Instant,
        window: Duration,
    ) -> Admission {
        let b = self.buckets.entry(key.clone()).or_default();
        // A call exactly `window` old has left the window (strictly greater than now - window stays).
        while b
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            b.times.pop_front();
        }
        let before = b.times.len() as u64;
        let allowed = before < u64::from(limit);
        let regain_minutes = if allowed {
            0
        } else {
            let oldest = b.times.front().copied().unwrap_or(now);
            let left = (oldest + window).saturating_duration_since(now);
            u64::try_from(left.as_nanos().div_ceil(60_000_000_000)).unwrap_or(u64::MAX)
        };
        b.times.push_back(now);
        b.calls += 1;
        b.limit = limit;
        if !allowed {
            b.throttled += 1;
        }
        b.max_in_window = b.max_in_window.max(before + 1);
        Admission {
            allowed,
            count: before + 1,
            limit,
            regain_minutes,
        }
    }

    /// Every bucket's counters at `now`, sorted by label. `limit_of` gives the bucket's current limit.
    pub(crate) fn snapshot(
        &self,
        now: Instant,
        window: Duration,
        limit_of: impl Fn(&BucketKey) -> u32,
    ) -> Vec<BucketSnapshot> {
        let mut out: Vec<_> = self
            .buckets
            .iter()
            .map(|(k, b)| BucketSnapshot {
                label: k.label(),
                calls: b.calls,
                throttled: b.throttled,
                max_in_window: b.max_in_window,
                in_window: b
                    .times
                    .iter()
                    .filter(|t| now.saturating_duration_since(**t) < window)
                    .count() as u64,
                limit: limit_of(k),
            })
            .collect();
        out.sort_by(|a, b| a.label.cmp(&b.label));
        out
    }

    pub(crate) fn clear(&mut self) {
        self.buckets.clear();
    }
}

#[cfg(test)]
mod unit {
    // Instants are plain values here: the limiter never reads the clock, so no paused runtime is needed.
    use super::*;

    fn key() -> BucketKey {
        BucketKey {
            app: "1".into(),
            scope: Scope::Waba("w".into()),
        }
    }

    // Limit 5 in 10s: five calls pass, the sixth is throttled, and a call exactly one window after the
    // first sees that call gone.
    #[test]
    fn window_admits_limit_then_throttles_until_oldest_call_expires() {
        let mut l = Limits::default();
        let w = Duration::from_secs(10);
        let t0 = Instant::now();
        for i in 0..5 {
            let a = l.admit(&key(), 5, t0 + Duration::from_secs(i), w);
            assert!(a.allowed, "call {i}");
            assert_eq!(a.count, i + 1);
        }
        let a = l.admit(&key(), 5, t0 + Duration::from_secs(5), w);
        assert!(!a.allowed);
        assert_eq!((a.count, a.percent(), a.regain_minutes), (6, 100, 1));
        // At t0+10s the first call (t0) has left; four earlier calls (t1..t4) plus the throttled one (t5)
        // remain, so this call sees 5 and is still throttled: throttled calls count.
        let a = l.admit(&key(), 5, t0 + Duration::from_secs(10), w);
        assert!(!a.allowed);
        // At t0+16s everything up to t6 has expired; only the throttled call at t10 remains -> allowed.
        let a = l.admit(&key(), 5, t0 + Duration::from_secs(16), w);
        assert!(a.allowed);
        assert_eq!(a.count, 2);
        let s = l.snapshot(t0 + Duration::from_secs(16), w, |_| 5);
        assert_eq!(s[0].calls, 8);
        assert_eq!(s[0].throttled, 2);
        assert_eq!(s[0].max_in_window, 6);
        assert_eq!(s[0].in_window, 2);
    }

    // The boundary is strict: a call exactly `window` old no longer counts.
    #[test]
    fn call_exactly_one_window_old_has_expired() {
        let mut l = Limits::default();
        let w = Duration::from_secs(60);
        let t0 = Instant::now();
        assert!(l.admit(&key(), 1, t0, w).allowed);
        assert!(
            !l.admit(&key(), 1, t0 + w - Duration::from_nanos(1), w)
                .allowed
        );
        // The throttled call at t0+w-1ns is still in the window at t0+w.
        assert!(!l.admit(&key(), 1, t0 + w, w).allowed);
        assert!(l.admit(&key(), 1, t0 + w * 3, w).allowed);
    }

    // Regain time rounds partial minutes up.
    #[test]
    fn regain_minutes_round_up() {
        let w = Duration::from_secs(3600);
        let t0 = Instant::now();
        for (after, minutes) in [
            (60 * 30 + 1, 30),
            (60 * 30, 30),
            (60 * 30 - 1, 31),
            (3599, 1),
        ] {
            let mut l = Limits::default();
            l.admit(&key(), 1, t0, w);
            let a = l.admit(&key(), 1, t0 + Duration::from_secs(after), w);
            assert_eq!(a.regain_minutes, minutes, "after {after}s");
        }
    }
}
