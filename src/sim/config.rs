//! Simulator configuration: limits, window, tokens, and the `graphgate sim` command-line flags.
//! Parses and validates only; never touches state or sockets.

use std::net::SocketAddr;
use std::time::Duration;

/// Meta's rolling window for WhatsApp Business Management calls.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// Calls per app per WABA per window for a WABA with no registered phone number.
pub const DEFAULT_WABA_LIMIT: u32 = 200;
/// Calls per app per WABA per window once the WABA has a CLOUD_API or ON_PREMISE number.
pub const DEFAULT_ACTIVE_WABA_LIMIT: u32 = 5000;
/// Credit-line calls per app per window.
pub const DEFAULT_CREDIT_LIMIT: u32 = 5000;
/// Meta sends 80008 with HTTP 400 (third-party fixtures); 429 is also seen in Meta's spec for other codes.
pub const DEFAULT_THROTTLE_STATUS: u16 = 400;
/// App id given to `--token` entries that name none.
pub const DEFAULT_APP_ID: &str = "1000000000000001";

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub window: Duration,
    pub waba_limit: u32,
    pub active_waba_limit: u32,
    pub credit_limit: u32,
    pub throttle_status: u16,
    pub tokens: Vec<SimToken>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            window: DEFAULT_WINDOW,
            waba_limit: DEFAULT_WABA_LIMIT,
            active_waba_limit: DEFAULT_ACTIVE_WABA_LIMIT,
            credit_limit: DEFAULT_CREDIT_LIMIT,
            throttle_status: DEFAULT_THROTTLE_STATUS,
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimToken {
    pub token: String,
    pub app_id: String,
    /// When set, every call with this token must carry a valid appsecret_proof.
    pub app_secret: Option<String>,
    pub access: Access,
}

/// Which WABAs a token's user was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    All,
    Only(Vec<String>),
}

impl Access {
    pub(crate) fn allows(&self, waba: &str) -> bool {
        match self {
            Access::All => true,
            Access::Only(ids) => ids.iter().any(|w| w == waba),
        }
    }
}

/// Flags for running the simulator as its own server.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: String,
    /// Rolling window length (humantime, e.g. "1h", "2s").
    #[arg(long, default_value = "1h")]
    pub window: String,
    /// Calls per app per WABA per window.
    #[arg(long, default_value_t = DEFAULT_WABA_LIMIT)]
    pub waba_limit: u32,
    /// Calls per app per active WABA (>= 1 registered number) per window.
    #[arg(long, default_value_t = DEFAULT_ACTIVE_WABA_LIMIT)]
    pub active_limit: u32,
    /// Credit-line calls per app per window.
    #[arg(long, default_value_t = DEFAULT_CREDIT_LIMIT)]
    pub credit_limit: u32,
    /// HTTP status of the 80008 throttling error.
    #[arg(long, default_value_t = DEFAULT_THROTTLE_STATUS)]
    pub throttle_status: u16,
    /// TOKEN[@APP_ID][:WABA,WABA|*] (repeatable). Default app id 1000000000000001, default access *.
    #[arg(long = "token")]
    pub tokens: Vec<String>,
    /// APP_ID=SECRET (repeatable): calls with that app's tokens must carry appsecret_proof.
    #[arg(long = "app-secret")]
    pub app_secrets: Vec<String>,
}

impl SimArgs {
    /// Parses every flag and reports all problems at once, before anything binds.
    pub fn into_config(self) -> Result<(SocketAddr, SimConfig), String> {
        let mut errors = Vec::new();
        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| errors.push(format!("--listen {:?}: {e}", self.listen)))
            .ok();
        let window = match humantime::parse_duration(&self.window) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                errors.push("--window must be greater than zero".to_string());
                None
            }
            Err(e) => {
                errors.push(format!("--window {:?}: {e}", self.window));
                None
            }
        };
        for (flag, v) in [
            ("--waba-limit", self.waba_limit),
            ("--active-limit", self.active_limit),
            ("--credit-limit", self.credit_limit),
        ] {
            if v == 0 {
                errors.push(format!("{flag} must be at least 1"));
            }
        }
        if !(100..=599).contains(&self.throttle_status) {
            errors.push(format!(
                "--throttle-status {} is not an HTTP status",
                self.throttle_status
            ));
        }
        let mut secrets: Vec<(String, String)> = Vec::new();
        for s in &self.app_secrets {
            match s.split_once('=') {
                Some((app, secret)) if !app.is_empty() && !secret.is_empty() => {
                    secrets.push((app.to_string(), secret.to_string()))
                }
                _ => errors.push(format!("--app-secret {s:?}: expected APP_ID=SECRET")),
            }
        }
        let mut tokens = Vec::new();
        for t in &self.tokens {
            match parse_token(t) {
                Ok(mut tok) => {
                    tok.app_secret = secrets
                        .iter()
                        .find(|(app, _)| *app == tok.app_id)
                        .map(|(_, s)| s.clone());
                    tokens.push(tok);
                }
                Err(e) => errors.push(e),
            }
        }
        for (app, _) in &secrets {
            if !tokens.iter().any(|t: &SimToken| &t.app_id == app) {
                errors.push(format!(
                    "--app-secret for app {app} but no --token uses that app"
                ));
            }
        }
        match (listen, window) {
            (Some(listen), Some(window)) if errors.is_empty() => Ok((
                listen,
                SimConfig {
                    window,
                    waba_limit: self.waba_limit,
                    active_waba_limit: self.active_limit,
                    credit_limit: self.credit_limit,
                    throttle_status: self.throttle_status,
                    tokens,
                },
            )),
            _ => Err(errors.join("; ")),
        }
    }
}

/// `TOKEN[@APP_ID][:WABA,WABA|*]`.
fn parse_token(spec: &str) -> Result<SimToken, String> {
    let bad =
        |why: &str| format!("--token {spec:?}: {why} (expected TOKEN[@APP_ID][:WABA,WABA|*])");
    let (head, access) = match spec.split_once(':') {
        Some((h, a)) => (h, Some(a)),
        None => (spec, None),
    };
    let (token, app_id) = match head.split_once('@') {
        Some((t, a)) => (t, a),
        None => (head, DEFAULT_APP_ID),
    };
    if token.is_empty() {
        return Err(bad("empty token"));
    }
    if app_id.is_empty() || !app_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("app id must be digits"));
    }
    let access = match access.map(str::trim) {
        None | Some("*") => Access::All,
        Some(list) => {
            let ids: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if ids.is_empty() {
                return Err(bad("empty WABA list"));
            }
            Access::Only(ids)
        }
    };
    Ok(SimToken {
        token: token.to_string(),
        app_id: app_id.to_string(),
        app_secret: None,
        access,
    })
}

#[cfg(test)]
mod unit {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    // Flags parse into a config with per-token app ids, access lists and secrets.
    #[test]
    fn flags_parse_into_config() {
        let cli = Cli::try_parse_from([
            "x",
            "--window",
            "2s",
            "--waba-limit",
            "5",
            "--token",
            "a",
            "--token",
            "b@42:1,2",
            "--app-secret",
            "42=s3",
        ])
        .expect("parse");
        let (addr, cfg) = cli.sim.into_config().expect("valid");
        assert_eq!(addr.port(), 8081);
        assert_eq!(cfg.window, Duration::from_secs(2));
        assert_eq!(cfg.waba_limit, 5);
        assert_eq!(cfg.tokens[0].app_id, DEFAULT_APP_ID);
        assert_eq!(cfg.tokens[0].access, Access::All);
        assert_eq!(
            cfg.tokens[1].access,
            Access::Only(vec!["1".into(), "2".into()])
        );
        assert_eq!(cfg.tokens[1].app_secret.as_deref(), Some("s3"));
    }

    // Every bad flag is reported in one message.
    #[test]
    fn bad_flags_are_all_reported() {
        let cli = Cli::try_parse_from([
            "x",
            "--listen",
            "nope",
            "--window",
            "0s",
            "--credit-limit",
            "0",
            "--token",
            "@1",
            "--app-secret",
            "9",
        ])
        .expect("parse");
        let err = cli.sim.into_config().unwrap_err();
        for needle in [
            "--listen",
            "--window",
            "--credit-limit",
            "--token",
            "--app-secret",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }
}
