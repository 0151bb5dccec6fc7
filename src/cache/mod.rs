//! The response cache: GET/HEAD answers kept in moka per app, token owner, path and normalized query;
//! identical concurrent misses coalesced into one upstream call; successful writes dropping what they
//! touched; stale answers when Meta fails (and, through [`ResponseCache::stale`], when the budget is
//! spent). Rules, headers and `Cache-Control` semantics are in `docs/cache.md`.
//!
//! It runs after authentication and authorization, never before. It must never serve an entry across
//! apps or tokens, and never store an error, a non-200, a token or a client key: entries hold only a
//! 200 body and a short list of Meta's headers, and the key holds a WABA id, never a token.

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::config;
use crate::error::GatewayError;
use crate::sync::MutexExt;
use crate::target::{self, Param, Target};

#[cfg(test)]
mod tests;

/// Response header naming what the cache did: `HIT`, `MISS`, `STALE` or `BYPASS`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const HIT: HeaderValue = HeaderValue::from_static("HIT");
const MISS: HeaderValue = HeaderValue::from_static("MISS");
const STALE: HeaderValue = HeaderValue::from_static("STALE");
const BYPASS: HeaderValue = HeaderValue::from_static("BYPASS");
/// RFC 7234's warn-code 110, still what HTTP caches and their clients recognise.
const STALE_WARNING: HeaderValue = HeaderValue::from_static("110 - \"Response is Stale\"");

/// Meta's headers that an entry keeps; everything else of the original answer is dropped.
const KEPT_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    HeaderName::from_static("facebook-api-version"),
    HeaderName::from_static("x-fb-trace-id"),
    HeaderName::from_static("x-business-use-case-usage"),
];

/// Invalidation counters, one per hash slot of (app, object id). A write bumps its slot; entries
/// remember the value they were fetched under. Collisions only cost an extra miss.
const SLOTS: usize = 4096;

/// Bytes counted per entry on top of its key, body and headers (the structs and moka's node).
const ENTRY_OVERHEAD: usize = 160;

/// Top-level names in a `fields` value: `id,name,message_templates{name,status}` ->
/// `id`, `name`, `message_templates`. Nested expansions and modifiers (`.limit(5)`) are not names.
fn field_names(fields: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0usize;
    let mut start = 0usize;
    let mut out = Vec::new();
    for (i, c) in fields.char_indices() {
        match c {
            '{' | '(' => depth += 1,
            '}' | ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&fields[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&fields[start..]);
    out.into_iter().filter_map(|f| {
        let name = f.split(['{', '.', '(']).next().unwrap_or("").trim();
        (!name.is_empty()).then_some(name)
    })
}

// ---------------------------------------------------------------- keys

/// What an entry is found by: app, token owner, link host, versioned path, sorted query without
/// auth parameters. The offsets are part of equality, so no component can run into the next.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    app: u32,
    /// Invalidation slot of (app, object id); derived from the rest, kept to avoid rehashing.
    slot: u32,
    /// `<waba whose token is used, or empty>\n<link host>\n/<version>/<segments>?<k=v&...>`
    /// A `String`, not a `Box<str>`: most keys are built for one lookup and dropped, and shrinking
    /// each to fit would reallocate it; a stored key is a clone, which is exact.
    text: String,
    /// Where the path starts, where the path without version starts, and where the path ends.
    path_at: u32,
    unversioned_at: u32,
    path_end: u32,
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The text holds no secret, but there is no need for logs to carry it whole.
        write!(f, "CacheKey(app {}, {})", self.app, self.path())
    }
}

impl CacheKey {
    /// The path as requested, version included (`/v19.0/123/message_templates`).
    pub fn path(&self) -> &str {
        &self.text[self.path_at as usize..self.path_end as usize]
    }

    fn unversioned_path(&self) -> &str {
        &self.text[self.unversioned_at as usize..self.path_end as usize]
    }

    /// Every byte the key holds, for memory accounting and the no-secrets test.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn build(app: usize, owner: Option<&str>, link_host: &str, t: &Target) -> CacheKey {
        let mut s =
            String::with_capacity(owner.map_or(0, str::len) + link_host.len() + t.path.len() + 64);
        s.push_str(owner.unwrap_or(""));
        s.push('\n');
        s.push_str(link_host);
        s.push('\n');
        let path_at = s.len();
        if let Some(v) = &t.version {
            s.push('/');
            s.push_str(v);
        }
        let unversioned_at = s.len();
        for seg in &t.segments {
            s.push('/');
            s.push_str(seg);
        }
        if t.segments.is_empty() {
            s.push('/');
        }
        let path_end = s.len();
        // Sorted by decoded name and value so `a=1&b=2` and `b=2&a=1` (or `%2C` and `,`) share an
        // entry; re-encoded so `&` and `=` inside values stay unambiguous.
        let mut params: Vec<&Param> = t
            .query
            .iter()
            .filter(|p| !target::is_auth_param(&p.key))
            .collect();
        params.sort_by(|a, b| (&a.key, &a.value).cmp(&(&b.key, &b.value)));
        for (i, p) in params.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.extend(form_urlencoded::byte_serialize(p.key.as_bytes()));
            s.push('=');
            s.extend(form_urlencoded::byte_serialize(p.value.as_bytes()));
        }
        CacheKey {
            app: app as u32,
            slot: slot_of(app, t.root().unwrap_or("")) as u32,
            text: s,
            path_at: path_at as u32,
            unversioned_at: unversioned_at as u32,
            path_end: path_end as u32,
        }
    }
}

fn slot_of(app: usize, root: &str) -> usize {
    // A fixed seed: stable for the life of the process, which is all slots need (replicas send
    // object ids, not slots).
    let h = std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::default(), (app, root));
    (h % SLOTS as u64) as usize
}

// ---------------------------------------------------------------- entries

/// A buffered answer: status, headers and body.
#[derive(Debug, Clone)]
struct Stored {
    status: StatusCode,
    /// Content-Length included: an answer clones the map (no name is hashed again) and adds only
    /// its own headers.
    headers: HeaderMap,
    body: Bytes,
}

/// One cached 200 answer. Holds only the kept headers and the body (paging links already rewritten
/// and free of credentials).
#[derive(Debug)]
pub struct CachedResponse {
    resp: Stored,
    stored_at: Duration,
    ttl: Duration,
    /// How long past `ttl` it may answer as stale; zero when its rule forbids stale answers.
    stale_for: Duration,
    /// Slot counter and app epoch at the time the fetch started.
    slot_gen: u64,
    app_epoch: u64,
}

impl CachedResponse {
    pub fn body(&self) -> &Bytes {
        &self.resp.body
    }
    pub fn headers(&self) -> &HeaderMap {
        &self.resp.headers
    }
    /// Whole seconds since the entry was stored.
    pub fn age(&self, now: Duration) -> u64 {
        now.saturating_sub(self.stored_at).as_secs()
    }
    fn is_fresh(&self, now: Duration) -> bool {
        now < self.stored_at + self.ttl
    }
    fn is_kept(&self, now: Duration) -> bool {
        now < self.stored_at + self.ttl + self.stale_for
    }
    fn weight(&self, key: &CacheKey) -> u32 {
        let headers: usize = self
            .resp
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 16)
            .sum();
        let n = key.text.len() + self.resp.body.len() + headers + ENTRY_OVERHEAD;
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// Tells moka to drop an entry once it can no longer answer, even as stale.
struct KeepFor;

impl moka::Expiry<CacheKey, Arc<CachedResponse>> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedResponse>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl + value.stale_for)
    }
}

// ---------------------------------------------------------------- caller directives

/// The request's `Cache-Control` directives that graphgate honours (RFC 9111 section 5.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Directives {
    no_cache: bool,
    max_age: Option<u64>,
    only_if_cached: bool,
}

impl Directives {
    fn parse(headers: &HeaderMap, allow_no_cache: bool) -> Directives {
        let mut d = Directives::default();
        for v in headers.get_all(header::CACHE_CONTROL) {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (item.trim(), None),
                };
                if name.eq_ignore_ascii_case("no-cache") {
                    d.no_cache = allow_no_cache;
                } else if name.eq_ignore_ascii_case("only-if-cached") {
                    d.only_if_cached = true;
                } else if name.eq_ignore_ascii_case("max-age") {
                    // RFC 9111 5.2.1.1: an invalid value is treated as 0 ... except that overflow
                    // means "very large" (1.2.2): saturate.
                    let n = arg.map_or(Some(0), |a| {
                        if a.bytes().all(|b| b.is_ascii_digit()) && !a.is_empty() {
                            Some(a.parse::<u64>().unwrap_or(u64::MAX))
                        } else {
                            Some(0)
                        }
                    });
                    d.max_age = match (d.max_age, n) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
        }
        d
    }

    fn accepts_age(&self, age: u64) -> bool {
        self.max_age.is_none_or(|m| age <= m)
    }
}

// ---------------------------------------------------------------- plans

/// What the pipeline knows about a request when it reaches the cache step.
pub struct Lookup<'a, 't> {
    pub app: usize,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub target: &'a Target,
    /// [`crate::auth::Directory::token_owner`] for the call.
    pub token_owner: Option<&'a str>,
    /// The token the call would use: only to refuse storing a body that echoes it.
    pub token: &'t crate::auth::Token,
    /// The Host paging links get rewritten to, or "" when `server.public_url` fixes it.
    pub link_host: &'a str,
    /// `[[client]] allow_no_cache` of the caller.
    pub allow_no_cache: bool,
}

/// What the cache step does with one request.
pub struct Plan<'a>(PlanKind<'a>);

enum PlanKind<'a> {
    /// A GET/HEAD the cache does not keep (disabled, `ttl = "0s"`): passed through, `X-Cache: BYPASS`.
    Bypass,
    /// A GET/HEAD the cache answers or fills.
    Read(Box<Read<'a>>),
    /// Any other method; a 2xx answer invalidates what it names.
    Write { app: usize, slot: Option<usize> },
}

struct Read<'a> {
    key: CacheKey,
    ttl: Duration,
    stale: bool,
    head: bool,
    directives: Directives,
    token: &'a crate::auth::Token,
}

impl Plan<'_> {
    /// Whether the request is a read the cache fills; the pipeline then fetches HEAD as GET.
    pub fn is_read(&self) -> bool {
        matches!(self.0, PlanKind::Read(_))
    }

    /// The key of a read, for the limit step's [`ResponseCache::stale`].
    pub fn key(&self) -> Option<&CacheKey> {
        match &self.0 {
            PlanKind::Read(r) => Some(&r.key),
            _ => None,
        }
    }
}

/// What a fetch left for the callers that waited on it.
#[derive(Clone)]
enum Shared {
    Stored(Arc<CachedResponse>),
    /// Not cacheable (non-200, Graph error body, echoed token), but the same answer for everyone.
    Answer(Arc<Stored>),
    Failed(GatewayError),
    /// The leader's answer was too large to buffer: each waiter fetches for itself.
    Retry,
}

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
        | RequestBodyFailed
        | NotCached => false,
    }
}

// ---------------------------------------------------------------- the cache

/// The process-wide response cache; shared through the gateway state.
pub struct ResponseCache {
    cfg: config::Cache,
    store: moka::sync::Cache<CacheKey, Arc<CachedResponse>, foldhash::fast::RandomState>,
    /// Fetches in progress, so identical misses wait for one. The lock is held only to look up,
    /// insert or remove, never across an await.
    inflight: Mutex<foldhash::HashMap<CacheKey, watch::Receiver<Option<Shared>>>>,
    slots: Box<[AtomicU64]>,
    /// Bumped by a whole-app purge.
    epochs: Box<[AtomicU64]>,
    clock: SharedClock,
    /// Largest body an entry may hold; larger answers are streamed and not kept.
    max_entry: usize,
}

impl ResponseCache {
    /// `apps` is the number of configured apps; `max_body` the largest response body worth buffering.
    pub fn new(
        cfg: &config::Cache,
        apps: usize,
        max_body: u64,
        clock: SharedClock,
    ) -> ResponseCache {
        let store = moka::sync::Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(|k: &CacheKey, v: &Arc<CachedResponse>| v.weight(k))
            .expire_after(KeepFor)
            // Seeded per process; see Cargo.toml for why not SipHash.
            .build_with_hasher(foldhash::fast::RandomState::default());
        // An entry larger than a quarter of the cache would only push out everything else.
        let max_entry = max_body.min(cfg.max_bytes / 4).min(u32::MAX as u64 / 2) as usize;
        ResponseCache {
            cfg: cfg.clone(),
            store,
            inflight: Mutex::new(foldhash::HashMap::default()),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epochs: (0..apps.max(1)).map(|_| AtomicU64::new(0)).collect(),
            clock,
            max_entry,
        }
    }

    /// Time since the clock's epoch; only differences matter here.
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.clock.now())
    }

    /// Decides what the cache step does with a request.
    pub fn plan<'t>(&self, l: &Lookup<'_, 't>) -> Plan<'t> {
        let read = *l.method == Method::GET || *l.method == Method::HEAD;
        if !read {
            let writes = *l.method == Method::POST || *l.method == Method::DELETE;
            return Plan(PlanKind::Write {
                app: l.app,
                slot: l
                    .target
                    .root()
                    .filter(|_| writes)
                    .map(|r| slot_of(l.app, r)),
            });
        }
        if !self.cfg.enabled {
            return Plan(PlanKind::Bypass);
        }
        let (ttl, stale) = self.rule_for(l.target);
        if ttl.is_zero() {
            return Plan(PlanKind::Bypass);
        }
        Plan(PlanKind::Read(Box::new(Read {
            key: CacheKey::build(l.app, l.token_owner, l.link_host, l.target),
            ttl,
            stale,
            head: *l.method == Method::HEAD,
            directives: Directives::parse(l.headers, l.allow_no_cache),
            token: l.token,
        })))
    }

    fn rule_for(&self, t: &Target) -> (Duration, bool) {
        let fields = t.param("fields");
        for rule in &self.cfg.rules {
            if !rule.path.matches(&t.segments) {
                continue;
            }
            let has_fields = rule
                .fields
                .iter()
                .all(|want| fields.is_some_and(|f| field_names(f).any(|name| name == want)));
            if has_fields {
                return (rule.ttl, rule.stale);
            }
        }
        (self.cfg.default_ttl, true)
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
                        self.slots[slot].fetch_add(1, Ordering::AcqRel);
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
            if let Some(e) = self.entry(&r.key, now) {
                if e.is_fresh(now) && d.accepts_age(e.age(now)) {
                    return Ok(self.answer_entry(&e, r.head, HIT));
                }
            }
        }
        if d.only_if_cached {
            return Err(GatewayError::NotCached);
        }
        let label = if d.no_cache { BYPASS } else { MISS };
        // Boxed for the same reason as the fetch itself: a hit should not carry (and copy) the
        // state of a miss.
        let (shared, role) = Box::pin(self.fetch_once(&r, fetch)).await;
        match shared {
            Shared::Stored(e) => Ok(match role {
                // The caller that fetched gets every header Meta sent, not just the kept ones.
                Role::Led(Some(resp)) => resp,
                Role::Led(None) => self.answer_entry(&e, r.head, label),
                // A waiter was answered without a call of its own.
                Role::Waited => self.answer_entry(&e, r.head, HIT),
            }),
            Shared::Answer(a) => {
                if a.status.is_server_error() {
                    if let Some(resp) = self.stale_answer(&r, &d) {
                        tracing::warn!(status = a.status.as_u16(), "cache: answered stale");
                        return Ok(resp);
                    }
                }
                Ok(answer(&a, r.head, label))
            }
            Shared::Failed(e) => {
                if serves_stale(&e) {
                    if let Some(resp) = self.stale_answer(&r, &d) {
                        tracing::warn!(error = %e, "cache: answered stale");
                        return Ok(resp);
                    }
                }
                Err(e)
            }
            Shared::Retry => match role {
                Role::Led(Some(mut resp)) => {
                    resp.headers_mut().insert(X_CACHE, label);
                    Ok(resp)
                }
                // Not reached: waiters fetch again on Retry, and a leader that retries has a response.
                Role::Led(None) | Role::Waited => Err(GatewayError::UpstreamUnreachable),
            },
        }
    }

    /// An entry that can still answer (fresh or within its stale window) and was not invalidated.
    fn entry(&self, key: &CacheKey, now: Duration) -> Option<Arc<CachedResponse>> {
        let e = self.store.get(key)?;
        let valid = e.slot_gen == self.slots[key.slot as usize].load(Ordering::Acquire)
            && e.app_epoch == self.epoch(key.app as usize);
        (valid && e.is_kept(now)).then_some(e)
    }

    fn epoch(&self, app: usize) -> u64 {
        self.epochs
            .get(app)
            .map_or(0, |e| e.load(Ordering::Acquire))
    }

    /// A stale answer for `key` if one may be given: the hook for the limit step, which calls it
    /// when a read's bucket is exhausted or blocked and answers with [`Self::stale_response`].
    pub fn stale(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let now = self.now();
        self.entry(key, now).filter(|e| !e.stale_for.is_zero())
    }

    /// Renders an entry from [`Self::stale`] as `X-Cache: STALE` with `Age` and `Warning: 110`.
    pub fn stale_response(&self, e: &CachedResponse, head: bool) -> Response {
        let mut resp = self.answer_entry(e, head, STALE);
        resp.headers_mut().insert(header::WARNING, STALE_WARNING);
        resp
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
        let now = self.now();
        let age = e.age(now);
        let mut resp = answer(&e.resp, head, label);
        let h = resp.headers_mut();
        h.insert(header::AGE, age_value(age));
        let left = e
            .ttl
            .saturating_sub(now.saturating_sub(e.stored_at))
            .as_secs();
        h.insert(header::CACHE_CONTROL, cache_control(left));
        resp
    }

    /// Joins the fetch in progress for the key, or makes it.
    async fn fetch_once<M, F>(&self, r: &Read<'_>, fetch: M) -> (Shared, Role)
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<Response, GatewayError>>,
    {
        let mut fetch = Some(fetch);
        loop {
            match self.join_or_lead(r) {
                Join::Hit(e) => return (Shared::Stored(e), Role::Waited),
                Join::Lead(tx) => {
                    return match fetch.take() {
                        Some(fetch) => self.lead(r, fetch(), tx).await,
                        // Not reached: only leading takes the fetch, and leading returns.
                        None => (
                            Shared::Failed(GatewayError::UpstreamUnreachable),
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
                        Some(Shared::Retry) | None => {
                            // The leader was cancelled or its answer was too large to share: go
                            // again, and perhaps lead this time.
                            tokio::task::yield_now().await;
                        }
                        Some(shared) => return (shared, Role::Waited),
                    }
                }
            }
        }
    }

    /// Under the in-flight lock: an entry stored since the caller looked, a fetch to wait for, or
    /// the caller's turn to fetch (registered before the lock is released).
    fn join_or_lead(&self, r: &Read<'_>) -> Join {
        let mut map = self.inflight.lock_unpoisoned();
        if let Some(rx) = map.get(&r.key) {
            return Join::Wait(rx.clone());
        }
        // A leader stores before it leaves the map, so an entry that appeared since this caller
        // looked is seen here.
        if !r.directives.no_cache {
            let now = self.now();
            if let Some(e) = self.entry(&r.key, now) {
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
        r: &Read<'_>,
        fetch: F,
        tx: watch::Sender<Option<Shared>>,
    ) -> (Shared, Role)
    where
        F: Future<Output = Result<Response, GatewayError>>,
    {
        // Leaves the in-flight map however this ends, cancellation included; waiters then see the
        // channel close and try again.
        let _leave = Leave {
            cache: self,
            key: &r.key,
        };
        // Counters are read before the call: a write that lands while it is in flight makes this
        // fill invalid at once.
        let slot_gen = self.slots[r.key.slot as usize].load(Ordering::Acquire);
        let app_epoch = self.epoch(r.key.app as usize);
        let (shared, own) = match fetch.await {
            Err(e) => (Shared::Failed(e), None),
            Ok(resp) => match self.buffer(resp).await {
                Err(e) => (Shared::Failed(e), None),
                Ok(Buffered::Whole(stored)) => {
                    if self.storable(&stored, r.token) {
                        let label = if r.directives.no_cache { BYPASS } else { MISS };
                        let kept = keep_headers(&stored);
                        let mut own = answer_owned(stored, r.head, label);
                        own.headers_mut().insert(header::AGE, age_value(0));
                        own.headers_mut()
                            .insert(header::CACHE_CONTROL, cache_control(r.ttl.as_secs()));
                        let e = Arc::new(CachedResponse {
                            resp: kept,
                            stored_at: self.now(),
                            ttl: r.ttl,
                            stale_for: if r.stale {
                                self.cfg.stale_ttl
                            } else {
                                Duration::ZERO
                            },
                            slot_gen,
                            app_epoch,
                        });
                        self.store.insert(r.key.clone(), e.clone());
                        (Shared::Stored(e), Some(own))
                    } else {
                        (Shared::Answer(Arc::new(stored)), None)
                    }
                }
                Ok(Buffered::Streamed(resp)) => (Shared::Retry, Some(resp)),
            },
        };
        let _ = tx.send(Some(shared.clone()));
        (shared, Role::Led(own))
    }

    /// Reads a body whole when it fits an entry; a larger one is passed on as a stream.
    async fn buffer(&self, resp: Response) -> Result<Buffered, GatewayError> {
        let (parts, mut body) = resp.into_parts();
        // The rewritten JSON arrives as one frame: it is kept as that `Bytes`, without a copy.
        let mut first: Option<Bytes> = None;
        let mut more = BytesMut::new();
        loop {
            let data = match body.frame().await {
                None => break,
                Some(Err(_)) => return Err(GatewayError::UpstreamUnreachable),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            match &first {
                None => first = Some(data),
                Some(f) => {
                    if more.is_empty() {
                        more.extend_from_slice(f);
                    }
                    more.extend_from_slice(&data);
                }
            }
            let len = if more.is_empty() {
                first.as_ref().map_or(0, Bytes::len)
            } else {
                more.len()
            };
            if len > self.max_entry {
                let head = if more.is_empty() {
                    first.take().unwrap_or_default()
                } else {
                    more.freeze()
                };
                let head = futures_util::stream::once(async move { Ok::<_, axum::Error>(head) });
                let stream = futures_util::StreamExt::chain(head, body.into_data_stream());
                return Ok(Buffered::Streamed(Response::from_parts(
                    parts,
                    Body::from_stream(stream),
                )));
            }
        }
        let body = if more.is_empty() {
            first.unwrap_or_default()
        } else {
            more.freeze()
        };
        let mut headers = parts.headers;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Ok(Buffered::Whole(Stored {
            status: parts.status,
            headers,
            body,
        }))
    }

    /// Only a 200 without a Graph `error` object and without the call's token in it is kept.
    fn storable(&self, s: &Stored, token: &crate::auth::Token) -> bool {
        if s.status != StatusCode::OK {
            return false;
        }
        let json = s
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| crate::rewrite::is_json(Some(ct)));
        if json && has_graph_error(&s.body) {
            return false;
        }
        !token.appears_in(&s.body)
    }

    /// Drops every entry of `app` whose path (version ignored) starts with `path_prefix` segment by
    /// segment: `/123` covers `/v19.0/123` and `/123/message_templates`, not `/1234`. `/` drops the
    /// whole app. Returns how many stored entries matched. For the admin endpoint.
    ///
    /// So that a fill in flight cannot bring old data back, the object's invalidation counter is
    /// bumped too: every entry under the prefix's first segment (`/123...`) is dropped with it.
    pub fn purge(&self, app: usize, path_prefix: &str) -> usize {
        let segs: Vec<&str> = path_prefix.split('/').filter(|s| !s.is_empty()).collect();
        let segs: &[&str] = match segs.first() {
            Some(v) if crate::ids::is_version(v) => &segs[1..],
            _ => &segs,
        };
        // In-flight fills under the prefix must not land after the purge.
        match segs.first() {
            Some(root) => {
                self.slots[slot_of(app, root)].fetch_add(1, Ordering::AcqRel);
            }
            None => {
                if let Some(e) = self.epochs.get(app) {
                    e.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        let mut dropped = 0;
        for (k, _) in self.store.iter() {
            if k.app as usize != app {
                continue;
            }
            let mut path = k.unversioned_path().split('/').filter(|s| !s.is_empty());
            if segs.iter().all(|want| path.next() == Some(want)) {
                self.store.invalidate(&*k);
                dropped += 1;
            }
        }
        dropped
    }

    /// Entries and their weighed bytes, after moka has applied pending evictions.
    pub fn usage(&self) -> (u64, u64) {
        self.store.run_pending_tasks();
        (self.store.entry_count(), self.store.weighted_size())
    }

    /// Every stored entry: for tests that prove no secret is kept.
    pub fn entries(&self) -> Vec<(CacheKey, Arc<CachedResponse>)> {
        self.store.iter().map(|(k, v)| ((*k).clone(), v)).collect()
    }
}

enum Join {
    Hit(Arc<CachedResponse>),
    Wait(watch::Receiver<Option<Shared>>),
    Lead(watch::Sender<Option<Shared>>),
}

/// Whether a caller led the fetch (with its own response when the answer could not be shared) or
/// waited for another's.
enum Role {
    Led(Option<Response>),
    Waited,
}

enum Buffered {
    Whole(Stored),
    Streamed(Response),
}

/// Removes the fetch from the in-flight map when the leader is done or dropped.
struct Leave<'a> {
    cache: &'a ResponseCache,
    key: &'a CacheKey,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut map = self.cache.inflight.lock_unpoisoned();
        map.remove(self.key);
    }
}

fn keep_headers(s: &Stored) -> Stored {
    // Room for the headers every answer adds (label, age, cache-control, request id, warning), so
    // a clone of this map grows its entries once and never rehashes.
    let mut headers = HeaderMap::with_capacity(KEPT_HEADERS.len() + 6);
    for name in KEPT_HEADERS.into_iter().chain([header::CONTENT_LENGTH]) {
        if let Some(v) = s.headers.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    Stored {
        status: s.status,
        headers,
        body: s.body.clone(),
    }
}

/// A response from a buffered answer: the body is a `Bytes` clone, not a copy.
fn answer(s: &Stored, head: bool, label: HeaderValue) -> Response {
    let body = if head {
        Body::empty()
    } else {
        Body::from(s.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = s.status;
    *resp.headers_mut() = s.headers.clone();
    resp.headers_mut().insert(X_CACHE, label);
    resp
}

/// [`answer`] for the caller that fetched it: every header Meta sent, moved rather than copied.
fn answer_owned(s: Stored, head: bool, label: HeaderValue) -> Response {
    let body = if head {
        Body::empty()
    } else {
        Body::from(s.body)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = s.status;
    *resp.headers_mut() = s.headers;
    resp.headers_mut().insert(X_CACHE, label);
    resp
}

/// `Age` and `Cache-Control` values for the first hour of an entry's life, rendered once: every
/// hit sends both, and formatting them was a few percent of a hit. Later seconds are rendered on
/// use.
const RENDERED_SECONDS: u64 = 3600;

static SECOND_VALUES: LazyLock<Vec<(HeaderValue, HeaderValue)>> = LazyLock::new(|| {
    // Leaked once per process (about 100 KiB): static values are cloned without a reference count.
    let leak = |s: String| HeaderValue::from_static(Box::leak(s.into_boxed_str()));
    (0..=RENDERED_SECONDS)
        .map(|n| (leak(n.to_string()), leak(format!("private, max-age={n}"))))
        .collect()
});

fn age_value(age: u64) -> HeaderValue {
    match SECOND_VALUES.get(age as usize) {
        Some((v, _)) => v.clone(),
        None => HeaderValue::from(age),
    }
}

fn cache_control(max_age: u64) -> HeaderValue {
    match SECOND_VALUES.get(max_age as usize) {
        Some((_, v)) => v.clone(),
        None => HeaderValue::try_from(format!("private, max-age={max_age}"))
            .unwrap_or(HeaderValue::from_static("private, max-age=0")),
    }
}

/// Whether a JSON body is a Graph error (`{"error": {...}}` at the top level).
fn has_graph_error(body: &[u8]) -> bool {
    // Most answers never mention the key: skip the parse (a whole-body scan) for them.
    static ERROR_KEY: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"error\""));
    if ERROR_KEY.find(body).is_none() {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        error: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(body).is_ok_and(|p| p.error.is_some())
}

/// Marks a GET/HEAD answer that never reached the cache step (refused earlier) as `BYPASS`.
pub fn label_bypass(method: &Method, resp: &mut Response) {
    if (*method == Method::GET || *method == Method::HEAD) && !resp.headers().contains_key(X_CACHE)
    {
        resp.headers_mut().insert(X_CACHE, BYPASS);
    }
}
