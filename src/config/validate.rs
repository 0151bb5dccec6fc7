//! Raw to typed: `Validator::validate` checks each section in a fixed order (server, upstream,
//! limits, cache, webhooks, apps, clients), then the rules that span sections, and returns the
//! [`Config`] only when no problem was found. The order is the order problems are reported in.
//!
//! The checks of `[server]` and `[upstream]`, `[limits]`, and `[[app]]`/`[[client]]` live in
//! `validate/`; `[cache]` and `[webhooks]` bring their own. It must never stop at the first
//! problem, and never let one bad entry cause follow-on problems about others.

use super::check::Validator;
use super::error::ConfigError;
use super::raw::RawConfig;
use super::{App, AuthMode, Client, Config};

mod apps;
mod limits;
mod server;

pub use self::apps::parse_rate;

impl Validator<'_> {
    pub(super) fn validate(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
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
                watched: self.watched,
                warnings: self.warnings,
            })
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}
