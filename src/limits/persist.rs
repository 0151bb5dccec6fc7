//! The limiter's state across a restart (`limits.state_file`): every bucket's log and block,
//! learned WABA activity and allocation-config ids, as JSON written through a temporary file.
//!
//! Calls still in flight are written as completed at save time, the conservative choice. Reading
//! skips unknown apps, unknown scopes and entries older than the window. It must never write a
//! partial file in place of a good one, and never store a token or key (apps go by name, buckets by
//! scope label). Its size is bounded by the logs' (`limits.max_unknown_buckets`): an id no config
//! names that no longer owns a log on reading (a lower cap, an older file) is counted in its app's
//! overflow bucket, the conservative choice.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::learned::Apps;
use super::log::Logs;
use super::types::{BucketKey, Scope};
use super::Limiter;
use crate::clock::Micros;
use crate::sync::MutexExt;

/// The file's shape. `version` is 1; later fields default so older files still read.
#[derive(Serialize, Deserialize)]
pub(super) struct State {
    version: u32,
    saved_at: Micros,
    buckets: Vec<SavedBucket>,
    #[serde(default)]
    pub(super) allocation_configs: Vec<String>,
    /// (app name, WABA id, active) of `active = "auto"` WABAs.
    #[serde(default)]
    pub(super) active: Vec<(String, String, bool)>,
}

#[derive(Serialize, Deserialize)]
struct SavedBucket {
    app: String,
    scope: String,
    done: Vec<Micros>,
    blocked_until: Micros,
}

impl Limiter {
    /// Writes every bucket's log to `limits.state_file` (atomically, via a temporary file).
    /// Calls still in flight are written as completed now, the conservative choice.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        save(path, self.clock.now(), self.window, &self.logs, &self.apps)
    }

    /// Restores what [`Limiter::save`] wrote. Unknown apps and expired entries are skipped.
    pub fn restore(&self) -> std::io::Result<usize> {
        let Some(path) = &self.state_file else {
            return Ok(0);
        };
        let Some(mut state) = load(path)? else {
            return Ok(0);
        };
        let now = self.clock.now();
        // Activity first: it decides the limits the restored logs are created with.
        for (app_name, waba, active) in std::mem::take(&mut state.active) {
            if let Some(i) = self.apps.index_of(&app_name) {
                self.learn_active(i, &waba, active);
            }
        }
        let restored = state.restore_logs(now, self.window, self, self.max_unknown);
        self.apps
            .extend_allocation_configs(std::mem::take(&mut state.allocation_configs));
        Ok(restored)
    }
}

/// Writes every log with something in its window or a block, and what was learned, to `path`.
fn save(path: &Path, now: Micros, window: Micros, logs: &Logs, apps: &Apps) -> std::io::Result<()> {
    let mut state = State {
        version: 1,
        saved_at: now,
        buckets: Vec::new(),
        allocation_configs: Vec::new(),
        active: Vec::new(),
    };
    for (key, b) in logs.all() {
        let mut b = b.lock_unpoisoned();
        b.prune(now, window);
        let mut done: Vec<Micros> = b.done.iter().copied().collect();
        done.extend(std::iter::repeat_n(now, b.inflight as usize));
        if done.is_empty() && b.blocked_until <= now {
            continue;
        }
        state.buckets.push(SavedBucket {
            app: apps.name(key.app),
            scope: key.scope.label(),
            done,
            blocked_until: b.blocked_until,
        });
    }
    state.allocation_configs = apps.allocation_configs();
    state.active = apps.learned_active();
    write_atomic(
        path,
        &serde_json::to_vec(&state).map_err(std::io::Error::other)?,
    )
}

/// Reads what [`save`] wrote; `None` when there is no file yet.
fn load(path: &Path) -> std::io::Result<Option<State>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
}

impl State {
    /// Puts the saved logs and blocks back into `logs`; returns how many calls were restored.
    /// Apps go by name and scopes by label, so a reordered config still finds its buckets.
    fn restore_logs(&mut self, now: Micros, window: Micros, l: &Limiter, cap: usize) -> usize {
        let (logs, apps) = (&l.logs, &l.apps);
        let mut restored = 0;
        for sb in std::mem::take(&mut self.buckets) {
            let (Some(app), Some(scope)) = (apps.index_of(&sb.app), Scope::parse(&sb.scope)) else {
                continue;
            };
            let key = BucketKey { app, scope };
            let key = &*logs.route(apps, &key, cap, now, window);
            let Some(limit) = apps.limit_of(key) else {
                continue;
            };
            let bucket = logs.get_or_insert(key, limit);
            let mut b = bucket.lock_unpoisoned();
            for t in sb.done {
                if t + window > now {
                    b.record(t);
                    restored += 1;
                }
            }
            b.blocked_until = b.blocked_until.max(sb.blocked_until);
        }
        restored
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
