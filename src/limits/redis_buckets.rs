//! The shared buckets' operations on the link to Redis: an admission, its settlement, a raise
//! from Meta's feedback, the admin peek, and the write-back of calls made while Redis was away.
//!
//! It owns the key names of a bucket and the arguments and answers of the scripts in `scripts`;
//! it knows nothing of limits or apps beyond the names and numbers it is handed, and decides no
//! fallback (the limiter does). It must never put a token or key into Redis.

use std::sync::LazyLock;
use std::time::Duration;

use super::redis::RedisLink;
use super::scripts;

static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(scripts::ADMIT));
static SETTLE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(scripts::SETTLE));
static RAISE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(scripts::RAISE));
static PEEK: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(scripts::PEEK));
static CHECK_IN: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(scripts::CHECK_IN));
static WRITE_BACK: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(scripts::WRITE_BACK));

/// One bucket as an admission found it, across every replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Slots left after this admission.
    pub remaining: u32,
    /// Microseconds until the oldest call leaves the window.
    pub reset_us: u64,
    /// Completed calls in the window.
    pub done: u32,
    /// Calls in flight (this admission's included).
    pub inflight: u32,
}

/// The answer to one admission.
#[derive(Debug)]
pub enum Admission {
    /// Slots taken under `member`; each bucket as it stands after the take.
    Taken { member: String, buckets: Vec<Seen> },
    /// Bucket number `index` refused; retry after `retry_us`; `blocked` when Meta blocked it; the
    /// refusing bucket as it stood.
    Refused {
        index: usize,
        retry_us: u64,
        blocked: bool,
        seen: Seen,
    },
}

/// Where a call Redis does not fully know of stands, for [`RedisLink::write_back`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsettled {
    /// Made while Redis was away and still in flight: Redis is to hold its slots.
    InFlight,
    /// Made while Redis was away, completed this long ago: to log at that age, once.
    Done(Duration),
    /// Its slots are held in Redis and its settlement was lost: completed this long ago.
    Sent(Duration),
    /// Its slots are held in Redis and were never used: to free.
    Released,
}

/// A call whose slots Redis does not hold as they are, written back when Redis answers again.
#[derive(Debug, Clone)]
pub struct Unshared {
    /// The name its slots are (or are to be) held under; unique among this replica's calls.
    pub member: String,
    pub state: Unsettled,
    /// Bucket bases with the slots taken in each.
    pub buckets: Vec<(String, u32)>,
}

impl RedisLink {
    fn window_us(&self) -> u64 {
        self.window.as_micros() as u64
    }

    /// How long a bucket's keys outlive their last write, in milliseconds: past the window and
    /// any lease, so nothing that still counts expires.
    fn ttl_ms(&self) -> u64 {
        (self.window + self.lease).as_millis() as u64 + 60_000
    }

    /// `<prefix>:b:<app>:<scope>` — the base of a bucket's keys. App names and scope labels come
    /// from config and Graph ids, never from secrets.
    pub fn bucket_base(&self, app: &str, scope: &str) -> String {
        format!("{}:b:{app}:{scope}", self.prefix)
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
        member: &str,
    ) -> redis::RedisResult<Admission> {
        let mut inv = ADMIT.prepare_invoke();
        for (base, _, _) in buckets {
            inv.key(format!("{base}:log"))
                .key(format!("{base}:fl"))
                .key(format!("{base}:blk"));
        }
        inv.key(format!("{}:blk", self.app_base(app)));
        inv.arg(self.window_us())
            .arg(self.lease.as_micros() as u64)
            .arg(member)
            .arg(buckets.len())
            .arg(self.ttl_ms());
        for (_, limit, n) in buckets {
            inv.arg(*limit).arg(*n);
        }
        let inv = &inv;
        let out: Vec<i64> = self
            .call(move |mut conn| async move { inv.invoke_async(&mut conn).await })
            .await?;
        let at = |i: usize| out.get(i).copied().unwrap_or(0).max(0) as u64;
        match out.first() {
            Some(1) => Ok(Admission::Taken {
                member: member.to_string(),
                buckets: (0..buckets.len())
                    .map(|b| Seen {
                        remaining: at(1 + b * 4) as u32,
                        reset_us: at(2 + b * 4),
                        done: at(3 + b * 4) as u32,
                        inflight: at(4 + b * 4) as u32,
                    })
                    .collect(),
            }),
            _ => Ok(Admission::Refused {
                index: at(1) as usize,
                retry_us: at(2),
                blocked: at(3) == 1,
                seen: Seen {
                    remaining: 0,
                    reset_us: at(2),
                    done: at(4) as u32,
                    inflight: at(5) as u32,
                },
            }),
        }
    }

    /// Completes (`sent`: logged now) or releases an admission's slots, held under `member`.
    pub async fn settle(
        &self,
        buckets: &[(String, u32)],
        member: &str,
        sent: bool,
    ) -> redis::RedisResult<()> {
        let mut inv = SETTLE.prepare_invoke();
        for (base, _) in buckets {
            inv.key(format!("{base}:log")).key(format!("{base}:fl"));
        }
        inv.arg(member)
            .arg(if sent { "1" } else { "0" })
            .arg(buckets.len())
            .arg(self.window_us())
            .arg(self.ttl_ms());
        for (_, n) in buckets {
            inv.arg(*n);
        }
        let inv = &inv;
        self.call(move |mut conn| async move { inv.invoke_async::<i64>(&mut conn).await })
            .await
            .map(|_| ())
    }

    /// Raises a bucket's log to `target` calls and blocks it for `block` if non-zero.
    pub async fn raise(&self, base: &str, target: u32, block: Duration) -> redis::RedisResult<()> {
        let mut inv = RAISE.prepare_invoke();
        inv.key(format!("{base}:log"))
            .key(format!("{base}:fl"))
            .key(format!("{base}:blk"));
        inv.arg(self.window_us())
            .arg(target)
            .arg(block.as_micros() as u64)
            .arg(self.ttl_ms());
        let inv = &inv;
        self.call(move |mut conn| async move { inv.invoke_async::<i64>(&mut conn).await })
            .await
            .map(|_| ())
    }

    /// (used, in flight, until a slot frees, blocked for) of one bucket.
    pub async fn peek(&self, base: &str) -> redis::RedisResult<(u32, u32, Duration, Duration)> {
        let mut inv = PEEK.prepare_invoke();
        inv.key(format!("{base}:log"))
            .key(format!("{base}:fl"))
            .key(format!("{base}:blk"));
        inv.arg(self.window_us());
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

    /// Says this replica is here with nothing unwritten (if `clean`; else only asks), if Redis
    /// still holds the data of `epoch`
    /// (see `scripts::CHECK_IN`). Answers `Ok(Ok((Redis time in ms, replicas checked in since
    /// `since_ms` (0: now), replicas checked in within `fresh`)))`, or `Ok(Err(epoch))` when
    /// Redis's data are not those of `epoch` (it lost them, or this replica knew none yet).
    pub async fn check_in(
        &self,
        since_ms: u64,
        fresh: Duration,
        epoch: &str,
        clean: bool,
    ) -> redis::RedisResult<Result<(u64, u32, u32), String>> {
        let mut inv = CHECK_IN.prepare_invoke();
        inv.key(format!("{}:replicas", self.prefix))
            .key(format!("{}:epoch", self.prefix))
            .arg(&self.replica)
            .arg(since_ms)
            .arg(fresh.as_millis() as u64)
            .arg(epoch)
            .arg(format!("{:016x}", rand::random::<u64>()))
            .arg(if clean { "1" } else { "0" });
        let inv = &inv;
        let (now, back, seen, now_epoch): (u64, u32, u32, String) = self
            .call(move |mut conn| async move { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(if now == 0 {
            Err(now_epoch)
        } else {
            Ok((now, back, seen))
        })
    }

    /// Writes what Redis does not know of this replica's calls (see `scripts::WRITE_BACK`): calls
    /// made while it was away (done ones at their age, ones in flight as held slots) and
    /// settlements that were lost. Safe to run again with the same entries.
    pub async fn write_back(&self, calls: &[Unshared]) -> redis::RedisResult<()> {
        let mut bases: Vec<&str> = Vec::new();
        let mut inv = WRITE_BACK.prepare_invoke();
        let mut args: Vec<String> = Vec::new();
        for c in calls {
            let (kind, age) = match c.state {
                Unsettled::InFlight => ("f", Duration::ZERO),
                Unsettled::Done(age) => ("d", age),
                Unsettled::Sent(age) => ("s", age),
                Unsettled::Released => ("r", Duration::ZERO),
            };
            args.push(c.member.clone());
            args.push(kind.into());
            args.push((age.as_micros() as u64).to_string());
            args.push(c.buckets.len().to_string());
            for (base, n) in &c.buckets {
                let i = match bases.iter().position(|b| b == base) {
                    Some(i) => i,
                    None => {
                        bases.push(base);
                        bases.len() - 1
                    }
                };
                args.push(i.to_string());
                args.push(n.to_string());
            }
        }
        for base in &bases {
            inv.key(format!("{base}:log")).key(format!("{base}:fl"));
        }
        inv.key(format!("{}:wb:{}", self.prefix, self.replica));
        inv.arg(self.window_us())
            .arg(self.ttl_ms())
            .arg(self.lease.as_micros() as u64)
            .arg(calls.len());
        for a in &args {
            inv.arg(a);
        }
        let inv = &inv;
        self.call(move |mut conn| async move { inv.invoke_async::<i64>(&mut conn).await })
            .await
            .map(|_| ())
    }
}
