//! The simulator's state: the [`Sim`] handle and what it guards (tokens, data, windows, the request
//! log, faults), with the locks' order. The pipeline (`graph`) and the helpers (`admin`) read it;
//! it never imports them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use super::config::{SimConfig, SimToken};
use super::data::Data;
use super::faults::Faults;
use super::limits::{Limits, Scope};
use super::stats::{BucketStats, Journal, SimStats};

/// A running simulator's state; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Sim {
    pub(super) inner: Arc<Inner>,
}

/// Each lock guards one concern and is held only for short, non-async critical sections. Order when more
/// than one is needed: data before limits (the pipeline never holds two at once).
pub(super) struct Inner {
    pub(super) cfg: SimConfig,
    /// Token string -> its grant, built once from `cfg.tokens`.
    pub(super) tokens: HashMap<String, SimToken>,
    /// Graph objects; mutated by POST/DELETE.
    pub(super) data: Mutex<Data>,
    /// Rolling windows; every counted call takes it once.
    pub(super) limits: Mutex<Limits>,
    /// Request log, tokens and proofs seen.
    pub(super) journal: Mutex<Journal>,
    pub(super) faults: Mutex<Faults>,
}

/// Locks, recovering from poisoning: a panicked holder cannot leave these structures half-written in a way
/// that matters more than refusing all later requests would.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let tokens = cfg
            .tokens
            .iter()
            .map(|t| (t.token.clone(), t.clone()))
            .collect();
        Sim {
            inner: Arc::new(Inner {
                cfg,
                tokens,
                data: Mutex::new(Data::seeded()),
                limits: Mutex::new(Limits::default()),
                journal: Mutex::new(Journal::default()),
                faults: Mutex::new(Faults::default()),
            }),
        }
    }

    /// Same data as `GET /__sim/stats`.
    pub fn stats(&self) -> SimStats {
        let cfg = &self.inner.cfg;
        // Read which WABAs are active first, so the data and limits locks are never held together.
        let active: HashSet<String> = {
            let data = lock(&self.inner.data);
            data.waba_ids()
                .into_iter()
                .filter(|w| data.is_active(w))
                .collect()
        };
        let buckets = lock(&self.inner.limits).snapshot(
            tokio::time::Instant::now(),
            cfg.window,
            |k| match &k.scope {
                Scope::Waba(w) if active.contains(w) => cfg.active_waba_limit,
                Scope::Waba(_) => cfg.waba_limit,
                Scope::CreditLine => cfg.credit_limit,
            },
        );
        let mut s = lock(&self.inner.journal).snapshot();
        s.buckets = buckets
            .into_iter()
            .map(|b| {
                (
                    b.label,
                    BucketStats {
                        calls: b.calls,
                        throttled: b.throttled,
                        max_in_window: b.max_in_window,
                        in_window: b.in_window,
                        limit: b.limit,
                    },
                )
            })
            .collect();
        s
    }

    /// Sets a phone number's `platform_type` (`CLOUD_API` registers it, `NOT_APPLICABLE` does not),
    /// for tests of WABAs becoming active or inactive. False when the number is unknown.
    pub fn set_platform_type(&self, phone: &str, platform_type: &str) -> bool {
        lock(&self.inner.data).set_platform_type(phone, platform_type)
    }

    pub fn set_faults(&self, f: Faults) {
        *lock(&self.inner.faults) = f;
    }

    pub fn faults(&self) -> Faults {
        lock(&self.inner.faults).clone()
    }

    /// Clears counters, windows, the request log, tokens and proofs seen, and faults. Data stays.
    pub fn reset(&self) {
        lock(&self.inner.limits).clear();
        *lock(&self.inner.journal) = Journal::default();
        *lock(&self.inner.faults) = Faults::default();
    }
}
