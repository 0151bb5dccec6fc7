//! Answers that never reached their caller whole, as `graphgate_responses_cut_total{reason}`: the
//! caller gave up before the answer's head (`before_head`), the caller went away while a streamed
//! body was being sent (`caller`), or Meta's body failed while it was streamed (`upstream`: a stall
//! past `upstream.body_idle_timeout`, a reset). Every reason is exported at 0 from the start.
//!
//! It only counts: the request path decides what a cut is and logs it. It must never take a label
//! from a request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Why an answer did not reach its caller whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The caller closed its connection before the answer's head was ready (logged as 499).
    BeforeHead,
    /// The caller closed its connection while a streamed body was being sent.
    Caller,
    /// Meta's body stalled or failed while it was streamed to the caller.
    Upstream,
}

impl Cut {
    pub const ALL: [Cut; 3] = [Cut::BeforeHead, Cut::Caller, Cut::Upstream];

    pub fn label(self) -> &'static str {
        match self {
            Cut::BeforeHead => "before_head",
            Cut::Caller => "caller",
            Cut::Upstream => "upstream",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CutLabels {
    reason: &'static str,
}

/// The `graphgate_responses_cut_total` family.
pub(super) struct CutMetrics(Family<CutLabels, Counter>);

impl CutMetrics {
    pub(super) fn register(registry: &mut Registry) -> CutMetrics {
        let family = Family::<CutLabels, Counter>::default();
        for cut in Cut::ALL {
            family
                .get_or_create(&CutLabels {
                    reason: cut.label(),
                })
                .inc_by(0);
        }
        registry.register(
            "graphgate_responses_cut",
            "Answers that did not reach the caller whole: caller gone before the head (before_head) \
             or mid-body (caller), Meta's body failed mid-stream (upstream)",
            family.clone(),
        );
        CutMetrics(family)
    }

    pub(super) fn inc(&self, cut: Cut) {
        self.0
            .get_or_create(&CutLabels {
                reason: cut.label(),
            })
            .inc();
    }
}
