//! The link to Redis that lets several replicas spend one budget: the rolling-window buckets (one
//! atomic Lua script per admission, time from Redis `TIME`), blocks learned from Meta, learned facts
//! (active WABAs, allocation configs) and cache invalidations over pub/sub.
//!
//! It owns the Redis connections and the wire format of keys, scripts and events; it knows nothing
//! of limits or apps beyond the names and numbers it is handed. It must never block a request
//! longer than `limits.backend_timeout` (the caller enforces it and falls back), never panic when
//! Redis is away, and never put a token or key into Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::sync::RwLockExt;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::scripts::{ADMIT, PEEK, RAISE, SETTLE};

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

/// The answer to one admission.
#[derive(Debug)]
pub enum Admission {
    /// Slots taken under `member`; per bucket, (remaining, microseconds until a slot frees).
    Taken {
        member: String,
        budgets: Vec<(u32, u64)>,
    },
    /// Bucket number `index` refused; retry after `retry_us`; `blocked` when Meta blocked it.
    Refused {
        index: usize,
        retry_us: u64,
        blocked: bool,
    },
}

/// One process's link to Redis, held by the limiter and by permits admitted through it.
pub struct RedisLink {
    client: redis::Client,
    conn: RwLock<Option<ConnectionManager>>,
    prefix: String,
    replica: String,
    timeout: Duration,
    /// Process-relative milliseconds until which requests skip Redis.
    down_until_ms: AtomicU64,
    up: AtomicBool,
    /// Timeouts in a row; a burst on a busy host can delay one answer without Redis being away.
    slow: AtomicU64,
    started: Instant,
    admit: redis::Script,
    settle: redis::Script,
    raise: redis::Script,
    peek: redis::Script,
}

impl RedisLink {
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisLink, String> {
        let client = redis::Client::open(url).map_err(|e| format!("limits.redis_url: {e}"))?;
        Ok(RedisLink {
            client,
            conn: RwLock::new(None),
            prefix: prefix.to_string(),
            replica: format!("{:016x}", rand::random::<u64>()),
            timeout,
            down_until_ms: AtomicU64::new(0),
            up: AtomicBool::new(false),
            slow: AtomicU64::new(0),
            started: Instant::now(),
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
            raise: redis::Script::new(RAISE),
            peek: redis::Script::new(PEEK),
        })
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
        let until = self.started.elapsed() + COOLDOWN;
        self.down_until_ms
            .store(until.as_millis() as u64, Ordering::Relaxed);
    }

    fn mark_up(&self) {
        self.slow.store(0, Ordering::Relaxed);
        self.down_until_ms.store(0, Ordering::Relaxed);
    }

    fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        self.conn.read_unpoisoned().clone().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Io, "not connected to Redis"))
        })
    }

    /// `<prefix>:b:<app>:<scope>` — the base of a bucket's keys. App names and scope labels come
    /// from config and Graph ids, never from secrets.
    pub fn bucket_base(&self, app: &str, scope: &str) -> String {
        format!("{}:b:{app}:{scope}", self.prefix)
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
    async fn call<T, Fut>(&self, op: impl Fn(ConnectionManager) -> Fut) -> redis::RedisResult<T>
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
                Err(e)
            }
            Err(_) => {
                // A hung Redis times out every call: after a few in a row, stop waiting for it.
                if self.slow.fetch_add(1, Ordering::Relaxed) + 1 >= SLOW_LIMIT {
                    self.mark_down();
                }
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "Redis did not answer in time",
                )))
            }
        }
    }

    /// `<prefix>:app:<app>` — the base of an app's own keys (its app-wide block).
    pub fn app_base(&self, app: &str) -> String {
        format!("{}:app:{app}", self.prefix)
    }

    /// A fresh id for one admission's slots.
    pub fn new_member(&self) -> String {
        format!("{}:{:016x}", self.replica, rand::random::<u64>())
    }

    /// Takes `n` slots in each `(bucket base, limit, n)` of app `app`, all or nothing, as `member`.
    pub async fn admit(
        &self,
        app: &str,
        buckets: &[(String, u32, u32)],
        window: Duration,
        lease: Duration,
        member: &str,
    ) -> redis::RedisResult<Admission> {
        let mut inv = self.admit.prepare_invoke();
        for (base, _, _) in buckets {
            inv.key(format!("{base}:log"))
                .key(format!("{base}:fl"))
                .key(format!("{base}:blk"));
        }
        inv.key(format!("{}:blk", self.app_base(app)));
        inv.arg(window.as_micros() as u64)
            .arg(lease.as_micros() as u64)
            .arg(member)
            .arg(buckets.len());
        for (_, limit, n) in buckets {
            inv.arg(*limit).arg(*n);
        }
        let inv = &inv;
        let out: Vec<i64> = self
            .call(move |mut conn| async move { inv.invoke_async(&mut conn).await })
            .await?;
        match out.first() {
            Some(1) => Ok(Admission::Taken {
                member: member.to_string(),
                budgets: out[1..]
                    .chunks(2)
                    .map(|c| {
                        (
                            c[0].max(0) as u32,
                            c.get(1).copied().unwrap_or(0).max(0) as u64,
                        )
                    })
                    .collect(),
            }),
            _ => Ok(Admission::Refused {
                index: out.get(1).copied().unwrap_or(0).max(0) as usize,
                retry_us: out.get(2).copied().unwrap_or(0).max(0) as u64,
                blocked: out.get(3).copied() == Some(1),
            }),
        }
    }

    /// Completes (`sent`) or releases an admission, in the background. If Redis is away, the lease
    /// runs out and the calls count from their lease end: late, never lost.
    pub fn settle(self: &Arc<Self>, buckets: Vec<(String, u32)>, member: String, sent: bool) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.clone();
        handle.spawn(async move {
            if me.conn().is_err() {
                return;
            }
            let mut inv = me.settle.prepare_invoke();
            for (base, _) in &buckets {
                inv.key(format!("{base}:log")).key(format!("{base}:fl"));
            }
            inv.arg(&member).arg(if sent { "1" } else { "0" }).arg(buckets.len());
            for (_, n) in &buckets {
                inv.arg(*n);
            }
            let inv = &inv;
            let settled = me
                .call(move |mut conn| async move { inv.invoke_async::<i64>(&mut conn).await })
                .await;
            if let Err(e) = settled {
                tracing::warn!(error = %e, "could not settle a shared admission; its lease will expire");
            }
        });
    }

    /// Raises a bucket's log to `target` calls and blocks it for `block` if non-zero.
    pub async fn raise(
        &self,
        base: &str,
        target: u32,
        window: Duration,
        block: Duration,
    ) -> redis::RedisResult<()> {
        let mut inv = self.raise.prepare_invoke();
        inv.key(format!("{base}:log"))
            .key(format!("{base}:fl"))
            .key(format!("{base}:blk"));
        inv.arg(window.as_micros() as u64)
            .arg(target)
            .arg(block.as_micros() as u64)
            .arg(format!(
                "raise:{}:{:08x}",
                self.replica,
                rand::random::<u32>()
            ));
        let inv = &inv;
        self.call(move |mut conn| async move { inv.invoke_async::<i64>(&mut conn).await })
            .await
            .map(|_| ())
    }

    /// (used, in flight, until a slot frees, blocked for) of one bucket.
    pub async fn peek(
        &self,
        base: &str,
        window: Duration,
    ) -> redis::RedisResult<(u32, u32, Duration, Duration)> {
        let mut inv = self.peek.prepare_invoke();
        inv.key(format!("{base}:log"))
            .key(format!("{base}:fl"))
            .key(format!("{base}:blk"));
        inv.arg(window.as_micros() as u64);
        let inv = &inv;
        let v: Vec<i64> = self
            .call(move |mut conn| async move { inv.invoke_async(&mut conn).await })
            .await?;
        let g = |i: usize| v.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok((
            g(0) as u32,
            g(1) as u32,
            Duration::from_micros(g(2)),
            Duration::from_micros(g(3)),
        ))
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
            let ping = redis::cmd("PING");
            let ping = &ping;
            let answer = self
                .round_trip(
                    move |mut conn| async move { ping.query_async::<String>(&mut conn).await },
                )
                .await;
            match answer {
                Ok(Ok(_)) => self.mark_up(),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "Redis health check failed");
                    self.mark_down();
                }
                Err(_) => {
                    tracing::debug!("Redis did not answer the health check in time");
                    self.mark_down();
                }
            }
        }
    }

    /// Keeps a command connection and an event subscription open for the life of the process,
    /// reconnecting as needed, and hands events from other replicas to `events`.
    pub async fn run(self: Arc<Self>, events: mpsc::UnboundedSender<Event>) {
        loop {
            if self.conn.read_unpoisoned().is_none() {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
                    // Our own timeout (in `call`) fires first and is counted as slowness; this one
                    // only frees a connection that never answers.
                    .set_response_timeout(Some(self.timeout * 4))
                    .set_number_of_retries(1);
                match self.client.get_connection_manager_with_config(cfg).await {
                    Ok(c) => {
                        *self.conn.write_unpoisoned() = Some(c);
                        self.up.store(true, Ordering::Relaxed);
                        tracing::info!("connected to Redis: buckets are shared");
                        if let Ok(facts) = self.learned().await {
                            for f in facts {
                                let _ = events.send(f);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reach Redis; retrying");
                        tokio::time::sleep(RECONNECT).await;
                        continue;
                    }
                }
            }
            match self.client.get_async_pubsub().await {
                Ok(mut ps) => {
                    if ps
                        .subscribe(format!("{}:events", self.prefix))
                        .await
                        .is_ok()
                    {
                        let _ = events.send(Event::Resubscribed);
                        let mut stream = ps.into_on_message();
                        while let Some(msg) = stream.next().await {
                            let Ok(env) =
                                serde_json::from_slice::<Envelope>(msg.get_payload_bytes())
                            else {
                                continue;
                            };
                            if env.from != self.replica {
                                let _ = events.send(env.event);
                            }
                        }
                        tracing::warn!("Redis subscription lost; reconnecting");
                        self.mark_down();
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
