//! The sliding log of one bucket ([`CallLog`]) and the map of every bucket's log ([`Logs`]).
//!
//! A log holds the completion times of the calls in the last window and the count of calls in
//! flight. Its lock also guards the bucket's block, its FIFO wait queue and Meta's last report, so
//! one lock covers a whole check-and-take. This file never decides a limit (callers pass it in),
//! and must never sleep, await or do I/O while a lock is held.
//!
//! The map also routes ids no config names ([`Logs::route`]): at most `max_unknown_buckets` of
//! them per app own a log; beyond that they share the app's overflow log ([`OVERFLOW_WABA`]), so
//! a caller naming ever new ids cannot grow memory, the admin view or the state file.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use super::learned::Apps;
use super::types::{BucketKey, Reported, Scope, OVERFLOW_WABA};
use crate::clock::Micros;
use crate::sync::{MutexExt, RwLockExt};

/// What the other replicas hold of a shared bucket, as last seen from Redis or from Meta's usage
/// header: counted beside this replica's own calls while Redis is away, until those calls must have
/// left the window (completed ones a window after they were seen, ones in flight a call's longest
/// time later). Each new figure replaces the last: it is the more recent truth.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Others {
    /// What Redis last showed of the whole bucket, this replica's calls included: the rest of
    /// the limit is what the others may have taken after, unseen, until Redis went away.
    pub(super) total: u32,
    pub(super) done: u32,
    pub(super) done_until: Micros,
    pub(super) inflight: u32,
    pub(super) inflight_until: Micros,
}

impl Others {
    /// Their calls that may still be in the window at `now`.
    pub(super) fn at(&self, now: Micros) -> u32 {
        let done = if now < self.done_until { self.done } else { 0 };
        let inflight = if now < self.inflight_until {
            self.inflight
        } else {
            0
        };
        done + inflight
    }

    /// When the next of them leaves (`now` when none counts).
    pub(super) fn next_free(&self, now: Micros) -> Micros {
        [self.done_until, self.inflight_until]
            .into_iter()
            .filter(|&t| t > now)
            .min()
            .unwrap_or(now)
    }
}

/// One bucket's state, under one lock.
pub(super) struct CallLog {
    pub(super) limit: u32,
    /// Completion times, ascending, all within the last window (pruned lazily).
    pub(super) done: VecDeque<Micros>,
    pub(super) inflight: u32,
    /// This replica's calls admitted through Redis and not yet over (logged here when they end).
    pub(super) remote_inflight: u32,
    /// The other replicas' calls, when the bucket is shared.
    pub(super) others: Others,
    pub(super) blocked_until: Micros,
    /// FIFO tickets of callers waiting in `wait` mode; only the head may take a slot.
    pub(super) queue: VecDeque<u64>,
    /// Wakes waiters when a slot is given back or the limit changes.
    pub(super) notify: Arc<Notify>,
    pub(super) reported: Option<Reported>,
    pub(super) rejected: u64,
    /// An id no config names owns this log: it counts against `max_unknown_buckets`.
    unknown: bool,
}

/// A log shared by the map, permits and waiters.
pub(super) type LogHandle = Arc<Mutex<CallLog>>;

impl CallLog {
    pub(super) fn new(limit: u32) -> CallLog {
        CallLog {
            limit,
            done: VecDeque::new(),
            inflight: 0,
            remote_inflight: 0,
            others: Others::default(),
            blocked_until: 0,
            queue: VecDeque::new(),
            notify: Arc::new(Notify::new()),
            reported: None,
            rejected: 0,
            unknown: false,
        }
    }

    /// Drops entries a full window old: a call at `t` no longer counts at `t + window`.
    pub(super) fn prune(&mut self, now: Micros, window: Micros) {
        while self.done.front().is_some_and(|&t| t + window <= now) {
            self.done.pop_front();
        }
    }

    /// This replica's calls: completed in the window, and in flight however admitted.
    pub(super) fn used(&self) -> u32 {
        self.done.len() as u32 + self.inflight + self.remote_inflight
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

    /// An admission through Redis took `taken` slots here and saw `done` calls in the window and
    /// `inflight` in flight across every replica: what is not this replica's is the others'.
    pub(super) fn seen_remote(
        &mut self,
        done: u32,
        inflight: u32,
        taken: u32,
        now: Micros,
        window: Micros,
        call_max: Micros,
    ) {
        self.prune(now, window);
        self.remote_inflight += taken;
        self.others = Others {
            total: done + inflight,
            done: done.saturating_sub(self.done.len() as u32),
            done_until: now + window,
            inflight: inflight.saturating_sub(self.remote_inflight + self.inflight),
            inflight_until: now + call_max + window,
        };
    }

    /// A call admitted through Redis is over: logged here too if it was `sent`.
    pub(super) fn settled_remote(&mut self, n: u32, sent: bool, now: Micros, window: Micros) {
        self.remote_inflight = self.remote_inflight.saturating_sub(n);
        self.prune(now, window);
        if sent {
            for _ in 0..n {
                self.record(now);
            }
        }
        self.notify.notify_waiters();
    }

    /// Nothing in the window, nothing in flight, no block and no waiters (call after `prune`).
    fn is_idle(&self, now: Micros) -> bool {
        self.done.is_empty()
            && self.inflight == 0
            && self.remote_inflight == 0
            && self.others.at(now) == 0
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
    map: RwLock<Map>,
}

#[derive(Default)]
struct Map {
    logs: foldhash::HashMap<BucketKey, LogHandle>,
    /// Per app index: how many logs ids no config names own (`CallLog::unknown`).
    unknown: foldhash::HashMap<usize, usize>,
}

impl Logs {
    /// The log of `key`, created with `limit` on first use.
    pub(super) fn get_or_insert(&self, key: &BucketKey, limit: u32) -> LogHandle {
        if let Some(b) = self.map.read_unpoisoned().logs.get(key) {
            return b.clone();
        }
        self.map
            .write_unpoisoned()
            .logs
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(CallLog::new(limit))))
            .clone()
    }

    /// Runs `f` on the log of `key` under its lock, if that bucket has been used.
    pub(super) fn with<R>(&self, key: &BucketKey, f: impl FnOnce(&mut CallLog) -> R) -> Option<R> {
        self.map
            .read_unpoisoned()
            .logs
            .get(key)
            .map(|b| f(&mut b.lock_unpoisoned()))
    }

    /// Every log used so far, copied out so no map lock is held while they are read.
    pub(super) fn all(&self) -> Vec<(BucketKey, LogHandle)> {
        self.map
            .read_unpoisoned()
            .logs
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect()
    }

    /// The keys of every log used so far.
    pub(super) fn keys(&self) -> Vec<BucketKey> {
        self.map.read_unpoisoned().logs.keys().cloned().collect()
    }

    /// Forgets idle logs, so a caller naming ever new objects cannot grow the map without bound.
    /// Returns how many went.
    pub(super) fn sweep(&self, now: Micros, window: Micros) -> usize {
        let mut map = self.map.write_unpoisoned();
        let Map { logs, unknown } = &mut *map;
        let before = logs.len();
        logs.retain(|key, b| {
            let mut b = b.lock_unpoisoned();
            b.prune(now, window);
            let idle = b.is_idle(now);
            if idle && b.unknown {
                unknown
                    .entry(key.app)
                    .and_modify(|n| *n = n.saturating_sub(1));
            }
            !idle
        });
        before - logs.len()
    }

    /// The bucket a call on `key` spends. A configured WABA, the credit line and `other` are their
    /// own; so is an id no config names that already owns a log. A new such id gets a log of its
    /// own only while fewer than `cap` of them hold one for its app *and* the app's overflow log is
    /// idle (so no call on the id can still be counted there); else it spends the overflow, whose
    /// limit is `waba_default`, the lowest such an id can have. Decided under the map's write lock,
    /// so two calls on one new id cannot go two ways.
    pub(super) fn route<'a>(
        &self,
        apps: &Apps,
        key: &'a BucketKey,
        cap: usize,
        now: Micros,
        window: Micros,
    ) -> Cow<'a, BucketKey> {
        let Scope::Waba(id) = &key.scope else {
            return Cow::Borrowed(key);
        };
        if id == OVERFLOW_WABA
            || apps.configures(key.app, id)
            || self.map.read_unpoisoned().logs.contains_key(key)
        {
            return Cow::Borrowed(key);
        }
        let overflow = BucketKey {
            app: key.app,
            scope: Scope::Waba(OVERFLOW_WABA.to_string()),
        };
        let mut map = self.map.write_unpoisoned();
        if map.logs.contains_key(key) {
            return Cow::Borrowed(key);
        }
        let held = map.unknown.get(&key.app).copied().unwrap_or(0);
        let overflow_idle = map.logs.get(&overflow).is_none_or(|b| {
            let mut b = b.lock_unpoisoned();
            b.prune(now, window);
            b.is_idle(now)
        });
        let Some(limit) = apps.limit_of(key).filter(|_| held < cap && overflow_idle) else {
            return Cow::Owned(overflow);
        };
        let mut log = CallLog::new(limit);
        log.unknown = true;
        map.logs.insert(key.clone(), Arc::new(Mutex::new(log)));
        *map.unknown.entry(key.app).or_default() += 1;
        Cow::Borrowed(key)
    }

    /// [`Logs::route`] for every bucket of a call; borrowed as is when none moves.
    pub(super) fn route_all<'a>(
        &self,
        apps: &Apps,
        wants: &'a [(BucketKey, u32)],
        cap: usize,
        now: Micros,
        window: Micros,
    ) -> Cow<'a, [(BucketKey, u32)]> {
        let stays =
            |k: &BucketKey| matches!(self.route(apps, k, cap, now, window), Cow::Borrowed(_));
        if wants.iter().all(|(k, _)| stays(k)) {
            return Cow::Borrowed(wants);
        }
        let owned = wants
            .iter()
            .map(|(k, n)| (self.route(apps, k, cap, now, window).into_owned(), *n));
        Cow::Owned(owned.collect())
    }

    /// What a call routed to `routed` spends in Redis: those buckets, and for each id `route` sent
    /// to the overflow, the id's own bucket too. Replicas route on their own maps, so one may send
    /// an id to its bucket while another sends it to the overflow; spending the id's bucket either
    /// way keeps every call on the id in one count across them (its Redis key expires with the
    /// window; no log is made for it here, see `Limiter::mirror`).
    pub(super) fn shared<'a>(
        wants: &[(BucketKey, u32)],
        routed: &'a [(BucketKey, u32)],
    ) -> Cow<'a, [(BucketKey, u32)]> {
        let moved = wants.iter().zip(routed).filter(|((w, _), (r, _))| w != r);
        let own: Vec<_> = moved.map(|(w, _)| w.clone()).collect();
        if own.is_empty() {
            return Cow::Borrowed(routed);
        }
        Cow::Owned(routed.iter().cloned().chain(own).collect())
    }

    /// `f` on the log `key` is mirrored in (a call admitted through Redis), made if missing; but
    /// an id no config names gets a log only from [`Logs::route`] (so their number stays within
    /// `max_unknown_buckets`): an overflow call also spends its id's bucket in Redis
    /// ([`Logs::shared`]) and has no log of it here.
    pub(super) fn mirror(&self, apps: &Apps, key: &BucketKey, f: impl FnOnce(&mut CallLog)) {
        let Some(limit) = apps.limit_of(key) else {
            return;
        };
        if Logs::is_unknown(apps, key) {
            self.with(key, f);
        } else {
            f(&mut self.get_or_insert(key, limit).lock_unpoisoned());
        }
    }

    /// Whether `key` is an id no config names (its log is made only by [`Logs::route`]).
    pub(super) fn is_unknown(apps: &Apps, key: &BucketKey) -> bool {
        matches!(&key.scope, Scope::Waba(id) if id != OVERFLOW_WABA && !apps.configures(key.app, id))
    }

    /// This process's completed calls still in the window, per bucket (for a Redis that lost them).
    pub(super) fn own_calls(&self, now: Micros, window: Micros) -> Vec<(BucketKey, Vec<Micros>)> {
        self.all()
            .into_iter()
            .filter_map(|(key, log)| {
                let mut b = log.lock_unpoisoned();
                b.prune(now, window);
                (!b.done.is_empty()).then(|| (key, b.done.iter().copied().collect()))
            })
            .collect()
    }

    /// `waba`'s limit changed (it became active or not): its log takes the new limit at once and
    /// wakes its waiters.
    pub(super) fn limit_changed(&self, apps: &Apps, app: usize, waba: &str) {
        let key = BucketKey {
            app,
            scope: Scope::Waba(waba.to_string()),
        };
        if let Some(limit) = apps.limit_of(&key) {
            self.with(&key, |b| {
                b.limit = limit;
                b.notify.notify_waiters();
            });
        }
    }

    /// Bytes used by one log: the struct, its `Arc<Mutex<_>>`, and its heap.
    pub(super) fn bytes(&self, key: &BucketKey) -> Option<usize> {
        let b = self.map.read_unpoisoned().logs.get(key)?.clone();
        let b = b.lock_unpoisoned();
        Some(std::mem::size_of::<Mutex<CallLog>>() + 16 + b.heap_bytes())
    }
}
