//! What a reload compares, reports and watches, as functions of configs: the keys that change
//! only at a restart ([`restart_only_changes`]), the secret-free hash of a config
//! ([`config_hash`]), the [`Report`] a reload answers with, and the [`Fingerprint`] of the secret
//! files and token directories that the rotation watcher polls. The gateway applies a reload
//! (`Gateway::reload`); this file decides nothing about the running state.
//!
//! It must never put a secret into a report, a hash input or a log line: secrets are left out of
//! the hash (their `Debug` is redacted and the Redis URL is skipped), and reports carry problem
//! texts of the config loader, which name keys and files, never values.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Config;

/// How often the watcher looks at the secret files and token directories (mtime, length, inode):
/// a rotated token is in use within about this long, plus the reload itself.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The most directory entries a fingerprint looks at per directory (the loader refuses more).
const MAX_DIR_ENTRIES: usize = 100_000;

/// What one reload came to, as `POST /admin/reload` answers it and the log records it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `ok`, `invalid` (the new config has problems) or `refused` (a restart-only key changed).
    pub outcome: &'static str,
    /// What triggered it: `sighup`, `admin`, `watch`.
    pub trigger: &'static str,
    /// The config's problems (as `check-config` prints them), or the restart-only keys changed.
    pub problems: Vec<String>,
    /// Applied anyway, but worth knowing (skipped token files, secrets webhooks keep until a restart).
    pub warnings: Vec<String>,
    /// The hash of the config in use after this reload (the old one unless `ok`).
    pub hash: String,
    /// Cached answers dropped because the token their object is called with changed owner.
    pub purged: usize,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.outcome == "ok"
    }
}

/// The keys whose change `new` brings that a running gateway cannot take: each needs a restart.
/// Empty when `new` can be swapped in. Secrets are never compared here (they always can change).
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    fn differ(out: &mut Vec<String>, key: &str, a: String, b: String) {
        if a != b {
            out.push(key.to_string());
        }
    }
    macro_rules! fields {
        ($prefix:literal, $a:expr, $b:expr, [$($f:ident),* $(,)?]) => {
            $( differ(&mut out, concat!($prefix, stringify!($f)), format!("{:?}", $a.$f), format!("{:?}", $b.$f)); )*
        };
    }
    let (s, t) = (&old.server, &new.server);
    fields!(
        "server.",
        s,
        t,
        [
            listen,
            max_body,
            max_form_body,
            max_rewrite_body,
            max_uri,
            max_headers,
            max_header_bytes,
            shutdown_grace,
            worker_threads,
            admin_listen,
            first_byte_timeout,
            header_timeout,
            keepalive_timeout,
            h2_ping_interval,
            h2_ping_timeout,
            body_timeout,
            preauth_body_timeout,
            preauth_reads,
            max_connections,
            max_in_flight
        ]
    );
    differ(
        &mut out,
        "server.tls_cert_file/tls_key_file",
        format!("{:?}", s.tls),
        format!("{:?}", t.tls),
    );
    differ(
        &mut out,
        "server.auth",
        format!("{:?}", old.auth),
        format!("{:?}", new.auth),
    );
    let (u, v) = (&old.upstream, &new.upstream);
    fields!(
        "upstream.",
        u,
        v,
        [
            url,
            connect_timeout,
            request_timeout,
            pool_idle_timeout,
            pool_max_idle_per_host,
            body_idle_timeout,
            body_timeout
        ]
    );
    differ(
        &mut out,
        "upstream.ca_file",
        format!("{:?}", u.ca_roots),
        format!("{:?}", v.ca_roots),
    );
    let (l, m) = (&old.limits, &new.limits);
    fields!(
        "limits.",
        l,
        m,
        [
            window,
            defaults,
            on_limit,
            max_wait,
            reserve_percent,
            state_file,
            state_interval,
            active_refresh,
            throttle_block,
            allocation_configs
        ]
    );
    differ(
        &mut out,
        "limits.backend/redis_*/replicas/on_backend_error/backend_timeout",
        format!("{:?}", l.redis),
        format!("{:?}", m.redis),
    );
    differ(
        &mut out,
        "limits.redis_url",
        l.redis.as_ref().map(|r| r.url.clone()).unwrap_or_default(),
        m.redis.as_ref().map(|r| r.url.clone()).unwrap_or_default(),
    );
    let apps = |c: &Config| -> Vec<(String, String)> {
        c.apps
            .iter()
            .map(|a| (a.name.clone(), a.id.clone()))
            .collect()
    };
    if apps(old) != apps(new) {
        out.push("app (adding, removing or reordering an [[app]], or its name or id)".into());
    } else {
        for (i, (a, b)) in old.apps.iter().zip(&new.apps).enumerate() {
            if a.limits != b.limits {
                out.push(format!("app[{i}].limits"));
            }
            if wabas(a) != wabas(b) {
                out.push(format!(
                    "app[{i}].waba (a WABA listed in the file, or its active, limit, phone_numbers or status_ids; a waba_token_dir file needs no restart)"
                ));
            }
        }
    }
    // The limiter keeps one `rate` quota per client position.
    for i in 0..old.clients.len().max(new.clients.len()) {
        let rate = |c: &Config| c.clients.get(i).and_then(|c| c.rate);
        if rate(old) != rate(new) {
            out.push(format!("client[{i}].rate"));
        }
    }
    let (c, d) = (&old.cache, &new.cache);
    differ(&mut out, "cache", format!("{c:?}"), format!("{d:?}"));
    differ(
        &mut out,
        "webhooks",
        webhooks_text(old).unwrap_or_default(),
        webhooks_text(new).unwrap_or_default(),
    );
    out
}

/// What the webhook receiver keeps from the config until a restart, though it may change: said in
/// the report's warnings so the operator knows to restart.
pub fn kept_until_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let (Some(a), Some(b)) = (&old.webhooks, &new.webhooks) else {
        return out;
    };
    if a.verify_token != b.verify_token {
        out.push("webhooks.verify_token changed: the webhook handshake uses the new one only after a restart".into());
    }
    let secret = |s: &crate::config::Subscriber| s.secret.clone();
    if a.subscribers
        .iter()
        .map(secret)
        .ne(b.subscribers.iter().map(secret))
    {
        out.push("webhooks.subscriber secret changed: deliveries are signed with the new one only after a restart".into());
    }
    for (i, (x, y)) in old.apps.iter().zip(&new.apps).enumerate() {
        if x.app_secret != y.app_secret {
            out.push(format!("app[{i}].app_secret changed: appsecret_proof uses it now; webhook signatures are checked with the old one until a restart"));
        }
    }
    out
}

/// A WABA list in a fixed order, without tokens.
fn wabas(a: &crate::config::App) -> Vec<String> {
    let mut v: Vec<String> = a
        .wabas
        .iter()
        .map(|w| {
            format!(
                "{} {:?} {:?} {:?} {:?}",
                w.id, w.active, w.limit, w.phone_numbers, w.status_ids
            )
        })
        .collect();
    v.sort();
    v
}

/// `[webhooks]` as text in a fixed order (subscriber field sets sorted), secrets redacted.
fn webhooks_text(c: &Config) -> Option<String> {
    let w = c.webhooks.as_ref()?;
    let mut text = format!(
        "{} {} {:?} {} {:?} {:?} {} {:?} {:?}",
        w.path,
        w.max_body,
        w.queue_dir,
        w.max_queue,
        w.retry_initial,
        w.retry_max,
        w.max_attempts,
        w.max_age,
        w.delivery_timeout
    );
    for s in &w.subscribers {
        let mut fields: Vec<&String> = s.fields.iter().flatten().collect();
        fields.sort();
        let _ = write!(text, " [{} {} {:?}]", s.name, s.url, fields);
    }
    Some(text)
}

/// A short sha256 (16 hex digits) of the effective config with every secret left out: equal for
/// equal configs on every replica, so a fleet's `graphgate_config_info` shows who runs what.
/// Tokens, app secrets and the Redis URL are not in it; WABA ids of a token directory are.
pub fn config_hash(c: &Config) -> String {
    let mut text = String::new();
    let _ = write!(
        text,
        "{:?}\n{:?}\n{:?}\n{:?}\n",
        c.server, c.upstream, c.auth, c.apps
    );
    for k in &c.clients {
        let sorted = |s: Option<Vec<String>>| {
            s.map(|mut v| {
                v.sort();
                v
            })
        };
        let wabas = sorted(k.wabas.as_ref().map(|w| w.iter().cloned().collect()));
        let methods = sorted(
            k.methods
                .as_ref()
                .map(|m| m.iter().map(|m| m.to_string()).collect()),
        );
        let _ = writeln!(
            text,
            "client {} {} {} {:?} {:?} {} {:?} {}",
            k.name,
            hex::encode(k.key_sha256),
            k.app,
            wabas,
            methods,
            k.reserve,
            k.rate,
            k.allow_no_cache
        );
    }
    let _ = write!(
        text,
        "{:?}\n{:?}\n{:?}\n",
        c.limits,
        c.cache,
        webhooks_text(c)
    );
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..8])
}

/// How many WABAs each app's `waba_token_dir` holds, by app name (0 for an app without one).
pub fn dir_wabas(c: &Config) -> Vec<(String, usize)> {
    c.apps
        .iter()
        .map(|a| (a.name.clone(), a.waba_tokens.len()))
        .collect()
}

/// The state of the watched files: mtime, length and inode of each (following symlinks, so a
/// Kubernetes secret's `..data` swap shows), and of every entry of a watched directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, Option<Stat>)>);

/// A file's modification time, length and inode.
type Stat = (SystemTime, u64, u64);

impl Fingerprint {
    pub fn of(paths: &[PathBuf]) -> Fingerprint {
        let mut out = Vec::new();
        for p in paths {
            out.push((p.clone(), stat(p)));
            if p.is_dir() {
                if let Ok(entries) = std::fs::read_dir(p) {
                    let mut inner: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .take(MAX_DIR_ENTRIES)
                        .map(|e| e.path())
                        .collect();
                    inner.sort();
                    out.extend(inner.into_iter().map(|q| {
                        let s = stat(&q);
                        (q, s)
                    }));
                }
            }
        }
        Fingerprint(out)
    }
}

fn stat(p: &std::path::Path) -> Option<Stat> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(extra: &str) -> Config {
        let env = HashMap::from([("T".to_string(), "EAAGtoken".to_string())]);
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:8080"
{extra}
[[app]]
name = "main"
id = "1"
token_env = "T"
[[app.waba]]
id = "100"
[[client]]
name = "a"
key_sha256 = "{}"
wabas = ["100", "200", "300"]
methods = ["GET", "POST", "DELETE"]
"#,
            hex::encode(crate::config::key_digest("key-a-0123456789"))
        );
        Config::from_toml(&text, "t.toml", std::path::Path::new("."), &env).unwrap()
    }

    // The same file gives the same hash every time (no set iteration order leaks in), and a
    // restart-only key is named when it changes.
    #[test]
    fn hash_is_stable_and_listen_is_restart_only() {
        let a = load("");
        assert_eq!(config_hash(&a), config_hash(&load("")));
        assert_eq!(config_hash(&a).len(), 16);
        assert!(restart_only_changes(&a, &load("")).is_empty());
        let b = load("access_log = false");
        assert!(restart_only_changes(&a, &b).is_empty());
        assert_ne!(config_hash(&a), config_hash(&b));
        let c = load("max_connections = 10");
        assert_eq!(restart_only_changes(&a, &c), ["server.max_connections"]);
    }
}
