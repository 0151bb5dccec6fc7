//! The `[cache]` section whole: the typed [`Cache`] settings and its `[[cache.rule]]`s with their
//! [`PathPattern`]s, their raw shapes and their checks.
//!
//! It must never decide at request time what is cached or for how long: that is the work of the
//! top-level `cache` module, which reads these values (so this file must never import it).

use std::time::Duration;

use serde::Deserialize;

use super::check::Validator;
use super::scalar::{Dur, Size};

/// Fresh time of a cached read when no `[[cache.rule]]` matches.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// How long past expiry an entry is kept to answer when Meta fails or the budget is spent.
pub const DEFAULT_CACHE_STALE_TTL: Duration = Duration::from_secs(3600);
/// Memory bound of the response cache (bodies, kept headers and keys).
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// The response cache settings (`[cache]`); see `docs/cache.md`.
#[derive(Debug, Clone)]
pub struct Cache {
    pub enabled: bool,
    pub default_ttl: Duration,
    pub stale_ttl: Duration,
    pub max_bytes: u64,
    /// Tried in order; the first rule whose path (and fields) match sets the ttl.
    pub rules: Vec<CacheRule>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            enabled: true,
            default_ttl: DEFAULT_CACHE_TTL,
            stale_ttl: DEFAULT_CACHE_STALE_TTL,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CacheRule {
    pub path: PathPattern,
    /// The rule applies only when the request's `fields` names all of these (empty: always).
    pub fields: Vec<String>,
    /// Zero turns caching off for the route.
    pub ttl: Duration,
    /// Whether stale entries may answer for this route.
    pub stale: bool,
}

/// A `[[cache.rule]]` path such as `/{waba}/message_templates`: `{name}` matches any one segment,
/// other segments match literally. The version prefix of a request is ignored when matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Any,
    Literal(String),
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        let rest = s
            .strip_prefix('/')
            .ok_or_else(|| format!("`{s}` must start with /"))?;
        if rest.is_empty() {
            return Err("the pattern must name at least one segment".into());
        }
        let mut parts = Vec::new();
        for (i, seg) in rest.split('/').enumerate() {
            if seg.is_empty() {
                return Err(format!("`{s}` has an empty segment"));
            }
            if i == 0 && crate::ids::is_version(seg) {
                return Err(format!(
                    "`{s}`: leave the version out (it is ignored when matching)"
                ));
            }
            if let Some(name) = seg.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!("`{seg}` is not a placeholder like {{waba}}"));
                }
                parts.push(Part::Any);
            } else if seg.contains(['{', '}', '?', '%']) {
                return Err(format!(
                    "`{seg}` is neither a placeholder nor a plain segment"
                ));
            } else {
                parts.push(Part::Literal(seg.to_string()));
            }
        }
        Ok(PathPattern(parts))
    }

    /// Whether the request's segments (after the version) match, segment for segment.
    pub fn matches(&self, segments: &[String]) -> bool {
        self.0.len() == segments.len()
            && self.0.iter().zip(segments).all(|(p, s)| match p {
                Part::Any => true,
                Part::Literal(l) => l == s,
            })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    enabled: Option<bool>,
    default_ttl: Option<Dur>,
    stale_ttl: Option<Dur>,
    max_bytes: Option<Size>,
    #[serde(default)]
    rule: Vec<RawCacheRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCacheRule {
    path: Option<String>,
    fields: Option<Vec<String>>,
    ttl: Option<Dur>,
    stale: Option<bool>,
}

impl Validator<'_> {
    pub(super) fn cache(&mut self, r: RawCache) -> Cache {
        let default_ttl = r.default_ttl.map_or(DEFAULT_CACHE_TTL, |d| d.0);
        let mut rules = Vec::new();
        for (i, raw) in r.rule.into_iter().enumerate() {
            let at = format!("cache.rule[{i}]");
            let path = match raw.path.as_deref().map(PathPattern::parse) {
                Some(Ok(p)) => p,
                Some(Err(m)) => {
                    self.problem(format!("{at}.path"), m);
                    continue;
                }
                None => {
                    self.problem(
                        format!("{at}.path"),
                        "missing (e.g. \"/{waba}/message_templates\")",
                    );
                    continue;
                }
            };
            let fields = raw.fields.unwrap_or_default();
            if fields
                .iter()
                .any(|f| f.is_empty() || f.contains([',', '{', '}']))
            {
                self.problem(format!("{at}.fields"), "each entry must be one field name");
                continue;
            }
            rules.push(CacheRule {
                path,
                fields,
                ttl: raw.ttl.map_or(default_ttl, |d| d.0),
                stale: raw.stale.unwrap_or(true),
            });
        }
        Cache {
            enabled: r.enabled.unwrap_or(true),
            default_ttl,
            stale_ttl: r.stale_ttl.map_or(DEFAULT_CACHE_STALE_TTL, |d| d.0),
            max_bytes: self.positive_size("cache.max_bytes", r.max_bytes, DEFAULT_CACHE_MAX_BYTES),
            rules,
        }
    }
}
