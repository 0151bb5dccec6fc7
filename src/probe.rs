//! Probes of WABA activity: for each `active = "auto"` WABA, a `GET /{waba}/phone_numbers` at
//! start-up and every `limits.active_refresh`, so its bucket gets 5000 calls as soon as it has a
//! registered number (and falls back to 200 when it no longer has one).
//!
//! A probe is a real call and goes through the same metered sequence as a proxied one
//! ([`crate::metered`]): it takes a slot in the WABA's bucket, it is skipped (not forced) when the
//! bucket has no room, and Meta's throttling answer to it blocks the bucket. It never runs on the
//! request path and holds only the handles it needs, never the gateway.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use axum::body::Body;

use crate::auth::Directory;
use crate::config::Config;
use crate::limits::{self, BucketKey, Limiter, Scope};
use crate::metered::{self, Failed, Spend};
use crate::metrics::Metrics;
use crate::upstream::{self, Upstream};

/// How long a probe's answer body may take after its head.
const BODY_DEADLINE: Duration = Duration::from_secs(30);
/// How long an error's body may take: it is read only to learn whether Meta throttled, and the
/// probes of the other WABAs wait behind it.
const ERROR_BODY_DEADLINE: Duration = Duration::from_secs(5);
/// Largest listing a probe reads (a WABA has at most a few dozen numbers).
const MAX_BODY: u64 = 1 << 20;

/// What probing needs: cheap to clone (handles only).
#[derive(Clone)]
pub struct Prober {
    /// The newest config and directory (a reload swaps them; a rotated token is used at once).
    config: Arc<ArcSwap<Config>>,
    directory: Arc<ArcSwap<Directory>>,
    upstream: Arc<Upstream>,
    limiter: Arc<Limiter>,
    metrics: Arc<Metrics>,
}

impl Prober {
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        directory: Arc<ArcSwap<Directory>>,
        upstream: Arc<Upstream>,
        limiter: Arc<Limiter>,
        metrics: Arc<Metrics>,
    ) -> Prober {
        Prober {
            config,
            directory,
            upstream,
            limiter,
            metrics,
        }
    }

    /// Probes every auto WABA once.
    pub async fn probe_all(&self) {
        for (app, waba) in self.limiter.auto_wabas() {
            self.probe_and_learn(app, &waba).await;
        }
    }

    /// Probes one WABA of `app` now and records what it learned (webhooks call this after a phone
    /// number or account event). A no-op for WABAs that are not `active = "auto"`.
    pub async fn probe_waba(&self, app: usize, waba: &str) {
        if !self
            .limiter
            .auto_wabas()
            .iter()
            .any(|(a, w)| *a == app && w == waba)
        {
            return;
        }
        self.probe_and_learn(app, waba).await;
    }

    /// Probes now and then every `limits.active_refresh`, until the task is dropped.
    pub async fn run(self) {
        let every = self.config.load().limits.active_refresh;
        loop {
            self.probe_all().await;
            tokio::time::sleep(every).await;
        }
    }

    async fn probe_and_learn(&self, app: usize, waba: &str) {
        match self.probe_one(app, waba).await {
            Ok(Some(active)) => self.limiter.learn_active(app, waba, active),
            Ok(None) => tracing::debug!(waba = %waba, "probe: the listing did not say"),
            Err(reason) => tracing::warn!(waba = %waba, reason, "probe of WABA activity skipped"),
        }
    }

    async fn probe_one(&self, app: usize, waba: &str) -> Result<Option<bool>, &'static str> {
        let key = BucketKey {
            app,
            scope: Scope::Waba(waba.to_string()),
        };
        let wants = [(key, 1)];
        let spend = Spend {
            wants: &wants,
            reserve: false,
            max_wait: Duration::ZERO,
        };
        let build = || {
            let (directory, config) = (self.directory.load(), self.config.load());
            let token = directory.token_for(app, Some(waba));
            let mut query = "fields=platform_type,status".to_string();
            let a = &config.apps[app];
            if let Some(secret) = &a.app_secret {
                query.push('&');
                query.push_str(&upstream::proof_params(secret, token.secret(), a.proof));
            }
            let uri = self
                .upstream
                .uri_for(&format!("/{waba}/phone_numbers"), &query)?;
            let mut req = http::Request::get(uri).body(Body::empty()).map_err(|_| {
                crate::error::GatewayError::BadRequest("the probe cannot be built".into())
            })?;
            *req.headers_mut() = upstream::outbound_headers(req.headers(), token.bearer());
            Ok(req)
        };
        let answer = match metered::call(&self.limiter, &self.upstream, app, spend, build).await {
            Ok(a) => a,
            Err(Failed::Refused(_)) => return Err("no budget left"),
            Err(Failed::Upstream { elapsed: None, .. }) => return Err("bad id"),
            Err(Failed::Upstream { .. }) => return Err("upstream failed"),
        };
        let status = answer.response.status();
        let wait = if status.is_success() {
            BODY_DEADLINE
        } else {
            ERROR_BODY_DEADLINE
        };
        let deadline = tokio::time::Instant::now() + wait;
        let body =
            crate::body::read_whole(answer.response.into_body(), MAX_BODY, Some(deadline)).await;
        let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).ok();
        if !status.is_success() {
            // learn: a throttling answer closes the bucket, as it does for a proxied call.
            if let Some(v) = body.ok().flatten().as_deref().and_then(json) {
                metered::learn_from_error(&self.limiter, &self.metrics, app, Some(&wants[0].0), &v);
            }
            return Err("Meta refused the probe");
        }
        let body = body
            .map_err(|e| match e {
                crate::body::ReadError::TimedOut => "slow body",
                crate::body::ReadError::Failed => "body failed",
            })?
            .ok_or("listing too large")?;
        let v = json(&body).ok_or("not JSON")?;
        Ok(limits::registered_in(&v))
    }
}
