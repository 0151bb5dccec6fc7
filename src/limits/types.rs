//! The limiter's vocabulary: which bucket a call spends ([`BucketKey`], [`Scope`]), why a call was
//! refused ([`Refusal`]), what a caller is told of a bucket ([`Budget`]), what Meta reported
//! ([`Reported`]), what the admin view shows ([`BucketView`]) and which object ids are of a known
//! kind ([`Known`], what classification reads).
//!
//! Plain data, formatting at most. It must never import anything from the crate, so errors, metrics
//! and the cache can name these types without depending on how the limiter works.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which bucket a call spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    pub app: usize,
    pub scope: Scope,
}

impl BucketKey {
    /// The app's key for what no bucket of Meta's counts (a client's quota, an app-wide block).
    pub fn other(app: usize) -> BucketKey {
        BucketKey {
            app,
            scope: Scope::Other,
        }
    }
}

/// The WABA id of an app's overflow bucket: the one every id no config names shares once
/// `limits.max_unknown_buckets` such ids hold a bucket of their own (docs/limits.md, "Ids no config
/// names"). Not a Graph id, so no configured WABA can be it; an id named `*` lands there anyway.
pub const OVERFLOW_WABA: &str = "*";

/// Which of Meta's budgets a call spends (the seed's rate-limit table); `classify` picks it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Per app, per WABA (200 or 5000 per rolling hour).
    Waba(String),
    /// Per app, credit-line calls (5000 per rolling hour).
    CreditLine,
    /// Not in Meta's table: forwarded, counted only in metrics.
    Other,
}

impl Scope {
    /// `waba`, `credit_line` or `other`: the kind alone, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Waba(_) => "waba",
            Scope::CreditLine => "credit_line",
            Scope::Other => "other",
        }
    }

    /// `waba:<id>`, `credit_line` or `other`: for labels, logs and the state file.
    pub fn label(&self) -> String {
        let mut s = String::new();
        self.write_label(&mut s);
        s
    }

    /// Appends [`Self::label`] to `out` without a buffer of its own.
    pub fn write_label(&self, out: &mut String) {
        match self {
            Scope::Waba(id) => {
                out.push_str("waba:");
                out.push_str(id);
            }
            Scope::CreditLine => out.push_str("credit_line"),
            Scope::Other => out.push_str("other"),
        }
    }

    /// The inverse of [`Self::label`] (the state file stores labels).
    pub(super) fn parse(s: &str) -> Option<Scope> {
        match s {
            "credit_line" => Some(Scope::CreditLine),
            "other" => Some(Scope::Other),
            _ => s
                .strip_prefix("waba:")
                .map(|id| Scope::Waba(id.to_string())),
        }
    }
}

/// Why a call was not admitted.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub app: String,
    pub scope: Scope,
    pub limit: u32,
    pub window: Duration,
    /// Until a slot frees (or the block ends), rounded up to whole seconds by the caller.
    pub retry_after: Duration,
    /// Meta told us to stop (throttling error or 100% usage), or the client's own quota.
    pub reason: RefusalReason,
}

impl Refusal {
    /// The one way the limiter builds a refusal. `limit` is 0 where no bucket limit applies (a
    /// client quota, an app-wide block on an unlimited call, an unreachable backend).
    pub fn new(
        reason: RefusalReason,
        app: String,
        scope: Scope,
        limit: u32,
        window: Duration,
        retry_after: Duration,
    ) -> Refusal {
        Refusal {
            app,
            scope,
            limit,
            window,
            retry_after,
            reason,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The bucket holds `limit` calls in the window.
    Full,
    /// Meta throttled this bucket or app; we wait out its regain time.
    Blocked,
    /// The client's `rate` quota.
    ClientQuota,
    /// The shared backend (Redis) is unreachable and `on_backend_error = "reject"`.
    Unavailable,
}

/// What the caller is told about a bucket it used (IETF RateLimit headers).
#[derive(Debug, Clone)]
pub struct Budget {
    pub scope: Scope,
    pub limit: u32,
    pub remaining: u32,
    pub reset: Duration,
    pub window: Duration,
}

/// Latest usage Meta reported for a bucket, as percentages.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reported {
    pub call_count: u32,
    pub total_cputime: u32,
    pub total_time: u32,
    pub regain_minutes: u32,
}

/// One bucket as the admin view and metrics show it.
#[derive(Debug, Clone, Serialize)]
pub struct BucketView {
    pub app: String,
    pub scope: String,
    pub limit: u32,
    pub used: u32,
    pub in_flight: u32,
    pub remaining: u32,
    pub reset_in_secs: u64,
    pub blocked_for_secs: u64,
    pub waiting: usize,
    pub rejected: u64,
    pub reported: Option<Reported>,
}

/// Object ids graphgate knows the kind of.
#[derive(Debug, Default, Clone)]
pub struct Known {
    pub wabas: HashSet<String>,
    /// WABA-to-number-current-status id -> its WABA.
    pub status_ids: HashMap<String, String>,
    pub allocation_configs: HashSet<String>,
}
