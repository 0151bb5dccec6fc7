//! Meta's webhooks (the `whatsapp_business_account` object) received on the public listener: the
//! verification handshake, `X-Hub-Signature-256` checks, cache invalidation and WABA re-probes per
//! event, and the hand-off of each verified event to the fan-out [`queue`]. See `docs/webhooks.md`.
//!
//! It owns the `[webhooks]` route and what an event changes. It must never parse, act on or
//! forward a body before its signature has verified against a configured app secret, never make
//! Meta wait on a subscriber, and never log or echo a secret, signature or event body.

pub mod queue;
mod signing;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, Secret, Webhooks};
use crate::error::graph_error;
use crate::ids::is_graph_id;
use crate::invalidate::Invalidator;
use crate::metrics::WebhookStats;
use crate::probe::Prober;
use crate::sync::MutexExt;

pub use signing::signature;

/// Fields whose events change a WABA's templates: its cached template views are dropped.
pub const TEMPLATE_FIELDS: [&str; 4] = [
    "message_template_status_update",
    "message_template_quality_update",
    "message_template_components_update",
    "template_category_update",
];

/// Fields whose events change a WABA's numbers or standing: its cached WABA and number views are
/// dropped and, for `active = "auto"` WABAs, whether it is active is probed again.
pub const ACCOUNT_FIELDS: [&str; 3] = [
    "phone_number_quality_update",
    "phone_number_name_update",
    "account_update",
];

/// The only object whose entry ids are WABAs; other objects are fanned out but change nothing.
const WABA_OBJECT: &str = "whatsapp_business_account";

/// Longest `hub.challenge` echoed back; Meta sends a short integer.
const MAX_CHALLENGE: usize = 128;

/// The receiver's failures, each mapped once to a Graph-shaped response.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("hub.mode is not subscribe or hub.verify_token does not match")]
    VerifyRefused,
    #[error("hub.challenge is missing or is not a short token")]
    BadChallenge,
    #[error("X-Hub-Signature-256 is missing")]
    MissingSignature,
    #[error("X-Hub-Signature-256 does not match the body for any configured app secret")]
    BadSignature,
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the body could not be read")]
    BodyFailed,
    #[error("the body is not a webhook envelope ({0})")]
    Malformed(String),
    #[error("the body did not arrive within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("too many webhook bodies are being read; retry shortly")]
    Busy,
}

impl WebhookError {
    fn shape(&self) -> (StatusCode, &'static str, u32) {
        match self {
            WebhookError::VerifyRefused => (StatusCode::FORBIDDEN, "webhook-verify", 10),
            WebhookError::BadChallenge => (StatusCode::BAD_REQUEST, "webhook-verify", 100),
            WebhookError::MissingSignature | WebhookError::BadSignature => {
                (StatusCode::FORBIDDEN, "webhook-signature", 10)
            }
            WebhookError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", 100),
            WebhookError::BodyFailed => (StatusCode::BAD_REQUEST, "bad-request", 100),
            WebhookError::Malformed(_) => (StatusCode::BAD_REQUEST, "webhook-malformed", 100),
            WebhookError::TimedOut(_) => (StatusCode::REQUEST_TIMEOUT, "body-timeout", 100),
            // Code 2, a temporary issue: Meta retries a failed delivery.
            WebhookError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", 2),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.shape().0
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let (status, kind, code) = self.shape();
        let typ = if code == 10 {
            "OAuthException"
        } else {
            "GraphMethodException"
        };
        let busy = matches!(self, WebhookError::Busy);
        let mut resp = graph_error(
            status,
            kind,
            code,
            typ,
            busy,
            &format!("(#{code}) graphgate: {self}"),
        );
        if busy {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

#[derive(Default)]
struct Counters {
    events: BTreeMap<String, u64>,
    signature_failures: u64,
    handshakes_ok: u64,
    handshakes_refused: u64,
    bodies_refused: u64,
}

/// The receiver's state; one per gateway when `[webhooks]` is configured. It holds the handles an
/// event acts through (invalidation, the prober), never the gateway itself.
pub struct Hub {
    cfg: Webhooks,
    config: Arc<Config>,
    invalidator: Invalidator,
    prober: Prober,
    /// sha256 of the verify token, so the compare is constant-time whatever the lengths.
    verify_digest: [u8; 32],
    /// (app index, app secret) of every app that has one: any of them may have signed.
    secrets: Vec<(usize, Secret)>,
    queue: Arc<queue::Queue>,
    /// Plain counters; a mutex is simplest and webhook rates are low. Never held across `.await`.
    counters: Mutex<Counters>,
    /// Probes started by events, per (app, WABA): `true` means "run once more when done", so a
    /// burst of events costs at most two probes.
    probing: Mutex<HashMap<(usize, String), bool>>,
    /// Bodies are read before their signature can be checked: only `server.preauth_reads` at once,
    /// each within `server.preauth_body_timeout` (waiting for its turn included).
    turns: crate::body::Turns,
}

impl Hub {
    /// `None` when `[webhooks]` is not configured.
    pub fn new(config: &Arc<Config>, invalidator: Invalidator, prober: Prober) -> Option<Arc<Hub>> {
        let w = config.webhooks.as_ref()?;
        Some(Arc::new(Hub {
            cfg: w.clone(),
            config: config.clone(),
            invalidator,
            prober,
            verify_digest: Sha256::digest(w.verify_token.expose().as_bytes()).into(),
            secrets: config
                .apps
                .iter()
                .enumerate()
                .filter_map(|(i, a)| a.app_secret.clone().map(|s| (i, s)))
                .collect(),
            queue: Arc::new(queue::Queue::new(w)),
            counters: Mutex::default(),
            probing: Mutex::default(),
            turns: crate::body::Turns::new(config.server.preauth_reads),
        }))
    }

    pub fn path(&self) -> &str {
        &self.cfg.path
    }

    /// Loads pending deliveries from `queue_dir` and starts sending them (called by `run_with`).
    pub fn start(&self) -> std::io::Result<()> {
        let c = &self.cfg;
        tracing::info!(
            path = %c.path,
            max_body = c.max_body,
            queue_dir = ?c.queue_dir,
            max_queue = c.max_queue,
            retry_initial = ?c.retry_initial,
            retry_max = ?c.retry_max,
            max_attempts = c.max_attempts,
            max_age = ?c.max_age,
            delivery_timeout = ?c.delivery_timeout,
            subscribers = c.subscribers.len(),
            apps_with_secret = self.secrets.len(),
            "webhook receiver"
        );
        if c.queue_dir.is_none() && !c.subscribers.is_empty() {
            tracing::warn!("webhooks.queue_dir is not set: deliveries waiting for a subscriber are lost on restart");
        }
        let n = self.queue.start()?;
        if n > 0 {
            tracing::info!(deliveries = n, "resumed webhook deliveries from queue_dir");
        }
        Ok(())
    }

    /// Stops the delivery tasks; what waits stays in `queue_dir` for the next run.
    pub fn stop(&self) {
        self.queue.stop();
    }

    pub fn stats(&self) -> WebhookStats {
        let c = self.counters();
        WebhookStats {
            events: c.events.clone(),
            signature_failures: c.signature_failures,
            handshakes_ok: c.handshakes_ok,
            handshakes_refused: c.handshakes_refused,
            bodies_refused: c.bodies_refused,
            subscribers: self.queue.stats().into_iter().collect(),
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock_unpoisoned()
    }

    fn handshake(&self, query: &str) -> Result<String, WebhookError> {
        let (mut mode, mut token, mut challenge) = (None, None, None);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "hub.mode" => mode = Some(v),
                "hub.verify_token" => token = Some(v),
                "hub.challenge" => challenge = Some(v),
                _ => {}
            }
        }
        let given: [u8; 32] = Sha256::digest(token.unwrap_or_default().as_bytes()).into();
        let token_ok: bool = given.ct_eq(&self.verify_digest).into();
        if mode.as_deref() != Some("subscribe") || !token_ok {
            return Err(WebhookError::VerifyRefused);
        }
        // Echoed as text/plain; only a short visible token, so nothing else can be reflected.
        match challenge {
            Some(c)
                if !c.is_empty()
                    && c.len() <= MAX_CHALLENGE
                    && c.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Ok(c.into_owned())
            }
            _ => Err(WebhookError::BadChallenge),
        }
    }

    /// Reads and verifies the body, applies each change, queues the fan-out. Returns the number of
    /// changes seen.
    async fn receive(self: &Arc<Self>, req: Request) -> Result<usize, WebhookError> {
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = self.cfg.max_body;
        if declared.is_some_and(|n| n > limit) {
            return Err(WebhookError::TooLarge { limit });
        }
        // A post that cannot be signed is refused before its body costs anything.
        if !parts.headers.contains_key("x-hub-signature-256") {
            return Err(WebhookError::MissingSignature);
        }
        let timeout = self.config.server.preauth_body_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let _turn = self.turns.take(deadline).await.ok_or(WebhookError::Busy)?;
        let body = match crate::body::read_whole(body, limit, Some(deadline)).await {
            Ok(Some(body)) => body,
            Ok(None) => return Err(WebhookError::TooLarge { limit }),
            Err(crate::body::ReadError::TimedOut) => return Err(WebhookError::TimedOut(timeout)),
            Err(crate::body::ReadError::Failed) => return Err(WebhookError::BodyFailed),
        };
        let app = verify(
            &self.secrets,
            parts.headers.get("x-hub-signature-256"),
            &body,
        )?;
        let envelope: Value = serde_json::from_slice(&body).map_err(|e| {
            // serde's position only: its message could quote the payload.
            WebhookError::Malformed(format!(
                "invalid JSON at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        let entries = envelope
            .get("entry")
            .and_then(Value::as_array)
            .ok_or_else(|| WebhookError::Malformed("no `entry` list".into()))?;
        let object = envelope.get("object").cloned().unwrap_or(Value::Null);
        let app_name = &self.config.apps[app].name;
        let mut changes_seen = 0;
        for entry in entries {
            let waba = entry_id(entry);
            let changes: &[Value] = entry
                .get("changes")
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice);
            for change in changes {
                let field = change.get("field").and_then(Value::as_str).unwrap_or("");
                changes_seen += 1;
                tracing::info!(app = %app_name, waba = %waba, field, "webhook event");
                *self.counters().events.entry(field.to_string()).or_default() += 1;
                if object == WABA_OBJECT {
                    self.apply(&waba, field, change.get("value"));
                }
            }
            self.fan_out(&object, entry, &waba, changes).await;
        }
        Ok(changes_seen)
    }

    /// What one change does to graphgate's own state. Ids come from a verified body, yet they only
    /// ever name cache prefixes after passing `is_graph_id`.
    fn apply(self: &Arc<Self>, waba: &str, field: &str, value: Option<&Value>) {
        if !is_graph_id(waba) {
            return;
        }
        let config = &self.config;
        let apps = 0..config.apps.len();
        if TEMPLATE_FIELDS.contains(&field) {
            // `/{waba}` covers `/{waba}/message_templates` and the WABA object views (the cache's
            // per-object invalidation drops every entry under `/{waba}` anyway).
            let template = value
                .and_then(|v| v.get("message_template_id"))
                .and_then(id_of)
                .filter(|t| is_graph_id(t));
            for app in apps {
                let mut n = self.invalidator.purge(app, &format!("/{waba}"));
                if let Some(t) = &template {
                    n += self.invalidator.purge(app, &format!("/{t}"));
                }
                tracing::debug!(
                    app,
                    waba,
                    dropped = n,
                    "template event: cache entries dropped"
                );
            }
        } else if ACCOUNT_FIELDS.contains(&field) {
            for app in apps {
                let mut prefixes: BTreeSet<String> = BTreeSet::from([format!("/{waba}")]);
                let configured = config.apps[app].wabas.iter().find(|w| w.id == waba);
                if let Some(w) = configured {
                    prefixes.extend(w.phone_numbers.iter().map(|p| format!("/{p}")));
                    prefixes.extend(w.status_ids.iter().map(|p| format!("/{p}")));
                }
                let n: usize = prefixes
                    .iter()
                    .map(|p| self.invalidator.purge(app, p))
                    .sum();
                tracing::debug!(
                    app,
                    waba,
                    dropped = n,
                    "account event: cache entries dropped"
                );
                if configured.is_some() {
                    self.reprobe(app, waba);
                }
            }
        }
    }

    /// Re-evaluates in the background whether `waba` is active; coalesces bursts (see `probing`).
    fn reprobe(self: &Arc<Self>, app: usize, waba: &str) {
        let key = (app, waba.to_string());
        {
            let mut p = self.probing.lock_unpoisoned();
            if let Some(again) = p.get_mut(&key) {
                *again = true;
                return;
            }
            p.insert(key.clone(), false);
        }
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                hub.prober.probe_waba(key.0, &key.1).await;
                let mut p = hub.probing.lock_unpoisoned();
                match p.get_mut(&key) {
                    Some(again) if *again => *again = false,
                    _ => {
                        p.remove(&key);
                        return;
                    }
                }
            }
        });
    }

    /// One delivery per matching subscriber: the entry alone in Meta's envelope, its `changes` cut
    /// down to the subscriber's `fields`. One entry names one WABA, which is the delivery's lane.
    async fn fan_out(&self, object: &Value, entry: &Value, waba: &str, changes: &[Value]) {
        for (i, sub) in self.queue.subscribers().enumerate() {
            let entry = match &sub.fields {
                None => entry.clone(),
                Some(fields) => {
                    let kept: Vec<Value> = changes
                        .iter()
                        .filter(|c| {
                            c.get("field")
                                .and_then(Value::as_str)
                                .is_some_and(|f| fields.contains(f))
                        })
                        .cloned()
                        .collect();
                    if kept.is_empty() {
                        continue;
                    }
                    let mut e = entry.clone();
                    e["changes"] = Value::Array(kept);
                    e
                }
            };
            let body = serde_json::json!({ "object": object, "entry": [entry] }).to_string();
            self.queue.enqueue(i, waba, Bytes::from(body)).await;
        }
    }
}

/// The app whose secret signed `body`, comparing in constant time (`verify_slice`).
fn verify(
    secrets: &[(usize, Secret)],
    header: Option<&HeaderValue>,
    body: &[u8],
) -> Result<usize, WebhookError> {
    let header = header.ok_or(WebhookError::MissingSignature)?;
    let hex_sig = header
        .to_str()
        .ok()
        .and_then(|h| h.trim().strip_prefix("sha256="))
        .ok_or(WebhookError::BadSignature)?;
    let sig = hex::decode(hex_sig).map_err(|_| WebhookError::BadSignature)?;
    if sig.len() != 32 {
        return Err(WebhookError::BadSignature);
    }
    signing::signed_by(secrets, &sig, body).ok_or(WebhookError::BadSignature)
}

/// Graph ids arrive as strings, sometimes as numbers.
fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The entry's WABA id, or `_` when it has none (such entries still fan out, in one lane).
fn entry_id(entry: &Value) -> String {
    entry
        .get("id")
        .and_then(id_of)
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .unwrap_or_else(|| "_".to_string())
}

/// The `[webhooks] path` route: GET for the handshake, POST for events.
pub fn routes() -> MethodRouter<Arc<Hub>> {
    get(handshake).post(receive)
}

async fn handshake(State(hub): State<Arc<Hub>>, RawQuery(query): RawQuery) -> Response {
    match hub.handshake(query.as_deref().unwrap_or("")) {
        Ok(challenge) => {
            hub.counters().handshakes_ok += 1;
            tracing::info!("webhook verification handshake answered");
            let mut resp = challenge.into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => {
            hub.counters().handshakes_refused += 1;
            tracing::warn!(error = %e, "webhook verification handshake refused");
            e.into_response()
        }
    }
}

async fn receive(State(hub): State<Arc<Hub>>, req: Request) -> Response {
    match hub.receive(req).await {
        Ok(changes) => {
            tracing::debug!(changes, "webhook accepted");
            StatusCode::OK.into_response()
        }
        Err(e) => {
            {
                let mut c = hub.counters();
                match &e {
                    WebhookError::MissingSignature | WebhookError::BadSignature => {
                        c.signature_failures += 1
                    }
                    _ => c.bodies_refused += 1,
                }
            }
            tracing::warn!(error = %e, "webhook refused");
            e.into_response()
        }
    }
}
