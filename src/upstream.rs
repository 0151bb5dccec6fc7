//! The connection to Meta: one pooled hyper client (rustls, HTTP/1.1 and HTTP/2 by ALPN), the fixed
//! upstream base URL, header hygiene both ways, token injection and `appsecret_proof`.
//!
//! It must never let a request choose where it goes (the scheme and authority come only from
//! config), never forward a caller's credentials, and never leak internal addresses to Meta.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;

use crate::config::{self, ProofMode, Secret};
use crate::error::GatewayError;

/// Hop-by-hop headers (RFC 9110 section 7.6.1, plus the obsolete `Keep-Alive` and
/// `Proxy-Connection`): they describe one connection and must not be relayed.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Request headers that would tell Meta about our callers or network, or carry the caller's key.
const PRIVATE_REQUEST_HEADERS: [HeaderName; 9] = [
    header::HOST,
    header::AUTHORIZATION,
    header::FORWARDED,
    header::VIA,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-request-id"),
];

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

pub struct Upstream {
    client: HttpClient,
    /// `scheme://authority` of the upstream, e.g. `https://graph.facebook.com`.
    origin: String,
    /// Path prefix of the upstream URL (usually empty).
    base_path: String,
    timeout: Duration,
}

/// An outbound connector: rustls with the bundled web PKI roots (ring), HTTP/1.1 and HTTP/2 by
/// ALPN, plain HTTP allowed for loopback test upstreams, Nagle off.
pub fn https_connector(connect_timeout: Duration) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .expect("the ring provider supports the default TLS versions")
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

impl Upstream {
    pub fn new(cfg: &config::Upstream) -> Upstream {
        let https = https_connector(cfg.connect_timeout);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .build(https);
        let scheme = cfg.url.scheme_str().unwrap_or("https");
        let authority = cfg.url.authority().map(|a| a.as_str()).unwrap_or_default();
        Upstream {
            client,
            origin: format!("{scheme}://{authority}"),
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

    /// The upstream URI for a validated path and an already cleaned query.
    pub fn uri_for(&self, path: &str, query: &str) -> Result<Uri, GatewayError> {
        let mut s = String::with_capacity(
            self.origin.len() + self.base_path.len() + path.len() + query.len() + 1,
        );
        s.push_str(&self.origin);
        s.push_str(&self.base_path);
        s.push_str(path);
        if !query.is_empty() {
            s.push('?');
            s.push_str(query);
        }
        s.parse()
            .map_err(|_| GatewayError::BadRequest("the request target cannot be forwarded".into()))
    }

    /// Sends the request and waits for the response head, within `request_timeout`.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError {
                error: GatewayError::UpstreamTimeout(self.timeout),
                reached: true,
            }),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                // A refused connection never reached Meta, so it costs no budget; anything later
                // may have, so it counts.
                let reached = !e.is_connect();
                // A failure while streaming the caller's body (too large, client went away) is not
                // Meta's fault; anything else is a transport problem towards Meta.
                if let Some(cause) = std::error::Error::source(&e) {
                    if let Some(ge) = find_cause::<GatewayError>(cause) {
                        let error = match ge {
                            GatewayError::BodyTooLarge { limit } => {
                                GatewayError::BodyTooLarge { limit: *limit }
                            }
                            _ => GatewayError::RequestBodyFailed,
                        };
                        return Err(UpstreamError { error, reached });
                    }
                }
                tracing::warn!(error = %e, "upstream request failed");
                Err(UpstreamError {
                    error: GatewayError::UpstreamUnreachable,
                    reached,
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

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    retain_headers(headers, |n| !is_hop_by_hop(n, &listed));
}

/// Header names the `Connection` header lists: hop-by-hop for this message only.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

fn is_hop_by_hop(name: &HeaderName, listed: &[HeaderName]) -> bool {
    // `Upgrade` is hop-by-hop too; graphgate never upgrades connections to Meta.
    HOP_BY_HOP.contains(name) || name == header::UPGRADE || listed.contains(name)
}

/// Removes the headers `keep` rejects: one scan of the (short) header list, then a removal only
/// for names actually present, instead of a hashed removal for every name on the deny lists.
fn retain_headers(headers: &mut HeaderMap, keep: impl Fn(&HeaderName) -> bool) {
    let unwanted: Vec<HeaderName> = headers.keys().filter(|n| !keep(n)).cloned().collect();
    for name in unwanted {
        headers.remove(name);
    }
}

/// Prepares a caller's headers for Meta: hop-by-hop and private headers out, our token in.
pub fn outbound_headers(headers: &mut HeaderMap, token: &Secret) {
    let listed = connection_listed(headers);
    retain_headers(headers, |n| {
        !is_hop_by_hop(n, &listed)
            && !PRIVATE_REQUEST_HEADERS.contains(n)
            && !n.as_str().starts_with("x-graphgate-")
            && !n.as_str().starts_with("x-http-method-override")
    });
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    v.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, v);
    // graphgate reads Meta's JSON (paging links, errors, usage) and caches it for every caller, so
    // it asks for plain bytes whatever the caller accepts.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

/// `appsecret_proof` (and `appsecret_time` for the time-stamped form) as query pairs to append.
pub fn proof_params(app_secret: &Secret, token: &Secret, mode: ProofMode) -> String {
    match mode {
        ProofMode::Classic => format!(
            "appsecret_proof={}",
            appsecret_proof(app_secret, token, None)
        ),
        ProofMode::Timestamped => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!(
                "appsecret_proof={}&appsecret_time={now}",
                appsecret_proof(app_secret, token, Some(now))
            )
        }
    }
}

/// Hex HMAC-SHA256 keyed by the app secret over the token, or over `token|time` when time-stamped.
pub fn appsecret_proof(app_secret: &Secret, token: &Secret, time: Option<u64>) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(token.expose().as_bytes());
    if let Some(t) = time {
        mac.update(format!("|{t}").as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    // The caller's credentials and addresses never reach Meta; our token does.
    #[test]
    fn outbound_headers_replace_credentials_and_hide_addresses() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer client-key".parse().unwrap());
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.insert("host", "internal.example".parse().unwrap());
        h.insert("x-graphgate-max-wait", "5s".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        outbound_headers(&mut h, &Secret::new("sys-token"));
        assert_eq!(h.get("authorization").unwrap(), "Bearer sys-token");
        assert!(h.get("authorization").unwrap().is_sensitive());
        assert!(
            !h.contains_key("x-forwarded-for")
                && !h.contains_key("host")
                && !h.contains_key("x-graphgate-max-wait")
        );
        assert!(h.contains_key("content-type"));
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
}
