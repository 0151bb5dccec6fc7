//! limit -> upstream: what a cache miss, a write or an uncached read runs. Works out the buckets a
//! call spends, checks the client's own rate, and makes the call through the one metered sequence
//! ([`crate::metered`]) with our token in and the caller's credentials out; the answer goes on to
//! [`super::respond`].
//!
//! It must never send a request that the limiter did not admit, and never forward a caller's key.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::request::Parts;
use http::{HeaderMap, Method};

use super::authorize::Authorized;
use super::body::{set_length, strip_json_credentials, ReqBody};
use super::params::ids_of;
use super::respond;
use crate::auth::{self, Caller};
use crate::classify;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::limits::{BucketKey, Scope};
use crate::metered::{self, Failed, Spend};
use crate::target::{is_auth_param, join_raw, Target};
use crate::upstream;

/// Spends the call's budget, calls Meta and hands the answer to the respond step. `upstream_status`
/// is set to Meta's status when this caller's own call reached Meta (for the access log).
pub async fn forward(
    gw: &Gateway,
    parts: &Parts,
    target: &Target,
    body: ReqBody,
    authorized: &Authorized,
    class: &Scope,
    upstream_status: &mut Option<u16>,
) -> Result<Response, GatewayError> {
    let caller = &authorized.caller;
    // Worked out here, not before the cache step: a hit spends nothing.
    let wants = budget_wants(
        gw,
        caller.app,
        &parts.method,
        target,
        class,
        &authorized.sub_calls,
    )?;
    // limit: a slot in every bucket the call spends, or a 429 (or a wait, in wait mode).
    let refused = |r: crate::limits::Refusal| {
        gw.metrics().record_rejection(caller.app, &caller.name, &r);
        GatewayError::RateLimited(Box::new(r))
    };
    gw.limiter()
        .check_client_quota(caller.client, caller.app)
        .map_err(&refused)?;
    let spend = Spend {
        wants: &wants,
        reserve: caller.reserve,
        max_wait: requested_max_wait(&parts.headers, gw.limiter().max_wait()),
    };
    // upstream: our token in, the caller's credentials out.
    let build = || {
        let token = gw
            .directory()
            .token_for(caller.app, authorized.token_root(target));
        build_request(gw, parts, target, body, caller, token)
    };
    let metrics = gw.metrics();
    let answer = match metered::call(gw.limiter(), gw.upstream(), caller.app, spend, build).await {
        Ok(answer) => {
            let status = answer.response.status();
            metrics.record_upstream(caller.app, class.kind(), Ok(status), answer.elapsed);
            answer
        }
        Err(Failed::Refused(r)) => return Err(refused(r)),
        Err(Failed::Upstream { error, elapsed }) => {
            if let Some(elapsed) = elapsed {
                metrics.record_upstream(caller.app, class.kind(), Err(&error), elapsed);
            }
            return Err(error);
        }
    };
    *upstream_status = Some(answer.response.status().as_u16());

    // rewrite + respond (and learn from what Meta said).
    let primary = wants.first().map(|(k, _)| k);
    let mut resp = respond::respond(gw, parts, answer.response, caller.app, class, primary).await?;
    if let Some(b) = answer.budgets.first() {
        crate::error::insert_ratelimit_headers(resp.headers_mut(), b);
    }
    Ok(resp)
}

/// The buckets one call spends: one slot for the call, or one per id of `?ids=`, or one per
/// sub-request (and per id of each) of a batch: Meta counts each.
fn budget_wants(
    gw: &Gateway,
    app: usize,
    method: &Method,
    target: &Target,
    class: &Scope,
    sub_calls: &[(Method, Target)],
) -> Result<Vec<(BucketKey, u32)>, GatewayError> {
    let mut wants: Vec<(BucketKey, u32)> = Vec::new();
    let mut add = |class: Scope| {
        let key = BucketKey { app, scope: class };
        match wants.iter_mut().find(|(k, _)| *k == key) {
            Some(w) => w.1 += 1,
            None => wants.push((key, 1)),
        }
    };
    if sub_calls.is_empty() {
        if ids_of(target).is_empty() {
            add(class.clone());
        } else {
            call_classes(gw, method, target)?
                .into_iter()
                .for_each(&mut add);
        }
    } else {
        for (m, t) in sub_calls {
            call_classes(gw, m, t)?.into_iter().for_each(&mut add);
        }
    }
    Ok(wants)
}

/// One class per object a call touches: each id of `?ids=` (with the call's edge), else the call.
fn call_classes(
    gw: &Gateway,
    method: &Method,
    target: &Target,
) -> Result<Vec<Scope>, GatewayError> {
    let ids = ids_of(target);
    if ids.is_empty() {
        return Ok(vec![gw
            .limiter()
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
            Ok(gw
                .limiter()
                .with_known(|k| classify::classify(method, &t, k)))
        })
        .collect()
}

/// Named once: a lookup by `&str` parses the name on every call.
static MAX_WAIT: http::HeaderName = http::HeaderName::from_static("x-graphgate-max-wait");

/// `X-Graphgate-Max-Wait: 5s` lets a caller wait less than `limits.max_wait`, never more.
fn requested_max_wait(headers: &HeaderMap, configured: Duration) -> Duration {
    headers
        .get(&MAX_WAIT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::config::parse_duration(v).ok())
        .map(|d| d.min(configured))
        .unwrap_or(configured)
}

/// The request to Meta: the cleaned query plus `appsecret_proof`, the caller's headers without
/// hop-by-hop and credential headers, our bearer token, and the cleaned body.
fn build_request(
    gw: &Gateway,
    parts: &Parts,
    target: &Target,
    body: ReqBody,
    caller: &Caller,
    token: &auth::Token,
) -> Result<http::Request<Body>, GatewayError> {
    let mut query = target.forward_query();
    let app = &gw.config().apps[caller.app];
    if let Some(secret) = &app.app_secret {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&upstream::proof_params(secret, token.secret(), app.proof));
    }
    let uri = gw.upstream().uri_for(&target.path, &query)?;
    let mut headers = upstream::outbound_headers(&parts.headers, token.bearer());
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
