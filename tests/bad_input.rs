//! Bad input: each case gets a clear Graph-shaped 4xx from graphgate itself, and nothing reaches
//! the upstream.

mod support;

use serde_json::Value;
use support::*;

fn total_calls(sim: &SimServer) -> u64 {
    let v = serde_json::to_value(sim.sim.stats()).unwrap();
    v["requests"]
        .as_array()
        .map(|a| a.len() as u64)
        .unwrap_or(0)
}

fn head(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gg.test\r\nAuthorization: Bearer {CLIENT_KEY}\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

async fn expect_local_4xx(proxy: &TestProxy, request: Vec<u8>, status: u16, what: &str) {
    let resp = raw(proxy.addr, &request).await;
    assert_eq!(raw_status(&resp), status, "{what}: {resp}");
    assert!(
        resp.to_ascii_lowercase().contains("x-graphgate-error"),
        "{what}: not marked as local"
    );
    let v = raw_json(&resp);
    let e = graph_error(&v);
    assert!(
        e["message"].as_str().unwrap().contains("graphgate"),
        "{what}: {v}"
    );
    assert_no_secrets(what, &resp);
}

// Malformed and ambiguous targets are refused before anything is forwarded.
#[tokio::test]
async fn malformed_targets_are_refused_without_an_upstream_call() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let cases = [
        (
            format!("/v19.0/{WABA}/%zz"),
            "malformed percent-encoding in the path",
        ),
        (
            format!("/v19.0/{WABA}?fields=%G0"),
            "malformed percent-encoding in the query",
        ),
        (format!("/v19.0/{WABA}/../{OTHER_WABA}"), "dot-dot segment"),
        (
            format!("/v19.0/{WABA}/%2e%2e/{OTHER_WABA}"),
            "encoded dot-dot segment",
        ),
        (format!("/v19.0//{WABA}"), "empty segment"),
        ("//evil.example/v19.0/x".to_string(), "scheme-relative path"),
        (
            format!("/v19.0/{WABA}%2Fmessage_templates"),
            "encoded slash",
        ),
        (
            format!("/v19.0/{WABA}?fields=%FF%FE"),
            "non-UTF-8 query bytes",
        ),
        (format!("/v19.0/{WABA}/%C3%28"), "non-UTF-8 path bytes"),
    ];
    for (path, what) in cases {
        expect_local_4xx(&proxy, head(&path, ""), 400, what).await;
    }
    // An absolute-form target naming another host is a forward-proxy request.
    let req = format!("GET http://evil.example/v19.0/{WABA} HTTP/1.1\r\nHost: gg.test\r\nAuthorization: Bearer {CLIENT_KEY}\r\nConnection: close\r\n\r\n");
    expect_local_4xx(&proxy, req.into_bytes(), 400, "absolute-form target").await;
    assert_eq!(total_calls(&sim), 0);
}

// Oversized URIs, header sets and bodies get 414, 431 and 413.
#[tokio::test]
async fn oversized_requests_get_414_431_and_413() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let long = format!("/v19.0/{WABA}?fields={}", "a".repeat(9 * 1024));
    expect_local_4xx(&proxy, head(&long, ""), 414, "URI over 8 KiB").await;

    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    expect_local_4xx(
        &proxy,
        head(&format!("/v19.0/{WABA}"), &many),
        431,
        "too many headers",
    )
    .await;

    let big = format!("X-Big: {}\r\n", "b".repeat(40 * 1024));
    expect_local_4xx(
        &proxy,
        head(&format!("/v19.0/{WABA}"), &big),
        431,
        "headers too large",
    )
    .await;
    assert_eq!(total_calls(&sim), 0);

    // max_body is small in this proxy so the test stays quick.
    let small = TestProxy::builder(&sim.url)
        .server("max_body = \"64KiB\"")
        .start()
        .await;
    let c = client();
    let r = c
        .post(format!("{}/v19.0/{PHONE}/media", small.url))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/octet-stream")
        .body(vec![b'x'; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    graph_error(&v);
    // Without a Content-Length (chunked), the limit still holds.
    let chunks =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 16 * 1024])));
    let r = c
        .post(format!("{}/__sim/sink", small.url))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        total_calls(&sim),
        0,
        "nothing Graph-shaped reached the simulator"
    );
}

// A form body that cannot be parsed, or a malformed batch, is the caller's error.
#[tokio::test]
async fn malformed_forms_and_batches_are_refused() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let c = client();
    let url = format!("{}/v19.0/{WABA}/message_templates", proxy.url);
    let r = c
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=%zz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    for batch in [
        "not json",
        "{}",
        "[1]",
        &serde_json::to_string(&vec![serde_json::json!({"relative_url": "1"}); 51]).unwrap(),
    ] {
        let r = c
            .post(format!("{}/", proxy.url))
            .bearer_auth(CLIENT_KEY)
            .form(&[("batch", batch)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{batch}");
        let v: Value = r.json().await.unwrap();
        graph_error(&v);
    }
    assert_eq!(total_calls(&sim), 0);
}
