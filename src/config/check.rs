//! The `Validator`: the list of problems every section check writes to, so that one load reports
//! them all, and the checks sections share (whole numbers in a range, positive sizes and durations,
//! bucket limits, secrets read from an environment variable or a file).
//!
//! It knows no section's keys: those checks live in `validate/`, `cache` and `webhooks`, which add
//! their methods to `Validator`; the one thing it carries between sections is `limit_defaults`,
//! what `[limits]` hands to each `[app.limits]`. It must never put a secret's value into a
//! problem, only the key, the variable's name or the file's path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::env::Env;
use super::error::Problem;
use super::scalar::{Dur, Size};
use super::{AppLimits, Secret};

pub(super) struct Validator<'a> {
    file: &'a str,
    pub(super) base: &'a Path,
    pub(super) env: &'a dyn Env,
    pub(super) problems: Vec<Problem>,
    /// `[limits]` values that each `[app.limits]` starts from.
    pub(super) limit_defaults: AppLimits,
    /// Secret files and token directories read, for `Config::watched`.
    pub(super) watched: Vec<PathBuf>,
    /// What was skipped without a problem, for `Config::warnings`.
    pub(super) warnings: Vec<String>,
}

impl<'a> Validator<'a> {
    /// `base` resolves relative `*_file` paths; `env` answers `*_env` names.
    pub(super) fn new(file: &'a str, base: &'a Path, env: &'a dyn Env) -> Self {
        Validator {
            file,
            base,
            env,
            problems: Vec::new(),
            limit_defaults: AppLimits::default(),
            watched: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl Validator<'_> {
    pub(super) fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            key: key.into(),
            line: None,
            message: message.into(),
        });
    }

    /// An optional whole number within `lo..=hi`; outside it is a problem naming `key`.
    pub(super) fn int_in(&mut self, key: &str, v: Option<i64>, lo: i64, hi: i64) -> Option<i64> {
        let n = v?;
        if (lo..=hi).contains(&n) {
            Some(n)
        } else {
            self.problem(key, format!("must be between {lo} and {hi}"));
            None
        }
    }

    /// A bucket limit: at least 1, at most a million calls per window.
    pub(super) fn limit_value(&mut self, key: &str, n: i64) -> Option<u32> {
        if (1..=1_000_000).contains(&n) {
            Some(n as u32)
        } else {
            self.problem(key, "must be a whole number of calls from 1 to 1000000");
            None
        }
    }

    pub(super) fn positive_size(&mut self, key: &str, v: Option<Size>, default: u64) -> u64 {
        match v {
            None => default,
            Some(Size(0)) => {
                self.problem(key, "must be greater than zero");
                default
            }
            Some(Size(n)) => n,
        }
    }

    pub(super) fn positive_duration(
        &mut self,
        key: &str,
        v: Option<Dur>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(Dur(d)) if d.is_zero() => {
                self.problem(key, "must be greater than zero");
                default
            }
            Some(Dur(d)) => d,
        }
    }

    /// Reads a secret from exactly one of an env var or a file. `inline` is set when the user wrote
    /// the secret into the config itself, which is refused.
    pub(super) fn secret(
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
                Some(v) if !v.trim().is_empty() => {
                    self.header_safe(format!("{key}_env"), &var, v.trim())
                }
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
                self.watched.push(path.clone());
                match std::fs::read_to_string(&path) {
                    Ok(v) if !v.trim().is_empty() => {
                        let from = path.display().to_string();
                        self.header_safe(format!("{key}_file"), &from, v.trim())
                    }
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

    /// The secret, if an HTTP header can carry it (as a bearer token must be): otherwise a problem
    /// naming the key and where the value came from, never the value.
    fn header_safe(&mut self, key: String, from: &str, value: &str) -> Option<Secret> {
        match unsafe_for_header(value) {
            None => Some(Secret(value.to_string())),
            Some(what) => {
                self.problem(
                    key,
                    format!(
                        "the value in {from} contains {what}, which an HTTP header cannot carry"
                    ),
                );
                None
            }
        }
    }
}

/// What in a secret an HTTP header could not carry, if anything: tokens and keys are sent (or
/// received) as `Authorization: Bearer <value>`, so only visible ASCII is allowed. A token with a
/// newline once passed the check and was sent upstream as `Bearer invalid` without a word.
pub(super) fn unsafe_for_header(value: &str) -> Option<&'static str> {
    value.bytes().find_map(|b| match b {
        0x21..=0x7e => None,
        b'\r' | b'\n' => Some("a line break"),
        b' ' => Some("a space"),
        0x00..=0x1f | 0x7f => Some("a control character"),
        _ => Some("a character outside visible ASCII"),
    })
}
