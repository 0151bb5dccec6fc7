//! Unit tests of the cache's pure parts: keys, rule paths, `fields` names, request directives,
//! what an entry keeps and how much it weighs.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::HeaderMap;

use super::directives::Directives;
use super::entry::{alloc_size, has_graph_error, keep_headers, Stored};
use super::key::CacheKey;
use super::plan::field_names;
use super::serves_stale;
use crate::config::PathPattern;
use crate::error::GatewayError;
use crate::target::Target;

fn key(app: usize, owner: Option<&str>, host: &str, path: &str, query: Option<&str>) -> CacheKey {
    CacheKey::build(app, owner, host, &Target::parse(path, query).unwrap())
}

// Parameter order, auth parameters and equivalent encodings give one key.
#[test]
fn keys_sort_the_query_and_drop_auth_params() {
    let a = key(0, None, "", "/v19.0/1/x", Some("b=2&a=1&fields=id%2Cname"));
    let b = key(
        0,
        None,
        "",
        "/v19.0/1/x",
        Some("access_token=k&fields=id,name&a=1&appsecret_proof=p&appsecret_time=9&b=2"),
    );
    assert!(a == b);
    assert_eq!(a.path(), "/v19.0/1/x");
    assert!(!b.text().contains("access_token") && !b.text().contains("appsecret"));
}

// App, token owner, link host, version, path and values each separate keys.
#[test]
fn keys_separate_apps_owners_hosts_versions_and_values() {
    let base = key(0, None, "h", "/v19.0/1/x", Some("a=1"));
    for other in [
        key(1, None, "h", "/v19.0/1/x", Some("a=1")),
        key(0, Some("1"), "h", "/v19.0/1/x", Some("a=1")),
        key(0, None, "g", "/v19.0/1/x", Some("a=1")),
        key(0, None, "h", "/v20.0/1/x", Some("a=1")),
        key(0, None, "h", "/1/x", Some("a=1")),
        key(0, None, "h", "/v19.0/1/y", Some("a=1")),
        key(0, None, "h", "/v19.0/1/x", Some("a=2")),
        key(0, None, "h", "/v19.0/1/x", None),
    ] {
        assert!(base != other, "{other:?} must differ");
    }
}

// A `?` or `&` inside a decoded path or value cannot make two requests collide.
#[test]
fn keys_cannot_collide_through_separators() {
    let a = key(0, None, "", "/1/a%3Fb=", None);
    let b = key(0, None, "", "/1/a", Some("b="));
    assert!(a != b);
    let c = key(0, None, "", "/1", Some("a=1%26b%3D2"));
    let d = key(0, None, "", "/1", Some("a=1&b=2"));
    assert!(c != d);
}

// Placeholders match one segment; literals match themselves; versions are refused in patterns.
#[test]
fn rule_paths_match_segment_by_segment() {
    let p = PathPattern::parse("/{waba}/message_templates").unwrap();
    let segs = |s: &str| Target::parse(s, None).unwrap().segments;
    assert!(p.matches(&segs("/v19.0/123/message_templates")));
    assert!(p.matches(&segs("/123/message_templates")));
    assert!(!p.matches(&segs("/123/phone_numbers")));
    assert!(!p.matches(&segs("/123/message_templates/x")));
    assert!(!p.matches(&segs("/123")));
    let id = PathPattern::parse("/{id}").unwrap();
    assert!(id.matches(&segs("/v20.0/42")));
    for bad in [
        "",
        "x",
        "/",
        "//a",
        "/v19.0/{id}",
        "/{}",
        "/{a-b}",
        "/a{b}",
        "/a%2F",
    ] {
        assert!(PathPattern::parse(bad).is_err(), "{bad} should be refused");
    }
}

// Only top-level names of `fields` count; expansions and modifiers are skipped.
#[test]
fn field_names_are_the_top_level_names() {
    let names: Vec<&str> =
        field_names("id, name,message_templates{name,status}.limit(5),phone_numbers(x)").collect();
    assert_eq!(
        names,
        vec!["id", "name", "message_templates", "phone_numbers"]
    );
    assert_eq!(field_names("").count(), 0);
}

// Request Cache-Control: no-cache (unless the client is denied it), max-age, only-if-cached.
#[test]
fn request_directives_are_parsed_per_rfc_9111() {
    let h = |v: &str| {
        let mut m = HeaderMap::new();
        m.insert(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        m
    };
    let d = Directives::parse(&h("No-Cache, max-age=\"30\", only-if-cached"), true);
    assert_eq!(
        d,
        Directives {
            no_cache: true,
            max_age: Some(30),
            only_if_cached: true
        }
    );
    assert!(!Directives::parse(&h("no-cache"), false).no_cache);
    assert_eq!(Directives::parse(&h("max-age=abc"), true).max_age, Some(0));
    assert_eq!(
        Directives::parse(&h("max-age=99999999999999999999999"), true).max_age,
        Some(u64::MAX)
    );
    assert_eq!(
        Directives::parse(&h("max-age=5, max-age=9"), true).max_age,
        Some(5)
    );
    assert_eq!(
        Directives::parse(&HeaderMap::new(), true),
        Directives::default()
    );
}

// A top-level `error` object marks a Graph error; the word elsewhere does not.
#[test]
fn graph_error_bodies_are_recognised() {
    assert!(has_graph_error(br#"{"error":{"code":100}}"#));
    assert!(!has_graph_error(br#"{"data":[{"error":"x"}]}"#));
    assert!(!has_graph_error(br#"{"data":[]}"#));
    assert!(!has_graph_error(b"not json"));
}

// Only upstream failures may be answered stale; caller mistakes never are.
#[test]
fn only_upstream_failures_are_answered_stale() {
    assert!(serves_stale(&GatewayError::UpstreamUnreachable));
    assert!(serves_stale(&GatewayError::UpstreamTimeout(
        Duration::from_secs(1)
    )));
    assert!(!serves_stale(&GatewayError::MissingKey));
    assert!(!serves_stale(&GatewayError::NotCached));
    let refusal = |reason| {
        GatewayError::RateLimited(Box::new(crate::limits::Refusal {
            app: "a".into(),
            scope: crate::limits::Scope::Waba("1".into()),
            limit: 1,
            window: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
            reason,
        }))
    };
    assert!(serves_stale(&refusal(crate::limits::RefusalReason::Full)));
    assert!(serves_stale(&refusal(
        crate::limits::RefusalReason::Blocked
    )));
    assert!(!serves_stale(&refusal(
        crate::limits::RefusalReason::ClientQuota
    )));
}

// An entry owns its body and header values: a small answer sliced from a large read buffer keeps
// none of that buffer alive (issue #14: slices pinned kilobytes per entry).
#[test]
fn kept_entries_copy_their_body_and_header_values_out_of_shared_buffers() {
    let buffer = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let mut headers = HeaderMap::new();
    let head = bytes::Bytes::from_static(b"application/json; charset=UTF-8 and more");
    let ct = HeaderValue::from_maybe_shared(head.slice(0..31)).unwrap();
    headers.insert(header::CONTENT_TYPE, ct);
    headers.insert(header::SERVER, HeaderValue::from_static("dropped"));
    let s = Stored {
        status: http::StatusCode::OK,
        headers,
        body: buffer.slice(100..150),
    };
    let kept = keep_headers(&s);
    assert_eq!(kept.body, s.body);
    assert_ne!(kept.body.as_ptr(), s.body.as_ptr(), "the body is a copy");
    let ct = kept.headers.get(header::CONTENT_TYPE).unwrap();
    assert_eq!(ct, "application/json; charset=UTF-8");
    assert_ne!(ct.as_bytes().as_ptr(), head.as_ptr(), "the value is a copy");
    assert!(kept.headers.get(header::SERVER).is_none());
}

// Allocation sizes follow jemalloc's classes: a 16-byte quantum, then four classes per doubling.
#[test]
fn weights_round_to_the_allocators_size_classes() {
    assert_eq!(alloc_size(0), 16);
    assert_eq!(alloc_size(17), 32);
    assert_eq!(alloc_size(100), 112);
    assert_eq!(alloc_size(129), 160);
    assert_eq!(alloc_size(1025), 1280);
    assert_eq!(alloc_size(1 << 20), 1 << 20);
    assert_eq!(alloc_size((1 << 20) + 1), (1 << 20) + (1 << 18));
    for n in 1..100_000 {
        let a = alloc_size(n);
        assert!(a >= n && a <= n + n / 4 + 16, "{n} -> {a}");
    }
}
