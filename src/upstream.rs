//! The connection to Meta: a pool of hyper connections (rustls, HTTP/1.1 and HTTP/2 by ALPN), the
//! fixed upstream base URL, header hygiene both ways, token injection and `appsecret_proof`.
//!
//! It must never let a request choose where it goes (the scheme and authority come only from
//! config), never forward a caller's credentials, and never leak internal addresses to Meta.
//!
//! The pool is graphgate's own, over `hyper::client::conn`: there is one upstream, so there is no
//! per-host map to look up and no key to hash, and an HTTP/1 connection goes back to the pool
//! from the response body the moment its last byte is read.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sha2::Sha256;
use tower::Service;

use crate::config::{self, ProofMode, Secret};
use crate::error::GatewayError;
use crate::sync::MutexExt;

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

/// How often an HTTP/2 connection to Meta is pinged, and how long a ping may go unanswered.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    pool: Arc<Pool>,
    /// `scheme://authority` of the upstream, e.g. `https://graph.facebook.com`.
    origin: String,
    scheme: Scheme,
    authority: Authority,
    /// `Host` of every HTTP/1 request: the authority without a default port.
    host: HeaderValue,
    /// Path prefix of the upstream URL (usually empty).
    base_path: String,
    timeout: Duration,
}

/// Connections to the upstream that are free for a request.
struct Pool {
    /// HTTP/1 connections, the most recently used last (it is the likeliest to be still open).
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection, when Meta chose HTTP/2: one carries every request.
    h2: Mutex<Option<http2::SendRequest<Body>>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Whether the task that closes connections idle past `idle_timeout` runs.
    sweeping: AtomicBool,
}

struct Idle {
    conn: http1::SendRequest<Body>,
    since: Instant,
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// Why a request got no response head.
enum SendError {
    /// No connection could be made: nothing reached Meta.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed while the request was sent or the answer awaited.
    Http(hyper::Error),
    /// The connection failed before the request went out (hyper handed it back).
    NotSent(hyper::Error),
}

/// An outbound connector: rustls (ring) trusting the bundled web PKI roots, or only `ca_roots`
/// when given; HTTP/1.1 and HTTP/2 by ALPN, plain HTTP allowed for loopback test upstreams, Nagle
/// off.
pub fn https_connector(
    connect_timeout: Duration,
    ca_roots: &[rustls_pki_types::CertificateDer<'static>],
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let provider = rustls::crypto::ring::default_provider();
    let builder = if ca_roots.is_empty() {
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .expect("the ring provider supports the default TLS versions")
    } else {
        let mut roots = rustls::RootCertStore::empty();
        // Certificates that are not CAs were refused by rustls here; the rest are trusted.
        let _ = roots.add_parsable_certificates(ca_roots.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
    };
    builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
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
        Upstream {
            connector: https_connector(cfg.connect_timeout, &cfg.ca_roots),
            pool: Arc::new(Pool {
                idle: Mutex::new(Vec::new()),
                h2: Mutex::new(None),
                max_idle: cfg.pool_max_idle_per_host,
                idle_timeout: cfg.pool_idle_timeout,
                sweeping: AtomicBool::new(false),
            }),
            origin: format!("{scheme}://{authority}"),
            host: HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("localhost")),
            scheme,
            authority,
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
        match tokio::time::timeout(self.timeout, self.exchange(req, &handed_over)).await {
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

    /// One request on a pooled or new connection. A reused connection that Meta closed before
    /// the request went out is replaced once, by a fresh one: hyper hands the unsent request back.
    async fn exchange(
        &self,
        mut req: Request<Body>,
        handed_over: &AtomicBool,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let mut retried = false;
        loop {
            let pooled = if retried { None } else { self.checkout().await };
            let (conn, reused) = match pooled {
                Some(c) => (c, true),
                // Boxed: connecting (TCP, TLS, HTTP/2 preface) is a future of kilobytes, which
                // every request's future would otherwise carry, and copy, for a rare event.
                None => (Box::pin(self.connect()).await?, false),
            };
            handed_over.store(true, Ordering::Relaxed);
            let sent = match conn {
                Conn::H2(mut c) => {
                    let mut parts = http::uri::Parts::default();
                    parts.scheme = Some(self.scheme.clone());
                    parts.authority = Some(self.authority.clone());
                    parts.path_and_query = req.uri().path_and_query().cloned();
                    *req.uri_mut() =
                        Uri::from_parts(parts).map_err(|e| SendError::Connect(e.into()))?;
                    c.try_send_request(req)
                        .await
                        .map(|resp| resp.map(|inner| UpstreamBody::new(inner, None)))
                }
                Conn::H1(mut c) => {
                    if req.uri().scheme().is_some() {
                        *req.uri_mut() = Uri::from(
                            req.uri()
                                .path_and_query()
                                .cloned()
                                .unwrap_or_else(|| PathAndQuery::from_static("/")),
                        );
                    }
                    req.headers_mut().insert(header::HOST, self.host.clone());
                    let sent = c.try_send_request(req).await;
                    let back = Some((self.pool.clone(), c));
                    sent.map(|resp| resp.map(|inner| UpstreamBody::new(inner, back)))
                }
            };
            match sent {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused && !retried => {
                        retried = true;
                        req = unsent;
                        handed_over.store(false, Ordering::Relaxed);
                    }
                    Some(_) => return Err(SendError::NotSent(e.into_error())),
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// A pooled connection that is open and ready, if there is one.
    async fn checkout(&self) -> Option<Conn> {
        {
            let mut h2 = self.pool.h2.lock_unpoisoned();
            match h2.as_ref() {
                Some(c) if !c.is_closed() => return Some(Conn::H2(c.clone())),
                Some(_) => *h2 = None,
                None => {}
            }
        }
        loop {
            let idle = self.pool.idle.lock_unpoisoned().pop()?;
            if idle.since.elapsed() > self.pool.idle_timeout {
                continue;
            }
            let mut conn = idle.conn;
            // Usually ready at once; just after a response it may take the connection's task
            // one turn to finish reading it. A closed connection answers an error: drop it.
            if conn.ready().await.is_ok() {
                return Some(Conn::H1(conn));
            }
        }
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        self.pool.start_sweeping();
        let target = Uri::from_parts({
            let mut p = http::uri::Parts::default();
            p.scheme = Some(self.scheme.clone());
            p.authority = Some(self.authority.clone());
            p.path_and_query = Some(PathAndQuery::from_static("/"));
            p
        })
        .map_err(|e| SendError::Connect(e.into()))?;
        let stream = self
            .connector
            .clone()
            .call(target)
            .await
            .map_err(SendError::Connect)?;
        if stream.connected().is_negotiated_h2() {
            // Pings find a connection that died silently (no FIN, no RST): it closes, and the next
            // call opens a new one instead of waiting for the kernel to give up.
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .handshake(stream)
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            drive(conn);
            *self.pool.h2.lock_unpoisoned() = Some(send.clone());
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = http1::handshake(stream)
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            drive(conn);
            Ok(Conn::H1(send))
        }
    }
}

/// Runs a connection's I/O in its own task until Meta or the pool closes it.
fn drive(conn: impl std::future::Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
}

impl Pool {
    fn put(&self, conn: http1::SendRequest<Body>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock_unpoisoned();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle longer than `idle_timeout`, from a task that ends with the pool.
    fn start_sweeping(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let timeout = pool.idle_timeout;
                pool.idle
                    .lock_unpoisoned()
                    .retain(|i| i.since.elapsed() <= timeout && !i.conn.is_closed());
            }
        });
    }
}

/// A response body from Meta. An HTTP/1 connection goes back to the pool once the body has been
/// read to its end; a body dropped before that takes its connection with it (hyper closes it).
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<(Arc<Pool>, http1::SendRequest<Body>)>,
    ended: bool,
}

impl UpstreamBody {
    fn new(inner: Incoming, back: Option<(Arc<Pool>, http1::SendRequest<Body>)>) -> Self {
        UpstreamBody {
            inner,
            back,
            ended: false,
        }
    }

    fn release(&mut self) {
        let Some((pool, mut conn)) = self.back.take() else {
            return;
        };
        if conn.is_ready() {
            pool.put(conn);
            return;
        }
        // Meta answered before the caller's upload ended (an early error): the connection is
        // free only once the rest of the request is sent. Pooling it now would make the next call
        // wait for that upload.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let wait = pool.idle_timeout;
        rt.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(wait, conn.ready()).await {
                pool.put(conn);
            }
        });
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.ended = true;
            self.release();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) is often dropped unread: it is complete all the same.
        if self.ended || http_body::Body::is_end_stream(&self.inner) {
            self.release();
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

/// Prepares a caller's headers for Meta: hop-by-hop and private headers out, our token (its
/// `Authorization` value, see [`crate::auth::Token::bearer`]) in.
pub fn outbound_headers(headers: &mut HeaderMap, bearer: HeaderValue) {
    let listed = connection_listed(headers);
    retain_headers(headers, |n| {
        !is_hop_by_hop(n, &listed)
            && !PRIVATE_REQUEST_HEADERS.contains(n)
            && !n.as_str().starts_with("x-graphgate-")
            && !n.as_str().starts_with("x-http-method-override")
    });
    headers.insert(header::AUTHORIZATION, bearer);
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
        outbound_headers(
            &mut h,
            crate::auth::Token::new(Secret::new("sys-token")).bearer(),
        );
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
