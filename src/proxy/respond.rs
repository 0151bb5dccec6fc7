//! rewrite -> respond: Meta's answer as the caller gets it. Hop-by-hop headers go; a JSON answer up
//! to `server.max_rewrite_body` is read (bounded, within `upstream.body_timeout`), taught to the
//! limiter, has its paging links pointed at graphgate and any token redacted; anything else streams
//! unchanged, and a stream that Meta stops feeding for `upstream.body_idle_timeout` is cut, logged
//! with the request's id and counted ([`Streamed`]).
//!
//! It must never hold an answer without a deadline, and never let a token or a link to Meta through
//! in a body it rewrites.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header;
use http::request::Parts;
use http::Method;
use http_body::{Frame, SizeHint};

use super::body::{content_type, set_length};
use super::check::content_length;
use crate::body::{Read, ReadError};
use crate::cache::BodyDeadline;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::limits::{self, BucketKey, Scope};
use crate::metered;
use crate::rewrite;
use crate::telemetry::RequestTag;
use crate::upstream::{self, UpstreamBody};

pub async fn respond(
    gw: &Gateway,
    parts: &Parts,
    resp: http::Response<UpstreamBody>,
    app: usize,
    class: &Scope,
    bucket: Option<&BucketKey>,
) -> Result<Response, GatewayError> {
    let (mut rparts, mut body) = resp.into_parts();
    upstream::strip_hop_by_hop(&mut rparts.headers);
    let limit = gw.config().server.max_rewrite_body;
    // The head has come: a body graphgate reads whole must be complete this long after it.
    let total = gw.config().upstream.body_timeout;
    let deadline = tokio::time::Instant::now() + total;
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
    let streamed = |mut rparts: http::response::Parts, head: Option<Bytes>, body| {
        // A cache step that buffers this answer stops at the same deadline.
        rparts.extensions.insert(BodyDeadline {
            at: deadline,
            after: total,
        });
        let body = Streamed::new(gw, app, class, head, body);
        Response::from_parts(rparts, Body::new(body))
    };
    if !rewritable {
        return Ok(streamed(rparts, None, body));
    }
    // Read through `&mut`, so a stall is told from a reset afterwards and the unread rest of a
    // body over the limit is still this one.
    let read = crate::body::read(&mut body, limit, Some(deadline)).await;
    let bytes = match read {
        Ok(Read::Whole(bytes)) => bytes,
        // Larger than the limit after all: what was read, then the rest, unchanged.
        Ok(Read::TooLarge { head, .. }) => return Ok(streamed(rparts, Some(head), body)),
        Err(ReadError::TimedOut) => return Err(GatewayError::UpstreamTimeout(total)),
        Err(ReadError::Failed) => {
            return Err(match body.stalled() {
                Some(idle) => GatewayError::UpstreamTimeout(idle),
                None => GatewayError::UpstreamUnreachable,
            })
        }
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

/// An answer streamed from Meta to the caller (or to the cache step that buffers it): what was
/// already read, then the rest of Meta's body. When that body fails (a stall past
/// `upstream.body_idle_timeout`, a reset), the caller's stream ends with the error, so hyper cuts
/// the connection (no terminating chunk, or fewer bytes than `Content-Length`) and the client
/// notices; the cut is logged with the request's id and counted as an upstream timeout or error.
struct Streamed {
    head: Option<Bytes>,
    rest: UpstreamBody,
    gw: Gateway,
    app: usize,
    class: &'static str,
    /// The request the answer belongs to: the body is polled after the request's future is done.
    tag: Option<Arc<RequestTag>>,
    since: Instant,
    bytes: u64,
}

impl Streamed {
    fn new(
        gw: &Gateway,
        app: usize,
        class: &Scope,
        head: Option<Bytes>,
        rest: UpstreamBody,
    ) -> Streamed {
        Streamed {
            bytes: head.as_ref().map_or(0, |h| h.len() as u64),
            head,
            rest,
            gw: gw.clone(),
            app,
            class: class.kind(),
            tag: RequestTag::current(),
            since: Instant::now(),
        }
    }

    fn cut(&self, e: &upstream::BodyError) {
        let error = upstream::body_failure(e);
        let elapsed = self.since.elapsed();
        let _in = self.tag.as_ref().map(|t| t.enter());
        tracing::warn!(
            error = %e,
            bytes = self.bytes,
            duration_us = elapsed.as_micros() as u64,
            "answer cut: Meta's body failed while it was streamed"
        );
        self.gw
            .metrics()
            .record_upstream(self.app, self.class, Err(&error), elapsed);
    }
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = upstream::BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        let polled = Pin::new(&mut self.rest).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                self.bytes += f.data_ref().map_or(0, |d| d.len() as u64);
            }
            Poll::Ready(Some(Err(e))) => self.cut(e),
            Poll::Ready(None) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + head);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
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
