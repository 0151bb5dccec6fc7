//! The public entry points, [`Config::load`] and [`Config::from_toml`]: read the text, parse the
//! TOML, apply the `GRAPHGATE_*` overrides, deserialize, then validate; `load` (what `check-config`
//! and `serve` call) also checks that the TLS certificate and key can be used. A problem before validation
//! (unreadable file, bad TOML, wrong type, unknown key) stops the load with that one problem,
//! located by key and line; after it, validation reports every problem at once.
//!
//! It must never show a parser message unscrubbed: serde quotes offending values, and a value in the
//! wrong place may be a secret.

use std::path::Path;

use serde::Deserialize;

use super::check::Validator;
use super::env::{apply_env_overrides, Env};
use super::error::ConfigError;
use super::raw::RawConfig;
use super::Config;

impl Config {
    /// Reads, overrides, deserializes and validates the file at `path`.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(&file, "", None, format!("cannot read the file: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let config = Self::from_toml(&text, &file, base, env)?;
        // What can only be checked by reading other files, before anything binds a port.
        if let Some(files) = &config.server.tls {
            if let Err(m) = super::tls::server_config(files) {
                return Err(ConfigError::one(&file, "server.tls_cert_file", None, m));
            }
        }
        Ok(config)
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
        Validator::new(file, base, env).validate(raw)
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
