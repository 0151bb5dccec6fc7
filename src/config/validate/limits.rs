//! The `[limits]` checks: window, bucket limits and their `[app.limits]` overrides, what a caller
//! sees when a bucket is spent, state persistence, and the Redis backend shared by replicas.
//!
//! It must never echo `limits.redis_url` (it may carry a password, which is refused) nor the
//! contents of a password, certificate or key file.

use std::path::{Path, PathBuf};

use super::super::check::Validator;
use super::super::raw::{RawAppLimits, RawLimits};
use super::super::scalar::Dur;
use super::super::{
    AppLimits, Limits, OnBackendError, OnLimit, RedisAccess, RedisBackend, Secret,
    DEFAULT_ACTIVE_REFRESH, DEFAULT_BACKEND_TIMEOUT, DEFAULT_MAX_UNKNOWN_BUCKETS, DEFAULT_MAX_WAIT,
    DEFAULT_STATE_INTERVAL, DEFAULT_THROTTLE_BLOCK, DEFAULT_WINDOW,
};

/// The `limits.*` keys of the Redis backend, as written.
struct RedisKeys {
    backend: Option<String>,
    url: Option<String>,
    prefix: Option<String>,
    on_error: Option<String>,
    replicas: Option<i64>,
    timeout: Option<Dur>,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    sentinels: Option<Vec<String>>,
    master_name: Option<String>,
}

impl Validator<'_> {
    pub(super) fn limits(&mut self, r: RawLimits) -> Limits {
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
            redis: self.redis_backend(RedisKeys {
                backend: r.backend,
                url: r.redis_url,
                prefix: r.redis_prefix,
                on_error: r.on_backend_error,
                replicas: r.replicas,
                timeout: r.backend_timeout,
                ca_file: r.redis_ca_file,
                client_cert_file: r.redis_client_cert_file,
                client_key_file: r.redis_client_key_file,
                username: r.redis_username,
                password_env: r.redis_password_env,
                password_file: r.redis_password_file,
                sentinels: r.redis_sentinels,
                master_name: r.redis_master_name,
            }),
            max_unknown_buckets: self
                .int_in(
                    "limits.max_unknown_buckets",
                    r.max_unknown_buckets,
                    0,
                    1_000_000,
                )
                .map_or(DEFAULT_MAX_UNKNOWN_BUCKETS, |n| n as usize),
        }
    }

    fn redis_backend(&mut self, k: RedisKeys) -> Option<RedisBackend> {
        let RedisKeys {
            backend,
            url,
            prefix,
            on_error,
            replicas,
            timeout,
            ..
        } = k;
        match backend.as_deref() {
            None | Some("memory") => {
                if url.is_some() || k.sentinels.is_some() {
                    self.problem(
                        "limits.redis_url",
                        "is set (or redis_sentinels), but limits.backend is not \"redis\"",
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
        let sentinels = k.sentinels.unwrap_or_default();
        let url = match url {
            None if !sentinels.is_empty() => String::new(),
            Some(_) if !sentinels.is_empty() => {
                self.problem(
                    "limits.redis_url",
                    "set either redis_url or redis_sentinels (with redis_master_name), not both",
                );
                return None;
            }
            Some(u)
                if u.starts_with("redis://")
                    || u.starts_with("rediss://")
                    || u.starts_with("redis+unix://")
                    || u.starts_with("unix://") =>
            {
                // Parsed now (no connection is made), so a URL serve could not use fails the
                // check instead of leaving a replica to spend the whole budget on its own. The
                // parser's message is not echoed: it may quote the URL, password included.
                match redis::IntoConnectionInfo::into_connection_info(u.as_str()) {
                    Err(_) => {
                        self.problem(
                            "limits.redis_url",
                            "is not a usable Redis URL (redis[s]://[user@]host[:port][/db])",
                        );
                        return None;
                    }
                    Ok(info) if info.redis_settings().password().is_some() => {
                        self.problem(
                            "limits.redis_url",
                            "a password written into the URL is an inline secret and is refused: use limits.redis_password_env (an environment variable) or limits.redis_password_file (a file, e.g. under /run/secrets)",
                        );
                        return None;
                    }
                    Ok(_) => u,
                }
            }
            Some(_) => {
                self.problem(
                    "limits.redis_url",
                    "must start with redis:// or rediss:// (TLS), or unix:// for a socket",
                );
                return None;
            }
            None => {
                self.problem(
                    "limits.redis_url",
                    "is required with limits.backend = \"redis\" (or redis_sentinels)",
                );
                return None;
            }
        };
        let access = self.redis_access(
            &url,
            sentinels,
            k.master_name,
            k.username,
            (k.password_env, k.password_file),
            (k.ca_file, k.client_cert_file, k.client_key_file),
        );
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
            access,
        })
    }

    /// TLS, credentials and Sentinel of the Redis link. TLS is on with `rediss://`, or with
    /// Sentinel when `redis_ca_file` is set (Sentinels name the master by address only).
    #[allow(clippy::type_complexity)]
    fn redis_access(
        &mut self,
        url: &str,
        sentinels: Vec<String>,
        master_name: Option<String>,
        username: Option<String>,
        password: (Option<String>, Option<PathBuf>),
        tls: (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>),
    ) -> RedisAccess {
        let mut access = RedisAccess::default();
        for s in &sentinels {
            match s.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
                Some((host, Ok(port))) if !host.is_empty() && port != 0 => {
                    access.sentinels.push((host.to_string(), port))
                }
                _ => self.problem(
                    "limits.redis_sentinels",
                    format!("`{s}` is not a host:port address"),
                ),
            }
        }
        match master_name {
            Some(m) if m.is_empty() || m.contains(char::is_whitespace) => {
                self.problem("limits.redis_master_name", "must be a non-empty word")
            }
            Some(_) if sentinels.is_empty() => self.problem(
                "limits.redis_master_name",
                "is set, but limits.redis_sentinels is empty",
            ),
            Some(m) => access.master_name = m,
            None if !sentinels.is_empty() => self.problem(
                "limits.redis_master_name",
                "is required with limits.redis_sentinels (the name the Sentinels monitor)",
            ),
            None => {}
        }
        match username {
            Some(u) if u.is_empty() || u.contains(char::is_whitespace) => {
                self.problem("limits.redis_username", "must be a non-empty word")
            }
            u => access.username = u,
        }
        access.password = self.secret(
            "limits.redis_password",
            false,
            password.0,
            password.1,
            false,
        );
        let (ca_file, cert_file, key_file) = tls;
        let tls_on = url.starts_with("rediss://") || (!sentinels.is_empty() && ca_file.is_some());
        if ca_file.is_some() && !tls_on {
            self.problem(
                "limits.redis_ca_file",
                "applies to TLS only: use a rediss:// URL (or redis_sentinels)",
            );
        }
        access.ca_pem =
            ca_file.and_then(|f| self.pem_file("limits.redis_ca_file", &f, "CERTIFICATE"));
        match (cert_file, key_file) {
            (None, None) => {}
            (Some(c), Some(k)) => {
                if !tls_on {
                    self.problem(
                        "limits.redis_client_cert_file",
                        "applies to TLS only: use a rediss:// URL (or redis_sentinels with redis_ca_file)",
                    );
                }
                let cert = self.pem_file("limits.redis_client_cert_file", &c, "CERTIFICATE");
                let key = self.pem_file("limits.redis_client_key_file", &k, "PRIVATE KEY");
                let key = key.and_then(|k| String::from_utf8(k).ok()).map(Secret::new);
                if let (Some(cert), Some(key)) = (cert, key) {
                    access.client_cert = Some((cert, key));
                }
            }
            _ => self.problem(
                "limits.redis_client_cert_file",
                "redis_client_cert_file and redis_client_key_file must be set together",
            ),
        }
        access
    }

    /// A PEM file's bytes, read now so that a bad file fails the load; `label` is what its block
    /// must hold (`CERTIFICATE`, `PRIVATE KEY`). Never echoes the contents.
    fn pem_file(&mut self, key: &str, file: &Path, label: &str) -> Option<Vec<u8>> {
        use rustls_pki_types::pem::PemObject;
        let path = self.base.join(file);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                self.problem(key, format!("cannot read {}: {e}", path.display()));
                return None;
            }
        };
        let ok = if label == "CERTIFICATE" {
            let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>();
            certs.is_ok_and(|c| !c.is_empty())
        } else {
            rustls_pki_types::PrivateKeyDer::from_pem_slice(&bytes).is_ok()
        };
        if !ok {
            self.problem(key, format!("{}: no PEM {label} found", path.display()));
            return None;
        }
        Some(bytes)
    }

    pub(super) fn app_limits(&mut self, at: &str, r: Option<RawAppLimits>) -> AppLimits {
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
}
