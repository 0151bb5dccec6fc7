//! What the admin view and metrics show of the buckets ([`BucketView`]): this process's logs
//! ([`snapshot`]), or the shared buckets read from Redis ([`from_redis`]) so every replica shows
//! the same, and Meta's app-wide usage ([`app_usage`]).
//!
//! Read-only: it must never take or release a slot, raise a count or block, and never hold the map
//! lock while it reads the logs or waits for Redis.

use super::learned::Apps;
use super::log::Logs;
use super::redis::RedisLink;
use super::types::{BucketKey, BucketView, Reported, Scope};
use crate::clock::Micros;
use crate::sync::MutexExt;

/// Every bucket this process has used, sorted by app and scope. `app_blocks` are the app-wide
/// blocks by app index.
pub(super) fn snapshot(
    logs: &Logs,
    apps: &Apps,
    app_blocks: &[Micros],
    now: Micros,
    window: Micros,
) -> Vec<BucketView> {
    let mut out: Vec<BucketView> = logs
        .all()
        .into_iter()
        .map(|(key, b)| {
            let mut b = b.lock_unpoisoned();
            b.prune(now, window);
            let blocked = b
                .blocked_until
                .max(app_blocks.get(key.app).copied().unwrap_or(0));
            BucketView {
                app: apps.name(key.app),
                scope: key.scope.label(),
                limit: b.limit,
                used: b.used(),
                in_flight: b.inflight,
                remaining: b.limit.saturating_sub(b.used()),
                reset_in_secs: (b.next_free(now, window) - now).div_ceil(1_000_000),
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

/// Meta's latest `X-App-Usage` per app name; `reported` is by app index.
pub(super) fn app_usage(
    apps: &Apps,
    reported: Vec<Option<Reported>>,
) -> Vec<(String, Option<Reported>)> {
    apps.names()
        .zip(reported)
        .map(|(name, r)| (name.to_string(), r))
        .collect()
}

/// Every configured bucket (each app's WABAs and its credit line) and every bucket used here, read
/// from Redis. Waiters, rejections and Meta's report are this process's own (from `local`, the
/// snapshot). Falls back to `local` as a whole if Redis fails midway.
pub(super) async fn from_redis(
    link: &RedisLink,
    logs: &Logs,
    apps: &Apps,
    local: Vec<BucketView>,
) -> Vec<BucketView> {
    let mut keys: Vec<BucketKey> = Vec::new();
    for i in 0..apps.len() {
        keys.extend(apps.wabas(i).map(|w| BucketKey {
            app: i,
            scope: Scope::Waba(w.clone()),
        }));
        keys.push(BucketKey {
            app: i,
            scope: Scope::CreditLine,
        });
    }
    for k in logs.keys() {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(limit) = apps.limit_of(&key) else {
            continue;
        };
        let (app, scope) = (apps.name(key.app), key.scope.label());
        let Ok((done, in_flight, reset, blocked)) =
            link.peek(&link.bucket_base(&app, &scope)).await
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
