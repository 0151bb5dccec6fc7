//! What a reload hands the limiter: the WABA ids of every `waba_token_dir`, so that calls on a WABA
//! known only from its token file count to a WABA bucket (`limits.waba_default`, or the app's),
//! not to `other`; and the Redis username and password (a rotated `redis_password_file`).
//! Everything else the limiter was built with changes only at a restart
//! (`crate::reload::restart_only_changes`).
//!
//! It must never forget a WABA, reset a window or touch a bucket's log.

use super::redis::Connector;
use super::Limiter;
use crate::config::Config;

impl Limiter {
    /// Classifies every WABA of `config`'s token directories as a WABA from now on.
    pub fn know_wabas(&self, config: &Config) {
        for app in &config.apps {
            self.apps.add_wabas(app.waba_tokens.keys());
        }
    }

    /// Hands the Redis link `config`'s credentials; it reconnects only if they changed.
    pub async fn redis_access(&self, config: &Config) {
        let (Some(link), Some(r)) = (&self.redis, &config.limits.redis) else {
            return;
        };
        match Connector::new(&r.url, &r.access) {
            Ok(c) => link.set_access(c).await,
            Err(e) => tracing::warn!(error = %e, "the reloaded Redis settings cannot be used"),
        }
    }
}
