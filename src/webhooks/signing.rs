//! `X-Hub-Signature-256`: HMAC-SHA256 over the raw body, as Meta signs what it sends and as graphgate
//! signs what it delivers to subscribers.
//!
//! A leaf of the webhooks folder. It must compare signatures only in constant time, and never log or
//! return a secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<hex>` of HMAC-SHA256(key, body), as Meta sends and as subscribers receive.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The app whose secret made `sig` over `body`, compared in constant time (`verify_slice`).
pub fn signed_by(secrets: &[(usize, Secret)], sig: &[u8], body: &[u8]) -> Option<usize> {
    secrets.iter().find_map(|(app, secret)| {
        let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes()).ok()?;
        mac.update(body);
        mac.verify_slice(sig).is_ok().then_some(*app)
    })
}
