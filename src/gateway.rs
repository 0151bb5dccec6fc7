//! The gateway's state: one [`Gateway`] per process, a cheap-to-clone handle to everything built
//! from the [`Config`] (the directory of apps and clients, the upstream client, the limiter, the
//! cache, metrics, invalidation, the prober and the webhook receiver), and the background tasks
//! it owns ([`Background`]: the Redis link, probes, the limiter's sweep and state saves, the
//! rotation watcher).
//!
//! What a reload may change lives in a [`Generation`] (the config, the directory of clients and
//! tokens, the redactor), swapped whole and atomically by [`Gateway::reload`]; a request takes the
//! current one once ([`Gateway::current`]) and keeps it to its end, so an in-flight call finishes
//! with the token it started with. The limiter's windows, blocks and learned facts and the cache's
//! entries are built once and survive every reload (`docs/operations.md`, Reload).
//!
//! It must never import the request path (`proxy`): the pipeline, the admin listener and the
//! background tasks all depend on this state, never the other way round.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinSet;

use crate::auth::Directory;
use crate::cache::ResponseCache;
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, Env};
use crate::error::GatewayError;
use crate::invalidate::Invalidator;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::reload::{self, Fingerprint, Report};
use crate::rewrite::{Redactor, Rewriter};
use crate::sync::MutexExt;
use crate::upstream::Upstream;
use crate::webhooks::Hub;

/// How often idle limiter buckets are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Shared state: cheap to clone, one per process. `gen` is the generation this handle was taken
/// with; [`Gateway::current`] gives a handle on the newest.
#[derive(Clone)]
pub struct Gateway {
    state: Arc<State>,
    gen: Arc<Generation>,
}

/// What a reload swaps: built whole from one config, never changed after.
pub struct Generation {
    config: Arc<Config>,
    directory: Arc<Directory>,
    redactor: Redactor,
    /// `server.public_url` without a trailing slash, when configured.
    public_base: Option<String>,
    /// [`reload::config_hash`] of `config`.
    hash: String,
}

impl Generation {
    fn new(config: Arc<Config>) -> Generation {
        let public_base = config
            .server
            .public_url
            .as_ref()
            .map(|u| u.to_string().trim_end_matches('/').to_string());
        Generation {
            directory: Arc::new(Directory::new(&config)),
            redactor: Redactor::new(&config),
            hash: reload::config_hash(&config),
            public_base,
            config,
        }
    }
}

/// Where a reload reads the config from: the file the gateway was started with, and the
/// environment its `*_env` keys name.
struct Source {
    path: PathBuf,
    env: Box<dyn Env + Send + Sync>,
}

struct State {
    /// The newest generation; requests load it once each.
    live: ArcSwap<Generation>,
    /// Set by [`Gateway::reloading_from`]; without it a reload has nothing to read.
    source: OnceLock<Source>,
    /// One reload at a time (held while a new config is read and swapped in, never across an await).
    reloading: Mutex<()>,
    /// The prober's view of the newest config and directory (it holds no gateway).
    probe_config: Arc<ArcSwap<Config>>,
    probe_directory: Arc<ArcSwap<Directory>>,
    upstream: Arc<Upstream>,
    limiter: Arc<Limiter>,
    cache: Arc<ResponseCache>,
    metrics: Arc<Metrics>,
    invalidator: Invalidator,
    prober: Prober,
    /// The webhook receiver, when `[webhooks]` is configured.
    webhooks: Option<Arc<Hub>>,
    rewriter: Rewriter,
    /// Set when the shutdown grace is nearly over: calls still running are answered with a 503.
    stopping: AtomicBool,
    stopped: tokio::sync::Notify,
}

impl Gateway {
    pub fn new(config: Config) -> Gateway {
        Gateway::with_clock(config, SystemClock::shared())
    }

    /// A gateway whose limiter and cache read time from `clock` (tests pass a manual one).
    pub fn with_clock(config: Config, clock: SharedClock) -> Gateway {
        let config = Arc::new(config);
        let cache = Arc::new(ResponseCache::new(
            &config.cache,
            config.apps.len(),
            config.server.max_rewrite_body,
            clock.clone(),
        ));
        let gen = Arc::new(Generation::new(config.clone()));
        let upstream = Arc::new(Upstream::new(&config.upstream));
        let limiter = Arc::new(Limiter::new(&config, clock));
        limiter.know_wabas(&config);
        let metrics = Arc::new(Metrics::new(&config));
        metrics.set_config(&gen.hash, &reload::dir_wabas(&config));
        let app_names = config.apps.iter().map(|a| a.name.clone()).collect();
        let invalidator = Invalidator::new(cache.clone(), limiter.clone(), app_names);
        let probe_config = Arc::new(ArcSwap::new(config.clone()));
        let probe_directory = Arc::new(ArcSwap::new(gen.directory.clone()));
        let prober = Prober::new(
            probe_config.clone(),
            probe_directory.clone(),
            upstream.clone(),
            limiter.clone(),
            metrics.clone(),
        );
        let webhooks = Hub::new(&config, invalidator.clone(), prober.clone());
        let rewriter = Rewriter::new(upstream.origin(), upstream.base_path());
        Gateway {
            state: Arc::new(State {
                live: ArcSwap::new(gen.clone()),
                source: OnceLock::new(),
                reloading: Mutex::new(()),
                probe_config,
                probe_directory,
                upstream,
                limiter,
                cache,
                metrics,
                invalidator,
                prober,
                webhooks,
                rewriter,
                stopping: AtomicBool::new(false),
                stopped: tokio::sync::Notify::new(),
            }),
            gen,
        }
    }

    /// Reloads (SIGHUP, `POST /admin/reload`, a rotated secret file) read `path` again, with `env`
    /// for its `*_env` keys. Without it, a reload is refused as having no file to read.
    pub fn reloading_from(
        self,
        path: impl Into<PathBuf>,
        env: impl Env + Send + Sync + 'static,
    ) -> Gateway {
        let _ = self.state.source.set(Source {
            path: path.into(),
            env: Box::new(env),
        });
        self
    }

    /// Ends every call still running through [`Gateway::unless_stopped`] with a Graph-shaped 503,
    /// so a caller cut by the end of the shutdown grace gets an answer it can retry elsewhere
    /// instead of an empty reply. Called once, shortly before the grace ends.
    pub fn stop_calls(&self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.state.stopped.notify_waiters();
    }

    /// Runs `call` unless [`Gateway::stop_calls`] comes first. `call` is polled first, so a call
    /// that is ready at once (a cache hit) never registers a waiter; it is borrowed pinned, so the
    /// (large) pipeline future is not moved again.
    pub async fn unless_stopped<T, F: Future<Output = Result<T, GatewayError>>>(
        &self,
        call: Pin<&mut F>,
    ) -> Result<T, GatewayError> {
        let stopped = async {
            // Created before the flag is read: a `notify_waiters` after that reaches it.
            let notified = self.state.stopped.notified();
            if !self.state.stopping.load(Ordering::SeqCst) {
                notified.await;
            }
        };
        tokio::select! {
            biased;
            r = call => r,
            _ = stopped => Err(GatewayError::Overloaded {
                what: "shutting down",
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// A handle on the newest generation: one atomic load. A request takes it once and keeps it.
    pub fn current(&self) -> Gateway {
        Gateway {
            state: self.state.clone(),
            gen: self.state.live.load_full(),
        }
    }

    /// The secret-free hash of this handle's config (`graphgate_config_info`).
    pub fn config_hash(&self) -> &str {
        &self.gen.hash
    }

    pub fn config(&self) -> &Config {
        &self.gen.config
    }

    pub fn directory(&self) -> &Directory {
        &self.gen.directory
    }

    pub fn upstream(&self) -> &Upstream {
        &self.state.upstream
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.state.limiter
    }

    pub fn cache(&self) -> &ResponseCache {
        &self.state.cache
    }

    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    pub fn invalidator(&self) -> &Invalidator {
        &self.state.invalidator
    }

    pub fn prober(&self) -> &Prober {
        &self.state.prober
    }

    pub fn webhooks(&self) -> Option<&Arc<Hub>> {
        self.state.webhooks.as_ref()
    }

    pub fn redactor(&self) -> &Redactor {
        &self.gen.redactor
    }

    pub fn rewriter(&self) -> &Rewriter {
        &self.state.rewriter
    }

    /// `server.public_url` without a trailing slash, when configured.
    pub fn public_base(&self) -> Option<&str> {
        self.gen.public_base.as_deref()
    }

    /// Scheme callers use when `server.public_url` is not set.
    pub fn public_scheme(&self) -> &'static str {
        if self.gen.config.server.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Restores the limiter's windows from `state_file`, resumes webhook deliveries left in
    /// `queue_dir` and starts the background tasks. An unusable `queue_dir` stops start-up here,
    /// before anything is spawned.
    pub fn start(&self) -> std::io::Result<Background> {
        let limiter = self.limiter().clone();
        match limiter.restore() {
            Ok(n) if n > 0 => tracing::info!(
                calls = n,
                "restored the rolling windows from the state file"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not restore the limiter state; starting empty")
            }
        }
        if let Some(h) = self.webhooks() {
            h.start()?;
        }
        let mut tasks = JoinSet::new();
        if let Some(link) = limiter.redis().cloned() {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            tasks.spawn(link.clone().watch());
            tasks.spawn(link.run(tx));
            tasks.spawn(limiter.clone().keep_shared());
            let invalidator = self.invalidator().clone();
            tasks.spawn(async move {
                while let Some(event) = rx.recv().await {
                    invalidator.apply(&event);
                }
            });
        }
        tasks.spawn(self.prober().clone().run());
        for w in &self.config().warnings {
            tracing::warn!("{w}");
        }
        if self.state.source.get().is_some() {
            // Taken now, so a file rotated before the watcher's first look is not missed.
            let paths = self.config().watched.clone();
            let seen = Fingerprint::of(&paths);
            tasks.spawn(self.clone().watch(paths, seen));
        }
        let sweeper = limiter.clone();
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                sweeper.sweep();
            }
        });
        if self.config().limits.state_file.is_some() {
            let (saver, every) = (limiter.clone(), self.config().limits.state_interval);
            tasks.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = saver.save() {
                        tracing::warn!(error = %e, "could not save the limiter state");
                    }
                }
            });
        }
        Ok(Background {
            tasks,
            gw: self.clone(),
        })
    }
}

impl Gateway {
    /// Reads the config file and every secret again, validates the whole and swaps it in, or keeps
    /// the old one and says why (the problems as `check-config` prints them, or the keys that
    /// change only at a restart). Logged and counted either way. `trigger` names the cause.
    pub async fn reload(&self, trigger: &'static str) -> Report {
        let gw = self.clone();
        // Reading files (a token directory may hold hundreds) stays off the runtime's threads.
        match tokio::task::spawn_blocking(move || gw.reload_now(trigger)).await {
            Ok(report) => report,
            Err(e) => {
                tracing::error!(error = %e, "the reload task failed; the config in use is kept");
                self.refusal(
                    trigger,
                    "invalid",
                    vec!["the reload failed unexpectedly".into()],
                )
            }
        }
    }

    fn reload_now(&self, trigger: &'static str) -> Report {
        let _one = self.state.reloading.lock_unpoisoned();
        let Some(source) = self.state.source.get() else {
            let why = "this gateway was not started from a config file: nothing to reload";
            return self.refusal(trigger, "refused", vec![why.into()]);
        };
        let new = match Config::load(&source.path, &*source.env) {
            Ok(c) => c,
            Err(e) => {
                let problems = e.problems.iter().map(|p| p.to_string()).collect();
                return self.refusal(trigger, "invalid", problems);
            }
        };
        let old = self.state.live.load_full();
        let changed = reload::restart_only_changes(&old.config, &new);
        if !changed.is_empty() {
            let problems = changed
                .into_iter()
                .map(|k| format!("{k}: changes only at a restart"))
                .collect();
            return self.refusal(trigger, "refused", problems);
        }
        let mut warnings = new.warnings.clone();
        warnings.extend(reload::kept_until_restart(&old.config, &new));
        let gen = Arc::new(Generation::new(Arc::new(new)));
        // Objects whose calls now go out with another owner's token: their cached answers were
        // fetched for the old owner, so they go through the one invalidation path.
        let mut purged = 0;
        for app in 0..gen.config.apps.len() {
            let before = old.directory.own_token_objects(app);
            let after = gen.directory.own_token_objects(app);
            for (object, _) in before.symmetric_difference(&after) {
                purged += self.state.invalidator.purge(app, &format!("/{object}"));
            }
        }
        self.state.limiter.know_wabas(&gen.config);
        // A rotated Redis password: connect with it in the background (never under the reload lock).
        let (limiter, config) = (self.state.limiter.clone(), gen.config.clone());
        tokio::spawn(async move { limiter.redis_access(&config).await });
        self.state.live.store(gen.clone());
        self.state.probe_config.store(gen.config.clone());
        self.state.probe_directory.store(gen.directory.clone());
        let m = &self.state.metrics;
        m.record_reload("ok");
        m.set_config(&gen.hash, &reload::dir_wabas(&gen.config));
        for w in &warnings {
            tracing::warn!(trigger, "{w}");
        }
        tracing::info!(
            trigger,
            hash = %gen.hash,
            clients = gen.config.clients.len(),
            purged,
            "config reloaded"
        );
        Report {
            outcome: "ok",
            trigger,
            problems: Vec::new(),
            warnings,
            hash: gen.hash.clone(),
            purged,
        }
    }

    /// A reload that keeps the config in use: logged once with its problems, and counted.
    fn refusal(
        &self,
        trigger: &'static str,
        outcome: &'static str,
        problems: Vec<String>,
    ) -> Report {
        self.state.metrics.record_reload(outcome);
        tracing::error!(
            trigger,
            outcome,
            problems = %problems.join("; "),
            "config reload refused; the config in use is kept"
        );
        Report {
            outcome,
            trigger,
            problems,
            warnings: Vec::new(),
            hash: self.state.live.load().hash.clone(),
            purged: 0,
        }
    }

    /// Polls the secret files and token directories of the config in use every
    /// [`reload::WATCH_EVERY`], and reloads when one changed (a rotated token, an onboarded WABA).
    /// A change that does not load is refused once, not again until the files change again.
    async fn watch(self, paths: Vec<PathBuf>, seen: Fingerprint) {
        let mut last = (paths, seen);
        loop {
            tokio::time::sleep(reload::WATCH_EVERY).await;
            let paths = self.state.live.load().config.watched.clone();
            if paths.is_empty() {
                continue;
            }
            let look = paths.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || Fingerprint::of(&look)).await else {
                continue;
            };
            // A reload that changed the list of files starts a new comparison.
            let changed = last.0 == paths && last.1 != now;
            last = (paths, now);
            if changed {
                self.reload("watch").await;
            }
        }
    }
}

/// Reloads on every SIGHUP until the process ends (the binary spawns it; a library user may too).
pub async fn reload_on_sighup(gw: Gateway) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /admin/reload");
            return;
        }
    };
    while hup.recv().await.is_some() {
        gw.reload("sighup").await;
    }
}

/// The background tasks of a started gateway. [`Background::stop`] ends them and saves the
/// limiter's state; dropping it aborts them too (a `JoinSet` aborts its tasks on drop).
pub struct Background {
    tasks: JoinSet<()>,
    gw: Gateway,
}

impl Background {
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
        if let Some(h) = self.gw.webhooks() {
            h.stop();
        }
        if let Err(e) = self.gw.limiter().save() {
            tracing::error!(error = %e, "could not save the limiter state at shutdown");
        }
    }
}
