//! check: the first step, before anything else reads the request. It refuses request heads that
//! are too large, ambiguous or not for the Graph API, and decodes the target.
//!
//! It must never read the body, authenticate or look at caller state: it judges the head alone.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Version};

use crate::config::Server;
use crate::error::GatewayError;
use crate::target::Target;

/// The request id header, echoed on every answer.
pub const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// The checked target of a request whose head is within the configured limits.
pub fn check(s: &Server, parts: &Parts) -> Result<Target, GatewayError> {
    let pq = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    if pq.len() as u64 > s.max_uri {
        return Err(GatewayError::UriTooLong { limit: s.max_uri });
    }
    if parts.headers.len() > s.max_headers {
        return Err(GatewayError::HeadersTooLarge(format!(
            "{} headers",
            s.max_headers
        )));
    }
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes as u64 > s.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge(format!(
            "{} bytes",
            s.max_header_bytes
        )));
    }
    // Absolute-form (`GET http://host/x HTTP/1.1`) naming anything but the Host we were reached
    // under is a forward-proxy request; graphgate is not one. (HTTP/2 always carries an authority.)
    if matches!(parts.version, Version::HTTP_10 | Version::HTTP_11) {
        if let Some(auth) = parts.uri.authority() {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok());
            if host.is_none_or(|h| !h.eq_ignore_ascii_case(auth.as_str())) {
                return Err(GatewayError::BadRequest(
                    "absolute-form request targets naming another host are not accepted".into(),
                ));
            }
        }
    }
    if !matches!(
        parts.method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::DELETE
            | Method::PUT
            | Method::PATCH
            | Method::OPTIONS
    ) {
        return Err(GatewayError::BadRequest(format!(
            "method {} is not supported by the Graph API",
            parts.method
        )));
    }
    if let Some(len) = content_length(&parts.headers)? {
        if len > s.max_body {
            return Err(GatewayError::BodyTooLarge { limit: s.max_body });
        }
    }
    Ok(Target::parse(parts.uri.path(), parts.uri.query())?)
}

/// The declared `Content-Length`, refused when it is not a plain number.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, GatewayError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| GatewayError::BadRequest("malformed Content-Length".into())),
    }
}

/// The caller's `x-request-id` when it is a plain token, else a new random one (32 hex digits).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        {
            return v.clone();
        }
    }
    let n: u128 = rand::random();
    let mut hex = [0u8; 32];
    for (i, d) in hex.iter_mut().enumerate() {
        *d = b"0123456789abcdef"[(n >> (124 - 4 * i) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).unwrap_or(HeaderValue::from_static("0"))
}
