//! Rolling-window buckets per app, per WABA and per credit line, counted exactly as Meta counts
//! them, plus Meta's own view of them (usage headers, throttling errors) and per-client quotas.
//!
//! A bucket is a sliding log: the completion times of calls in the last window plus the calls in
//! flight. A call holds a slot from admission; its time in the log is when its response came back
//! (the latest moment Meta can have counted it). Check-and-take is one step under the bucket's
//! lock, and a refused call is never recorded. This module must never let more than `limit` calls
//! into any window of a bucket, never sleep or poll while holding a lock, and never read bodies.
//! See docs/limits.md for why a token bucket or fixed window would not do.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::{clock::Clock as _, DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::classify::{Class, Known};
use crate::clock::{micros, Micros, SharedClock};
use crate::config::{Active, AppLimits, Config, OnBackendError, OnLimit};
use crate::shared::{Admission, Event, Shared};
use crate::sync::{MutexExt, RwLockExt};

/// Which bucket a call spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    pub app: usize,
    pub scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Waba(String),
    CreditLine,
    Other,
}

impl Scope {
    pub fn from_class(class: &Class) -> Scope {
        match class {
            Class::Waba(id) => Scope::Waba(id.clone()),
            Class::CreditLine => Scope::CreditLine,
            Class::Other => Scope::Other,
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

    fn parse(s: &str) -> Option<Scope> {
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

struct Bucket {
    limit: u32,
    /// Completion times, ascending, all within the last window (pruned lazily).
    done: VecDeque<Micros>,
    inflight: u32,
    blocked_until: Micros,
    /// FIFO tickets of callers waiting in `wait` mode; only the head may take a slot.
    queue: VecDeque<u64>,
    notify: Arc<Notify>,
    reported: Option<Reported>,
    rejected: u64,
}

impl Bucket {
    fn new(limit: u32) -> Bucket {
        Bucket {
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
    fn prune(&mut self, now: Micros, window: Micros) {
        while self.done.front().is_some_and(|&t| t + window <= now) {
            self.done.pop_front();
        }
    }

    fn used(&self) -> u32 {
        self.done.len() as u32 + self.inflight
    }

    /// When the next slot frees: the oldest completed call leaves the window. With only calls in
    /// flight, the earliest is a full window from now.
    fn next_free(&self, now: Micros, window: Micros) -> Micros {
        self.done
            .front()
            .map(|&t| t + window)
            .unwrap_or(now + window)
            .max(now)
    }

    fn record(&mut self, at: Micros) {
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

    /// Heap bytes this bucket holds (for the memory figure in docs/benchmarks.md).
    fn heap_bytes(&self) -> usize {
        self.done.capacity() * std::mem::size_of::<Micros>() + self.queue.capacity() * 8
    }
}

type SharedBucket = Arc<Mutex<Bucket>>;

/// Per-process limiter state. Cheap to share behind an `Arc`.
pub struct Limiter {
    clock: SharedClock,
    window: Micros,
    on_limit: OnLimit,
    max_wait: Duration,
    reserve_percent: u32,
    throttle_block: Micros,
    state_file: Option<PathBuf>,
    apps: Vec<AppPolicy>,
    // The map lock is held only to find or insert a bucket; each bucket has its own lock.
    buckets: RwLock<foldhash::HashMap<BucketKey, SharedBucket>>,
    /// Learned and configured object kinds, read by classification on every request.
    known: RwLock<Known>,
    /// App-wide blocks (Meta's code 4 and X-App-Usage at 100%), per app index.
    app_blocked_until: Mutex<Vec<Micros>>,
    app_reported: Mutex<Vec<Option<Reported>>>,
    /// The usage headers last parsed, per app.
    last_usage: Mutex<Vec<(Option<String>, Option<String>)>>,
    quotas: Vec<Option<DefaultDirectRateLimiter>>,
    next_ticket: std::sync::atomic::AtomicU64,
    /// Buckets shared with other replicas through Redis, when configured.
    shared: Option<Arc<Shared>>,
    on_backend_error: OnBackendError,
    /// In local fallback, each replica spends `limit / replicas`.
    replicas: u32,
    /// How long a shared in-flight slot is held if its replica never settles it.
    lease: Duration,
}

struct AppPolicy {
    name: String,
    limits: AppLimits,
    /// WABA id -> (configured active state, fixed limit).
    wabas: foldhash::HashMap<String, (Active, Option<u32>)>,
    /// Learned state of `active = "auto"` WABAs.
    learned_active: Mutex<foldhash::HashMap<String, bool>>,
}

/// A slot in one or more buckets, held from admission until the call's response (or failure).
pub struct Permit {
    limiter: Arc<Limiter>,
    slots: Vec<(SharedBucket, u32)>,
    /// Slots taken in Redis, when the buckets are shared.
    remote: Option<Remote>,
    sent: bool,
    settled: bool,
    pub budgets: Vec<Budget>,
}

/// An admission held in Redis: bucket bases with counts, the admission's member id, and the keys
/// (mirrored into the local log so a fallback knows what this replica spent).
struct Remote {
    buckets: Vec<(String, u32)>,
    member: String,
    keys: Vec<(BucketKey, u32)>,
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
        if let (
            Some(Remote {
                buckets,
                member,
                keys,
            }),
            Some(shared),
        ) = (self.remote.take(), &self.limiter.shared)
        {
            shared.settle(buckets, member, self.sent);
            if self.sent {
                let now = self.limiter.clock.now();
                for (key, n) in keys {
                    if let Some(limit) = self.limiter.limit_of(&key) {
                        let bucket = self.limiter.bucket(&key, limit);
                        let mut b = bucket.lock_unpoisoned();
                        b.prune(now, self.limiter.window);
                        for _ in 0..n {
                            b.record(now);
                        }
                    }
                }
            }
        }
        let now = self.limiter.clock.now();
        for (bucket, n) in &self.slots {
            let mut b = bucket.lock_unpoisoned();
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

impl Limiter {
    pub fn new(config: &Config, clock: SharedClock) -> Limiter {
        let l = &config.limits;
        let apps = config
            .apps
            .iter()
            .map(|a| AppPolicy {
                name: a.name.clone(),
                limits: a.limits,
                wabas: a
                    .wabas
                    .iter()
                    .map(|w| (w.id.clone(), (w.active, w.limit)))
                    .collect(),
                learned_active: Mutex::new(foldhash::HashMap::default()),
            })
            .collect();
        let mut known = Known::default();
        for app in &config.apps {
            for w in &app.wabas {
                known.wabas.insert(w.id.clone());
                for s in &w.status_ids {
                    known.status_ids.insert(s.clone(), w.id.clone());
                }
            }
        }
        known
            .allocation_configs
            .extend(l.allocation_configs.iter().cloned());
        let quotas = config
            .clients
            .iter()
            .map(|c| {
                c.rate.and_then(|r| {
                    let per_cell = r.per / r.count;
                    let burst = NonZeroU32::new(r.count)?;
                    Quota::with_period(per_cell).map(|q| RateLimiter::direct(q.allow_burst(burst)))
                })
            })
            .collect();
        Limiter {
            clock,
            window: micros(l.window),
            on_limit: l.on_limit,
            max_wait: l.max_wait,
            reserve_percent: l.reserve_percent,
            throttle_block: micros(l.throttle_block),
            state_file: l.state_file.clone(),
            app_blocked_until: Mutex::new(vec![0; config.apps.len()]),
            app_reported: Mutex::new(vec![None; config.apps.len()]),
            last_usage: Mutex::new(vec![(None, None); config.apps.len()]),
            apps,
            buckets: RwLock::new(foldhash::HashMap::default()),
            known: RwLock::new(known),
            quotas,
            next_ticket: std::sync::atomic::AtomicU64::new(1),
            shared: l.redis.as_ref().and_then(|r| {
                match Shared::new(&r.url, &r.prefix, r.timeout) {
                    Ok(s) => Some(Arc::new(s)),
                    Err(e) => {
                        tracing::error!(error = %e, "the Redis backend cannot be used");
                        None
                    }
                }
            }),
            on_backend_error: l
                .redis
                .as_ref()
                .map(|r| r.on_error)
                .unwrap_or(OnBackendError::Local),
            replicas: l.redis.as_ref().map(|r| r.replicas).unwrap_or(1),
            // Longer than any call can take, so a live replica always settles first.
            lease: config.upstream.request_timeout + Duration::from_secs(30),
        }
    }

    pub fn now(&self) -> Micros {
        self.clock.now()
    }

    pub fn window(&self) -> Duration {
        Duration::from_micros(self.window)
    }

    pub fn on_limit(&self) -> OnLimit {
        self.on_limit
    }

    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// Runs `f` with the current object kinds (for classification).
    pub fn with_known<R>(&self, f: impl FnOnce(&Known) -> R) -> R {
        f(&self.known.read_unpoisoned())
    }

    /// The limit of a bucket now, or `None` for an unlimited one.
    pub fn limit_of(&self, key: &BucketKey) -> Option<u32> {
        let app = self.apps.get(key.app)?;
        match &key.scope {
            Scope::CreditLine => Some(app.limits.credit_line),
            Scope::Other => app.limits.other,
            Scope::Waba(id) => {
                let (active, fixed) = app.wabas.get(id).copied().unwrap_or((Active::Auto, None));
                if let Some(n) = fixed {
                    return Some(n);
                }
                let is_active = match active {
                    Active::Yes => true,
                    Active::No => false,
                    Active::Auto => app
                        .learned_active
                        .lock_unpoisoned()
                        .get(id)
                        .copied()
                        .unwrap_or(false),
                };
                Some(if is_active {
                    app.limits.waba_active
                } else {
                    app.limits.waba_default
                })
            }
        }
    }

    fn bucket(&self, key: &BucketKey, limit: u32) -> SharedBucket {
        if let Some(b) = self.buckets.read_unpoisoned().get(key) {
            return b.clone();
        }
        self.buckets
            .write_unpoisoned()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Bucket::new(limit))))
            .clone()
    }

    /// The client's own `rate` quota (governor GCRA), checked before any Meta bucket.
    pub fn check_client_quota(&self, client: Option<usize>, app: usize) -> Result<(), Refusal> {
        let Some(Some(q)) = client.map(|c| self.quotas.get(c).and_then(|q| q.as_ref())) else {
            return Ok(());
        };
        q.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            Refusal {
                app: self.app_name(app),
                scope: Scope::Other,
                limit: 0,
                window: self.window(),
                retry_after: wait,
                reason: RefusalReason::ClientQuota,
            }
        })
    }

    fn app_name(&self, app: usize) -> String {
        self.apps
            .get(app)
            .map(|a| a.name.clone())
            .unwrap_or_default()
    }

    /// Takes `n` slots in each keyed bucket, all or nothing. Buckets without a limit are skipped.
    /// `reserve` lets the caller spend the reserved share; `ticket` is its place in a wait queue.
    fn try_take(
        self: &Arc<Self>,
        wants: &[(BucketKey, u32)],
        reserve: bool,
        ticket: Option<u64>,
        share: u32,
    ) -> Result<Permit, (Refusal, SharedBucket)> {
        let now = self.clock.now();
        let mut picked: Vec<(BucketKey, SharedBucket, u32, u32)> = Vec::new();
        for (key, n) in wants {
            let Some(limit) = self.limit_of(key) else {
                continue;
            };
            // In local fallback from a shared backend, this replica spends only its share.
            let limit = limit / share.max(1);
            match picked.iter_mut().find(|(k, ..)| k == key) {
                Some(p) => p.2 += n,
                None => picked.push((key.clone(), self.bucket(key, limit), *n, limit)),
            }
        }
        // A consistent lock order keeps two batches from deadlocking each other.
        picked.sort_by(|a, b| a.0.cmp(&b.0));
        let app_block = wants
            .first()
            .map(|(k, _)| {
                self.app_blocked_until
                    .lock_unpoisoned()
                    .get(k.app)
                    .copied()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        // An app-wide block (Meta's code 4) stops unlimited calls too, not only counted buckets.
        if picked.is_empty() && app_block > now {
            if let Some((key, _)) = wants.first() {
                let bucket = self.bucket(key, 0);
                return Err((
                    Refusal {
                        app: self.app_name(key.app),
                        scope: key.scope.clone(),
                        limit: 0,
                        window: self.window(),
                        retry_after: Duration::from_micros(app_block - now),
                        reason: RefusalReason::Blocked,
                    },
                    bucket,
                ));
            }
        }
        let mut guards: Vec<_> = picked
            .iter()
            .map(|(_, b, ..)| b.lock_unpoisoned())
            .collect();
        for (i, (key, bucket, n, limit)) in picked.iter().enumerate() {
            let g = &mut guards[i];
            g.limit = *limit;
            g.prune(now, self.window);
            let refuse = |retry_at: Micros, reason| Refusal {
                app: self.app_name(key.app),
                scope: key.scope.clone(),
                limit: *limit,
                window: self.window(),
                retry_after: Duration::from_micros(retry_at.saturating_sub(now)),
                reason,
            };
            let blocked_until = g.blocked_until.max(app_block);
            if blocked_until > now {
                g.rejected += 1;
                return Err((
                    refuse(blocked_until, RefusalReason::Blocked),
                    bucket.clone(),
                ));
            }
            // Someone queued earlier goes first.
            if g.queue.front().is_some_and(|&head| Some(head) != ticket) {
                g.rejected += 1;
                return Err((
                    refuse(g.next_free(now, self.window), RefusalReason::Full),
                    bucket.clone(),
                ));
            }
            let usable = if reserve {
                *limit
            } else {
                limit - limit * self.reserve_percent / 100
            };
            if g.used() + n > usable {
                g.rejected += 1;
                // How long until enough of the oldest calls have left the window.
                let need = (g.used() + n - usable) as usize;
                let retry_at = match g.done.get(need - 1) {
                    Some(&t) => (t + self.window).max(now),
                    None => now + self.window,
                };
                return Err((refuse(retry_at, RefusalReason::Full), bucket.clone()));
            }
        }
        let mut budgets = Vec::with_capacity(picked.len());
        for (i, (key, _, n, limit)) in picked.iter().enumerate() {
            let g = &mut guards[i];
            g.inflight += n;
            budgets.push(Budget {
                scope: key.scope.clone(),
                limit: *limit,
                remaining: limit.saturating_sub(g.used()),
                reset: Duration::from_micros(g.next_free(now, self.window) - now),
                window: self.window(),
            });
        }
        drop(guards);
        Ok(Permit {
            limiter: self.clone(),
            slots: picked.into_iter().map(|(_, b, n, _)| (b, n)).collect(),
            remote: None,
            sent: false,
            settled: false,
            budgets,
        })
    }

    /// Admits a call or refuses it at once.
    pub fn try_admit(
        self: &Arc<Self>,
        wants: &[(BucketKey, u32)],
        reserve: bool,
    ) -> Result<Permit, Refusal> {
        self.try_take(wants, reserve, None, 1).map_err(|(r, _)| r)
    }

    /// Admits a call: through Redis when the buckets are shared, else (or when Redis is away and
    /// the policy allows) in this process. Waits up to `max_wait` in `wait` mode.
    pub async fn admit(
        self: &Arc<Self>,
        wants: &[(BucketKey, u32)],
        reserve: bool,
        max_wait: Duration,
    ) -> Result<Permit, Refusal> {
        let Some(shared) = &self.shared else {
            return self.admit_local(wants, reserve, max_wait, 1).await;
        };
        // A block learned here counts at once, even before it has reached Redis.
        if let Some(r) = self.local_block(wants) {
            return Err(r);
        }
        if shared.available() {
            let deadline = tokio::time::Instant::now() + max_wait;
            loop {
                match self.admit_shared(shared, wants, reserve).await {
                    Ok(Ok(p)) => return Ok(p),
                    // Across replicas there is no shared queue: a waiter sleeps until the slot it
                    // was told about frees, then asks again.
                    Ok(Err(r)) => {
                        if self.on_limit == OnLimit::Reject
                            || tokio::time::Instant::now() + r.retry_after > deadline
                        {
                            return Err(r);
                        }
                        tokio::time::sleep(r.retry_after.max(Duration::from_millis(1))).await;
                    }
                    Err(()) => break,
                }
            }
        }
        match self.on_backend_error {
            OnBackendError::Local => {
                self.admit_local(wants, reserve, max_wait, self.replicas)
                    .await
            }
            OnBackendError::Reject => Err(Refusal {
                app: wants
                    .first()
                    .map(|(k, _)| self.app_name(k.app))
                    .unwrap_or_default(),
                scope: wants
                    .first()
                    .map(|(k, _)| k.scope.clone())
                    .unwrap_or(Scope::Other),
                limit: 0,
                window: self.window(),
                retry_after: Duration::from_secs(1),
                reason: RefusalReason::Unavailable,
            }),
        }
    }

    /// A block (bucket or app-wide) this process knows of for any of `wants`.
    fn local_block(&self, wants: &[(BucketKey, u32)]) -> Option<Refusal> {
        let now = self.clock.now();
        for (key, _) in wants {
            let app_block = self
                .app_blocked_until
                .lock_unpoisoned()
                .get(key.app)
                .copied()
                .unwrap_or(0);
            let bucket_block = self
                .buckets
                .read_unpoisoned()
                .get(key)
                .map(|b| b.lock_unpoisoned().blocked_until)
                .unwrap_or(0);
            let until = app_block.max(bucket_block);
            if until > now {
                return Some(Refusal {
                    app: self.app_name(key.app),
                    scope: key.scope.clone(),
                    limit: self.limit_of(key).unwrap_or(0),
                    window: self.window(),
                    retry_after: Duration::from_micros(until - now),
                    reason: RefusalReason::Blocked,
                });
            }
        }
        None
    }

    /// One admission through Redis. `Err(())` when Redis failed or was too slow.
    async fn admit_shared(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        wants: &[(BucketKey, u32)],
        reserve: bool,
    ) -> Result<Result<Permit, Refusal>, ()> {
        let mut picked: Vec<(BucketKey, String, u32, u32)> = Vec::new();
        for (key, n) in wants {
            let Some(limit) = self.limit_of(key) else {
                continue;
            };
            let usable = if reserve {
                limit
            } else {
                limit - limit * self.reserve_percent / 100
            };
            match picked.iter_mut().find(|(k, ..)| k == key) {
                Some(p) => p.3 += n,
                None => picked.push((
                    key.clone(),
                    shared.bucket_base(&self.app_name(key.app), &key.scope.label()),
                    usable,
                    *n,
                )),
            }
        }
        let permit = |remote, budgets| Permit {
            limiter: self.clone(),
            slots: Vec::new(),
            remote,
            sent: false,
            settled: false,
            budgets,
        };
        if picked.is_empty() {
            return Ok(Ok(permit(None, Vec::new())));
        }
        let args: Vec<(String, u32, u32)> = picked
            .iter()
            .map(|(_, base, limit, n)| (base.clone(), *limit, *n))
            .collect();
        let app = self.app_name(picked[0].0.app);
        let member = shared.new_member();
        match shared
            .admit(&app, &args, self.window(), self.lease, &member)
            .await
        {
            Ok(Admission::Taken { member, budgets }) => {
                let budgets = picked
                    .iter()
                    .zip(budgets)
                    .map(|((key, _, _, _), (remaining, reset_us))| Budget {
                        scope: key.scope.clone(),
                        limit: self.limit_of(key).unwrap_or(0),
                        remaining,
                        reset: Duration::from_micros(reset_us),
                        window: self.window(),
                    })
                    .collect();
                let remote = picked
                    .iter()
                    .map(|(_, base, _, n)| (base.clone(), *n))
                    .collect();
                let keys = picked.iter().map(|(k, _, _, n)| (k.clone(), *n)).collect();
                Ok(Ok(permit(
                    Some(Remote {
                        buckets: remote,
                        member,
                        keys,
                    }),
                    budgets,
                )))
            }
            Ok(Admission::Refused {
                index,
                retry_us,
                blocked,
            }) => {
                let (key, _, _, _) = &picked[index.min(picked.len() - 1)];
                Ok(Err(Refusal {
                    app: self.app_name(key.app),
                    scope: key.scope.clone(),
                    limit: self.limit_of(key).unwrap_or(0),
                    window: self.window(),
                    retry_after: Duration::from_micros(retry_us),
                    reason: if blocked {
                        RefusalReason::Blocked
                    } else {
                        RefusalReason::Full
                    },
                }))
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis admission failed; using the fallback");
                // The script may have run before the answer was lost: give its slots back.
                let remote = picked
                    .iter()
                    .map(|(_, base, _, n)| (base.clone(), *n))
                    .collect();
                shared.settle(remote, member, false);
                Err(())
            }
        }
    }

    /// `"memory"`, or the state of the shared backend (`"up"`, `"down"`, `"connecting"`).
    pub fn backend_state(&self) -> &'static str {
        self.shared.as_ref().map(|s| s.state()).unwrap_or("memory")
    }

    /// Whether calls are refused (503) while the shared backend is away.
    pub fn backend_rejects(&self) -> bool {
        self.shared.is_some() && self.on_backend_error == OnBackendError::Reject
    }

    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// Admits a call in this process, waiting in FIFO order up to `max_wait` in `wait` mode.
    async fn admit_local(
        self: &Arc<Self>,
        wants: &[(BucketKey, u32)],
        reserve: bool,
        max_wait: Duration,
        share: u32,
    ) -> Result<Permit, Refusal> {
        let first = match self.try_take(wants, reserve, None, share) {
            Ok(p) => return Ok(p),
            Err(e) => e,
        };
        if self.on_limit == OnLimit::Reject || first.0.reason == RefusalReason::ClientQuota {
            return Err(first.0);
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        let ticket = self
            .next_ticket
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (mut refusal, bucket) = first;
        // The ticket leaves the queue however this function ends (admitted, timed out, dropped).
        let _queued = QueueGuard::enter(bucket.clone(), ticket);
        loop {
            let now_t = tokio::time::Instant::now();
            // Nothing frees up before the caller's deadline: say so now rather than hold it.
            if now_t + refusal.retry_after > deadline {
                return Err(refusal);
            }
            let notify = bucket.lock_unpoisoned().notify.clone();
            let notified = notify.notified();
            let wake = (now_t + refusal.retry_after).min(deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = notified => {}
            }
            match self.try_take(wants, reserve, Some(ticket), share) {
                Ok(p) => return Ok(p),
                Err((r, _)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(r);
                    }
                    refusal = r;
                }
            }
        }
    }

    // ------------------------------------------------------------ Meta's view

    /// Reads Meta's usage headers from a response to a call on `key` and adjusts local state:
    /// a higher count than ours raises ours; 100% blocks until the regain time.
    pub fn observe_usage(&self, app: usize, bucket_usage: Option<&str>, app_usage: Option<&str>) {
        // Meta repeats the same figures across many answers; parse only when they change.
        {
            let mut last = self.last_usage.lock_unpoisoned();
            let Some(slot) = last.get_mut(app) else {
                return;
            };
            let same = slot.0.as_deref() == bucket_usage && slot.1.as_deref() == app_usage;
            if same {
                return;
            }
            *slot = (
                bucket_usage.map(str::to_string),
                app_usage.map(str::to_string),
            );
        }
        let now = self.clock.now();
        if let Some(raw) = bucket_usage {
            if let Ok(map) = serde_json::from_str::<HashMap<String, Vec<serde_json::Value>>>(raw) {
                for (object, entries) in map {
                    for e in entries {
                        let typ = e.get("type").and_then(|t| t.as_str()).unwrap_or("");
                        if typ != "whatsapp_business_management" {
                            continue;
                        }
                        let rep = Reported {
                            call_count: pct(&e, "call_count"),
                            total_cputime: pct(&e, "total_cputime"),
                            total_time: pct(&e, "total_time"),
                            regain_minutes: pct(&e, "estimated_time_to_regain_access"),
                        };
                        let key = BucketKey {
                            app,
                            scope: Scope::Waba(object.clone()),
                        };
                        self.apply_report(&key, rep, now);
                    }
                }
            }
        }
        if let Some(raw) = app_usage {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(raw) {
                let rep = Reported {
                    call_count: pct(&v, "call_count"),
                    total_cputime: pct(&v, "total_cputime"),
                    total_time: pct(&v, "total_time"),
                    regain_minutes: 0,
                };
                // Kept for the admin view only: WhatsApp calls are limited by the BUC figures
                // (Meta applies BUC where both apply), and a throttled app says so with code 4.
                if let Some(slot) = self.app_reported.lock_unpoisoned().get_mut(app) {
                    *slot = Some(rep);
                }
            }
        }
    }

    fn apply_report(&self, key: &BucketKey, rep: Reported, now: Micros) {
        let Some(limit) = self.limit_of(key) else {
            return;
        };
        let bucket = self.bucket(key, limit);
        let mut b = bucket.lock_unpoisoned();
        b.prune(now, self.window);
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
        let used = b.used();
        if meta_count > used {
            for _ in used..meta_count {
                b.record(now);
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
            b.blocked_until = b.blocked_until.max(now + micros(block));
        }
        b.reported = Some(rep);
        drop(b);
        self.share_raise(key, meta_count, block);
    }

    /// Applies a raised count or a block to the shared bucket too, so every replica stops.
    fn share_raise(&self, key: &BucketKey, target: u32, block: Duration) {
        let (Some(shared), Ok(handle)) =
            (self.shared.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        if !shared.available() || (target == 0 && block.is_zero()) {
            return;
        }
        let base = match &key.scope {
            // An app-wide block lives in the app's own key, checked by every admission.
            Scope::Other if target == u32::MAX => shared.app_base(&self.app_name(key.app)),
            scope => shared.bucket_base(&self.app_name(key.app), &scope.label()),
        };
        let target = if target == u32::MAX { 0 } else { target };
        let window = self.window();
        handle.spawn(async move {
            if let Err(e) = shared.raise(&base, target, window, block).await {
                tracing::warn!(error = %e, "could not share Meta's feedback through Redis");
            }
        });
    }

    /// Meta answered a throttling error for a call on `key`: stop calling it until regain time.
    pub fn observe_throttle(&self, key: &BucketKey, code: u64, regain: Option<Duration>) {
        let now = self.clock.now();
        let until = now
            + regain
                .map(micros)
                .filter(|&m| m > 0)
                .unwrap_or(self.throttle_block);
        let block = Duration::from_micros(until - now);
        // Code 4 (and 17, the token's user) is app-wide; the others name the object's bucket.
        if code == 4 || code == 17 {
            self.block_app(key.app, until);
            self.share_raise(
                &BucketKey {
                    app: key.app,
                    scope: Scope::Other,
                },
                u32::MAX,
                block,
            );
            return;
        }
        let Some(limit) = self.limit_of(key) else {
            return;
        };
        let bucket = self.bucket(key, limit);
        let mut b = bucket.lock_unpoisoned();
        b.blocked_until = b.blocked_until.max(until);
        drop(b);
        self.share_raise(key, 0, block);
    }

    fn block_app(&self, app: usize, until: Micros) {
        if let Some(slot) = self.app_blocked_until.lock_unpoisoned().get_mut(app) {
            *slot = (*slot).max(until);
        }
    }

    /// Records whether an `active = "auto"` WABA has a registered phone number.
    pub fn learn_active(&self, app: usize, waba: &str, active: bool) {
        if self.set_active(app, waba, active) {
            self.share(Event::Active {
                app: self.app_name(app),
                waba: waba.to_string(),
                active,
            });
        }
    }

    /// Publishes a learned fact to the other replicas, in the background.
    fn share(&self, event: Event) {
        let (Some(shared), Ok(handle)) =
            (self.shared.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        handle.spawn(async move {
            if let Err(e) = shared.share(event).await {
                tracing::warn!(error = %e, "could not share a learned fact through Redis");
            }
        });
    }

    /// Tells the other replicas to drop cached entries under `prefix` of `app`.
    pub fn share_purge(&self, app: usize, prefix: &str) {
        self.share(Event::Purge {
            app: self.app_name(app),
            prefix: prefix.to_string(),
        });
    }

    /// Applies a fact another replica learned. Returns the cache purge it asks for, if any.
    pub fn apply_event(&self, event: &Event) -> Option<(usize, String)> {
        let app_index = |name: &str| self.apps.iter().position(|a| a.name == name);
        match event {
            Event::Active { app, waba, active } => {
                if let Some(i) = app_index(app) {
                    self.set_active(i, waba, *active);
                }
                None
            }
            Event::AllocationConfig { id } => {
                self.add_allocation_config(id);
                None
            }
            Event::Purge { app, prefix } => app_index(app).map(|i| (i, prefix.clone())),
            Event::Resubscribed => None,
        }
    }

    /// Records whether an auto WABA is active; true if that changed anything.
    fn set_active(&self, app: usize, waba: &str, active: bool) -> bool {
        let Some(policy) = self.apps.get(app) else {
            return false;
        };
        if !matches!(policy.wabas.get(waba), Some((Active::Auto, None))) {
            return false;
        }
        let changed = policy
            .learned_active
            .lock_unpoisoned()
            .insert(waba.to_string(), active)
            != Some(active);
        if changed {
            tracing::info!(app = %policy.name, waba, active, "WABA activity learned");
            let key = BucketKey {
                app,
                scope: Scope::Waba(waba.to_string()),
            };
            if let (Some(limit), Some(b)) = (
                self.limit_of(&key),
                self.buckets.read_unpoisoned().get(&key),
            ) {
                let mut b = b.lock_unpoisoned();
                b.limit = limit;
                b.notify.notify_waiters();
            }
        }
        changed
    }

    /// WABAs of `active = "auto"` that a probe should look at, per app.
    pub fn auto_wabas(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, a) in self.apps.iter().enumerate() {
            for (id, (active, fixed)) in &a.wabas {
                if *active == Active::Auto && fixed.is_none() {
                    out.push((i, id.clone()));
                }
            }
        }
        out.sort();
        out
    }

    pub fn learn_allocation_config(&self, id: &str) {
        if self.add_allocation_config(id) {
            self.share(Event::AllocationConfig { id: id.to_string() });
        }
    }

    fn add_allocation_config(&self, id: &str) -> bool {
        crate::ids::is_graph_id(id)
            && self
                .known
                .write_unpoisoned()
                .allocation_configs
                .insert(id.to_string())
    }

    // ------------------------------------------------------------ inspection

    /// Forgets buckets with nothing in their window, nothing in flight, no block and no waiters, so
    /// a caller naming ever new objects cannot grow the map without bound. Returns how many went.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now();
        let mut map = self.buckets.write_unpoisoned();
        let before = map.len();
        map.retain(|_, b| {
            let mut b = b.lock_unpoisoned();
            b.prune(now, self.window);
            !(b.done.is_empty() && b.inflight == 0 && b.blocked_until <= now && b.queue.is_empty())
        });
        before - map.len()
    }

    /// Every bucket used so far, copied out so no map lock is held while they are read.
    fn all_buckets(&self) -> Vec<(BucketKey, SharedBucket)> {
        self.buckets
            .read_unpoisoned()
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect()
    }

    /// A snapshot of every bucket that has been used.
    pub fn snapshot(&self) -> Vec<BucketView> {
        let now = self.clock.now();
        let buckets = self.all_buckets();
        let app_blocks = self.app_blocked_until.lock_unpoisoned().clone();
        let mut out: Vec<BucketView> = buckets
            .into_iter()
            .map(|(key, b)| {
                let mut b = b.lock_unpoisoned();
                b.prune(now, self.window);
                let blocked = b
                    .blocked_until
                    .max(app_blocks.get(key.app).copied().unwrap_or(0));
                BucketView {
                    app: self.app_name(key.app),
                    scope: key.scope.label(),
                    limit: b.limit,
                    used: b.used(),
                    in_flight: b.inflight,
                    remaining: b.limit.saturating_sub(b.used()),
                    reset_in_secs: (b.next_free(now, self.window) - now).div_ceil(1_000_000),
                    blocked_for_secs: blocked.saturating_sub(now).div_ceil(1_000_000),
                    waiting: b.queue.len(),
                    rejected: b.rejected,
                    reported: b.reported.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.app, &a.scope).cmp(&(&b.app, &b.scope)));
        out
    }

    /// Meta's latest app-wide usage (`X-App-Usage`) per app name, for the admin view and metrics.
    pub fn app_usage(&self) -> Vec<(String, Option<Reported>)> {
        let reported = self.app_reported.lock_unpoisoned().clone();
        self.apps
            .iter()
            .zip(reported)
            .map(|(a, r)| (a.name.clone(), r))
            .collect()
    }

    /// Every bucket as the admin view shows it: from Redis when the buckets are shared (so every
    /// replica shows the same), else from this process.
    pub async fn view(&self) -> Vec<BucketView> {
        let local = self.snapshot();
        let Some(shared) = self.shared.as_ref().filter(|s| s.available()) else {
            return local;
        };
        let mut keys: Vec<BucketKey> = Vec::new();
        for (i, a) in self.apps.iter().enumerate() {
            keys.extend(a.wabas.keys().map(|w| BucketKey {
                app: i,
                scope: Scope::Waba(w.clone()),
            }));
            keys.push(BucketKey {
                app: i,
                scope: Scope::CreditLine,
            });
        }
        for k in self.buckets.read_unpoisoned().keys() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(limit) = self.limit_of(&key) else {
                continue;
            };
            let (app, scope) = (self.app_name(key.app), key.scope.label());
            let Ok((done, in_flight, reset, blocked)) = shared
                .peek(&shared.bucket_base(&app, &scope), self.window())
                .await
            else {
                return local;
            };
            let prior = local.iter().find(|b| b.app == app && b.scope == scope);
            let used = done + in_flight;
            out.push(BucketView {
                app,
                scope,
                limit,
                used,
                in_flight,
                remaining: limit.saturating_sub(used),
                reset_in_secs: reset.as_micros().div_ceil(1_000_000) as u64,
                blocked_for_secs: blocked.as_micros().div_ceil(1_000_000) as u64,
                waiting: prior.map(|b| b.waiting).unwrap_or(0),
                rejected: prior.map(|b| b.rejected).unwrap_or(0),
                reported: prior.and_then(|b| b.reported.clone()),
            });
        }
        out
    }

    /// Bytes used by one bucket: the struct, its `Arc<Mutex<_>>`, and its heap.
    pub fn bucket_bytes(&self, key: &BucketKey) -> Option<usize> {
        let b = self.buckets.read_unpoisoned().get(key)?.clone();
        let b = b.lock_unpoisoned();
        Some(std::mem::size_of::<Mutex<Bucket>>() + 16 + b.heap_bytes())
    }

    // ------------------------------------------------------------ persistence

    /// Writes every bucket's log to `limits.state_file` (atomically, via a temporary file).
    /// Calls still in flight are written as completed now, the conservative choice.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let now = self.clock.now();
        let buckets = self.all_buckets();
        let mut state = State {
            version: 1,
            saved_at: now,
            buckets: Vec::new(),
            allocation_configs: Vec::new(),
            active: Vec::new(),
        };
        for (key, b) in buckets {
            let mut b = b.lock_unpoisoned();
            b.prune(now, self.window);
            let mut done: Vec<Micros> = b.done.iter().copied().collect();
            done.extend(std::iter::repeat_n(now, b.inflight as usize));
            if done.is_empty() && b.blocked_until <= now {
                continue;
            }
            state.buckets.push(SavedBucket {
                app: self.app_name(key.app),
                scope: key.scope.label(),
                done,
                blocked_until: b.blocked_until,
            });
        }
        state.allocation_configs = self
            .known
            .read_unpoisoned()
            .allocation_configs
            .iter()
            .cloned()
            .collect();
        state.allocation_configs.sort();
        for a in &self.apps {
            for (w, active) in a.learned_active.lock_unpoisoned().iter() {
                state.active.push((a.name.clone(), w.clone(), *active));
            }
        }
        write_atomic(
            path,
            &serde_json::to_vec(&state).map_err(std::io::Error::other)?,
        )
    }

    /// Restores what [`Limiter::save`] wrote. Unknown apps and expired entries are skipped.
    pub fn restore(&self) -> std::io::Result<usize> {
        let Some(path) = &self.state_file else {
            return Ok(0);
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let state: State = serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        let now = self.clock.now();
        let mut restored = 0;
        for (app_name, waba, active) in state.active {
            if let Some(i) = self.apps.iter().position(|a| a.name == app_name) {
                self.learn_active(i, &waba, active);
            }
        }
        for sb in state.buckets {
            let (Some(app), Some(scope)) = (
                self.apps.iter().position(|a| a.name == sb.app),
                Scope::parse(&sb.scope),
            ) else {
                continue;
            };
            let key = BucketKey { app, scope };
            let Some(limit) = self.limit_of(&key) else {
                continue;
            };
            let bucket = self.bucket(&key, limit);
            let mut b = bucket.lock_unpoisoned();
            for t in sb.done {
                if t + self.window > now {
                    b.record(t);
                    restored += 1;
                }
            }
            b.blocked_until = b.blocked_until.max(sb.blocked_until);
        }
        let mut known = self.known.write_unpoisoned();
        known.allocation_configs.extend(state.allocation_configs);
        Ok(restored)
    }
}

/// Removes a waiter's ticket from its bucket's queue and wakes the next one.
struct QueueGuard {
    bucket: SharedBucket,
    ticket: u64,
}

impl QueueGuard {
    fn enter(bucket: SharedBucket, ticket: u64) -> QueueGuard {
        bucket.lock_unpoisoned().queue.push_back(ticket);
        QueueGuard { bucket, ticket }
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let mut b = self.bucket.lock_unpoisoned();
        b.queue.retain(|&t| t != self.ticket);
        b.notify.notify_waiters();
    }
}

fn pct(v: &serde_json::Value, key: &str) -> u32 {
    v.get(key)
        .and_then(|x| x.as_f64())
        .map(|f| f.clamp(0.0, 1e6).ceil() as u32)
        .unwrap_or(0)
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

#[derive(Serialize, Deserialize)]
struct State {
    version: u32,
    saved_at: Micros,
    buckets: Vec<SavedBucket>,
    #[serde(default)]
    allocation_configs: Vec<String>,
    #[serde(default)]
    active: Vec<(String, String, bool)>,
}

#[derive(Serialize, Deserialize)]
struct SavedBucket {
    app: String,
    scope: String,
    done: Vec<Micros>,
    blocked_until: Micros,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Object ids a throttling error code means "stop". See docs/limits.md.
pub fn is_throttling_code(code: u64) -> bool {
    matches!(
        code,
        4 | 17 | 32 | 613 | 80000..=80014 | 130429 | 131048 | 131056 | 133016
    )
}

/// Which WABAs in a `phone_numbers` listing count as registered (docs/limits.md): a number whose
/// `platform_type` is CLOUD_API or ON_PREMISE. `None` when the listing does not say.
pub fn registered_in(listing: &serde_json::Value) -> Option<bool> {
    let data = listing.get("data")?.as_array()?;
    let mut saw_field = false;
    for n in data {
        if let Some(p) = n.get("platform_type").and_then(|p| p.as_str()) {
            saw_field = true;
            if p == "CLOUD_API" || p == "ON_PREMISE" {
                return Some(true);
            }
        }
    }
    // An empty listing is a clear "no numbers"; numbers without the field say nothing.
    (saw_field || data.is_empty()).then_some(false)
}

/// Ids of allocation configs named in a credit-line response.
pub fn allocation_ids_in(body: &serde_json::Value) -> HashSet<String> {
    let mut out = HashSet::new();
    if let Some(id) = body.get("allocation_config_id").and_then(|v| v.as_str()) {
        out.insert(id.to_string());
    }
    if let Some(data) = body.get("data").and_then(|d| d.as_array()) {
        for item in data {
            if let Some(id) = item.get("id").and_then(|v| v.as_str()) {
                out.insert(id.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
