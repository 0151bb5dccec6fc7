//! Injected failures (latency, 5xx, connection resets, stalls, slow bodies) for Graph routes only.
//! Owns the fault settings and how a response body is shaped by them; never touches counting or data.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Faults applied to Graph calls (never to `/__sim/*`). Partial JSON is fine: missing fields are 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Added before answering every Graph call (after it was counted).
    pub latency_ms: u64,
    /// The next N Graph calls answer `fail_status` with a transient Graph error, before auth or counting.
    pub fail_next: u32,
    /// 5xx status for `fail_next`; anything outside 500..=599 (including 0) means 500.
    pub fail_status: u16,
    /// The next N calls send headers, then the body stream dies. These calls are processed and counted
    /// first: the request reached "Meta", only the answer was lost.
    pub reset_next: u32,
    /// Hold every call this long before answering (for proxy timeout tests). The call is counted on
    /// arrival, so a client that gives up has still spent it.
    pub stall_ms: u64,
    /// Stream the body in small chunks with this delay between them.
    pub slow_body_ms: u64,
}

/// What to do to one call, taken atomically from [`Faults`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub delay: Duration,
    pub fail: Option<u16>,
    pub reset: bool,
    pub slow: Option<Duration>,
}

/// Bytes per chunk when `slow_body_ms` is set.
const SLOW_CHUNK: usize = 16;

impl Faults {
    /// Consumes one use of the counted faults and returns the plan for this call.
    pub(crate) fn take(&mut self) -> Plan {
        let fail = (self.fail_next > 0).then(|| {
            self.fail_next -= 1;
            if (500..=599).contains(&self.fail_status) {
                self.fail_status
            } else {
                500
            }
        });
        // A call that fails outright never reaches the reset stage, so it doesn't consume a reset.
        let reset = fail.is_none() && self.reset_next > 0;
        if reset {
            self.reset_next -= 1;
        }
        Plan {
            delay: Duration::from_millis(self.latency_ms.saturating_add(self.stall_ms)),
            fail,
            reset,
            slow: (self.slow_body_ms > 0).then(|| Duration::from_millis(self.slow_body_ms)),
        }
    }
}

impl Plan {
    /// The response body under this plan: whole, trickled, or cut off after the first part.
    pub(crate) fn body(&self, bytes: Bytes) -> Body {
        if self.reset {
            let half = bytes.slice(..bytes.len().div_ceil(2).max(1).min(bytes.len()));
            let stream = futures_util::stream::unfold(0u8, move |step| {
                let half = half.clone();
                async move {
                    match step {
                        0 => Some((Ok(half), 1)),
                        1 => {
                            // Give hyper a moment to put the headers and first bytes on the wire.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Some((
                                Err(std::io::Error::new(
                                    std::io::ErrorKind::ConnectionReset,
                                    "sim: reset_next",
                                )),
                                2,
                            ))
                        }
                        _ => None,
                    }
                }
            });
            return Body::from_stream(stream);
        }
        match self.slow {
            None => Body::from(bytes),
            Some(delay) => {
                let stream = futures_util::stream::unfold(0usize, move |at| {
                    let bytes = bytes.clone();
                    async move {
                        if at >= bytes.len() {
                            return None;
                        }
                        if at > 0 {
                            tokio::time::sleep(delay).await;
                        }
                        let end = (at + SLOW_CHUNK).min(bytes.len());
                        Some((Ok::<_, std::io::Error>(bytes.slice(at..end)), end))
                    }
                });
                Body::from_stream(stream)
            }
        }
    }
}
