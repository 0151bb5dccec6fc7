//! The one way tests configure and start graphgate: [`TestProxy::builder`] takes the standard
//! test config (or a test's own document), changes it as a value through named knobs, and either
//! renders it (`toml`), loads it (`load`, `config`) or serves it on `127.0.0.1:0` (`start`), with
//! the admin listener on a second free port when asked.
//!
//! It never binds a fixed port and never edits config text; servers other than graphgate (the
//! simulator, fake upstreams, webhook sinks, Redis) have their own helpers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use graphgate::clock::SharedClock;
use graphgate::config::{Config, ConfigError};
use graphgate::Gateway;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use toml::{Table, Value};

use super::{env, logs, table, Stop};

/// A config being built for a test proxy, plus how to run it.
#[derive(Clone)]
pub struct ProxyBuilder {
    config: Table,
    env: HashMap<String, String>,
    clock: Option<SharedClock>,
    admin: bool,
}

impl ProxyBuilder {
    /// A test's own config document instead of the standard one; the knobs still apply.
    pub fn from_toml(text: &str) -> ProxyBuilder {
        ProxyBuilder {
            config: table::parse(text),
            env: env(),
            clock: None,
            admin: false,
        }
    }

    /// Merges `lines` (keys, no header) into the `[name]` table.
    pub fn section(mut self, name: &str, lines: &str) -> Self {
        let mut fragment = Table::new();
        fragment.insert(name.to_string(), Value::Table(table::parse(lines)));
        table::merge(&mut self.config, fragment);
        self
    }

    /// Lines for `[server]`.
    pub fn server(self, lines: &str) -> Self {
        self.section("server", lines)
    }

    /// Lines for `[upstream]`.
    pub fn upstream(self, lines: &str) -> Self {
        self.section("upstream", lines)
    }

    /// Lines for `[limits]`.
    pub fn limits(self, lines: &str) -> Self {
        self.section("limits", lines)
    }

    /// `cache.enabled`: off makes every call go upstream.
    pub fn cache(self, enabled: bool) -> Self {
        self.set("cache.enabled", enabled)
    }

    /// Shares limits and cache invalidations through the Redis at `url`, under `prefix`.
    pub fn redis(self, url: &str, prefix: &str) -> Self {
        self.set("limits.backend", "redis")
            .set("limits.redis_url", url)
            .set("limits.redis_prefix", prefix)
    }

    /// One more `[[client]]`, from its keys.
    pub fn client(mut self, lines: &str) -> Self {
        let mut fragment = Table::new();
        fragment.insert(
            "client".into(),
            Value::Array(vec![Value::Table(table::parse(lines))]),
        );
        table::merge(&mut self.config, fragment);
        self
    }

    /// `active` of the WABA `waba`: `true`, `false` or `"auto"`.
    pub fn waba_active(mut self, waba: &str, active: impl Into<Value>) -> Self {
        table::waba(&mut self.config, waba).insert("active".into(), active.into());
        self
    }

    /// A `limit` of the WABA `waba`'s own.
    pub fn waba_limit(mut self, waba: &str, limit: i64) -> Self {
        table::waba(&mut self.config, waba).insert("limit".into(), limit.into());
        self
    }

    /// Merges a TOML document (tables, `[[arrays]]`) into the config; arrays of tables append.
    pub fn merge(mut self, document: &str) -> Self {
        table::merge(&mut self.config, table::parse(document));
        self
    }

    /// Sets one key by its path, e.g. `server.listen` or `client[1].rate`.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        table::set(&mut self.config, key, value.into());
        self
    }

    /// Removes one key by its path; it must be there.
    pub fn remove(mut self, key: &str) -> Self {
        table::remove(&mut self.config, key);
        self
    }

    /// One more environment variable for `*_env` keys (the test secrets are always there).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// The limiter and the cache read time from `clock` instead of the system's.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Also serves the admin listener, on its own free loopback port.
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// The config as the text of a file (for the binary).
    pub fn toml(&self) -> String {
        toml::to_string(&self.config).unwrap()
    }

    /// The config loaded as graphgate loads a file named `test.toml`.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::from_toml(&self.toml(), "test.toml", Path::new("."), &self.env)
    }

    /// The loaded config; a test config that does not load fails the test.
    pub fn config(&self) -> Config {
        self.load()
            .unwrap_or_else(|e| panic!("the test config does not load: {e}\n{}", self.toml()))
    }

    /// Serves the config on `127.0.0.1:0` (and the admin listener when asked) until the returned
    /// proxy is dropped or shut down.
    pub async fn start(self) -> TestProxy {
        logs();
        let config = self.config();
        let gw = match self.clock {
            Some(clock) => Gateway::with_clock(config, clock),
            None => Gateway::new(config),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = if self.admin {
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let admin_url = admin
            .as_ref()
            .map(|l| format!("http://{}", l.local_addr().unwrap()));
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(graphgate::run_with_admin(
            listener,
            admin,
            gw.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        TestProxy {
            addr,
            url: format!("http://{addr}"),
            gw,
            admin_url,
            stop: Stop(Some(tx)),
            done,
        }
    }
}

/// A running graphgate: its address, its gateway (to look at the limiter and the cache) and,
/// when started with `.admin()`, its admin listener. Stops when dropped.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub url: String,
    pub gw: Gateway,
    admin_url: Option<String>,
    stop: Stop,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestProxy {
    /// The standard test config in front of `upstream`: one app, the active WABA and the
    /// inactive one with its own token, the full client `alpha` and the limited `bravo`.
    pub fn builder(upstream: &str) -> ProxyBuilder {
        ProxyBuilder {
            config: table::standard(upstream),
            env: env(),
            clock: None,
            admin: false,
        }
    }

    /// The admin listener's base URL.
    pub fn admin_url(&self) -> String {
        self.admin_url
            .clone()
            .expect("the proxy was started without .admin()")
    }

    /// Signals shutdown and waits for the server to finish draining.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.0.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.done).await;
    }
}
