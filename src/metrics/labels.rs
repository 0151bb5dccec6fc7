//! The label sets of graphgate's series and the functions that turn a request's facts into label
//! values: a status code, a method, the cache's answer.
//!
//! It owns every label set but the webhook ones (`webhooks.rs`). Each value comes from config (app,
//! client, configured WABA id) or from a fixed set here; it must never pass a request's own string
//! through, so no caller can create a new series.

use std::sync::Arc;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;

/// Label used where a request never got as far as knowing a value (e.g. no valid client key).
pub(super) const NONE: &str = "none";

/// Status codes that get a series of their own; any other code is counted under its class (`4xx`).
const STATUS_CODES: [&str; 27] = [
    "200", "201", "202", "204", "206", "301", "302", "304", "400", "401", "403", "404", "405",
    "406", "408", "409", "410", "411", "413", "414", "415", "422", "429", "431", "500", "502",
    "503",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RequestLabels {
    // Shared strings: counting a request allocates nothing for these labels.
    pub(super) app: Arc<str>,
    pub(super) client: Arc<str>,
    pub(super) class: &'static str,
    pub(super) method: &'static str,
    pub(super) status: &'static str,
    pub(super) cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct UpstreamLabels {
    pub(super) app: Arc<str>,
    pub(super) class: &'static str,
    pub(super) status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BucketLabels {
    pub(super) app: String,
    pub(super) bucket: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct UsageLabels {
    pub(super) app: String,
    pub(super) object: String,
    pub(super) r#type: &'static str,
    pub(super) metric: &'static str,
}

/// What kind of failure the Redis link met (`limits::redis::Fault`): a fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RedisFaultLabels {
    pub(super) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ThrottleLabels {
    pub(super) app: String,
    pub(super) code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CacheLabels {
    pub(super) result: &'static str,
}

/// Why a replica can be degraded (`graphgate_degraded`): Meta unreachable; Redis away while
/// buckets are shared.
pub const DEGRADED_REASONS: [&str; 2] = ["upstream", "limits_backend"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DegradedLabels {
    pub(super) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct VersionLabels {
    pub(super) version: &'static str,
    pub(super) revision: &'static str,
}

/// The time callers see, by what the call was and what the cache did.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DurationLabels {
    pub(super) class: &'static str,
    pub(super) cache: &'static str,
}

/// What the cache step did with a request, from its `X-Cache` answer header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Stale,
    Bypass,
    /// Not a read (POST, DELETE, ...): the cache step only invalidates.
    None,
}

impl CacheResult {
    /// Reads an `X-Cache` value; anything else (or no header) is `None`.
    pub fn from_header(v: Option<&http::HeaderValue>) -> CacheResult {
        match v.map(|v| v.as_bytes()) {
            Some(b"HIT") => CacheResult::Hit,
            Some(b"MISS") => CacheResult::Miss,
            Some(b"STALE") => CacheResult::Stale,
            Some(b"BYPASS") => CacheResult::Bypass,
            _ => CacheResult::None,
        }
    }

    /// What the cache did for an answer, from its `X-Cache` header, except that a 429 graphgate made
    /// itself (a spent budget) is `None`: the cache answered nothing and Meta was not called, so it
    /// is not a miss and does not lower the hit ratio.
    pub fn of(resp: &http::Response<axum::body::Body>) -> CacheResult {
        // The status first: the header lookup is needed only for a 429.
        if resp.status() == http::StatusCode::TOO_MANY_REQUESTS
            && resp
                .headers()
                .contains_key(crate::error::LOCAL_ERROR_HEADER)
        {
            return CacheResult::None;
        }
        CacheResult::from_header(resp.headers().get(crate::cache::X_CACHE))
    }

    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Bypass => "bypass",
            CacheResult::None => NONE,
        }
    }
}

/// The methods the Graph API knows keep their name; anything else is `other`.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A status code from [`STATUS_CODES`], else its class (`2xx` ... `5xx`), else `other`.
pub fn status_label(code: u16) -> &'static str {
    if code < 1000 {
        let digits = [code / 100, code / 10 % 10, code % 10].map(|d| b'0' + d as u8);
        if let Some(s) = STATUS_CODES.iter().find(|s| s.as_bytes() == digits) {
            return s;
        }
    }
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    // Known codes keep their number; others collapse to their class, so the set stays bounded.
    #[test]
    fn status_labels_are_codes_from_a_fixed_set_or_classes() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(429), "429");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
        assert_eq!(status_label(999), "other");
        let all: HashSet<&str> = (0..1000).map(status_label).collect();
        assert!(all.len() <= STATUS_CODES.len() + 6, "{}", all.len());
    }

    // A method outside the Graph API's set is counted as `other`.
    #[test]
    fn unknown_methods_are_labelled_other() {
        assert_eq!(method_label(&Method::GET), "GET");
        let odd = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method_label(&odd), "other");
    }

    // `X-Cache` values map to the four results; anything else means the cache step did not read.
    #[test]
    fn cache_results_come_from_the_x_cache_header() {
        let h = |s: &'static str| Some(http::HeaderValue::from_static(s));
        assert_eq!(
            CacheResult::from_header(h("HIT").as_ref()),
            CacheResult::Hit
        );
        assert_eq!(
            CacheResult::from_header(h("STALE").as_ref()),
            CacheResult::Stale
        );
        assert_eq!(
            CacheResult::from_header(h("weird").as_ref()),
            CacheResult::None
        );
        assert_eq!(CacheResult::from_header(None), CacheResult::None);
    }

    // A local 429 is not a miss even though the cache step labelled it MISS; Meta's 429 and other
    // local errors (502, 504) keep their label.
    #[test]
    fn a_local_429_is_not_a_cache_result() {
        let resp = |status: u16, local: bool| {
            let mut b = http::Response::builder()
                .status(status)
                .header("x-cache", "MISS");
            if local {
                b = b.header(crate::error::LOCAL_ERROR_HEADER, "rate_limited");
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        assert_eq!(CacheResult::of(&resp(429, true)), CacheResult::None);
        assert_eq!(CacheResult::of(&resp(429, false)), CacheResult::Miss);
        assert_eq!(CacheResult::of(&resp(502, true)), CacheResult::Miss);
    }
}
