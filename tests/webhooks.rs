//! Meta webhooks end to end: the real proxy in front of the real simulator, signed events posted
//! as Meta would, and small axum subscriber servers on `127.0.0.1:0` receiving the fan-out.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use graphgate::Gateway;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const VERIFY_TOKEN: &str = "verifyTOKEN-webhooks-7d1f";
const SUB_A_SECRET: &str = "subA-signing-SECRET-91aa";
const SUB_B_SECRET: &str = "subB-signing-SECRET-42bb";
const PATH: &str = "/webhooks/meta";

fn all_secrets() -> Vec<&'static str> {
    let mut s = SECRETS.to_vec();
    s.extend([VERIFY_TOKEN, SUB_A_SECRET, SUB_B_SECRET]);
    s
}

/// The standard test config, with the verify token and the subscriber secrets in the
/// environment.
fn hook_config(upstream: &str) -> ProxyBuilder {
    TestProxy::builder(upstream)
        .env("TEST_VERIFY_TOKEN", VERIFY_TOKEN)
        .env("TEST_SUB_A", SUB_A_SECRET)
        .env("TEST_SUB_B", SUB_B_SECRET)
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------- subscribers

#[derive(Debug, Clone)]
struct Got {
    body: Value,
    raw: Bytes,
    signature: Option<String>,
}

/// A subscriber service: records what it accepted; answers 503 while `fail_all` is set, or for
/// events of the WABA in `fail_waba`.
#[derive(Clone, Default)]
struct SinkState {
    got: Arc<Mutex<Vec<Got>>>,
    attempts: Arc<AtomicUsize>,
    fail_all: Arc<AtomicBool>,
    fail_waba: Arc<Mutex<Option<String>>>,
}

struct Sink {
    url: String,
    state: SinkState,
    _stop: oneshot::Sender<()>,
}

impl Sink {
    fn got(&self) -> Vec<Got> {
        self.state.got.lock().unwrap().clone()
    }

    /// Template ids of the accepted deliveries for `waba`, in arrival order.
    fn ids_for(&self, waba: &str) -> Vec<u64> {
        self.got()
            .iter()
            .filter(|g| g.body["entry"][0]["id"] == waba)
            .flat_map(|g| {
                g.body["entry"][0]["changes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|c| c["value"]["message_template_id"].as_u64())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

async fn sink_handler(State(s): State<SinkState>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    s.attempts.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let failing_waba = s.fail_waba.lock().unwrap().clone();
    if s.fail_all.load(Ordering::SeqCst)
        || failing_waba.is_some_and(|w| body["entry"][0]["id"] == w.as_str())
    {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    s.got.lock().unwrap().push(Got {
        body,
        signature: headers
            .get("x-hub-signature-256")
            .map(|v| v.to_str().unwrap().to_string()),
        raw,
    });
    StatusCode::OK
}

async fn start_sink() -> Sink {
    let state = SinkState::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(sink_handler))
        .with_state(state.clone());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    Sink {
        url,
        state,
        _stop: tx,
    }
}

// ---------------------------------------------------------------- proxy

struct Env {
    sim: SimServer,
    url: String,
    gw: Gateway,
    proxy: TestProxy,
}

impl Env {
    fn stats(&self) -> graphgate::metrics::WebhookStats {
        self.gw.webhooks().expect("webhooks configured").stats()
    }

    async fn shutdown(self) -> SimServer {
        self.proxy.shutdown().await;
        self.sim
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        client()
            .get(format!("{}{path}", self.url))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap()
    }

    async fn x_cache(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        r.headers()["x-cache"].to_str().unwrap().to_string()
    }

    /// Posts `body` as Meta would, signed with the test app's secret.
    async fn post_event(&self, body: &str) -> reqwest::Response {
        self.post_signed(
            body,
            &format!("sha256={}", hmac_hex(APP_SECRET, body.as_bytes())),
        )
        .await
    }

    async fn post_signed(&self, body: &str, signature: &str) -> reqwest::Response {
        client()
            .post(format!("{}{PATH}", self.url))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }
}

/// The `[webhooks]` section with fast retries, plus `extra` (more keys or subscriber tables).
fn webhooks_toml(extra: &str) -> String {
    format!(
        "\n[webhooks]\npath = \"{PATH}\"\nverify_token_env = \"TEST_VERIFY_TOKEN\"\n\
         retry_initial = \"20ms\"\nretry_max = \"100ms\"\n{extra}\n"
    )
}

fn subscriber_toml(name: &str, url: &str, secret_env: Option<&str>, fields: &str) -> String {
    let secret = secret_env
        .map(|e| format!("secret_env = \"{e}\"\n"))
        .unwrap_or_default();
    format!("\n[[webhooks.subscriber]]\nname = \"{name}\"\nurl = \"{url}\"\n{secret}{fields}\n")
}

/// The default test config (WABA active, OTHER_WABA inactive) with `[webhooks]` and `extra`.
fn hooks(upstream: &str, extra: &str) -> ProxyBuilder {
    hook_config(upstream).merge(&webhooks_toml(extra))
}

/// Starts `proxy` in front of `sim`.
async fn launch(sim: SimServer, proxy: ProxyBuilder) -> Env {
    let proxy = proxy.start().await;
    Env {
        sim,
        url: proxy.url.clone(),
        gw: proxy.gw.clone(),
        proxy,
    }
}

/// The simulator and, in front of it, [`hooks`] with `extra`.
async fn start_hooks(extra: &str) -> Env {
    let sim = start_sim(sim_config()).await;
    let proxy = hooks(&sim.url, extra);
    launch(sim, proxy).await
}

fn event(waba: &str, field: &str, value: Value) -> String {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": waba, "time": 1751247548, "changes": [{"value": value, "field": field}]}]
    })
    .to_string()
}

fn template_event(waba: &str, template_id: u64) -> String {
    event(
        waba,
        "message_template_status_update",
        json!({"event": "APPROVED", "message_template_id": template_id,
               "message_template_name": "order_confirmation", "message_template_language": "en-US",
               "reason": "NONE", "message_template_category": "UTILITY"}),
    )
}

/// Polls `cond` every 20 ms for up to 10 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn templates(waba: &str) -> String {
    format!("/v19.0/{waba}/message_templates?limit=2")
}

fn waba_view(waba: &str) -> String {
    format!("/v19.0/{waba}?fields=name,currency")
}

// ---------------------------------------------------------------- handshake

// Meta's GET with the right verify token gets the challenge back as plain text; a wrong token,
// a wrong mode or no token gets a Graph-shaped 403, and a missing challenge a 400.
#[tokio::test]
async fn handshake_echoes_the_challenge_only_for_the_right_verify_token() {
    let e = start_hooks("").await;
    let url = |q: &str| format!("{}{PATH}?{q}", e.url);
    let ok = client()
        .get(url(&format!(
            "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={VERIFY_TOKEN}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(ok.text().await.unwrap(), "1158201444");

    for q in [
        "hub.mode=subscribe&hub.challenge=1&hub.verify_token=wrong".to_string(),
        format!("hub.mode=unsubscribe&hub.challenge=1&hub.verify_token={VERIFY_TOKEN}"),
        "hub.mode=subscribe&hub.challenge=1".to_string(),
        String::new(),
    ] {
        let r = client().get(url(&q)).send().await.unwrap();
        assert_eq!(r.status(), 403, "{q}");
        assert_eq!(r.headers()["x-graphgate-error"], "webhook-verify");
        let text = r.text().await.unwrap();
        graph_error(&serde_json::from_str(&text).unwrap());
        assert!(!text.contains(VERIFY_TOKEN));
    }
    let r = client()
        .get(url(&format!(
            "hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let s = e.stats();
    assert_eq!((s.handshakes_ok, s.handshakes_refused), (1, 5));
}

// The webhook path needs no client key, but every other path still does.
#[tokio::test]
async fn the_webhook_path_skips_client_keys_and_nothing_else_does() {
    let e = start_hooks("").await;
    let r = client()
        .get(format!("{}/v19.0/{WABA}", e.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = e.post_event(&template_event(WABA, 1)).await;
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------- signatures and bodies

// A tampered or missing signature is a 403 that changes nothing (the cache stays HIT, nothing is
// counted or delivered); the same event correctly signed empties the WABA's template views.
#[tokio::test]
async fn only_a_valid_signature_lets_an_event_act() {
    let sink = start_sink().await;
    let e = start_hooks(&subscriber_toml("a", &sink.url, None, "")).await;
    assert_eq!(e.x_cache(&templates(WABA)).await, "MISS");
    assert_eq!(e.x_cache(&templates(WABA)).await, "HIT");
    let body = template_event(WABA, 42);
    let good = format!("sha256={}", hmac_hex(APP_SECRET, body.as_bytes()));
    let tampered_body = body.replace("APPROVED", "REJECTED");
    let r = e.post_signed(&tampered_body, &good).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-graphgate-error"], "webhook-signature");
    let wrong_key = format!("sha256={}", hmac_hex("not-the-secret", body.as_bytes()));
    assert_eq!(e.post_signed(&body, &wrong_key).await.status(), 403);
    assert_eq!(
        e.post_signed(&body, &good.replace("sha256=", "sha1="))
            .await
            .status(),
        403
    );
    let unsigned = client()
        .post(format!("{}{PATH}", e.url))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 403);
    graph_error(&unsigned.json().await.unwrap());
    assert_eq!(e.x_cache(&templates(WABA)).await, "HIT");
    let s = e.stats();
    assert_eq!(s.signature_failures, 4);
    assert!(s.events.is_empty());

    let r = e.post_signed(&body, &good).await;
    assert_eq!(r.status(), 200);
    assert_eq!(e.x_cache(&templates(WABA)).await, "MISS");
    until("the valid event is delivered", || sink.got().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.got().len(), 1, "refused events were delivered");
    assert_eq!(e.stats().events["message_template_status_update"], 1);
    // The same figures on /metrics.
    let resp = tower::ServiceExt::oneshot(
        graphgate::admin::router(e.gw.clone()),
        http::Request::get("/metrics")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    for line in [
        "graphgate_webhook_signature_failures_total 4",
        "graphgate_webhook_events_total{field=\"message_template_status_update\"} 1",
        "graphgate_webhook_deliveries_total{subscriber=\"a\",outcome=\"delivered\"} 1",
        "graphgate_webhook_queue_depth{subscriber=\"a\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
}

// A body over max_body is a 413 (declared or streamed), invalid JSON or a non-envelope after a
// valid signature is a 400, and the proxy keeps serving.
#[tokio::test]
async fn oversized_and_malformed_bodies_get_a_clear_4xx() {
    let e = start_hooks("max_body = \"1KiB\"\n").await;
    let big = format!("{{\"entry\":[],\"pad\":\"{}\"}}", "x".repeat(2048));
    let r = e.post_event(&big).await;
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["x-graphgate-error"], "body-too-large");
    // Chunked, so the size is only found while reading.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..8).map(|_| Ok(Bytes::from(vec![b' '; 512]))).collect();
    let r = client()
        .post(format!("{}{PATH}", e.url))
        .header("x-hub-signature-256", "sha256=00")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    for bad in [
        "not json{",
        "[1,2]",
        "{\"object\":\"whatsapp_business_account\"}",
        "{\"entry\":5}",
    ] {
        let r = e.post_event(bad).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(r.headers()["x-graphgate-error"], "webhook-malformed");
        let text = r.text().await.unwrap();
        graph_error(&serde_json::from_str(&text).unwrap());
    }
    // Odd but well-formed entries are accepted and ignored where they make no sense.
    let odd = json!({"entry": [{"id": {"x": 1}}, {"changes": [{"field": 5}]}, 7]}).to_string();
    assert_eq!(e.post_event(&odd).await.status(), 200);
    assert_eq!(e.x_cache(&templates(WABA)).await, "MISS");
    assert_eq!(e.stats().bodies_refused, 6);
}

// A body near Meta's 3 MB limit passes under the default max_body (no hidden 2 MB limit).
#[tokio::test]
async fn a_body_near_metas_3_mb_limit_is_accepted() {
    let e = start_hooks("").await;
    let mut v: Value = serde_json::from_str(&template_event(WABA, 1)).unwrap();
    v["pad"] = Value::String("x".repeat(2_900_000));
    assert_eq!(e.post_event(&v.to_string()).await.status(), 200);
    assert_eq!(e.stats().events["message_template_status_update"], 1);
}

// ---------------------------------------------------------------- invalidation

// Each template field drops that WABA's template list and object views (and the template's own
// object); the other WABA and the phone number stay HIT.
#[tokio::test]
async fn template_events_invalidate_only_that_wabas_views() {
    let e = start_hooks("").await;
    let other = templates(OTHER_WABA);
    let phone = format!("/v19.0/{PHONE}");
    let fields = [
        "message_template_status_update",
        "message_template_quality_update",
        "message_template_components_update",
        "template_category_update",
    ];
    for field in fields {
        for p in [&templates(WABA), &waba_view(WABA), &other, &phone] {
            e.x_cache(p).await;
            assert_eq!(e.x_cache(p).await, "HIT", "{p} warmed");
        }
        let r = e
            .post_event(&event(
                WABA,
                field,
                json!({"message_template_id": 1689556908129832u64, "new_quality_score": "YELLOW"}),
            ))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(e.x_cache(&templates(WABA)).await, "MISS", "{field}");
        assert_eq!(e.x_cache(&waba_view(WABA)).await, "MISS", "{field}");
        assert_eq!(e.x_cache(&other).await, "HIT", "{field}: other WABA");
        assert_eq!(e.x_cache(&phone).await, "HIT", "{field}: phone number");
    }
    assert_eq!(e.stats().events.values().sum::<u64>(), 4);
}

// Phone-number and account fields drop the WABA's own views and its configured numbers; the
// other WABA stays HIT.
#[tokio::test]
async fn phone_and_account_events_invalidate_the_waba_and_its_numbers() {
    let e = start_hooks("").await;
    let phones = format!("/v19.0/{WABA}/phone_numbers");
    let phone = format!("/v19.0/{PHONE}");
    let other = waba_view(OTHER_WABA);
    let cases = [
        (
            "phone_number_quality_update",
            json!({"display_phone_number": "15550783881", "event": "THROUGHPUT_UPGRADE", "current_limit": "TIER_UNLIMITED"}),
        ),
        (
            "phone_number_name_update",
            json!({"display_phone_number": "15550783881", "decision": "APPROVED", "requested_verified_name": "Lucky Shrub", "rejection_reason": null}),
        ),
        (
            "account_update",
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "REINSTATE", "waba_ban_date": "April 17, 2025"}}),
        ),
    ];
    for (field, value) in cases {
        for p in [&phones, &phone, &waba_view(WABA), &other] {
            e.x_cache(p).await;
            assert_eq!(e.x_cache(p).await, "HIT", "{p} warmed");
        }
        assert_eq!(e.post_event(&event(WABA, field, value)).await.status(), 200);
        assert_eq!(e.x_cache(&phones).await, "MISS", "{field}");
        assert_eq!(e.x_cache(&phone).await, "MISS", "{field}");
        assert_eq!(e.x_cache(&waba_view(WABA)).await, "MISS", "{field}");
        assert_eq!(e.x_cache(&other).await, "HIT", "{field}: other WABA");
    }
}

// A field graphgate does not act on (messages), or another object than a WABA, changes nothing
// but is still counted and delivered.
#[tokio::test]
async fn unknown_fields_are_only_fanned_out() {
    let sink = start_sink().await;
    let e = start_hooks(&subscriber_toml("a", &sink.url, None, "")).await;
    e.x_cache(&templates(WABA)).await;
    let body = event(WABA, "messages", json!({"messaging_product": "whatsapp"}));
    assert_eq!(e.post_event(&body).await.status(), 200);
    assert_eq!(e.x_cache(&templates(WABA)).await, "HIT");
    until("the messages event is delivered", || sink.got().len() == 1).await;
    assert_eq!(
        sink.got()[0].body["entry"][0]["changes"][0]["field"],
        "messages"
    );
    assert_eq!(sink.got()[0].signature, None, "no secret: unsigned");
    assert_eq!(e.stats().events["messages"], 1);
    // Another object's entries are not WABAs: even a template field acts on nothing.
    let page = template_event(WABA, 3).replace("whatsapp_business_account", "page");
    assert_eq!(e.post_event(&page).await.status(), 200);
    assert_eq!(e.x_cache(&templates(WABA)).await, "HIT");
    until("the page event is delivered", || sink.got().len() == 2).await;
}

// An `active = "auto"` WABA whose number is deregistered drops to 200 calls after an
// account_update, and goes back to 5000 after a phone-number event once it is registered again.
#[tokio::test]
async fn account_and_phone_events_reprobe_an_auto_waba_and_move_its_limit() {
    let sim = start_sim(sim_config()).await;
    let proxy = hooks(&sim.url, "").waba_active(WABA, "auto").cache(false);
    let e = launch(sim, proxy).await;
    let wait_for =
        |want: &'static str| policy_with(format!("{}/v19.0/{WABA}?fields=name", e.url), want);
    let p = wait_for("q=5000").await;
    assert_eq!(p, format!("\"waba:{WABA}\";q=5000;w=3600"));

    assert!(e.sim.sim.set_platform_type(PHONE, "NOT_APPLICABLE"));
    let deregistered = event(
        WABA,
        "account_update",
        json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1641330498}]}),
    );
    assert_eq!(e.post_event(&deregistered).await.status(), 200);
    assert_eq!(
        wait_for("q=200;").await,
        format!("\"waba:{WABA}\";q=200;w=3600")
    );

    assert!(e.sim.sim.set_platform_type(PHONE, "CLOUD_API"));
    let upgraded = event(
        WABA,
        "phone_number_quality_update",
        json!({"display_phone_number": "15550783881", "event": "ONBOARDING"}),
    );
    assert_eq!(e.post_event(&upgraded).await.status(), 200);
    wait_for("q=5000").await;
}

/// Polls the WABA's `RateLimit-Policy` until it contains `want`, and returns it.
async fn policy_with(url: String, want: &'static str) -> String {
    let start = Instant::now();
    loop {
        let r = client()
            .get(&url)
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap();
        let p = r.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .to_string();
        if p.contains(want) {
            return p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{p} never had {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// In shared mode (Redis), a template event received by one replica drops the WABA's cached
// views on the other replica too; the other WABA stays HIT there.
#[tokio::test]
async fn in_shared_mode_an_event_on_one_replica_invalidates_the_others() {
    let redis = support::redis::RedisServer::start();
    let sim = start_sim(sim_config()).await;
    let mut reps = Vec::new();
    for _ in 0..2 {
        let p = hooks(&sim.url, "").redis(&redis.url(), "wh").start().await;
        let gw = p.gw.clone();
        let started = Instant::now();
        while gw.limiter().backend_state() != "up" {
            assert!(started.elapsed() < Duration::from_secs(10), "no Redis");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reps.push((p, gw));
    }
    // Let both replicas' event subscriptions settle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other_replica = &reps[1].0.url;
    let x_cache = |path: String| async move {
        let r = client()
            .get(format!("{other_replica}{path}"))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap();
        r.headers()["x-cache"].to_str().unwrap().to_string()
    };
    for p in [templates(WABA), templates(OTHER_WABA)] {
        x_cache(p.clone()).await;
        assert_eq!(x_cache(p).await, "HIT");
    }
    let body = template_event(WABA, 7);
    let r = client()
        .post(format!("{}{PATH}", reps[0].0.url))
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex(APP_SECRET, body.as_bytes())),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    while x_cache(templates(WABA)).await != "MISS" {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the other replica kept its entry"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(x_cache(templates(OTHER_WABA)).await, "HIT");
}

// ---------------------------------------------------------------- fan-out

// Two subscribers get every event, each signed with its own secret. While B refuses WABA's
// events, they are retried with backoff and hold back only WABA's later events to B (OTHER_WABA's
// still arrive); once B recovers, everything arrives once and in order. A field filter keeps a
// third subscriber to its fields. Meta gets its 200 at once throughout.
#[tokio::test]
async fn fan_out_retries_a_failing_subscriber_in_order_per_waba_and_loses_nothing() {
    let (a, b, c) = (start_sink().await, start_sink().await, start_sink().await);
    *b.state.fail_waba.lock().unwrap() = Some(WABA.to_string());
    let extra = format!(
        "{}{}{}",
        subscriber_toml("alpha", &a.url, Some("TEST_SUB_A"), ""),
        subscriber_toml("bravo", &b.url, Some("TEST_SUB_B"), ""),
        subscriber_toml("charlie", &c.url, None, "fields = [\"account_update\"]")
    );
    let e = start_hooks(&extra).await;
    let ids: Vec<u64> = (1..=5).collect();
    for id in &ids {
        let started = Instant::now();
        assert_eq!(e.post_event(&template_event(WABA, *id)).await.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(1), "Meta waited");
        assert_eq!(
            e.post_event(&template_event(OTHER_WABA, 100 + id))
                .await
                .status(),
            200
        );
    }
    let acct = event(
        OTHER_WABA,
        "account_update",
        json!({"event": "PARTNER_ADDED"}),
    );
    assert_eq!(e.post_event(&acct).await.status(), 200);

    until("A has all 11", || a.got().len() == 11).await;
    until("B has OTHER_WABA's 6 while WABA's are blocked", || {
        b.got().len() == 6
    })
    .await;
    until("B refused WABA's head several times", || {
        b.state.attempts.load(Ordering::SeqCst) >= 6 + 3
    })
    .await;
    assert!(b.ids_for(WABA).is_empty());
    // The sink counts a delivery when it answers; the queue drops it when the answer is back.
    until("B's queue holds WABA's 5 only", || {
        e.stats().subscribers["bravo"].queue_depth == 5
    })
    .await;
    assert!(e.stats().subscribers["bravo"].failed_attempts >= 3);

    *b.state.fail_waba.lock().unwrap() = None;
    until("B has all 11", || b.got().len() == 11).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (sink, secret) in [(&a, SUB_A_SECRET), (&b, SUB_B_SECRET)] {
        assert_eq!(sink.got().len(), 11, "no duplicates");
        assert_eq!(sink.ids_for(WABA), ids);
        assert_eq!(sink.ids_for(OTHER_WABA), vec![101, 102, 103, 104, 105]);
        for g in sink.got() {
            let want = format!("sha256={}", hmac_hex(secret, &g.raw));
            assert_eq!(g.signature.as_deref(), Some(want.as_str()));
            assert_eq!(g.body["object"], "whatsapp_business_account");
        }
    }
    until("C got its one account_update", || c.got().len() == 1).await;
    assert_eq!(
        c.got()[0].body["entry"][0]["changes"][0]["field"],
        "account_update"
    );
    assert_eq!(c.got()[0].signature, None);

    let s = e.stats();
    for name in ["alpha", "bravo"] {
        assert_eq!(s.subscribers[name].delivered, 11, "{name}");
        assert_eq!(s.subscribers[name].queue_depth, 0, "{name}");
        assert_eq!(s.subscribers[name].gave_up + s.subscribers[name].expired, 0);
    }
    assert_eq!(s.subscribers["charlie"].delivered, 1);
    assert_eq!(s.events["message_template_status_update"], 10);
}

// One Meta body with entries for two WABAs becomes one delivery per entry, each in its WABA's lane.
#[tokio::test]
async fn a_body_with_several_entries_is_split_per_waba() {
    let sink = start_sink().await;
    let e = start_hooks(&subscriber_toml("a", &sink.url, None, "")).await;
    let one: Value = serde_json::from_str(&template_event(WABA, 1)).unwrap();
    let two: Value = serde_json::from_str(&template_event(OTHER_WABA, 2)).unwrap();
    let body = json!({"object": "whatsapp_business_account",
                      "entry": [one["entry"][0].clone(), two["entry"][0].clone()]})
    .to_string();
    assert_eq!(e.post_event(&body).await.status(), 200);
    until("both entries delivered", || sink.got().len() == 2).await;
    assert_eq!(sink.ids_for(WABA), vec![1]);
    assert_eq!(sink.ids_for(OTHER_WABA), vec![2]);
}

// With max_queue = 2 and a subscriber that refuses everything, further events are refused for
// that subscriber with an error log and the queue_full counter; Meta still gets 200.
#[tokio::test]
async fn a_full_queue_is_counted_and_logged_never_silent() {
    let sink = start_sink().await;
    sink.state.fail_all.store(true, Ordering::SeqCst);
    let e = start_hooks(&format!(
        "max_queue = 2\n{}",
        subscriber_toml("full", &sink.url, None, "")
    ))
    .await;
    for id in 1..=4 {
        assert_eq!(e.post_event(&template_event(WABA, id)).await.status(), 200);
    }
    let s = e.stats();
    assert_eq!(s.subscribers["full"].queue_full, 2);
    assert_eq!(s.subscribers["full"].queue_depth, 2);
    assert!(logs().text().contains("webhook delivery queue is full"));
    sink.state.fail_all.store(false, Ordering::SeqCst);
    until("the two queued are delivered", || sink.got().len() == 2).await;
    assert_eq!(sink.ids_for(WABA), vec![1, 2]);
}

// A delivery that keeps failing is given up after max_attempts, logged and counted, and the
// lane moves on to the next event.
#[tokio::test]
async fn a_delivery_is_given_up_after_max_attempts_and_the_lane_moves_on() {
    let sink = start_sink().await;
    sink.state.fail_all.store(true, Ordering::SeqCst);
    let e = start_hooks(&format!(
        "max_attempts = 3\n{}",
        subscriber_toml("flaky", &sink.url, None, "")
    ))
    .await;
    assert_eq!(e.post_event(&template_event(WABA, 1)).await.status(), 200);
    until("three attempts", || {
        e.stats().subscribers["flaky"].gave_up == 1
    })
    .await;
    assert_eq!(sink.state.attempts.load(Ordering::SeqCst), 3);
    sink.state.fail_all.store(false, Ordering::SeqCst);
    assert_eq!(e.post_event(&template_event(WABA, 2)).await.status(), 200);
    until("the next one is delivered", || sink.got().len() == 1).await;
    assert_eq!(sink.ids_for(WABA), vec![2]);
    assert!(logs().text().contains("given up"));
}

// Deliveries still waiting when the proxy stops are on disk; a new proxy on the same queue_dir
// sends them, in order, once the subscriber is back, and the folder ends up empty.
#[tokio::test]
async fn deliveries_pending_at_shutdown_are_sent_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sink = start_sink().await;
    sink.state.fail_all.store(true, Ordering::SeqCst);
    let extra = format!(
        "queue_dir = \"{}\"\n{}",
        dir.path().display(),
        subscriber_toml("durable", &sink.url, Some("TEST_SUB_A"), "")
    );
    let sim = start_sim(sim_config()).await;
    let proxy = hooks(&sim.url, &extra);
    let first = launch(sim, proxy.clone()).await;
    for id in 1..=3 {
        assert_eq!(
            first.post_event(&template_event(WABA, id)).await.status(),
            200
        );
    }
    assert_eq!(
        first
            .post_event(&template_event(OTHER_WABA, 9))
            .await
            .status(),
        200
    );
    until("the subscriber refused something", || {
        sink.state.attempts.load(Ordering::SeqCst) >= 2
    })
    .await;
    let queued = || {
        std::fs::read_dir(dir.path().join("durable"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .and_then(|x| x.to_str())
                    == Some("json")
            })
            .count()
    };
    assert_eq!(queued(), 4);
    let sim = first.shutdown().await;
    // Nothing is sent by a stopped proxy.
    let attempts = sink.state.attempts.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.state.attempts.load(Ordering::SeqCst), attempts);

    let second = launch(sim, proxy).await;
    sink.state.fail_all.store(false, Ordering::SeqCst);
    until("all four delivered by the new proxy", || {
        sink.got().len() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.got().len(), 4, "no duplicates");
    assert_eq!(sink.ids_for(WABA), vec![1, 2, 3]);
    assert_eq!(sink.ids_for(OTHER_WABA), vec![9]);
    for g in sink.got() {
        let want = format!("sha256={}", hmac_hex(SUB_A_SECRET, &g.raw));
        assert_eq!(g.signature.as_deref(), Some(want.as_str()));
    }
    until("the queue folder is empty", || queued() == 0).await;
    assert_eq!(second.stats().subscribers["durable"].delivered, 4);
}

// ---------------------------------------------------------------- config and secrets

// Webhook config mistakes are refused at start-up, each naming its key, without the secret.
#[test]
fn webhook_config_mistakes_are_refused_naming_the_key() {
    let cases = [
        ("[webhooks]\nverify_token_env = \"TEST_VERIFY_TOKEN\"\n", "webhooks.path"),
        ("[webhooks]\npath = \"/hooks\"\n", "webhooks.verify_token_env"),
        (
            "[webhooks]\npath = \"/hooks\"\nverify_token = \"inline-TOKEN\"\n",
            "webhooks.verify_token",
        ),
        (
            "[webhooks]\npath = \"/123/x\"\nverify_token_env = \"TEST_VERIFY_TOKEN\"\n",
            "webhooks.path",
        ),
        (
            "[webhooks]\npath = \"/hooks\"\nverify_token_env = \"TEST_VERIFY_TOKEN\"\nretry_initial = \"1m\"\nretry_max = \"1s\"\n",
            "webhooks.retry_max",
        ),
        (
            "[webhooks]\npath = \"/hooks\"\nverify_token_env = \"TEST_VERIFY_TOKEN\"\n[[webhooks.subscriber]]\nname = \"a\"\nurl = \"ftp://x\"\n",
            "webhooks.subscriber[0].url",
        ),
        (
            "[webhooks]\npath = \"/hooks\"\nverify_token_env = \"TEST_VERIFY_TOKEN\"\n[[webhooks.subscriber]]\nname = \"../a\"\nurl = \"http://x\"\n",
            "webhooks.subscriber[0].name",
        ),
        (
            "[webhooks]\npath = \"/hooks\"\nverify_token_env = \"TEST_VERIFY_TOKEN\"\n[[webhooks.subscriber]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"inline-SUB\"\n",
            "webhooks.subscriber[0].secret",
        ),
        (
            "[webhooks]\npath = \"/hooks\"\nverify_token_env = \"TEST_VERIFY_TOKEN\"\nsurprise = 1\n",
            "surprise",
        ),
    ];
    for (section, key) in cases {
        let err = hook_config("http://127.0.0.1:1")
            .merge(section)
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{section}: {err}");
        assert!(!err.contains("inline-"), "{err}");
    }
    // Without an app secret nothing could be verified.
    let err = hook_config("http://127.0.0.1:1")
        .remove("app[0].app_secret_env")
        .merge("[webhooks]\npath = \"/hooks\"\nverify_token_env = \"TEST_VERIFY_TOKEN\"\n")
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains("webhooks"), "{err}");
}

// After handshakes, refused and accepted events and signed deliveries, no secret (tokens, app
// secret, client keys, verify token, subscriber secrets) is in a log line or a response.
#[tokio::test]
async fn no_secret_reaches_logs_or_responses() {
    let sink = start_sink().await;
    let e = start_hooks(&subscriber_toml("a", &sink.url, Some("TEST_SUB_A"), "")).await;
    let mut seen = String::new();
    for q in [
        format!("hub.mode=subscribe&hub.challenge=77&hub.verify_token={VERIFY_TOKEN}"),
        "hub.mode=subscribe&hub.challenge=77&hub.verify_token=nope".to_string(),
    ] {
        let r = client()
            .get(format!("{}{PATH}?{q}", e.url))
            .send()
            .await
            .unwrap();
        seen.push_str(&format!("{:?}", r.headers()));
        seen.push_str(&r.text().await.unwrap());
    }
    let body = template_event(WABA, 5);
    for r in [
        e.post_event(&body).await,
        e.post_signed(&body, "sha256=00").await,
        e.post_event("{oops").await,
    ] {
        seen.push_str(&format!("{:?}", r.headers()));
        seen.push_str(&r.text().await.unwrap());
    }
    until("delivered", || sink.got().len() == 1).await;
    let logs = logs().text();
    for s in all_secrets() {
        assert!(!seen.contains(s), "a response contains {s}");
        assert!(!logs.contains(s), "the logs contain {s}");
    }
    assert!(!logs.contains(&sink.url), "the logs name a subscriber URL");
}
