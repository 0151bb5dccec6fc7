//! The one mapping from graphgate's own failures to Graph-shaped HTTP errors.
//!
//! Every response graphgate makes itself (rather than relays from Meta) comes from here, carries the
//! `x-graphgate-error` header so callers and tests can tell it from Meta's, and has the body
//! `{"error":{"message","type","code","fbtrace_id"[,"is_transient"]}}`. Messages never contain a token,
//! key or caller-supplied value that could be one.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use crate::limits::{Budget, Refusal, RefusalReason, Scope};

/// Header on every response that graphgate generated itself.
pub const LOCAL_ERROR_HEADER: header::HeaderName =
    header::HeaderName::from_static("x-graphgate-error");

// Clone: the cache hands one upstream failure to every caller that waited for the same miss.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("no client key was presented")]
    MissingKey,
    #[error("the client key is not known")]
    UnknownKey,
    #[error("client `{client}` may not access object {object}")]
    ObjectNotAllowed { client: String, object: String },
    #[error("client `{client}` may not use method {method}")]
    MethodNotAllowed { client: String, method: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("request URI is longer than {limit} bytes")]
    UriTooLong { limit: u64 },
    #[error("request headers exceed {0}")]
    HeadersTooLarge(String),
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the upstream could not be reached")]
    UpstreamUnreachable,
    #[error("the upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    #[error("the caller's request body failed while it was read")]
    CallerBodyFailed,
    #[error("{}", describe_refusal(.0))]
    RateLimited(Box<Refusal>),
    /// `Cache-Control: only-if-cached` and no usable entry (RFC 9111 section 5.2.1.7).
    #[error("nothing usable is cached for this request (only-if-cached)")]
    NotCached,
    /// The caller's body did not arrive by its deadline (`server.body_timeout`, or
    /// `server.preauth_body_timeout` before the caller is known).
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// Load shed before any work: too many connections, requests or unauthenticated body reads.
    #[error("graphgate is busy ({what}); retry after {} s", retry_after_secs(*.retry_after))]
    Overloaded {
        what: &'static str,
        retry_after: std::time::Duration,
    },
}

impl From<crate::target::BadTarget> for GatewayError {
    fn from(e: crate::target::BadTarget) -> GatewayError {
        GatewayError::BadRequest(e.to_string())
    }
}

fn describe_refusal(r: &Refusal) -> String {
    let what = match &r.scope {
        Scope::Waba(id) => format!("WABA {id} of app `{}`", r.app),
        Scope::CreditLine => format!("the credit line of app `{}`", r.app),
        Scope::Other => format!("other calls of app `{}`", r.app),
    };
    let window = humantime::format_duration(r.window);
    let secs = retry_after_secs(r.retry_after);
    match r.reason {
        RefusalReason::Full => format!(
            "the budget of {what} is spent ({} calls per {window}); retry after {secs} s",
            r.limit
        ),
        RefusalReason::Blocked => format!("Meta throttled {what}; calls resume in {secs} s"),
        RefusalReason::Unavailable => {
            format!("the shared rate-limit backend is unreachable, so no call on {what} can be admitted; retry in {secs} s")
        }
        RefusalReason::ClientQuota => format!(
            "this client's request rate for app `{}` is exceeded; retry after {secs} s",
            r.app
        ),
    }
}

/// Whole seconds, rounded up, so a caller that waits that long is admitted.
pub fn retry_after_secs(d: std::time::Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000).max(1) as u64
}

/// How one error looks on the wire.
struct Shape {
    status: StatusCode,
    kind: &'static str,
    code: u32,
    typ: &'static str,
    transient: bool,
}

impl GatewayError {
    fn shape(&self) -> Shape {
        use GatewayError::*;
        let s = |status, kind, code, typ, transient| Shape {
            status,
            kind,
            code,
            typ,
            transient,
        };
        match self {
            // 190 is what every Graph SDK treats as "bad token".
            MissingKey => s(
                StatusCode::UNAUTHORIZED,
                "auth",
                190,
                "OAuthException",
                false,
            ),
            UnknownKey => s(
                StatusCode::UNAUTHORIZED,
                "auth",
                190,
                "OAuthException",
                false,
            ),
            // The seed: a token without access to the object is answered with code 200.
            ObjectNotAllowed { .. } => s(
                StatusCode::FORBIDDEN,
                "forbidden",
                200,
                "OAuthException",
                false,
            ),
            MethodNotAllowed { .. } => s(
                StatusCode::FORBIDDEN,
                "forbidden",
                200,
                "OAuthException",
                false,
            ),
            BadRequest(_) => s(
                StatusCode::BAD_REQUEST,
                "bad-request",
                100,
                "GraphMethodException",
                false,
            ),
            UriTooLong { .. } => s(
                StatusCode::URI_TOO_LONG,
                "bad-request",
                100,
                "GraphMethodException",
                false,
            ),
            HeadersTooLarge(_) => s(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "bad-request",
                100,
                "GraphMethodException",
                false,
            ),
            BodyTooLarge { .. } => s(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bad-request",
                100,
                "GraphMethodException",
                false,
            ),
            // Code 2 is Graph's "temporary issue due to downtime": SDKs retry it.
            UpstreamUnreachable => s(
                StatusCode::BAD_GATEWAY,
                "upstream",
                2,
                "OAuthException",
                true,
            ),
            UpstreamTimeout(_) => s(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                2,
                "OAuthException",
                true,
            ),
            CallerBodyFailed => s(
                StatusCode::BAD_REQUEST,
                "bad-request",
                100,
                "GraphMethodException",
                false,
            ),
            // 80007 ("WABA rate limit") and 4 ("app rate limit") are the two codes that pywa maps to
            // its ThrottlingError and that the Meta Business SDK reports with is_transient; see
            // docs/limits.md.
            // Not a spent budget: graphgate cannot tell, and refuses rather than risk Meta's limit.
            RateLimited(r) if r.reason == RefusalReason::Unavailable => s(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend-unavailable",
                2,
                "OAuthException",
                true,
            ),
            RateLimited(r) => match r.scope {
                Scope::Waba(_) => s(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    80007,
                    "OAuthException",
                    true,
                ),
                Scope::CreditLine | Scope::Other => s(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    4,
                    "OAuthException",
                    true,
                ),
            },
            // RFC 9111 prescribes 504; it is the caller's choice not to wait for Meta, so not transient.
            NotCached => s(
                StatusCode::GATEWAY_TIMEOUT,
                "not-cached",
                100,
                "GraphMethodException",
                false,
            ),
            BodyTimeout(_) => s(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                100,
                "GraphMethodException",
                false,
            ),
            // Code 2, like an unreachable upstream: a temporary issue that SDKs retry.
            Overloaded { .. } => s(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                2,
                "OAuthException",
                true,
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.shape().status
    }

    /// Whether this is the caller's mistake (not worth an error-level log line).
    pub fn is_caller_error(&self) -> bool {
        // Shedding load is not a failure worth a line per refused request either.
        self.status().is_client_error()
            || matches!(
                self,
                GatewayError::NotCached | GatewayError::Overloaded { .. }
            )
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let shape = self.shape();
        let message = match shape.code {
            190 => format!("Invalid OAuth access token - graphgate: {self}"),
            200 => format!("(#200) Permissions error - graphgate: {self}"),
            code => format!("(#{code}) graphgate: {self}"),
        };
        let mut resp = graph_error(
            shape.status,
            shape.kind,
            shape.code,
            shape.typ,
            shape.transient,
            &message,
        );
        if let GatewayError::Overloaded { retry_after, .. } = &self {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(*retry_after)),
            );
        }
        if let GatewayError::RateLimited(r) = &self {
            let h = resp.headers_mut();
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(r.retry_after)),
            );
            if !matches!(
                r.reason,
                RefusalReason::ClientQuota | RefusalReason::Unavailable
            ) {
                let budget = Budget {
                    scope: r.scope.clone(),
                    limit: r.limit,
                    remaining: 0,
                    reset: r.retry_after,
                    window: r.window,
                };
                insert_ratelimit_headers(h, &budget);
            }
        }
        resp
    }
}

/// IETF `RateLimit-Policy` / `RateLimit` (draft-ietf-httpapi-ratelimit-headers) for one bucket.
pub fn insert_ratelimit_headers(h: &mut http::HeaderMap, b: &Budget) {
    // Both values rendered into one buffer and shared by the two headers, numbers with `itoa`
    // rather than `write!`: this runs on every call that reaches the limiter.
    let mut num = itoa::Buffer::new();
    let mut text = String::with_capacity(96);
    text.push('"');
    b.scope.write_label(&mut text);
    text.push_str("\";q=");
    text.push_str(num.format(b.limit));
    text.push_str(";w=");
    text.push_str(num.format(b.window.as_secs()));
    let policy_end = text.len();
    text.push('"');
    b.scope.write_label(&mut text);
    text.push_str("\";r=");
    text.push_str(num.format(b.remaining));
    text.push_str(";t=");
    text.push_str(num.format(b.reset.as_micros().div_ceil(1_000_000)));
    let text = bytes::Bytes::from(text);
    if let (Ok(p), Ok(s)) = (
        HeaderValue::from_maybe_shared(text.slice(..policy_end)),
        HeaderValue::from_maybe_shared(text.slice(policy_end..)),
    ) {
        h.insert(RATELIMIT_POLICY, p);
        h.insert(RATELIMIT, s);
    }
}

const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// A Graph-shaped error response; also used by other modules for errors with their own codes.
pub fn graph_error(
    status: StatusCode,
    kind: &'static str,
    code: u32,
    typ: &str,
    transient: bool,
    message: &str,
) -> Response {
    let mut error = serde_json::json!({
        "message": message,
        "type": typ,
        "code": code,
        "fbtrace_id": trace_id(),
    });
    if transient {
        error["is_transient"] = serde_json::Value::Bool(true);
    }
    let body = serde_json::json!({ "error": error }).to_string();
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    h.insert(LOCAL_ERROR_HEADER, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An fbtrace_id-like tag for locally made errors, prefixed so support can tell it is ours.
fn trace_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let mut rng = rand::thread_rng();
    let tail: String = (0..16)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("GG{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(e: GatewayError) -> (StatusCode, serde_json::Value, Option<String>) {
        let resp = e.into_response();
        let status = resp.status();
        let local = resp
            .headers()
            .get(LOCAL_ERROR_HEADER)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap(), local)
    }

    fn refusal(scope: Scope) -> Refusal {
        Refusal {
            app: "main".into(),
            scope,
            limit: 200,
            window: std::time::Duration::from_secs(3600),
            retry_after: std::time::Duration::from_millis(1500),
            reason: RefusalReason::Full,
        }
    }

    // A refusal names its bucket and limit, and carries Retry-After (rounded up) and RateLimit headers.
    #[tokio::test]
    async fn rate_limited_answers_carry_retry_after_and_ratelimit_headers() {
        let resp =
            GatewayError::RateLimited(Box::new(refusal(Scope::Waba("102290129340398".into()))))
                .into_response();
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(
            resp.headers()["ratelimit-policy"],
            "\"waba:102290129340398\";q=200;w=3600"
        );
        assert_eq!(
            resp.headers()["ratelimit"],
            "\"waba:102290129340398\";r=0;t=2"
        );
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let m = v["error"]["message"].as_str().unwrap();
        assert!(
            m.contains("WABA 102290129340398")
                && m.contains("200 calls per 1h")
                && m.starts_with("(#80007)"),
            "{m}"
        );
    }

    // Each variant keeps its status and Graph code; a change here is a change in the public contract.
    #[tokio::test]
    async fn every_error_has_its_status_code_and_graph_shape() {
        use GatewayError::*;
        let cases = vec![
            (MissingKey, 401, 190, false),
            (UnknownKey, 401, 190, false),
            (
                ObjectNotAllowed {
                    client: "c".into(),
                    object: "1".into(),
                },
                403,
                200,
                false,
            ),
            (
                MethodNotAllowed {
                    client: "c".into(),
                    method: "DELETE".into(),
                },
                403,
                200,
                false,
            ),
            (BadRequest("x".into()), 400, 100, false),
            (UriTooLong { limit: 8192 }, 414, 100, false),
            (HeadersTooLarge("100 headers".into()), 431, 100, false),
            (BodyTooLarge { limit: 1 }, 413, 100, false),
            (UpstreamUnreachable, 502, 2, true),
            (
                UpstreamTimeout(std::time::Duration::from_secs(1)),
                504,
                2,
                true,
            ),
            (CallerBodyFailed, 400, 100, false),
            (
                RateLimited(Box::new(refusal(Scope::Waba("1".into())))),
                429,
                80007,
                true,
            ),
            (
                RateLimited(Box::new(refusal(Scope::CreditLine))),
                429,
                4,
                true,
            ),
            (NotCached, 504, 100, false),
            (
                BodyTimeout(std::time::Duration::from_secs(1)),
                408,
                100,
                false,
            ),
            (
                Overloaded {
                    what: "connections",
                    retry_after: std::time::Duration::from_secs(1),
                },
                503,
                2,
                true,
            ),
        ];
        for (err, status, code, transient) in cases {
            let (s, body, local) = body_of(err).await;
            assert_eq!(s.as_u16(), status);
            let e = &body["error"];
            assert_eq!(e["code"], code);
            assert!(e["message"].as_str().unwrap().contains("graphgate"));
            assert!(e["type"].is_string());
            assert!(e["fbtrace_id"].as_str().unwrap().starts_with("GG"));
            assert_eq!(e["is_transient"].as_bool().unwrap_or(false), transient);
            assert!(local.is_some());
        }
    }
}
