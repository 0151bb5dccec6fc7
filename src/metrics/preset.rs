//! Series that exist at 0 from the first scrape: every counter whose labels come from config (apps,
//! configured WABAs, subscribers) or from a small fixed set (throttling codes, cache results,
//! upstream failure statuses).
//!
//! Why: `increase()` and `rate()` see nothing until a series has two samples, so a series born on
//! its first event hides that event from every alert. It owns only the creation of those series;
//! it must never count anything, and never create a series whose labels a caller chooses.

use std::sync::Arc;

use crate::config::Config;

use super::labels::{
    BucketLabels, CacheLabels, DegradedLabels, ThrottleLabels, UpstreamLabels, DEGRADED_REASONS,
};
use super::{CacheResult, Metrics};

/// Upstream answers present for each app and class from the start: the failures alerts look for,
/// and the answers Meta gives most (a Graph error is a 400, 403 or 429).
const UPSTREAM_STATUSES: [&str; 10] = [
    "200", "400", "403", "429", "500", "502", "503", "5xx", "error", "timeout",
];

/// The classes a call can be (`Scope::kind`).
const CLASSES: [&str; 3] = ["waba", "credit_line", "other"];

/// The largest throttling code Meta uses (`limits::is_throttling_code`), so the codes can be
/// listed from the one predicate instead of a second copy of its set.
const MAX_THROTTLING_CODE: u64 = 140_000;

impl Metrics {
    pub(super) fn preset(&self, config: &Config) {
        for reason in DEGRADED_REASONS {
            self.degraded
                .get_or_create(&DegradedLabels { reason })
                .set(0);
        }
        for r in [
            CacheResult::Hit,
            CacheResult::Miss,
            CacheResult::Stale,
            CacheResult::Bypass,
        ] {
            self.cache_requests
                .get_or_create(&CacheLabels { result: r.label() })
                .inc_by(0);
        }
        let codes: Vec<String> = (0..=MAX_THROTTLING_CODE)
            .filter(|c| crate::limits::is_throttling_code(*c))
            .map(|c| c.to_string())
            .chain(std::iter::once("other".to_string()))
            .collect();
        for app in &config.apps {
            let name: Arc<str> = Arc::from(app.name.as_str());
            for code in &codes {
                self.throttled
                    .get_or_create(&ThrottleLabels {
                        app: app.name.clone(),
                        code: code.clone(),
                    })
                    .inc_by(0);
            }
            let buckets =
                app.wabas.iter().map(|w| format!("waba:{}", w.id)).chain(
                    ["waba:other", "credit_line", "other", "client_quota"].map(String::from),
                );
            for bucket in buckets {
                self.rejected
                    .get_or_create(&BucketLabels {
                        app: app.name.clone(),
                        bucket,
                    })
                    .inc_by(0);
            }
            for class in CLASSES {
                for status in UPSTREAM_STATUSES {
                    self.upstream_requests
                        .get_or_create(&UpstreamLabels {
                            app: name.clone(),
                            class,
                            status,
                        })
                        .inc_by(0);
                }
            }
        }
    }
}
