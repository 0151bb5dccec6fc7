//! Probes of WABA activity: for each `active = "auto"` WABA, a `GET /{waba}/phone_numbers` at
//! start-up and every `limits.active_refresh`, so its bucket gets 5000 calls as soon as it has a
//! registered number (and falls back to 200 when it no longer has one).
//!
//! A probe is a real call: it takes a slot in the WABA's bucket like any other, and it is skipped
//! (not forced) when the bucket has no room. It never runs on the request path.

use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;

use crate::limits::{self, BucketKey, Scope};
use crate::proxy::Gateway;
use crate::upstream;

/// Probes every auto WABA once.
pub async fn probe_all(gw: &Gateway) {
    let g = gw.inner();
    for (app, waba) in g.limiter.auto_wabas() {
        match probe_one(gw, app, &waba).await {
            Ok(Some(active)) => g.limiter.learn_active(app, &waba, active),
            Ok(None) => tracing::debug!(waba = %waba, "probe: the listing did not say"),
            Err(reason) => tracing::warn!(waba = %waba, reason, "probe of WABA activity skipped"),
        }
    }
}

/// Probes one WABA of `app` now and records what it learned (webhooks call this after a phone
/// number or account event). A no-op for WABAs that are not `active = "auto"`.
pub async fn probe_waba(gw: &Gateway, app: usize, waba: &str) {
    let g = gw.inner();
    if !g
        .limiter
        .auto_wabas()
        .iter()
        .any(|(a, w)| *a == app && w == waba)
    {
        return;
    }
    match probe_one(gw, app, waba).await {
        Ok(Some(active)) => g.limiter.learn_active(app, waba, active),
        Ok(None) => tracing::debug!(waba = %waba, "probe: the listing did not say"),
        Err(reason) => tracing::warn!(waba = %waba, reason, "probe of WABA activity skipped"),
    }
}

async fn probe_one(gw: &Gateway, app: usize, waba: &str) -> Result<Option<bool>, &'static str> {
    let g = gw.inner();
    let key = BucketKey {
        app,
        scope: Scope::Waba(waba.to_string()),
    };
    let mut permit = g
        .limiter
        .admit(&[(key, 1)], false, Duration::ZERO)
        .await
        .map_err(|_| "no budget left")?;
    let token = g.directory.token_for(app, Some(waba));
    let mut query = "fields=platform_type,status".to_string();
    let a = &g.config.apps[app];
    if let Some(secret) = &a.app_secret {
        query.push('&');
        query.push_str(&upstream::proof_params(secret, token.secret(), a.proof));
    }
    let uri = g
        .upstream
        .uri_for(&format!("/{waba}/phone_numbers"), &query)
        .map_err(|_| "bad id")?;
    let mut req = http::Request::get(uri)
        .body(Body::empty())
        .map_err(|_| "bad request")?;
    upstream::outbound_headers(req.headers_mut(), token.bearer());
    permit.sent();
    let resp = match g.upstream.send(req).await {
        Ok(r) => r,
        Err(e) => {
            if !e.reached {
                permit.release();
            }
            return Err("upstream failed");
        }
    };
    permit.finish();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    g.limiter.observe_usage(
        app,
        h("x-business-use-case-usage").as_deref(),
        h("x-app-usage").as_deref(),
    );
    if !resp.status().is_success() {
        return Err("Meta refused the probe");
    }
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .map_err(|_| "slow body")?
        .map_err(|_| "body failed")?
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| "not JSON")?;
    Ok(limits::registered_in(&v))
}

/// Probes now and then every `limits.active_refresh`, until the task is dropped.
pub async fn run(gw: Gateway) {
    let every = gw.config().limits.active_refresh;
    loop {
        probe_all(&gw).await;
        tokio::time::sleep(every).await;
    }
}
