//! Unit tests of the receiver's pure parts: signatures, the handshake, backoff, error statuses.

use std::time::Duration;

use http::{HeaderValue, StatusCode};

use super::queue::backoff;
use super::*;

fn secrets() -> Vec<(usize, Secret)> {
    vec![
        (0, Secret::new("first-secret")),
        (1, Secret::new("second-secret")),
    ]
}

// Meta's header is sha256=<lowercase hex HMAC of the raw body>; each app's secret is tried.
#[test]
fn a_signature_from_any_configured_app_secret_verifies_and_names_the_app() {
    let body = br#"{"entry":[]}"#;
    let sig = signature(b"second-secret", body);
    let h = HeaderValue::from_str(&sig).unwrap();
    assert_eq!(verify(&secrets(), Some(&h), body).unwrap(), 1);
}

// One changed byte, a wrong prefix, a short or non-hex digest, or no header: all refused.
#[test]
fn tampered_malformed_or_missing_signatures_are_refused() {
    let body = br#"{"entry":[]}"#;
    let good = signature(b"first-secret", body);
    let tampered = br#"{"entry":[1]}"#;
    let h = HeaderValue::from_str(&good).unwrap();
    assert!(matches!(
        verify(&secrets(), Some(&h), tampered),
        Err(WebhookError::BadSignature)
    ));
    for bad in [
        good.replace("sha256=", "sha1="),
        good[..good.len() - 2].to_string(),
        "sha256=zz".to_string(),
        String::new(),
    ] {
        let h = HeaderValue::from_str(&bad).unwrap();
        assert!(verify(&secrets(), Some(&h), body).is_err(), "{bad}");
    }
    assert!(matches!(
        verify(&secrets(), None, body),
        Err(WebhookError::MissingSignature)
    ));
}

// The backoff doubles per attempt, stays under the cap, and jitters only downwards by half.
#[test]
fn backoff_doubles_with_jitter_and_is_capped() {
    let (i, m) = (Duration::from_millis(100), Duration::from_secs(1));
    for _ in 0..50 {
        let b1 = backoff(i, m, 1);
        assert!(b1 >= Duration::from_millis(50) && b1 <= i, "{b1:?}");
        let b3 = backoff(i, m, 3);
        assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400));
        let b30 = backoff(i, m, 30);
        assert!(b30 >= m / 2 && b30 <= m);
        assert!(backoff(i, m, u32::MAX) <= m);
    }
}

// Each failure has one status; nothing maps to 5xx, so Meta never retries a body we refused.
#[test]
fn each_webhook_error_has_its_status() {
    let cases = [
        (WebhookError::VerifyRefused, StatusCode::FORBIDDEN),
        (WebhookError::BadChallenge, StatusCode::BAD_REQUEST),
        (WebhookError::MissingSignature, StatusCode::FORBIDDEN),
        (WebhookError::BadSignature, StatusCode::FORBIDDEN),
        (
            WebhookError::TooLarge { limit: 1 },
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (WebhookError::BodyFailed, StatusCode::BAD_REQUEST),
        (WebhookError::Malformed("x".into()), StatusCode::BAD_REQUEST),
    ];
    for (e, status) in cases {
        let resp = e.into_response();
        assert_eq!(resp.status(), status);
        assert!(resp
            .headers()
            .contains_key(crate::error::LOCAL_ERROR_HEADER));
    }
}

// Ids may be numbers or strings; entries without one share the `_` lane.
#[test]
fn entry_ids_are_read_as_strings_or_numbers() {
    assert_eq!(entry_id(&serde_json::json!({"id": "123"})), "123");
    assert_eq!(entry_id(&serde_json::json!({"id": 123})), "123");
    assert_eq!(entry_id(&serde_json::json!({})), "_");
}
