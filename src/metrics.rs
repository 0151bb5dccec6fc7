//! Prometheus metrics for one gateway, in a registry of its own (prometheus-client), plus the two
//! facts the admin listener reads besides them: how the last upstream call went (for `/readyz`) and
//! the most recent rate-limit refusals (for the status page).
//!
//! Counters are bumped by the pipeline as requests pass; gauges (buckets, Meta's usage, the cache)
//! are refreshed from snapshots at scrape time. This module must never take a label value from a
//! request: every label is a name from config (app, client, configured WABA id) or a member of a
//! fixed set, so no caller can create a new series. It must never block on I/O either.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::cache::ResponseCache;
use crate::config::Config;
use crate::error::GatewayError;
use crate::limits::{BucketView, Limiter, Refusal, RefusalReason, Reported, Scope};
use crate::sync::{MutexExt, RwLockExt};

/// `Content-Type` of `/metrics`: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upstream latency buckets (seconds): Meta answers in tens to hundreds of milliseconds; the tail
/// up to `upstream.request_timeout` matters most.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How many refusals the status page can list.
const RECENT_REJECTIONS: usize = 50;

/// Status codes that get a series of their own; any other code is counted under its class (`4xx`).
const STATUS_CODES: [&str; 27] = [
    "200", "201", "202", "204", "206", "301", "302", "304", "400", "401", "403", "404", "405",
    "406", "408", "409", "410", "411", "413", "414", "415", "422", "429", "431", "500", "502",
    "503",
];

/// Label used where a request never got as far as knowing a value (e.g. no valid client key).
const NONE: &str = "none";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    // Shared strings: counting a request allocates nothing for these labels.
    app: Arc<str>,
    client: Arc<str>,
    class: &'static str,
    method: &'static str,
    status: &'static str,
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    app: Arc<str>,
    class: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketLabels {
    app: String,
    bucket: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UsageLabels {
    app: String,
    object: String,
    r#type: &'static str,
    metric: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThrottleLabels {
    app: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FieldLabels {
    field: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    subscriber: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriberLabels {
    subscriber: String,
}

/// Webhook figures, registered only when `[webhooks]` is configured. They mirror the hub's own
/// counters at scrape time; field labels outside the known WABA fields collapse to `other`.
struct WebhookMetrics {
    events: Family<FieldLabels, Counter>,
    signature_failures: Counter,
    deliveries: Family<DeliveryLabels, Counter>,
    queue_depth: Family<SubscriberLabels, Gauge>,
}

/// Field names that get a series of their own (the webhook fields graphgate acts on, and messages).
const KNOWN_FIELDS: [&str; 9] = [
    "message_template_status_update",
    "message_template_quality_update",
    "message_template_components_update",
    "template_category_update",
    "phone_number_quality_update",
    "phone_number_name_update",
    "account_update",
    "business_capability_update",
    "messages",
];

/// Raises a counter to `value` (the hub counts; the registry only shows).
fn catch_up(c: &Counter, value: u64) {
    let cur = c.get();
    if value > cur {
        c.inc_by(value - cur);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// What the cache step did with a request, from its `X-Cache` answer header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Stale,
    Bypass,
    /// Not a read (POST, DELETE, ...): the cache step only invalidates.
    None,
}

impl CacheResult {
    /// Reads an `X-Cache` value; anything else (or no header) is `None`.
    pub fn from_header(v: Option<&http::HeaderValue>) -> CacheResult {
        match v.map(|v| v.as_bytes()) {
            Some(b"HIT") => CacheResult::Hit,
            Some(b"MISS") => CacheResult::Miss,
            Some(b"STALE") => CacheResult::Stale,
            Some(b"BYPASS") => CacheResult::Bypass,
            _ => CacheResult::None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Bypass => "bypass",
            CacheResult::None => NONE,
        }
    }
}

/// The outcome of the latest call to Meta, at the transport level.
#[derive(Debug, Clone)]
pub struct UpstreamOutcome {
    pub at: Instant,
    /// `None` when Meta answered (any status); the failure otherwise.
    pub error: Option<String>,
}

/// One refused call, for the status page.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub at_unix: u64,
    pub app: String,
    pub bucket: String,
    /// `full`, `blocked` (Meta throttled), `client_quota` or `unavailable` (Redis down, reject mode).
    pub reason: &'static str,
    pub retry_after_secs: u64,
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
    rejected: Family<BucketLabels, Counter>,
    waiting: Gauge,
    bucket_used: Family<BucketLabels, Gauge>,
    bucket_limit: Family<BucketLabels, Gauge>,
    usage: Family<UsageLabels, Gauge>,
    throttled: Family<ThrottleLabels, Counter>,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    backend_up: Gauge,
    cache_requests: Family<CacheLabels, Counter>,
    apps: Vec<AppLabelSet>,
    none: Arc<str>,
    // The three locks below are held only to copy or replace a small value, never across an await.
    upstream: Mutex<Option<UpstreamOutcome>>,
    recent: Mutex<VecDeque<Rejection>>,
    /// Serializes scrapes: each refreshes the gauge families (clear, then set) before encoding.
    scrape: Mutex<()>,
    webhooks: Option<WebhookMetrics>,
}

/// Counter handles of a family by label set, in front of the family's own map: that map hashes
/// every label string with SipHash on each lookup, which was a few percent of a request; this one
/// uses foldhash under a read lock. A handle shares its count with the family's, so `/metrics`
/// reads the same numbers.
struct Counters<L> {
    map: RwLock<foldhash::HashMap<L, Counter>>,
}

impl<L> Default for Counters<L> {
    fn default() -> Self {
        Counters {
            map: RwLock::new(foldhash::HashMap::default()),
        }
    }
}

impl<L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug> Counters<L> {
    fn inc(&self, family: &Family<L, Counter>, labels: L) {
        if let Some(c) = self.map.read_unpoisoned().get(&labels) {
            c.inc();
            return;
        }
        let mut map = self.map.write_unpoisoned();
        map.entry(labels)
            .or_insert_with_key(|l| family.get_or_create(l).clone())
            .inc();
    }
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
        let rejected = Family::<BucketLabels, Counter>::default();
        let waiting = Gauge::default();
        let bucket_used = Family::<BucketLabels, Gauge>::default();
        let bucket_limit = Family::<BucketLabels, Gauge>::default();
        let usage = Family::<UsageLabels, Gauge>::default();
        let throttled = Family::<ThrottleLabels, Counter>::default();
        let cache_entries = Gauge::default();
        let cache_bytes = Gauge::default();
        let backend_up = Gauge::default();
        let cache_requests = Family::<CacheLabels, Counter>::default();
        let build_info = Family::<VersionLabels, Gauge>::default();
        let webhooks = config.webhooks.as_ref().map(|_| {
            let w = WebhookMetrics {
                events: Family::default(),
                signature_failures: Counter::default(),
                deliveries: Family::default(),
                queue_depth: Family::default(),
            };
            registry.register("graphgate_webhook_events", "Verified webhook changes received, by field", w.events.clone());
            registry.register(
                "graphgate_webhook_signature_failures",
                "Webhook POSTs refused for a missing or wrong X-Hub-Signature-256",
                w.signature_failures.clone(),
            );
            registry.register(
                "graphgate_webhook_deliveries",
                "Fan-out deliveries by subscriber and outcome (delivered, failed_attempt, gave_up, expired, queue_full)",
                w.deliveries.clone(),
            );
            registry.register("graphgate_webhook_queue_depth", "Deliveries waiting, by subscriber", w.queue_depth.clone());
            w
        });
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

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
            "graphgate_build_info",
            "graphgate's version; always 1",
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
        Metrics {
            registry,
            requests,
            request_counters: Counters::default(),
            upstream_requests,
            upstream_counters: Counters::default(),
            upstream_duration,
            rejected,
            waiting,
            bucket_used,
            bucket_limit,
            usage,
            throttled,
            cache_entries,
            cache_bytes,
            backend_up,
            cache_requests,
            apps,
            none: Arc::from(NONE),
            upstream: Mutex::new(None),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_REJECTIONS)),
            scrape: Mutex::new(()),
            webhooks,
        }
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

    /// Counts an answered request (and, for a read the cache step handled, its cache result).
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
    ) {
        self.request_counters.inc(
            &self.requests,
            RequestLabels {
                app: self.shared_app_label(app),
                client: client.cloned().unwrap_or_else(|| self.none.clone()),
                class: class.unwrap_or(NONE),
                method: method_label(method),
                status: status_label(status.as_u16()),
                cache: cache.label(),
            },
        );
        if reached_cache && cache != CacheResult::None {
            self.cache_requests
                .get_or_create(&CacheLabels {
                    result: cache.label(),
                })
                .inc();
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
        let error = outcome.err().map(|e| e.to_string());
        *self.upstream.lock_unpoisoned() = Some(UpstreamOutcome {
            at: Instant::now(),
            error,
        });
    }

    /// Counts a call graphgate refused for a budget and keeps it in the recent list.
    pub fn record_rejection(&self, app: usize, refusal: &Refusal) {
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
        let mut recent = self.recent.lock_unpoisoned();
        if recent.len() == RECENT_REJECTIONS {
            recent.pop_front();
        }
        recent.push_back(Rejection {
            at_unix: unix_now(),
            app: app_name,
            bucket,
            reason,
            retry_after_secs: refusal.retry_after.as_secs_f64().ceil() as u64,
        });
    }

    /// Counts a throttling error from Meta. `code` is one of [`crate::limits::is_throttling_code`]'s
    /// fixed set, so it is a safe label.
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

    /// Recent refusals, oldest first.
    pub fn recent_rejections(&self) -> Vec<Rejection> {
        self.recent.lock_unpoisoned().iter().cloned().collect()
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

    /// Refreshes the gauges from `buckets` ([`Limiter::view`]), the limiter and the cache, then
    /// encodes everything.
    pub fn render(
        &self,
        buckets: Vec<BucketView>,
        limiter: &Limiter,
        cache: &ResponseCache,
        webhooks: Option<crate::webhooks::WebhookStats>,
    ) -> String {
        let _one_at_a_time = self.scrape.lock_unpoisoned();
        if let (Some(w), Some(stats)) = (&self.webhooks, webhooks) {
            for (field, n) in &stats.events {
                let field = if KNOWN_FIELDS.contains(&field.as_str()) {
                    field.clone()
                } else {
                    "other".into()
                };
                catch_up(&w.events.get_or_create(&FieldLabels { field }), *n);
            }
            catch_up(&w.signature_failures, stats.signature_failures);
            for (name, sub) in &stats.subscribers {
                for (outcome, n) in [
                    ("delivered", sub.delivered),
                    ("failed_attempt", sub.failed_attempts),
                    ("gave_up", sub.gave_up),
                    ("expired", sub.expired),
                    ("queue_full", sub.queue_full),
                ] {
                    let labels = DeliveryLabels {
                        subscriber: name.clone(),
                        outcome,
                    };
                    catch_up(&w.deliveries.get_or_create(&labels), n);
                }
                w.queue_depth
                    .get_or_create(&SubscriberLabels {
                        subscriber: name.clone(),
                    })
                    .set(clamp_i64(sub.queue_depth));
            }
        }

        // Buckets: unconfigured WABAs share `waba:other`, which shows the fullest of them.
        let views = buckets;
        let mut buckets: HashMap<BucketLabels, (u32, u32)> = HashMap::new();
        let mut usage: HashMap<UsageLabels, u32> = HashMap::new();
        let mut waiting = 0usize;
        for b in views {
            waiting += b.waiting;
            let Some(app) = self.app_index(&b.app) else {
                continue;
            };
            let waba = b.scope.strip_prefix("waba:");
            let bucket = match waba {
                Some(id) => self.waba_label(app, id),
                None => b.scope.clone(),
            };
            let labels = BucketLabels {
                app: b.app.clone(),
                bucket,
            };
            let slot = buckets.entry(labels).or_insert((0, 0));
            if u64::from(b.used) * u64::from(slot.1.max(1))
                >= u64::from(slot.0) * u64::from(b.limit.max(1))
            {
                *slot = (b.used, b.limit);
            }
            if let (Some(id), Some(rep)) = (waba, &b.reported) {
                let object = if self.is_configured(app, id) {
                    id.to_string()
                } else {
                    "other".into()
                };
                add_usage(
                    &mut usage,
                    &b.app,
                    &object,
                    "whatsapp_business_management",
                    rep,
                );
            }
        }
        for (app, rep) in limiter.app_usage() {
            if let Some(rep) = rep {
                add_usage(&mut usage, &app, "app", "app", &rep);
            }
        }
        self.bucket_used.clear();
        self.bucket_limit.clear();
        for (labels, (used, limit)) in buckets {
            self.bucket_used.get_or_create(&labels).set(used.into());
            self.bucket_limit.get_or_create(&labels).set(limit.into());
        }
        self.usage.clear();
        for (labels, pct) in usage {
            self.usage.get_or_create(&labels).set(pct.into());
        }
        self.waiting.set(waiting as i64);
        let (entries, bytes) = cache.usage();
        self.cache_entries.set(clamp_i64(entries));
        self.cache_bytes.set(clamp_i64(bytes));
        self.backend_up.set(i64::from(matches!(
            limiter.backend_state(),
            "memory" | "up"
        )));

        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would only truncate the output.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

fn add_usage(
    usage: &mut HashMap<UsageLabels, u32>,
    app: &str,
    object: &str,
    typ: &'static str,
    rep: &Reported,
) {
    for (metric, v) in [
        ("call_count", rep.call_count),
        ("total_cputime", rep.total_cputime),
        ("total_time", rep.total_time),
    ] {
        let slot = usage
            .entry(UsageLabels {
                app: app.to_string(),
                object: object.to_string(),
                r#type: typ,
                metric,
            })
            .or_insert(0);
        *slot = (*slot).max(v);
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The methods the Graph API knows keep their name; anything else is `other`.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A status code from [`STATUS_CODES`], else its class (`2xx` ... `5xx`), else `other`.
pub fn status_label(code: u16) -> &'static str {
    if code < 1000 {
        let digits = [code / 100, code / 10 % 10, code % 10].map(|d| b'0' + d as u8);
        if let Some(s) = STATUS_CODES.iter().find(|s| s.as_bytes() == digits) {
            return s;
        }
    }
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known codes keep their number; others collapse to their class, so the set stays bounded.
    #[test]
    fn status_labels_are_codes_from_a_fixed_set_or_classes() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(429), "429");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
        assert_eq!(status_label(999), "other");
        let all: HashSet<&str> = (0..1000).map(status_label).collect();
        assert!(all.len() <= STATUS_CODES.len() + 6, "{}", all.len());
    }

    // A method outside the Graph API's set is counted as `other`.
    #[test]
    fn unknown_methods_are_labelled_other() {
        assert_eq!(method_label(&Method::GET), "GET");
        let odd = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method_label(&odd), "other");
    }

    // `X-Cache` values map to the four results; anything else means the cache step did not read.
    #[test]
    fn cache_results_come_from_the_x_cache_header() {
        let h = |s: &'static str| Some(http::HeaderValue::from_static(s));
        assert_eq!(
            CacheResult::from_header(h("HIT").as_ref()),
            CacheResult::Hit
        );
        assert_eq!(
            CacheResult::from_header(h("STALE").as_ref()),
            CacheResult::Stale
        );
        assert_eq!(
            CacheResult::from_header(h("weird").as_ref()),
            CacheResult::None
        );
        assert_eq!(CacheResult::from_header(None), CacheResult::None);
    }
}
