//! The sliding log of one bucket ([`CallLog`]) and the map of every bucket's log ([`Logs`]).
//!
//! A log holds the completion times of the calls in the last window and the count of calls in
//! flight. Its lock also guards the bucket's block, its FIFO wait queue and Meta's last report, so
//! one lock covers a whole check-and-take. This file never decides a limit (callers pass it in),
//! and must never sleep, await or do I/O while a lock is held.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use super::types::{BucketKey, Reported};
use crate::clock::Micros;
use crate::sync::{MutexExt, RwLockExt};

/// One bucket's state, under one lock.
pub(super) struct CallLog {
    pub(super) limit: u32,
    /// Completion times, ascending, all within the last window (pruned lazily).
    pub(super) done: VecDeque<Micros>,
    pub(super) inflight: u32,
    pub(super) blocked_until: Micros,
    /// FIFO tickets of callers waiting in `wait` mode; only the head may take a slot.
    pub(super) queue: VecDeque<u64>,
    /// Wakes waiters when a slot is given back or the limit changes.
    pub(super) notify: Arc<Notify>,
    pub(super) reported: Option<Reported>,
    pub(super) rejected: u64,
}

/// A log shared by the map, permits and waiters.
pub(super) type LogHandle = Arc<Mutex<CallLog>>;

impl CallLog {
    pub(super) fn new(limit: u32) -> CallLog {
        CallLog {
            limit,
            done: VecDeque::new(),
            inflight: 0,
            blocked_until: 0,
            queue: VecDeque::new(),
            notify: Arc::new(Notify::new()),
            reported: None,
            rejected: 0,
        }
    }

    /// Drops entries a full window old: a call at `t` no longer counts at `t + window`.
    pub(super) fn prune(&mut self, now: Micros, window: Micros) {
        while self.done.front().is_some_and(|&t| t + window <= now) {
            self.done.pop_front();
        }
    }

    pub(super) fn used(&self) -> u32 {
        self.done.len() as u32 + self.inflight
    }

    /// When the next slot frees: the oldest completed call leaves the window. With only calls in
    /// flight, the earliest is a full window from now.
    pub(super) fn next_free(&self, now: Micros, window: Micros) -> Micros {
        self.done
            .front()
            .map(|&t| t + window)
            .unwrap_or(now + window)
            .max(now)
    }

    pub(super) fn record(&mut self, at: Micros) {
        // Grow by doubling, but never past the limit: a full bucket of 5000 holds 40 KB, not 64.
        if self.done.len() == self.done.capacity() {
            let room = (self.limit as usize).saturating_sub(self.done.len()).max(1);
            self.done.reserve_exact(self.done.len().max(8).min(room));
        }
        // Responses complete out of order; keep the log sorted (the new time is almost always last).
        if self.done.back().is_none_or(|&last| last <= at) {
            self.done.push_back(at);
        } else {
            let pos = self.done.partition_point(|&t| t <= at);
            self.done.insert(pos, at);
        }
    }

    /// Nothing in the window, nothing in flight, no block and no waiters (call after `prune`).
    fn is_idle(&self, now: Micros) -> bool {
        self.done.is_empty()
            && self.inflight == 0
            && self.blocked_until <= now
            && self.queue.is_empty()
    }

    /// Heap bytes this log holds (for the memory figure in docs/benchmarks.md).
    fn heap_bytes(&self) -> usize {
        self.done.capacity() * std::mem::size_of::<Micros>() + self.queue.capacity() * 8
    }
}

/// Every bucket's log. The map lock is held only to find or insert a log (and, in [`Logs::with`],
/// while one log is read); each log has its own lock. Lock order: the map, then a log, never the
/// other way round.
#[derive(Default)]
pub(super) struct Logs {
    map: RwLock<foldhash::HashMap<BucketKey, LogHandle>>,
}

impl Logs {
    /// The log of `key`, created with `limit` on first use.
    pub(super) fn get_or_insert(&self, key: &BucketKey, limit: u32) -> LogHandle {
        if let Some(b) = self.map.read_unpoisoned().get(key) {
            return b.clone();
        }
        self.map
            .write_unpoisoned()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(CallLog::new(limit))))
            .clone()
    }

    /// Runs `f` on the log of `key` under its lock, if that bucket has been used.
    pub(super) fn with<R>(&self, key: &BucketKey, f: impl FnOnce(&mut CallLog) -> R) -> Option<R> {
        self.map
            .read_unpoisoned()
            .get(key)
            .map(|b| f(&mut b.lock_unpoisoned()))
    }

    /// Every log used so far, copied out so no map lock is held while they are read.
    pub(super) fn all(&self) -> Vec<(BucketKey, LogHandle)> {
        self.map
            .read_unpoisoned()
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect()
    }

    /// The keys of every log used so far.
    pub(super) fn keys(&self) -> Vec<BucketKey> {
        self.map.read_unpoisoned().keys().cloned().collect()
    }

    /// Forgets idle logs, so a caller naming ever new objects cannot grow the map without bound.
    /// Returns how many went.
    pub(super) fn sweep(&self, now: Micros, window: Micros) -> usize {
        let mut map = self.map.write_unpoisoned();
        let before = map.len();
        map.retain(|_, b| {
            let mut b = b.lock_unpoisoned();
            b.prune(now, window);
            !b.is_idle(now)
        });
        before - map.len()
    }

    /// Bytes used by one log: the struct, its `Arc<Mutex<_>>`, and its heap.
    pub(super) fn bytes(&self, key: &BucketKey) -> Option<usize> {
        let b = self.map.read_unpoisoned().get(key)?.clone();
        let b = b.lock_unpoisoned();
        Some(std::mem::size_of::<Mutex<CallLog>>() + 16 + b.heap_bytes())
    }
}
