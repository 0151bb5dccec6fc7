//! `appsecret_proof`: the HMAC that proves to Meta a call comes from the app's owner, classic or
//! time-stamped (`appsecret_time`).
//!
//! It must never log, return or otherwise expose the app secret or the token it signs: only the
//! hex digest leaves this file.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{ProofMode, Secret};

/// `appsecret_proof` (and `appsecret_time` for the time-stamped form) as query pairs to append.
pub fn proof_params(app_secret: &Secret, token: &Secret, mode: ProofMode) -> String {
    match mode {
        ProofMode::Classic => format!(
            "appsecret_proof={}",
            appsecret_proof(app_secret, token, None)
        ),
        ProofMode::Timestamped => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!(
                "appsecret_proof={}&appsecret_time={now}",
                appsecret_proof(app_secret, token, Some(now))
            )
        }
    }
}

/// Hex HMAC-SHA256 keyed by the app secret over the token, or over `token|time` when time-stamped.
pub fn appsecret_proof(app_secret: &Secret, token: &Secret, time: Option<u64>) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(token.expose().as_bytes());
    if let Some(t) = time {
        mac.update(format!("|{t}").as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}
