//! Graph API simulator: a local twin of the WhatsApp Business Management endpoints, with Meta's exact
//! rolling-window limits, error shapes and headers, plus fault injection for proxy tests.
//!
//! Layout (one concern per file):
//! - `config`: [`SimConfig`], [`SimToken`], [`Access`], the [`SimArgs`] CLI flags.
//! - `data`: seeded objects and their JSON views ([`seed`] ids).
//! - `routes`: method+path to operation, owning WABA and bucket (Meta's BUC table); runs operations.
//! - `graph`: the request pipeline (log, faults, auth, proof, access, count, answer) and Meta's headers.
//! - `auth`: tokens and appsecret_proof.  `limits`: exact rolling windows.  `paging`: cursors and links.
//! - `error`: Graph-shaped errors.  `faults`: [`Faults`].  `stats`: [`SimStats`] and the request log.
//! - `admin`: `/__sim/*` helpers.  `state`: [`Sim`], the state they all share.

mod admin;
mod auth;
mod config;
mod data;
mod error;
mod faults;
mod graph;
mod limits;
mod paging;
mod routes;
mod state;
mod stats;
#[cfg(test)]
mod tests;

pub use auth::appsecret_proof;
pub use config::{
    Access, SimArgs, SimConfig, SimToken, DEFAULT_ACTIVE_WABA_LIMIT, DEFAULT_APP_ID,
    DEFAULT_CREDIT_LIMIT, DEFAULT_THROTTLE_STATUS, DEFAULT_WABA_LIMIT, DEFAULT_WINDOW,
};
pub use data::seed;
pub use faults::Faults;
pub use stats::{BucketStats, ProofSeen, RequestSeen, SimStats};

pub use state::Sim;

impl Sim {
    /// Every route: `/__sim/*` helpers first, everything else is a Graph call.
    pub fn router(&self) -> axum::Router {
        admin::router()
            .fallback(graph::handle)
            .with_state(self.clone())
    }
}

/// Serves the simulator on `listener` until `shutdown` completes, then drains connections.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sim: Sim,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, sim.router())
        .with_graceful_shutdown(shutdown)
        .await
}
