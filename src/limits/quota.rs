//! Each client's own `rate` quota (`[[client]] rate = "N/period"`), a governor GCRA checked before
//! any of Meta's buckets.
//!
//! It is graphgate's own fairness between callers, not Meta's budget: it must never count towards
//! or read a bucket, and never wait (a caller over its quota is refused at once).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{clock::Clock as _, DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::{ClientId, Config};

/// One limiter per client index; `None` for a client without a `rate`.
pub(super) struct Quotas(Vec<Option<DefaultDirectRateLimiter>>);

impl Quotas {
    pub(super) fn new(config: &Config) -> Quotas {
        Quotas(
            config
                .clients
                .iter()
                .map(|c| {
                    c.rate.and_then(|r| {
                        let per_cell = r.per / r.count;
                        let burst = NonZeroU32::new(r.count)?;
                        Quota::with_period(per_cell)
                            .map(|q| RateLimiter::direct(q.allow_burst(burst)))
                    })
                })
                .collect(),
        )
    }

    /// Takes one cell of `client`'s quota, or says how long until one is free.
    pub(super) fn check(&self, client: Option<ClientId>) -> Result<(), Duration> {
        let Some(Some(q)) = client.map(|c| self.0.get(c.0).and_then(|q| q.as_ref())) else {
            return Ok(());
        };
        q.check().map_err(|not_until| {
            not_until.wait_time_from(governor::clock::DefaultClock::default().now())
        })
    }
}
