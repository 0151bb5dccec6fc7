//! What operators see: the admin listener ([`admin`]: health, readiness, `/metrics`, limits and
//! cache JSON, purge), the status page (`status.rs`), and the Prometheus registry of one gateway
//! ([`metrics`]) that the request path and the webhook receiver count into.
//!
//! The admin listener is served only on `server.admin_listen` and never serves the proxy's callers
//! (on the proxy port every path is a Graph path). Nothing here may be imported by the leaves
//! (config, error, limits, cache, upstream): they are what ops reads, not what it serves. Within
//! ops, [`metrics`] never imports the admin listener or the webhook receiver, so the request path and
//! background work can count into it without depending on what serves the numbers.

pub mod admin;
pub mod metrics;
mod status;
