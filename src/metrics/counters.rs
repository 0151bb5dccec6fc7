//! A read-mostly map from label set to counter handle, in front of a family's own map, for the two
//! counters bumped on every request; fixed handle tables for the series whose labels are small
//! fixed sets (class x cache result); and how a count becomes a gauge value.
//!
//! It owns only the lookup; the family stays the source of truth. It must never count anywhere but
//! in the family's own counter, so `/metrics` always reads the same numbers.

use std::hash::Hash;
use std::sync::{OnceLock, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use super::labels::{CacheLabels, CacheResult, DurationLabels, NONE};

use crate::sync::RwLockExt;

/// Counter handles of a family by label set, in front of the family's own map: that map hashes
/// every label string with SipHash on each lookup, which was a few percent of a request; this one
/// uses foldhash under a read lock. A handle shares its count with the family's, so `/metrics`
/// reads the same numbers.
pub(super) struct Counters<L> {
    // Written only the first time a label set is seen; never held across an await.
    map: RwLock<foldhash::HashMap<L, Counter>>,
}

impl<L> Default for Counters<L> {
    fn default() -> Self {
        Counters {
            map: RwLock::new(foldhash::HashMap::default()),
        }
    }
}

impl<L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug> Counters<L> {
    pub(super) fn inc(&self, family: &Family<L, Counter>, labels: L) {
        if let Some(c) = self.map.read_unpoisoned().get(&labels) {
            c.inc();
            return;
        }
        let mut map = self.map.write_unpoisoned();
        map.entry(labels)
            .or_insert_with_key(|l| family.get_or_create(l).clone())
            .inc();
    }
}

/// The classes a request can be labelled with (`Scope::kind`, or none before classification).
const CLASSES: [&str; 4] = [NONE, "waba", "credit_line", "other"];
const RESULTS: usize = 5;

/// Handles of the per-request series with fixed label sets, made on first use (a series still
/// appears on its first observation, as with the family alone) and shared with the family.
#[derive(Default)]
pub(super) struct Handles {
    duration: [[OnceLock<Histogram>; RESULTS]; CLASSES.len()],
    cache: [OnceLock<Counter>; RESULTS],
}

type Durations = Family<DurationLabels, Histogram, fn() -> Histogram>;

impl Handles {
    /// Observes one request's time in its (class, cache result) series.
    pub(super) fn observe(
        &self,
        family: &Durations,
        class: &'static str,
        cache: CacheResult,
        secs: f64,
    ) {
        let labels = || DurationLabels {
            class,
            cache: cache.label(),
        };
        match CLASSES.iter().position(|c| *c == class) {
            Some(i) => self.duration[i][cache as usize]
                .get_or_init(|| family.get_or_create(&labels()).clone())
                .observe(secs),
            // Not reached: every class is listed above; still counted, through the family.
            None => family.get_or_create(&labels()).observe(secs),
        }
    }

    pub(super) fn cache(&self, family: &Family<CacheLabels, Counter>, r: CacheResult) -> &Counter {
        self.cache[r as usize].get_or_init(|| {
            family
                .get_or_create(&CacheLabels { result: r.label() })
                .clone()
        })
    }
}

/// A count as a gauge value (gauges are `i64`), saturating instead of wrapping.
pub(super) fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
