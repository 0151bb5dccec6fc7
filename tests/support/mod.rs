//! Test harness: the test secrets and ids, the real simulator on `127.0.0.1:0`, a log capture,
//! request helpers, and helpers to scan everything a test saw for secrets. graphgate itself is
//! configured and started only through [`TestProxy::builder`] (proxy.rs); the standard config
//! lives in table.rs, the `/metrics` reader in metrics.rs, a real redis-server in redis.rs.
//! Nothing here binds a fixed port.
#![allow(dead_code)]

mod metrics;
mod proxy;
pub mod redis;
pub mod spawned;
mod table;

// Each test binary uses its own part of the harness (hence also `dead_code` above).
#[allow(unused_imports)]
pub use metrics::{metric_value, parse_metrics, Sample};
#[allow(unused_imports)]
pub use proxy::{ProxyBuilder, TestProxy};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use graphgate::sim::{self, Access, Sim, SimConfig, SimToken};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const APP_ID: &str = "1000000000000001";
pub const SYSTEM_TOKEN: &str = "EAAGsystemTOKENforTESTSxq7Zp2";
pub const WABA_TOKEN: &str = "EAAGbisuWABAtokenTESTk4Jw9";
pub const APP_SECRET: &str = "appsecretTESTvalue5c1e";
pub const CLIENT_KEY: &str = "ggkey-alpha-SECRET-0001";
pub const LIMITED_KEY: &str = "ggkey-bravo-SECRET-0002";
pub const WABA: &str = sim::seed::WABA_ID;
pub const OTHER_WABA: &str = sim::seed::INACTIVE_WABA_ID;
pub const PHONE: &str = sim::seed::PHONE_NUMBER_ID;

/// Every secret a test uses; nothing a caller or a log sees may contain one.
pub const SECRETS: [&str; 5] = [
    SYSTEM_TOKEN,
    WABA_TOKEN,
    APP_SECRET,
    CLIENT_KEY,
    LIMITED_KEY,
];

// ---------------------------------------------------------------- logs

#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

static LOGS: OnceLock<LogBuffer> = OnceLock::new();

/// Captures every log line of this test binary (debug level, JSON as in production, with the
/// request tag).
pub fn logs() -> LogBuffer {
    LOGS.get_or_init(|| {
        let buf = LogBuffer::default();
        let _ = tracing_subscriber::fmt()
            .fmt_fields(graphgate::telemetry::JsonSpanFields)
            .event_format(graphgate::telemetry::json_events())
            .with_env_filter("debug,hyper=info,h2=info,rustls=info,hyper_util=info")
            .with_writer(buf.clone())
            .try_init();
        buf
    })
    .clone()
}

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Fails if any secret appears in `haystack`.
pub fn assert_no_secrets(what: &str, haystack: &str) {
    for s in SECRETS {
        assert!(!haystack.contains(s), "{what} contains the secret {s}");
    }
}

// ---------------------------------------------------------------- servers

/// Stops its server when dropped.
pub struct Stop(Option<oneshot::Sender<()>>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

pub struct SimServer {
    pub addr: SocketAddr,
    pub sim: Sim,
    pub url: String,
    _stop: Stop,
}

pub fn sim_config() -> SimConfig {
    SimConfig {
        tokens: vec![
            SimToken {
                token: SYSTEM_TOKEN.into(),
                app_id: APP_ID.into(),
                app_secret: Some(APP_SECRET.into()),
                access: Access::All,
            },
            SimToken {
                token: WABA_TOKEN.into(),
                app_id: APP_ID.into(),
                app_secret: Some(APP_SECRET.into()),
                access: Access::Only(vec![OTHER_WABA.into()]),
            },
        ],
        ..SimConfig::default()
    }
}

/// The test simulator with Meta's WABA limit (active or not) at `limit` calls per `window`.
pub fn sim_config_limited(window: std::time::Duration, limit: u32) -> SimConfig {
    SimConfig {
        window,
        waba_limit: limit,
        active_waba_limit: limit,
        ..sim_config()
    }
}

pub async fn start_sim(cfg: SimConfig) -> SimServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = Sim::new(cfg);
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(sim::serve(listener, sim.clone(), async move {
        let _ = rx.await;
    }));
    SimServer {
        addr,
        sim,
        url: format!("http://{addr}"),
        _stop: Stop(Some(tx)),
    }
}

/// A distinct template-list path per `i` (distinct cache keys, the same upstream route).
pub fn templates_path(i: usize) -> String {
    format!("/v19.0/{WABA}/message_templates?n={i}")
}

/// The test secrets by the variable names the standard config's `*_env` keys give.
pub fn env() -> HashMap<String, String> {
    HashMap::from([
        ("TEST_SYSTEM_TOKEN".to_string(), SYSTEM_TOKEN.to_string()),
        ("TEST_WABA_TOKEN".to_string(), WABA_TOKEN.to_string()),
        ("TEST_APP_SECRET".to_string(), APP_SECRET.to_string()),
    ])
}

/// The hex SHA-256 of a client key, as `key_sha256` holds it.
pub fn hex(key: &str) -> String {
    graphgate::config::key_digest(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A GET with the full-rights client key.
pub async fn get(url: &str) -> reqwest::Response {
    client()
        .get(url)
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap()
}

/// Creates a template on the seed WABA through the proxy at `base`, with the full-rights key.
pub async fn create_template(base: &str, name: &str, text: &str) -> reqwest::Response {
    let components = format!(r#"[{{"type":"BODY","text":"{text}"}}]"#);
    client()
        .post(format!("{base}/v19.0/{WABA}/message_templates"))
        .bearer_auth(CLIENT_KEY)
        .form(&[
            ("name", name),
            ("language", "en_US"),
            ("category", "UTILITY"),
            ("components", components.as_str()),
        ])
        .send()
        .await
        .unwrap()
}

/// The status of a keyed GET (owned URL, so it can run in a spawned task).
pub async fn get_status(url: String) -> u16 {
    get(&url).await.status().as_u16()
}

/// Sends raw bytes on a fresh connection and returns the whole response text.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Status code of a raw HTTP/1.1 response.
/// Dockerfile instructions with continuation lines joined and comments dropped.
pub fn dockerfile_instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

/// Reads one Content-Length-framed HTTP/1.1 answer from an open connection (within `within`) and
/// returns its status; the connection stays usable for the next request.
pub async fn read_answer(s: &mut tokio::net::TcpStream, within: std::time::Duration) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = tokio::time::timeout(within, s.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before a whole answer");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return raw_status(&text);
            }
        }
    }
}

pub fn raw_status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The JSON body of a raw HTTP/1.1 response (Content-Length framed).
pub fn raw_json(resp: &str) -> serde_json::Value {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// Asserts the Graph error shape and returns the error object.
pub fn graph_error(v: &serde_json::Value) -> &serde_json::Value {
    let e = &v["error"];
    assert!(e["message"].is_string(), "no message in {v}");
    assert!(e["type"].is_string(), "no type in {v}");
    assert!(e["code"].is_number(), "no code in {v}");
    assert!(e["fbtrace_id"].is_string(), "no fbtrace_id in {v}");
    e
}

/// GET on the admin listener, with an optional bearer token.
pub async fn admin_get(admin_url: &str, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut rb = client().get(format!("{admin_url}{path}"));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    rb.send().await.unwrap()
}
