//! A metered call to Meta, the one sequence every call graphgate makes goes through (a caller's,
//! forwarded by the proxy, and the probe's own): admit -> send -> settle -> learn.
//!
//! It owns the order of that sequence: a slot is taken before the request leaves, released when it
//! never reached Meta, placed in the window when Meta's answer head arrives, and what Meta says
//! about budgets (usage headers, throttling errors) is passed to the limiter. It must never send a
//! request without a permit, and never decides who may call or what the answer means otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;

use crate::error::GatewayError;
use crate::limits::{self, BucketKey, Budget, Limiter};
use crate::metrics::Metrics;
use crate::upstream::{Upstream, UpstreamBody};

/// Meta's usage headers, read on every answer. Named once: a lookup by `&str` parses the name each
/// time.
static BUSINESS_USE_CASE_USAGE: http::HeaderName =
    http::HeaderName::from_static("x-business-use-case-usage");
static APP_USAGE: http::HeaderName = http::HeaderName::from_static("x-app-usage");

/// What one call spends and how long it may wait for room.
pub struct Spend<'a> {
    /// Slots per bucket; the first is the call's own bucket.
    pub wants: &'a [(BucketKey, u32)],
    /// Whether the caller may use the share kept by `limits.reserve_percent`.
    pub reserve: bool,
    pub max_wait: Duration,
}

/// Meta's answer head, with the budgets as they stood once the call was placed.
pub struct Answer {
    pub response: http::Response<UpstreamBody>,
    pub budgets: Vec<Budget>,
    /// From sending the request to the answer's head.
    pub elapsed: Duration,
}

/// Why a metered call did not get an answer head.
pub enum Failed {
    /// The limiter refused the call (no room, blocked, or the shared backend is away).
    Refused(limits::Refusal),
    /// The request could not be built, or the upstream failed; `elapsed` is set when it was sent.
    Upstream {
        error: GatewayError,
        elapsed: Option<Duration>,
    },
}

/// admit -> send -> settle: takes a slot in every bucket of `spend`, builds and sends the request,
/// and settles the permit (freed if the request never reached Meta, counted at the answer head
/// otherwise). Meta's usage headers on the answer are passed to the limiter for `app`.
pub async fn call(
    limiter: &Arc<Limiter>,
    upstream: &Upstream,
    app: usize,
    spend: Spend<'_>,
    build: impl FnOnce() -> Result<http::Request<Body>, GatewayError>,
) -> Result<Answer, Failed> {
    let mut permit = limiter
        .admit(spend.wants, spend.reserve, spend.max_wait)
        .await
        .map_err(Failed::Refused)?;
    let request = match build() {
        Ok(r) => r,
        Err(error) => {
            permit.release();
            return Err(Failed::Upstream {
                error,
                elapsed: None,
            });
        }
    };
    permit.sent();
    let sent_at = Instant::now();
    let result = upstream.send(request).await;
    let elapsed = sent_at.elapsed();
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            if !e.reached {
                permit.release();
            }
            return Err(Failed::Upstream {
                error: e.error,
                elapsed: Some(elapsed),
            });
        }
    };
    // The answer head is back: Meta has counted the call by now, so this is its place in the window.
    let budgets = std::mem::take(&mut permit.budgets);
    permit.finish();
    let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
    limiter.observe_usage(app, header(&BUSINESS_USE_CASE_USAGE), header(&APP_USAGE));
    Ok(Answer {
        response,
        budgets,
        elapsed,
    })
}

/// learn: what a failed answer's body says about budgets. A throttling code closes `bucket` (the
/// call's own) until Meta's regain time, and is counted.
pub fn learn_from_error(
    limiter: &Limiter,
    metrics: &Metrics,
    app: usize,
    bucket: Option<&BucketKey>,
    body: &serde_json::Value,
) {
    if let (Some(code), Some(key)) = (body["error"]["code"].as_u64(), bucket) {
        if limits::is_throttling_code(code) {
            tracing::warn!(code, bucket = %key.scope.label(), "Meta throttled a call; blocking the bucket");
            limiter.observe_throttle(key, code, None);
            metrics.record_throttle(app, code);
        }
    }
}
