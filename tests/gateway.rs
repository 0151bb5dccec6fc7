//! The gateway core end to end: the real proxy on an ephemeral port in front of the real simulator.

mod support;

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use support::*;

fn stats(sim: &SimServer) -> Value {
    serde_json::to_value(sim.sim.stats()).unwrap()
}

async fn get(url: &str, key: &str) -> reqwest::Response {
    client().get(url).bearer_auth(key).send().await.unwrap()
}

// Each method reaches the upstream as itself, with the path and query as sent.
#[tokio::test]
async fn every_method_is_forwarded_with_path_and_query() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let c = client();
    for method in ["GET", "POST", "DELETE", "PUT", "PATCH"] {
        let resp = c
            .request(
                method.parse().unwrap(),
                format!("{}/__sim/echo?b=2&a=%2C1", proxy.url),
            )
            .bearer_auth(CLIENT_KEY)
            .body(if method == "GET" { "" } else { "payload" })
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(echo["method"], method);
        assert_eq!(echo["path"], "/__sim/echo");
        let q = echo["query"].as_str().unwrap();
        assert!(q.starts_with("b=2&a=%2C1&appsecret_proof="), "{q}");
    }
}

// Graph calls go out with the system token; the client key never reaches the upstream, wherever the
// caller put it.
#[tokio::test]
async fn upstream_sees_the_system_token_and_never_the_client_key() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let c = client();
    let base = format!("{}/v19.0/{WABA}", proxy.url);
    assert_eq!(get(&base, CLIENT_KEY).await.status(), 200);
    let r = c
        .get(format!("{base}/phone_numbers?access_token={CLIENT_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{base}/message_templates"))
        .form(&[
            ("access_token", CLIENT_KEY),
            ("name", "order_update"),
            ("language", "en_US"),
            ("category", "UTILITY"),
            (
                "components",
                r#"[{"type":"BODY","text":"Your order shipped"}]"#,
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let st = stats(&sim);
    let seen = st["tokens_seen"].as_object().unwrap();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec![SYSTEM_TOKEN],
        "only the system token: {seen:?}"
    );
    assert_no_secrets_except_system_token(&st["requests"].to_string());
}

fn assert_no_secrets_except_system_token(s: &str) {
    for k in [CLIENT_KEY, LIMITED_KEY, APP_SECRET, WABA_TOKEN] {
        assert!(!s.contains(k), "upstream saw {k}");
    }
}

// A WABA configured with its own Business Integration token is called with that token.
#[tokio::test]
async fn a_waba_with_its_own_token_is_called_with_it() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let r = get(
        &format!("{}/v19.0/{OTHER_WABA}/phone_numbers", proxy.url),
        CLIENT_KEY,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let st = stats(&sim);
    assert_eq!(st["tokens_seen"][WABA_TOKEN], 1);
    assert!(st["tokens_seen"].get(SYSTEM_TOKEN).is_none());
}

// Credentials are removed from header, query and form; the other parameters arrive untouched.
#[tokio::test]
async fn caller_credentials_are_stripped_from_header_query_and_form() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let c = client();
    let r = c
        .post(format!(
            "{}/__sim/echo?access_token={CLIENT_KEY}&appsecret_proof=x&appsecret_time=1&keep=1",
            proxy.url
        ))
        .form(&[
            ("access_token", CLIENT_KEY),
            ("appsecret_proof", "y"),
            ("text", "héllo wörld"),
        ])
        .header("X-Forwarded-For", "10.1.2.3")
        .header("Connection", "x-private")
        .header("x-private", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    let q = echo["query"].as_str().unwrap();
    assert!(q.starts_with("keep=1&appsecret_proof="), "query {q}");
    assert!(!q.contains(CLIENT_KEY) && !q.contains("proof=x"));
    let body = echo["body"].as_str().unwrap();
    assert_eq!(body, "text=h%C3%A9llo+w%C3%B6rld");
    let headers = echo["headers"].to_string().to_ascii_lowercase();
    // The upstream received our token; graphgate redacts it from the echo on its way back.
    assert!(headers.contains("bearer [redacted]"), "{headers}");
    assert!(!headers.contains(&SYSTEM_TOKEN.to_ascii_lowercase()));
    assert!(
        !headers.contains("x-forwarded-for")
            && !headers.contains("10.1.2.3")
            && !headers.contains("x-private")
    );
    // A JSON body's stray access_token is removed too.
    let r = c
        .post(format!("{}/__sim/echo", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .json(&serde_json::json!({"access_token": CLIENT_KEY, "messaging_product": "whatsapp"}))
        .send()
        .await
        .unwrap();
    let echo: Value = r.json().await.unwrap();
    let body: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"messaging_product": "whatsapp"}));
}

// The proof the upstream receives equals HMAC-SHA256(app secret, token|time) computed here.
#[tokio::test]
async fn appsecret_proof_equals_an_independently_computed_value() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    assert_eq!(
        get(&format!("{}/v19.0/{WABA}", proxy.url), CLIENT_KEY)
            .await
            .status(),
        200
    );
    let st = stats(&sim);
    let proofs = st["appsecret_proofs"].as_array().unwrap();
    assert!(!proofs.is_empty());
    for p in proofs {
        let time = p["time"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| p["time"].to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
        mac.update(format!("{SYSTEM_TOKEN}|{time}").as_bytes());
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(p["proof"], expected);
    }
}

// No key or an unknown key: 401 with code 190; outside the allowlist: 403 with code 200. None of
// them reaches the upstream.
#[tokio::test]
async fn unauthenticated_and_forbidden_calls_get_graph_errors_and_stay_local() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let before = stats(&sim)["total_calls"].as_u64().unwrap();
    let c = client();
    let url = format!("{}/v19.0/{WABA}/message_templates", proxy.url);
    for req in [
        c.get(&url),
        c.get(&url).bearer_auth("not-a-key"),
        c.get(format!("{url}?access_token=wrong")),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("x-graphgate-error"));
        let v: Value = r.json().await.unwrap();
        let e = graph_error(&v);
        assert_eq!(e["code"], 190);
        assert_eq!(e["type"], "OAuthException");
    }
    for (method, path) in [
        ("GET", format!("/v19.0/{OTHER_WABA}")),
        ("GET", format!("/{OTHER_WABA}/message_templates")),
        ("DELETE", format!("/v19.0/{WABA}/message_templates?name=x")),
    ] {
        let r = c
            .request(method.parse().unwrap(), format!("{}{path}", proxy.url))
            .bearer_auth(LIMITED_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(graph_error(&v)["code"], 200);
    }
    assert_eq!(
        get(&url, LIMITED_KEY).await.status(),
        200,
        "its own WABA with GET is fine"
    );
    assert_eq!(stats(&sim)["total_calls"].as_u64().unwrap(), before + 1);
}

// Following paging.next verbatim walks every page through the proxy, and no link carries a token.
#[tokio::test]
async fn paging_links_lead_back_through_the_proxy_without_tokens() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let c = client();
    let mut url = format!(
        "{}/v19.0/{WABA}/message_templates?limit=4&access_token={CLIENT_KEY}",
        proxy.url
    );
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let r = c.get(&url).bearer_auth(CLIENT_KEY).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert_no_secrets("page", &text);
        let v: Value = serde_json::from_str(&text).unwrap();
        names.extend(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string()),
        );
        pages += 1;
        match v["paging"]["next"].as_str() {
            Some(next) => {
                assert!(next.starts_with(&proxy.url), "next {next} leaves the proxy");
                assert!(!next.contains("access_token"));
                url = next.to_string();
            }
            None => break,
        }
        assert!(pages < 100);
    }
    assert!(pages > 2, "several pages");
    assert!(
        names.contains(&"hello_world".to_string())
            && names.contains(&"sample_flight_confirmation".to_string())
    );
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "no template twice");
}

// Meta's own response headers reach the caller unchanged.
#[tokio::test]
async fn metas_response_headers_reach_the_caller() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let r = get(&format!("{}/v19.0/{WABA}", proxy.url), CLIENT_KEY).await;
    assert_eq!(r.status(), 200);
    for h in [
        "x-fb-trace-id",
        "facebook-api-version",
        "x-business-use-case-usage",
        "x-app-usage",
    ] {
        assert!(r.headers().contains_key(h), "missing {h}");
    }
    assert!(r.headers().contains_key("x-request-id"));
}

// Whatever Host the caller uses, the request goes to the configured upstream.
#[tokio::test]
async fn the_callers_host_header_never_picks_the_upstream() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let resp = raw(
        proxy.addr,
        format!("GET /__sim/echo HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {CLIENT_KEY}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&resp), 200, "{resp}");
    assert!(!raw_json(&resp)["headers"]
        .to_string()
        .contains("evil.example"));
}

// Upstream down: 502; upstream stalled: 504 within the configured timeout. Both Graph-shaped and
// transient.
#[tokio::test]
async fn upstream_failures_are_transient_graph_errors() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let proxy = TestProxy::builder(&dead_url).start().await;
    let r = get(&format!("{}/v19.0/{WABA}", proxy.url), CLIENT_KEY).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(graph_error(&v)["is_transient"], true);

    let sim = start_sim(sim_config()).await;

    let proxy = TestProxy::builder(&sim.url).start().await;
    sim.sim.set_faults(graphgate::sim::Faults {
        stall_ms: 10_000,
        ..Default::default()
    });
    let t = Instant::now();
    let r = get(&format!("{}/v19.0/{WABA}", proxy.url), CLIENT_KEY).await;
    assert_eq!(r.status(), 504);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(graph_error(&v)["is_transient"], true);
}

// Upstream 5xx answers are relayed as Meta sent them (status and body), not replaced.
#[tokio::test]
async fn upstream_errors_are_relayed_unchanged() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    sim.sim.set_faults(graphgate::sim::Faults {
        fail_next: 1,
        fail_status: 503,
        ..Default::default()
    });
    let r = get(&format!("{}/v19.0/{WABA}", proxy.url), CLIENT_KEY).await;
    assert_eq!(r.status(), 503);
    assert!(!r.headers().contains_key("x-graphgate-error"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(graph_error(&v)["code"], 2);
}

// A batch's sub-requests obey the allowlists and lose the caller's credentials.
#[tokio::test]
async fn batch_sub_requests_are_checked_and_cleaned() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let c = client();
    let batch = serde_json::json!([
        {"method": "GET", "relative_url": format!("v19.0/{OTHER_WABA}?access_token={LIMITED_KEY}")},
    ])
    .to_string();
    let r = c
        .post(format!("{}/__sim/echo", proxy.url))
        .form(&[("access_token", LIMITED_KEY), ("batch", &batch)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "bravo may not touch the other WABA inside a batch either"
    );

    let batch = serde_json::json!([
        {"method": "GET", "relative_url": format!("v19.0/{WABA}?fields=name&access_token={CLIENT_KEY}")},
        {"method": "POST", "relative_url": format!("v19.0/{WABA}/message_templates"), "body": format!("name=x&access_token={CLIENT_KEY}")},
    ])
    .to_string();
    let r = c
        .post(format!("{}/__sim/echo", proxy.url))
        .form(&[("access_token", CLIENT_KEY), ("batch", &batch)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    let body = echo["body"].as_str().unwrap();
    assert!(!body.contains(CLIENT_KEY), "{body}");
    let fields: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let batch: Value =
        serde_json::from_str(&fields.iter().find(|(k, _)| k == "batch").unwrap().1).unwrap();
    assert_eq!(
        batch[0]["relative_url"],
        format!("/v19.0/{WABA}?fields=name")
    );
    assert_eq!(batch[1]["body"], "name=x");
}

// Nothing any caller received, and no log line, contains a token, app secret or client key.
#[tokio::test]
async fn no_secret_appears_in_responses_or_logs() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    let c = client();
    let mut seen = String::new();
    let urls = [
        format!(
            "{}/v19.0/{WABA}?fields=id,name,message_templates,phone_numbers",
            proxy.url
        ),
        format!(
            "{}/v19.0/{WABA}/message_templates?limit=2&access_token={CLIENT_KEY}",
            proxy.url
        ),
        format!("{}/v19.0/{OTHER_WABA}/phone_numbers", proxy.url),
        format!("{}/v19.0/{WABA}/%zz", proxy.url),
        format!("{}/v19.0/nonexistent_object_999", proxy.url),
    ];
    for url in &urls {
        for key in [CLIENT_KEY, LIMITED_KEY, "wrong-key"] {
            let r = c
                .get(url)
                .bearer_auth(key)
                .header("X-Request-Id", "scan-1")
                .send()
                .await
                .unwrap();
            seen.push_str(&format!("{:?}", r.headers()));
            seen.push_str(&r.text().await.unwrap());
        }
    }
    sim.sim.set_faults(graphgate::sim::Faults {
        fail_next: 2,
        fail_status: 500,
        ..Default::default()
    });
    for _ in 0..2 {
        let r = get(&urls[0], CLIENT_KEY).await;
        seen.push_str(&r.text().await.unwrap());
    }
    assert_no_secrets("responses", &seen);
    let logs = logs().text();
    assert!(logs.contains("scan-1"), "the request id is logged");
    assert_no_secrets("logs", &logs);
}

// SIGTERM-style shutdown lets an in-flight request finish.
#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let sim = start_sim(sim_config()).await;
    let proxy = TestProxy::builder(&sim.url).start().await;
    sim.sim.set_faults(graphgate::sim::Faults {
        latency_ms: 500,
        ..Default::default()
    });
    let url = format!("{}/v19.0/{WABA}", proxy.url);
    let inflight = tokio::spawn(async move { get(&url, CLIENT_KEY).await.status() });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let addr = proxy.addr;
    proxy.shutdown().await;
    assert_eq!(inflight.await.unwrap(), 200);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
