//! A whole request through the pipeline in process (check, authenticate, classify, authorize with
//! batch parsing, cache, limit; the upstream is a closed port): any method, target, header and
//! form body gets a response, never a panic, and every error is Graph-shaped.
#![no_main]

use axum::body::Body;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const METHODS: [&str; 4] = ["GET", "POST", "DELETE", "HEAD"];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let p = graphgate_fuzz::parts(rest, b'\n', 3);
    let method = METHODS[m as usize % METHODS.len()];
    let mut b = http::Request::builder().method(method).header(
        "authorization",
        format!("Bearer {}", graphgate_fuzz::CLIENT_KEY),
    );
    if let Ok(uri) = http::Uri::try_from(p[0]) {
        b = b.uri(uri);
    } else {
        return;
    }
    if m & 0x80 != 0 {
        b = b.header("content-type", "application/x-www-form-urlencoded");
    } else if m & 0x40 != 0 {
        b = b.header("content-type", "application/json");
    }
    if let Ok(v) = http::HeaderValue::from_bytes(p[1]) {
        b = b.header("cache-control", v);
    }
    let Ok(req) = b.body(Body::from(p[2].to_vec())) else {
        return;
    };
    let gw = graphgate_fuzz::gateway().clone();
    graphgate_fuzz::runtime().block_on(async move {
        let svc = graphgate::ProxyService::new(gw);
        let Ok(resp) = svc.oneshot(req).await;
        let status = resp.status();
        let made_here = resp.headers().contains_key("x-graphgate-error");
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        if made_here && method != "HEAD" {
            let body = body.expect("a local error body");
            let v: serde_json_value::Value = match serde_json_value::from_slice(&body) {
                Ok(v) => v,
                Err(e) => panic!("{status}: not JSON ({e}): {body:?}"),
            };
            assert!(v["error"]["message"].is_string(), "{status}: {v}");
        }
    });
});
