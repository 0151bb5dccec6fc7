//! Webhook signature and body handling: any body, signed correctly or not, gets an answer (200,
//! 400, 403 or 413), never a panic; a wrong signature is never accepted.
#![no_main]

use axum::body::Body;
use graphgate::webhooks::signature;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let sig = match mode % 3 {
        0 => signature(graphgate_fuzz::APP_SECRET.as_bytes(), body),
        1 => format!("sha256={}", "0".repeat(64)),
        _ => String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned(),
    };
    let gw = graphgate_fuzz::gateway().clone();
    let status = graphgate_fuzz::runtime().block_on(async move {
        let Ok(req) = http::Request::post(graphgate_fuzz::WEBHOOK_PATH)
            .header("x-hub-signature-256", sig)
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
        else {
            return None;
        };
        let svc = graphgate::ProxyService::new(gw);
        Some(svc.oneshot(req).await.map(|r| r.status().as_u16()))
    });
    if let Some(Ok(s)) = status {
        assert!(matches!(s, 200 | 400 | 403 | 413), "status {s}");
        if mode % 3 == 1 {
            assert_eq!(s, 403, "a wrong signature was accepted");
        }
    }
});
