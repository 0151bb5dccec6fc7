//! A call's slots: taken in this process all or nothing under the logs' locks ([`take`]), held as
//! a [`Permit`] from admission until the call's response or failure, then settled: logged at that
//! moment if the request was sent, given back otherwise. A permit dropped unsettled (the caller
//! went away, a timeout) counts as sent, since the request may have reached Meta.
//!
//! It must never let a take pass a bucket's usable limit, never record a refused call, never
//! settle a permit twice, and never hold a log's lock across an await.

use std::sync::Arc;
use std::time::Duration;

use super::learned::Apps;
use super::log::{LogHandle, Logs};
use super::outage::Journal;
use super::redis_buckets::Seen;
use super::types::{BucketKey, Budget, RefusalReason};
use crate::clock::{Micros, SharedClock};
use crate::sync::MutexExt;

/// One bucket a call takes slots in: `n` slots of `log`, whose limit for this take is `limit`.
pub(super) struct Want {
    pub(super) key: BucketKey,
    pub(super) log: LogHandle,
    pub(super) n: u32,
    pub(super) limit: u32,
    /// In the fallback from Redis: the bucket's whole limit, which this replica's calls and what
    /// the others were last seen to hold must stay within together.
    pub(super) cap: Option<u32>,
}

/// What a take is measured against.
pub(super) struct Rules {
    pub(super) now: Micros,
    pub(super) window: Micros,
    /// The app-wide block: refuses every bucket of the app until then.
    pub(super) app_block: Micros,
    pub(super) reserve_percent: u32,
    /// The caller may spend the reserved share.
    pub(super) reserve: bool,
    /// The caller's place in a wait queue, if it waits.
    pub(super) ticket: Option<u64>,
    /// In the fallback from Redis: until then, the others may have spent, unseen, what Redis last
    /// showed free (calls made before Redis went away, still in the window).
    pub(super) unseen_until: Micros,
}

/// Why a take failed: which want refused, when it could pass, and why.
pub(super) struct Shortfall {
    pub(super) index: usize,
    pub(super) retry_at: Micros,
    pub(super) reason: RefusalReason,
}

/// The limited buckets of `wants`, each once with its slots summed (a batch may name one twice).
pub(super) fn limited(apps: &Apps, wants: &[(BucketKey, u32)]) -> Vec<(BucketKey, u32)> {
    let mut out: Vec<(BucketKey, u32)> = Vec::new();
    for (key, n) in wants {
        if apps.limit_of(key).is_none() {
            continue;
        }
        match out.iter_mut().find(|(k, _)| k == key) {
            Some(w) => w.1 += n,
            None => out.push((key.clone(), *n)),
        }
    }
    out
}

/// The limited buckets of `wants` with their logs, each once, sorted by key. In the fallback from
/// Redis (`shared`), this replica spends only `limit / share`, and its calls with what the others
/// were last seen to hold stay within the whole limit.
pub(super) fn pick(
    apps: &Apps,
    logs: &Logs,
    wants: &[(BucketKey, u32)],
    share: u32,
    shared: bool,
) -> Vec<Want> {
    let mut picked: Vec<Want> = Vec::new();
    for (key, n) in limited(apps, wants) {
        let Some(whole) = apps.limit_of(&key) else {
            continue;
        };
        let limit = whole / share.max(1);
        picked.push(Want {
            log: logs.get_or_insert(&key, limit),
            key,
            n,
            limit,
            cap: shared.then_some(whole),
        });
    }
    // A consistent lock order keeps two batches from deadlocking each other.
    picked.sort_by(|a, b| a.key.cmp(&b.key));
    picked
}

/// The share of `limit` a caller may spend: all of it with `reserve`, else all but the reserve.
pub(super) fn usable(limit: u32, reserve: bool, reserve_percent: u32) -> u32 {
    if reserve {
        limit
    } else {
        limit - limit * reserve_percent / 100
    }
}

/// Takes `n` slots in every want, all or nothing: check-and-take is one step under the logs'
/// locks. `wants` must be sorted by key, so two batches lock in the same order and never deadlock.
pub(super) fn take(wants: &[Want], rules: &Rules) -> Result<Vec<Budget>, Shortfall> {
    let (now, window) = (rules.now, rules.window);
    let mut guards: Vec<_> = wants.iter().map(|w| w.log.lock_unpoisoned()).collect();
    for (index, w) in wants.iter().enumerate() {
        let g = &mut guards[index];
        g.limit = w.limit;
        g.prune(now, window);
        let refuse = |retry_at, reason| Shortfall {
            index,
            retry_at,
            reason,
        };
        let blocked_until = g.blocked_until.max(rules.app_block);
        if blocked_until > now {
            g.rejected += 1;
            return Err(refuse(blocked_until, RefusalReason::Blocked));
        }
        // Someone queued earlier goes first.
        if g.queue
            .front()
            .is_some_and(|&head| Some(head) != rules.ticket)
        {
            g.rejected += 1;
            return Err(refuse(g.next_free(now, window), RefusalReason::Full));
        }
        let share = usable(w.limit, rules.reserve, rules.reserve_percent);
        if g.used() + w.n > share {
            g.rejected += 1;
            // How long until enough of the oldest calls have left the window.
            let need = (g.used() + w.n - share) as usize;
            let retry_at = match g.done.get(need - 1) {
                Some(&t) => (t + window).max(now),
                None => now + window,
            };
            return Err(refuse(retry_at, RefusalReason::Full));
        }
        if let Some(cap) = w.cap {
            let unseen = if now < rules.unseen_until {
                cap.saturating_sub(g.others.total)
            } else {
                0
            };
            let others = g.others.at(now) + unseen;
            if g.used() + others + w.n > usable(cap, rules.reserve, rules.reserve_percent) {
                g.rejected += 1;
                let mut retry_at = g.others.next_free(now).min(g.next_free(now, window));
                if unseen > 0 {
                    retry_at = retry_at.max(rules.unseen_until);
                }
                return Err(refuse(retry_at.max(now + 1), RefusalReason::Full));
            }
        }
    }
    let mut budgets = Vec::with_capacity(wants.len());
    for (w, g) in wants.iter().zip(guards.iter_mut()) {
        g.inflight += w.n;
        budgets.push(Budget {
            scope: w.key.scope.clone(),
            limit: w.limit,
            remaining: w.limit.saturating_sub(g.used()),
            reset: Duration::from_micros(g.next_free(now, window) - now),
            window: Duration::from_micros(window),
        });
    }
    Ok(budgets)
}

/// Where a call admitted through Redis is followed in this process too, so a fallback knows what
/// this replica spent and what the others held. The limiter implements it: it knows each bucket's
/// limit at settle time.
pub(super) trait Mirror: Send + Sync {
    /// An admission through Redis saw `key`'s bucket as `seen` and took `taken` slots there.
    fn seen(&self, key: &BucketKey, seen: Seen, taken: u32, now: Micros);
    /// A call admitted through Redis is over: logged here too if it was `sent`.
    fn settled(&self, key: &BucketKey, n: u32, sent: bool, now: Micros);
}

/// An admission held in Redis: bucket bases with counts, the admission's member id, and the keys
/// to mirror into the local logs once the call was sent.
pub(super) struct Remote {
    pub(super) journal: Arc<Journal>,
    pub(super) buckets: Vec<(String, u32)>,
    pub(super) member: String,
    pub(super) keys: Vec<(BucketKey, u32)>,
    pub(super) mirror: Arc<dyn Mirror>,
    /// The call also holds slots of this process's logs (see [`Permit::also_local`]), which log
    /// it here: the mirror must not log it twice.
    pub(super) logged_here: bool,
}

/// A slot in one or more buckets, held from admission until the call's response (or failure).
pub struct Permit {
    clock: SharedClock,
    /// Slots taken in this process's logs.
    slots: Vec<(LogHandle, u32)>,
    /// Slots taken in Redis, when the buckets are shared.
    remote: Option<Remote>,
    /// A call admitted in the fallback from Redis: its entry in the journal of such calls.
    outage: Option<(Arc<Journal>, u64)>,
    sent: bool,
    settled: bool,
    pub budgets: Vec<Budget>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("buckets", &self.slots.len())
            .field("sent", &self.sent)
            .finish()
    }
}

impl Permit {
    /// A permit for slots taken in this process.
    pub(super) fn local(
        clock: SharedClock,
        slots: Vec<(LogHandle, u32)>,
        budgets: Vec<Budget>,
    ) -> Permit {
        Permit {
            clock,
            slots,
            remote: None,
            outage: None,
            sent: false,
            settled: false,
            budgets,
        }
    }

    /// A permit for slots taken in Redis (`None` when the call spends no limited bucket).
    pub(super) fn remote(
        clock: SharedClock,
        remote: Option<Remote>,
        budgets: Vec<Budget>,
    ) -> Permit {
        Permit {
            clock,
            slots: Vec::new(),
            remote,
            outage: None,
            sent: false,
            settled: false,
            budgets,
        }
    }

    /// Adds the slots `local` took in this process's logs to this permit admitted through Redis:
    /// the call then counts against both, and is logged here once.
    pub(super) fn also_local(mut self, mut local: Permit) -> Permit {
        self.slots = std::mem::take(&mut local.slots);
        local.settled = true;
        if let Some(remote) = &mut self.remote {
            remote.logged_here = true;
        }
        self
    }

    /// Notes this fallback call in `journal` as `id`, to be written into Redis when it returns.
    pub(super) fn journaled(mut self, journal: Arc<Journal>, id: u64) -> Permit {
        self.outage = Some((journal, id));
        self
    }

    /// The request is on its way to Meta: from now on it counts even if it fails.
    pub fn sent(&mut self) {
        self.sent = true;
    }

    /// The call is over; it is logged at this moment if it was sent, released otherwise.
    pub fn finish(mut self) {
        self.settle();
    }

    /// The request never left graphgate (e.g. the connection to Meta was refused): free the slots.
    pub fn release(mut self) {
        self.sent = false;
        self.settle();
    }

    fn settle(&mut self) {
        if self.settled {
            return;
        }
        self.settled = true;
        if let Some(Remote {
            journal,
            buckets,
            member,
            keys,
            mirror,
            logged_here,
        }) = self.remote.take()
        {
            journal.settle(buckets, member, self.sent);
            let now = self.clock.now();
            for (key, n) in &keys {
                mirror.settled(key, *n, self.sent && !logged_here, now);
            }
        }
        let now = self.clock.now();
        if let Some((journal, id)) = self.outage.take() {
            journal.close(id, self.sent);
        }
        for (log, n) in &self.slots {
            let mut b = log.lock_unpoisoned();
            b.inflight = b.inflight.saturating_sub(*n);
            if self.sent {
                for _ in 0..*n {
                    b.record(now);
                }
            } else {
                b.notify.notify_waiters();
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // A dropped request (caller went away, timeout) may have reached Meta: count it now.
        self.settle();
    }
}
