//! Graph's identifiers as graphgate accepts them: object ids and API versions in a path.
//!
//! A leaf: config, the request target, the limiter and the webhooks all ask it, and it asks only
//! [`crate::text`], another leaf.
//! It must stay strict: what it accepts may become a cache prefix, a bucket or a path segment.

/// A Graph object id: 1 to 32 ASCII digits.
pub fn is_graph_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit())
}

/// An API version segment such as `v19.0`.
pub fn is_version(s: &str) -> bool {
    // `V19.0` is a version too: read as an id it would dodge the WABA's bucket.
    let Some(rest) = s.strip_prefix('v').or_else(|| s.strip_prefix('V')) else {
        return false;
    };
    let Some((major, minor)) = crate::text::split_once_byte(rest, b'.') else {
        return false;
    };
    !major.is_empty()
        && !minor.is_empty()
        && major.len() <= 3
        && minor.len() <= 3
        && major.bytes().all(|c| c.is_ascii_digit())
        && minor.bytes().all(|c| c.is_ascii_digit())
}
