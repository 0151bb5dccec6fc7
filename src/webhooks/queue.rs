//! The fan-out queue: per subscriber, one FIFO lane per WABA, each drained by its own task that
//! retries the head with exponential backoff and jitter, bounded in attempts and age. With
//! `queue_dir`, every waiting delivery is also a file, so a restart resumes where it stopped.
//!
//! It owns delivery, retry and the on-disk files. It must never drop a delivery without a log line
//! and a counter, never let one WABA's failing head hold back another WABA, never hold a lock
//! across `.await`, and never log a subscriber's URL (it may carry credentials) or secret.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{Subscriber, Webhooks};

use super::signing::signature;
use crate::metrics::SubscriberStats;
use crate::sync::MutexExt;

type DeliveryClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One event on its way to one subscriber.
#[derive(Debug, Clone)]
struct Delivery {
    /// Global order of enqueueing, also the file name; unique across restarts.
    seq: u64,
    /// The WABA id: deliveries of one lane go out strictly in order.
    lane: String,
    created_ms: u64,
    body: Bytes,
}

/// A delivery file under `queue_dir/<subscriber>/<seq>.json`.
#[derive(Serialize, Deserialize)]
struct OnDisk {
    lane: String,
    created_ms: u64,
    body: String,
}

#[derive(Default)]
struct Lane {
    items: VecDeque<Delivery>,
    /// A task is draining this lane; set and cleared under the subscriber lock.
    running: bool,
}

#[derive(Default)]
struct SubState {
    lanes: HashMap<String, Lane>,
    depth: usize,
    stats: SubscriberStats,
}

struct Sub {
    cfg: Subscriber,
    /// Guards the lanes and the counters together, so a depth and its counters always agree. Held
    /// only for short, synchronous updates.
    state: Mutex<SubState>,
}

/// Why a delivery attempt failed; shown in logs without the URL.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the subscriber answered {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the request failed: {0}")]
    Transport(String),
}

pub struct Queue {
    subs: Vec<Sub>,
    dir: Option<PathBuf>,
    seq: AtomicU64,
    max_queue: usize,
    retry_initial: Duration,
    retry_max: Duration,
    max_attempts: u32,
    max_age: Duration,
    timeout: Duration,
    client: DeliveryClient,
    stop: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock_unpoisoned()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Queue {
    pub fn new(cfg: &Webhooks) -> Queue {
        let https = crate::upstream::https_connector(cfg.delivery_timeout, &[]);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Queue {
            subs: cfg
                .subscribers
                .iter()
                .map(|s| Sub {
                    cfg: s.clone(),
                    state: Mutex::default(),
                })
                .collect(),
            dir: cfg.queue_dir.clone(),
            // Microseconds since the epoch: later than any file an earlier run left behind, even
            // before `start` has read them.
            seq: AtomicU64::new(now_ms() * 1000),
            max_queue: cfg.max_queue,
            retry_initial: cfg.retry_initial,
            retry_max: cfg.retry_max,
            max_attempts: cfg.max_attempts,
            max_age: cfg.max_age,
            timeout: cfg.delivery_timeout,
            client,
            stop: watch::channel(false).0,
        }
    }

    pub fn subscribers(&self) -> impl Iterator<Item = &Subscriber> {
        self.subs.iter().map(|s| &s.cfg)
    }

    fn sub_dir(&self, sub: usize) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(&self.subs[sub].cfg.name))
    }

    /// Loads the deliveries an earlier run left in `queue_dir` and starts draining them. Fails only
    /// when a subscriber's folder cannot be created or listed.
    pub fn start(self: &Arc<Self>) -> std::io::Result<usize> {
        let mut loaded = 0;
        if let Some(root) = &self.dir {
            std::fs::create_dir_all(root)?;
            for e in std::fs::read_dir(root)? {
                let name = e?.file_name().to_string_lossy().into_owned();
                if !self.subs.iter().any(|s| s.cfg.name == name) {
                    tracing::warn!(folder = %name, "queue_dir holds deliveries for a subscriber that is no longer configured; they are not sent");
                }
            }
        }
        for i in 0..self.subs.len() {
            let Some(dir) = self.sub_dir(i) else { break };
            std::fs::create_dir_all(&dir)?;
            let mut files: Vec<(u64, PathBuf)> = Vec::new();
            for e in std::fs::read_dir(&dir)? {
                let path = e?.path();
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                match (path.extension().and_then(|e| e.to_str()), stem.parse()) {
                    (Some("json"), Ok(seq)) => files.push((seq, path)),
                    // A write cut short by a crash: its event was never acknowledged to Meta.
                    (Some("tmp"), _) => {
                        let _ = std::fs::remove_file(&path);
                    }
                    _ => {}
                }
            }
            files.sort();
            for (seq, path) in files {
                let parsed = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<OnDisk>(&b).ok());
                let Some(d) = parsed else {
                    tracing::error!(subscriber = %self.subs[i].cfg.name, file = %path.display(), "unreadable queued delivery; renamed to .bad and skipped");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                    continue;
                };
                self.seq.fetch_max(seq + 1, Ordering::AcqRel);
                self.push(
                    i,
                    Delivery {
                        seq,
                        lane: d.lane,
                        created_ms: d.created_ms,
                        body: Bytes::from(d.body),
                    },
                );
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    /// Stops every lane task; what is still queued stays on disk for the next run.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Queues `body` for subscriber `sub` in the lane of WABA `lane`. A full queue refuses it with an
    /// error log and the `queue_full` counter; a failed file write keeps it in memory only.
    pub async fn enqueue(self: &Arc<Self>, sub: usize, lane: &str, body: Bytes) {
        let name = &self.subs[sub].cfg.name;
        {
            let mut st = lock(&self.subs[sub].state);
            if st.depth >= self.max_queue {
                st.stats.queue_full += 1;
                tracing::error!(subscriber = %name, waba = lane, max_queue = self.max_queue, "webhook delivery queue is full; this event is not delivered to this subscriber");
                return;
            }
        }
        let d = Delivery {
            seq: self.seq.fetch_add(1, Ordering::AcqRel),
            lane: lane.to_string(),
            created_ms: now_ms(),
            body,
        };
        if let Some(dir) = self.sub_dir(sub) {
            if let Err(e) = write_atomically(&dir, &d).await {
                lock(&self.subs[sub].state).stats.persist_failures += 1;
                tracing::error!(subscriber = %name, error = %e, "could not write a webhook delivery to queue_dir; it is kept in memory only");
            }
        }
        self.push(sub, d);
    }

    fn push(self: &Arc<Self>, sub: usize, d: Delivery) {
        let lane_id = d.lane.clone();
        let spawn = {
            let mut st = lock(&self.subs[sub].state);
            st.depth += 1;
            let lane = st.lanes.entry(lane_id.clone()).or_default();
            lane.items.push_back(d);
            !std::mem::replace(&mut lane.running, true)
        };
        if spawn {
            tokio::spawn(self.clone().drain(sub, lane_id));
        }
    }

    pub fn stats(&self) -> Vec<(String, SubscriberStats)> {
        self.subs
            .iter()
            .map(|s| {
                let st = lock(&s.state);
                let mut stats = st.stats.clone();
                stats.queue_depth = st.depth as u64;
                (s.cfg.name.clone(), stats)
            })
            .collect()
    }

    /// Sends the lane's head until it is delivered or given up, then the next, until the lane is
    /// empty (the lane is then removed, so idle WABAs cost nothing) or the queue stops.
    async fn drain(self: Arc<Self>, sub: usize, lane: String) {
        let mut stop = self.stop.subscribe();
        let name = self.subs[sub].cfg.name.clone();
        let mut attempt = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            let head = {
                let mut st = lock(&self.subs[sub].state);
                match st.lanes.get(&lane).and_then(|l| l.items.front().cloned()) {
                    Some(d) => d,
                    None => {
                        st.lanes.remove(&lane);
                        return;
                    }
                }
            };
            let age = Duration::from_millis(now_ms().saturating_sub(head.created_ms));
            if age > self.max_age {
                tracing::error!(subscriber = %name, waba = %lane, delivery = head.seq, age = ?age, "webhook delivery is older than max_age; given up");
                self.finish(sub, &head, |s| s.expired += 1).await;
                attempt = 0;
                continue;
            }
            attempt += 1;
            let sent = tokio::select! {
                r = self.send(sub, &head, attempt) => r,
                _ = stop.changed() => return,
            };
            match sent {
                Ok(()) => {
                    tracing::debug!(subscriber = %name, waba = %lane, delivery = head.seq, attempt, "webhook delivered");
                    self.finish(sub, &head, |s| s.delivered += 1).await;
                    attempt = 0;
                }
                Err(e) => {
                    lock(&self.subs[sub].state).stats.failed_attempts += 1;
                    if attempt >= self.max_attempts {
                        tracing::error!(subscriber = %name, waba = %lane, delivery = head.seq, attempt, error = %e, "webhook delivery failed max_attempts times; given up");
                        self.finish(sub, &head, |s| s.gave_up += 1).await;
                        attempt = 0;
                        continue;
                    }
                    let wait = backoff(self.retry_initial, self.retry_max, attempt);
                    tracing::warn!(subscriber = %name, waba = %lane, delivery = head.seq, attempt, retry_in = ?wait, error = %e, "webhook delivery failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    /// Removes the lane's head (delivered or given up), its file, and counts the outcome.
    async fn finish(&self, sub: usize, head: &Delivery, count: impl FnOnce(&mut SubscriberStats)) {
        if let Some(dir) = self.sub_dir(sub) {
            let path = dir.join(file_name(head.seq));
            if let Err(e) = tokio::fs::remove_file(&path).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), error = %e, "could not remove a finished webhook delivery; it may be sent again after a restart");
                }
            }
        }
        let mut st = lock(&self.subs[sub].state);
        if let Some(lane) = st.lanes.get_mut(&head.lane) {
            if lane.items.front().map(|d| d.seq) == Some(head.seq) {
                lane.items.pop_front();
            }
        }
        st.depth = st.depth.saturating_sub(1);
        count(&mut st.stats);
    }

    async fn send(&self, sub: usize, d: &Delivery, attempt: u32) -> Result<(), DeliveryError> {
        let cfg = &self.subs[sub].cfg;
        let mut req = http::Request::post(cfg.url.clone())
            .body(Full::new(d.body.clone()))
            .map_err(|e| DeliveryError::Transport(e.to_string()))?;
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::USER_AGENT, HeaderValue::from_static("graphgate"));
        h.insert("x-graphgate-delivery", HeaderValue::from(d.seq));
        h.insert("x-graphgate-attempt", HeaderValue::from(attempt));
        if let Some(secret) = &cfg.secret {
            if let Ok(v) = HeaderValue::from_str(&signature(secret.expose().as_bytes(), &d.body)) {
                h.insert("x-hub-signature-256", v);
            }
        }
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(DeliveryError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(DeliveryError::Transport(transport_reason(&e))),
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(DeliveryError::Status(resp.status().as_u16())),
        }
    }
}

/// hyper-util's error plus its cause (e.g. "connection refused"); neither names the URL.
fn transport_reason(e: &hyper_util::client::legacy::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

/// Writes the delivery to a temporary name, then renames it: a crash leaves a whole file or none.
async fn write_atomically(dir: &Path, d: &Delivery) -> std::io::Result<()> {
    let on_disk = OnDisk {
        lane: d.lane.clone(),
        created_ms: d.created_ms,
        body: String::from_utf8_lossy(&d.body).into_owned(),
    };
    let bytes = serde_json::to_vec(&on_disk).map_err(std::io::Error::other)?;
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!("{:020}.tmp", d.seq));
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, dir.join(file_name(d.seq))).await
}

/// `initial * 2^(attempt-1)`, capped at `max`, then scaled by a random factor in [0.5, 1] so that
/// lanes failing together do not retry in lockstep, while a retry never comes much sooner than
/// planned.
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(30));
    exp.min(max)
        .mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}
