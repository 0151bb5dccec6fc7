//! The request path, one named step at a time:
//! check -> authenticate -> classify -> authorize -> cache -> limit -> upstream -> rewrite -> respond.
//!
//! This file owns the order of the steps (`pipeline`) and what happens around them for every
//! request ([`handle`]: request id, metrics, the access log); each step lives in its own file. It
//! must never send a request upstream before the caller is authenticated and authorized, never
//! forward a caller's key, and never buffer a body it does not need to read (uploads and downloads
//! stream).

mod authorize;
mod batch;
mod body;
mod check;
mod context;
mod forward;
mod outcome;
mod params;
mod respond;
mod service;

use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::Method;

use crate::auth;
use crate::cache;
use crate::classify;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::metrics::CacheResult;
use crate::server::overload;
use context::Ctx;

pub use body::InBody;
pub use service::ProxyService;

/// The handler for every proxied request: runs the pipeline, then counts and logs the answer.
pub async fn handle<B: InBody>(gw: Gateway, req: http::Request<B>) -> Response {
    let started = Instant::now();
    let _in_flight = gw.metrics().request_started();
    let request_id = check::request_id(req.headers());
    // Checked to be printable ASCII above, so this never falls back.
    let id = request_id.to_str().unwrap_or("");
    // Every line logged while the request is served carries its id and method.
    let tag = crate::telemetry::RequestTag::new(id, req.method());
    let method = req.method().clone();
    // Logs a 499 if the caller goes away before the answer's head (hyper drops this future).
    let mut watch = outcome::Watch::new(&gw, &tag, started);
    // The end of the shutdown grace answers a call still running with a 503, not an empty reply.
    let served = {
        let served = crate::telemetry::in_request(tag.clone(), pipeline(&gw, req, &mut watch.ctx));
        tokio::pin!(served);
        gw.unless_stopped(served).await
    };
    let mut resp = match served {
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
    if !reached_cache {
        cache::label_bypass(&method, &mut resp);
    }
    let cache_result = CacheResult::of(&resp);
    watch.answered();
    let ctx = &mut watch.ctx;
    gw.metrics().record_request(
        ctx.app,
        ctx.client.as_ref(),
        ctx.class,
        &method,
        resp.status(),
        cache_result,
        reached_cache,
        started.elapsed(),
    );
    resp.headers_mut().insert(check::X_REQUEST_ID, request_id);
    // A streamed answer (the respond step gave it a body deadline) is logged when its body ends,
    // so a cut (Meta's body failing, the caller going away) is in its one line.
    let streamed = resp.extensions().get::<cache::BodyDeadline>().is_some();
    if streamed || gw.config().server.access_log {
        let (status, cache) = (resp.status().as_u16(), cache_result.label());
        let line = outcome::Line::answered(&gw, &tag, started, ctx, status, cache);
        if streamed {
            return resp.map(|body| Body::new(outcome::Logged::new(body, line)));
        }
        line.write(None);
    }
    resp
}

/// The steps, in order. Each returns what the next needs, or the error the caller gets.
async fn pipeline<B: InBody>(
    gw: &Gateway,
    req: http::Request<B>,
    ctx: &mut Ctx,
) -> Result<Response, GatewayError> {
    let (mut parts, body) = req.into_parts();

    // check: nothing else reads a target or headers that could be ambiguous.
    let target = check::check(&gw.config().server, &parts)?;

    // authenticate: a key in the header or query is checked before any body is read. Only a form
    // body, the one place left for a key, is read first, within the pre-authentication budget.
    let server = &gw.config().server;
    let early = auth::key_from_header(&parts.headers).or_else(|| target.param("access_token"));
    let (caller, mut body) = if early.is_none() && body::is_form(&parts.headers) {
        let body = body::read(server, &parts, body, body::Reader::Unknown).await?;
        let caller = gw
            .directory()
            .authenticate(body.form_param("access_token"))?;
        (caller, body)
    } else {
        let caller = gw.directory().authenticate(early)?;
        (
            caller,
            body::read(server, &parts, body, body::Reader::Known).await?,
        )
    };
    ctx.app = Some(caller.app);
    ctx.client = Some(caller.name.clone());
    // Only now does the request count against `server.max_in_flight` (see `server::overload`).
    let slot = parts.extensions.get::<overload::InFlightSlot>();
    if slot.is_some_and(|s| !s.join()) {
        return Err(overload::shed("too many requests in flight"));
    }

    // classify: which of Meta's budgets this call spends.
    let class = gw
        .limiter()
        .with_known(|k| classify::classify(&parts.method, &target, k));
    ctx.class = Some(class.kind());

    // authorize: the client's method and WABA allowlists, for the call and each sub-call of a batch.
    let authorized = authorize::authorize(gw, caller, &parts, &target, &mut body)?;
    let app = authorized.caller.app;

    // cache: behind authorize, so a hit reaches only an allowed caller. A fresh entry answers a
    // GET/HEAD here; a miss runs `forward` once for all identical concurrent callers; a 2xx
    // POST/DELETE drops the entries under its object. See `docs/cache.md`.
    let plan = gw.cache().plan(&cache::Lookup {
        app,
        method: &parts.method,
        headers: &parts.headers,
        target: &target,
        token_owner: gw.directory().token_owner(app, target.root()),
        token: gw.directory().token_for(app, target.root()),
        link_host: respond::link_host(gw, &parts),
        allow_no_cache: authorized.caller.allow_no_cache,
    });
    if plan.is_read() {
        // HEAD is fetched as GET, so the entry has the body that later GETs need.
        parts.method = Method::GET;
    }
    if gw.config().server.access_log {
        ctx.bucket = Some(class.label());
    }

    // limit -> upstream -> rewrite -> respond, when the cache cannot answer.
    let upstream_status = &mut ctx.upstream_status;
    let resp = gw
        .cache()
        .serve(plan, || {
            // Boxed: the forward future is many kilobytes, and every future that held it inline
            // would be copied whole on each move, hits included.
            Box::pin(forward::forward(
                gw,
                &parts,
                &target,
                body,
                &authorized,
                &class,
                upstream_status,
            ))
        })
        .await?;

    // The cache dropped this object's entries here; other replicas drop theirs too.
    let is_write = matches!(parts.method, Method::POST | Method::DELETE);
    if let (true, true, Some(root)) = (is_write, resp.status().is_success(), target.root()) {
        gw.invalidator().tell_others(app, &format!("/{root}"));
    }
    Ok(resp)
}
