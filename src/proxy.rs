//! The request path, one named step at a time:
//! check -> authenticate -> classify -> authorize -> cache -> limit -> upstream -> rewrite -> respond.
//!
//! It owns the order of the steps and the shared [`Gateway`] state. It must never send a request
//! upstream before the caller is authenticated and authorized, never forward a caller's key, and
//! never buffer a body it does not need to read (uploads and downloads stream).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Version};
use http_body_util::{BodyExt, Limited};

use crate::auth::{self, Caller, Directory};
use crate::cache::{self, ResponseCache};
use crate::classify::{self, Class};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::error::GatewayError;
use crate::limits::{self, BucketKey, Limiter, Scope};
use crate::metrics::{CacheResult, Metrics, Seen};
use crate::rewrite::{self, Rewriter};
use crate::target::{self, is_auth_param, join_raw, Param, Target};
use crate::upstream::{self, Upstream};

const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// Graph's batch endpoint takes at most this many sub-requests.
const MAX_BATCH: usize = 50;

/// Shared state: cheap to clone, one per process.
#[derive(Clone)]
pub struct Gateway(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub directory: Directory,
    pub upstream: Upstream,
    pub limiter: Arc<Limiter>,
    pub cache: ResponseCache,
    pub metrics: Metrics,
    redactor: rewrite::Redactor,
    rewriter: Rewriter,
    /// The webhook receiver, when `[webhooks]` is configured.
    pub webhooks: Option<Arc<crate::webhooks::Hub>>,
    /// `server.public_url` without a trailing slash, when configured.
    public_base: Option<String>,
    /// Scheme callers use when `public_url` is not set.
    public_scheme: &'static str,
}

impl Gateway {
    pub fn new(config: Config) -> Gateway {
        Gateway::with_clock(config, SystemClock::shared())
    }

    /// A gateway whose limiter and cache read time from `clock` (tests pass a manual one).
    pub fn with_clock(config: Config, clock: SharedClock) -> Gateway {
        let cache = ResponseCache::new(
            &config.cache,
            config.apps.len(),
            config.server.max_rewrite_body,
            clock.clone(),
        );
        let directory = Directory::new(&config);
        let upstream = Upstream::new(&config.upstream);
        let limiter = Arc::new(Limiter::new(&config, clock));
        let metrics = Metrics::new(&config);
        let webhooks = crate::webhooks::Hub::new(&config);
        let public_base = config
            .server
            .public_url
            .as_ref()
            .map(|u| u.to_string().trim_end_matches('/').to_string());
        let public_scheme = if config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let redactor = rewrite::Redactor::new(&config);
        let rewriter = Rewriter::new(upstream.origin(), upstream.base_path());
        Gateway(Arc::new(Inner {
            redactor,
            rewriter,
            config,
            directory,
            upstream,
            limiter,
            cache,
            metrics,
            webhooks,
            public_base,
            public_scheme,
        }))
    }

    pub fn inner(&self) -> &Inner {
        &self.0
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn cache(&self) -> &ResponseCache {
        &self.0.cache
    }
}

/// A request body as the listener hands it over (hyper's, in practice). Kept generic so a body
/// is boxed into axum's `Body` only when it is forwarded, not for every request.
pub trait InBody:
    http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static
{
}
impl<B> InBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<axum::BoxError>> + Send + 'static
{
}

/// The handler for every proxied request.
pub async fn handle<B: InBody>(State(gw): State<Gateway>, req: http::Request<B>) -> Response {
    let started = Instant::now();
    let request_id = request_id(req.headers());
    // Checked to be printable ASCII above, so this never falls back.
    let id = request_id.to_str().unwrap_or("");
    // Every line logged while the request is served carries its id and method.
    let tag = crate::telemetry::RequestTag::new(id, req.method());
    let method = req.method().clone();
    let mut seen = Seen::default();
    let served = crate::telemetry::in_request(tag.clone(), pipeline(&gw, req, &mut seen));
    let mut resp = match served.await {
        Ok(r) => r,
        Err(e) => {
            let _in = tag.enter();
            if e.is_caller_error() {
                tracing::debug!(error = %e, "request refused");
            } else {
                tracing::warn!(error = %e, "request failed");
            }
            e.into_response()
        }
    };
    // Only the cache step sets X-Cache; a read refused before it is labelled BYPASS below.
    let reached_cache = resp.headers().contains_key(cache::X_CACHE);
    cache::label_bypass(&method, &mut resp);
    let cache_result = CacheResult::from_header(resp.headers().get(cache::X_CACHE));
    gw.0.metrics
        .record_request(&seen, &method, resp.status(), cache_result, reached_cache);
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    if gw.0.config.server.access_log {
        let _in = tag.enter();
        let app = seen
            .app
            .map(|a| gw.0.config.apps[a].name.as_str())
            .unwrap_or("");
        tracing::info!(
            status = resp.status().as_u16(),
            duration_us = started.elapsed().as_micros() as u64,
            client = seen.client.as_deref().unwrap_or(""),
            app,
            class = seen.class.unwrap_or(""),
            bucket = seen.bucket.as_deref().unwrap_or(""),
            cache = cache_result.label(),
            upstream_status = seen.upstream_status.unwrap_or(0),
            "done"
        );
    }
    resp
}

async fn pipeline<B: InBody>(
    gw: &Gateway,
    req: http::Request<B>,
    seen: &mut Seen,
) -> Result<Response, GatewayError> {
    let g = &gw.0;
    let (mut parts, body) = req.into_parts();

    // check: nothing else reads a target or headers that could be ambiguous.
    let target = check(g, &parts)?;

    // authenticate: the key may sit in a form body, which is read (bounded) here.
    let mut body = read_body(g, &parts, body).await?;
    let key = auth::key_from_header(&parts.headers)
        .or_else(|| target.param("access_token"))
        .or_else(|| body.form_param("access_token"));
    let caller = g.directory.authenticate(key)?;
    seen.app = Some(caller.app);
    seen.client = Some(caller.name.clone());

    // classify: which of Meta's budgets this call spends.
    let class = g
        .limiter
        .with_known(|k| classify::classify(&parts.method, &target, k));
    seen.class = Some(class.label());

    // authorize: the client's method and WABA allowlists, for the call and each sub-call of a batch.
    reject_duplicates(&target.query)?;
    if let ReqBody::Form(params) = &body {
        reject_duplicates(params)?;
    }
    let mut ids = ids_of(&target);
    if let Some(form_ids) = body.form_param("ids") {
        ids.extend(form_ids.split(',').map(str::trim).filter(|s| !s.is_empty()));
    }
    g.directory
        .authorize(&caller, &parts.method, target.root(), target.edge(), &ids)?;
    // Graph's `method=` parameter and the override header turn one method into another.
    if g.directory.limits_methods(&caller)
        && (target.param("method").is_some() || body.form_param("method").is_some())
    {
        return Err(GatewayError::BadRequest(
            "the `method` parameter is not allowed for this client".into(),
        ));
    }
    if target.param("batch").is_some() {
        return Err(GatewayError::BadRequest(
            "send `batch` in the form body, not in the query".into(),
        ));
    }
    // The batch endpoint only takes url-encoded forms here: a multipart or JSON batch could not be
    // checked sub-request by sub-request.
    if target.segments.is_empty()
        && !matches!(body, ReqBody::Form(_))
        && !has_no_body(&parts.headers)
    {
        return Err(GatewayError::BadRequest(
            "send requests to the root (batch) endpoint as application/x-www-form-urlencoded"
                .into(),
        ));
    }
    let mut sub_calls = Vec::new();
    // A batch's token object, when the call is a batch; otherwise the call's own root.
    let mut batch_root = None;
    if let ReqBody::Form(params) = &mut body {
        let (calls, root) = sanitize_batch(g, &caller, params)?;
        if !calls.is_empty() {
            sub_calls = calls;
            batch_root = Some(root);
        }
    }
    let token_root = match &batch_root {
        Some(root) => root.as_deref(),
        None => target.root(),
    };

    // cache: behind authorize, so a hit reaches only an allowed caller. A fresh entry answers a
    // GET/HEAD here; a miss runs `forward` once for all identical concurrent callers; a 2xx
    // POST/DELETE drops the entries under its object. See `docs/cache.md`.
    let plan = g.cache.plan(&cache::Lookup {
        app: caller.app,
        method: &parts.method,
        headers: &parts.headers,
        target: &target,
        token_owner: g.directory.token_owner(caller.app, target.root()),
        token: g.directory.token_for(caller.app, target.root()),
        link_host: link_host(g, &parts),
        allow_no_cache: caller.allow_no_cache,
    });
    if plan.is_read() {
        // HEAD is fetched as GET, so the entry has the body that later GETs need.
        parts.method = Method::GET;
    }
    if g.config.server.access_log {
        seen.bucket = Some(Scope::from_class(&class).label());
    }
    let upstream_status = std::sync::atomic::AtomicU16::new(0);
    let resp = g
        .cache
        .serve(plan, || {
            // Boxed: the forward future is many kilobytes, and every future that held it inline
            // would be copied whole on each move, hits included.
            Box::pin(forward(
                g,
                &parts,
                &target,
                body,
                &caller,
                Spend {
                    class: &class,
                    sub_calls: &sub_calls,
                    token_root,
                    upstream_status: &upstream_status,
                },
            ))
        })
        .await;
    let status = upstream_status.load(std::sync::atomic::Ordering::Relaxed);
    seen.upstream_status = (status != 0).then_some(status);
    let resp = resp?;
    // The cache dropped this object's entries here; other replicas drop theirs too.
    let is_write = matches!(parts.method, Method::POST | Method::DELETE);
    if let (true, true, Some(root)) = (is_write, resp.status().is_success(), target.root()) {
        if g.limiter.redis().is_some() {
            g.limiter.share_purge(caller.app, &format!("/{root}"));
        }
    }
    Ok(resp)
}

/// What a call spends and with which token: worked out once, used by the limit and upstream steps.
struct Spend<'a> {
    class: &'a Class,
    /// A batch's sub-calls (each spends its own bucket); empty for a plain call.
    sub_calls: &'a [(Method, Target)],
    /// The object whose token the call is made with (a batch's, or the call's root).
    token_root: Option<&'a str>,
    /// Set to Meta's status when this caller's own call reaches Meta (for the access log).
    upstream_status: &'a std::sync::atomic::AtomicU16,
}

/// limit -> upstream -> rewrite -> respond: what a cache miss, a write or an uncached read runs.
async fn forward(
    g: &Inner,
    parts: &Parts,
    target: &Target,
    body: ReqBody,
    caller: &Caller,
    spend: Spend<'_>,
) -> Result<Response, GatewayError> {
    let Spend {
        class,
        sub_calls,
        token_root,
        upstream_status,
    } = spend;
    // Worked out here, not before the cache step: a hit spends nothing.
    let wants = budget_wants(g, caller.app, &parts.method, target, class, sub_calls)?;
    // limit: a slot in every bucket the call spends, or a 429 (or a wait, in wait mode).
    let refused = |r: limits::Refusal| {
        g.metrics.record_rejection(caller.app, &r);
        GatewayError::RateLimited(Box::new(r))
    };
    g.limiter
        .check_client_quota(caller.client, caller.app)
        .map_err(&refused)?;
    let max_wait = requested_max_wait(&parts.headers, g.limiter.max_wait());
    let mut permit = g
        .limiter
        .admit(&wants, caller.reserve, max_wait)
        .await
        .map_err(&refused)?;

    // upstream: our token in, the caller's credentials out.
    let token = g.directory.token_for(caller.app, token_root);
    let upstream_req = build_upstream_request(g, parts, target, body, caller, token)?;
    permit.sent();
    let sent_at = Instant::now();
    let result = g.upstream.send(upstream_req).await;
    g.metrics.record_upstream(
        caller.app,
        class.label(),
        result.as_ref().map(|r| r.status()).map_err(|e| &e.error),
        sent_at.elapsed(),
    );
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            if !e.reached {
                permit.release();
            }
            return Err(e.error);
        }
    };
    // The response head is back: Meta has counted the call by now, so this is its place in the window.
    let budgets = std::mem::take(&mut permit.budgets);
    permit.finish();
    upstream_status.store(resp.status().as_u16(), std::sync::atomic::Ordering::Relaxed);

    // rewrite + respond (and learn from what Meta said).
    let primary = wants.first().map(|(k, _)| k.clone());
    let mut resp = respond(g, parts, resp, caller.app, class, primary.as_ref()).await?;
    if let Some(b) = budgets.first() {
        crate::error::insert_ratelimit_headers(resp.headers_mut(), b);
    }
    Ok(resp)
}

/// The buckets one call spends: one slot for the call, or one per id of `?ids=`, or one per
/// sub-request (and per id of each) of a batch: Meta counts each.
fn budget_wants(
    g: &Inner,
    app: usize,
    method: &Method,
    target: &Target,
    class: &Class,
    sub_calls: &[(Method, Target)],
) -> Result<Vec<(BucketKey, u32)>, GatewayError> {
    let mut wants: Vec<(BucketKey, u32)> = Vec::new();
    let mut add = |class: Class| {
        let key = BucketKey {
            app,
            scope: Scope::from_class(&class),
        };
        match wants.iter_mut().find(|(k, _)| *k == key) {
            Some(w) => w.1 += 1,
            None => wants.push((key, 1)),
        }
    };
    if sub_calls.is_empty() {
        if ids_of(target).is_empty() {
            add(class.clone());
        } else {
            call_classes(g, method, target)?
                .into_iter()
                .for_each(&mut add);
        }
    } else {
        for (m, t) in sub_calls {
            call_classes(g, m, t)?.into_iter().for_each(&mut add);
        }
    }
    Ok(wants)
}

/// One class per object a call touches: each id of `?ids=` (with the call's edge), else the call.
fn call_classes(g: &Inner, method: &Method, target: &Target) -> Result<Vec<Class>, GatewayError> {
    let ids = ids_of(target);
    if ids.is_empty() {
        return Ok(vec![g
            .limiter
            .with_known(|k| classify::classify(method, target, k))]);
    }
    let edge: String = target
        .segments
        .iter()
        .skip(usize::from(target.root().is_some()))
        .map(|s| format!("/{s}"))
        .collect();
    ids.iter()
        .map(|id| {
            let t = Target::parse(&format!("/{id}{edge}"), None).map_err(|_| {
                GatewayError::BadRequest(format!("`ids` holds an id that is not one: {id:.40}"))
            })?;
            Ok(g.limiter.with_known(|k| classify::classify(method, &t, k)))
        })
        .collect()
}

/// `X-Graphgate-Max-Wait: 5s` lets a caller wait less than `limits.max_wait`, never more.
fn requested_max_wait(headers: &HeaderMap, configured: Duration) -> Duration {
    headers
        .get("x-graphgate-max-wait")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::config::parse_duration(v).ok())
        .map(|d| d.min(configured))
        .unwrap_or(configured)
}

// ---------------------------------------------------------------- check

fn check(g: &Inner, parts: &Parts) -> Result<Target, GatewayError> {
    let s = &g.config.server;
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

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, GatewayError> {
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

// ---------------------------------------------------------------- bodies

/// A request body as the pipeline holds it.
enum ReqBody {
    /// Streamed to Meta as it arrives (bounded by `server.max_body`).
    Stream(Body),
    /// A form body, read whole so credentials can be taken out of it.
    Form(Vec<Param>),
    /// A small JSON body, read whole so a stray `access_token` can be taken out of it.
    Json(Bytes),
}

impl ReqBody {
    fn form_param(&self, key: &str) -> Option<&str> {
        match self {
            ReqBody::Form(params) => params
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.value.as_str()),
            _ => None,
        }
    }
}

/// No body at all: no length and no chunked transfer, or a zero length.
fn has_no_body(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_LENGTH) {
        Some(v) => v.as_bytes() == b"0",
        None => !headers.contains_key(header::TRANSFER_ENCODING),
    }
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

async fn read_body<B: InBody>(g: &Inner, parts: &Parts, body: B) -> Result<ReqBody, GatewayError> {
    // Most calls are reads without a body (the transport knows: no length, or HTTP/2's end of
    // stream with the headers); they need no size limit wrapped around nothing.
    if http_body::Body::is_end_stream(&body) {
        return Ok(ReqBody::Stream(Body::empty()));
    }
    let s = &g.config.server;
    let ct = content_type(&parts.headers)
        .unwrap_or("")
        .to_ascii_lowercase();
    if ct.starts_with("application/x-www-form-urlencoded") {
        let bytes = collect_limited(body, s.max_form_body).await?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| GatewayError::BadRequest("the form body is not UTF-8".into()))?;
        let params = target::parse_params(text)
            .map_err(|m| GatewayError::BadRequest(format!("form body: {m}")))?;
        return Ok(ReqBody::Form(params));
    }
    let small = content_length(&parts.headers)?.is_some_and(|n| n <= s.max_form_body);
    if ct.starts_with("application/json") && small {
        return Ok(ReqBody::Json(collect_limited(body, s.max_form_body).await?));
    }
    let limit = s.max_body;
    let limited = Limited::new(body, limit as usize).map_err(move |e| {
        if e.is::<http_body_util::LengthLimitError>() {
            Box::new(GatewayError::BodyTooLarge { limit })
                as Box<dyn std::error::Error + Send + Sync>
        } else {
            Box::new(GatewayError::RequestBodyFailed) as Box<dyn std::error::Error + Send + Sync>
        }
    });
    Ok(ReqBody::Stream(Body::new(limited)))
}

async fn collect_limited<B: InBody>(body: B, limit: u64) -> Result<Bytes, GatewayError> {
    match Limited::new(body, limit as usize).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge { limit })
        }
        Err(_) => Err(GatewayError::RequestBodyFailed),
    }
}

/// Removes top-level credential keys from a JSON object body; other bodies pass unchanged.
fn strip_json_credentials(bytes: Bytes) -> Bytes {
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

/// A batch's sub-calls, and the object whose token the batch is sent with.
type BatchCalls = (Vec<(Method, Target)>, Option<String>);

/// Checks and cleans each sub-request of a Graph batch (`batch=[{method, relative_url, body}]`):
/// the caller's allowlists apply to every one and credentials are removed. Returns the sub-calls
/// and the object whose token the whole batch is sent with: a token never goes into a URL (Meta
/// echoes query tokens into paging links inside the sub-responses), so every sub-request must be
/// answerable with one token.
fn sanitize_batch(
    g: &Inner,
    caller: &Caller,
    params: &mut [Param],
) -> Result<BatchCalls, GatewayError> {
    let bad = |m: &str| GatewayError::BadRequest(format!("batch: {m}"));
    if params.iter().filter(|p| p.key == "batch").count() > 1 {
        return Err(bad("send one `batch` parameter"));
    }
    let Some(p) = params.iter_mut().find(|p| p.key == "batch") else {
        return Ok((Vec::new(), None));
    };
    let mut calls = Vec::new();
    let mut items: Vec<serde_json::Value> =
        serde_json::from_str(&p.value).map_err(|_| bad("must be a JSON array"))?;
    if items.len() > MAX_BATCH {
        return Err(bad(&format!("at most {MAX_BATCH} requests per batch")));
    }
    let mut token_root: Option<Option<String>> = None;
    for item in items.iter_mut() {
        let obj = item
            .as_object_mut()
            .ok_or_else(|| bad("every element must be an object"))?;
        let method: Method = obj
            .get("method")
            .and_then(|m| m.as_str())
            .unwrap_or("GET")
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| bad("bad method"))?;
        let rel = obj
            .get("relative_url")
            .and_then(|u| u.as_str())
            .ok_or_else(|| bad("relative_url is required"))?;
        // JSONPath references name objects only Meta can resolve: no allowlist can vouch for them.
        let body_text = obj.get("body").and_then(|b| b.as_str()).unwrap_or("");
        if g.directory.is_restricted(caller)
            && (rel.contains("{result=") || body_text.contains("{result="))
        {
            return Err(bad(
                "references between sub-requests ({result=...}) are not allowed for this client",
            ));
        }
        let (path, query) = match rel.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rel, None),
        };
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let t = Target::parse(&path, query)?;
        reject_duplicates(&t.query)?;
        let ids = ids_of(&t);
        g.directory
            .authorize(caller, &method, t.root(), t.edge(), &ids)?;
        let owner = g
            .directory
            .token_owner(caller.app, t.root())
            .map(str::to_string);
        match &token_root {
            None => token_root = Some(owner.clone().or_else(|| t.root().map(str::to_string))),
            Some(first) => {
                let first_owner = first
                    .as_deref()
                    .and_then(|r| g.directory.token_owner(caller.app, Some(r)));
                if first_owner.map(str::to_string) != owner {
                    return Err(bad(
                        "sub-requests on WABAs with different tokens cannot share one batch",
                    ));
                }
            }
        }
        let q = t.forward_query();
        let new_url = if q.is_empty() {
            path.clone()
        } else {
            format!("{path}?{q}")
        };
        obj.insert("relative_url".into(), serde_json::Value::String(new_url));
        if let Some(serde_json::Value::String(b)) = obj.get("body") {
            let cleaned = target::parse_params(b).map_err(|m| bad(&format!("body: {m}")))?;
            let kept = join_raw(cleaned.iter().filter(|p| !is_auth_param(&p.key)));
            obj.insert("body".into(), serde_json::Value::String(kept));
        }
        calls.push((method, t));
    }
    let json = serde_json::to_string(&items).map_err(|_| bad("cannot re-encode"))?;
    p.value = json;
    p.raw = format!("batch={}", encode(&p.value));
    Ok((calls, token_root.flatten()))
}

/// Parameters whose second copy a server may read instead of the first: refused, so what
/// graphgate checks is what Meta acts on.
fn reject_duplicates(params: &[Param]) -> Result<(), GatewayError> {
    for key in ["ids", "batch", "method", "fields", "access_token"] {
        if params.iter().filter(|p| p.key == key).count() > 1 {
            return Err(GatewayError::BadRequest(format!(
                "the parameter `{key}` is given more than once"
            )));
        }
    }
    Ok(())
}

/// The ids of a multi-id call (`?ids=a,b,c`).
fn ids_of(t: &Target) -> Vec<&str> {
    t.param("ids")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn append_pair(q: &mut String, pair: &str) {
    if !q.is_empty() {
        q.push('&');
    }
    q.push_str(pair);
}

fn append_proof(g: &Inner, caller: &Caller, token: &auth::Token, q: &mut String) {
    let app = &g.config.apps[caller.app];
    if let Some(secret) = &app.app_secret {
        append_pair(
            q,
            &upstream::proof_params(secret, token.secret(), app.proof),
        );
    }
}

// ---------------------------------------------------------------- upstream

fn build_upstream_request(
    g: &Inner,
    parts: &Parts,
    target: &Target,
    body: ReqBody,
    caller: &Caller,
    token: &auth::Token,
) -> Result<http::Request<Body>, GatewayError> {
    let mut query = target.forward_query();
    append_proof(g, caller, token, &mut query);
    let uri = g.upstream.uri_for(&target.path, &query)?;
    let mut headers = parts.headers.clone();
    upstream::outbound_headers(&mut headers, token.bearer());
    let body = match body {
        ReqBody::Stream(b) => b,
        ReqBody::Form(params) => {
            let text = join_raw(params.iter().filter(|p| !is_auth_param(&p.key)));
            set_length(&mut headers, text.len());
            Body::from(text)
        }
        ReqBody::Json(bytes) => {
            let bytes = strip_json_credentials(bytes);
            set_length(&mut headers, bytes.len());
            Body::from(bytes)
        }
    };
    let mut req = http::Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(body)
        .map_err(|_| GatewayError::BadRequest("the request cannot be forwarded".into()))?;
    *req.headers_mut() = headers;
    Ok(req)
}

fn set_length(headers: &mut HeaderMap, len: usize) {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

// ---------------------------------------------------------------- rewrite + respond

async fn respond(
    g: &Inner,
    parts: &Parts,
    resp: http::Response<upstream::UpstreamBody>,
    app: usize,
    class: &Class,
    bucket: Option<&BucketKey>,
) -> Result<Response, GatewayError> {
    let (mut rparts, body) = resp.into_parts();
    upstream::strip_hop_by_hop(&mut rparts.headers);
    let header_str = |name: &str| rparts.headers.get(name).and_then(|v| v.to_str().ok());
    g.limiter.observe_usage(
        app,
        header_str("x-business-use-case-usage"),
        header_str("x-app-usage"),
    );
    let limit = g.config.server.max_rewrite_body;
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
    // Read the JSON (bounded); if it turns out larger than the limit, send what was read followed
    // by the rest, unchanged. A body that arrives as one frame is kept as that `Bytes`, uncopied.
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    // The head came within request_timeout; the body gets as long again, so a stall mid-body
    // cannot hold this caller (and those coalesced behind it) forever.
    let deadline = tokio::time::Instant::now() + g.config.upstream.request_timeout;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(f) => f,
            Err(_) => {
                return Err(GatewayError::UpstreamTimeout(
                    g.config.upstream.request_timeout,
                ))
            }
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => return Err(GatewayError::UpstreamUnreachable),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        let read = match &first {
            None => {
                first = Some(data);
                first.as_ref().map_or(0, Bytes::len)
            }
            Some(f) => {
                if more.is_empty() {
                    more.extend_from_slice(f);
                }
                more.extend_from_slice(&data);
                more.len()
            }
        };
        if read as u64 > limit {
            let head = if more.is_empty() {
                first.take().unwrap_or_default()
            } else {
                more.freeze()
            };
            let head = futures_util::stream::once(async move { Ok::<_, hyper::Error>(head) });
            let rest = body.into_data_stream();
            let stream = futures_util::StreamExt::chain(head, rest);
            return Ok(Response::from_parts(rparts, Body::from_stream(stream)));
        }
    }
    let bytes = if more.is_empty() {
        first.unwrap_or_default()
    } else {
        more.freeze()
    };
    learn(g, parts, rparts.status, &bytes, app, class, bucket);
    let bytes = g
        .rewriter
        .paging(&bytes, || public_base(g, parts))
        .unwrap_or(bytes);
    let bytes = g.redactor.redact(bytes);
    set_length(&mut rparts.headers, bytes.len());
    Ok(Response::from_parts(rparts, Body::from(bytes)))
}

/// What Meta's answer teaches the limiter: throttling errors block the bucket, phone-number
/// listings say whether a WABA is active, credit-line answers name allocation configs. Only the
/// responses that can hold such facts are parsed.
fn learn(
    g: &Inner,
    parts: &Parts,
    status: http::StatusCode,
    body: &[u8],
    app: usize,
    class: &Class,
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
        || matches!(class, Class::CreditLine)
        || (matches!(class, Class::Waba(_)) && parts.method == Method::GET && lists_numbers);
    if !interesting {
        return;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    if !status.is_success() {
        if let (Some(code), Some(key)) = (v["error"]["code"].as_u64(), bucket) {
            if limits::is_throttling_code(code) {
                tracing::warn!(code, bucket = %key.scope.label(), "Meta throttled a call; blocking the bucket");
                g.limiter.observe_throttle(key, code, None);
                g.metrics.record_throttle(app, code);
            }
        }
        return;
    }
    match class {
        Class::CreditLine => {
            for id in limits::allocation_ids_in(&v) {
                g.limiter.learn_allocation_config(&id);
            }
        }
        Class::Waba(waba) => {
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
                g.limiter.learn_active(app, waba, true);
            }
        }
        Class::Other => {}
    }
}

/// The Host that paging links in an answer will name: "" when `server.public_url` fixes them. Part
/// of the cache key, so a caller using another Host never gets links to the first one's.
fn link_host<'a>(g: &Inner, parts: &'a Parts) -> &'a str {
    if g.public_base.is_some() {
        return "";
    }
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// Where the caller reached graphgate: `server.public_url`, else the scheme and Host it used.
fn public_base(g: &Inner, parts: &Parts) -> String {
    if let Some(b) = &g.public_base {
        return b.clone();
    }
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    format!("{}://{}", g.public_scheme, host)
}

/// The caller's `x-request-id` when it is a plain token, else a new random one (32 hex digits).
fn request_id(headers: &HeaderMap) -> HeaderValue {
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
