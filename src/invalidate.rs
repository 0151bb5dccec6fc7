//! Invalidation: the one way to drop cached views of an object, here and on the other replicas.
//!
//! Writes, webhook events and the admin purge all come through here, and so do the purges other
//! replicas announce through Redis. It owns the rule that a purge made here is told to the others
//! (when buckets are shared) and that a lost subscription clears the whole cache. It never decides
//! what to purge: callers name the app and the path prefix.

use std::sync::Arc;

use crate::cache::ResponseCache;
use crate::limits::redis::{Event, RedisLink};
use crate::limits::Limiter;

/// Drops cached entries; cheap to clone (handles only).
#[derive(Clone)]
pub struct Invalidator {
    cache: Arc<ResponseCache>,
    /// The link to the other replicas, when buckets are shared through Redis.
    link: Option<Arc<RedisLink>>,
    /// Facts learned by other replicas ride on the same events; they are the limiter's.
    limiter: Arc<Limiter>,
    /// App names by index: events name apps, never indexes (replicas may order apps differently).
    apps: Arc<[String]>,
}

impl Invalidator {
    pub fn new(cache: Arc<ResponseCache>, limiter: Arc<Limiter>, apps: Vec<String>) -> Invalidator {
        Invalidator {
            cache,
            link: limiter.redis().cloned(),
            limiter,
            apps: apps.into(),
        }
    }

    /// Drops the entries of `app` under `prefix` here and tells the other replicas. Returns how many
    /// were dropped here.
    pub fn purge(&self, app: usize, prefix: &str) -> usize {
        self.tell_others(app, prefix);
        self.cache.purge(app, prefix)
    }

    /// Tells the other replicas only: for a successful write, whose own entries the cache step
    /// already dropped here.
    pub fn tell_others(&self, app: usize, prefix: &str) {
        if let (Some(link), Some(name)) = (&self.link, self.apps.get(app)) {
            link.publish(Event::Purge {
                app: name.clone(),
                prefix: prefix.to_string(),
            });
        }
    }

    /// Applies what another replica announced: entries to drop, or a learned fact. After a lost
    /// subscription the whole cache goes, since invalidations may have been missed meanwhile.
    pub fn apply(&self, event: &Event) {
        match event {
            Event::Resubscribed => {
                for app in 0..self.apps.len() {
                    self.cache.purge(app, "/");
                }
                tracing::info!(
                    "subscribed to other replicas' events; cleared the cache in case any were missed"
                );
            }
            Event::Purge { app, prefix } => {
                if let Some(i) = self.apps.iter().position(|a| a == app) {
                    let dropped = self.cache.purge(i, prefix);
                    tracing::debug!(app = i, prefix = %prefix, dropped, "purge from another replica");
                }
            }
            Event::Active { .. } | Event::AllocationConfig { .. } => {
                self.limiter.apply_event(event)
            }
        }
    }
}
