//! Prometheus metrics for one gateway, in a registry of its own (prometheus-client), plus the two
//! facts the admin listener reads besides them: how the last upstream call went (for `/readyz`) and
//! the rate-limit refusals the status page lists (`refusals.rs`).
//!
//! Counters are bumped by the pipeline as requests pass; gauges (buckets, Meta's usage, the cache)
//! are refreshed from snapshots at scrape time (`scrape.rs`). This module must never take a label
//! value from a request: every label is a name from config (app, client, configured WABA id) or a
//! member of a fixed set (`labels.rs`), so no caller can create a new series. It must never block
//! on I/O either, and never import the request path, the admin listener or the webhook receiver:
//! they count into it (the receiver's figures are typed here, in `webhooks.rs`).

mod counters;
mod cuts;
mod degraded;
mod labels;
mod preset;
mod process;
mod refusals;
mod reload;
mod scrape;
mod webhooks;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::error::GatewayError;
use crate::limits::{Refusal, RefusalReason, Scope};
use crate::sync::MutexExt;

use counters::Counters;
pub use cuts::Cut;
use cuts::CutMetrics;
pub use labels::{method_label, status_label, CacheResult, DEGRADED_REASONS};
use labels::{
    BucketLabels, CacheLabels, DegradedLabels, DurationLabels, RedisFaultLabels, RequestLabels,
    ThrottleLabels, UpstreamLabels, UsageLabels, VersionLabels, NONE,
};
use process::ProcessMetrics;
use refusals::Refusals;
pub use refusals::{RefusalGroup, Rejection};
use reload::ReloadMetrics;
pub use reload::RELOAD_OUTCOMES;
use webhooks::WebhookMetrics;
pub use webhooks::{SubscriberStats, WebhookStats};

/// graphgate's version, as `graphgate_build_info` and the start-up log line show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision the binary was built from: `GRAPHGATE_GIT_REVISION` at build time (the
/// Dockerfile's `GIT_REVISION` build argument), else `unknown`.
pub const GIT_REVISION: &str = match option_env!("GRAPHGATE_GIT_REVISION") {
    Some(r) => r,
    None => "unknown",
};

/// `Content-Type` of `/metrics`: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upstream latency buckets (seconds): Meta answers in tens to hundreds of milliseconds; the tail
/// up to `upstream.request_timeout` matters most.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets (seconds) of the time callers see: a cache hit answers in well under a millisecond, a
/// miss takes Meta's time, a caller held in wait mode up to `limits.max_wait`. The two smallest
/// tell a hit's own work (tens of microseconds) from a hit that waited for the core
/// (`bench/tail.sh`).
const REQUEST_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The outcome of the latest call to Meta, at the transport level.
#[derive(Debug, Clone)]
pub struct UpstreamOutcome {
    pub at: Instant,
    /// `None` when Meta answered (any status); the failure otherwise.
    pub error: Option<String>,
}

/// Per-app label material from config.
struct AppLabelSet {
    name: String,
    shared_name: Arc<str>,
    wabas: HashSet<String>,
}

/// One gateway's metrics. Shared through the gateway state; every method takes `&self`.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_counters: Counters<RequestLabels>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_counters: Counters<UpstreamLabels>,
    upstream_duration: Histogram,
    request_duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    /// Handles into `request_duration` and `cache_requests` by (class, cache result), so a request
    /// observes without hashing label strings (a family lookup was ~3% of a cache hit).
    handles: counters::Handles,
    in_flight: Gauge,
    /// Calls to Meta and those that failed (5xx, error, timeout), for the status page's error rate;
    /// not exported (the labelled family is).
    upstream_all: Counter,
    upstream_failed: Counter,
    process: ProcessMetrics,
    rejected: Family<BucketLabels, Counter>,
    waiting: Gauge,
    bucket_used: Family<BucketLabels, Gauge>,
    bucket_limit: Family<BucketLabels, Gauge>,
    usage: Family<UsageLabels, Gauge>,
    throttled: Family<ThrottleLabels, Counter>,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    backend_up: Gauge,
    unshared: Gauge,
    degraded: Family<DegradedLabels, Gauge>,
    redis_errors: Family<RedisFaultLabels, Counter>,
    cache_requests: Family<CacheLabels, Counter>,
    apps: Vec<AppLabelSet>,
    none: Arc<str>,
    // The three locks below are held only to copy or replace a small value, never across an await.
    upstream: Mutex<Option<UpstreamOutcome>>,
    refusals: Refusals,
    /// When this gateway was made (unix seconds), for the status page's uptime.
    started_unix: u64,
    /// Serializes scrapes: each refreshes the gauge families (clear, then set) before encoding.
    scrape: Mutex<()>,
    webhooks: Option<WebhookMetrics>,
    reload: ReloadMetrics,
    cuts: CutMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(config: &Config) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        let upstream_duration = Histogram::new(LATENCY_BUCKETS);
        let request_duration =
            Family::<DurationLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(REQUEST_BUCKETS)
            });
        let in_flight = Gauge::default();
        let rejected = Family::<BucketLabels, Counter>::default();
        let waiting = Gauge::default();
        let bucket_used = Family::<BucketLabels, Gauge>::default();
        let bucket_limit = Family::<BucketLabels, Gauge>::default();
        let usage = Family::<UsageLabels, Gauge>::default();
        let throttled = Family::<ThrottleLabels, Counter>::default();
        let cache_entries = Gauge::default();
        let cache_bytes = Gauge::default();
        let backend_up = Gauge::default();
        let unshared = Gauge::default();
        let redis_errors = Family::<RedisFaultLabels, Counter>::default();
        let cache_requests = Family::<CacheLabels, Counter>::default();
        let build_info = Family::<VersionLabels, Gauge>::default();
        let webhooks = config.webhooks.as_ref().map(|w| {
            let names: Vec<String> = w.subscribers.iter().map(|s| s.name.clone()).collect();
            WebhookMetrics::register(&mut registry, &names)
        });
        build_info
            .get_or_create(&VersionLabels {
                version: VERSION,
                revision: GIT_REVISION,
            })
            .set(1);
        let process = ProcessMetrics::register(&mut registry);
        let degraded = Family::<DegradedLabels, Gauge>::default();
        let reload = ReloadMetrics::register(&mut registry);
        let cuts = CutMetrics::register(&mut registry);

        // Counter names go in without `_total`: the encoder appends it.
        let r = &mut registry;
        r.register(
            "graphgate_requests",
            "Requests answered by the proxy",
            requests.clone(),
        );
        r.register(
            "graphgate_upstream_requests",
            "Calls sent to the Graph API, by the status Meta answered (or error/timeout)",
            upstream_requests.clone(),
        );
        r.register(
            "graphgate_upstream_request_duration_seconds",
            "Time from sending a call to Meta until its response head arrived",
            upstream_duration.clone(),
        );
        r.register(
            "graphgate_request_duration_seconds",
            "Time from a request's arrival until its answer's head, as callers see it, by class and cache result",
            request_duration.clone(),
        );
        r.register(
            "graphgate_requests_in_flight",
            "Requests the proxy is serving now",
            in_flight.clone(),
        );
        r.register(
            "graphgate_ratelimit_rejected",
            "Calls refused by graphgate's budgets (bucket client_quota: the client's own rate)",
            rejected.clone(),
        );
        r.register(
            "graphgate_ratelimit_waiting",
            "Calls waiting for a slot in wait mode",
            waiting.clone(),
        );
        r.register(
            "graphgate_bucket_used",
            "Calls counted in the bucket's rolling window, in flight included",
            bucket_used.clone(),
        );
        r.register(
            "graphgate_bucket_limit",
            "Calls the bucket allows per rolling window",
            bucket_limit.clone(),
        );
        r.register(
            "graphgate_upstream_usage_percent",
            "Meta's latest reported usage (X-Business-Use-Case-Usage, X-App-Usage)",
            usage.clone(),
        );
        r.register(
            "graphgate_upstream_throttled",
            "Throttling errors Meta answered, by error code",
            throttled.clone(),
        );
        r.register(
            "graphgate_cache_entries",
            "Responses held by the cache",
            cache_entries.clone(),
        );
        r.register(
            "graphgate_cache_bytes",
            "Weighed bytes held by the cache",
            cache_bytes.clone(),
        );
        r.register(
            "graphgate_cache_requests",
            "Cacheable reads by what the cache did: hit, miss, stale or bypass",
            cache_requests.clone(),
        );
        r.register(
            "graphgate_limits_backend_up",
            "1 when the rate-limit backend answers (always, in memory), 0 while Redis is away",
            backend_up.clone(),
        );
        r.register(
            "graphgate_limits_unshared_calls",
            "Calls this replica made or settled while Redis was away that Redis does not hold yet \
             (written back when it answers again)",
            unshared.clone(),
        );
        r.register(
            "graphgate_degraded",
            "1 while this replica serves without a dependency: upstream (Meta unreachable; cached \
             and stale answers only) or limits_backend (Redis away)",
            degraded.clone(),
        );
        r.register(
            "graphgate_redis_errors",
            "Failures of the Redis link by kind: auth, tls, connect, timeout, readonly (a replica \
             after a failover), other",
            redis_errors.clone(),
        );
        r.register(
            "graphgate_build_info",
            "graphgate's version and the git revision it was built from; always 1",
            build_info,
        );

        let apps = config
            .apps
            .iter()
            .map(|a| AppLabelSet {
                name: a.name.clone(),
                shared_name: Arc::from(a.name.as_str()),
                wabas: a.wabas.iter().map(|w| w.id.clone()).collect(),
            })
            .collect();
        let metrics = Metrics {
            registry,
            requests,
            request_counters: Counters::default(),
            upstream_requests,
            upstream_counters: Counters::default(),
            upstream_duration,
            handles: counters::Handles::default(),
            request_duration,
            in_flight,
            upstream_all: Counter::default(),
            upstream_failed: Counter::default(),
            process,
            rejected,
            waiting,
            bucket_used,
            bucket_limit,
            usage,
            throttled,
            cache_entries,
            cache_bytes,
            backend_up,
            unshared,
            degraded,
            redis_errors,
            cache_requests,
            apps,
            none: Arc::from(NONE),
            upstream: Mutex::new(None),
            refusals: Refusals::default(),
            started_unix: unix_now(),
            scrape: Mutex::new(()),
            webhooks,
            reload,
            cuts,
        };
        metrics.preset(config);
        metrics
    }

    fn shared_app_label(&self, app: Option<usize>) -> Arc<str> {
        app.and_then(|i| self.apps.get(i))
            .map_or_else(|| self.none.clone(), |a| a.shared_name.clone())
    }

    fn app_label(&self, app: Option<usize>) -> String {
        self.shared_app_label(app).to_string()
    }

    /// `waba:<id>` for a WABA configured in the app, `waba:other` for any other (a caller may name
    /// any id), `credit_line` or `other`.
    pub fn bucket_label(&self, app: usize, scope: &Scope) -> String {
        match scope {
            Scope::Waba(id) => self.waba_label(app, id),
            Scope::CreditLine | Scope::Other => scope.label(),
        }
    }

    fn waba_label(&self, app: usize, id: &str) -> String {
        if self.is_configured(app, id) {
            format!("waba:{id}")
        } else {
            "waba:other".into()
        }
    }

    fn is_configured(&self, app: usize, waba: &str) -> bool {
        self.apps.get(app).is_some_and(|a| a.wabas.contains(waba))
    }

    fn app_index(&self, name: &str) -> Option<usize> {
        self.apps.iter().position(|a| a.name == name)
    }

    // ------------------------------------------------------------ recording

    /// Counts a request as it arrives; the guard counts it out when dropped (answered, or the
    /// caller gone).
    pub fn request_started(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Counts an answered request (and, for a read the cache step handled, its cache result) and
    /// the time it took until its answer's head (`elapsed`).
    #[allow(clippy::too_many_arguments)]
    pub fn record_request(
        &self,
        app: Option<usize>,
        client: Option<&Arc<str>>,
        class: Option<&'static str>,
        method: &Method,
        status: StatusCode,
        cache: CacheResult,
        reached_cache: bool,
        elapsed: Duration,
    ) {
        let class = class.unwrap_or(NONE);
        self.handles
            .observe(&self.request_duration, class, cache, elapsed.as_secs_f64());
        self.request_counters.inc(
            &self.requests,
            RequestLabels {
                app: self.shared_app_label(app),
                client: client.cloned().unwrap_or_else(|| self.none.clone()),
                class,
                method: method_label(method),
                status: status_label(status.as_u16()),
                cache: cache.label(),
            },
        );
        if reached_cache && cache != CacheResult::None {
            self.handles.cache(&self.cache_requests, cache).inc();
        }
    }

    /// Counts one call to Meta and remembers whether it got through (for `/readyz`). Failures that
    /// are the caller's (a body too large, a caller who went away) say nothing about Meta.
    pub fn record_upstream(
        &self,
        app: usize,
        class: &'static str,
        outcome: Result<StatusCode, &GatewayError>,
        elapsed: Duration,
    ) {
        let status = match outcome {
            Ok(s) => status_label(s.as_u16()),
            Err(GatewayError::UpstreamTimeout(_)) => "timeout",
            Err(GatewayError::UpstreamUnreachable) => "error",
            Err(_) => return,
        };
        self.upstream_counters.inc(
            &self.upstream_requests,
            UpstreamLabels {
                app: self.shared_app_label(Some(app)),
                class,
                status,
            },
        );
        self.upstream_duration.observe(elapsed.as_secs_f64());
        self.upstream_all.inc();
        if status.starts_with('5') || status == "error" || status == "timeout" {
            self.upstream_failed.inc();
        }
        let error = outcome.err().map(|e| e.to_string());
        *self.upstream.lock_unpoisoned() = Some(UpstreamOutcome {
            at: Instant::now(),
            error,
        });
    }

    /// Counts a call graphgate refused for a budget, keeps it in the recent list and adds it to
    /// its client's group. `client` is the name from config.
    pub fn record_rejection(&self, app: usize, client: &str, refusal: &Refusal) {
        let (bucket, reason) = match refusal.reason {
            RefusalReason::ClientQuota => ("client_quota".to_string(), "client_quota"),
            RefusalReason::Full => (self.bucket_label(app, &refusal.scope), "full"),
            RefusalReason::Blocked => (self.bucket_label(app, &refusal.scope), "blocked"),
            RefusalReason::Unavailable => (self.bucket_label(app, &refusal.scope), "unavailable"),
        };
        let app_name = self.app_label(Some(app));
        self.rejected
            .get_or_create(&BucketLabels {
                app: app_name.clone(),
                bucket: bucket.clone(),
            })
            .inc();
        let retry_after_secs = refusal.retry_after.as_secs_f64().ceil() as u64;
        self.refusals.record(
            app_name,
            client,
            bucket,
            reason,
            retry_after_secs,
            unix_now(),
        );
    }

    /// Counts a reload by its outcome (one of [`RELOAD_OUTCOMES`]).
    pub fn record_reload(&self, outcome: &'static str) {
        self.reload.record(outcome)
    }

    /// The config in use: its secret-free hash, and the WABAs each app's `waba_token_dir` holds.
    pub fn set_config(&self, hash: &str, dir_wabas: &[(String, usize)]) {
        self.reload.set_config(hash, dir_wabas)
    }

    /// Counts a throttling error from Meta. `code` is one of [`crate::limits::is_throttling_code`]'s
    /// fixed set, so it is a safe label.
    /// An answer that did not reach its caller whole.
    pub fn record_cut(&self, cut: Cut) {
        self.cuts.inc(cut);
    }

    pub fn record_throttle(&self, app: usize, code: u64) {
        let code = if crate::limits::is_throttling_code(code) {
            code.to_string()
        } else {
            "other".into()
        };
        self.throttled
            .get_or_create(&ThrottleLabels {
                app: self.app_label(Some(app)),
                code,
            })
            .inc();
    }

    // ------------------------------------------------------------ reading

    /// The latest transport-level outcome of a call to Meta.
    pub fn upstream_outcome(&self) -> Option<UpstreamOutcome> {
        self.upstream.lock_unpoisoned().clone()
    }

    /// Refusals since start, grouped by app, client, bucket and reason, most first.
    pub fn refusals_by_caller(&self) -> Vec<RefusalGroup> {
        self.refusals.by_caller()
    }

    /// When this gateway started, in unix seconds.
    pub fn started_unix(&self) -> u64 {
        self.started_unix
    }

    /// Requests the proxy is serving now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Calls to Meta counted so far: (all, failed: 5xx, transport error or timeout).
    pub fn upstream_counts(&self) -> (u64, u64) {
        (self.upstream_all.get(), self.upstream_failed.get())
    }

    /// Recent refusals, oldest first.
    pub fn recent_rejections(&self) -> Vec<Rejection> {
        self.refusals.recent()
    }

    /// Cache results counted so far: hit, miss, stale, bypass.
    pub fn cache_counts(&self) -> [(&'static str, u64); 4] {
        [
            CacheResult::Hit,
            CacheResult::Miss,
            CacheResult::Stale,
            CacheResult::Bypass,
        ]
        .map(|r| {
            let n = self
                .cache_requests
                .get(&CacheLabels { result: r.label() })
                .map_or(0, |c| c.get());
            (r.label(), n)
        })
    }
}

/// Counts a request out of `graphgate_requests_in_flight` when dropped.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
