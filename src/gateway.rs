//! The gateway's state: one [`Gateway`] per process, a cheap-to-clone handle to everything built
//! from the [`Config`] (the directory of apps and clients, the upstream client, the limiter, the
//! cache, metrics, invalidation, the prober and the webhook receiver), and the background tasks
//! it owns ([`Background`]: the Redis link, probes, the limiter's sweep and state saves).
//!
//! It must never import the request path (`proxy`): the pipeline, the admin listener and the
//! background tasks all depend on this state, never the other way round.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::auth::Directory;
use crate::cache::ResponseCache;
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::invalidate::Invalidator;
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::rewrite::{Redactor, Rewriter};
use crate::upstream::Upstream;
use crate::webhooks::Hub;

/// How often idle limiter buckets are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Shared state: cheap to clone, one per process.
#[derive(Clone)]
pub struct Gateway(Arc<State>);

struct State {
    config: Arc<Config>,
    directory: Arc<Directory>,
    upstream: Arc<Upstream>,
    limiter: Arc<Limiter>,
    cache: Arc<ResponseCache>,
    metrics: Arc<Metrics>,
    invalidator: Invalidator,
    prober: Prober,
    /// The webhook receiver, when `[webhooks]` is configured.
    webhooks: Option<Arc<Hub>>,
    redactor: Redactor,
    rewriter: Rewriter,
    /// `server.public_url` without a trailing slash, when configured.
    public_base: Option<String>,
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
        let directory = Arc::new(Directory::new(&config));
        let upstream = Arc::new(Upstream::new(&config.upstream));
        let limiter = Arc::new(Limiter::new(&config, clock));
        let metrics = Arc::new(Metrics::new(&config));
        let app_names = config.apps.iter().map(|a| a.name.clone()).collect();
        let invalidator = Invalidator::new(cache.clone(), limiter.clone(), app_names);
        let prober = Prober::new(
            config.clone(),
            directory.clone(),
            upstream.clone(),
            limiter.clone(),
            metrics.clone(),
        );
        let webhooks = Hub::new(&config, invalidator.clone(), prober.clone());
        let public_base = config
            .server
            .public_url
            .as_ref()
            .map(|u| u.to_string().trim_end_matches('/').to_string());
        let redactor = Redactor::new(&config);
        let rewriter = Rewriter::new(upstream.origin(), upstream.base_path());
        Gateway(Arc::new(State {
            config,
            directory,
            upstream,
            limiter,
            cache,
            metrics,
            invalidator,
            prober,
            webhooks,
            redactor,
            rewriter,
            public_base,
        }))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn directory(&self) -> &Directory {
        &self.0.directory
    }

    pub fn upstream(&self) -> &Upstream {
        &self.0.upstream
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.0.limiter
    }

    pub fn cache(&self) -> &ResponseCache {
        &self.0.cache
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn invalidator(&self) -> &Invalidator {
        &self.0.invalidator
    }

    pub fn prober(&self) -> &Prober {
        &self.0.prober
    }

    pub fn webhooks(&self) -> Option<&Arc<Hub>> {
        self.0.webhooks.as_ref()
    }

    pub fn redactor(&self) -> &Redactor {
        &self.0.redactor
    }

    pub fn rewriter(&self) -> &Rewriter {
        &self.0.rewriter
    }

    /// `server.public_url` without a trailing slash, when configured.
    pub fn public_base(&self) -> Option<&str> {
        self.0.public_base.as_deref()
    }

    /// Scheme callers use when `server.public_url` is not set.
    pub fn public_scheme(&self) -> &'static str {
        if self.0.config.server.tls.is_some() {
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
