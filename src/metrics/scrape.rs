//! A scrape of `/metrics`: refreshes the gauges (buckets, Meta's usage, the cache, the limits
//! backend, the webhook figures) from snapshots, then encodes the whole registry.
//!
//! It owns the gauge refresh and the text encoding. It takes snapshots as arguments and must never
//! fetch them itself (the `/metrics` handler does, with any awaiting), never block on I/O, and never
//! turn a request's own string into a label.

use std::collections::HashMap;

use crate::cache::ResponseCache;
use crate::limits::{BucketView, Limiter, Reported};
use crate::sync::MutexExt;

use super::counters::clamp_i64;
use super::labels::{BucketLabels, RedisFaultLabels, UsageLabels};
use super::{Metrics, WebhookStats};

impl Metrics {
    /// Refreshes the gauges from `buckets` ([`Limiter::view`]), the limiter and the cache, then
    /// encodes everything.
    pub fn render(
        &self,
        buckets: Vec<BucketView>,
        limiter: &Limiter,
        cache: &ResponseCache,
        webhooks: Option<WebhookStats>,
    ) -> String {
        let _one_at_a_time = self.scrape.lock_unpoisoned();
        self.process.refresh();
        if let (Some(w), Some(stats)) = (&self.webhooks, webhooks) {
            w.refresh(&stats);
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
        self.unshared
            .set(clamp_i64(limiter.unshared_calls() as u64));
        // The link counts its failures; every kind is exported, at 0 until one happens.
        for (fault, n) in limiter.redis().map(|l| l.errors()).unwrap_or_default() {
            let c = self.redis_errors.get_or_create(&RedisFaultLabels {
                kind: fault.as_str(),
            });
            c.inc_by(n.saturating_sub(c.get()));
        }

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
