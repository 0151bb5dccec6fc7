//! Token extraction and appsecret_proof verification, as Graph does them.
//! Decides only whether credentials are valid; never looks at WABAs, buckets or paths.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

/// How far a time-stamped proof may be from now (Meta: "expired after 5 minutes").
pub(crate) const PROOF_MAX_AGE_SECS: u64 = 300;

/// The token from `Authorization: Bearer ...` (or Graph's older `OAuth ...`), if any.
pub(crate) fn header_token(headers: &HeaderMap) -> Option<String> {
    // The same header syntax graphgate accepts from its callers.
    crate::auth::key_from_header(headers)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// Checks `appsecret_proof` (and `appsecret_time`, when present) for `token` against `secret`.
/// Classic: hex HMAC-SHA256(secret, token). Time-stamped: HMAC-SHA256(secret, token|time), time within
/// [`PROOF_MAX_AGE_SECS`] of `now_unix`.
pub(crate) fn proof_valid(
    secret: &str,
    token: &str,
    proof: Option<&str>,
    time: Option<&str>,
    now_unix: u64,
) -> bool {
    let Some(proof) = proof else { return false };
    let Ok(proof) = hex::decode(proof.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(token.as_bytes());
    if let Some(time) = time {
        let Ok(t) = time.trim().parse::<u64>() else {
            return false;
        };
        if t.abs_diff(now_unix) > PROOF_MAX_AGE_SECS {
            return false;
        }
        mac.update(b"|");
        mac.update(time.trim().as_bytes());
    }
    // Constant-time compare, as the real check would be.
    mac.verify_slice(&proof).is_ok()
}

/// The proof a client should send; used by tests and demos.
pub fn appsecret_proof(secret: &str, token: &str, time: Option<u64>) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(token.as_bytes());
    if let Some(t) = time {
        mac.update(format!("|{t}").as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod unit {
    use super::*;

    // Classic and time-stamped proofs verify; wrong, malformed and stale ones do not.
    #[test]
    fn proofs_verify_only_when_correct_and_fresh() {
        let now = 1_700_000_000;
        let classic = appsecret_proof("s", "tok", None);
        assert!(proof_valid("s", "tok", Some(&classic), None, now));
        assert!(!proof_valid("other", "tok", Some(&classic), None, now));
        assert!(!proof_valid("s", "tok", Some("zz"), None, now));
        assert!(!proof_valid("s", "tok", None, None, now));
        let timed = appsecret_proof("s", "tok", Some(now - 10));
        assert!(proof_valid(
            "s",
            "tok",
            Some(&timed),
            Some(&(now - 10).to_string()),
            now
        ));
        assert!(!proof_valid(
            "s",
            "tok",
            Some(&timed),
            Some(&(now - 9).to_string()),
            now
        ));
        let stale = appsecret_proof("s", "tok", Some(now - 301));
        assert!(!proof_valid(
            "s",
            "tok",
            Some(&stale),
            Some(&(now - 301).to_string()),
            now
        ));
    }

    // Bearer and OAuth schemes are read case-insensitively; others are ignored.
    #[test]
    fn header_token_reads_bearer_only() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "bearer  abc ".parse().expect("header"));
        assert_eq!(header_token(&h).as_deref(), Some("abc"));
        h.insert("authorization", "Basic abc".parse().expect("header"));
        assert_eq!(header_token(&h), None);
    }
}
