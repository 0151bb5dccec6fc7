//! What a request asks of the cache: the pipeline's [`Lookup`] in, a [`Plan`] out (bypass, a read
//! under a key with its TTL rule, or a write that invalidates an object).
//!
//! Pure decisions from the request and `[cache]` config: it must never touch the store, call Meta
//! or render a response.

use std::time::Duration;

use http::{HeaderMap, Method};

use super::directives::Directives;
use super::key::{slot_of, CacheKey};
use crate::config;
use crate::target::Target;

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
pub struct Plan<'a>(pub(super) PlanKind<'a>);

pub(super) enum PlanKind<'a> {
    /// A GET/HEAD the cache does not keep (disabled, `ttl = "0s"`): passed through, `X-Cache: BYPASS`.
    Bypass,
    /// A GET/HEAD the cache answers or fills.
    Read(Box<Read<'a>>),
    /// Any other method; a 2xx answer invalidates what it names.
    Write { app: usize, slot: Option<usize> },
}

/// A read the cache answers or fills, with everything its rule decided.
pub(super) struct Read<'a> {
    pub(super) key: CacheKey,
    pub(super) ttl: Duration,
    /// How long past `ttl` its entry may answer as stale: `cache.stale_ttl`, or zero when the
    /// rule forbids stale answers.
    pub(super) stale_for: Duration,
    pub(super) head: bool,
    pub(super) directives: Directives,
    pub(super) token: &'a crate::auth::Token,
}

impl<'t> Plan<'t> {
    /// Decides what the cache step does with a request under `cfg`.
    pub(super) fn new(cfg: &config::Cache, l: &Lookup<'_, 't>) -> Plan<'t> {
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
        if !cfg.enabled {
            return Plan(PlanKind::Bypass);
        }
        let (ttl, stale) = rule_for(cfg, l.target);
        if ttl.is_zero() {
            return Plan(PlanKind::Bypass);
        }
        Plan(PlanKind::Read(Box::new(Read {
            key: CacheKey::build(l.app, l.token_owner, l.link_host, l.target),
            ttl,
            stale_for: if stale { cfg.stale_ttl } else { Duration::ZERO },
            head: *l.method == Method::HEAD,
            directives: Directives::parse(l.headers, l.allow_no_cache),
            token: l.token,
        })))
    }
}

impl Plan<'_> {
    /// Whether the request is a read the cache fills; the pipeline then fetches HEAD as GET.
    pub fn is_read(&self) -> bool {
        matches!(self.0, PlanKind::Read(_))
    }

    /// The key of a read, for the limit step's [`super::ResponseCache::stale`].
    pub fn key(&self) -> Option<&CacheKey> {
        match &self.0 {
            PlanKind::Read(r) => Some(&r.key),
            _ => None,
        }
    }
}

/// TTL and stale permission of the first `[[cache.rule]]` that matches, else the defaults.
fn rule_for(cfg: &config::Cache, t: &Target) -> (Duration, bool) {
    let fields = t.param("fields");
    for rule in &cfg.rules {
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
    (cfg.default_ttl, true)
}

/// Top-level names in a `fields` value: `id,name,message_templates{name,status}` ->
/// `id`, `name`, `message_templates`. Nested expansions and modifiers (`.limit(5)`) are not names.
pub(super) fn field_names(fields: &str) -> impl Iterator<Item = &str> {
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
