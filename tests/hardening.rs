//! Requests crafted to slip past the checks: batches, duplicated parameters, encodings, method
//! overrides and unknown objects. Each is refused or made safe before anything reaches Meta.

mod support;

use serde_json::Value;
use support::*;

fn upstream_requests(sim: &SimServer) -> usize {
    serde_json::to_value(sim.sim.stats()).unwrap()["requests"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0)
}

// A batch on a WABA with its own token goes out with that token in the header, never in a URL
// (where Meta would echo it into paging links); a batch mixing tokens is refused.
#[tokio::test]
async fn batches_never_carry_a_token_in_a_url() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let c = client();
    let batch = serde_json::json!([{"method": "GET", "relative_url": format!("v19.0/{OTHER_WABA}/message_templates?limit=1")}]).to_string();
    let r = c
        .post(format!("{}/__sim/echo", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .form(&[("batch", &batch)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert!(!echo["body"].as_str().unwrap().contains("access_token"));
    assert!(
        echo["headers"].to_string().contains("[redacted]"),
        "sent with the WABA's token in the header"
    );
    assert!(!echo.to_string().contains(WABA_TOKEN));
    let mixed = serde_json::json!([
        {"method": "GET", "relative_url": format!("v19.0/{OTHER_WABA}")},
        {"method": "GET", "relative_url": format!("v19.0/{WABA}")},
    ])
    .to_string();
    let r = c
        .post(format!("{}/v19.0/", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .form(&[("batch", &mixed)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        upstream_requests(&sim),
        0,
        "the refused batch never left (echo calls are not Graph calls)"
    );
}

// The batch endpoint takes only url-encoded forms with one `batch`; duplicated `ids` are refused.
#[tokio::test]
async fn batches_in_other_encodings_and_duplicated_parameters_are_refused() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let c = client();
    let batch =
        serde_json::json!([{"method": "GET", "relative_url": format!("v19.0/{OTHER_WABA}")}])
            .to_string();
    let form = reqwest::multipart::Form::new().text("batch", batch.clone());
    let r = c
        .post(format!("{}/v19.0/", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "multipart batch");
    let r = c
        .post(format!("{}/", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .json(&serde_json::json!({"batch": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "JSON batch");
    let body = format!("batch={}&batch={}", urlencode("[]"), urlencode(&batch));
    let r = c
        .post(format!("{}/", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "two batch parameters");
    let r = c
        .get(format!("{}/v19.0/?ids={WABA}&ids={OTHER_WABA}", proxy.url))
        .bearer_auth(LIMITED_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "two ids parameters");
    assert_eq!(upstream_requests(&sim), 0);
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// A restricted client reaches only objects graphgate can place under its WABAs, whatever the
// spelling of the version, and cannot turn a GET into a DELETE with `method=`.
#[tokio::test]
async fn restricted_clients_are_denied_by_default() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let c = client();
    for path in [
        "/v19.0/1234567890",
        &format!("/V19.0/{OTHER_WABA}/message_templates"),
        "/v19.0/555/messages",
    ] {
        let r = c
            .get(format!("{}{path}", proxy.url))
            .bearer_auth(LIMITED_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    let r = c
        .get(format!(
            "{}/v19.0/{WABA}/message_templates?method=delete&name=x",
            proxy.url
        ))
        .bearer_auth(LIMITED_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!("{}/v19.0/{PHONE}", proxy.url))
        .bearer_auth(LIMITED_KEY)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 403, "its WABA's listed phone number is fine");
    assert_eq!(upstream_requests(&sim), 1);
}

// Whatever the caller accepts, graphgate asks Meta for plain bytes, so it can read and cache them.
#[tokio::test]
async fn upstream_is_asked_for_uncompressed_answers() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let r = client()
        .get(format!("{}/__sim/echo", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    let echo: Value = r.json().await.unwrap();
    let headers = echo["headers"].to_string().to_ascii_lowercase();
    assert!(
        headers.contains("identity") && !headers.contains("gzip"),
        "{headers}"
    );
}

// A key in the header is checked before the body is read: a wrong key with a form body that never
// arrives gets its 401 at once, and a body with no key at all is cut at preauth_body_timeout (408).
#[tokio::test]
async fn a_header_key_is_checked_before_the_body_and_keyless_bodies_have_a_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url)
        .server("preauth_body_timeout = \"300ms\"")
        .start()
        .await;
    let head = |auth: &str| {
        format!(
            "POST /v19.0/{WABA}/message_templates HTTP/1.1\r\nHost: x\r\n{auth}\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nname=x"
        )
    };
    for (auth, status) in [("Authorization: Bearer not-a-key\r\n", 401), ("", 408)] {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(head(auth).as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answered before the body arrived")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert_eq!(raw_status(&text), status, "{text}");
        assert!(text.contains("fbtrace_id"), "Graph-shaped: {text}");
    }
    assert_eq!(upstream_requests(&sim), 0);
}

// Beyond hyper's own limits (a head well over twice max_uri + max_header_bytes, here 200 KiB; more
// than twice max_headers headers; a URI over 64 KiB) hyper answers before graphgate sees the request: a bare
// 431 or 414 without a Graph body, then it closes the connection (as the README says). Nothing
// reaches Meta, and the answer comes at once.
#[tokio::test]
async fn heads_beyond_hypers_limits_get_its_bare_answer_and_a_close() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let huge_header = format!(
        "GET /v19.0/{WABA} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200 * 1024)
    );
    let many: String = (0..250).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /v19.0/{WABA} HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let huge_uri = format!(
        "GET /v19.0/{WABA}?fields={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    for (req, status) in [(huge_header, 431), (many_headers, 431), (huge_uri, 414)] {
        let started = std::time::Instant::now();
        let resp = raw(proxy.addr, req.as_bytes()).await;
        assert_eq!(raw_status(&resp), status, "{resp}");
        assert!(!resp.contains("fbtrace_id"), "hyper's own answer: {resp}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(4),
            "closed at once"
        );
    }
    assert_eq!(upstream_requests(&sim), 0);
}
