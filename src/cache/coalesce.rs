//! One upstream call for identical concurrent misses: the first caller for a key leads (fetches,
//! buffers, stores what may be stored) and every caller that arrives meanwhile waits for the
//! [`FetchOutcome`] it hands over.
//!
//! The in-flight lock is held only to look up, insert or remove, never across an await, and a
//! leader leaves the map however it ends (cancellation included), so a waiter is never stranded.
//! It must never decide freshness rules or render a hit: that is the facade's and the entry's.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use tokio::sync::watch;

use super::entry::{self, CachedResponse, Stored, BYPASS, MISS};
use super::key::CacheKey;
use super::plan::Read;
use super::store::Store;
use crate::error::GatewayError;
use crate::sync::MutexExt;

/// When the body of a streamed answer must be whole for the cache to keep it: set by the respond
/// step as a response extension (from `upstream.body_timeout`, counted from the answer's head). A
/// fill that is not done by then ends in a 504 (or a stale entry) for the leader and every waiter.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    pub at: tokio::time::Instant,
    /// The configured timeout, for the error message.
    pub after: Duration,
}

/// What one fetch left for the callers that waited on it (and for the caller that made it).
#[derive(Clone)]
pub(super) enum FetchOutcome {
    Stored(Arc<CachedResponse>),
    /// Not cacheable (non-200, Graph error body, echoed token), but the same answer for everyone.
    Answer(Arc<Stored>),
    Failed(GatewayError),
    /// The leader's answer was too large to buffer: each waiter fetches for itself.
    Retry,
}

/// Whether a caller led the fetch (with its own response when the answer could not be shared) or
/// waited for another's.
pub(super) enum Role {
    Led(Option<Response>),
    Waited,
}

enum Join {
    Hit(Arc<CachedResponse>),
    Wait(watch::Receiver<Option<FetchOutcome>>),
    Lead(watch::Sender<Option<FetchOutcome>>),
}

enum Buffered {
    Whole(Stored),
    Streamed(Response),
}

/// The fetches in progress, one per key.
pub(super) struct Inflight {
    /// So that identical misses wait for one fetch. The lock is held only to look up, insert or
    /// remove, never across an await.
    map: Mutex<foldhash::HashMap<CacheKey, watch::Receiver<Option<FetchOutcome>>>>,
    /// Largest body an entry may hold; larger answers are streamed and not kept.
    max_entry: usize,
}

/// Removes the fetch from the in-flight map when the leader is done or dropped.
struct Leave<'a> {
    inflight: &'a Inflight,
    key: &'a CacheKey,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut map = self.inflight.map.lock_unpoisoned();
        map.remove(self.key);
    }
}

impl Inflight {
    pub(super) fn new(max_entry: usize) -> Inflight {
        Inflight {
            map: Mutex::new(foldhash::HashMap::default()),
            max_entry,
        }
    }

    /// Joins the fetch in progress for the key, or makes it.
    pub(super) async fn fetch_once<M, F>(
        &self,
        store: &Store,
        r: &Read<'_>,
        fetch: M,
    ) -> (FetchOutcome, Role)
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<Response, GatewayError>>,
    {
        let mut fetch = Some(fetch);
        loop {
            match self.join_or_lead(store, r) {
                Join::Hit(e) => return (FetchOutcome::Stored(e), Role::Waited),
                Join::Lead(tx) => {
                    return match fetch.take() {
                        Some(fetch) => self.lead(store, r, fetch(), tx).await,
                        // Not reached: only leading takes the fetch, and leading returns.
                        None => (
                            FetchOutcome::Failed(GatewayError::UpstreamUnreachable),
                            Role::Waited,
                        ),
                    };
                }
                Join::Wait(mut rx) => {
                    match rx
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|v| v.clone())
                    {
                        Some(FetchOutcome::Retry) | None => {
                            // The leader was cancelled or its answer was too large to share: go
                            // again, and perhaps lead this time.
                            tokio::task::yield_now().await;
                        }
                        Some(outcome) => return (outcome, Role::Waited),
                    }
                }
            }
        }
    }

    /// Under the in-flight lock: an entry stored since the caller looked, a fetch to wait for, or
    /// the caller's turn to fetch (registered before the lock is released).
    fn join_or_lead(&self, store: &Store, r: &Read<'_>) -> Join {
        let mut map = self.map.lock_unpoisoned();
        if let Some(rx) = map.get(&r.key) {
            return Join::Wait(rx.clone());
        }
        // A leader stores before it leaves the map, so an entry that appeared since this caller
        // looked is seen here.
        if !r.directives.no_cache {
            let now = store.now();
            if let Some(e) = store.entry(&r.key, now) {
                if e.is_fresh(now) && r.directives.accepts_age(e.age(now)) {
                    return Join::Hit(e);
                }
            }
        }
        let (tx, rx) = watch::channel(None);
        map.insert(r.key.clone(), rx);
        Join::Lead(tx)
    }

    async fn lead<F>(
        &self,
        store: &Store,
        r: &Read<'_>,
        fetch: F,
        tx: watch::Sender<Option<FetchOutcome>>,
    ) -> (FetchOutcome, Role)
    where
        F: Future<Output = Result<Response, GatewayError>>,
    {
        // Leaves the in-flight map however this ends, cancellation included; waiters then see the
        // channel close and try again.
        let leave = Leave {
            inflight: self,
            key: &r.key,
        };
        // Counters are read before the call: a write that lands while it is in flight makes this
        // fill invalid at once.
        let generation = store.generation(&r.key);
        let (outcome, own) = match fetch.await {
            Err(e) => (FetchOutcome::Failed(e), None),
            Ok(resp) => match self.buffer(resp).await {
                Err(e) => (FetchOutcome::Failed(e), None),
                Ok(Buffered::Whole(stored)) => {
                    if stored.storable(r.token) {
                        let label = if r.directives.no_cache { BYPASS } else { MISS };
                        let kept = entry::keep_headers(&stored);
                        let own = entry::answer_filled(stored, r.head, label, r.ttl);
                        let e = Arc::new(CachedResponse::new(
                            kept,
                            store.now(),
                            r.ttl,
                            r.stale_for,
                            generation,
                        ));
                        store.insert(r.key.clone(), e.clone());
                        (FetchOutcome::Stored(e), Some(own))
                    } else {
                        (FetchOutcome::Answer(Arc::new(stored)), None)
                    }
                }
                Ok(Buffered::Streamed(resp)) => (FetchOutcome::Retry, Some(resp)),
            },
        };
        // Out of the map (after the store), then told to the callers that joined meanwhile: none
        // can join after the removal, and on most misses nobody joined, so nothing is woken.
        drop(leave);
        if tx.receiver_count() > 0 {
            let _ = tx.send(Some(outcome.clone()));
        }
        (outcome, Role::Led(own))
    }

    /// Reads a body whole when it fits an entry (by its [`BodyDeadline`], if the answer has one);
    /// a larger one is passed on as a stream. A body that fails or stalls is a failed fetch: a
    /// stall past `upstream.body_idle_timeout` or the deadline is a timeout (504, or stale).
    async fn buffer(&self, resp: Response) -> Result<Buffered, GatewayError> {
        let (parts, body) = resp.into_parts();
        let deadline = parts.extensions.get::<BodyDeadline>().copied();
        // What the body's error meant, kept for after the read (which reports only "failed").
        let failure: Arc<OnceLock<GatewayError>> = Arc::default();
        let seen = failure.clone();
        let body = body.map_err(move |e| {
            let _ = seen.set(crate::upstream::body_failure(&e));
            e
        });
        // The rewritten JSON arrives as one frame: `read` keeps it as that `Bytes`, without a copy.
        let body = match crate::body::read(body, self.max_entry as u64, deadline.map(|d| d.at))
            .await
        {
            Ok(crate::body::Read::Whole(body)) => body,
            Ok(crate::body::Read::TooLarge { head, rest }) => {
                let head = futures_util::stream::once(async move { Ok::<_, axum::Error>(head) });
                let stream = futures_util::StreamExt::chain(head, rest.into_data_stream());
                return Ok(Buffered::Streamed(Response::from_parts(
                    parts,
                    Body::from_stream(stream),
                )));
            }
            Err(crate::body::ReadError::TimedOut) => {
                let after = deadline.map_or(Duration::ZERO, |d| d.after);
                return Err(GatewayError::UpstreamTimeout(after));
            }
            Err(crate::body::ReadError::Failed) => {
                return Err(failure
                    .get()
                    .cloned()
                    .unwrap_or(GatewayError::UpstreamUnreachable))
            }
        };
        let mut headers = parts.headers;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Ok(Buffered::Whole(Stored {
            status: parts.status,
            headers,
            body,
        }))
    }
}
