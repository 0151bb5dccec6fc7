//! The figures of reloads: `graphgate_config_reloads_total{outcome}` (each outcome at 0 from
//! start), `graphgate_config_info{hash}` (1 for the config in use) and
//! `graphgate_waba_token_dir_wabas{app}` (WABAs with a token from the app's `waba_token_dir`).
//!
//! The hash is computed by the caller from the config with every secret left out; this file never
//! sees a config. Labels are a fixed set of outcomes, a hex digest, and app names from config.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What a reload can come to: applied, the new config invalid, or refused because a key that
/// changes only at a restart changed.
pub const RELOAD_OUTCOMES: [&str; 3] = ["ok", "invalid", "refused"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HashLabels {
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

pub(super) struct ReloadMetrics {
    reloads: Family<OutcomeLabels, Counter>,
    info: Family<HashLabels, Gauge>,
    dir_wabas: Family<AppLabels, Gauge>,
}

impl ReloadMetrics {
    pub(super) fn register(registry: &mut Registry) -> ReloadMetrics {
        let m = ReloadMetrics {
            reloads: Family::default(),
            info: Family::default(),
            dir_wabas: Family::default(),
        };
        for outcome in RELOAD_OUTCOMES {
            let _ = m.reloads.get_or_create(&OutcomeLabels { outcome });
        }
        registry.register(
            "graphgate_config_reloads",
            "Config reloads (SIGHUP, POST /admin/reload, a rotated secret file) by outcome",
            m.reloads.clone(),
        );
        registry.register(
            "graphgate_config_info",
            "1 for the config in use, labelled by a sha256 of it with every secret left out",
            m.info.clone(),
        );
        registry.register(
            "graphgate_waba_token_dir_wabas",
            "WABAs whose token comes from the app's waba_token_dir",
            m.dir_wabas.clone(),
        );
        m
    }

    pub(super) fn record(&self, outcome: &'static str) {
        let outcome = RELOAD_OUTCOMES
            .into_iter()
            .find(|o| *o == outcome)
            .unwrap_or("invalid");
        self.reloads.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(super) fn set_config(&self, hash: &str, dir_wabas: &[(String, usize)]) {
        self.info.clear();
        self.info
            .get_or_create(&HashLabels {
                hash: hash.to_string(),
            })
            .set(1);
        self.dir_wabas.clear();
        for (app, n) in dir_wabas {
            self.dir_wabas
                .get_or_create(&AppLabels { app: app.clone() })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }
}
