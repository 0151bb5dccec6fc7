//! What a reload hands the limiter: the WABA ids of every `waba_token_dir`, so that calls on a WABA
//! known only from its token file count to a WABA bucket (`limits.waba_default`, or the app's),
//! not to `other`. Everything else the limiter was built with changes only at a restart
//! (`crate::reload::restart_only_changes`).
//!
//! It must never forget a WABA, reset a window or touch a bucket's log.

use super::Limiter;
use crate::config::Config;

impl Limiter {
    /// Classifies every WABA of `config`'s token directories as a WABA from now on.
    pub fn know_wabas(&self, config: &Config) {
        for app in &config.apps {
            self.apps.add_wabas(app.waba_tokens.keys());
        }
    }
}
