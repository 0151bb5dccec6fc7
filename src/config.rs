//! Configuration: the TOML file plus `GRAPHGATE_*` environment overrides, parsed whole and validated
//! into a typed [`Config`] before anything binds a port.
//!
//! It owns loading secrets (tokens, app secrets, client keys) from the environment or files. It must
//! never put a secret into an error message, a `Debug` dump or a log line: secrets live in [`Secret`],
//! and serde's messages (which quote offending values) are scrubbed before they are shown.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use sha2::{Digest, Sha256};

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
/// The longest a request waits for Redis before the fallback applies. A LAN round trip takes well
/// under a millisecond; the margin covers a busy host, since a timed-out admission may still have
/// taken its slot in Redis and the fallback then counts it twice.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_millis(500);

const ENV_PREFIX: &str = "GRAPHGATE_";

mod webhooks;
pub use self::webhooks::{Subscriber, Webhooks};

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
}

/// `limits.backend = "redis"`: where the shared buckets live and what to do when Redis is away.
/// Its `Debug` leaves the URL out: it may carry a password.
#[derive(Clone)]
pub struct RedisBackend {
    pub url: String,
    pub prefix: String,
    pub on_error: OnBackendError,
    /// How many replicas share the budget; in `local` fallback each takes `limit / replicas`.
    pub replicas: u32,
    pub timeout: Duration,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("on_error", &self.on_error)
            .field("replicas", &self.replicas)
            .field("timeout", &self.timeout)
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
    pub tls: Option<TlsFiles>,
    pub access_log: bool,
    /// Runtime threads; `None`: one per core available to the process.
    pub worker_threads: Option<usize>,
    /// Where the admin listener binds; `None` when `admin_listen = "off"` (or empty).
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token every admin path but `/healthz` requires, when set.
    pub admin_token: Option<Secret>,
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

// ---------------------------------------------------------------- errors

/// Every problem found in one load, reported together.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One config problem: where (file, key, line when the parser knows it) and what.
#[derive(Debug, Clone)]
pub struct Problem {
    pub file: String,
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    fn one(file: &str, key: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem {
                file: file.to_string(),
                key: key.to_string(),
                line,
                message: message.into(),
            }],
        }
    }
}

// ---------------------------------------------------------------- raw (serde) config

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    app: Vec<RawApp>,
    #[serde(default)]
    client: Vec<RawClient>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    cache: RawCache,
    webhooks: Option<webhooks::RawWebhooks>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    window: Option<Dur>,
    waba_default: Option<i64>,
    waba_active: Option<i64>,
    credit_line: Option<i64>,
    other: Option<i64>,
    on_limit: Option<String>,
    max_wait: Option<Dur>,
    reserve_percent: Option<i64>,
    state_file: Option<PathBuf>,
    state_interval: Option<Dur>,
    active_refresh: Option<Dur>,
    throttle_block: Option<Dur>,
    #[serde(default, deserialize_with = "id_list")]
    allocation_configs: Vec<String>,
    backend: Option<String>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    on_backend_error: Option<String>,
    replicas: Option<i64>,
    backend_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAppLimits {
    waba_default: Option<i64>,
    waba_active: Option<i64>,
    credit_line: Option<i64>,
    other: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    public_url: Option<String>,
    auth: Option<String>,
    max_body: Option<Size>,
    max_form_body: Option<Size>,
    max_rewrite_body: Option<Size>,
    max_uri: Option<Size>,
    max_headers: Option<i64>,
    max_header_bytes: Option<Size>,
    shutdown_grace: Option<Dur>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    access_log: Option<bool>,
    worker_threads: Option<i64>,
    admin_listen: Option<String>,
    /// Present only so that an inline token gets a clear refusal; its value is never read or shown.
    admin_token: Option<de::IgnoredAny>,
    admin_token_env: Option<String>,
    admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Option<String>,
    connect_timeout: Option<Dur>,
    request_timeout: Option<Dur>,
    pool_idle_timeout: Option<Dur>,
    pool_max_idle_per_host: Option<i64>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Option<String>,
    #[serde(default, deserialize_with = "opt_id")]
    id: Option<String>,
    /// Present only so that an inline token gets a clear refusal; its value is never read or shown.
    token: Option<de::IgnoredAny>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    app_secret: Option<de::IgnoredAny>,
    app_secret_env: Option<String>,
    app_secret_file: Option<PathBuf>,
    appsecret_proof: Option<String>,
    limits: Option<RawAppLimits>,
    #[serde(default)]
    waba: Vec<RawWaba>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWaba {
    #[serde(default, deserialize_with = "opt_id")]
    id: Option<String>,
    active: Option<RawActive>,
    token: Option<de::IgnoredAny>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "id_list")]
    phone_numbers: Vec<String>,
    limit: Option<i64>,
    #[serde(default, deserialize_with = "id_list")]
    status_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawActive {
    Bool(bool),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Option<String>,
    key: Option<de::IgnoredAny>,
    key_sha256: Option<String>,
    key_env: Option<String>,
    app: Option<String>,
    #[serde(default, deserialize_with = "opt_id_list")]
    wabas: Option<Vec<String>>,
    methods: Option<Vec<String>>,
    reserve: Option<String>,
    rate: Option<String>,
    allow_no_cache: Option<bool>,
}

/// A duration written as `30s`, `1h`, `500ms` (humantime).
#[derive(Debug, Clone, Copy)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).map_err(de::Error::custom)
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration like 30s, 5m or 1h ({e})"))
}

/// A byte size written as `256MiB`, `8KiB`, `1MB` or a plain integer of bytes.
#[derive(Debug, Clone, Copy)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(i64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) if n >= 0 => Ok(Size(n as u64)),
            Either::N(n) => Err(de::Error::custom(format!("size {n} is negative"))),
            Either::S(s) => parse_size(&s).map(Size).map_err(de::Error::custom),
        }
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "not a size like 512KiB, 256MiB or 1GiB".to_string())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err("unknown size unit (use B, KiB, MiB, GiB, KB, MB, GB)".to_string()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "size is too large".to_string())
}

/// Graph ids are strings, but TOML users often write them as integers; accept both.
fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(Id::deserialize(d)?.0))
}

fn id_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<Id>::deserialize(d)?
        .into_iter()
        .map(|i| i.0)
        .collect())
}

fn opt_id_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    id_list(d).map(Some)
}

struct Id(String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        Ok(Id(match Either::deserialize(d)? {
            Either::N(n) => n.to_string(),
            Either::S(s) => s,
        }))
    }
}

// ---------------------------------------------------------------- loading

/// Where secrets and overrides come from; tests pass their own map instead of the process env.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    fn vars(&self) -> Vec<(String, String)>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl Config {
    /// Reads, overrides, deserializes and validates the file at `path`.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(&file, "", None, format!("cannot read the file: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, &file, base, env)
    }

    /// Like [`Config::load`] with the file's text given; `base` resolves relative `*_file` paths.
    pub fn from_toml(
        text: &str,
        file: &str,
        base: &Path,
        env: &dyn Env,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError::one(file, "", line, scrub(e.message()))
        })?;
        let overridden = apply_env_overrides(&mut table, env, file)?;
        let raw = match RawConfig::deserialize(toml::Value::Table(table)) {
            Ok(raw) => raw,
            Err(e) => {
                // Deserializing the text again gives the parser's line for problems in the file
                // itself; otherwise the override was to blame.
                if let Err(e2) = toml::from_str::<RawConfig>(text) {
                    let line = e2.span().map(|s| line_of(text, s.start));
                    return Err(ConfigError::one(
                        file,
                        &key_in_file(text, &e2),
                        line,
                        scrub(e2.message()),
                    ));
                }
                let vars = overridden.join(", ");
                return Err(ConfigError::one(
                    file,
                    &key_hint(&e),
                    None,
                    format!(
                        "{} (set by environment override {vars})",
                        scrub(e.message())
                    ),
                ));
            }
        };
        Validator {
            file,
            base,
            env,
            problems: Vec::new(),
            limit_defaults: AppLimits::default(),
        }
        .validate(raw)
    }

    pub fn app_by_name(&self, name: &str) -> Option<usize> {
        self.apps.iter().position(|a| a.name == name)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// serde quotes offending values (`invalid type: string "EAA..."`); a value in the wrong place may
/// be a secret, so quoted strings (escapes included) are blanked out of every message we show. A
/// quote character named by the parser (``expected `"` ``) is kept, so it does not swallow the rest
/// of the message.
fn scrub(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_quote = false;
    let mut prev = None;
    let mut chars = msg.chars().peekable();
    while let Some(c) = chars.next() {
        let named = c == '"' && prev == Some('`') && chars.peek() == Some(&'`');
        prev = Some(c);
        if named && !in_quote {
            out.push(c);
        } else if in_quote && c == '\\' {
            // serde quotes with `{:?}`: `\"` inside the value does not end it.
            chars.next();
            prev = None;
        } else if c == '"' {
            if in_quote {
                out.push_str("\"<value>\"");
            }
            in_quote = !in_quote;
        } else if !in_quote {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

/// The toml error's keys, e.g. `app[0].waba` ; empty when unknown.
fn key_hint(e: &toml::de::Error) -> String {
    let m = e.message();
    // deny_unknown_fields: "unknown field `foo`, expected ..."
    if let Some(rest) = m.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            return rest[..end].to_string();
        }
    }
    if let Some(rest) = m.strip_prefix("missing field `") {
        if let Some(end) = rest.find('`') {
            return rest[..end].to_string();
        }
    }
    String::new()
}

/// The dotted key a toml error in the file points at, e.g. `server.max_body` or
/// `app.waba.phone_number`: the table header above the error plus the key on its line (or the
/// unknown field's name). serde's value errors carry no key, only a span.
fn key_in_file(text: &str, e: &toml::de::Error) -> String {
    let hint = key_hint(e);
    let Some(span) = e.span() else {
        return hint;
    };
    let before = &text[..span.start.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let leaf = if hint.is_empty() {
        before[line_start..]
            .split_once('=')
            .map(|(k, _)| k.trim().to_string())
            .unwrap_or_default()
    } else {
        hint
    };
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .and_then(|l| l.trim_start_matches('[').split(']').next())
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    [table, leaf]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

/// `GRAPHGATE_SERVER__LISTEN=0.0.0.0:8080` sets `server.listen`; `GRAPHGATE_APP__0__ID=1` sets
/// `app[0].id`. Values are read as TOML (numbers, booleans, arrays) where they parse, else as strings,
/// and keep the type of the value they replace when that is a string.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: &dyn Env,
    file: &str,
) -> Result<Vec<String>, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .vars()
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    vars.sort();
    let mut applied = Vec::new();
    for (name, value) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::one(
                file,
                &name,
                None,
                "malformed environment override name",
            ));
        }
        set_path(table, &path, &value).map_err(|m| {
            ConfigError::one(
                file,
                &path.join("."),
                None,
                format!("environment override {name}: {m}"),
            )
        })?;
        applied.push(name);
    }
    Ok(applied)
}

fn set_path(table: &mut toml::Table, path: &[String], value: &str) -> Result<(), String> {
    let (first, rest) = path.split_first().ok_or("empty key")?;
    if rest.is_empty() {
        let keep_string = matches!(table.get(first), Some(toml::Value::String(_)));
        table.insert(first.clone(), env_value(value, keep_string));
        return Ok(());
    }
    let entry = table.entry(first.clone()).or_insert_with(|| {
        if rest[0].parse::<usize>().is_ok() {
            toml::Value::Array(Vec::new())
        } else {
            toml::Value::Table(toml::Table::new())
        }
    });
    match entry {
        toml::Value::Table(t) => set_path(t, rest, value),
        toml::Value::Array(items) => {
            let idx: usize = rest[0]
                .parse()
                .map_err(|_| format!("`{first}` is a list; the next part must be an index"))?;
            if idx > items.len() {
                return Err(format!(
                    "index {idx} of `{first}` skips entries (it has {})",
                    items.len()
                ));
            }
            if idx == items.len() {
                items.push(toml::Value::Table(toml::Table::new()));
            }
            let tail = &rest[1..];
            if tail.is_empty() {
                let keep_string = matches!(items[idx], toml::Value::String(_));
                items[idx] = env_value(value, keep_string);
                return Ok(());
            }
            match &mut items[idx] {
                toml::Value::Table(t) => set_path(t, tail, value),
                _ => Err(format!("`{first}[{idx}]` is not a table")),
            }
        }
        _ => Err(format!("`{first}` is not a table")),
    }
}

fn env_value(value: &str, keep_string: bool) -> toml::Value {
    if !keep_string {
        if let Ok(t) = format!("v = {value}").parse::<toml::Table>() {
            if let Some(v) = t.get("v") {
                return v.clone();
            }
        }
    }
    toml::Value::String(value.to_string())
}

// ---------------------------------------------------------------- validation

struct Validator<'a> {
    file: &'a str,
    base: &'a Path,
    env: &'a dyn Env,
    problems: Vec<Problem>,
    /// `[limits]` values that each `[app.limits]` starts from.
    limit_defaults: AppLimits,
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

/// `"10/s"`, `"600/m"`, `"5000/h"`, or `"3/500ms"`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let err = || "must look like 10/s, 600/m, 5000/h or 3/500ms".to_string();
    let (n, per) = s.split_once('/').ok_or_else(err)?;
    let count: u32 = n.trim().parse().map_err(|_| err())?;
    if count == 0 {
        return Err("the count must be greater than zero".into());
    }
    let per = match per.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        other => humantime::parse_duration(other).map_err(|_| err())?,
    };
    if per.is_zero() {
        return Err(err());
    }
    Ok(Rate { count, per })
}

impl Validator<'_> {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            key: key.into(),
            line: None,
            message: message.into(),
        });
    }

    fn validate(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(raw.server);
        let upstream = self.upstream(raw.upstream);
        let limits = self.limits(raw.limits);
        self.limit_defaults = limits.defaults;
        let cache = self.cache(raw.cache);
        let hooks = raw.webhooks.and_then(|w| self.webhooks(w));
        let auth = server.1;
        // Names and counts come from the file, not from the entries that validated, so one bad
        // [[app]] or [[client]] does not also cause "unknown app" or "none configured" problems.
        // When the config is returned every entry validated, so indexes into the two agree.
        let app_names: Vec<String> = raw
            .app
            .iter()
            .map(|a| a.name.clone().unwrap_or_default())
            .collect();
        let client_count = raw.client.len();
        let apps: Vec<App> = raw
            .app
            .into_iter()
            .enumerate()
            .filter_map(|(i, a)| self.app(i, a))
            .collect();
        self.unique_apps(&app_names);
        let clients: Vec<Client> = raw
            .client
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| self.client(i, c, &app_names))
            .collect();
        if app_names.is_empty() {
            self.problem("app", "at least one [[app]] is required");
        }
        if hooks.is_some() && !apps.is_empty() && apps.iter().all(|a| a.app_secret.is_none()) {
            self.problem(
                "webhooks",
                "Meta signs webhooks with the app secret: set app_secret_env or app_secret_file on the subscribed [[app]]",
            );
        }
        match auth {
            AuthMode::Keys if client_count == 0 && !app_names.is_empty() => {
                self.problem("client", "at least one [[client]] is required (or set server.auth = \"none\" on a trusted network)")
            }
            AuthMode::None if app_names.len() > 1 => {
                self.problem("server.auth", "\"none\" serves a single app, but more than one [[app]] is configured")
            }
            _ => {}
        }
        if self.problems.is_empty() {
            Ok(Config {
                server: server.0,
                upstream,
                auth,
                apps,
                clients,
                limits,
                cache,
                webhooks: hooks,
            })
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }

    fn server(&mut self, r: RawServer) -> (Server, AuthMode) {
        let listen = match r.listen.as_deref().unwrap_or(DEFAULT_LISTEN).parse() {
            Ok(a) => a,
            Err(_) => {
                self.problem(
                    "server.listen",
                    "must be an address like 127.0.0.1:8080 or [::]:8080",
                );
                DEFAULT_LISTEN
                    .parse()
                    .expect("default listen address parses")
            }
        };
        let public_url = r
            .public_url
            .filter(|s| !s.is_empty())
            .and_then(|s| match base_url(&s) {
                Ok(u) => Some(u),
                Err(m) => {
                    self.problem("server.public_url", m);
                    None
                }
            });
        let auth = match r.auth.as_deref() {
            None | Some("keys") => AuthMode::Keys,
            Some("none") => AuthMode::None,
            Some(_) => {
                self.problem("server.auth", "must be \"keys\" or \"none\"");
                AuthMode::Keys
            }
        };
        let tls = match (r.tls_cert_file, r.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: self.base.join(cert),
                key: self.base.join(key),
            }),
            (None, None) => None,
            _ => {
                self.problem(
                    "server.tls_cert_file",
                    "tls_cert_file and tls_key_file must be set together",
                );
                None
            }
        };
        let max_headers = self
            .int_in("server.max_headers", r.max_headers, 1, 10_000)
            .map_or(DEFAULT_MAX_HEADERS, |n| n as usize);
        let server = Server {
            listen,
            public_url,
            max_body: self.positive_size("server.max_body", r.max_body, DEFAULT_MAX_BODY),
            max_form_body: self.positive_size(
                "server.max_form_body",
                r.max_form_body,
                DEFAULT_MAX_FORM_BODY,
            ),
            max_rewrite_body: self.positive_size(
                "server.max_rewrite_body",
                r.max_rewrite_body,
                DEFAULT_MAX_REWRITE_BODY,
            ),
            max_uri: self.positive_size("server.max_uri", r.max_uri, DEFAULT_MAX_URI),
            max_headers,
            max_header_bytes: self.positive_size(
                "server.max_header_bytes",
                r.max_header_bytes,
                DEFAULT_MAX_HEADER_BYTES,
            ),
            shutdown_grace: r
                .shutdown_grace
                .map(|d| d.0)
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            tls,
            access_log: r.access_log.unwrap_or(true),
            worker_threads: self
                .int_in("server.worker_threads", r.worker_threads, 1, 1024)
                .map(|n| n as usize),
            admin_listen: self.admin_listen(r.admin_listen.as_deref(), listen),
            admin_token: self.secret(
                "server.admin_token",
                r.admin_token.is_some(),
                r.admin_token_env,
                r.admin_token_file,
                false,
            ),
        };
        (server, auth)
    }

    /// `server.admin_listen`: an address, or `"off"`/empty for no admin listener. It may not share
    /// the proxy's address (the proxy port never serves admin paths).
    fn admin_listen(&mut self, raw: Option<&str>, listen: SocketAddr) -> Option<SocketAddr> {
        let raw = raw.unwrap_or(DEFAULT_ADMIN_LISTEN).trim();
        if raw.is_empty() || raw.eq_ignore_ascii_case("off") {
            return None;
        }
        match raw.parse::<SocketAddr>() {
            Ok(a) if a == listen && a.port() != 0 => {
                self.problem(
                    "server.admin_listen",
                    "must differ from server.listen: admin paths are never served on the proxy port",
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    "server.admin_listen",
                    "must be an address like 127.0.0.1:9090, or \"off\"",
                );
                None
            }
        }
    }

    /// An optional whole number within `lo..=hi`; outside it is a problem naming `key`.
    fn int_in(&mut self, key: &str, v: Option<i64>, lo: i64, hi: i64) -> Option<i64> {
        let n = v?;
        if (lo..=hi).contains(&n) {
            Some(n)
        } else {
            self.problem(key, format!("must be between {lo} and {hi}"));
            None
        }
    }

    /// A bucket limit: at least 1, at most a million calls per window.
    fn limit_value(&mut self, key: &str, n: i64) -> Option<u32> {
        if (1..=1_000_000).contains(&n) {
            Some(n as u32)
        } else {
            self.problem(key, "must be a whole number of calls from 1 to 1000000");
            None
        }
    }

    fn limits(&mut self, r: RawLimits) -> Limits {
        let d = AppLimits::default();
        let mut pick = |key: &str, v: Option<i64>, default: u32| match v {
            None => default,
            Some(n) => self
                .limit_value(&format!("limits.{key}"), n)
                .unwrap_or(default),
        };
        let defaults = AppLimits {
            waba_default: pick("waba_default", r.waba_default, d.waba_default),
            waba_active: pick("waba_active", r.waba_active, d.waba_active),
            credit_line: pick("credit_line", r.credit_line, d.credit_line),
            other: r.other.and_then(|n| self.limit_value("limits.other", n)),
        };
        let on_limit = match r.on_limit.as_deref() {
            None | Some("reject") => OnLimit::Reject,
            Some("wait") => OnLimit::Wait,
            Some(_) => {
                self.problem("limits.on_limit", "must be \"reject\" or \"wait\"");
                OnLimit::Reject
            }
        };
        let reserve_percent = self
            .int_in("limits.reserve_percent", r.reserve_percent, 0, 90)
            .map_or(0, |n| n as u32);
        for id in &r.allocation_configs {
            if !crate::ids::is_graph_id(id) {
                self.problem(
                    "limits.allocation_configs",
                    format!("`{id}` is not a numeric Graph id"),
                );
            }
        }
        Limits {
            window: self.positive_duration("limits.window", r.window, DEFAULT_WINDOW),
            defaults,
            on_limit,
            max_wait: r.max_wait.map(|d| d.0).unwrap_or(DEFAULT_MAX_WAIT),
            reserve_percent,
            state_file: r.state_file.map(|p| self.base.join(p)),
            state_interval: self.positive_duration(
                "limits.state_interval",
                r.state_interval,
                DEFAULT_STATE_INTERVAL,
            ),
            active_refresh: self.positive_duration(
                "limits.active_refresh",
                r.active_refresh,
                DEFAULT_ACTIVE_REFRESH,
            ),
            throttle_block: self.positive_duration(
                "limits.throttle_block",
                r.throttle_block,
                DEFAULT_THROTTLE_BLOCK,
            ),
            allocation_configs: r.allocation_configs,
            redis: self.redis_backend(
                r.backend,
                r.redis_url,
                r.redis_prefix,
                r.on_backend_error,
                r.replicas,
                r.backend_timeout,
            ),
        }
    }

    fn redis_backend(
        &mut self,
        backend: Option<String>,
        url: Option<String>,
        prefix: Option<String>,
        on_error: Option<String>,
        replicas: Option<i64>,
        timeout: Option<Dur>,
    ) -> Option<RedisBackend> {
        match backend.as_deref() {
            None | Some("memory") => {
                if url.is_some() {
                    self.problem(
                        "limits.redis_url",
                        "is set, but limits.backend is not \"redis\"",
                    );
                }
                return None;
            }
            Some("redis") => {}
            Some(_) => {
                self.problem("limits.backend", "must be \"memory\" or \"redis\"");
                return None;
            }
        }
        let url = match url {
            Some(u)
                if u.starts_with("redis://")
                    || u.starts_with("redis+unix://")
                    || u.starts_with("unix://") =>
            {
                u
            }
            Some(_) => {
                self.problem(
                    "limits.redis_url",
                    "must start with redis:// (or unix:// for a socket)",
                );
                return None;
            }
            None => {
                self.problem(
                    "limits.redis_url",
                    "is required with limits.backend = \"redis\"",
                );
                return None;
            }
        };
        let on_error = match on_error.as_deref() {
            None | Some("local") => OnBackendError::Local,
            Some("reject") => OnBackendError::Reject,
            Some(_) => {
                self.problem("limits.on_backend_error", "must be \"local\" or \"reject\"");
                OnBackendError::Local
            }
        };
        let replicas = self
            .int_in("limits.replicas", replicas, 1, 1000)
            .map_or(1, |n| n as u32);
        let prefix = prefix.unwrap_or_else(|| "graphgate".to_string());
        if prefix.is_empty() || prefix.contains(char::is_whitespace) {
            self.problem("limits.redis_prefix", "must be a non-empty word");
        }
        Some(RedisBackend {
            url,
            prefix,
            on_error,
            replicas,
            timeout: self.positive_duration(
                "limits.backend_timeout",
                timeout,
                DEFAULT_BACKEND_TIMEOUT,
            ),
        })
    }

    fn app_limits(&mut self, at: &str, r: Option<RawAppLimits>) -> AppLimits {
        let d = self.limit_defaults;
        let Some(r) = r else { return d };
        let mut pick = |key: &str, v: Option<i64>, default: Option<u32>| match v {
            None => default,
            Some(n) => self.limit_value(&format!("{at}.limits.{key}"), n),
        };
        AppLimits {
            waba_default: pick("waba_default", r.waba_default, Some(d.waba_default))
                .unwrap_or(d.waba_default),
            waba_active: pick("waba_active", r.waba_active, Some(d.waba_active))
                .unwrap_or(d.waba_active),
            credit_line: pick("credit_line", r.credit_line, Some(d.credit_line))
                .unwrap_or(d.credit_line),
            other: pick("other", r.other, d.other),
        }
    }

    fn positive_size(&mut self, key: &str, v: Option<Size>, default: u64) -> u64 {
        match v {
            None => default,
            Some(Size(0)) => {
                self.problem(key, "must be greater than zero");
                default
            }
            Some(Size(n)) => n,
        }
    }

    fn positive_duration(&mut self, key: &str, v: Option<Dur>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(Dur(d)) if d.is_zero() => {
                self.problem(key, "must be greater than zero");
                default
            }
            Some(Dur(d)) => d,
        }
    }

    fn upstream(&mut self, r: RawUpstream) -> Upstream {
        let url = match base_url(r.url.as_deref().unwrap_or(DEFAULT_UPSTREAM)) {
            Ok(u) => u,
            Err(m) => {
                self.problem("upstream.url", m);
                DEFAULT_UPSTREAM.parse().expect("default upstream parses")
            }
        };
        let pool_max_idle_per_host = self
            .int_in(
                "upstream.pool_max_idle_per_host",
                r.pool_max_idle_per_host,
                0,
                100_000,
            )
            .map_or(DEFAULT_POOL_MAX_IDLE, |n| n as usize);
        Upstream {
            url,
            connect_timeout: self.positive_duration(
                "upstream.connect_timeout",
                r.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            ),
            request_timeout: self.positive_duration(
                "upstream.request_timeout",
                r.request_timeout,
                DEFAULT_REQUEST_TIMEOUT,
            ),
            pool_idle_timeout: self.positive_duration(
                "upstream.pool_idle_timeout",
                r.pool_idle_timeout,
                DEFAULT_POOL_IDLE_TIMEOUT,
            ),
            pool_max_idle_per_host,
            ca_roots: r.ca_file.map(|f| self.ca_roots(&f)).unwrap_or_default(),
        }
    }

    /// The PEM certificates of `upstream.ca_file`, read now so a bad file fails the load.
    fn ca_roots(&mut self, file: &Path) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        use rustls_pki_types::pem::PemObject;
        let path = self.base.join(file);
        let read = rustls_pki_types::CertificateDer::pem_file_iter(&path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>());
        match read {
            Ok(certs) if !certs.is_empty() => certs,
            Ok(_) => {
                self.problem(
                    "upstream.ca_file",
                    format!("{}: no PEM certificate found", path.display()),
                );
                Vec::new()
            }
            Err(e) => {
                self.problem(
                    "upstream.ca_file",
                    format!("{}: cannot read certificates: {e}", path.display()),
                );
                Vec::new()
            }
        }
    }

    /// Reads a secret from exactly one of an env var or a file. `inline` is set when the user wrote
    /// the secret into the config itself, which is refused.
    fn secret(
        &mut self,
        key: &str,
        inline: bool,
        env_name: Option<String>,
        file: Option<PathBuf>,
        required: bool,
    ) -> Option<Secret> {
        let leaf = key.rsplit('.').next().unwrap_or(key);
        if inline {
            self.problem(
                key,
                format!("an inline secret in the config file is refused: use {leaf}_env (an environment variable) or {leaf}_file (a file, e.g. under /run/secrets)"),
            );
            return None;
        }
        match (env_name, file) {
            (Some(_), Some(_)) => {
                self.problem(
                    format!("{key}_env"),
                    format!("set either {leaf}_env or {leaf}_file, not both"),
                );
                None
            }
            (Some(var), None) => match self.env.var(&var) {
                Some(v) if !v.trim().is_empty() => Some(Secret(v.trim().to_string())),
                Some(_) => {
                    self.problem(
                        format!("{key}_env"),
                        format!("environment variable {var} is empty"),
                    );
                    None
                }
                None => {
                    self.problem(
                        format!("{key}_env"),
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
            },
            (None, Some(path)) => {
                let path = self.base.join(path);
                match std::fs::read_to_string(&path) {
                    Ok(v) if !v.trim().is_empty() => Some(Secret(v.trim().to_string())),
                    Ok(_) => {
                        self.problem(
                            format!("{key}_file"),
                            format!("{} is empty", path.display()),
                        );
                        None
                    }
                    Err(e) => {
                        self.problem(
                            format!("{key}_file"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, None) => {
                if required {
                    self.problem(
                        format!("{key}_env"),
                        format!("missing: set {leaf}_env or {leaf}_file"),
                    );
                }
                None
            }
        }
    }

    fn app(&mut self, i: usize, r: RawApp) -> Option<App> {
        let at = format!("app[{i}]");
        let before = self.problems.len();
        let name = r.name.filter(|n| !n.is_empty());
        if name.is_none() {
            self.problem(format!("{at}.name"), "missing");
        }
        let id = r.id.filter(|s| crate::ids::is_graph_id(s));
        if id.is_none() {
            self.problem(format!("{at}.id"), "missing or not a numeric Graph id");
        }
        let token = self.secret(
            &format!("{at}.token"),
            r.token.is_some(),
            r.token_env,
            r.token_file,
            true,
        );
        let app_secret = self.secret(
            &format!("{at}.app_secret"),
            r.app_secret.is_some(),
            r.app_secret_env,
            r.app_secret_file,
            false,
        );
        let proof = match r.appsecret_proof.as_deref() {
            None | Some("timestamped") => ProofMode::Timestamped,
            Some("classic") => ProofMode::Classic,
            Some(_) => {
                self.problem(
                    format!("{at}.appsecret_proof"),
                    "must be \"timestamped\" or \"classic\"",
                );
                ProofMode::Timestamped
            }
        };
        let mut seen = HashSet::new();
        let mut wabas = Vec::new();
        for (j, w) in r.waba.into_iter().enumerate() {
            let wat = format!("{at}.waba[{j}]");
            let id = match w.id.filter(|s| crate::ids::is_graph_id(s)) {
                Some(id) => id,
                None => {
                    self.problem(format!("{wat}.id"), "missing or not a numeric Graph id");
                    continue;
                }
            };
            if !seen.insert(id.clone()) {
                self.problem(
                    format!("{wat}.id"),
                    format!("WABA {id} is listed twice in this app"),
                );
            }
            let active = match w.active {
                None => Active::Auto,
                Some(RawActive::Bool(true)) => Active::Yes,
                Some(RawActive::Bool(false)) => Active::No,
                Some(RawActive::Word(w)) if w == "auto" => Active::Auto,
                Some(RawActive::Word(_)) => {
                    self.problem(format!("{wat}.active"), "must be true, false or \"auto\"");
                    Active::Auto
                }
            };
            let token = self.secret(
                &format!("{wat}.token"),
                w.token.is_some(),
                w.token_env,
                w.token_file,
                false,
            );
            for p in &w.phone_numbers {
                if !crate::ids::is_graph_id(p) {
                    self.problem(
                        format!("{wat}.phone_numbers"),
                        format!("`{p}` is not a numeric Graph id"),
                    );
                }
            }
            let limit = w
                .limit
                .and_then(|n| self.limit_value(&format!("{wat}.limit"), n));
            for sid in &w.status_ids {
                if !crate::ids::is_graph_id(sid) {
                    self.problem(
                        format!("{wat}.status_ids"),
                        format!("`{sid}` is not a numeric Graph id"),
                    );
                }
            }
            wabas.push(Waba {
                id,
                active,
                token,
                phone_numbers: w.phone_numbers,
                limit,
                status_ids: w.status_ids,
            });
        }
        if self.problems.len() > before {
            return None;
        }
        let limits = self.app_limits(&at, r.limits);
        Some(App {
            name: name?,
            id: id?,
            token: token?,
            app_secret,
            proof,
            wabas,
            limits,
        })
    }

    fn unique_apps(&mut self, app_names: &[String]) {
        let mut names = HashSet::new();
        for (i, name) in app_names.iter().enumerate() {
            if !name.is_empty() && !names.insert(name.as_str()) {
                self.problem(
                    format!("app[{i}].name"),
                    format!("app name `{name}` is used twice"),
                );
            }
        }
    }

    fn client(&mut self, i: usize, r: RawClient, app_names: &[String]) -> Option<Client> {
        let at = format!("client[{i}]");
        let before = self.problems.len();
        let name = r.name.filter(|n| !n.is_empty());
        if name.is_none() {
            self.problem(format!("{at}.name"), "missing");
        }
        if r.key.is_some() {
            self.problem(format!("{at}.key"), "an inline client key in the config file is refused: use key_sha256 (hex sha256 of the key) or key_env");
        }
        let key_sha256 = match (r.key_sha256, r.key_env) {
            (Some(_), Some(_)) => {
                self.problem(
                    format!("{at}.key_sha256"),
                    "set either key_sha256 or key_env, not both",
                );
                None
            }
            (Some(h), None) => match hex::decode(h.trim()) {
                Ok(b) if b.len() == 32 => b.try_into().ok(),
                _ => {
                    self.problem(format!("{at}.key_sha256"), "must be 64 hex digits (sha256 of the key, e.g. `printf %s KEY | sha256sum`)");
                    None
                }
            },
            (None, Some(var)) => match self.env.var(&var) {
                Some(k) if k.trim().len() >= 16 => Some(key_digest(k.trim())),
                Some(_) => {
                    self.problem(
                        format!("{at}.key_env"),
                        format!("the key in {var} is shorter than 16 characters"),
                    );
                    None
                }
                None => {
                    self.problem(
                        format!("{at}.key_env"),
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
            },
            (None, None) => {
                self.problem(
                    format!("{at}.key_sha256"),
                    "missing: set key_sha256 or key_env",
                );
                None
            }
        };
        let app = match r.app {
            Some(a) => match app_names.iter().position(|x| *x == a) {
                Some(idx) => Some(idx),
                None => {
                    self.problem(format!("{at}.app"), format!("no [[app]] is named `{a}`"));
                    None
                }
            },
            None if app_names.len() == 1 => Some(0),
            None => {
                self.problem(
                    format!("{at}.app"),
                    "missing (required when more than one [[app]] is configured)",
                );
                None
            }
        };
        let methods = r.methods.map(|ms| {
            ms.iter()
                .filter_map(|m| match m.to_ascii_uppercase().as_str() {
                    "GET" => Some(Method::GET),
                    "POST" => Some(Method::POST),
                    "DELETE" => Some(Method::DELETE),
                    "HEAD" => Some(Method::HEAD),
                    _ => {
                        self.problem(
                            format!("{at}.methods"),
                            format!("`{m}` is not one of GET, POST, DELETE, HEAD"),
                        );
                        None
                    }
                })
                .collect::<HashSet<_>>()
        });
        let wabas = r.wabas.map(|ws| {
            for w in &ws {
                if !crate::ids::is_graph_id(w) {
                    self.problem(
                        format!("{at}.wabas"),
                        format!("`{w}` is not a numeric Graph id"),
                    );
                }
            }
            ws.into_iter().collect::<HashSet<_>>()
        });
        if self.problems.len() > before {
            return None;
        }
        let reserve = match r.reserve.as_deref() {
            None | Some("normal") => false,
            Some("high") => true,
            Some(_) => {
                self.problem(format!("{at}.reserve"), "must be \"high\" or \"normal\"");
                false
            }
        };
        let rate = r.rate.as_deref().and_then(|s| match parse_rate(s) {
            Ok(rate) => Some(rate),
            Err(m) => {
                self.problem(format!("{at}.rate"), m);
                None
            }
        });
        if self.problems.len() > before {
            return None;
        }
        Some(Client {
            name: name?,
            key_sha256: key_sha256?,
            app: app?,
            wabas,
            methods,
            reserve,
            rate,
            allow_no_cache: r.allow_no_cache.unwrap_or(true),
        })
    }
}

// ---------------------------------------------------------------- [cache]

/// Fresh time of a cached read when no `[[cache.rule]]` matches.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// How long past expiry an entry is kept to answer when Meta fails or the budget is spent.
pub const DEFAULT_CACHE_STALE_TTL: Duration = Duration::from_secs(3600);
/// Memory bound of the response cache (bodies, kept headers and keys).
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// The response cache settings (`[cache]`); see `docs/cache.md`.
#[derive(Debug, Clone)]
pub struct Cache {
    pub enabled: bool,
    pub default_ttl: Duration,
    pub stale_ttl: Duration,
    pub max_bytes: u64,
    /// Tried in order; the first rule whose path (and fields) match sets the ttl.
    pub rules: Vec<CacheRule>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            enabled: true,
            default_ttl: DEFAULT_CACHE_TTL,
            stale_ttl: DEFAULT_CACHE_STALE_TTL,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CacheRule {
    pub path: PathPattern,
    /// The rule applies only when the request's `fields` names all of these (empty: always).
    pub fields: Vec<String>,
    /// Zero turns caching off for the route.
    pub ttl: Duration,
    /// Whether stale entries may answer for this route.
    pub stale: bool,
}

/// A `[[cache.rule]]` path such as `/{waba}/message_templates`: `{name}` matches any one segment,
/// other segments match literally. The version prefix of a request is ignored when matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Any,
    Literal(String),
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        let rest = s
            .strip_prefix('/')
            .ok_or_else(|| format!("`{s}` must start with /"))?;
        if rest.is_empty() {
            return Err("the pattern must name at least one segment".into());
        }
        let mut parts = Vec::new();
        for (i, seg) in rest.split('/').enumerate() {
            if seg.is_empty() {
                return Err(format!("`{s}` has an empty segment"));
            }
            if i == 0 && crate::ids::is_version(seg) {
                return Err(format!(
                    "`{s}`: leave the version out (it is ignored when matching)"
                ));
            }
            if let Some(name) = seg.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!("`{seg}` is not a placeholder like {{waba}}"));
                }
                parts.push(Part::Any);
            } else if seg.contains(['{', '}', '?', '%']) {
                return Err(format!(
                    "`{seg}` is neither a placeholder nor a plain segment"
                ));
            } else {
                parts.push(Part::Literal(seg.to_string()));
            }
        }
        Ok(PathPattern(parts))
    }

    /// Whether the request's segments (after the version) match, segment for segment.
    pub fn matches(&self, segments: &[String]) -> bool {
        self.0.len() == segments.len()
            && self.0.iter().zip(segments).all(|(p, s)| match p {
                Part::Any => true,
                Part::Literal(l) => l == s,
            })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    enabled: Option<bool>,
    default_ttl: Option<Dur>,
    stale_ttl: Option<Dur>,
    max_bytes: Option<Size>,
    #[serde(default)]
    rule: Vec<RawCacheRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCacheRule {
    path: Option<String>,
    fields: Option<Vec<String>>,
    ttl: Option<Dur>,
    stale: Option<bool>,
}

impl Validator<'_> {
    fn cache(&mut self, r: RawCache) -> Cache {
        let default_ttl = r.default_ttl.map_or(DEFAULT_CACHE_TTL, |d| d.0);
        let mut rules = Vec::new();
        for (i, raw) in r.rule.into_iter().enumerate() {
            let at = format!("cache.rule[{i}]");
            let path = match raw.path.as_deref().map(PathPattern::parse) {
                Some(Ok(p)) => p,
                Some(Err(m)) => {
                    self.problem(format!("{at}.path"), m);
                    continue;
                }
                None => {
                    self.problem(
                        format!("{at}.path"),
                        "missing (e.g. \"/{waba}/message_templates\")",
                    );
                    continue;
                }
            };
            let fields = raw.fields.unwrap_or_default();
            if fields
                .iter()
                .any(|f| f.is_empty() || f.contains([',', '{', '}']))
            {
                self.problem(format!("{at}.fields"), "each entry must be one field name");
                continue;
            }
            rules.push(CacheRule {
                path,
                fields,
                ttl: raw.ttl.map_or(default_ttl, |d| d.0),
                stale: raw.stale.unwrap_or(true),
            });
        }
        Cache {
            enabled: r.enabled.unwrap_or(true),
            default_ttl,
            stale_ttl: r.stale_ttl.map_or(DEFAULT_CACHE_STALE_TTL, |d| d.0),
            max_bytes: self.positive_size("cache.max_bytes", r.max_bytes, DEFAULT_CACHE_MAX_BYTES),
            rules,
        }
    }
}

/// Parses an absolute http(s) base URL with no query, and drops a trailing slash.
fn base_url(s: &str) -> Result<http::Uri, String> {
    let u: http::Uri = s
        .trim_end_matches('/')
        .parse()
        .map_err(|_| format!("`{s}` is not a URL"))?;
    match u.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{s}` must start with http:// or https://")),
    }
    match u.authority() {
        None => return Err(format!("`{s}` has no host")),
        // Not echoed: the part before `@` would be a password. It would also go out in `Host`.
        Some(a) if a.as_str().contains('@') => {
            return Err("must not carry credentials (user:password@)".to_string())
        }
        Some(_) => {}
    }
    if u.query().is_some() {
        return Err(format!("`{s}` must not have a query"));
    }
    Ok(u)
}

#[cfg(test)]
mod tests;
