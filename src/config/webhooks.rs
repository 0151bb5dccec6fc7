//! `[webhooks]` and `[[webhooks.subscriber]]`: the Meta webhook receiver and its fan-out, parsed
//! and validated like every other section (see `docs/webhooks.md`).
//!
//! It owns the webhook keys only. It must never accept an inline verify token or subscriber secret,
//! and never name a secret's value in a problem.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::de;
use serde::Deserialize;

use super::check::Validator;
use super::scalar::{Dur, Size};
use super::Secret;
use crate::ids::is_graph_id;

/// Meta's largest webhook payload is 3 MB; 3 MiB leaves a little room.
pub const DEFAULT_WEBHOOK_MAX_BODY: u64 = 3 * 1024 * 1024;
/// Deliveries waiting per subscriber before new ones are refused (and counted, and logged).
pub const DEFAULT_WEBHOOK_MAX_QUEUE: usize = 10_000;
/// First retry delay of a failed delivery; doubles per attempt up to `retry_max`.
pub const DEFAULT_WEBHOOK_RETRY_INITIAL: Duration = Duration::from_secs(1);
pub const DEFAULT_WEBHOOK_RETRY_MAX: Duration = Duration::from_secs(300);
/// With the defaults above, 40 attempts span a bit over two and a half hours.
pub const DEFAULT_WEBHOOK_MAX_ATTEMPTS: u32 = 40;
/// A delivery older than this is given up (logged and counted), whatever its attempt count.
pub const DEFAULT_WEBHOOK_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// One delivery attempt, connect to end of the response head.
pub const DEFAULT_WEBHOOK_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The validated `[webhooks]` section.
#[derive(Debug, Clone)]
pub struct Webhooks {
    /// Exact path on the public listener, e.g. `/webhooks/meta`.
    pub path: String,
    pub verify_token: Secret,
    pub max_body: u64,
    /// On-disk delivery queue; `None` keeps deliveries in memory only (lost on restart).
    pub queue_dir: Option<PathBuf>,
    pub max_queue: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_attempts: u32,
    pub max_age: Duration,
    pub delivery_timeout: Duration,
    pub subscribers: Vec<Subscriber>,
}

/// One internal service that receives verified events.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Also the name of its folder under `queue_dir`, so only `[A-Za-z0-9_-]`.
    pub name: String,
    pub url: http::Uri,
    /// Only changes whose `field` is listed; `None`: every field.
    pub fields: Option<HashSet<String>>,
    /// Signs deliveries with `X-Hub-Signature-256`; `None`: deliveries are unsigned.
    pub secret: Option<Secret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhooks {
    path: Option<String>,
    verify_token: Option<de::IgnoredAny>,
    verify_token_env: Option<String>,
    verify_token_file: Option<PathBuf>,
    max_body: Option<Size>,
    queue_dir: Option<PathBuf>,
    max_queue: Option<i64>,
    retry_initial: Option<Dur>,
    retry_max: Option<Dur>,
    max_attempts: Option<i64>,
    max_age: Option<Dur>,
    delivery_timeout: Option<Dur>,
    #[serde(default)]
    subscriber: Vec<RawSubscriber>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscriber {
    name: Option<String>,
    url: Option<String>,
    fields: Option<Vec<String>>,
    secret: Option<de::IgnoredAny>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
}

/// A path axum can route literally and that no Graph call could use: `/` then segments of
/// `[A-Za-z0-9._-]`, the first neither a Graph id nor a version like `v19.0`.
fn check_path(p: &str) -> Result<(), &'static str> {
    let rest = p.strip_prefix('/').ok_or("must start with /")?;
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err("must not be / or contain empty segments (//, trailing /)");
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !rest.split('/').all(|s| s.chars().all(ok_char)) {
        return Err("may only use letters, digits, '.', '_' and '-' between slashes");
    }
    if is_graph_id(segs[0]) || crate::ids::is_version(segs[0]) {
        return Err("must not start with a Graph id or version (it would hide Graph paths)");
    }
    Ok(())
}

impl Validator<'_> {
    pub(super) fn webhooks(&mut self, r: RawWebhooks) -> Option<Webhooks> {
        let before = self.problems.len();
        let path = match r.path {
            Some(p) => {
                if let Err(m) = check_path(&p) {
                    self.problem("webhooks.path", m);
                }
                p
            }
            None => {
                self.problem("webhooks.path", "missing (e.g. \"/webhooks/meta\")");
                String::new()
            }
        };
        let verify_token = self.secret(
            "webhooks.verify_token",
            r.verify_token.is_some(),
            r.verify_token_env,
            r.verify_token_file,
            true,
        );
        let max_queue = self
            .int_in("webhooks.max_queue", r.max_queue, 1, 10_000_000)
            .map_or(DEFAULT_WEBHOOK_MAX_QUEUE, |n| n as usize);
        let max_attempts = self
            .int_in("webhooks.max_attempts", r.max_attempts, 1, 1_000_000)
            .map_or(DEFAULT_WEBHOOK_MAX_ATTEMPTS, |n| n as u32);
        let retry_initial = self.positive_duration(
            "webhooks.retry_initial",
            r.retry_initial,
            DEFAULT_WEBHOOK_RETRY_INITIAL,
        );
        let retry_max =
            self.positive_duration("webhooks.retry_max", r.retry_max, DEFAULT_WEBHOOK_RETRY_MAX);
        if retry_max < retry_initial {
            self.problem(
                "webhooks.retry_max",
                "must not be shorter than webhooks.retry_initial",
            );
        }
        let mut names = HashSet::new();
        let mut subscribers = Vec::new();
        for (i, s) in r.subscriber.into_iter().enumerate() {
            if let Some(s) = self.subscriber(i, s, &mut names) {
                subscribers.push(s);
            }
        }
        let w = Webhooks {
            path,
            verify_token: verify_token?,
            max_body: self.positive_size("webhooks.max_body", r.max_body, DEFAULT_WEBHOOK_MAX_BODY),
            queue_dir: r.queue_dir.map(|p| self.base.join(p)),
            max_queue,
            retry_initial,
            retry_max,
            max_attempts,
            max_age: self.positive_duration("webhooks.max_age", r.max_age, DEFAULT_WEBHOOK_MAX_AGE),
            delivery_timeout: self.positive_duration(
                "webhooks.delivery_timeout",
                r.delivery_timeout,
                DEFAULT_WEBHOOK_DELIVERY_TIMEOUT,
            ),
            subscribers,
        };
        (self.problems.len() == before).then_some(w)
    }

    fn subscriber(
        &mut self,
        i: usize,
        r: RawSubscriber,
        names: &mut HashSet<String>,
    ) -> Option<Subscriber> {
        let at = format!("webhooks.subscriber[{i}]");
        let before = self.problems.len();
        let name = r.name.unwrap_or_default();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.problem(
                format!("{at}.name"),
                "missing or not made of letters, digits, '_' and '-'",
            );
        } else if !names.insert(name.clone()) {
            self.problem(
                format!("{at}.name"),
                format!("subscriber name `{name}` is used twice"),
            );
        }
        let url = match r.url.as_deref().map(str::parse::<http::Uri>) {
            Some(Ok(u))
                if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() =>
            {
                Some(u)
            }
            Some(_) => {
                self.problem(format!("{at}.url"), "must be an http:// or https:// URL");
                None
            }
            None => {
                self.problem(format!("{at}.url"), "missing");
                None
            }
        };
        let fields = r.fields.map(|fs| {
            if fs.is_empty() || fs.iter().any(|f| f.trim().is_empty()) {
                self.problem(
                    format!("{at}.fields"),
                    "list at least one field name, or leave fields out for all",
                );
            }
            fs.into_iter().collect::<HashSet<_>>()
        });
        let secret = self.secret(
            &format!("{at}.secret"),
            r.secret.is_some(),
            r.secret_env,
            r.secret_file,
            false,
        );
        if self.problems.len() > before {
            return None;
        }
        Some(Subscriber {
            name,
            url: url?,
            fields,
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::super::Config;
    use super::*;

    const TEXT: &str = r#"
[[app]]
name = "main"
id = "1234567890"
token_env = "T"
app_secret_env = "S"

[[client]]
name = "crm"
key_env = "K"

[webhooks]
path = "/webhooks/meta"
verify_token_file = "token.txt"
queue_dir = "queue"

[[webhooks.subscriber]]
name = "crm"
url = "https://crm.internal/hooks?key=abc"
fields = ["account_update"]
secret_env = "SUB"
"#;

    // Defaults follow Meta's delivery rules; relative paths resolve against the config's folder;
    // secrets come from files or the environment and never show in a Debug dump.
    #[test]
    fn webhook_defaults_and_secret_sources() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token.txt"), "verify-TOKEN-123\n").unwrap();
        let env: HashMap<String, String> = [
            ("T", "EAAtoken0123456789"),
            ("S", "app-secret"),
            ("K", "client-key-0123456789"),
            ("SUB", "sub-SECRET-xyz"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = Config::from_toml(TEXT, "g.toml", dir.path(), &env).unwrap();
        let w = c.webhooks.as_ref().unwrap();
        assert_eq!(w.verify_token.expose(), "verify-TOKEN-123");
        assert_eq!(w.max_body, 3 * 1024 * 1024);
        assert_eq!(
            w.queue_dir.as_deref(),
            Some(dir.path().join("queue").as_path())
        );
        assert_eq!(w.max_queue, DEFAULT_WEBHOOK_MAX_QUEUE);
        assert_eq!(w.retry_initial, Duration::from_secs(1));
        assert_eq!(w.retry_max, Duration::from_secs(300));
        assert_eq!(w.max_age, Duration::from_secs(86400));
        let s = &w.subscribers[0];
        assert_eq!(s.secret.as_ref().unwrap().expose(), "sub-SECRET-xyz");
        assert!(s.fields.as_ref().unwrap().contains("account_update"));
        let dump = format!("{c:?}");
        assert!(!dump.contains("verify-TOKEN") && !dump.contains("sub-SECRET"));
        // No [webhooks]: no receiver.
        let plain = TEXT.split("[webhooks]").next().unwrap();
        assert!(Config::from_toml(plain, "g.toml", Path::new("."), &env)
            .unwrap()
            .webhooks
            .is_none());
    }

    #[test]
    fn webhook_paths_that_could_hide_graph_calls_are_refused() {
        assert!(check_path("/webhooks/meta").is_ok());
        assert!(check_path("/hooks").is_ok());
        for bad in [
            "webhooks",
            "/",
            "/a//b",
            "/a/",
            "/123/x",
            "/v19.0/hooks",
            "/{id}",
            "/a b",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
