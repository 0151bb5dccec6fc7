//! What decides a bucket's limit: each app's configured limits and WABAs ([`Apps`]), plus what
//! graphgate learned from Meta's answers: which `active = "auto"` WABAs have a registered number,
//! and which ids are allocation configs (kept in [`Known`] for classification). Also the readers
//! that find those facts in a response ([`registered_in`], [`allocation_ids_in`]).
//!
//! It must never override what config fixed (a WABA with `active = true/false` or its own `limit`
//! never moves), never accept an allocation-config id that is not a Graph id, and never touch a
//! bucket's log or Redis: the limiter applies a changed limit and tells the other replicas.

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};

use super::types::Known;
use super::types::{BucketKey, Scope};
use crate::config::{Active, AppLimits, Config};
use crate::sync::{MutexExt, RwLockExt};

/// Every configured app, in config order (a `BucketKey`'s `app` is an index into it), and the
/// object kinds classification reads.
pub(super) struct Apps {
    apps: Vec<App>,
    /// Learned and configured object kinds, read by classification on every request.
    known: RwLock<Known>,
}

struct App {
    name: String,
    limits: AppLimits,
    /// WABA id -> (configured active state, fixed limit).
    wabas: foldhash::HashMap<String, (Active, Option<u32>)>,
    /// Learned state of `active = "auto"` WABAs.
    learned_active: Mutex<foldhash::HashMap<String, bool>>,
}

impl Apps {
    pub(super) fn new(config: &Config) -> Apps {
        let apps = config
            .apps
            .iter()
            .map(|a| App {
                name: a.name.clone(),
                limits: a.limits,
                wabas: a
                    .wabas
                    .iter()
                    .map(|w| (w.id.clone(), (w.active, w.limit)))
                    .collect(),
                learned_active: Mutex::new(foldhash::HashMap::default()),
            })
            .collect();
        let mut known = Known::default();
        for app in &config.apps {
            for w in &app.wabas {
                known.wabas.insert(w.id.clone());
                for s in &w.status_ids {
                    known.status_ids.insert(s.clone(), w.id.clone());
                }
            }
        }
        known
            .allocation_configs
            .extend(config.limits.allocation_configs.iter().cloned());
        Apps {
            apps,
            known: RwLock::new(known),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.apps.len()
    }

    /// The app's configured name, or `""` for an index out of range.
    pub(super) fn name(&self, app: usize) -> String {
        self.apps
            .get(app)
            .map(|a| a.name.clone())
            .unwrap_or_default()
    }

    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.apps.iter().map(|a| a.name.as_str())
    }

    pub(super) fn index_of(&self, name: &str) -> Option<usize> {
        self.apps.iter().position(|a| a.name == name)
    }

    /// The configured WABA ids of `app`.
    pub(super) fn wabas(&self, app: usize) -> impl Iterator<Item = &String> {
        self.apps.get(app).into_iter().flat_map(|a| a.wabas.keys())
    }

    /// Whether `app`'s config names `waba` (else its bucket counts against `max_unknown_buckets`).
    pub(super) fn configures(&self, app: usize, waba: &str) -> bool {
        self.apps
            .get(app)
            .is_some_and(|a| a.wabas.contains_key(waba))
    }

    /// The limit of a bucket now, or `None` for an unlimited one.
    pub(super) fn limit_of(&self, key: &BucketKey) -> Option<u32> {
        let app = self.apps.get(key.app)?;
        match &key.scope {
            Scope::CreditLine => Some(app.limits.credit_line),
            Scope::Other => app.limits.other,
            Scope::Waba(id) => {
                let (active, fixed) = app.wabas.get(id).copied().unwrap_or((Active::Auto, None));
                if let Some(n) = fixed {
                    return Some(n);
                }
                let is_active = match active {
                    Active::Yes => true,
                    Active::No => false,
                    Active::Auto => app
                        .learned_active
                        .lock_unpoisoned()
                        .get(id)
                        .copied()
                        .unwrap_or(false),
                };
                Some(if is_active {
                    app.limits.waba_active
                } else {
                    app.limits.waba_default
                })
            }
        }
    }

    /// Records whether an auto WABA is active; true if that changed anything.
    pub(super) fn set_active(&self, app: usize, waba: &str, active: bool) -> bool {
        let Some(policy) = self.apps.get(app) else {
            return false;
        };
        if !matches!(policy.wabas.get(waba), Some((Active::Auto, None))) {
            return false;
        }
        let changed = policy
            .learned_active
            .lock_unpoisoned()
            .insert(waba.to_string(), active)
            != Some(active);
        if changed {
            tracing::info!(app = %policy.name, waba, active, "WABA activity learned");
        }
        changed
    }

    /// Every learned (app name, WABA, active), for the state file.
    pub(super) fn learned_active(&self) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        for a in &self.apps {
            for (w, active) in a.learned_active.lock_unpoisoned().iter() {
                out.push((a.name.clone(), w.clone(), *active));
            }
        }
        out
    }

    /// WABAs of `active = "auto"` that a probe should look at, per app.
    pub(super) fn auto_wabas(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, a) in self.apps.iter().enumerate() {
            for (id, (active, fixed)) in &a.wabas {
                if *active == Active::Auto && fixed.is_none() {
                    out.push((i, id.clone()));
                }
            }
        }
        out.sort();
        out
    }

    /// Runs `f` with the current object kinds (for classification).
    pub(super) fn with_known<R>(&self, f: impl FnOnce(&Known) -> R) -> R {
        f(&self.known.read_unpoisoned())
    }

    /// Adds an allocation-config id; true if it is a Graph id not known before.
    pub(super) fn add_allocation_config(&self, id: &str) -> bool {
        crate::ids::is_graph_id(id)
            && self
                .known
                .write_unpoisoned()
                .allocation_configs
                .insert(id.to_string())
    }

    /// Adds WABA ids known from outside the file's WABA list (a `waba_token_dir`), so calls on them
    /// count to a WABA bucket. Never removes one: an id that was a WABA stays one.
    pub(super) fn add_wabas<'a>(&self, ids: impl IntoIterator<Item = &'a String>) {
        let mut known = self.known.write_unpoisoned();
        for id in ids {
            if !known.wabas.contains(id) {
                known.wabas.insert(id.clone());
            }
        }
    }

    /// Adds restored allocation-config ids as they are (they were checked when first learned).
    pub(super) fn extend_allocation_configs(&self, ids: Vec<String>) {
        self.known.write_unpoisoned().allocation_configs.extend(ids);
    }

    /// Every known allocation-config id, sorted, for the state file.
    pub(super) fn allocation_configs(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .known
            .read_unpoisoned()
            .allocation_configs
            .iter()
            .cloned()
            .collect();
        out.sort();
        out
    }
}

/// Which WABAs in a `phone_numbers` listing count as registered (docs/limits.md): a number whose
/// `platform_type` is CLOUD_API or ON_PREMISE. `None` when the listing does not say.
pub fn registered_in(listing: &serde_json::Value) -> Option<bool> {
    let data = listing.get("data")?.as_array()?;
    let mut saw_field = false;
    for n in data {
        if let Some(p) = n.get("platform_type").and_then(|p| p.as_str()) {
            saw_field = true;
            if p == "CLOUD_API" || p == "ON_PREMISE" {
                return Some(true);
            }
        }
    }
    // An empty listing is a clear "no numbers"; numbers without the field say nothing.
    (saw_field || data.is_empty()).then_some(false)
}

/// Ids of allocation configs named in a credit-line response.
pub fn allocation_ids_in(body: &serde_json::Value) -> HashSet<String> {
    let mut out = HashSet::new();
    if let Some(id) = body.get("allocation_config_id").and_then(|v| v.as_str()) {
        out.insert(id.to_string());
    }
    if let Some(data) = body.get("data").and_then(|d| d.as_array()) {
        for item in data {
            if let Some(id) = item.get("id").and_then(|v| v.as_str()) {
                out.insert(id.to_string());
            }
        }
    }
    out
}
