//! End-to-end tests: a real simulator on 127.0.0.1:0 via `serve`, driven by a real reqwest client.
//! Owns no behaviour; each test states its scenario in one line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::*;

const TOKEN: &str = "tok-all";
const LIMITED: &str = "tok-limited";
const SECRET_TOKEN: &str = "tok-secret";
const APP: &str = "1000000000000001";
const SECRET_APP: &str = "2000000000000002";
const SECRET: &str = "shh-its-a-secret";

struct Harness {
    base: String,
    sim: Sim,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

fn config() -> SimConfig {
    SimConfig {
        tokens: vec![
            SimToken {
                token: TOKEN.into(),
                app_id: APP.into(),
                app_secret: None,
                access: Access::All,
            },
            SimToken {
                token: LIMITED.into(),
                app_id: APP.into(),
                app_secret: None,
                access: Access::Only(vec![seed::INACTIVE_WABA_ID.into()]),
            },
            SimToken {
                token: SECRET_TOKEN.into(),
                app_id: SECRET_APP.into(),
                app_secret: Some(SECRET.into()),
                access: Access::All,
            },
        ],
        ..SimConfig::default()
    }
}

async fn start(cfg: SimConfig) -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sim = Sim::new(cfg);
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, sim.clone(), async {
        let _ = rx.await;
    }));
    Harness {
        base: format!("http://{addr}"),
        sim,
        http: reqwest::Client::new(),
        _stop: tx,
    }
}

impl Harness {
    async fn get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        read(req.send().await.expect("send")).await
    }
}

async fn read(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn usage(h: &reqwest::header::HeaderMap, id: &str) -> Value {
    let raw = h
        .get("x-business-use-case-usage")
        .expect("usage header")
        .to_str()
        .expect("ascii");
    serde_json::from_str::<Value>(raw).expect("usage json")[id][0].clone()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// A call with no token, or an unknown one, gets Meta's 190 OAuthException with HTTP 400.
#[tokio::test]
async fn missing_or_unknown_token_gets_oauth_190() {
    let h = start(config()).await;
    for token in [None, Some("nope")] {
        let (status, headers, body) = h.get(&format!("/v19.0/{}", seed::WABA_ID), token).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], 190);
        assert_eq!(body["error"]["type"], "OAuthException");
        assert_eq!(
            body["error"]["message"],
            "Invalid OAuth access token - Cannot parse access token"
        );
        assert!(body["error"]["fbtrace_id"].is_string());
        assert!(headers.contains_key("x-fb-trace-id") && headers.contains_key("x-fb-request-id"));
        assert_eq!(headers["content-type"], "application/json; charset=UTF-8");
        assert_eq!(
            headers["cache-control"],
            "private, no-cache, no-store, must-revalidate"
        );
        assert!(
            !headers.contains_key("x-business-use-case-usage"),
            "rejected calls are not counted"
        );
    }
    assert!(h.sim.stats().buckets.is_empty());
}

// A token granted only the inactive WABA gets (#200) on the other WABA and its phone number.
#[tokio::test]
async fn token_without_access_to_waba_gets_permissions_error_200() {
    let h = start(config()).await;
    for path in [
        format!("/{}", seed::WABA_ID),
        format!("/{}/message_templates", seed::WABA_ID),
        format!("/{}", seed::PHONE_NUMBER_ID),
    ] {
        let (status, _, body) = h.get(&path, Some(LIMITED)).await;
        assert_eq!(
            (status, body["error"]["code"].as_u64()),
            (400, Some(200)),
            "{path}"
        );
        assert_eq!(body["error"]["type"], "OAuthException");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("(#200)")));
    }
    let (status, _, _) = h
        .get(&format!("/{}", seed::INACTIVE_WABA_ID), Some(LIMITED))
        .await;
    assert_eq!(status, 200);
}

// An app with a secret accepts classic and time-stamped proofs and rejects wrong, missing and expired ones.
#[tokio::test]
async fn appsecret_proof_classic_and_timestamped_pass_wrong_and_expired_fail() {
    let h = start(config()).await;
    let url = |q: String| format!("/v19.0/{}?{q}", seed::WABA_ID);
    let classic = appsecret_proof(SECRET, SECRET_TOKEN, None);
    let t = now_unix();
    let timed = appsecret_proof(SECRET, SECRET_TOKEN, Some(t));
    let old = t - 301;
    let expired = appsecret_proof(SECRET, SECRET_TOKEN, Some(old));
    let cases = [
        (format!("appsecret_proof={classic}"), true),
        (format!("appsecret_proof={timed}&appsecret_time={t}"), true),
        (
            format!(
                "appsecret_proof={}",
                appsecret_proof("wrong", SECRET_TOKEN, None)
            ),
            false,
        ),
        (format!("appsecret_proof={timed}"), false),
        (
            format!("appsecret_proof={expired}&appsecret_time={old}"),
            false,
        ),
        (String::new(), false),
    ];
    for (q, ok) in cases {
        let (status, _, body) = h.get(&url(q.clone()), Some(SECRET_TOKEN)).await;
        if ok {
            assert_eq!(status, 200, "{q}: {body}");
        } else {
            assert_eq!(status, 400, "{q}");
            assert_eq!(body["error"]["code"], 100);
            assert_eq!(body["error"]["type"], "GraphMethodException");
            assert_eq!(
                body["error"]["message"],
                "Invalid appsecret_proof provided in the API argument"
            );
        }
    }
    // Tokens of apps without a secret need no proof.
    assert_eq!(h.get(&url(String::new()), Some(TOKEN)).await.0, 200);
    let proofs = h.sim.stats().appsecret_proofs;
    assert_eq!(proofs.len(), 5);
    assert_eq!(proofs[1].time, Some(t.to_string()));
}

// Default WABA fields are the seed's four; fields= expands templates and phone numbers into data lists.
#[tokio::test]
async fn waba_fields_default_and_expand_edges() {
    let h = start(config()).await;
    let (status, headers, body) = h
        .get(&format!("/v21.0/{}", seed::WABA_ID), Some(TOKEN))
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["facebook-api-version"], "v21.0");
    assert_eq!(
        body,
        json!({"id": seed::WABA_ID, "name": "Your WhatsApp Business Account Name", "timezone_id": "1",
               "message_template_namespace": "05155c78_261e_4b2f_82b3_d7958d4cf75f"})
    );
    let (_, headers, body) = h
        .get(
            &format!(
                "/{}?fields=id,name,message_templates,phone_numbers",
                seed::WABA_ID
            ),
            Some(TOKEN),
        )
        .await;
    assert_eq!(headers["facebook-api-version"], "v19.0");
    assert!(body.get("timezone_id").is_none());
    let hello = &body["message_templates"]["data"][0];
    assert_eq!(hello["name"], "hello_world");
    assert_eq!(hello["id"], seed::HELLO_WORLD_TEMPLATE_ID);
    assert_eq!(hello["components"][0]["text"], "Hello World");
    assert_eq!(
        body["message_templates"]["data"][1]["name"],
        "sample_flight_confirmation"
    );
    let phone = &body["phone_numbers"]["data"][0];
    assert_eq!(phone["id"], seed::PHONE_NUMBER_ID);
    assert_eq!(phone["platform_type"], "CLOUD_API");
    assert_eq!(phone["throughput"], json!({"level": "STANDARD"}));
    let (status, _, body) = h
        .get(&format!("/{}?fields=id,bogus", seed::WABA_ID), Some(TOKEN))
        .await;
    assert_eq!((status, body["error"]["code"].as_u64()), (400, Some(100)));
}

// Following paging.next from the first page visits every template once; links keep the version, the
// other query params and the caller's query access_token, and page 2 links back with previous.
#[tokio::test]
async fn template_paging_walks_next_across_all_pages() {
    let h = start(config()).await;
    let mut url = format!(
        "{}/v19.0/{}/message_templates?limit=4&fields=name&access_token={TOKEN}",
        h.base,
        seed::WABA_ID
    );
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let (status, _, body) = read(h.http.get(&url).send().await.expect("send")).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        for t in body["data"].as_array().expect("data") {
            names.push(t["name"].as_str().expect("name").to_string());
            assert!(t.get("components").is_none(), "fields=name applies");
        }
        assert!(body["paging"]["cursors"]["before"].is_string());
        if pages == 2 {
            let prev = body["paging"]["previous"]
                .as_str()
                .expect("previous on page 2");
            assert!(prev.starts_with(&format!(
                "{}/v19.0/{}/message_templates?",
                h.base,
                seed::WABA_ID
            )));
        }
        match body["paging"]["next"].as_str() {
            Some(next) => {
                assert!(
                    next.contains(&format!("access_token={TOKEN}"))
                        && next.contains("fields=name")
                        && next.contains("limit=4")
                );
                url = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!(names.len(), seed::TEMPLATE_COUNT);
    assert_eq!(pages, seed::TEMPLATE_COUNT.div_ceil(4));
    names.sort();
    names.dedup();
    assert_eq!(names.len(), seed::TEMPLATE_COUNT, "no template twice");
    // With the token in a header, links carry no token.
    let (_, _, body) = h
        .get(
            &format!("/{}/message_templates?limit=4", seed::WABA_ID),
            Some(TOKEN),
        )
        .await;
    assert!(!body["paging"]["next"]
        .as_str()
        .expect("next")
        .contains("access_token"));
    assert!(body["paging"].get("previous").is_none());
}

// A template created by form POST shows up, a duplicate is refused with code 100, and DELETE ?name= removes it.
#[tokio::test]
async fn created_template_can_be_listed_and_deleted() {
    let h = start(config()).await;
    let url = format!("{}/v19.0/{}/message_templates", h.base, seed::WABA_ID);
    let form = [
        ("name", "order_ready"),
        ("language", "en_US"),
        ("category", "UTILITY"),
        (
            "components",
            r#"[{"type":"BODY","text":"Your order {{1}} is ready."}]"#,
        ),
    ];
    let (status, _, body) = read(
        h.http
            .post(&url)
            .bearer_auth(TOKEN)
            .form(&form)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "PENDING");
    assert_eq!(body["category"], "UTILITY");
    assert!(body["id"].is_string());
    let (status, _, dup) = read(
        h.http
            .post(&url)
            .bearer_auth(TOKEN)
            .form(&form)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!((status, dup["error"]["code"].as_u64()), (400, Some(100)));
    // JSON bodies work too, with access_token in the body.
    let (status, _, _) = read(
        h.http
            .post(&url)
            .json(&json!({"access_token": TOKEN, "name": "order_ready", "language": "es", "category": "UTILITY",
                           "components": [{"type": "BODY", "text": "Listo"}]}))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 200);
    let (_, _, list) = h
        .get(
            &format!("/{}/message_templates?name=order_ready", seed::WABA_ID),
            Some(TOKEN),
        )
        .await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(2));
    let (status, _, del) = read(
        h.http
            .delete(format!("{url}?name=order_ready"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!((status, del), (200, json!({"success": true})));
    let (_, _, list) = h
        .get(
            &format!("/{}/message_templates?name=order_ready", seed::WABA_ID),
            Some(TOKEN),
        )
        .await;
    assert_eq!(list, json!({"data": []}));
}

// Limit 5 in a 1.5s window: five calls pass with rising usage, the sixth gets 80008 at 100% with the
// configured status, and once the window has passed the next call is allowed again.
#[tokio::test]
async fn sixth_call_in_window_is_throttled_and_window_rolls() {
    let window = Duration::from_millis(1500);
    let h = start(SimConfig {
        window,
        waba_limit: 5,
        throttle_status: 429,
        ..config()
    })
    .await;
    let path = format!("/{}/phone_numbers", seed::INACTIVE_WABA_ID);
    for i in 1..=5u64 {
        let (status, headers, _) = h.get(&path, Some(TOKEN)).await;
        assert_eq!(status, 200, "call {i}");
        let u = usage(&headers, seed::INACTIVE_WABA_ID);
        assert_eq!(u["call_count"], i * 20);
        assert_eq!(u["type"], "whatsapp_business_management");
        assert_eq!(u["estimated_time_to_regain_access"], 0);
        let app: Value =
            serde_json::from_str(headers["x-app-usage"].to_str().expect("ascii")).expect("json");
        assert_eq!(app["call_count"], i * 20);
    }
    let (status, headers, body) = h.get(&path, Some(TOKEN)).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], 80008);
    assert_eq!(body["error"]["error_subcode"], 2446079);
    assert_eq!(body["error"]["is_transient"], true);
    assert_eq!(body["error"]["type"], "OAuthException");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("(#80008) There have been too many calls")));
    let u = usage(&headers, seed::INACTIVE_WABA_ID);
    assert_eq!(u["call_count"], 100);
    assert_eq!(u["estimated_time_to_regain_access"], 1);
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    let (status, headers, _) = h.get(&path, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(usage(&headers, seed::INACTIVE_WABA_ID)["call_count"], 20);
    let b = &h.sim.stats().buckets[&format!("{APP}/{}", seed::INACTIVE_WABA_ID)];
    assert_eq!(
        (b.calls, b.throttled, b.max_in_window, b.in_window, b.limit),
        (7, 1, 6, 1, 5)
    );
}

// The active WABA (a CLOUD_API number) gets active_waba_limit while the inactive one gets waba_limit,
// per app: another app's calls don't share the bucket.
#[tokio::test]
async fn active_waba_gets_higher_limit_than_inactive() {
    let h = start(SimConfig {
        waba_limit: 2,
        active_waba_limit: 4,
        ..config()
    })
    .await;
    let count_ok = |wabas: &'static str, token: &'static str| {
        let h = &h;
        async move {
            let mut ok = 0;
            for _ in 0..6 {
                if h.get(&format!("/{wabas}"), Some(token)).await.0 == 200 {
                    ok += 1;
                }
            }
            ok
        }
    };
    assert_eq!(count_ok(seed::INACTIVE_WABA_ID, TOKEN).await, 2);
    assert_eq!(count_ok(seed::WABA_ID, TOKEN).await, 4);
    let proofed = format!(
        "/{}?appsecret_proof={}",
        seed::WABA_ID,
        appsecret_proof(SECRET, SECRET_TOKEN, None)
    );
    assert_eq!(
        h.get(&proofed, Some(SECRET_TOKEN)).await.0,
        200,
        "other app has its own bucket"
    );
    let s = h.sim.stats();
    assert_eq!(
        s.buckets[&format!("{APP}/{}", seed::INACTIVE_WABA_ID)].limit,
        2
    );
    assert_eq!(s.buckets[&format!("{APP}/{}", seed::WABA_ID)].limit, 4);
    assert_eq!(s.buckets[&format!("{APP}/{}", seed::WABA_ID)].throttled, 2);
    assert_eq!(
        s.buckets[&format!("{SECRET_APP}/{}", seed::WABA_ID)].calls,
        1
    );
    // Phone number reads and messages are in no bucket.
    let (status, headers, body) = h
        .get(
            &format!("/{}?fields=status", seed::PHONE_NUMBER_ID),
            Some(TOKEN),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"status": "CONNECTED", "id": seed::PHONE_NUMBER_ID})
        )
    );
    assert!(!headers.contains_key("x-business-use-case-usage"));
    let (status, _, body) = read(
        h.http
            .post(format!("{}/v19.0/{}/messages", h.base, seed::PHONE_NUMBER_ID))
            .bearer_auth(TOKEN)
            .json(&json!({"messaging_product": "whatsapp", "to": "+1 555 0100", "type": "text", "text": {"body": "hi"}}))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["contacts"][0]["wa_id"], "15550100");
    assert!(body["messages"][0]["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("wamid.")));
    assert_eq!(h.sim.stats().buckets.len(), 3);
}

// All four credit-line endpoints share one per-app bucket keyed by the app id, and a shared credit
// creates a real allocation config.
#[tokio::test]
async fn credit_line_endpoints_share_one_bucket() {
    let h = start(SimConfig {
        credit_limit: 4,
        ..config()
    })
    .await;
    let (status, headers, body) = h
        .get(
            &format!("/{}/extendedcredits", seed::BUSINESS_ID),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"][0]["id"], seed::EXTENDED_CREDIT_ID);
    assert_eq!(usage(&headers, APP)["call_count"], 25);
    let (status, _, shared) = read(
        h.http
            .post(format!(
                "{}/{}/whatsapp_credit_sharing_and_attach",
                h.base,
                seed::EXTENDED_CREDIT_ID
            ))
            .bearer_auth(TOKEN)
            .form(&[
                ("waba_id", seed::INACTIVE_WABA_ID),
                ("waba_currency", "USD"),
            ])
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 200, "{shared}");
    assert_eq!(shared["waba_id"], seed::INACTIVE_WABA_ID);
    let alloc = shared["allocation_config_id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, _, body) = h.get(&format!("/{alloc}"), Some(TOKEN)).await;
    assert_eq!((status, body["id"].as_str()), (200, Some(alloc.as_str())));
    let (status, headers, body) = h
        .get(
            &format!(
                "/{}/owning_credit_allocation_configs",
                seed::EXTENDED_CREDIT_ID
            ),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(usage(&headers, APP)["call_count"], 100);
    let (status, _, body) = read(
        h.http
            .delete(format!("{}/{}", h.base, seed::ALLOCATION_CONFIG_ID))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_u64()), (400, Some(80008)));
    let b = &h.sim.stats().buckets[&format!("{APP}/credit_line")];
    assert_eq!(
        (b.calls, b.throttled, b.max_in_window, b.limit),
        (5, 1, 5, 4)
    );
}

// fail_next answers 5xx transient errors before counting, stall outlasts a client timeout, reset_next
// kills the body mid-stream; /__sim routes are never faulted, and DELETE clears faults.
#[tokio::test]
async fn faults_fail_stall_and_reset_graph_calls_only() {
    let h = start(config()).await;
    let path = format!("/{}", seed::WABA_ID);
    let set = h
        .http
        .post(format!("{}/__sim/faults", h.base))
        .json(&json!({"fail_next": 2, "fail_status": 503}))
        .send()
        .await
        .expect("send");
    assert_eq!(set.status(), 200);
    for _ in 0..2 {
        let (status, headers, body) = h.get(&path, Some(TOKEN)).await;
        assert_eq!(status, 503);
        assert_eq!(body["error"]["code"], 2);
        assert_eq!(body["error"]["is_transient"], true);
        assert_eq!(
            body["error"]["message"],
            "An unexpected error has occurred. Please retry your request later."
        );
        assert!(headers.contains_key("x-fb-trace-id"));
    }
    assert_eq!(h.get(&path, Some(TOKEN)).await.0, 200);

    h.sim.set_faults(Faults {
        stall_ms: 1500,
        ..Faults::default()
    });
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let err = quick
        .get(format!("{}{path}", h.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect_err("stalled");
    assert!(err.is_timeout());
    let (status, _, _) = read(
        quick
            .get(format!("{}/__sim/stats", h.base))
            .send()
            .await
            .expect("admin not stalled"),
    )
    .await;
    assert_eq!(status, 200);

    h.sim.set_faults(Faults {
        reset_next: 1,
        ..Faults::default()
    });
    let resp = h
        .http
        .get(format!("{}{path}", h.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err(), "body must die");
    assert_eq!(h.get(&path, Some(TOKEN)).await.0, 200, "only one reset");

    h.sim.set_faults(Faults {
        slow_body_ms: 5,
        latency_ms: 50,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    let (status, _, body) = h.get(&path, Some(TOKEN)).await;
    assert_eq!((status, body["id"].as_str()), (200, Some(seed::WABA_ID)));
    assert!(started.elapsed() >= Duration::from_millis(50));
    let cleared = h
        .http
        .delete(format!("{}/__sim/faults", h.base))
        .send()
        .await
        .expect("send");
    assert_eq!(cleared.status(), 200);
    assert_eq!(h.sim.faults(), Faults::default());
    // Failed calls are not counted; the stalled one (abandoned by the client) and the reset one were.
    let b = &h.sim.stats().buckets[&format!("{APP}/{}", seed::WABA_ID)];
    assert_eq!(b.calls, 5);
}

// /__sim/blob streams exactly N bytes and /__sim/sink counts a streamed upload.
#[tokio::test]
async fn blob_and_sink_stream_exact_byte_counts() {
    let h = start(config()).await;
    let n: u64 = 5 * 1024 * 1024 + 3;
    let resp = h
        .http
        .get(format!("{}/__sim/blob?bytes={n}", h.base))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let mut got = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        got += chunk.expect("chunk").len() as u64;
    }
    assert_eq!(got, n);
    let chunks = futures_util::stream::iter(
        (0..48).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 65536]))),
    );
    let (status, _, body) = read(
        h.http
            .post(format!("{}/__sim/sink", h.base))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!((status, body), (200, json!({"bytes": 48 * 65536})));
    assert_eq!(h.get("/__sim/blob?bytes=abc", None).await.0, 400);
    assert_eq!(h.sim.stats().total_calls, 0, "helpers are not Graph calls");
}

// Stats over HTTP match Sim::stats, log raw queries and Authorization headers (even of rejected calls),
// count tokens, and reset clears everything but data.
#[tokio::test]
async fn stats_record_requests_as_received_and_reset_clears_them() {
    let h = start(config()).await;
    h.get(
        &format!("/v19.0/{}?fields=name&access_token=leaked", seed::WABA_ID),
        None,
    )
    .await;
    h.get(&format!("/{}", seed::WABA_ID), Some(TOKEN)).await;
    let over_http: SimStats = h
        .http
        .get(format!("{}/__sim/stats", h.base))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let direct = h.sim.stats();
    assert_eq!(over_http.requests, direct.requests);
    assert_eq!(over_http.buckets, direct.buckets);
    assert_eq!(direct.total_calls, 2);
    assert_eq!(direct.requests[0].query, "fields=name&access_token=leaked");
    assert_eq!(direct.requests[0].path, format!("/v19.0/{}", seed::WABA_ID));
    assert_eq!(direct.requests[0].authorization, None);
    assert_eq!(
        direct.requests[1].authorization.as_deref(),
        Some("Bearer tok-all")
    );
    assert_eq!(direct.tokens_seen.get("leaked"), Some(&1));
    assert_eq!(direct.tokens_seen.get(TOKEN), Some(&1));
    let raw: Value = h
        .http
        .get(format!("{}/__sim/stats", h.base))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    for key in [
        "total_calls",
        "buckets",
        "tokens_seen",
        "appsecret_proofs",
        "requests",
    ] {
        assert!(raw.get(key).is_some(), "{key}");
    }
    let bucket = &raw["buckets"][format!("{APP}/{}", seed::WABA_ID)];
    for key in ["calls", "throttled", "max_in_window", "in_window", "limit"] {
        assert!(bucket.get(key).is_some(), "{key}");
    }
    let reset = h
        .http
        .post(format!("{}/__sim/reset", h.base))
        .send()
        .await
        .expect("send");
    assert_eq!(reset.status(), 200);
    assert_eq!(h.sim.stats(), SimStats::default());
}

// Unknown objects, deep paths, bad encodings, bad JSON and huge ids all get Graph-shaped errors.
#[tokio::test]
async fn garbage_requests_get_graph_shaped_errors() {
    let h = start(config()).await;
    let (status, _, body) = h.get("/v19.0/999999", Some(TOKEN)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 100);
    assert_eq!(body["error"]["type"], "GraphMethodException");
    assert!(body["error"]["message"].as_str().is_some_and(
        |m| m.starts_with("Unsupported get request. Object with ID '999999' does not exist")
    ));
    let huge = "9".repeat(5000);
    for path in [
        "/a/b/c".to_string(),
        format!("/{huge}"),
        "/%ZZ%E2?fields=%%%&limit=-1".to_string(),
        format!("/{}/message_templates?after=!!!", seed::WABA_ID),
        format!("/{}/message_templates?limit=abc", seed::WABA_ID),
        "/".to_string(),
        format!("/v19.0/{}/phone_numbers", seed::PHONE_NUMBER_ID),
    ] {
        let (status, headers, body) = h.get(&path, Some(TOKEN)).await;
        assert_eq!(status, 400, "{path}");
        assert!(
            body["error"]["code"].is_u64() && body["error"]["fbtrace_id"].is_string(),
            "{path}: {body}"
        );
        assert_eq!(headers["content-type"], "application/json; charset=UTF-8");
    }
    let (status, _, body) = read(
        h.http
            .post(format!("{}/{}/message_templates", h.base, seed::WABA_ID))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_u64()), (400, Some(100)));
}

// Echo shows the method, path, raw query, headers and body exactly as they arrived.
#[tokio::test]
async fn echo_reflects_the_request() {
    let h = start(config()).await;
    let (status, _, body) = read(
        h.http
            .post(format!("{}/__sim/echo?a=1&b=%20", h.base))
            .header("x-test", "yes")
            .body("hello")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/__sim/echo");
    assert_eq!(body["query"], "a=1&b=%20");
    assert_eq!(body["headers"]["x-test"], "yes");
    assert_eq!(body["body"], "hello");
}

// The remaining WABA edges answer Meta-shaped JSON and count against the WABA bucket.
#[tokio::test]
async fn assigned_users_subscribed_apps_and_number_status_work() {
    let h = start(config()).await;
    let base = format!("{}/{}", h.base, seed::WABA_ID);
    let post = |edge: &str, form: Vec<(&'static str, &'static str)>| {
        h.http
            .post(format!("{base}/{edge}"))
            .bearer_auth(TOKEN)
            .form(&form)
            .send()
    };
    assert_eq!(
        read(
            post(
                "assigned_users",
                vec![("user", "42"), ("tasks", "['MANAGE']")]
            )
            .await
            .expect("send")
        )
        .await
        .2,
        json!({"success": true})
    );
    let (_, _, users) = h
        .get(
            &format!(
                "/{}/assigned_users?business={}",
                seed::WABA_ID,
                seed::BUSINESS_ID
            ),
            Some(TOKEN),
        )
        .await;
    assert!(users["data"]
        .as_array()
        .expect("data")
        .iter()
        .any(|u| u["id"] == "42" && u["tasks"] == json!(["MANAGE"])));
    assert_eq!(
        read(post("subscribed_apps", vec![]).await.expect("send"))
            .await
            .2,
        json!({"success": true})
    );
    let (_, _, subs) = h
        .get(&format!("/{}/subscribed_apps", seed::WABA_ID), Some(TOKEN))
        .await;
    assert_eq!(subs["data"][0]["whatsapp_business_api_data"]["id"], APP);
    let del = h
        .http
        .delete(format!("{base}/subscribed_apps"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send");
    assert_eq!(read(del).await.2, json!({"success": true}));
    let (status, headers, st) = h
        .get(&format!("/{}", seed::WABA_TO_NUMBER_STATUS_ID), Some(TOKEN))
        .await;
    assert_eq!((status, st["waba_id"].as_str()), (200, Some(seed::WABA_ID)));
    assert!(usage(&headers, seed::WABA_ID).is_object());
    assert_eq!(
        h.sim.stats().buckets[&format!("{APP}/{}", seed::WABA_ID)].calls,
        6
    );
}

// Forty simultaneous calls against a limit of ten: exactly ten pass, whatever the interleaving, and the
// versioned and unversioned paths share the bucket.
#[tokio::test]
async fn concurrent_burst_admits_exactly_the_limit() {
    let h = start(SimConfig {
        waba_limit: 10,
        ..config()
    })
    .await;
    let calls = (0..40).map(|i| {
        let version = if i % 2 == 0 { "/v19.0" } else { "" };
        let url = format!(
            "{}{version}/{}/message_templates?limit=1",
            h.base,
            seed::INACTIVE_WABA_ID
        );
        let req = h.http.get(url).bearer_auth(TOKEN);
        async move { req.send().await.expect("send").status().as_u16() }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10);
    assert_eq!(statuses.iter().filter(|s| **s == 400).count(), 30);
    let b = &h.sim.stats().buckets[&format!("{APP}/{}", seed::INACTIVE_WABA_ID)];
    assert_eq!(
        (b.calls, b.throttled, b.max_in_window, b.in_window),
        (40, 30, 40, 40)
    );
}
