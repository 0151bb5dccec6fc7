//! The webhook receiver's figures: the counters it keeps ([`WebhookStats`], [`SubscriberStats`]) and
//! the series that show them, registered only when `[webhooks]` is configured.
//!
//! The types live here, not in `webhooks`, so that metrics never imports the receiver: the receiver
//! counts, and the registry copies its counts at scrape time. Field labels outside the known WABA
//! fields collapse to `other`; subscriber labels are names from config. This file must never read
//! the receiver's state itself.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::counters::clamp_i64;

/// Counters for the metrics endpoint (`webhooks::Hub::stats`). Monotonic except `queue_depth`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Verified changes received, by `field` (unknown fields included).
    pub events: BTreeMap<String, u64>,
    pub signature_failures: u64,
    pub handshakes_ok: u64,
    pub handshakes_refused: u64,
    /// Bodies refused after the signature check or for size: malformed JSON, over `max_body`.
    pub bodies_refused: u64,
    pub subscribers: BTreeMap<String, SubscriberStats>,
}

/// Deliveries of one subscriber, by outcome, and what waits now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    pub delivered: u64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts: u64,
    /// Given up after `max_attempts`.
    pub gave_up: u64,
    /// Given up after `max_age`.
    pub expired: u64,
    /// Refused because `max_queue` deliveries were already waiting.
    pub queue_full: u64,
    /// Kept in memory only because the file could not be written.
    pub persist_failures: u64,
    pub queue_depth: u64,
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

/// Delivery outcomes, in the order of [`WebhookMetrics::refresh`]'s counts.
const OUTCOMES: [&str; 5] = [
    "delivered",
    "failed_attempt",
    "gave_up",
    "expired",
    "queue_full",
];

/// Webhook figures, registered only when `[webhooks]` is configured. They mirror the hub's own
/// counters at scrape time.
pub(super) struct WebhookMetrics {
    events: Family<FieldLabels, Counter>,
    signature_failures: Counter,
    deliveries: Family<DeliveryLabels, Counter>,
    queue_depth: Family<SubscriberLabels, Gauge>,
}

impl WebhookMetrics {
    /// Creates the webhook series and registers them in `registry`: at 0 for every known field and
    /// for each configured subscriber's outcomes, so an alert sees the first failure.
    pub(super) fn register(registry: &mut Registry, subscribers: &[String]) -> WebhookMetrics {
        let w = WebhookMetrics {
            events: Family::default(),
            signature_failures: Counter::default(),
            deliveries: Family::default(),
            queue_depth: Family::default(),
        };
        registry.register(
            "graphgate_webhook_events",
            "Verified webhook changes received, by field",
            w.events.clone(),
        );
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
        registry.register(
            "graphgate_webhook_queue_depth",
            "Deliveries waiting, by subscriber",
            w.queue_depth.clone(),
        );
        for field in KNOWN_FIELDS.iter().chain(&["other"]) {
            w.events
                .get_or_create(&FieldLabels {
                    field: field.to_string(),
                })
                .inc_by(0);
        }
        for name in subscribers {
            for outcome in OUTCOMES {
                w.deliveries
                    .get_or_create(&DeliveryLabels {
                        subscriber: name.clone(),
                        outcome,
                    })
                    .inc_by(0);
            }
            w.queue_depth
                .get_or_create(&SubscriberLabels {
                    subscriber: name.clone(),
                })
                .set(0);
        }
        w
    }

    /// Brings the series up to the hub's counts (at scrape time).
    pub(super) fn refresh(&self, stats: &WebhookStats) {
        for (field, n) in &stats.events {
            let field = if KNOWN_FIELDS.contains(&field.as_str()) {
                field.clone()
            } else {
                "other".into()
            };
            catch_up(&self.events.get_or_create(&FieldLabels { field }), *n);
        }
        catch_up(&self.signature_failures, stats.signature_failures);
        for (name, sub) in &stats.subscribers {
            let counts = [
                sub.delivered,
                sub.failed_attempts,
                sub.gave_up,
                sub.expired,
                sub.queue_full,
            ];
            for (outcome, n) in OUTCOMES.into_iter().zip(counts) {
                let labels = DeliveryLabels {
                    subscriber: name.clone(),
                    outcome,
                };
                catch_up(&self.deliveries.get_or_create(&labels), n);
            }
            self.queue_depth
                .get_or_create(&SubscriberLabels {
                    subscriber: name.clone(),
                })
                .set(clamp_i64(sub.queue_depth));
        }
    }
}

/// Raises a counter to `value` (the hub counts; the registry only shows).
fn catch_up(c: &Counter, value: u64) {
    let cur = c.get();
    if value > cur {
        c.inc_by(value - cur);
    }
}
