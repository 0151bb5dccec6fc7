//! The link to Redis that lets several replicas spend one budget: connections, round trips within
//! `backend_timeout` with health from real pings, learned facts (active WABAs, allocation configs)
//! and cache invalidations over pub/sub. The buckets' own operations are in `redis_buckets`; how a
//! connection is set up (TLS, credentials, Sentinel) and what a failure was, in `redis/conn`.
//! With Sentinel, a failed health check or a READONLY answer drops the connection, and the next
//! one goes to the master the Sentinels name then (a failover is an outage, see `outage`).
//!
//! It owns the Redis connections and the wire format of events; it knows nothing
//! of limits or apps beyond the names and numbers it is handed. It must never block a request
//! longer than `limits.backend_timeout` (the caller enforces it and falls back), never panic when
//! Redis is away, and never put a token or key into Redis.

mod conn;

pub use self::conn::{Connector, Fault};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::sync::RwLockExt;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

/// After a failure, requests skip Redis for this long instead of each waiting for the timeout.
const COOLDOWN: Duration = Duration::from_secs(1);
/// Timeouts in a row after which requests stop trying Redis for a `COOLDOWN`.
const SLOW_LIMIT: u64 = 3;
/// Delay between attempts to (re)connect.
const RECONNECT: Duration = Duration::from_millis(500);
/// How often [`RedisLink::watch`] checks with a round trip that Redis answers.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// What replicas tell each other.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Active {
        app: String,
        waba: String,
        active: bool,
    },
    AllocationConfig {
        id: String,
    },
    Purge {
        app: String,
        prefix: String,
    },
    /// The subscription was (re)established: invalidations may have been missed meanwhile.
    Resubscribed,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    event: Event,
}

/// One process's link to Redis, held by the limiter and by permits admitted through it.
pub struct RedisLink {
    /// Replaced when a reload changes the credentials ([`RedisLink::set_access`]).
    connector: RwLock<Arc<Connector>>,
    /// The client of the server the link is connected to (the master, with Sentinel), and where
    /// that is: set together with `conn`. The locks are held only to copy or replace them.
    client: RwLock<Option<(redis::Client, String)>>,
    conn: RwLock<Option<ConnectionManager>>,
    /// Failures by [`Fault`] (for `graphgate_redis_errors_total`), and the last one not yet
    /// followed by a working connection (index + 1; 0: none).
    faults: [AtomicU64; 6],
    fault: AtomicUsize,
    /// Times the link moved to another master (Sentinel failovers followed).
    switches: AtomicU64,
    /// Wakes `run` to drop its subscription after the connection was dropped.
    reset: Notify,
    pub(super) prefix: String,
    /// This process's id among the replicas: it names its slots and its events.
    pub(super) replica: String,
    timeout: Duration,
    /// The rolling window, and how long an unsettled slot is held (`with_window`).
    pub(super) window: Duration,
    pub(super) lease: Duration,
    /// Process-relative milliseconds until which requests skip Redis.
    down_until_ms: AtomicU64,
    /// Process-relative milliseconds (plus one; 0: never) when Redis was last found away.
    last_down_ms: AtomicU64,
    /// Process-relative milliseconds of the last answer from Redis (0: none, since start).
    last_up_ms: AtomicU64,
    up: AtomicBool,
    /// Timeouts in a row; a burst on a busy host can delay one answer without Redis being away.
    slow: AtomicU64,
    started: Instant,
}

impl RedisLink {
    /// A link to the server at `url` (credentials in it are used).
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisLink, String> {
        Ok(RedisLink::with(Connector::from_url(url)?, prefix, timeout))
    }

    /// A link made by `connector` (see [`Connector::new`]).
    pub fn with(connector: Connector, prefix: &str, timeout: Duration) -> RedisLink {
        RedisLink {
            connector: RwLock::new(Arc::new(connector)),
            client: RwLock::new(None),
            conn: RwLock::new(None),
            faults: Default::default(),
            fault: AtomicUsize::new(0),
            switches: AtomicU64::new(0),
            reset: Notify::new(),
            prefix: prefix.to_string(),
            replica: format!("{:016x}", rand::random::<u64>()),
            timeout,
            window: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
            down_until_ms: AtomicU64::new(0),
            last_down_ms: AtomicU64::new(0),
            last_up_ms: AtomicU64::new(0),
            up: AtomicBool::new(false),
            slow: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The failure that keeps the link from working now, if it is known (the last one since
    /// Redis last answered).
    pub fn fault(&self) -> Option<Fault> {
        let i = self.fault.load(Ordering::Relaxed);
        (i > 0).then(|| Fault::ALL[(i - 1).min(Fault::ALL.len() - 1)])
    }

    /// Failures so far, by kind (every kind, zeros included).
    pub fn errors(&self) -> Vec<(Fault, u64)> {
        Fault::ALL
            .iter()
            .map(|f| (*f, self.faults[f.index()].load(Ordering::Relaxed)))
            .collect()
    }

    /// How many times the link moved to another master (a Sentinel failover).
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Counts a failure; with Sentinel, one that says the master moved (READONLY) drops the
    /// connection so that the next goes to the master the Sentinels name now.
    fn note(&self, fault: Fault) {
        self.count(fault);
        if fault == Fault::ReadOnly && self.connector().sentinel() {
            self.forget();
        }
    }

    fn count(&self, fault: Fault) {
        self.faults[fault.index()].fetch_add(1, Ordering::Relaxed);
        self.fault.store(fault.index() + 1, Ordering::Relaxed);
    }

    /// Drops the connection and its subscription (Sentinel: the master may have moved).
    fn forget(&self) {
        if self.conn.write_unpoisoned().take().is_some() {
            tracing::warn!("dropped the Redis connection: asking the Sentinels for the master");
        }
        self.up.store(false, Ordering::Relaxed);
        self.mark_down();
        self.reset.notify_one();
    }

    /// Sets the rolling window and the lease of an unsettled slot (defaults: an hour, a minute).
    pub fn with_window(mut self, window: Duration, lease: Duration) -> RedisLink {
        self.window = window;
        self.lease = lease;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Connected, and not cooling down after a failure.
    pub fn available(&self) -> bool {
        self.up.load(Ordering::Relaxed)
            && self.started.elapsed().as_millis() as u64
                >= self.down_until_ms.load(Ordering::Relaxed)
    }

    /// `"up"`, `"down"` or `"connecting"`, for readiness and metrics.
    pub fn state(&self) -> &'static str {
        if self.available() {
            "up"
        } else if self.conn.read_unpoisoned().is_some() {
            "down"
        } else {
            "connecting"
        }
    }

    /// Records a failed or slow call: requests use the fallback for a moment.
    pub fn mark_down(&self) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        self.last_down_ms.store(now_ms + 1, Ordering::Relaxed);
        let until = self.started.elapsed() + COOLDOWN;
        self.down_until_ms
            .store(until.as_millis() as u64, Ordering::Relaxed);
    }

    /// Changes each time Redis is found away (for "has it been away since?").
    pub fn downs(&self) -> u64 {
        self.last_down_ms.load(Ordering::Relaxed)
    }

    /// Whether Redis was found away within the last `d`.
    pub fn away_within(&self, d: Duration) -> bool {
        let last = self.last_down_ms.load(Ordering::Relaxed);
        last != 0 && (self.started.elapsed().as_millis() as u64 + 1) < last + d.as_millis() as u64
    }

    /// How long since Redis last answered (since this process started, if it never has): the
    /// others' calls up to then may be unknown to this replica.
    pub fn since_up(&self) -> Duration {
        let last = Duration::from_millis(self.last_up_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    fn mark_up(&self) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        self.last_up_ms.store(now_ms, Ordering::Relaxed);
        self.slow.store(0, Ordering::Relaxed);
        self.down_until_ms.store(0, Ordering::Relaxed);
        self.fault.store(0, Ordering::Relaxed);
    }

    fn connector(&self) -> Arc<Connector> {
        self.connector.read_unpoisoned().clone()
    }

    /// A reload changed the username or password: a connection made with the new ones replaces
    /// the current one once it answers (calls keep the current one until then, so nothing falls
    /// back). If it fails (Redis still wants the old password), the current connection, already
    /// authenticated, is kept and the failure is reported like any other; later reconnects use
    /// the new credentials.
    pub async fn set_access(&self, connector: Connector) {
        if self.connector().credentials == connector.credentials {
            return;
        }
        *self.connector.write_unpoisoned() = Arc::new(connector);
        match self.connect().await {
            Ok(c) => {
                *self.conn.write_unpoisoned() = Some(c);
                // The event subscription reconnects with the new credentials too.
                self.reset.notify_one();
                tracing::info!("Redis credentials changed: now connected with the new ones");
            }
            Err(fault) => tracing::warn!(
                kind = fault.as_str(),
                "Redis credentials changed, but they do not work yet; keeping the current connection"
            ),
        }
    }

    pub(super) fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        self.conn.read_unpoisoned().clone().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Io, "not connected to Redis"))
        })
    }

    /// `op` on the pooled connection, within `backend_timeout`. A connection that died with its
    /// server (a restart) fails at once while the manager reconnects: `op` is then tried once more,
    /// on the fresh connection and inside the same timeout, instead of sending the call to the
    /// fallback. A second run never lets more calls through: an admission names its slots by its
    /// member, so a rerun after a lost answer takes the same slots again, or at worst refuses while
    /// its first run's slots stay in flight until their lease ends and then count as calls (budget
    /// lost, never exceeded); settlements and raises converge on the same state; an event is
    /// applied twice at most, which purges and learned facts allow.
    async fn round_trip<T, Fut>(
        &self,
        op: impl Fn(ConnectionManager) -> Fut,
    ) -> Result<redis::RedisResult<T>, tokio::time::error::Elapsed>
    where
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let first = tokio::time::timeout_at(deadline, op(conn.clone())).await;
        match first {
            Ok(Err(e)) if e.is_connection_dropped() || e.is_io_error() => {
                tracing::debug!(error = %e, "Redis connection lost; one retry on a fresh one");
                tokio::time::timeout_at(deadline, op(conn)).await
            }
            other => other,
        }
    }

    /// Runs `op` against Redis ([`Self::round_trip`]); a failure marks the backend down, and so do
    /// a few timeouts in a row.
    pub(super) async fn call<T, Fut>(
        &self,
        op: impl Fn(ConnectionManager) -> Fut,
    ) -> redis::RedisResult<T>
    where
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match self.round_trip(op).await {
            Ok(Ok(v)) => {
                self.mark_up();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.mark_down();
                self.note(Fault::of(&e));
                Err(e)
            }
            Err(_) => {
                // A hung Redis times out every call: after a few in a row, stop waiting for it.
                if self.slow.fetch_add(1, Ordering::Relaxed) + 1 >= SLOW_LIMIT {
                    self.mark_down();
                    self.note(Fault::Timeout);
                }
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "Redis did not answer in time",
                )))
            }
        }
    }

    /// Shares `event` with the other replicas in the background (outside a runtime: not at all);
    /// a failure is logged, never waited for.
    pub fn publish(self: &Arc<Self>, event: Event) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let link = self.clone();
        handle.spawn(async move {
            if let Err(e) = link.share(event).await {
                tracing::warn!(error = %e, "could not share a learned fact through Redis");
            }
        });
    }

    /// Stores a learned fact and tells the other replicas.
    pub async fn share(&self, event: Event) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        match &event {
            Event::Active { app, waba, active } => {
                pipe.hset(
                    format!("{}:active", self.prefix),
                    format!("{app}|{waba}"),
                    u8::from(*active),
                )
                .ignore();
            }
            Event::AllocationConfig { id } => {
                pipe.sadd(format!("{}:alloc", self.prefix), id).ignore();
            }
            Event::Purge { .. } | Event::Resubscribed => {}
        }
        let msg = serde_json::to_string(&Envelope {
            from: self.replica.clone(),
            event,
        })
        .unwrap_or_default();
        pipe.publish(format!("{}:events", self.prefix), msg)
            .ignore();
        let pipe = &pipe;
        self.call(move |mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    /// Facts other replicas learned before this one started.
    pub async fn learned(&self) -> redis::RedisResult<Vec<Event>> {
        let mut pipe = redis::pipe();
        pipe.hgetall(format!("{}:active", self.prefix))
            .smembers(format!("{}:alloc", self.prefix));
        let pipe = &pipe;
        let (active, alloc): (HashMap<String, u8>, Vec<String>) = self
            .call(move |mut conn| async move { pipe.query_async(&mut conn).await })
            .await?;
        let mut out = Vec::new();
        for (k, v) in active {
            if let Some((app, waba)) = k.split_once('|') {
                out.push(Event::Active {
                    app: app.into(),
                    waba: waba.into(),
                    active: v == 1,
                });
            }
        }
        out.extend(alloc.into_iter().map(|id| Event::AllocationConfig { id }));
        Ok(out)
    }

    /// Health from real round trips, for the life of the process: a `PING` every `HEALTH_EVERY`,
    /// bounded by `backend_timeout`. A hung Redis (stopped, or its host unreachable) answers
    /// nothing, and without traffic no admission would notice: an unanswered or failed ping marks
    /// the backend down at once (metrics, admin JSON, `/readyz` under `reject`), an answer marks it
    /// up again.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(HEALTH_EVERY).await;
            if self.conn().is_err() {
                continue; // not connected yet: `run` reports that as "connecting"
            }
            let me = &self;
            let answer = self
                .round_trip(move |mut conn| async move { me.check(&mut conn).await })
                .await;
            let fault = match answer {
                Ok(Ok(())) => {
                    self.mark_up();
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "Redis health check failed");
                    Fault::of(&e)
                }
                Err(_) => {
                    tracing::debug!("Redis did not answer the health check in time");
                    Fault::Timeout
                }
            };
            self.mark_down();
            self.note(fault);
            if self.connector().sentinel() {
                self.forget();
            }
        }
    }

    /// The health check: `PING`; with Sentinel, `ROLE`, which must say "master" (a demoted
    /// master answers PING as well as ever).
    async fn check(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        if !self.connector().sentinel() {
            return redis::cmd("PING").query_async::<()>(conn).await;
        }
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(conn).await?;
        let first = role.first().map(redis::from_redis_value_ref::<String>);
        match first {
            Some(Ok(r)) if r == "master" => Ok(()),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                "the server the Sentinels named is not a master (yet)",
            ))),
        }
    }

    /// Connects to the server (with Sentinel, the master they name now) and checks that it
    /// answers as this link needs (authenticated, a master) before anything says "connected".
    async fn connect(&self) -> Result<ConnectionManager, Fault> {
        let limit = self.timeout.max(Duration::from_millis(200));
        let attempt = async {
            let (client, at) = self.connector().master(limit).await?;
            let cfg = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(limit))
                // Our own timeout (in `call`) fires first and is counted as slowness; this one
                // only frees a connection that never answers.
                .set_response_timeout(Some(self.timeout * 4))
                .set_number_of_retries(1);
            let mut conn = client.get_connection_manager_with_config(cfg).await?;
            self.check(&mut conn).await?;
            Ok::<_, redis::RedisError>((client, at, conn))
        };
        let (client, at, conn) = match tokio::time::timeout(limit * 4, attempt).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let fault = Fault::of(&e);
                tracing::warn!(error = %e, kind = fault.as_str(), "cannot use Redis: {}; retrying", fault.describe());
                self.count(fault);
                return Err(fault);
            }
            Err(_) => {
                tracing::warn!("cannot use Redis: no answer in time; retrying");
                self.count(Fault::Timeout);
                return Err(Fault::Timeout);
            }
        };
        let before = self.client.write_unpoisoned().replace((client, at.clone()));
        if let Some((_, was)) = before.filter(|(_, was)| *was != at) {
            self.switches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(from = %was, to = %at, "the Redis master moved (a failover): following it");
        }
        self.fault.store(0, Ordering::Relaxed);
        tracing::info!(at = %at, "connected to Redis: buckets are shared");
        Ok(conn)
    }

    /// Keeps a command connection and an event subscription open for the life of the process,
    /// reconnecting as needed, and hands events from other replicas to `events`.
    pub async fn run(self: Arc<Self>, events: mpsc::UnboundedSender<Event>) {
        loop {
            if self.conn.read_unpoisoned().is_none() {
                match self.connect().await {
                    Ok(c) => {
                        *self.conn.write_unpoisoned() = Some(c);
                        self.up.store(true, Ordering::Relaxed);
                        if let Ok(facts) = self.learned().await {
                            for f in facts {
                                let _ = events.send(f);
                            }
                        }
                    }
                    Err(_) => {
                        tokio::time::sleep(RECONNECT).await;
                        continue;
                    }
                }
            }
            let Some((client, _)) = self.client.read_unpoisoned().clone() else {
                continue;
            };
            match client.get_async_pubsub().await {
                Ok(mut ps) => {
                    if ps
                        .subscribe(format!("{}:events", self.prefix))
                        .await
                        .is_ok()
                    {
                        let _ = events.send(Event::Resubscribed);
                        let mut stream = ps.into_on_message();
                        loop {
                            let msg = tokio::select! {
                                m = stream.next() => m,
                                _ = self.reset.notified() => break,
                            };
                            let Some(msg) = msg else {
                                tracing::warn!("Redis subscription lost; reconnecting");
                                self.mark_down();
                                break;
                            };
                            let Ok(env) =
                                serde_json::from_slice::<Envelope>(msg.get_payload_bytes())
                            else {
                                continue;
                            };
                            if env.from != self.replica {
                                let _ = events.send(env.event);
                            }
                        }
                    }
                }
                Err(e) => {
                    self.mark_down();
                    tracing::debug!(error = %e, "Redis subscription failed");
                }
            }
            tokio::time::sleep(RECONNECT).await;
        }
    }
}
