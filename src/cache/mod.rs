//! The response cache: GET/HEAD answers kept in moka per app, token owner, path and normalized query;
//! identical concurrent misses coalesced into one upstream call; successful writes dropping what they
//! touched; stale answers when Meta fails (and, through [`ResponseCache::stale`], when the budget is
//! spent). Rules, headers and `Cache-Control` semantics are in `docs/cache.md`.
//!
//! It runs after authentication and authorization, never before. It must never serve an entry across
//! apps or tokens, and never store an error, a non-200, a token or a client key: entries hold only a
//! 200 body and a short list of Meta's headers, and the key holds a WABA id, never a token.
//!
//! This file is the facade the pipeline, admin and metrics use ([`ResponseCache`]: `plan`, `serve`,
//! `stale`, `purge`, `usage`) and the order of a read (entry, coalesced fetch, stale fallback). Its
//! parts never import this file, and each imports only parts listed before it:
//! - `key.rs`: [`CacheKey`] and the invalidation slot of (app, object id);
//! - `directives.rs`: the caller's request `Cache-Control`;
//! - `plan.rs`: [`Lookup`] in, [`Plan`] out (bypass, read under a TTL rule, write);
//! - `entry.rs`: [`CachedResponse`], what may be stored, and rendering (`X-Cache`, `Age`, ...);
//! - `store.rs`: the moka store, invalidation counters and clock;
//! - `coalesce.rs`: one upstream call for identical concurrent misses, and the [`BodyDeadline`]
//!   by which a streamed answer must be whole to be kept.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method};

use crate::clock::SharedClock;
use crate::config;
use crate::error::GatewayError;

mod coalesce;
mod directives;
mod entry;
mod key;
mod plan;
mod store;
#[cfg(test)]
mod tests;

use coalesce::{FetchOutcome, Inflight, Role};
use directives::Directives;
use entry::{answer, BYPASS, HIT, MISS};
use plan::{PlanKind, Read};
use store::Store;

pub use coalesce::BodyDeadline;
pub use entry::{CachedResponse, X_CACHE};
pub use key::CacheKey;
pub use plan::{Lookup, Plan};

/// Whether a failure may be answered with a stale entry: Meta unreachable or too slow. (A refusal by
/// the rate limiter belongs here too once it exists; it must be matched here, not guessed.)
pub fn serves_stale(e: &GatewayError) -> bool {
    use GatewayError::*;
    match e {
        UpstreamUnreachable | UpstreamTimeout(_) => true,
        // A spent or blocked budget is exactly when an old answer beats none; a client over its
        // own rate gets no such favour.
        RateLimited(r) => r.reason != crate::limits::RefusalReason::ClientQuota,
        MissingKey
        | UnknownKey
        | ObjectNotAllowed { .. }
        | MethodNotAllowed { .. }
        | BadRequest(_)
        | UriTooLong { .. }
        | HeadersTooLarge(_)
        | BodyTooLarge { .. }
        | CallerBodyFailed
        | NotCached => false,
        // Refused before the cache is consulted.
        BodyTimeout(_) | Overloaded { .. } => false,
    }
}

/// The process-wide response cache; shared through the gateway state.
pub struct ResponseCache {
    cfg: config::Cache,
    store: Store,
    inflight: Inflight,
}

impl ResponseCache {
    /// `apps` is the number of configured apps; `max_body` the largest response body worth buffering.
    pub fn new(
        cfg: &config::Cache,
        apps: usize,
        max_body: u64,
        clock: SharedClock,
    ) -> ResponseCache {
        // An entry larger than a quarter of the cache would only push out everything else.
        let max_entry = max_body.min(cfg.max_bytes / 4).min(u32::MAX as u64 / 2) as usize;
        ResponseCache {
            cfg: cfg.clone(),
            store: Store::new(cfg.max_bytes, apps, clock),
            inflight: Inflight::new(max_entry),
        }
    }

    /// Time since the clock's epoch; only differences matter here.
    pub fn now(&self) -> Duration {
        self.store.now()
    }

    /// Decides what the cache step does with a request.
    pub fn plan<'t>(&self, l: &Lookup<'_, 't>) -> Plan<'t> {
        Plan::new(&self.cfg, l)
    }

    /// Runs the cache step: answers from the cache, or runs `fetch` (limit -> upstream -> rewrite)
    /// once for every identical caller, stores what may be stored, and labels the answer. `fetch`
    /// makes the future only when a call is needed, so a hit never builds (or moves) it.
    pub async fn serve<M, F>(&self, plan: Plan<'_>, fetch: M) -> Result<Response, GatewayError>
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<Response, GatewayError>>,
    {
        match plan.0 {
            PlanKind::Bypass => {
                let mut resp = fetch().await?;
                resp.headers_mut().insert(X_CACHE, BYPASS);
                Ok(resp)
            }
            PlanKind::Write { app, slot } => {
                let resp = fetch().await?;
                if resp.status().is_success() {
                    if let Some(slot) = slot {
                        self.store.invalidate_slot(slot);
                    }
                    tracing::debug!(app, "cache: write invalidated its object");
                }
                Ok(resp)
            }
            PlanKind::Read(read) => match self.read(*read, fetch).await {
                Ok(resp) => Ok(resp),
                // Rendered here rather than by the pipeline so that the answer says MISS.
                Err(e) => {
                    if e.is_caller_error() {
                        tracing::debug!(error = %e, "request refused");
                    } else {
                        tracing::warn!(error = %e, "request failed");
                    }
                    let mut resp = e.into_response();
                    resp.headers_mut().insert(X_CACHE, MISS);
                    Ok(resp)
                }
            },
        }
    }

    async fn read<M, F>(&self, r: Read<'_>, fetch: M) -> Result<Response, GatewayError>
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<Response, GatewayError>>,
    {
        let d = r.directives;
        if !d.no_cache {
            let now = self.now();
            if let Some(e) = self.store.entry(&r.key, now) {
                if e.is_fresh(now) && d.accepts_age(e.age(now)) {
                    // The time read above: a hit reads the clock once.
                    return Ok(e.render(now, r.head, HIT));
                }
            }
        }
        if d.only_if_cached {
            return Err(GatewayError::NotCached);
        }
        let label = if d.no_cache { BYPASS } else { MISS };
        // Boxed for the same reason as the fetch itself: a hit should not carry (and copy) the
        // state of a miss.
        let (outcome, role) = Box::pin(self.inflight.fetch_once(&self.store, &r, fetch)).await;
        match outcome {
            FetchOutcome::Stored(e) => Ok(match role {
                // The caller that fetched gets every header Meta sent, not just the kept ones.
                Role::Led(Some(resp)) => resp,
                Role::Led(None) => self.answer_entry(&e, r.head, label),
                // A waiter was answered without a call of its own.
                Role::Waited => self.answer_entry(&e, r.head, HIT),
            }),
            FetchOutcome::Answer(a) => {
                if a.status.is_server_error() {
                    if let Some(resp) = self.stale_answer(&r, &d) {
                        tracing::warn!(status = a.status.as_u16(), "cache: answered stale");
                        return Ok(resp);
                    }
                }
                Ok(answer(&a, r.head, label))
            }
            FetchOutcome::Failed(e) => {
                if serves_stale(&e) {
                    if let Some(resp) = self.stale_answer(&r, &d) {
                        tracing::warn!(error = %e, "cache: answered stale");
                        return Ok(resp);
                    }
                }
                Err(e)
            }
            FetchOutcome::Retry => match role {
                Role::Led(Some(mut resp)) => {
                    resp.headers_mut().insert(X_CACHE, label);
                    Ok(resp)
                }
                // Not reached: waiters fetch again on Retry, and a leader that retries has a response.
                Role::Led(None) | Role::Waited => Err(GatewayError::UpstreamUnreachable),
            },
        }
    }

    /// A stale answer for `key` if one may be given: the hook for the limit step, which calls it
    /// when a read's bucket is exhausted or blocked and answers with [`Self::stale_response`].
    pub fn stale(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let now = self.now();
        self.store.entry(key, now).filter(|e| e.allows_stale())
    }

    /// Renders an entry from [`Self::stale`] as `X-Cache: STALE` with `Age` and `Warning: 110`.
    pub fn stale_response(&self, e: &CachedResponse, head: bool) -> Response {
        e.render_stale(self.now(), head)
    }

    /// The stale answer for a read whose fetch failed, if its entry is still kept, was not
    /// invalidated meanwhile, allows stale answers and is young enough for the caller's `max-age`.
    fn stale_answer(&self, r: &Read<'_>, d: &Directives) -> Option<Response> {
        let now = self.now();
        let e = self.stale(&r.key)?;
        d.accepts_age(e.age(now))
            .then(|| self.stale_response(&e, r.head))
    }

    fn answer_entry(&self, e: &CachedResponse, head: bool, label: HeaderValue) -> Response {
        e.render(self.now(), head, label)
    }

    /// Drops every entry of `app` whose path (version ignored) starts with `path_prefix` segment by
    /// segment: `/123` covers `/v19.0/123` and `/123/message_templates`, not `/1234`. `/` drops the
    /// whole app. Returns how many stored entries matched. For the admin endpoint.
    ///
    /// So that a fill in flight cannot bring old data back, the object's invalidation counter is
    /// bumped too: every entry under the prefix's first segment (`/123...`) is dropped with it.
    pub fn purge(&self, app: usize, path_prefix: &str) -> usize {
        self.store.purge(app, path_prefix)
    }

    /// Entries and their weighed bytes, after moka has applied pending evictions.
    pub fn usage(&self) -> (u64, u64) {
        self.store.usage()
    }

    /// Every stored entry: for tests that prove no secret is kept.
    pub fn entries(&self) -> Vec<(CacheKey, Arc<CachedResponse>)> {
        self.store.entries()
    }
}

/// Marks a GET/HEAD answer that never reached the cache step (refused earlier) as `BYPASS`.
pub fn label_bypass(method: &Method, resp: &mut Response) {
    if (*method == Method::GET || *method == Method::HEAD) && !resp.headers().contains_key(X_CACHE)
    {
        resp.headers_mut().insert(X_CACHE, BYPASS);
    }
}
