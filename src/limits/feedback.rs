//! Meta's own view of the buckets: its usage headers (`X-Business-Use-Case-Usage`, `X-App-Usage`),
//! its throttling error codes, and the blocks they cause, per bucket and app-wide ([`Feedback`]).
//!
//! It owns parsing those headers, the arithmetic that turns Meta's percentage into a call count,
//! and the app-wide state. It must never lower a count (Meta's figures only raise ours), never
//! block longer than Meta's regain time (or `throttle_block` when Meta gives none), and never talk
//! to Redis itself: the limiter passes what it returns on to the other replicas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::log::CallLog;
use super::types::Reported;
use crate::clock::{micros, Micros};
use crate::sync::MutexExt;

/// App-wide feedback, per app index.
pub(super) struct Feedback {
    /// How long a throttling error blocks when Meta does not say.
    throttle_block: Micros,
    /// App-wide blocks (Meta's code 4 and 17), per app index.
    app_blocked_until: Mutex<Vec<Micros>>,
    /// The latest `X-App-Usage`, for the admin view and metrics only.
    app_reported: Mutex<Vec<Option<Reported>>>,
    /// The usage headers last parsed, per app.
    last_usage: Mutex<Vec<(Option<String>, Option<String>)>>,
}

impl Feedback {
    pub(super) fn new(apps: usize, throttle_block: Duration) -> Feedback {
        Feedback {
            throttle_block: micros(throttle_block),
            app_blocked_until: Mutex::new(vec![0; apps]),
            app_reported: Mutex::new(vec![None; apps]),
            last_usage: Mutex::new(vec![(None, None); apps]),
        }
    }

    /// Whether `app`'s usage headers differ from the last ones seen, remembering these. Meta
    /// repeats the same figures across many answers; they are parsed only when they change.
    pub(super) fn changed(
        &self,
        app: usize,
        bucket_usage: Option<&str>,
        app_usage: Option<&str>,
    ) -> bool {
        let mut last = self.last_usage.lock_unpoisoned();
        let Some(slot) = last.get_mut(app) else {
            return false;
        };
        if slot.0.as_deref() == bucket_usage && slot.1.as_deref() == app_usage {
            return false;
        }
        *slot = (
            bucket_usage.map(str::to_string),
            app_usage.map(str::to_string),
        );
        true
    }

    /// Until when `app` is blocked app-wide (0 or a past time when it is not).
    pub(super) fn app_block(&self, app: usize) -> Micros {
        self.app_blocked_until
            .lock_unpoisoned()
            .get(app)
            .copied()
            .unwrap_or(0)
    }

    /// Every app's block, by app index.
    pub(super) fn app_blocks(&self) -> Vec<Micros> {
        self.app_blocked_until.lock_unpoisoned().clone()
    }

    /// Blocks `app` until `until`, unless it already is for longer.
    pub(super) fn block_app(&self, app: usize, until: Micros) {
        if let Some(slot) = self.app_blocked_until.lock_unpoisoned().get_mut(app) {
            *slot = (*slot).max(until);
        }
    }

    pub(super) fn set_app_reported(&self, app: usize, rep: Reported) {
        if let Some(slot) = self.app_reported.lock_unpoisoned().get_mut(app) {
            *slot = Some(rep);
        }
    }

    /// Meta's latest `X-App-Usage`, by app index.
    pub(super) fn app_reported(&self) -> Vec<Option<Reported>> {
        self.app_reported.lock_unpoisoned().clone()
    }

    /// When a call throttled at `now` may be retried: after Meta's regain time when it gave one,
    /// else after `throttle_block`.
    pub(super) fn throttled_until(&self, now: Micros, regain: Option<Duration>) -> Micros {
        now + regain
            .map(micros)
            .filter(|&m| m > 0)
            .unwrap_or(self.throttle_block)
    }
}

/// Object ids a throttling error code means "stop". See docs/limits.md.
pub fn is_throttling_code(code: u64) -> bool {
    matches!(
        code,
        4 | 17 | 32 | 613 | 80000..=80014 | 130429 | 131048 | 131056 | 133016
    )
}

/// Code 4 (the app) and 17 (the token's user) throttle the whole app; the others name the
/// object's bucket.
pub(super) fn is_app_wide(code: u64) -> bool {
    code == 4 || code == 17
}

/// The WhatsApp entries of an `X-Business-Use-Case-Usage` header: (object id, its report).
/// Nothing when the header is not the JSON Meta sends.
pub(super) fn bucket_reports(raw: &str) -> Vec<(String, Reported)> {
    let Ok(map) = serde_json::from_str::<HashMap<String, Vec<serde_json::Value>>>(raw) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (object, entries) in map {
        for e in entries {
            let typ = e.get("type").and_then(|t| t.as_str()).unwrap_or("");
            if typ != "whatsapp_business_management" {
                continue;
            }
            out.push((
                object.clone(),
                Reported {
                    call_count: pct(&e, "call_count"),
                    total_cputime: pct(&e, "total_cputime"),
                    total_time: pct(&e, "total_time"),
                    regain_minutes: pct(&e, "estimated_time_to_regain_access"),
                },
            ));
        }
    }
    out
}

/// An `X-App-Usage` header. Kept for the admin view only: WhatsApp calls are limited by the BUC
/// figures (Meta applies BUC where both apply), and a throttled app says so with code 4.
pub(super) fn app_report(raw: &str) -> Option<Reported> {
    let v = serde_json::from_str::<serde_json::Value>(raw).ok()?;
    Some(Reported {
        call_count: pct(&v, "call_count"),
        total_cputime: pct(&v, "total_cputime"),
        total_time: pct(&v, "total_time"),
        regain_minutes: 0,
    })
}

fn pct(v: &serde_json::Value, key: &str) -> u32 {
    v.get(key)
        .and_then(|x| x.as_f64())
        .map(|f| f.clamp(0.0, 1e6).ceil() as u32)
        .unwrap_or(0)
}

/// Applies Meta's report on a bucket of `limit` to its log: a higher count than ours raises ours;
/// 100% with a regain time blocks until then. Returns the count Meta's figure implies and the
/// block, for the other replicas. When the bucket is `shared` with other replicas, the log holds
/// only this replica's calls: the rest of Meta's count is what the others hold, never ours.
pub(super) fn apply_report(
    log: &mut CallLog,
    rep: Reported,
    limit: u32,
    now: Micros,
    window: Micros,
    shared: bool,
) -> (u32, Duration) {
    log.prune(now, window);
    // Meta's percentage is rounded down, so `p%` means at least `ceil(p * N / 100)` calls. When
    // that is more than we counted, another consumer of the same app made them: count them as
    // ours. The least count keeps graphgate from ever holding back budget Meta did not spend
    // (reading 0% as "up to 1%" would lock away 1% of every bucket for an hour).
    let mut meta_count =
        ((rep.call_count as u64 * limit as u64).div_ceil(100)).min(limit as u64) as u32;
    let throttled = rep.call_count >= 100 && rep.regain_minutes > 0;
    if throttled {
        // The block below holds calls until Meta's regain time; after it Meta has room for at
        // least one more, so the raised log must not keep the bucket shut for a whole window.
        meta_count = meta_count.min(limit - 1);
    }
    let used = log.used();
    if shared {
        // Meta's calls all arrived by now, so they have all left its window a window from now.
        log.others.done = meta_count.saturating_sub(used);
        log.others.done_until = now + window;
    } else if meta_count > used {
        for _ in used..meta_count {
            log.record(now);
        }
    }
    // 100% with no regain time is a full bucket, not a throttled one: the raised log already
    // keeps the next call out until a slot frees.
    let block = if throttled {
        Duration::from_secs(rep.regain_minutes as u64 * 60)
    } else {
        Duration::ZERO
    };
    if throttled {
        log.blocked_until = log.blocked_until.max(now + micros(block));
    }
    log.reported = Some(rep);
    (meta_count, block)
}
