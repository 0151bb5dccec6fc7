//! What the simulator saw: request log, tokens, proofs, and the serializable stats snapshot.
//! Records only; never decides how a request is answered.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Requests kept in the log (oldest dropped first).
pub const REQUEST_LOG_CAP: usize = 10_000;
/// appsecret proofs kept (oldest dropped first).
pub const PROOF_LOG_CAP: usize = 1_000;
/// Distinct tokens remembered; bounds memory if a client sprays random tokens.
const TOKENS_SEEN_CAP: usize = 10_000;

/// Same shape as `GET /__sim/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Every Graph request received, counted in a bucket or not, including rejected ones.
    pub total_calls: u64,
    /// Keyed `<app id>/<waba id>` or `<app id>/credit_line`.
    pub buckets: BTreeMap<String, BucketStats>,
    pub tokens_seen: BTreeMap<String, u64>,
    pub appsecret_proofs: Vec<ProofSeen>,
    pub requests: Vec<RequestSeen>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketStats {
    pub calls: u64,
    pub throttled: u64,
    /// Largest number of calls (including the arriving one) seen in one window at any arrival.
    pub max_in_window: u64,
    /// Calls recorded within the window ending now.
    pub in_window: u64,
    pub limit: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofSeen {
    pub proof: String,
    pub time: Option<String>,
}

/// One Graph request exactly as received (raw query and Authorization header), so tests can prove what a
/// proxy forwarded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSeen {
    pub method: String,
    pub path: String,
    /// Raw query string, "" when none.
    pub query: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body_bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Journal {
    total_calls: u64,
    tokens_seen: HashMap<String, u64>,
    proofs: VecDeque<ProofSeen>,
    requests: VecDeque<RequestSeen>,
}

impl Journal {
    pub(crate) fn request(&mut self, r: RequestSeen) {
        self.total_calls += 1;
        if self.requests.len() == REQUEST_LOG_CAP {
            self.requests.pop_front();
        }
        self.requests.push_back(r);
    }

    pub(crate) fn token(&mut self, token: &str) {
        if let Some(n) = self.tokens_seen.get_mut(token) {
            *n += 1;
        } else if self.tokens_seen.len() < TOKENS_SEEN_CAP {
            self.tokens_seen.insert(token.to_string(), 1);
        }
    }

    pub(crate) fn proof(&mut self, p: ProofSeen) {
        if self.proofs.len() == PROOF_LOG_CAP {
            self.proofs.pop_front();
        }
        self.proofs.push_back(p);
    }

    /// Everything except buckets, which the caller adds from the limiter.
    pub(crate) fn snapshot(&self) -> SimStats {
        SimStats {
            total_calls: self.total_calls,
            buckets: BTreeMap::new(),
            tokens_seen: self
                .tokens_seen
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            appsecret_proofs: self.proofs.iter().cloned().collect(),
            requests: self.requests.iter().cloned().collect(),
        }
    }
}
