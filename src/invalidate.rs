//! Invalidation: the one way to drop cached views of an object, here and on the other replicas.
//!
//! Writes, webhook events and the admin purge all come through here, and so do the purges other
//! replicas announce through Redis. It owns the rule that a purge made here is told to the others
//! (when buckets are shared) and that a lost subscription clears the whole cache. It never decides
//! what to purge: callers name the app and the path prefix.

use std::sync::Arc;

use crate::cache::ResponseCache;
use crate::limits::Limiter;
use crate::shared::Event;

/// Drops cached entries; cheap to clone (two handles).
#[derive(Clone)]
pub struct Invalidator {
    cache: Arc<ResponseCache>,
    /// The Redis link rides on the limiter's connection.
    limiter: Arc<Limiter>,
    apps: usize,
}

impl Invalidator {
    pub fn new(cache: Arc<ResponseCache>, limiter: Arc<Limiter>, apps: usize) -> Invalidator {
        Invalidator {
            cache,
            limiter,
            apps,
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
        if self.limiter.shared().is_some() {
            self.limiter.share_purge(app, prefix);
        }
    }

    /// Applies what another replica announced: a learned fact, or entries to drop. After a lost
    /// subscription the whole cache goes, since invalidations may have been missed meanwhile.
    pub fn apply(&self, event: &Event) {
        if *event == Event::Resubscribed {
            for app in 0..self.apps {
                self.cache.purge(app, "/");
            }
            tracing::info!(
                "subscribed to other replicas' events; cleared the cache in case any were missed"
            );
            return;
        }
        if let Some((app, prefix)) = self.limiter.apply_event(event) {
            let dropped = self.cache.purge(app, &prefix);
            tracing::debug!(app, prefix = %prefix, dropped, "purge from another replica");
        }
    }
}
