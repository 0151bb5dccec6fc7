//! The connection to Meta: the `Upstream` facade the request path and the probe call (the fixed
//! upstream base URL, one `send` within `request_timeout`, and what a failure means), over its
//! parts: `pool` (graphgate's own connection pool and [`UpstreamBody`]), `tls` (the rustls
//! connector), `headers` (header hygiene both ways, our bearer in) and `proof`
//! (`appsecret_proof`).
//!
//! It must never let a request choose where it goes (the scheme and authority come only from
//! config), never forward a caller's credentials, and never leak internal addresses to Meta.
//! The children never use this file's items (it uses them), so there is no cycle in the folder.

mod headers;
mod pool;
mod proof;
mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};

use crate::config;
use crate::error::GatewayError;
use pool::{Pool, SendError};

pub use headers::{outbound_headers, strip_hop_by_hop};
pub use pool::{BodyError, UpstreamBody};
pub use proof::{appsecret_proof, proof_params};
pub use tls::https_connector;

pub struct Upstream {
    pool: Arc<Pool>,
    /// `scheme://authority` of the upstream, e.g. `https://graph.facebook.com`.
    origin: String,
    /// Path prefix of the upstream URL (usually empty).
    base_path: String,
    timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &config::Upstream) -> Upstream {
        let scheme = cfg.url.scheme().cloned().unwrap_or(Scheme::HTTPS);
        // The config loader refuses an upstream URL without a host; this default is never used.
        let authority = cfg
            .url
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("graph.facebook.com"));
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(p) if p != default_port => authority.as_str(),
            _ => authority.host(),
        };
        let host = HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("localhost"));
        Upstream {
            origin: format!("{scheme}://{authority}"),
            pool: Pool::new(
                https_connector(cfg.connect_timeout, &cfg.ca_roots),
                scheme,
                authority,
                host,
                cfg.pool_max_idle_per_host,
                cfg.pool_idle_timeout,
                cfg.body_idle_timeout,
            ),
            base_path: cfg.url.path().trim_end_matches('/').to_string(),
            timeout: cfg.request_timeout,
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// The upstream target (origin form, base path included) for a validated path and an already
    /// cleaned query. [`Upstream::send`] adds the scheme and authority where the protocol wants them.
    pub fn uri_for(&self, path: &str, query: &str) -> Result<Uri, GatewayError> {
        let mut s = String::with_capacity(self.base_path.len() + path.len() + query.len() + 1);
        s.push_str(&self.base_path);
        s.push_str(path);
        if !query.is_empty() {
            s.push('?');
            s.push_str(query);
        }
        PathAndQuery::from_maybe_shared(s)
            .map(Uri::from)
            .map_err(|_| GatewayError::BadRequest("the request target cannot be forwarded".into()))
    }

    /// Sends the request and waits for the response head, within `request_timeout`.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<UpstreamBody>, UpstreamError> {
        // Set once the request is handed to a connection: a timeout before that (connect, TLS,
        // waiting for a connection) cannot have reached Meta.
        let handed_over = AtomicBool::new(false);
        match tokio::time::timeout(self.timeout, self.pool.exchange(req, &handed_over)).await {
            Err(_) => Err(UpstreamError {
                error: GatewayError::UpstreamTimeout(self.timeout),
                reached: handed_over.load(Ordering::Relaxed),
            }),
            Ok(Err(SendError::NotSent(e))) => {
                tracing::warn!(error = %e, "upstream connection failed before the request went out");
                Err(UpstreamError {
                    error: GatewayError::UpstreamUnreachable,
                    reached: false,
                })
            }
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(SendError::Connect(e))) => {
                tracing::warn!(error = %e, "cannot connect to the upstream");
                // A refused connection never reached Meta, so it costs no budget.
                Err(UpstreamError {
                    error: GatewayError::UpstreamUnreachable,
                    reached: false,
                })
            }
            Ok(Err(SendError::Http(e))) => {
                // A failure while streaming the caller's body (too large, client went away) is not
                // Meta's fault; anything else is a transport problem towards Meta. Either may have
                // reached Meta, so it counts.
                if let Some(ge) = find_cause::<GatewayError>(&e) {
                    let error = match ge {
                        GatewayError::BodyTooLarge { limit } => {
                            GatewayError::BodyTooLarge { limit: *limit }
                        }
                        _ => GatewayError::CallerBodyFailed,
                    };
                    return Err(UpstreamError {
                        error,
                        reached: true,
                    });
                }
                tracing::warn!(error = %e, "upstream request failed");
                Err(UpstreamError {
                    error: GatewayError::UpstreamUnreachable,
                    reached: true,
                })
            }
        }
    }
}

/// A failed upstream call, and whether it may have reached Meta (and so spent budget).
#[derive(Debug)]
pub struct UpstreamError {
    pub error: GatewayError,
    pub reached: bool,
}

/// What a failure of an answer's body from Meta means for the caller: a stall past
/// `upstream.body_idle_timeout` is a timeout (504, or a stale entry), anything else a transport
/// failure (502). `e` may be the body's own error or any error that wraps it.
pub fn body_failure(e: &(dyn std::error::Error + 'static)) -> GatewayError {
    match find_cause::<BodyError>(e) {
        Some(BodyError::Stalled(idle)) => GatewayError::UpstreamTimeout(*idle),
        Some(BodyError::Transport(_)) | None => GatewayError::UpstreamUnreachable,
    }
}

fn find_cause<'a, T: std::error::Error + 'static>(
    mut e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    loop {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        e = e.source()?;
    }
}

#[cfg(test)]
mod tests;
