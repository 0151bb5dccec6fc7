//! Who was refused and why, for the status page: the most recent refusals, and every refusal since
//! start grouped by app, client, bucket and reason.
//!
//! It keeps only names from config and fixed reasons, so both lists are bounded by the config; it
//! must never count into Prometheus (the rejected family is the metrics file's) nor hold a lock
//! longer than a copy.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::sync::MutexExt;

/// How many refusals the status page can list.
const RECENT_REJECTIONS: usize = 50;

/// One refused call, for the status page.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub at_unix: u64,
    pub app: String,
    /// The client's name from config.
    pub client: String,
    pub bucket: String,
    /// `full`, `blocked` (Meta throttled), `client_quota` or `unavailable` (Redis down, reject mode).
    pub reason: &'static str,
    pub retry_after_secs: u64,
}

/// Refusals of one client for one bucket and reason, since start: who was refused and why.
#[derive(Debug, Clone, Serialize)]
pub struct RefusalGroup {
    pub app: String,
    pub client: String,
    pub bucket: String,
    pub reason: &'static str,
    pub count: u64,
    pub last_unix: u64,
}

/// Key of a [`RefusalGroup`]: app, client, bucket (all from config) and reason (a fixed set), so
/// the map is bounded by the config.
type GroupKey = (String, String, String, &'static str);

/// The two lists behind the status page's refusals.
#[derive(Default)]
pub(super) struct Refusals {
    recent: Mutex<VecDeque<Rejection>>,
    groups: Mutex<BTreeMap<GroupKey, (u64, u64)>>,
}

impl Refusals {
    pub(super) fn record(
        &self,
        app: String,
        client: &str,
        bucket: String,
        reason: &'static str,
        retry_after_secs: u64,
        now: u64,
    ) {
        {
            let mut groups = self.groups.lock_unpoisoned();
            let key = (app.clone(), client.to_string(), bucket.clone(), reason);
            let g = groups.entry(key).or_insert((0, now));
            *g = (g.0 + 1, now);
        }
        let mut recent = self.recent.lock_unpoisoned();
        if recent.len() == RECENT_REJECTIONS {
            recent.pop_front();
        }
        recent.push_back(Rejection {
            at_unix: now,
            app,
            client: client.to_string(),
            bucket,
            reason,
            retry_after_secs,
        });
    }

    pub(super) fn by_caller(&self) -> Vec<RefusalGroup> {
        let mut out: Vec<RefusalGroup> = self
            .groups
            .lock_unpoisoned()
            .iter()
            .map(
                |((app, client, bucket, reason), (count, last))| RefusalGroup {
                    app: app.clone(),
                    client: client.clone(),
                    bucket: bucket.clone(),
                    reason,
                    count: *count,
                    last_unix: *last,
                },
            )
            .collect();
        out.sort_by_key(|g| std::cmp::Reverse(g.count));
        out
    }

    pub(super) fn recent(&self) -> Vec<Rejection> {
        self.recent.lock_unpoisoned().iter().cloned().collect()
    }
}
