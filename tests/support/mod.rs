//! Test harness: the real simulator and the real proxy on `127.0.0.1:0`, a log capture, and
//! helpers to scan everything a test saw for secrets.
#![allow(dead_code)]

pub mod redis;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use graphgate::config::Config;
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

pub struct Proxy {
    pub addr: SocketAddr,
    pub url: String,
    _stop: Stop,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Proxy {
    /// Signals shutdown and waits for the server to finish draining.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self._stop.0.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.done).await;
    }
}

/// A config with one app (system token, app secret), the two WABAs, a full client and a limited one.
pub fn config_text(upstream: &str, extra_server: &str) -> String {
    let full = hex(CLIENT_KEY);
    let limited = hex(LIMITED_KEY);
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra_server}

[upstream]
url = "{upstream}"
connect_timeout = "1s"
request_timeout = "2s"

[[app]]
name = "main"
id = "{APP_ID}"
token_env = "TEST_SYSTEM_TOKEN"
app_secret_env = "TEST_APP_SECRET"

[[app.waba]]
id = "{WABA}"
active = true
phone_numbers = ["{PHONE}"]

[[app.waba]]
id = "{OTHER_WABA}"
active = false
token_env = "TEST_WABA_TOKEN"

[[client]]
name = "alpha"
key_sha256 = "{full}"

[[client]]
name = "bravo"
key_sha256 = "{limited}"
wabas = ["{WABA}"]
methods = ["GET"]
"#
    )
}

/// [`config_text`] with `lines` added to its `[upstream]` table.
pub fn config_text_with_upstream(upstream: &str, lines: &str) -> String {
    config_text(upstream, "").replace(
        "request_timeout = \"2s\"",
        &format!("request_timeout = \"2s\"\n{lines}"),
    )
}

/// A proxy in front of `upstream` with `lines` added to `[upstream]` and the response cache off,
/// so every call goes upstream.
pub async fn start_uncached_proxy(upstream: &str, lines: &str) -> Proxy {
    let text = format!(
        "{}\n[cache]\nenabled = false\n",
        config_text_with_upstream(upstream, lines)
    );
    let cfg = Config::from_toml(&text, "test.toml", std::path::Path::new("."), &env()).unwrap();
    start_proxy(cfg).await
}

/// A distinct template-list path per `i` (distinct cache keys, the same upstream route).
pub fn templates_path(i: usize) -> String {
    format!("/v19.0/{WABA}/message_templates?n={i}")
}

pub fn env() -> HashMap<String, String> {
    HashMap::from([
        ("TEST_SYSTEM_TOKEN".to_string(), SYSTEM_TOKEN.to_string()),
        ("TEST_WABA_TOKEN".to_string(), WABA_TOKEN.to_string()),
        ("TEST_APP_SECRET".to_string(), APP_SECRET.to_string()),
    ])
}

pub fn hex(key: &str) -> String {
    graphgate::config::key_digest(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn config(upstream: &str, extra_server: &str) -> Config {
    Config::from_toml(
        &config_text(upstream, extra_server),
        "test.toml",
        std::path::Path::new("."),
        &env(),
    )
    .unwrap()
}

pub async fn start_proxy(config: Config) -> Proxy {
    serve_gateway(graphgate::Gateway::new(config)).await
}

/// Serves `gw` on a free loopback port until the returned handle is dropped or shut down.
pub async fn serve_gateway(gw: graphgate::Gateway) -> Proxy {
    serve(gw, None).await
}

/// The proxy on a free port, plus the admin listener on `admin` when given.
async fn serve(gw: graphgate::Gateway, admin: Option<TcpListener>) -> Proxy {
    logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(graphgate::run_with_admin(listener, admin, gw, async move {
        let _ = rx.await;
    }));
    Proxy {
        addr,
        url: format!("http://{addr}"),
        _stop: Stop(Some(tx)),
        done,
    }
}

/// A proxy whose gateway the test keeps, to look at its limiter and cache.
pub async fn start_gateway(config: Config) -> (Proxy, graphgate::Gateway) {
    let gw = graphgate::Gateway::new(config);
    (serve_gateway(gw.clone()).await, gw)
}

/// The simulator plus a proxy in front of it, with the default test config.
pub async fn start() -> (SimServer, Proxy) {
    let sim = start_sim(sim_config()).await;
    let proxy = start_proxy(config(&sim.url, "")).await;
    (sim, proxy)
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

// ---------------------------------------------------------------- admin listener

/// A proxy with its admin listener, both on `127.0.0.1:0`; returns the proxy and the admin base URL.
pub async fn start_proxy_with_admin(gw: graphgate::Gateway) -> (Proxy, String) {
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    (serve(gw, Some(admin)).await, admin_url)
}

/// One sample line of Prometheus text output.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the sample lines of Prometheus text format (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Default::default()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = std::collections::BTreeMap::new();
                let mut chars = body.chars().peekable();
                loop {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    if key.is_empty() {
                        break;
                    }
                    assert_eq!(chars.next(), Some('"'), "quoted label value in {line}");
                    let mut val = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => val.push(chars.next().unwrap_or('\\')),
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    labels.insert(key.trim_start_matches(',').to_string(), val);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value: value.parse().expect("a number"),
        });
    }
    out
}

/// The value of the one sample named `name` whose labels include every `(key, value)` in `want`,
/// summed over any further labels; 0 when there is none.
pub fn metric_value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// GET on the admin listener, with an optional bearer token.
pub async fn admin_get(admin_url: &str, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut rb = client().get(format!("{admin_url}{path}"));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    rb.send().await.unwrap()
}
