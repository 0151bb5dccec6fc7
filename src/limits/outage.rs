//! What Redis does not know of this replica's calls ([`Journal`]): calls made while Redis was
//! away, and settlements of admissions made there that could not reach it. Kept until they are
//! written into the shared buckets, so that when Redis returns every replica counts them and no
//! slot stays held until its lease ends.
//!
//! A call admitted in the fallback is opened here; its settlement closes it (done at that moment,
//! or released). A settlement through Redis that fails is kept here too. A write-back sends them
//! all at once; a call written while in flight is settled through Redis later, like an admission
//! made there. Until the journal is clean the limiter keeps admitting from this replica's share.
//! A Sentinel failover is an outage followed by a master that may lack the old one's last writes:
//! this replica's calls of the last `FAILOVER_LAG` are written again, and what the journal had
//! written is written again too (counted twice at worst: budget lost, never exceeded).
//! It must never forget a call that was sent and not written, never write one twice (the script
//! makes a rerun harmless), and never hold its lock across an await.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::redis::RedisLink;
use super::redis_buckets::{Unsettled, Unshared};
use crate::clock::{Micros, SharedClock};
use crate::sync::MutexExt;

/// Where one call stands. `held`: Redis holds its slots under the call's member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open {
        held: bool,
    },
    /// Sent, and over at `at`.
    Done {
        at: Micros,
        held: bool,
    },
    /// Never sent.
    Released {
        held: bool,
    },
}

struct Call {
    member: String,
    buckets: Vec<(String, u32)>,
    state: State,
}

#[derive(Default)]
struct Calls {
    next: u64,
    map: BTreeMap<u64, Call>,
}

impl Calls {
    /// Forgets what no longer counts and holds nothing in Redis (never while a write-back runs,
    /// which may be writing them): the journal stays within a window of calls however long
    /// Redis is away.
    fn prune(&mut self, now: Micros, window: Micros) {
        self.map.retain(|_, c| match c.state {
            State::Done { at, held: false } => at + window > now,
            State::Released { held: false } => false,
            _ => true,
        });
    }

    /// After a failover Redis may not hold what it held: every call is written again.
    fn unhold(&mut self) {
        for c in self.map.values_mut() {
            c.state = match c.state {
                State::Open { .. } => State::Open { held: false },
                State::Done { at, .. } => State::Done { at, held: false },
                State::Released { .. } => State::Released { held: false },
            };
        }
    }

    fn add(&mut self, member: String, buckets: Vec<(String, u32)>, state: State) -> u64 {
        self.next += 1;
        let call = Call {
            member,
            buckets,
            state,
        };
        self.map.insert(self.next, call);
        self.next
    }
}

/// Write-back attempts in a row when calls settle while one runs.
const ROUNDS: usize = 3;
/// How often a replica writes back and checks in.
const EVERY: Duration = Duration::from_millis(250);
/// A replica that has not checked in for this long may be spending where Redis cannot see.
const FRESH: Duration = Duration::from_secs(1);
/// How far back a promoted replica may lack the old master's writes (replication is
/// asynchronous; on a LAN it lags by milliseconds, and Sentinel promotes the freshest replica).
const FAILOVER_LAG: Duration = Duration::from_secs(10);

/// This replica's calls as Redis does not know them yet.
pub(super) struct Journal {
    link: Arc<RedisLink>,
    clock: SharedClock,
    window: Micros,
    calls: Mutex<Calls>,
    /// One write-back at a time.
    writing: tokio::sync::Mutex<()>,
    /// How many replicas share the budget (`limits.replicas`).
    replicas: u32,
    /// Redis time (ms) of this replica's first check-in since Redis was last away (0: none yet).
    back_since: AtomicU64,
    /// Every replica has checked in, clean, since this one came back, and within `FRESH`: none
    /// can be spending where Redis cannot see.
    all_seen: AtomicBool,
    /// `RedisLink::downs` when this replica last checked in (`u64::MAX`: never).
    confirmed: AtomicU64,
    /// The epoch of the data in Redis this replica's calls are in ("": none yet).
    epoch: Mutex<String>,
    /// This replica's admissions through Redis still in flight, by member: what Redis must hold
    /// again if it loses its data.
    admitted: Mutex<HashMap<String, Vec<(String, u32)>>>,
    /// `RedisLink::switches` when this replica last wrote its calls again after a failover.
    switches: AtomicU64,
}

/// This replica's completed calls in the window: per bucket base, their completion times.
pub(super) type OwnCalls = Vec<(String, Vec<Micros>)>;

/// Calls written back in one script at most.
const CHUNK: usize = 500;

impl Journal {
    pub(super) fn new(
        link: Arc<RedisLink>,
        clock: SharedClock,
        window: Micros,
        replicas: u32,
    ) -> Journal {
        Journal {
            link,
            clock,
            window,
            calls: Mutex::new(Calls::default()),
            writing: tokio::sync::Mutex::new(()),
            replicas,
            back_since: AtomicU64::new(0),
            all_seen: AtomicBool::new(false),
            confirmed: AtomicU64::new(u64::MAX),
            epoch: Mutex::new(String::new()),
            admitted: Mutex::new(HashMap::new()),
            switches: AtomicU64::new(0),
        }
    }

    /// An admission through Redis took slots under `member`: followed until it settles.
    pub(super) fn admitted(&self, member: &str, buckets: &[(String, u32)]) {
        let mut admitted = self.admitted.lock_unpoisoned();
        admitted.insert(member.to_string(), buckets.to_vec());
    }

    /// Whether every replica is known to be back on Redis with nothing unwritten (see
    /// [`Self::keep_writing`]); until then a replica keeps to its share as well as to Redis.
    pub(super) fn all_seen(&self) -> bool {
        self.all_seen.load(Ordering::Relaxed)
    }

    /// A call admitted in the fallback, in the buckets (base, slots) named; its id.
    pub(super) fn open(&self, buckets: Vec<(String, u32)>) -> u64 {
        let mut calls = self.calls.lock_unpoisoned();
        if let Ok(_none_writing) = self.writing.try_lock() {
            calls.prune(self.clock.now(), self.window);
        }
        let member = format!("{}:o{}", self.link.replica, calls.next + 1);
        calls.add(member, buckets, State::Open { held: false })
    }

    /// The fallback call `id` is over: logged now if `sent`, given back otherwise.
    pub(super) fn close(self: &Arc<Self>, id: u64, sent: bool) {
        let now = self.clock.now();
        let mut calls = self.calls.lock_unpoisoned();
        let Some(call) = calls.map.get_mut(&id) else {
            return;
        };
        match call.state {
            State::Open { held: true } => {
                let Some(call) = calls.map.remove(&id) else {
                    return;
                };
                drop(calls);
                self.settle(call.buckets, call.member, sent);
            }
            State::Open { held: false } => {
                call.state = if sent {
                    State::Done {
                        at: now,
                        held: false,
                    }
                } else {
                    State::Released { held: false }
                };
            }
            State::Done { .. } | State::Released { .. } => {}
        }
    }

    /// Settles slots Redis holds under `member`, in the background; if Redis cannot be told, the
    /// settlement waits here for the next write-back instead of the slots' lease.
    pub(super) fn settle(
        self: &Arc<Self>,
        buckets: Vec<(String, u32)>,
        member: String,
        sent: bool,
    ) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.admitted.lock_unpoisoned().remove(&member);
        let me = self.clone();
        let at = self.clock.now();
        handle.spawn(async move {
            if let Err(e) = me.link.settle(&buckets, &member, sent).await {
                tracing::debug!(error = %e, "a settlement did not reach Redis; kept for the write-back");
                let state = if sent {
                    State::Done { at, held: true }
                } else {
                    State::Released { held: true }
                };
                me.calls.lock_unpoisoned().add(member, buckets, state);
            }
        });
    }

    /// Redis knows everything: admissions may go through it again.
    pub(super) fn clean(&self) -> bool {
        let calls = self.calls.lock_unpoisoned();
        calls
            .map
            .values()
            .all(|c| c.state == State::Open { held: true })
    }

    /// How many calls Redis does not know of yet (for the admin view and metrics). A slot to give
    /// back (a call never sent, e.g. an admission whose answer was lost) is not a call.
    pub(super) fn pending(&self) -> usize {
        let calls = self.calls.lock_unpoisoned();
        calls
            .map
            .values()
            .filter(|c| !matches!(c.state, State::Open { held: true } | State::Released { .. }))
            .count()
    }

    /// For the life of the process: writes back what Redis missed as soon as it answers again (so
    /// a replica with no traffic shares its calls too), then checks in. Every replica is seen when
    /// `limits.replicas` of them have checked in clean since this one last came back, and within
    /// `FRESH`: one that lost Redis stops checking in, and the others then keep to their shares.
    /// When Redis lost its data (a new epoch), this replica's calls still in the window (`own`)
    /// and in flight are written again first.
    pub(super) async fn keep_writing(self: Arc<Self>, own: impl Fn() -> OwnCalls) {
        let mut again = false;
        loop {
            if !again {
                tokio::time::sleep(EVERY).await;
            }
            again = false;
            if !self.link.available() {
                self.back_since.store(0, Ordering::Relaxed);
                self.all_seen.store(false, Ordering::Relaxed);
                continue;
            }
            let epoch = self.epoch.lock_unpoisoned().clone();
            // A new master first (a failover): it may lack the old one's last writes.
            let switches = self.link.switches();
            if switches != self.switches.load(Ordering::Relaxed) {
                if self
                    .after_failover(own(), &format!("{epoch}f{switches}"))
                    .await
                {
                    self.switches.store(switches, Ordering::Relaxed);
                    again = true; // check in at once
                }
                continue;
            }
            // The epoch first: a Redis that lost its data gets this replica's whole window
            // (`rewrite`), which includes the journal's calls; one that kept them, the journal.
            let clean = self.clean();
            let since = self.back_since.load(Ordering::Relaxed);
            let downs = self.link.downs();
            match self.link.check_in(since, FRESH, &epoch, clean).await {
                Ok(Ok(_)) if !clean => {
                    again = self.write_back().await;
                }
                Ok(Ok((now, back, fresh))) => {
                    if since == 0 {
                        self.back_since.store(now, Ordering::Relaxed);
                    }
                    let seen = back >= self.replicas && fresh >= self.replicas;
                    self.all_seen.store(seen, Ordering::Relaxed);
                    self.confirmed.store(downs, Ordering::Relaxed);
                }
                Ok(Err(new)) => {
                    self.all_seen.store(false, Ordering::Relaxed);
                    if self.rewrite(own(), !epoch.is_empty(), &new).await {
                        *self.epoch.lock_unpoisoned() = new;
                        again = true; // check in at once
                    }
                }
                Err(_) => self.all_seen.store(false, Ordering::Relaxed),
            }
        }
    }

    /// Whether Redis holds this replica's calls: it checked in, on the data it wrote them to,
    /// since Redis was last away. Until then its admissions do not go through Redis (a Redis that
    /// lost its data would count those calls twice once they are written again).
    pub(super) fn confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Relaxed) == self.link.downs()
    }

    /// Redis lost its data (`lost`; else this replica just started and its calls are all there):
    /// writes this replica's completed calls still in the window again, at their ages, grouped by
    /// tick, and its calls in flight as held slots. The journal's completed calls are among `own`
    /// and need no write of their own; its calls in flight are no longer held.
    async fn rewrite(&self, own: OwnCalls, lost: bool, epoch: &str) -> bool {
        if !lost {
            return true;
        }
        let _one = self.writing.lock().await;
        {
            let mut journal = self.calls.lock_unpoisoned();
            journal
                .map
                .retain(|_, c| matches!(c.state, State::Open { .. }));
            for c in journal.map.values_mut() {
                c.state = State::Open { held: false };
            }
        }
        let Some(n) = self.write_own(own, 0, epoch).await else {
            return false;
        };
        tracing::warn!(
            calls = n,
            "Redis lost its data (restarted without persistence): this replica's calls in the window were written again"
        );
        true
    }

    /// The link moved to another master (a Sentinel failover), which may lack the old one's last
    /// writes: this replica's calls of the last `FAILOVER_LAG` and its calls in flight are
    /// written again, and the journal's calls are no longer taken as held. `tag` names this
    /// failover, so that a rerun writes nothing twice.
    async fn after_failover(&self, own: OwnCalls, tag: &str) -> bool {
        let _one = self.writing.lock().await;
        self.calls.lock_unpoisoned().unhold();
        let since = self
            .clock
            .now()
            .saturating_sub(crate::clock::micros(FAILOVER_LAG));
        let Some(n) = self.write_own(own, since, tag).await else {
            return false;
        };
        tracing::warn!(
            calls = n,
            "the Redis master moved (a failover): this replica's latest calls were written again"
        );
        true
    }

    /// Writes this replica's completed calls (`own`, those completed at or after `since`) at their
    /// ages, grouped by tick, and its calls in flight as held slots; how many entries, or `None`
    /// when Redis could not be told. Members are named by `stamp`, bucket and tick.
    async fn write_own(&self, own: OwnCalls, since: Micros, stamp: &str) -> Option<usize> {
        let now = self.clock.now();
        let tick = (self.window / 3600).max(1000);
        // Named by epoch, bucket and tick, so a rerun (a lost answer) writes nothing twice.
        let stamp = format!("{}:e{stamp}", self.link.replica);
        let mut calls: Vec<Unshared> = Vec::new();
        for (base, times) in own {
            let mut groups: Vec<(Micros, u32)> = Vec::new();
            for t in times
                .into_iter()
                .filter(|&t| t + self.window > now && t >= since)
            {
                match groups.last_mut() {
                    Some((last, n)) if last.div_ceil(tick) == t.div_ceil(tick) => {
                        *last = (*last).max(t);
                        *n += 1;
                    }
                    _ => groups.push((t, 1)),
                }
            }
            calls.extend(groups.into_iter().map(|(t, n)| Unshared {
                member: format!("{stamp}:{base}:{}", t.div_ceil(tick)),
                state: Unsettled::Done(Duration::from_micros(now.saturating_sub(t))),
                buckets: vec![(base.clone(), n)],
            }));
        }
        let admitted = self.admitted.lock_unpoisoned().clone();
        calls.extend(admitted.into_iter().map(|(member, buckets)| Unshared {
            member,
            state: Unsettled::InFlight,
            buckets,
        }));
        for chunk in calls.chunks(CHUNK) {
            if let Err(e) = self.link.write_back(chunk).await {
                tracing::warn!(error = %e, "could not write this replica's calls into Redis again");
                return None;
            }
        }
        Some(calls.len())
    }

    /// Writes what Redis does not know yet; true when the journal is clean afterwards. A failed
    /// write leaves every call as it was, for the next try.
    pub(super) async fn write_back(&self) -> bool {
        let Ok(_one) = self.writing.try_lock() else {
            return false; // another write-back is under way; until it ends, not clean
        };
        for _ in 0..ROUNDS {
            if self.clean() {
                return true;
            }
            if !self.write_once().await {
                return false;
            }
        }
        self.clean()
    }

    async fn write_once(&self) -> bool {
        let now = self.clock.now();
        let age = |at: Micros| Duration::from_micros(now.saturating_sub(at));
        let batch: Vec<(u64, Unshared)> = {
            let mut calls = self.calls.lock_unpoisoned();
            calls.prune(now, self.window);
            calls
                .map
                .iter()
                .filter_map(|(&id, c)| {
                    let state = match c.state {
                        State::Open { held: true } => return None,
                        State::Open { held: false } => Unsettled::InFlight,
                        State::Done { at, held: false } => Unsettled::Done(age(at)),
                        State::Done { at, held: true } => Unsettled::Sent(age(at)),
                        State::Released { .. } => Unsettled::Released,
                    };
                    let call = Unshared {
                        member: c.member.clone(),
                        state,
                        buckets: c.buckets.clone(),
                    };
                    Some((id, call))
                })
                .collect()
        };
        if batch.is_empty() {
            return true;
        }
        let sent: Vec<Unshared> = batch.iter().map(|(_, c)| c.clone()).collect();
        if let Err(e) = self.link.write_back(&sent).await {
            tracing::warn!(error = %e, calls = sent.len(), "could not write back the calls Redis missed; admitting from this replica's share");
            return false;
        }
        tracing::info!(
            calls = sent.len(),
            "wrote back the calls Redis missed while it was away"
        );
        let mut calls = self.calls.lock_unpoisoned();
        for (id, call) in batch {
            if call.state != Unsettled::InFlight {
                calls.map.remove(&id);
                continue;
            }
            // Written in flight: Redis holds its slots now, whatever happened meanwhile.
            if let Some(c) = calls.map.get_mut(&id) {
                c.state = match c.state {
                    State::Open { .. } => State::Open { held: true },
                    State::Done { at, .. } => State::Done { at, held: true },
                    State::Released { .. } => State::Released { held: true },
                };
            }
        }
        true
    }
}
