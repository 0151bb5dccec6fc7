//! Configuration: the TOML file plus `GRAPHGATE_*` environment overrides, parsed whole and validated
//! into a typed [`Config`] before anything binds a port.
//!
//! This file holds what the rest of the crate reads: [`Config`] and its section types, their
//! `DEFAULT_*` values, [`Secret`] and [`key_digest`]. Every file below `config/` is private and
//! what callers use is re-exported here, so `config::X` stays the one path to anything. The way
//! from text to `Config`, one room each:
//!
//! - `load`: [`Config::load`] and [`Config::from_toml`]; parser errors become [`Problem`]s;
//! - `env`: the [`Env`] that secrets and the `GRAPHGATE_*` overrides come from;
//! - `raw`: the serde shapes of the file; `scalar`: durations, sizes and Graph ids as written;
//! - `check`: the `Validator` that collects every problem, and the checks all sections share;
//! - `validate` (+ `validate/`): raw to typed, section by section, in report order;
//! - `cache` and `webhooks`: each owns its section whole (typed, raw and checks);
//! - `token_dir`: an `[[app]]`'s `waba_token_dir`, one token file per WABA, read at every load;
//! - `error`: [`ConfigError`] and [`Problem`];
//! - `tls`: the server's certificate and key as a rustls config, checked by `load` before binding.
//!
//! `config` is a leaf: besides std and external crates it may use only the crate's `ids` (Graph id
//! and version checks) and `sync` modules. It owns loading secrets (tokens, app secrets, client
//! keys) from the environment or files. It must never put a secret into an error message, a
//! `Debug` dump or a log line: secrets live in [`Secret`], and serde's messages (which quote
//! offending values) are scrubbed before they are shown.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use sha2::{Digest, Sha256};

mod cache;
mod check;
mod env;
mod error;
mod load;
mod raw;
mod scalar;
pub mod tls;
mod token_dir;
mod validate;
mod webhooks;

pub use self::cache::{
    Cache, CacheRule, PathPattern, DEFAULT_CACHE_MAX_BYTES, DEFAULT_CACHE_STALE_TTL,
    DEFAULT_CACHE_TTL,
};
pub use self::env::{Env, ProcessEnv};
pub use self::error::{ConfigError, Problem};
pub use self::scalar::{parse_duration, parse_size, Dur, Size};
pub use self::token_dir::MAX_TOKEN_FILE;
pub use self::validate::parse_rate;
pub use self::webhooks::{Subscriber, Webhooks};

/// Where Meta's Graph API lives.
pub const DEFAULT_UPSTREAM: &str = "https://graph.facebook.com";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The admin listener (/metrics, /healthz, /readyz, /admin): loopback only unless configured.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// TCP connect to Meta; a slow connect usually means a network problem, not load.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Until Meta's response head arrives; template creation can take a few seconds.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_POOL_MAX_IDLE: usize = 64;
/// Longest silence between two chunks of an answer's body from Meta.
pub const DEFAULT_UPSTREAM_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for a body from Meta that graphgate reads whole, from the answer's head.
pub const DEFAULT_UPSTREAM_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Meta accepts media uploads up to 100 MB; leave room for multipart framing.
pub const DEFAULT_MAX_BODY: u64 = 128 * 1024 * 1024;
/// Form bodies are read whole to strip `access_token`; Graph forms are small.
pub const DEFAULT_MAX_FORM_BODY: u64 = 1024 * 1024;
/// JSON responses are read whole to rewrite paging links; larger ones stream unchanged.
pub const DEFAULT_MAX_REWRITE_BODY: u64 = 16 * 1024 * 1024;
pub const DEFAULT_MAX_URI: u64 = 8 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 32 * 1024;
/// In-flight requests get this long to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// After SIGTERM, `/readyz` answers 503 and both listeners keep serving this long, so load
/// balancers (which probe every few seconds) stop routing here before connections are refused.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
/// The longest `server.drain_delay` accepted: a balancer that needs longer is misconfigured.
pub const MAX_DRAIN_DELAY: Duration = Duration::from_secs(600);
/// A new connection must send its first byte (or finish its TLS handshake) within this.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// From the first byte of a request head to its end (HTTP/1.1), like nginx's `client_header_timeout`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in flight (HTTP/1.1 keep-alive, HTTP/2 alike) is closed after this.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP/2 keep-alive pings: sent this often on a connection, which is dropped when one goes
/// unanswered for `DEFAULT_H2_PING_TIMEOUT`.
pub const DEFAULT_H2_PING_INTERVAL: Duration = Duration::from_secs(20);
pub const DEFAULT_H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// A request body graphgate reads whole once the caller is known (a form or small JSON body).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// A body read before the caller is known (a form carrying the key, a webhook post before its
/// signature is checked), waiting for a turn included.
pub const DEFAULT_PREAUTH_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many such reads run at once (for callers, and as many again for webhook posts).
pub const DEFAULT_PREAUTH_READS: usize = 16;
/// Callers' connections held at once (lowered to fit the open-file limit, see `server::overload`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Requests in flight at once; beyond, a 503 with Retry-After.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Meta's rolling window for the WhatsApp Business Management API.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// The seed's rate-limit table.
pub const DEFAULT_WABA_LIMIT: u32 = 200;
pub const DEFAULT_WABA_ACTIVE_LIMIT: u32 = 5000;
pub const DEFAULT_CREDIT_LINE_LIMIT: u32 = 5000;
/// How long a waiting caller may be held when `on_limit = "wait"`.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_STATE_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_ACTIVE_REFRESH: Duration = Duration::from_secs(3600);
/// A bucket Meta throttled without saying when access returns stays closed this long.
pub const DEFAULT_THROTTLE_BLOCK: Duration = Duration::from_secs(60);
/// Per app, ids no config names that may own a bucket; beyond, they share one (docs/limits.md).
pub const DEFAULT_MAX_UNKNOWN_BUCKETS: usize = 1000;
/// The longest a request waits for Redis before the fallback applies. A LAN round trip takes well
/// under a millisecond; the margin covers a busy host, since a timed-out admission may still have
/// taken its slot in Redis and the fallback then counts it twice.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------- typed config

/// The validated configuration. Every field holds a usable value; no further checks are needed.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub upstream: Upstream,
    pub auth: AuthMode,
    pub apps: Vec<App>,
    pub clients: Vec<Client>,
    pub limits: Limits,
    pub cache: Cache,
    /// `[webhooks]`, when Meta's webhooks are received here (`docs/webhooks.md`).
    pub webhooks: Option<Webhooks>,
    /// Every secret file and `waba_token_dir` the load read: what a reload re-reads and what is
    /// watched for rotation (`docs/operations.md`, Reload).
    pub watched: Vec<PathBuf>,
    /// What the load skipped without refusing the config (a bad file in a `waba_token_dir`), named
    /// by key and file name, never by content.
    pub warnings: Vec<String>,
}

/// `[limits]`: the rolling-window budgets and what callers see when one is spent.
#[derive(Debug, Clone)]
pub struct Limits {
    pub window: Duration,
    pub defaults: AppLimits,
    pub on_limit: OnLimit,
    pub max_wait: Duration,
    /// Share of each bucket (percent) only `reserve = "high"` clients may spend.
    pub reserve_percent: u32,
    pub state_file: Option<PathBuf>,
    pub state_interval: Duration,
    pub active_refresh: Duration,
    pub throttle_block: Duration,
    pub allocation_configs: Vec<String>,
    /// `None`: buckets live in this process. `Some`: shared by every replica through Redis.
    pub redis: Option<RedisBackend>,
    /// Per app, how many ids no config names own a bucket; the others share the app's overflow.
    pub max_unknown_buckets: usize,
}

/// `limits.backend = "redis"`: where the shared buckets live and what to do when Redis is away.
/// Its `Debug` leaves the URL and the credentials out.
#[derive(Clone)]
pub struct RedisBackend {
    pub url: String,
    pub prefix: String,
    pub on_error: OnBackendError,
    /// How many replicas share the budget; in `local` fallback each takes `limit / replicas`.
    pub replicas: u32,
    pub timeout: Duration,
    /// How the connection is made and authenticated: TLS, credentials, Sentinel.
    pub access: RedisAccess,
}

/// The credentials and transport of the Redis link (`limits.redis_*`).
#[derive(Clone, Default)]
pub struct RedisAccess {
    /// PEM certificates trusted for `rediss://` instead of the bundled web PKI roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its key (PEM), for servers that ask for one.
    pub client_cert: Option<(Vec<u8>, Secret)>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `host:port` of each Sentinel; empty when `url` names the server itself.
    pub sentinels: Vec<(String, u16)>,
    /// The master's name at the Sentinels (`limits.redis_master_name`).
    pub master_name: String,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("on_error", &self.on_error)
            .field("replicas", &self.replicas)
            .field("timeout", &self.timeout)
            .field("sentinels", &self.access.sentinels)
            .field("master_name", &self.access.master_name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendError {
    /// Fall back to an in-memory bucket holding this replica's share.
    Local,
    /// Answer 503 (transient) until Redis is back.
    Reject,
}

/// Limits per window for one app's buckets; `other = None` leaves calls outside Meta's table
/// unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppLimits {
    pub waba_default: u32,
    pub waba_active: u32,
    pub credit_line: u32,
    pub other: Option<u32>,
}

impl Default for AppLimits {
    fn default() -> Self {
        AppLimits {
            waba_default: DEFAULT_WABA_LIMIT,
            waba_active: DEFAULT_WABA_ACTIVE_LIMIT,
            credit_line: DEFAULT_CREDIT_LINE_LIMIT,
            other: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLimit {
    /// Answer 429 at once.
    Reject,
    /// Hold the request in FIFO order up to `max_wait`, then 429.
    Wait,
}

/// A per-client request rate (`"10/s"`), enforced with governor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    /// Base URL callers use to reach graphgate; paging links are rewritten to it.
    pub public_url: Option<http::Uri>,
    pub max_body: u64,
    pub max_form_body: u64,
    pub max_rewrite_body: u64,
    pub max_uri: u64,
    pub max_headers: usize,
    pub max_header_bytes: u64,
    pub shutdown_grace: Duration,
    /// After SIGTERM: not ready, still serving, for this long (see [`DEFAULT_DRAIN_DELAY`]).
    pub drain_delay: Duration,
    pub tls: Option<TlsFiles>,
    pub access_log: bool,
    /// Runtime threads; `None`: one per core available to the process.
    pub worker_threads: Option<usize>,
    /// Where the admin listener binds; `None` when `admin_listen = "off"` (or empty).
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token every admin path but `/healthz` requires, when set.
    pub admin_token: Option<Secret>,
    /// Connection deadlines (see the `DEFAULT_*` above): first byte, request head, idle, h2 pings.
    pub first_byte_timeout: Duration,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub h2_ping_interval: Duration,
    pub h2_ping_timeout: Duration,
    /// Body read deadlines and the pre-authentication read budget (see the `DEFAULT_*` above).
    pub body_timeout: Duration,
    pub preauth_body_timeout: Duration,
    pub preauth_reads: usize,
    /// Load shedding: connections and requests in flight (see the `DEFAULT_*` above).
    pub max_connections: usize,
    pub max_in_flight: usize,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    /// scheme://authority[/base-path], no trailing slash.
    pub url: http::Uri,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Longest silence between two chunks of an answer's body from Meta (`upstream.body_idle_timeout`).
    pub body_idle_timeout: Duration,
    /// Deadline, from the answer's head, for a body graphgate reads whole (a JSON answer it
    /// rewrites, an answer it caches): `upstream.body_timeout`.
    pub body_timeout: Duration,
    /// Certificate authorities trusted for the upstream instead of the bundled web PKI roots
    /// (`upstream.ca_file`), e.g. a TLS-inspecting egress proxy's; empty for the bundled roots.
    pub ca_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Callers present a client key (the normal mode).
    Keys,
    /// Trusted network: every caller is treated as the single app's anonymous client.
    None,
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub id: String,
    pub token: Secret,
    pub app_secret: Option<Secret>,
    pub proof: ProofMode,
    pub wabas: Vec<Waba>,
    pub limits: AppLimits,
    /// `waba_token_dir`: the directory of per-WABA token files, when set.
    pub waba_token_dir: Option<PathBuf>,
    /// The tokens found there, by WABA id (a WABA listed with its own `token_env`/`token_file`
    /// keeps that one).
    pub waba_tokens: std::collections::BTreeMap<String, Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofMode {
    /// `appsecret_proof = HMAC(secret, token|time)` plus `appsecret_time`: Meta's current form.
    Timestamped,
    /// `appsecret_proof = HMAC(secret, token)`: what most SDKs still send.
    Classic,
}

#[derive(Debug, Clone)]
pub struct Waba {
    pub id: String,
    pub active: Active,
    /// A Business Integration System User token for this customer's WABA, if it has its own.
    pub token: Option<Secret>,
    /// Objects owned by this WABA (phone number ids) that should use its token and allowlist.
    pub phone_numbers: Vec<String>,
    /// A fixed limit for this WABA's bucket, overriding the active/default choice.
    pub limit: Option<u32>,
    /// WABA-to-number-current-status ids, whose GET counts to this WABA.
    pub status_ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Active {
    Yes,
    No,
    Auto,
}

/// A client's index in [`Config::clients`]: a type of its own, so it is never mistaken for an
/// app's index (both are positions in a list of the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(pub usize);

#[derive(Clone)]
pub struct Client {
    pub name: String,
    /// sha256 of the key; the key itself is never kept.
    pub key_sha256: [u8; 32],
    /// Index into [`Config::apps`].
    pub app: usize,
    pub wabas: Option<HashSet<String>>,
    pub methods: Option<HashSet<Method>>,
    /// May spend the reserved share of each bucket.
    pub reserve: bool,
    pub rate: Option<Rate>,
    /// May force a fresh upstream call with `Cache-Control: no-cache`.
    pub allow_no_cache: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("app", &self.app)
            .field("wabas", &self.wabas)
            .field("methods", &self.methods)
            .field("allow_no_cache", &self.allow_no_cache)
            .finish_non_exhaustive()
    }
}

/// A token or secret. It has no `Display`, its `Debug` is redacted, and the only way to read it is
/// [`Secret::expose`], so a stray `{:?}` can never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// sha256 of a client key, as stored in `key_sha256`.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Config {
    pub fn app_by_name(&self, name: &str) -> Option<usize> {
        self.apps.iter().position(|a| a.name == name)
    }
}

#[cfg(test)]
mod tests;
