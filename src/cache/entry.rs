//! Stored answers: what an entry keeps ([`CachedResponse`]), how long it may answer, what may be
//! stored at all, and how an answer is rendered (`X-Cache`, `Age`, `Cache-Control`, `Warning`).
//!
//! An entry must never hold an error, a non-200, a token or a client key: only a 200 body and the
//! short list of Meta's headers in [`KEPT_HEADERS`]. This file never touches the store, the
//! in-flight map or the clock: callers pass the time.

use std::sync::LazyLock;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use super::key::CacheKey;

/// Response header naming what the cache did: `HIT`, `MISS`, `STALE` or `BYPASS`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub(super) const HIT: HeaderValue = HeaderValue::from_static("HIT");
pub(super) const MISS: HeaderValue = HeaderValue::from_static("MISS");
pub(super) const STALE: HeaderValue = HeaderValue::from_static("STALE");
pub(super) const BYPASS: HeaderValue = HeaderValue::from_static("BYPASS");
/// RFC 7234's warn-code 110, still what HTTP caches and their clients recognise.
const STALE_WARNING: HeaderValue = HeaderValue::from_static("110 - \"Response is Stale\"");

/// Meta's headers that an entry keeps; everything else of the original answer is dropped.
const KEPT_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    HeaderName::from_static("facebook-api-version"),
    HeaderName::from_static("x-fb-trace-id"),
    HeaderName::from_static("x-business-use-case-usage"),
];

/// Bytes an entry costs beyond what [`CachedResponse::weight`] counts one by one: the entry and
/// key structs in their `Arc`s, the header map's index, and moka's own per-entry state (its hash
/// table slot, access and write deque nodes, timer wheel node, entry info). Measured, not derived:
/// `tests/memory.rs` drives thousands of small entries through the real binary and compares VmRSS
/// growth with the weighed bytes (`docs/cache.md`, "Memory").
const ENTRY_OVERHEAD: usize = 768;
/// One header of an entry: its slot in the map (name, value, hash, links) and the shared handle
/// its value's bytes gain on the first clone.
const HEADER_OVERHEAD: usize = 144;

/// What the allocator really hands out for `n` bytes: jemalloc's size classes, four per doubling
/// (at most 25% above `n`, and a 16-byte quantum for small sizes). glibc rounds less, so on it
/// this errs on the safe side.
pub(super) fn alloc_size(n: usize) -> usize {
    if n <= 16 {
        return 16;
    }
    // The class spacing is a quarter of the power of two below `n`.
    let below = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
    let step = (below / 4).max(16);
    n.div_ceil(step) * step
}

/// A buffered answer: status, headers and body.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub(super) status: StatusCode,
    /// Content-Length included: an answer clones the map (no name is hashed again) and adds only
    /// its own headers.
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Stored {
    /// Only a 200 without a Graph `error` object and without the call's token in it is kept.
    pub(super) fn storable(&self, token: &crate::auth::Token) -> bool {
        if self.status != StatusCode::OK {
            return false;
        }
        let json = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| crate::rewrite::is_json(Some(ct)));
        if json && has_graph_error(&self.body) {
            return false;
        }
        !token.appears_in(&self.body)
    }
}

/// The invalidation counters (the key's slot and the app's epoch) an entry was fetched under; it
/// is valid while both are unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Generation {
    pub(super) slot: u64,
    pub(super) app_epoch: u64,
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
    /// Counters at the time the fetch started.
    generation: Generation,
}

impl CachedResponse {
    /// `resp` must come from [`keep_headers`].
    pub(super) fn new(
        resp: Stored,
        stored_at: Duration,
        ttl: Duration,
        stale_for: Duration,
        generation: Generation,
    ) -> CachedResponse {
        CachedResponse {
            resp,
            stored_at,
            ttl,
            stale_for,
            generation,
        }
    }

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
    pub(super) fn is_fresh(&self, now: Duration) -> bool {
        now < self.stored_at + self.ttl
    }
    pub(super) fn is_kept(&self, now: Duration) -> bool {
        now < self.stored_at + self.kept_for()
    }
    /// How long after it was stored the entry can still answer, even as stale.
    pub(super) fn kept_for(&self) -> Duration {
        self.ttl + self.stale_for
    }
    pub(super) fn allows_stale(&self) -> bool {
        !self.stale_for.is_zero()
    }
    pub(super) fn generation(&self) -> Generation {
        self.generation
    }
    /// What the entry holds in memory, as the allocator sizes it: key, body, each kept header,
    /// and the measured fixed cost of an entry. Every part is an allocation of its own (see
    /// [`keep_headers`]), so this is what evicting it gives back.
    pub(super) fn weight(&self, key: &CacheKey) -> u32 {
        let headers: usize = self
            .resp
            .headers
            .values()
            .map(|v| alloc_size(v.len()) + HEADER_OVERHEAD)
            .sum();
        let n = alloc_size(key.text().len())
            + alloc_size(self.resp.body.len())
            + headers
            + ENTRY_OVERHEAD;
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The entry as an answer labelled `label`, with its `Age` and the freshness it has left.
    pub(super) fn render(&self, now: Duration, head: bool, label: HeaderValue) -> Response {
        let age = self.age(now);
        let mut resp = answer(&self.resp, head, label);
        let h = resp.headers_mut();
        h.insert(header::AGE, age_value(age));
        let left = self
            .ttl
            .saturating_sub(now.saturating_sub(self.stored_at))
            .as_secs();
        h.insert(header::CACHE_CONTROL, cache_control(left));
        resp
    }

    /// The entry as `X-Cache: STALE` with `Age` and `Warning: 110`.
    pub(super) fn render_stale(&self, now: Duration, head: bool) -> Response {
        let mut resp = self.render(now, head, STALE);
        resp.headers_mut().insert(header::WARNING, STALE_WARNING);
        resp
    }
}

/// The part of an answer an entry keeps: [`KEPT_HEADERS`], Content-Length and the body, each in
/// an allocation of its own size.
///
/// Copied, never shared: the body Meta sent is usually a slice of hyper's read buffer (or a `Vec`
/// with spare capacity after a rewrite), and each header value a slice of the buffer the head was
/// parsed from. Kept as slices, every small entry pinned a buffer many times its size, and
/// `cache.max_bytes` bounded the weighed bytes but not memory (issue #14: 4 MiB weighed held
/// 38 MiB). A copy costs one `memcpy` per miss.
pub(super) fn keep_headers(s: &Stored) -> Stored {
    // Room in the index for the headers every answer adds (label, age, cache-control, request id,
    // warning), so a clone of this map grows its entries once and never rehashes.
    let mut headers = HeaderMap::with_capacity(KEPT_HEADERS.len() + 6);
    for name in KEPT_HEADERS.into_iter().chain([header::CONTENT_LENGTH]) {
        if let Some(v) = s.headers.get(&name) {
            headers.insert(name, own_value(v));
        }
    }
    Stored {
        status: s.status,
        // A clone keeps the index but holds exactly the entries there are: the spare room of
        // the map built above (about 1 KiB) stays out of every stored entry.
        headers: headers.clone(),
        body: Bytes::copy_from_slice(&s.body),
    }
}

/// A header value in an allocation of its own (a static or parsed-here value stays as it is).
fn own_value(v: &HeaderValue) -> HeaderValue {
    match HeaderValue::from_bytes(v.as_bytes()) {
        Ok(mut owned) => {
            owned.set_sensitive(v.is_sensitive());
            owned
        }
        // Not reached: the bytes came from a valid value.
        Err(_) => v.clone(),
    }
}

/// A response from a buffered answer: the body is a `Bytes` clone, not a copy.
pub(super) fn answer(s: &Stored, head: bool, label: HeaderValue) -> Response {
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

/// The answer of the caller whose fetch filled an entry: [`answer_owned`] with `Age: 0` and the
/// entry's whole freshness as `max-age`.
pub(super) fn answer_filled(s: Stored, head: bool, label: HeaderValue, ttl: Duration) -> Response {
    let mut own = answer_owned(s, head, label);
    own.headers_mut().insert(header::AGE, age_value(0));
    own.headers_mut()
        .insert(header::CACHE_CONTROL, cache_control(ttl.as_secs()));
    own
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
pub(super) fn has_graph_error(body: &[u8]) -> bool {
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
