//! The limiter's side of the shared buckets: an admission through Redis (a call's buckets named as
//! Redis keys, Redis's answer turned into a [`Permit`] or a [`Refusal`]), and what this replica
//! passes on to the others: Meta's feedback ([`Raise`]) and learned facts ([`Event`]).
//!
//! The wire format lives in `redis`; the fallback when Redis is away is the limiter's decision.
//! This file must never wait for Redis outside an admission (feedback and facts go out in the
//! background), and never keep slots that a lost answer may have taken: it gives them back.

use std::sync::Arc;
use std::time::Duration;

use super::learned::Apps;
use super::outage::Journal;
use super::permit::{self, Mirror, Permit, Remote};
use super::redis::{Connector, RedisLink};
use super::redis_buckets::Admission;
use super::types::{BucketKey, Budget, Refusal, RefusalReason};
use crate::clock::{Micros, SharedClock};
use crate::config::Config;

/// What an admission through Redis is measured against.
pub(super) struct Admit<'a> {
    pub(super) link: &'a Arc<RedisLink>,
    /// Where settlements go (and wait, if Redis cannot be told).
    pub(super) journal: &'a Arc<Journal>,
    pub(super) apps: &'a Apps,
    pub(super) clock: &'a SharedClock,
    pub(super) window: Duration,
    pub(super) reserve_percent: u32,
}

/// Admits through Redis. With `wait`, a refused caller sleeps until the slot Redis named frees and
/// asks again, up to `deadline`: across replicas there is no shared queue. `Err(())` when Redis
/// failed or was too slow. `mirror` logs a sent call in this process too.
pub(super) async fn admit_until(
    at: &Admit<'_>,
    wants: &[(BucketKey, u32)],
    reserve: bool,
    wait: bool,
    deadline: tokio::time::Instant,
    mirror: Arc<dyn Mirror>,
) -> Result<Result<Permit, Refusal>, ()> {
    loop {
        match admit(at, wants, reserve, mirror.clone()).await? {
            Ok(p) => return Ok(Ok(p)),
            Err(r) => {
                if !wait || tokio::time::Instant::now() + r.retry_after > deadline {
                    return Ok(Err(r));
                }
                tokio::time::sleep(r.retry_after.max(Duration::from_millis(1))).await;
            }
        }
    }
}

/// One admission through Redis: `n` slots in each limited bucket of `wants`, all or nothing.
async fn admit(
    at: &Admit<'_>,
    wants: &[(BucketKey, u32)],
    reserve: bool,
    mirror: Arc<dyn Mirror>,
) -> Result<Result<Permit, Refusal>, ()> {
    let Admit {
        link, apps, clock, ..
    } = *at;
    // (key, bucket base, usable limit, n), each bucket once.
    let mut picked: Vec<(BucketKey, String, u32, u32)> = Vec::new();
    for (key, n) in wants {
        let Some(limit) = apps.limit_of(key) else {
            continue;
        };
        let usable = permit::usable(limit, reserve, at.reserve_percent);
        match picked.iter_mut().find(|(k, ..)| k == key) {
            Some(p) => p.3 += n,
            None => picked.push((key.clone(), base_of(link, apps, key), usable, *n)),
        }
    }
    if picked.is_empty() {
        return Ok(Ok(Permit::remote(clock.clone(), None, Vec::new())));
    }
    let args: Vec<(String, u32, u32)> = picked
        .iter()
        .map(|(_, base, limit, n)| (base.clone(), *limit, *n))
        .collect();
    let bases = || -> Vec<(String, u32)> {
        picked
            .iter()
            .map(|(_, base, _, n)| (base.clone(), *n))
            .collect()
    };
    let app = apps.name(picked[0].0.app);
    let member = link.new_member();
    match link.admit(&app, &args, &member).await {
        Ok(Admission::Taken { member, buckets }) => {
            let now = clock.now();
            for ((key, _, _, n), seen) in picked.iter().zip(&buckets) {
                mirror.seen(key, *seen, *n, now);
            }
            let budgets = picked
                .iter()
                .zip(buckets)
                .map(|((key, ..), seen)| Budget {
                    scope: key.scope.clone(),
                    limit: apps.limit_of(key).unwrap_or(0),
                    remaining: seen.remaining,
                    reset: Duration::from_micros(seen.reset_us),
                    window: at.window,
                })
                .collect();
            let buckets = bases();
            at.journal.admitted(&member, &buckets);
            let remote = Remote {
                journal: at.journal.clone(),
                buckets,
                member,
                keys: picked.iter().map(|(k, _, _, n)| (k.clone(), *n)).collect(),
                mirror,
                logged_here: false,
            };
            Ok(Ok(Permit::remote(clock.clone(), Some(remote), budgets)))
        }
        Ok(Admission::Refused {
            index,
            retry_us,
            blocked,
            seen,
        }) => {
            let (key, ..) = &picked[index.min(picked.len() - 1)];
            mirror.seen(key, seen, 0, clock.now());
            let reason = if blocked {
                RefusalReason::Blocked
            } else {
                RefusalReason::Full
            };
            Ok(Err(Refusal::new(
                reason,
                apps.name(key.app),
                key.scope.clone(),
                apps.limit_of(key).unwrap_or(0),
                at.window,
                Duration::from_micros(retry_us),
            )))
        }
        Err(e) => {
            tracing::warn!(error = %e, "Redis admission failed; using the fallback");
            // The script may have run before the answer was lost: give its slots back.
            at.journal.settle(bases(), member, false);
            Err(())
        }
    }
}

/// The link to Redis and the journal of what it misses, when `limits.backend = "redis"`;
/// `Err` when the link cannot be made (config validation should make that unreachable).
#[allow(clippy::type_complexity)]
pub(super) fn connect(
    config: &Config,
    clock: SharedClock,
) -> Result<Option<(Arc<RedisLink>, Arc<Journal>)>, ()> {
    let (l, Some(r)) = (&config.limits, &config.limits.redis) else {
        return Ok(None);
    };
    // An unsettled slot (its replica died) counts from its lease end, after the request must have
    // reached Meta; a live replica keeps a lost settlement for the write-back.
    let lease = config.upstream.request_timeout + Duration::from_secs(5);
    let connector = Connector::new(&r.url, &r.access).map_err(|e| {
        tracing::error!(error = %e, "the Redis backend cannot be used: every call is refused");
    })?;
    let link = RedisLink::with(connector, &r.prefix, r.timeout);
    let link = Arc::new(link.with_window(l.window, lease));
    let window = crate::clock::micros(l.window);
    let journal = Arc::new(Journal::new(link.clone(), clock, window, r.replicas));
    Ok(Some((link, journal)))
}

/// While Redis is away, what the others did after it last answered is unknown: until `for_` after
/// that moment (0 while Redis answers, or without Redis).
pub(super) fn unseen_until(
    link: Option<&Arc<RedisLink>>,
    confirmed: bool,
    now: Micros,
    for_: Micros,
) -> Micros {
    match link {
        Some(link) if !link.available() || !confirmed => {
            now.saturating_sub(crate::clock::micros(link.since_up())) + for_
        }
        _ => 0,
    }
}

/// The base of `key`'s keys in Redis.
pub(super) fn base_of(link: &RedisLink, apps: &Apps, key: &BucketKey) -> String {
    link.bucket_base(&apps.name(key.app), &key.scope.label())
}

/// What Meta's feedback raises in the shared buckets, so every replica stops at once.
pub(super) enum Raise<'a> {
    /// A bucket's log, raised to this many calls (and blocked, if the block is not zero).
    Bucket(&'a BucketKey, u32),
    /// The app's own block key, which every admission of the app checks (codes 4 and 17).
    App(usize),
}

/// Applies a raised count or a block to the shared bucket too, in the background.
pub(super) fn raise(link: &Arc<RedisLink>, apps: &Apps, raise: Raise<'_>, block: Duration) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let nothing = match raise {
        Raise::Bucket(_, count) => count == 0 && block.is_zero(),
        Raise::App(_) => false,
    };
    if !link.available() || nothing {
        return;
    }
    let (base, target) = match raise {
        Raise::Bucket(key, count) => (base_of(link, apps, key), count),
        // An app-wide block lives in the app's own key; it raises no count.
        Raise::App(app) => (link.app_base(&apps.name(app)), 0),
    };
    let link = link.clone();
    handle.spawn(async move {
        if let Err(e) = link.raise(&base, target, block).await {
            tracing::warn!(error = %e, "could not share Meta's feedback through Redis");
        }
    });
}
