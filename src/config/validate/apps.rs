//! The `[[app]]` (with its `[[app.waba]]`) and `[[client]]` checks: names, Graph ids, tokens and app
//! secrets, client keys, which app each client belongs to, its methods, WABAs, reserve and rate.
//!
//! It must never keep a client key (only its sha256) and never name a token's or key's value in a
//! problem.

use std::collections::HashSet;
use std::time::Duration;

use http::Method;

use super::super::check::{unsafe_for_header, Validator};
use super::super::raw::{RawActive, RawApp, RawClient};
use super::super::{key_digest, Active, App, Client, ProofMode, Rate, Waba};

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
    pub(super) fn app(&mut self, i: usize, r: RawApp) -> Option<App> {
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
        let waba_tokens = match &r.waba_token_dir {
            Some(dir) => self.waba_token_dir(&format!("{at}.waba_token_dir"), dir, &wabas),
            None => Default::default(),
        };
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
            waba_token_dir: r.waba_token_dir.map(|d| self.base.join(d)),
            waba_tokens,
        })
    }

    pub(super) fn unique_apps(&mut self, app_names: &[String]) {
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

    pub(super) fn client(
        &mut self,
        i: usize,
        r: RawClient,
        app_names: &[String],
    ) -> Option<Client> {
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
                Some(k) if k.trim().len() >= 16 => match unsafe_for_header(k.trim()) {
                    // Callers send the key as a bearer token: one a header cannot carry could
                    // never be presented.
                    Some(what) => {
                        self.problem(
                            format!("{at}.key_env"),
                            format!("the key in {var} contains {what}, which an HTTP header cannot carry"),
                        );
                        None
                    }
                    None => Some(key_digest(k.trim())),
                },
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

#[cfg(test)]
mod header_safety {
    use super::unsafe_for_header;

    // Visible ASCII passes; a line break, a control character, a space or a non-ASCII character
    // is named by its kind (the value itself never appears in a problem).
    #[test]
    fn only_visible_ascii_can_travel_in_a_header() {
        assert_eq!(unsafe_for_header("EAAG~!azAZ09-_.+/="), None);
        assert_eq!(unsafe_for_header("a\nb"), Some("a line break"));
        assert_eq!(unsafe_for_header("a\rb"), Some("a line break"));
        assert_eq!(unsafe_for_header("a\tb"), Some("a control character"));
        assert_eq!(unsafe_for_header("a\u{0}b"), Some("a control character"));
        assert_eq!(unsafe_for_header("a\u{7f}b"), Some("a control character"));
        assert_eq!(unsafe_for_header("a b"), Some("a space"));
        assert_eq!(
            unsafe_for_header("caf\u{e9}"),
            Some("a character outside visible ASCII")
        );
    }
}
