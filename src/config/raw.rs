//! The serde shapes of the file: `RawConfig` and the raw `[server]`, `[upstream]`, `[limits]`,
//! `[[app]]` (with its WABAs) and `[[client]]` sections, every key optional so that validation can
//! name each missing one. `[cache]` and `[webhooks]` keep their raw shapes in their own files.
//!
//! It must never check a value (that is `validate`'s work) and never hold a secret: keys that would
//! carry one inline are `IgnoredAny`, present only so that their use gets a clear refusal.

use std::path::PathBuf;

use serde::de;
use serde::Deserialize;

use super::cache::RawCache;
use super::scalar::{id_list, opt_id, opt_id_list, Dur, Size};
use super::webhooks::RawWebhooks;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) app: Vec<RawApp>,
    #[serde(default)]
    pub(super) client: Vec<RawClient>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) cache: RawCache,
    pub(super) webhooks: Option<RawWebhooks>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) window: Option<Dur>,
    pub(super) waba_default: Option<i64>,
    pub(super) waba_active: Option<i64>,
    pub(super) credit_line: Option<i64>,
    pub(super) other: Option<i64>,
    pub(super) on_limit: Option<String>,
    pub(super) max_wait: Option<Dur>,
    pub(super) reserve_percent: Option<i64>,
    pub(super) state_file: Option<PathBuf>,
    pub(super) state_interval: Option<Dur>,
    pub(super) active_refresh: Option<Dur>,
    pub(super) throttle_block: Option<Dur>,
    #[serde(default, deserialize_with = "id_list")]
    pub(super) allocation_configs: Vec<String>,
    pub(super) backend: Option<String>,
    pub(super) redis_url: Option<String>,
    pub(super) redis_prefix: Option<String>,
    pub(super) on_backend_error: Option<String>,
    pub(super) replicas: Option<i64>,
    pub(super) backend_timeout: Option<Dur>,
    pub(super) redis_ca_file: Option<PathBuf>,
    pub(super) redis_client_cert_file: Option<PathBuf>,
    pub(super) redis_client_key_file: Option<PathBuf>,
    pub(super) redis_username: Option<String>,
    pub(super) redis_password_env: Option<String>,
    pub(super) redis_password_file: Option<PathBuf>,
    pub(super) redis_sentinels: Option<Vec<String>>,
    pub(super) redis_master_name: Option<String>,
    pub(super) max_unknown_buckets: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAppLimits {
    pub(super) waba_default: Option<i64>,
    pub(super) waba_active: Option<i64>,
    pub(super) credit_line: Option<i64>,
    pub(super) other: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) public_url: Option<String>,
    pub(super) auth: Option<String>,
    pub(super) max_body: Option<Size>,
    pub(super) max_form_body: Option<Size>,
    pub(super) max_rewrite_body: Option<Size>,
    pub(super) max_uri: Option<Size>,
    pub(super) max_headers: Option<i64>,
    pub(super) max_header_bytes: Option<Size>,
    pub(super) shutdown_grace: Option<Dur>,
    pub(super) drain_delay: Option<Dur>,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
    pub(super) access_log: Option<bool>,
    pub(super) worker_threads: Option<i64>,
    pub(super) admin_listen: Option<String>,
    /// Present only so that an inline token gets a clear refusal; its value is never read or shown.
    pub(super) admin_token: Option<de::IgnoredAny>,
    pub(super) admin_token_env: Option<String>,
    pub(super) admin_token_file: Option<PathBuf>,
    pub(super) first_byte_timeout: Option<Dur>,
    pub(super) header_timeout: Option<Dur>,
    pub(super) keepalive_timeout: Option<Dur>,
    pub(super) h2_ping_interval: Option<Dur>,
    pub(super) h2_ping_timeout: Option<Dur>,
    pub(super) body_timeout: Option<Dur>,
    pub(super) preauth_body_timeout: Option<Dur>,
    pub(super) preauth_reads: Option<i64>,
    pub(super) max_connections: Option<i64>,
    pub(super) max_in_flight: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) url: Option<String>,
    pub(super) connect_timeout: Option<Dur>,
    pub(super) request_timeout: Option<Dur>,
    pub(super) pool_idle_timeout: Option<Dur>,
    pub(super) pool_max_idle_per_host: Option<i64>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) body_idle_timeout: Option<Dur>,
    pub(super) body_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) name: Option<String>,
    #[serde(default, deserialize_with = "opt_id")]
    pub(super) id: Option<String>,
    /// Present only so that an inline token gets a clear refusal; its value is never read or shown.
    pub(super) token: Option<de::IgnoredAny>,
    pub(super) token_env: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) app_secret: Option<de::IgnoredAny>,
    pub(super) app_secret_env: Option<String>,
    pub(super) app_secret_file: Option<PathBuf>,
    pub(super) appsecret_proof: Option<String>,
    pub(super) limits: Option<RawAppLimits>,
    #[serde(default)]
    pub(super) waba: Vec<RawWaba>,
    /// One file per WABA id holding that WABA's token, read at load and watched (`config::token_dir`).
    pub(super) waba_token_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWaba {
    #[serde(default, deserialize_with = "opt_id")]
    pub(super) id: Option<String>,
    pub(super) active: Option<RawActive>,
    pub(super) token: Option<de::IgnoredAny>,
    pub(super) token_env: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "id_list")]
    pub(super) phone_numbers: Vec<String>,
    pub(super) limit: Option<i64>,
    #[serde(default, deserialize_with = "id_list")]
    pub(super) status_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawActive {
    Bool(bool),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) name: Option<String>,
    pub(super) key: Option<de::IgnoredAny>,
    pub(super) key_sha256: Option<String>,
    pub(super) key_env: Option<String>,
    pub(super) app: Option<String>,
    #[serde(default, deserialize_with = "opt_id_list")]
    pub(super) wabas: Option<Vec<String>>,
    pub(super) methods: Option<Vec<String>>,
    pub(super) reserve: Option<String>,
    pub(super) rate: Option<String>,
    pub(super) allow_no_cache: Option<bool>,
}
