//! Where entries live: the moka store (bounded in bytes, each entry dropped once it can no longer
//! answer even as stale), the invalidation counters (one per slot of (app, object id), one epoch
//! per app) and the clock the entries' ages are read on.
//!
//! It answers "is there a usable entry for this key" and drops entries; it must never decide what
//! a request may be answered with (freshness against the caller's directives is the caller's), call
//! Meta, or render a response.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::entry::{CachedResponse, Generation};
use super::key::{slot_of, CacheKey, SLOTS};
use crate::clock::SharedClock;

pub(super) struct Store {
    entries: moka::sync::Cache<CacheKey, Arc<CachedResponse>, foldhash::fast::RandomState>,
    slots: Box<[AtomicU64]>,
    /// Bumped by a whole-app purge.
    epochs: Box<[AtomicU64]>,
    clock: SharedClock,
}

/// Tells moka to drop an entry once it can no longer answer, even as stale.
struct KeepFor;

impl moka::Expiry<CacheKey, Arc<CachedResponse>> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedResponse>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.kept_for())
    }
}

impl Store {
    /// `max_bytes` bounds the weighed entries; `apps` is the number of configured apps.
    pub(super) fn new(max_bytes: u64, apps: usize, clock: SharedClock) -> Store {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &CacheKey, v: &Arc<CachedResponse>| v.weight(k))
            .expire_after(KeepFor)
            // Seeded per process; see Cargo.toml for why not SipHash.
            .build_with_hasher(foldhash::fast::RandomState::default());
        Store {
            entries,
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epochs: (0..apps.max(1)).map(|_| AtomicU64::new(0)).collect(),
            clock,
        }
    }

    /// Time since the clock's epoch; only differences matter here.
    pub(super) fn now(&self) -> Duration {
        Duration::from_micros(self.clock.now())
    }

    /// An entry that can still answer (fresh or within its stale window) and was not invalidated.
    pub(super) fn entry(&self, key: &CacheKey, now: Duration) -> Option<Arc<CachedResponse>> {
        let e = self.entries.get(key)?;
        let valid = e.generation() == self.generation(key);
        (valid && e.is_kept(now)).then_some(e)
    }

    /// The counters an entry for `key` must match to be valid. A fill reads them before its call,
    /// so a write that lands while it is in flight makes the fill invalid at once.
    pub(super) fn generation(&self, key: &CacheKey) -> Generation {
        Generation {
            slot: self.slots[key.slot()].load(Ordering::Acquire),
            app_epoch: self.epoch(key.app()),
        }
    }

    fn epoch(&self, app: usize) -> u64 {
        self.epochs
            .get(app)
            .map_or(0, |e| e.load(Ordering::Acquire))
    }

    pub(super) fn insert(&self, key: CacheKey, e: Arc<CachedResponse>) {
        self.entries.insert(key, e);
    }

    /// Invalidates every entry in `slot` (a successful write to its object).
    pub(super) fn invalidate_slot(&self, slot: usize) {
        self.slots[slot].fetch_add(1, Ordering::AcqRel);
    }

    /// See [`super::ResponseCache::purge`].
    pub(super) fn purge(&self, app: usize, path_prefix: &str) -> usize {
        let segs: Vec<&str> = path_prefix.split('/').filter(|s| !s.is_empty()).collect();
        let segs: &[&str] = match segs.first() {
            Some(v) if crate::ids::is_version(v) => &segs[1..],
            _ => &segs,
        };
        // In-flight fills under the prefix must not land after the purge.
        match segs.first() {
            Some(root) => self.invalidate_slot(slot_of(app, root)),
            None => {
                if let Some(e) = self.epochs.get(app) {
                    e.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        let mut dropped = 0;
        for (k, _) in self.entries.iter() {
            if k.app() != app {
                continue;
            }
            let mut path = k.unversioned_path().split('/').filter(|s| !s.is_empty());
            if segs.iter().all(|want| path.next() == Some(want)) {
                self.entries.invalidate(&*k);
                dropped += 1;
            }
        }
        dropped
    }

    /// Entries and their weighed bytes, after moka has applied pending evictions.
    pub(super) fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    pub(super) fn entries(&self) -> Vec<(CacheKey, Arc<CachedResponse>)> {
        self.entries
            .iter()
            .map(|(k, v)| ((*k).clone(), v))
            .collect()
    }
}
