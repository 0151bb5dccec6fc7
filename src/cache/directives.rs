//! The caller's request `Cache-Control` directives that graphgate honours: `no-cache`, `max-age`,
//! `only-if-cached` (RFC 9111 section 5.2.1).
//!
//! Parsing only: it must never fail a request (an unknown or malformed directive is ignored or read
//! as the RFC says), and it knows nothing of keys, entries or the store.

use http::header;
use http::HeaderMap;

/// The request's `Cache-Control` directives that graphgate honours (RFC 9111 section 5.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Directives {
    pub(super) no_cache: bool,
    pub(super) max_age: Option<u64>,
    pub(super) only_if_cached: bool,
}

impl Directives {
    /// `allow_no_cache` is the caller's `[[client]] allow_no_cache`: when false, `no-cache` is
    /// ignored so one client cannot burn the budget.
    pub(super) fn parse(headers: &HeaderMap, allow_no_cache: bool) -> Directives {
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

    /// Whether an entry `age` seconds old satisfies the caller's `max-age`.
    pub(super) fn accepts_age(&self, age: u64) -> bool {
        self.max_age.is_none_or(|m| age <= m)
    }
}
