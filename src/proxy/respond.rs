//! rewrite -> respond: Meta's answer as the caller gets it. Hop-by-hop headers go; a JSON answer up
//! to `server.max_rewrite_body` is read (bounded, with a deadline), taught to the limiter, has its
//! paging links pointed at graphgate and any token redacted; anything else streams unchanged.
//!
//! It must never hold an answer without a deadline, and never let a token or a link to Meta through
//! in a body it rewrites.

use axum::body::Body;
use axum::response::Response;
use http::header;
use http::request::Parts;
use http::Method;
use http_body_util::BodyExt;

use super::body::{content_type, set_length};
use super::check::content_length;
use crate::body::{Read, ReadError};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::limits::{self, BucketKey, Scope};
use crate::metered;
use crate::rewrite;
use crate::upstream::{self, UpstreamBody};

pub async fn respond(
    gw: &Gateway,
    parts: &Parts,
    resp: http::Response<UpstreamBody>,
    app: usize,
    class: &Scope,
    bucket: Option<&BucketKey>,
) -> Result<Response, GatewayError> {
    let (mut rparts, body) = resp.into_parts();
    upstream::strip_hop_by_hop(&mut rparts.headers);
    let limit = gw.config().server.max_rewrite_body;
    let encoded = rparts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    let rewritable = parts.method != Method::HEAD
        && !encoded
        && rewrite::is_json(content_type(&rparts.headers))
        && content_length(&rparts.headers)
            .ok()
            .flatten()
            .is_none_or(|n| n <= limit);
    if !rewritable {
        return Ok(Response::from_parts(rparts, Body::new(body)));
    }
    // The head came within request_timeout; the body gets as long again, so a stall mid-body
    // cannot hold this caller (and those coalesced behind it) forever.
    let timeout = gw.config().upstream.request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let bytes = match crate::body::read(body, limit, Some(deadline)).await {
        Ok(Read::Whole(bytes)) => bytes,
        // Larger than the limit after all: what was read, then the rest, unchanged.
        Ok(Read::TooLarge { head, rest }) => {
            let head = futures_util::stream::once(async move { Ok::<_, hyper::Error>(head) });
            let stream = futures_util::StreamExt::chain(head, rest.into_data_stream());
            return Ok(Response::from_parts(rparts, Body::from_stream(stream)));
        }
        Err(ReadError::TimedOut) => return Err(GatewayError::UpstreamTimeout(timeout)),
        Err(ReadError::Failed) => return Err(GatewayError::UpstreamUnreachable),
    };
    learn(gw, parts, rparts.status, &bytes, app, class, bucket);
    let bytes = gw
        .rewriter()
        .paging(&bytes, || public_base(gw, parts))
        .unwrap_or(bytes);
    let bytes = gw.redactor().redact(bytes);
    set_length(&mut rparts.headers, bytes.len());
    Ok(Response::from_parts(rparts, Body::from(bytes)))
}

/// What Meta's answer teaches the limiter: throttling errors block the bucket, phone-number
/// listings say whether a WABA is active, credit-line answers name allocation configs. Only the
/// responses that can hold such facts are parsed.
fn learn(
    gw: &Gateway,
    parts: &Parts,
    status: http::StatusCode,
    body: &[u8],
    app: usize,
    class: &Scope,
    bucket: Option<&BucketKey>,
) {
    // Parsing costs more than the rest of a miss: only answers that can teach something are read.
    let lists_numbers = parts
        .uri
        .path()
        .trim_end_matches('/')
        .ends_with("/phone_numbers")
        || parts
            .uri
            .query()
            .is_some_and(|q| q.contains("phone_numbers"));
    let interesting = !status.is_success()
        || matches!(class, Scope::CreditLine)
        || (matches!(class, Scope::Waba(_)) && parts.method == Method::GET && lists_numbers);
    if !interesting {
        return;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let limiter = gw.limiter();
    if !status.is_success() {
        metered::learn_from_error(limiter, gw.metrics(), app, bucket, &v);
        return;
    }
    match class {
        Scope::CreditLine => {
            for id in limits::allocation_ids_in(&v) {
                limiter.learn_allocation_config(&id);
            }
        }
        Scope::Waba(waba) => {
            let path_is_listing = parts
                .uri
                .path()
                .trim_end_matches('/')
                .ends_with("/phone_numbers");
            let listing = if path_is_listing {
                Some(&v)
            } else {
                v.get("phone_numbers")
            };
            // Only "active" is learned from traffic: an empty page (limit=0, a last cursor, a
            // filter) says nothing about the numbers not listed. "Inactive" comes from the probe.
            if listing.and_then(limits::registered_in) == Some(true) {
                limiter.learn_active(app, waba, true);
            }
        }
        Scope::Other => {}
    }
}

/// The Host that paging links in an answer will name: "" when `server.public_url` fixes them. Part
/// of the cache key, so a caller using another Host never gets links to the first one's.
pub fn link_host<'a>(gw: &Gateway, parts: &'a Parts) -> &'a str {
    if gw.public_base().is_some() {
        return "";
    }
    caller_host(parts).unwrap_or("")
}

/// Where the caller reached graphgate: `server.public_url`, else the scheme and Host it used.
fn public_base(gw: &Gateway, parts: &Parts) -> String {
    if let Some(b) = gw.public_base() {
        return b.to_string();
    }
    let host = caller_host(parts).unwrap_or("localhost");
    format!("{}://{}", gw.public_scheme(), host)
}

/// The Host the caller named (header, else the absolute-form authority).
fn caller_host(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
}
