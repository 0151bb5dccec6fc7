//! The caller's request body as the pipeline holds it: streamed to Meta as it arrives, or read whole
//! (bounded, through [`crate::body`]) when it is a form or small JSON body that may carry
//! credentials to take out.
//!
//! It must never buffer a body it does not need to read: uploads stream, bounded by
//! `server.max_body`. Every body it reads whole has a deadline; one read before the caller is known
//! (a form that may carry the key) also waits for one of a few turns ([`PreAuthTurns`]).

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};

use super::check::content_length;
use crate::body::Turns;
use crate::config::Server;
use crate::error::GatewayError;
use crate::target::{self, Param};

/// A request body as the listener hands it over (hyper's, in practice). Kept generic so a body
/// is boxed into axum's `Body` only when it is forwarded, not for every request.
pub trait InBody:
    http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + Unpin + 'static
{
}
impl<B> InBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + Unpin + 'static
{
}

/// A request body as the pipeline holds it.
pub enum ReqBody {
    /// Streamed to Meta as it arrives (bounded by `server.max_body`).
    Stream(Body),
    /// A form body, read whole so credentials can be taken out of it.
    Form(Vec<Param>),
    /// A small JSON body, read whole so a stray `access_token` can be taken out of it.
    Json(Bytes),
}

impl ReqBody {
    pub fn form_param(&self, key: &str) -> Option<&str> {
        match self {
            ReqBody::Form(params) => params
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.value.as_str()),
            _ => None,
        }
    }
}

/// The turns for bodies read before the caller is known; the listener's service puts them in the
/// request's extensions (one set per listener), so the pipeline needs no state of its own.
#[derive(Clone)]
pub struct PreAuthTurns(pub Turns);

/// Whether the caller is known when its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// Authenticated: `server.body_timeout`.
    Known,
    /// The body may carry the key: `server.preauth_body_timeout`, waiting for a turn included.
    Unknown,
}

/// A form body, the one body that may carry the caller's key.
pub fn is_form(headers: &HeaderMap) -> bool {
    content_type(headers).is_some_and(|ct| {
        ct.get(..33)
            .is_some_and(|p| p.eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    })
}

/// No body at all: no length and no chunked transfer, or a zero length.
pub fn has_no_body(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_LENGTH) {
        Some(v) => v.as_bytes() == b"0",
        None => !headers.contains_key(header::TRANSFER_ENCODING),
    }
}

pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// Reads a form or small JSON body whole (bounded by `server.max_form_body` and a deadline); any
/// other body is wrapped to stream, bounded by `server.max_body`.
pub async fn read<B: InBody>(
    s: &Server,
    parts: &Parts,
    body: B,
    reader: Reader,
) -> Result<ReqBody, GatewayError> {
    // Most calls are reads without a body (the transport knows: no length, or HTTP/2's end of
    // stream with the headers); they need no size limit wrapped around nothing.
    if http_body::Body::is_end_stream(&body) {
        return Ok(ReqBody::Stream(Body::empty()));
    }
    let ct = content_type(&parts.headers)
        .unwrap_or("")
        .to_ascii_lowercase();
    if ct.starts_with("application/x-www-form-urlencoded") {
        let bytes = read_whole(s, parts, body, reader).await?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| GatewayError::BadRequest("the form body is not UTF-8".into()))?;
        let params = target::parse_params(text)
            .map_err(|m| GatewayError::BadRequest(format!("form body: {m}")))?;
        return Ok(ReqBody::Form(params));
    }
    let small = content_length(&parts.headers)?.is_some_and(|n| n <= s.max_form_body);
    if ct.starts_with("application/json") && small {
        return Ok(ReqBody::Json(read_whole(s, parts, body, reader).await?));
    }
    let limit = s.max_body;
    let limited = Limited::new(body, limit as usize).map_err(move |e| {
        if e.is::<http_body_util::LengthLimitError>() {
            Box::new(GatewayError::BodyTooLarge { limit })
                as Box<dyn std::error::Error + Send + Sync>
        } else {
            Box::new(GatewayError::CallerBodyFailed) as Box<dyn std::error::Error + Send + Sync>
        }
    });
    Ok(ReqBody::Stream(Body::new(limited)))
}

/// The caller's body, whole, at most `server.max_form_body` bytes, by the deadline its reader has.
async fn read_whole<B: InBody>(
    s: &Server,
    parts: &Parts,
    body: B,
    reader: Reader,
) -> Result<Bytes, GatewayError> {
    let limit = s.max_form_body;
    let timeout = match reader {
        Reader::Known => s.body_timeout,
        Reader::Unknown => s.preauth_body_timeout,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let turns = match reader {
        Reader::Known => None,
        Reader::Unknown => parts.extensions.get::<PreAuthTurns>(),
    };
    let _turn = match turns {
        Some(PreAuthTurns(turns)) => {
            Some(turns.take(deadline).await.ok_or(GatewayError::Overloaded {
                what: "too many unauthenticated request bodies are being read",
                retry_after: std::time::Duration::from_secs(1),
            })?)
        }
        None => None,
    };
    match crate::body::read_whole(body, limit, Some(deadline)).await {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(GatewayError::BodyTooLarge { limit }),
        Err(crate::body::ReadError::TimedOut) => Err(GatewayError::BodyTimeout(timeout)),
        Err(crate::body::ReadError::Failed) => Err(GatewayError::CallerBodyFailed),
    }
}

/// Removes top-level credential keys from a JSON object body; other bodies pass unchanged.
pub fn strip_json_credentials(bytes: Bytes) -> Bytes {
    let has = |needle: &[u8]| memchr::memmem::find(&bytes, needle).is_some();
    if !has(b"access_token") && !has(b"appsecret_") {
        return bytes;
    }
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut map)) => {
            for k in target::AUTH_PARAMS {
                map.remove(k);
            }
            serde_json::to_vec(&map).map(Bytes::from).unwrap_or(bytes)
        }
        _ => bytes,
    }
}

/// Sets `Content-Length` for a body graphgate rewrote.
pub fn set_length(headers: &mut HeaderMap, len: usize) {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}
