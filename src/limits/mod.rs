//! Rolling-window buckets per app, per WABA and per credit line, counted exactly as Meta counts
//! them, plus Meta's own view of them (usage headers, throttling errors) and per-client quotas.
//!
//! A bucket is a sliding log: the completion times of calls in the last window plus the calls in
//! flight. A call holds a slot from admission; its time in the log is when its response came back
//! (the latest moment Meta can have counted it). Check-and-take is one step under the bucket's
//! lock, and a refused call is never recorded. This module must never let more than `limit` calls
//! into any window of a bucket, never sleep or poll while holding a lock, and never read bodies.
//! See docs/limits.md for why a token bucket or fixed window would not do.
//!
//! This file is the [`Limiter`], the facade the rest of the crate uses: it holds one of each room
//! below and runs a call through them. The rooms never import this file or each other in a circle:
//! `types` (keys, refusals, budgets; no crate imports), `log` (one bucket's sliding log, the map of
//! them), `learned` (limits, WABA activity, allocation configs), `feedback` (Meta's headers and
//! throttling codes), `quota` (clients' `rate`), `permit` (the all-or-nothing take, the
//! [`Permit`]), `wait` (the FIFO queue of `on_limit = "wait"`), `outage` (what Redis missed while
//! away), `redis` (connections, health, events), `redis_buckets` and `scripts` (the shared
//! buckets' keys, scripts, answers), `replicas` (admission through Redis, feedback told to the
//! others), `persist` (`limits.state_file`), `view` (the admin view and metrics).

mod feedback;
mod learned;
mod log;
mod outage;
mod permit;
mod persist;
mod quota;
mod reconfig;
pub mod redis;
mod redis_buckets;
mod replicas;
mod scripts;
mod types;
mod view;
mod wait;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use feedback::is_throttling_code;
pub use learned::{allocation_ids_in, registered_in};
pub use permit::Permit;
pub use redis_buckets::{Admission, Seen, Unshared};
pub use types::{
    BucketKey, BucketView, Budget, Known, Refusal, RefusalReason, Reported, Scope, OVERFLOW_WABA,
};

use self::log::{LogHandle, Logs};
use self::outage::Journal;
use self::permit::{Mirror, Rules};
use self::quota::Quotas;
use self::redis::{Event, RedisLink};
use self::replicas::Raise;
use self::wait::Tickets;
use self::{feedback::Feedback, learned::Apps};
use crate::clock::{micros, Micros, SharedClock};
use crate::config::{ClientId, Config, OnBackendError, OnLimit};
use crate::sync::MutexExt;

/// Per-process limiter state. Cheap to share behind an `Arc`.
pub struct Limiter {
    clock: SharedClock,
    window: Micros,
    on_limit: OnLimit,
    max_wait: Duration,
    reserve_percent: u32,
    state_file: Option<PathBuf>,
    /// Each app's limits and what was learned: a bucket's limit now.
    apps: Apps,
    /// Every bucket's log, in this process.
    logs: Logs,
    /// App-wide blocks and reports from Meta.
    feedback: Feedback,
    quotas: Quotas,
    tickets: Tickets,
    /// Buckets shared with other replicas through Redis, when configured, and what Redis missed.
    redis: Option<Arc<RedisLink>>,
    journal: Option<Arc<Journal>>,
    /// Redis was asked for and cannot be used: every call is refused, never admitted unshared.
    unusable_backend: bool,
    on_backend_error: OnBackendError,
    /// In local fallback, each replica spends `limit / replicas`.
    replicas: u32,
    /// The longest a call can be in flight: how long another replica's may still reach Meta.
    call_max: Micros,
    /// Per app, how many ids no config names may own a bucket (`Logs::route`).
    max_unknown: usize,
}

impl Limiter {
    pub fn new(config: &Config, clock: SharedClock) -> Limiter {
        let l = &config.limits;
        let replicas = l.redis.as_ref().map(|r| r.replicas).unwrap_or(1);
        let (redis, journal, unusable_backend) = match replicas::connect(config, clock.clone()) {
            Ok(Some((link, journal))) => (Some(link), Some(journal), false),
            Ok(None) => (None, None, false),
            Err(()) => (None, None, true),
        };
        Limiter {
            clock,
            window: micros(l.window),
            on_limit: l.on_limit,
            max_wait: l.max_wait,
            reserve_percent: l.reserve_percent,
            state_file: l.state_file.clone(),
            apps: Apps::new(config),
            logs: Logs::default(),
            feedback: Feedback::new(config.apps.len(), l.throttle_block),
            quotas: Quotas::new(config),
            tickets: Tickets::new(),
            journal,
            redis,
            unusable_backend,
            on_backend_error: l
                .redis
                .as_ref()
                .map(|r| r.on_error)
                .unwrap_or(OnBackendError::Local),
            replicas,
            call_max: micros(config.upstream.request_timeout),
            max_unknown: l.max_unknown_buckets,
        }
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
        self.apps.with_known(f)
    }

    /// The limit of a bucket now, or `None` for an unlimited one.
    pub fn limit_of(&self, key: &BucketKey) -> Option<u32> {
        self.apps.limit_of(key)
    }

    /// `"memory"`, or the state of the shared backend (`"up"`, `"down"`, `"connecting"`).
    pub fn backend_state(&self) -> &'static str {
        match (&self.redis, &self.journal) {
            // Connected, but this replica's calls are not known to be in Redis yet.
            (Some(link), Some(j)) if link.state() == "up" && !j.confirmed() => "connecting",
            (Some(link), _) => link.state(),
            (None, _) if self.unusable_backend => "down",
            (None, _) => "memory",
        }
    }

    /// Whether calls are refused (503) while the shared backend is away.
    pub fn backend_rejects(&self) -> bool {
        self.unusable_backend
            || (self.redis.is_some() && self.on_backend_error == OnBackendError::Reject)
    }

    /// Calls made while Redis was away that Redis does not hold yet.
    pub fn unshared_calls(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| j.pending())
    }

    /// Writes what Redis missed as soon as it answers again, for the life of the process.
    pub async fn keep_shared(self: Arc<Self>) {
        let (Some(journal), Some(link)) = (&self.journal, &self.redis) else {
            return;
        };
        let own = || {
            let calls = self.logs.own_calls(self.clock.now(), self.window);
            let base = |k: &BucketKey| replicas::base_of(link, &self.apps, k);
            calls.into_iter().map(|(k, t)| (base(&k), t)).collect()
        };
        journal.clone().keep_writing(own).await;
    }

    /// The link to Redis, when the buckets are shared.
    pub fn redis(&self) -> Option<&Arc<RedisLink>> {
        self.redis.as_ref()
    }

    /// A refusal on `key`'s bucket: the one way this file builds one.
    fn refuse(
        &self,
        reason: RefusalReason,
        key: &BucketKey,
        limit: u32,
        retry_after: Duration,
    ) -> Refusal {
        let (app, window) = (self.apps.name(key.app), self.window());
        Refusal::new(reason, app, key.scope.clone(), limit, window, retry_after)
    }

    // ------------------------------------------------------------ admission

    /// The client's own `rate` quota (governor GCRA), checked before any Meta bucket.
    pub fn check_client_quota(&self, client: Option<ClientId>, app: usize) -> Result<(), Refusal> {
        let key = BucketKey::other(app);
        let refuse = |wait| self.refuse(RefusalReason::ClientQuota, &key, 0, wait);
        self.quotas.check(client).map_err(refuse)
    }

    /// Admits a call or refuses it at once.
    pub fn try_admit(
        self: &Arc<Self>,
        wants: &[(BucketKey, u32)],
        reserve: bool,
    ) -> Result<Permit, Refusal> {
        let wants = &*self.route(wants);
        self.try_take(wants, reserve, None, 1).map_err(|(r, _)| r)
    }

    /// `wants` with each id no config names sent to its own bucket or its app's overflow.
    fn route<'a>(&self, wants: &'a [(BucketKey, u32)]) -> Cow<'a, [(BucketKey, u32)]> {
        let (now, cap) = (self.clock.now(), self.max_unknown);
        self.logs
            .route_all(&self.apps, wants, cap, now, self.window)
    }

    /// Admits a call: through Redis when the buckets are shared, else (or when Redis is away and
    /// the policy allows) in this process. Waits up to `max_wait` in `wait` mode.
    pub async fn admit(
        self: &Arc<Self>,
        wants: &[(BucketKey, u32)],
        reserve: bool,
        max_wait: Duration,
    ) -> Result<Permit, Refusal> {
        let (asked, routed) = (wants, self.route(wants));
        let wants = &*routed;
        let (Some(link), Some(journal)) = (&self.redis, &self.journal) else {
            if self.unusable_backend {
                return Err(self.unavailable(wants));
            }
            return self.admit_local(wants, reserve, max_wait, 1).await;
        };
        // A block learned here counts at once, even before it has reached Redis.
        if let Some(r) = self.local_block(wants) {
            return Err(r);
        }
        // Back from an outage: Redis must hold this replica's calls before it admits there again.
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut local = None;
        let usable = link.available() && journal.confirmed();
        if usable && (journal.clean() || journal.write_back().await) {
            // Until every replica is seen back, one may still be spending its share where Redis
            // cannot see it: this replica keeps to its own share as well (at most a window after
            // Redis was last away, by when what anyone spent unseen has left the window).
            let unseen = self.window() + Duration::from_micros(self.call_max);
            let local_too = !journal.all_seen() && link.away_within(unseen);
            if self.on_backend_error == OnBackendError::Local && local_too {
                local = Some(
                    self.admit_local(wants, reserve, max_wait, self.replicas)
                        .await?,
                );
            }
            let at = replicas::Admit {
                link,
                journal,
                apps: &self.apps,
                clock: &self.clock,
                window: self.window(),
                reserve_percent: self.reserve_percent,
            };
            let wait = self.on_limit == OnLimit::Wait;
            let shared = Logs::shared(asked, wants);
            if let Ok(answer) =
                replicas::admit_until(&at, &shared, reserve, wait, deadline, self.clone()).await
            {
                return match (answer, local) {
                    (Ok(shared), Some(mine)) => Ok(shared.also_local(mine)),
                    (Err(refusal), Some(mine)) => {
                        mine.release();
                        Err(refusal)
                    }
                    (answer, None) => answer,
                };
            }
        }
        match self.on_backend_error {
            OnBackendError::Local => {
                let permit = match local {
                    Some(p) => p,
                    None => {
                        self.admit_local(wants, reserve, max_wait, self.replicas)
                            .await?
                    }
                };
                let buckets: Vec<(String, u32)> = permit::limited(&self.apps, wants)
                    .into_iter()
                    .map(|(key, n)| (replicas::base_of(link, &self.apps, &key), n))
                    .collect();
                if buckets.is_empty() {
                    return Ok(permit);
                }
                let id = journal.open(buckets);
                Ok(permit.journaled(journal.clone(), id))
            }
            OnBackendError::Reject => Err(self.unavailable(wants)),
        }
    }

    /// The shared backend cannot be used: a transient refusal (503).
    fn unavailable(&self, wants: &[(BucketKey, u32)]) -> Refusal {
        let key = wants
            .first()
            .map_or(BucketKey::other(0), |(k, _)| k.clone());
        self.refuse(RefusalReason::Unavailable, &key, 0, Duration::from_secs(1))
    }

    /// Takes `n` slots in each keyed bucket of this process, all or nothing; buckets without a
    /// limit are skipped. `reserve` lets the caller spend the reserved share; `ticket` is its
    /// place in a wait queue. A refusal comes with the log that refused, to wait on.
    fn try_take(
        &self,
        wants: &[(BucketKey, u32)],
        reserve: bool,
        ticket: Option<u64>,
        share: u32,
    ) -> Result<Permit, (Refusal, LogHandle)> {
        let now = self.clock.now();
        let shared = self.redis.is_some();
        let picked = permit::pick(&self.apps, &self.logs, wants, share, shared);
        let app_block = wants
            .first()
            .map(|(k, _)| self.feedback.app_block(k.app))
            .unwrap_or(0);
        // An app-wide block (Meta's code 4) stops unlimited calls too, not only counted buckets.
        if picked.is_empty() && app_block > now {
            if let Some((key, _)) = wants.first() {
                let log = self.logs.get_or_insert(key, 0);
                let retry = Duration::from_micros(app_block - now);
                return Err((self.refuse(RefusalReason::Blocked, key, 0, retry), log));
            }
        }
        let unseen = self.window + self.call_max;
        let confirmed = self.journal.as_ref().is_none_or(|j| j.confirmed());
        let unseen_until = replicas::unseen_until(self.redis.as_ref(), confirmed, now, unseen);
        let rules = Rules {
            unseen_until,
            now,
            window: self.window,
            app_block,
            reserve_percent: self.reserve_percent,
            reserve,
            ticket,
        };
        match permit::take(&picked, &rules) {
            Ok(budgets) => {
                let slots = picked.into_iter().map(|w| (w.log, w.n)).collect();
                Ok(Permit::local(self.clock.clone(), slots, budgets))
            }
            Err(short) => {
                let w = &picked[short.index];
                let retry = Duration::from_micros(short.retry_at.saturating_sub(now));
                let refusal = self.refuse(short.reason, &w.key, w.limit, retry);
                Err((refusal, w.log.clone()))
            }
        }
    }

    /// Admits a call in this process, waiting in FIFO order up to `max_wait` in `wait` mode.
    async fn admit_local(
        &self,
        wants: &[(BucketKey, u32)],
        reserve: bool,
        max_wait: Duration,
        share: u32,
    ) -> Result<Permit, Refusal> {
        let (refusal, log) = match self.try_take(wants, reserve, None, share) {
            Ok(p) => return Ok(p),
            Err(e) => e,
        };
        if self.on_limit == OnLimit::Reject || refusal.reason == RefusalReason::ClientQuota {
            return Err(refusal);
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        let ticket = self.tickets.next();
        wait::wait_in_line(log, ticket, refusal, deadline, |ticket| {
            self.try_take(wants, reserve, Some(ticket), share)
                .map_err(|(r, _)| r)
        })
        .await
    }

    /// A block (bucket or app-wide) this process knows of for any of `wants`.
    fn local_block(&self, wants: &[(BucketKey, u32)]) -> Option<Refusal> {
        let now = self.clock.now();
        for (key, _) in wants {
            let app_block = self.feedback.app_block(key.app);
            let bucket_block = self.logs.with(key, |b| b.blocked_until).unwrap_or(0);
            let until = app_block.max(bucket_block);
            if until > now {
                let limit = self.limit_of(key).unwrap_or(0);
                let retry = Duration::from_micros(until - now);
                return Some(self.refuse(RefusalReason::Blocked, key, limit, retry));
            }
        }
        None
    }

    // ------------------------------------------------------------ Meta's view

    /// Reads Meta's usage headers from a response to a call on `key` and adjusts local state:
    /// a higher count than ours raises ours; 100% blocks until the regain time.
    pub fn observe_usage(&self, app: usize, bucket_usage: Option<&str>, app_usage: Option<&str>) {
        if !self.feedback.changed(app, bucket_usage, app_usage) {
            return;
        }
        let now = self.clock.now();
        for (object, rep) in bucket_usage
            .map(feedback::bucket_reports)
            .unwrap_or_default()
        {
            let scope = Scope::Waba(object);
            let key = BucketKey { app, scope };
            let key = &*self
                .logs
                .route(&self.apps, &key, self.max_unknown, now, self.window);
            let Some(limit) = self.limit_of(key) else {
                continue;
            };
            let log = self.logs.get_or_insert(key, limit);
            let (shared, window) = (self.redis.is_some(), self.window);
            let log = &mut log.lock_unpoisoned();
            let (count, block) = feedback::apply_report(log, rep, limit, now, window, shared);
            self.share_raise(Raise::Bucket(key, count), block);
        }
        if let Some(rep) = app_usage.and_then(feedback::app_report) {
            self.feedback.set_app_reported(app, rep);
        }
    }

    /// Meta answered a throttling error for a call on `key`: stop calling it until regain time.
    pub fn observe_throttle(&self, key: &BucketKey, code: u64, regain: Option<Duration>) {
        let now = self.clock.now();
        let until = self.feedback.throttled_until(now, regain);
        let block = Duration::from_micros(until - now);
        if feedback::is_app_wide(code) {
            self.feedback.block_app(key.app, until);
            self.share_raise(Raise::App(key.app), block);
            return;
        }
        let key = &*self
            .logs
            .route(&self.apps, key, self.max_unknown, now, self.window);
        let Some(limit) = self.limit_of(key) else {
            return;
        };
        let log = self.logs.get_or_insert(key, limit);
        {
            let mut b = log.lock_unpoisoned();
            b.blocked_until = b.blocked_until.max(until);
        }
        self.share_raise(Raise::Bucket(key, 0), block);
    }

    /// Applies a raised count or a block to the shared bucket too, so every replica stops.
    fn share_raise(&self, raise: Raise<'_>, block: Duration) {
        if let Some(link) = &self.redis {
            replicas::raise(link, &self.apps, raise, block);
        }
    }

    // ------------------------------------------------------------ learned facts

    /// Records whether an `active = "auto"` WABA has a registered phone number.
    pub fn learn_active(&self, app: usize, waba: &str, active: bool) {
        if self.set_active(app, waba, active) {
            self.share(Event::Active {
                app: self.apps.name(app),
                waba: waba.to_string(),
                active,
            });
        }
    }

    /// Records whether an auto WABA is active; true if that changed anything. A changed limit
    /// applies to the WABA's log at once and wakes its waiters.
    fn set_active(&self, app: usize, waba: &str, active: bool) -> bool {
        let changed = self.apps.set_active(app, waba, active);
        if changed {
            self.logs.limit_changed(&self.apps, app, waba);
        }
        changed
    }

    /// WABAs of `active = "auto"` that a probe should look at, per app.
    pub fn auto_wabas(&self) -> Vec<(usize, String)> {
        self.apps.auto_wabas()
    }

    pub fn learn_allocation_config(&self, id: &str) {
        if self.apps.add_allocation_config(id) {
            self.share(Event::AllocationConfig { id: id.to_string() });
        }
    }

    /// Publishes a learned fact to the other replicas, in the background.
    fn share(&self, event: Event) {
        if let Some(link) = &self.redis {
            link.publish(event);
        }
    }

    /// Applies a fact another replica learned; other events (cache purges) are not the limiter's.
    pub fn apply_event(&self, event: &Event) {
        match event {
            Event::Active { app, waba, active } => {
                if let Some(i) = self.apps.index_of(app) {
                    self.set_active(i, waba, *active);
                }
            }
            Event::AllocationConfig { id } => {
                self.apps.add_allocation_config(id);
            }
            Event::Purge { .. } | Event::Resubscribed => {}
        }
    }

    // ------------------------------------------------------------ inspection

    /// Forgets buckets with nothing in their window, nothing in flight, no block and no waiters, so
    /// a caller naming ever new objects cannot grow the map without bound. Returns how many went.
    pub fn sweep(&self) -> usize {
        self.logs.sweep(self.clock.now(), self.window)
    }

    /// A snapshot of every bucket that has been used.
    pub fn snapshot(&self) -> Vec<BucketView> {
        let now = self.clock.now();
        let app_blocks = self.feedback.app_blocks();
        view::snapshot(&self.logs, &self.apps, &app_blocks, now, self.window)
    }

    /// Meta's latest app-wide usage (`X-App-Usage`) per app name, for the admin view and metrics.
    pub fn app_usage(&self) -> Vec<(String, Option<Reported>)> {
        view::app_usage(&self.apps, self.feedback.app_reported())
    }

    /// Every bucket as the admin view shows it: from Redis when the buckets are shared (so every
    /// replica shows the same), else from this process.
    pub async fn view(&self) -> Vec<BucketView> {
        let local = self.snapshot();
        let Some(link) = self.redis.as_ref().filter(|s| s.available()) else {
            return local;
        };
        view::from_redis(link, &self.logs, &self.apps, local).await
    }

    /// Bytes used by one bucket: the struct, its `Arc<Mutex<_>>`, and its heap.
    pub fn bucket_bytes(&self, key: &BucketKey) -> Option<usize> {
        self.logs.bytes(key)
    }
}

/// A call admitted through Redis is followed here too: in flight from admission, logged once sent
/// at the limit its bucket has then; and what Redis showed of the others is kept for a fallback.
impl Mirror for Limiter {
    fn seen(&self, key: &BucketKey, seen: redis_buckets::Seen, taken: u32, now: Micros) {
        self.logs.mirror(&self.apps, key, |b| {
            b.seen_remote(
                seen.done,
                seen.inflight,
                taken,
                now,
                self.window,
                self.call_max,
            )
        });
    }

    fn settled(&self, key: &BucketKey, n: u32, sent: bool, now: Micros) {
        self.logs.mirror(&self.apps, key, |b| {
            b.settled_remote(n, sent, now, self.window)
        });
    }
}

#[cfg(test)]
mod tests;
