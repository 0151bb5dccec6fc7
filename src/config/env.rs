//! Where secrets and overrides come from: the [`Env`] trait (the process environment, or a map in
//! tests) and the `GRAPHGATE_*` overrides applied to the parsed TOML table before it is
//! deserialized.
//!
//! It must never put an override's value into an error (only the variable's name and the key it
//! sets), and never check what a value means: it only places it in the table.

use std::collections::HashMap;

use super::error::ConfigError;

const ENV_PREFIX: &str = "GRAPHGATE_";

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

/// `GRAPHGATE_SERVER__LISTEN=0.0.0.0:8080` sets `server.listen`; `GRAPHGATE_APP__0__ID=1` sets
/// `app[0].id`. Values are read as TOML (numbers, booleans, arrays) where they parse, else as strings,
/// and keep the type of the value they replace when that is a string.
pub(super) fn apply_env_overrides(
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
