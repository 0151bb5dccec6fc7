//! Unit tests of `upstream`: header hygiene and `appsecret_proof` known answers.

use http::HeaderMap;

use super::*;
use crate::config::Secret;

// Connection-listed and standard hop-by-hop headers go; end-to-end headers stay.
#[test]
fn removes_all_hop_headers_case_insensitively() {
    let mut h = HeaderMap::new();
    h.insert("Connection", "X-Custom, keep-alive".parse().unwrap());
    h.insert("x-custom", "1".parse().unwrap());
    h.insert("Keep-Alive", "timeout=5".parse().unwrap());
    h.insert("TE", "trailers".parse().unwrap());
    h.insert("Transfer-Encoding", "chunked".parse().unwrap());
    h.insert("Upgrade", "h2c".parse().unwrap());
    h.insert("x-fb-trace-id", "abc".parse().unwrap());
    strip_hop_by_hop(&mut h);
    assert_eq!(h.len(), 1);
    assert!(h.contains_key("x-fb-trace-id"));
}

// A `Connection` value that is not text (one obs-text byte) still names its headers as hop-by-hop.
#[test]
fn connection_names_count_in_a_value_with_a_non_ascii_byte() {
    let mut h = HeaderMap::new();
    h.insert(
        "Connection",
        http::HeaderValue::from_bytes(b"X-Foo ,\xff, keep-alive").unwrap(),
    );
    h.insert("x-foo", "1".parse().unwrap());
    h.insert("x-bar", "2".parse().unwrap());
    let out = outbound_headers(
        &h,
        crate::auth::Token::new(Secret::new("sys-token")).bearer(),
    );
    assert!(!out.contains_key("x-foo") && !out.contains_key("connection"));
    assert!(out.contains_key("x-bar"));
}

// The caller's credentials and addresses never reach Meta; our token does.
#[test]
fn outbound_headers_replace_credentials_and_hide_addresses() {
    let mut h = HeaderMap::new();
    h.insert("authorization", "Bearer client-key".parse().unwrap());
    h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
    h.insert("host", "internal.example".parse().unwrap());
    h.insert("x-graphgate-max-wait", "5s".parse().unwrap());
    h.insert("cookie", "session=internal".parse().unwrap());
    h.insert("true-client-ip", "10.0.0.2".parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    h.append("accept", "application/json".parse().unwrap());
    h.append("accept", "text/plain".parse().unwrap());
    let h = outbound_headers(
        &h,
        crate::auth::Token::new(Secret::new("sys-token")).bearer(),
    );
    assert_eq!(h.get("authorization").unwrap(), "Bearer sys-token");
    assert!(h.get("authorization").unwrap().is_sensitive());
    assert!(
        !h.contains_key("x-forwarded-for")
            && !h.contains_key("host")
            && !h.contains_key("x-graphgate-max-wait")
            && !h.contains_key("cookie")
            && !h.contains_key("true-client-ip")
    );
    assert!(h.contains_key("content-type"));
    // Every value of a repeated end-to-end header goes on, in order.
    let accept: Vec<_> = h.get_all("accept").iter().collect();
    assert_eq!(accept, ["application/json", "text/plain"]);
}

// Known answers, computed independently with Python's hmac module.
#[test]
fn appsecret_proof_matches_an_independent_hmac() {
    let (secret, token) = (Secret::new("secret"), Secret::new("token"));
    assert_eq!(
        appsecret_proof(&secret, &token, None),
        "e941110e3d2bfe82621f0e3e1434730d7305d106c5f68c87165d0b27a4611a4a"
    );
    assert_eq!(
        appsecret_proof(&secret, &token, Some(1700000000)),
        "3c81f1bf0544f53adccadbaf135235bf73451aadede41a90a122c46e93dcae64"
    );
}
