//! The `[limits]` checks: window, bucket limits and their `[app.limits]` overrides, what a caller
//! sees when a bucket is spent, state persistence, and the Redis backend shared by replicas.
//!
//! It must never echo `limits.redis_url`: it may carry a password.

use super::super::check::Validator;
use super::super::raw::{RawAppLimits, RawLimits};
use super::super::scalar::Dur;
use super::super::{
    AppLimits, Limits, OnBackendError, OnLimit, RedisBackend, DEFAULT_ACTIVE_REFRESH,
    DEFAULT_BACKEND_TIMEOUT, DEFAULT_MAX_UNKNOWN_BUCKETS, DEFAULT_MAX_WAIT, DEFAULT_STATE_INTERVAL,
    DEFAULT_THROTTLE_BLOCK, DEFAULT_WINDOW,
};

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
            redis: self.redis_backend(
                r.backend,
                r.redis_url,
                r.redis_prefix,
                r.on_backend_error,
                r.replicas,
                r.backend_timeout,
            ),
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
                // Parsed now (no connection is made), so a URL serve could not use fails the
                // check instead of leaving a replica to spend the whole budget on its own. The
                // parser's message is not echoed: it may quote the URL, password included.
                if redis::IntoConnectionInfo::into_connection_info(u.as_str()).is_err() {
                    self.problem(
                        "limits.redis_url",
                        "is not a usable Redis URL (redis://[user:password@]host[:port][/db])",
                    );
                    return None;
                }
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
