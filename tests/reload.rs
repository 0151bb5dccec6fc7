//! Reload, token rotation and the token directory, against the real proxy and the simulator: a
//! SIGHUP while slow calls are in flight, a broken config refused by `POST /admin/reload` while the
//! old one keeps serving, a rewritten token file used within seconds without a signal, a WABA's
//! token file added and removed under load. The simulator's request log says which token each
//! call carried; every answer and log line is scanned for the tokens.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use graphgate::config::Config;
use graphgate::sim::{Access, Faults, SimToken};
use graphgate::Gateway;
use support::redis::RedisServer;
use support::spawned::Spawned;
use support::*;
use tokio::net::TcpListener;

/// A second system-user token the simulator accepts: what a rotation writes.
const ROTATED_TOKEN: &str = "EAAGrotatedTOKENforTESTSk2Lm8";
/// A client added by a reload.
const NEW_KEY: &str = "ggkey-charlie-SECRET-0003";
/// Bounds every wait for something to happen in the background.
const WITHIN: Duration = Duration::from_secs(10);

fn all_secrets() -> Vec<&'static str> {
    let mut v = SECRETS.to_vec();
    v.extend([ROTATED_TOKEN, NEW_KEY]);
    v
}

fn assert_clean(what: &str, text: &str) {
    for s in all_secrets() {
        assert!(!text.contains(s), "{what} contains the secret {s}");
    }
}

/// The test simulator, also accepting [`ROTATED_TOKEN`] for every WABA, with room for load.
async fn sim() -> SimServer {
    let mut cfg = sim_config_limited(Duration::from_secs(3600), 100_000);
    cfg.tokens.push(SimToken {
        token: ROTATED_TOKEN.into(),
        app_id: APP_ID.into(),
        app_secret: Some(APP_SECRET.into()),
        access: Access::All,
    });
    start_sim(cfg).await
}

/// The token the simulator saw on its latest request whose path contains `path`.
fn last_token(s: &SimServer, path: &str) -> String {
    s.sim
        .stats()
        .requests
        .iter()
        .rev()
        .find(|r| r.path.contains(path))
        .and_then(|r| r.authorization.clone())
        .unwrap_or_default()
}

/// graphgate served from a config file (so that it can reload), with its admin listener.
struct FromFile {
    gw: Gateway,
    url: String,
    admin: String,
    dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FromFile {
    fn path(&self) -> PathBuf {
        self.dir.path().join("graphgate.toml")
    }

    fn write(&self, builder: &ProxyBuilder) {
        write_atomically(&self.path(), &builder.toml());
    }

    async fn reload(&self) -> (u16, serde_json::Value) {
        let r = client()
            .post(format!("{}/admin/reload", self.admin))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_clean("the reload answer", &text);
        (status, serde_json::from_str(&text).unwrap())
    }

    async fn metrics(&self) -> Vec<Sample> {
        let text = admin_get(&self.admin, "/metrics", None)
            .await
            .text()
            .await
            .unwrap();
        assert_clean("/metrics", &text);
        parse_metrics(&text)
    }
}

/// Starts `builder`'s config from a file in a fresh directory (`setup` may first put files there).
async fn start_from_file(builder: ProxyBuilder, setup: impl FnOnce(&Path)) -> FromFile {
    logs();
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let path = dir.path().join("graphgate.toml");
    std::fs::write(&path, builder.toml()).unwrap();
    let env: HashMap<String, String> = env();
    let config = Config::load(&path, &env).unwrap();
    let gw = Gateway::new(config).reloading_from(&path, env);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(graphgate::run_with_admin(
        listener,
        Some(admin),
        gw.clone(),
        async {
            let _ = rx.await;
        },
    ));
    FromFile {
        gw,
        url,
        admin: admin_url,
        dir,
        _stop: tx,
    }
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`: how secrets are
/// rotated on disk (a reader never sees half a file).
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits (bounded by [`WITHIN`]) until `f` holds.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < WITHIN, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has_series(samples: &[Sample], name: &str, label: (&str, &str)) -> bool {
    samples
        .iter()
        .any(|s| s.name == name && s.labels.get(label.0).map(String::as_str) == Some(label.1))
}

async fn get_with(url: &str, key: &str) -> reqwest::Response {
    client().get(url).bearer_auth(key).send().await.unwrap()
}

// A config with problems is refused with check-config's messages and the old one keeps serving; a
// restart-only change is refused naming the key; a good one (a new client) is applied, counted,
// and changes the config hash. The counters exist at 0 from start.
#[tokio::test]
async fn a_broken_config_is_refused_with_its_problems_while_the_old_one_keeps_serving() {
    let sim = sim().await;
    let base = TestProxy::builder(&sim.url).cache(false);
    let gg = start_from_file(base.clone(), |_| {}).await;
    let m = gg.metrics().await;
    for outcome in graphgate::metrics::RELOAD_OUTCOMES {
        assert!(
            has_series(&m, "graphgate_config_reloads_total", ("outcome", outcome)),
            "{outcome} counted from start"
        );
    }
    let first_hash = m
        .iter()
        .find(|s| s.name == "graphgate_config_info")
        .and_then(|s| s.labels.get("hash").cloned())
        .expect("graphgate_config_info");
    let templates = format!("{}{}", gg.url, templates_path(0));

    // Broken: a token variable that is not set, a value out of range.
    gg.write(
        &base
            .clone()
            .set("app[0].token_env", "TEST_NOT_SET")
            .set("limits.reserve_percent", 500),
    );
    let (status, report) = gg.reload().await;
    assert_eq!(status, 422, "{report}");
    assert_eq!(report["outcome"], "invalid");
    let problems = report["problems"].to_string();
    assert!(problems.contains("app[0].token_env"), "{problems}");
    assert!(problems.contains("TEST_NOT_SET is not set"), "{problems}");
    assert!(problems.contains("limits.reserve_percent"), "{problems}");
    assert_eq!(get(&templates).await.status(), 200, "the old config serves");
    assert!(last_token(&sim, "message_templates").contains(SYSTEM_TOKEN));

    // Valid, but a listener setting changes only at a restart.
    gg.write(&base.clone().set("server.max_connections", 10));
    let (status, report) = gg.reload().await;
    assert_eq!(status, 409, "{report}");
    assert_eq!(report["outcome"], "refused");
    assert_eq!(
        report["problems"][0],
        "server.max_connections: changes only at a restart"
    );

    // A new client: applied.
    let charlie = format!("name = \"charlie\"\nkey_sha256 = \"{}\"", hex(NEW_KEY));
    assert_eq!(get_with(&templates, NEW_KEY).await.status(), 401);
    gg.write(&base.clone().client(&charlie));
    let (status, report) = gg.reload().await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["outcome"], "ok");
    assert_eq!(get_with(&templates, NEW_KEY).await.status(), 200);
    assert_eq!(
        get(&templates).await.status(),
        200,
        "old clients still served"
    );

    let m = gg.metrics().await;
    let count = |o| metric_value(&m, "graphgate_config_reloads_total", &[("outcome", o)]);
    assert_eq!(
        (count("ok"), count("invalid"), count("refused")),
        (1.0, 1.0, 1.0)
    );
    let hashes: Vec<_> = m
        .iter()
        .filter(|s| s.name == "graphgate_config_info")
        .collect();
    assert_eq!(hashes.len(), 1, "one config in use");
    assert_ne!(hashes[0].labels["hash"], first_hash);
    assert_clean("the logs", &logs().text());
}

// A rewritten token file (renamed over the old one, as Kubernetes does) is used within seconds
// without a signal; a file that becomes empty is refused and the rotated token stays in use.
#[tokio::test]
async fn a_rewritten_token_file_is_used_within_seconds_and_an_empty_one_keeps_the_old() {
    let sim = sim().await;
    let gg = start_from_file(
        TestProxy::builder(&sim.url)
            .cache(false)
            .remove("app[0].token_env")
            .set("app[0].token_file", "token"),
        |dir| std::fs::write(dir.join("token"), format!("{SYSTEM_TOKEN}\n")).unwrap(),
    )
    .await;
    let templates = format!("{}{}", gg.url, templates_path(1));
    assert_eq!(get(&templates).await.status(), 200);
    assert!(last_token(&sim, "message_templates").contains(SYSTEM_TOKEN));

    let token_file = gg.dir.path().join("token");
    write_atomically(&token_file, ROTATED_TOKEN);
    let started = Instant::now();
    eventually("the rotated token in use", async || {
        let ok = get(&templates).await.status() == 200;
        ok && last_token(&sim, "message_templates").contains(ROTATED_TOKEN)
    })
    .await;
    eprintln!("rotated token in use after {:?}", started.elapsed());

    std::fs::write(&token_file, "").unwrap();
    eventually("the empty file refused", async || {
        let m = gg.metrics().await;
        metric_value(
            &m,
            "graphgate_config_reloads_total",
            &[("outcome", "invalid")],
        ) >= 1.0
    })
    .await;
    assert_eq!(get(&templates).await.status(), 200);
    assert!(last_token(&sim, "message_templates").contains(ROTATED_TOKEN));
    let logs = logs().text();
    assert!(
        logs.contains("config reload refused"),
        "the refusal is logged"
    );
    assert_clean("the logs", &logs);
}

// WABAs onboarded by writing a file into `waba_token_dir` are called with their own token within
// seconds, and with the app's again once the file is removed, while calls keep flowing; files with
// a bad name or content are skipped and named in the log (never their content); a gauge counts
// the WABAs loaded.
#[tokio::test]
async fn a_waba_token_file_added_and_removed_under_load_switches_that_wabas_token() {
    let sim = sim().await;
    let builder = ProxyBuilder::from_toml(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[upstream]
url = "{}"
[limits]
other = 1000000
waba_default = 1000000
[cache]
enabled = false
[[app]]
name = "main"
id = "{APP_ID}"
token_env = "TEST_SYSTEM_TOKEN"
app_secret_env = "TEST_APP_SECRET"
waba_token_dir = "tokens"
[[app.waba]]
id = "{WABA}"
active = true
[[client]]
name = "alpha"
key_sha256 = "{}"
"#,
        sim.url,
        hex(CLIENT_KEY)
    ));
    let gg = start_from_file(builder, |dir| {
        let tokens = dir.join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        std::fs::write(tokens.join("not-an-id"), "EAAGjunkSECRETcontent").unwrap();
        std::fs::write(tokens.join("123456"), "bad SECRETcontent with spaces").unwrap();
        std::fs::write(tokens.join("654321"), "  \n").unwrap();
    })
    .await;
    let tokens = gg.dir.path().join("tokens");
    let other = format!("{}/v19.0/{OTHER_WABA}/message_templates", gg.url);
    let gauge = async || {
        let m = gg.metrics().await;
        metric_value(&m, "graphgate_waba_token_dir_wabas", &[("app", "main")])
    };
    assert_eq!(gauge().await, 0.0);

    // Load: calls on the WABA the file is about, all along.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let url = other.clone();
    let load = tokio::spawn(async move {
        let mut statuses = Vec::new();
        while !*stop_rx.borrow_and_update() {
            statuses.push(get(&url).await.status().as_u16());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        statuses
    });

    assert!(
        tokio::time::timeout(WITHIN, async {
            while !last_token(&sim, OTHER_WABA).contains(SYSTEM_TOKEN) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok(),
        "calls flow with the app's token"
    );
    write_atomically(&tokens.join(OTHER_WABA), WABA_TOKEN);
    eventually("the WABA's own token in use", async || {
        last_token(&sim, OTHER_WABA).contains(WABA_TOKEN)
    })
    .await;
    assert_eq!(gauge().await, 1.0);
    assert!(
        gg.gw.limiter().with_known(|k| k.wabas.contains(OTHER_WABA)),
        "calls on it count to a WABA bucket"
    );
    std::fs::remove_file(tokens.join(OTHER_WABA)).unwrap();
    eventually("the app's token in use again", async || {
        last_token(&sim, OTHER_WABA).contains(SYSTEM_TOKEN)
    })
    .await;
    assert_eq!(gauge().await, 0.0);
    stop_tx.send(true).unwrap();
    let statuses = tokio::time::timeout(WITHIN, load).await.unwrap().unwrap();
    assert!(
        statuses.len() > 10,
        "calls ran throughout: {}",
        statuses.len()
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every call answered: {statuses:?}"
    );
    let m = gg.metrics().await;
    assert_eq!(
        metric_value(&m, "graphgate_config_reloads_total", &[("outcome", "ok")]),
        2.0
    );
    let logs = logs().text();
    for name in ["not-an-id", "123456", "654321"] {
        assert!(
            logs.contains(&format!("skipped the file `{name}`")),
            "{name} named in the log"
        );
    }
    assert!(
        !logs.contains("SECRETcontent"),
        "a skipped file's content never logged"
    );
    assert_clean("the logs", &logs);
}

// SIGHUP reloads the binary's config: calls in flight (slow at the simulator) finish, made with
// the token they started with; calls after it use the new token, and a client the new file adds
// is served.
#[tokio::test]
async fn sighup_lets_slow_calls_finish_with_the_old_token_and_new_calls_use_the_new_config() {
    let sim = sim().await;
    let base = TestProxy::builder(&sim.url)
        .cache(false)
        .set("upstream.request_timeout", "10s");
    let spawned = Spawned::start(base.clone(), None);
    let url = spawned.url();
    assert_eq!(
        get_with(&format!("{url}{}", templates_path(0)), NEW_KEY)
            .await
            .status(),
        401
    );

    sim.sim.set_faults(Faults {
        latency_ms: 1500,
        ..Faults::default()
    });
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let u = format!("{url}{}", templates_path(100 + i));
            tokio::spawn(async move {
                let r = get(&u).await;
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    eventually("the slow calls at the simulator", async || {
        sim.sim.stats().total_calls >= 4
    })
    .await;

    // The new file: the app's token from a file holding the rotated one, and a new client.
    let token_file = spawned.config_file().with_file_name("rotated-token");
    std::fs::write(&token_file, ROTATED_TOKEN).unwrap();
    let charlie = format!("name = \"charlie\"\nkey_sha256 = \"{}\"", hex(NEW_KEY));
    let next = base
        .remove("app[0].token_env")
        .set("app[0].token_file", token_file.display().to_string())
        .client(&charlie)
        .set("server.listen", spawned.addr.to_string())
        .set("server.admin_listen", "127.0.0.1:0");
    write_atomically(&spawned.config_file(), &next.toml());
    let killed = std::process::Command::new("kill")
        .args(["-HUP", &spawned.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    eventually("the reload counted", async || {
        let text = admin_get(&spawned.admin, "/metrics", None)
            .await
            .text()
            .await
            .unwrap();
        let m = parse_metrics(&text);
        metric_value(&m, "graphgate_config_reloads_total", &[("outcome", "ok")]) == 1.0
    })
    .await;

    for t in slow {
        let (status, body) = tokio::time::timeout(WITHIN, t).await.unwrap().unwrap();
        assert_eq!(status, 200, "a call in flight finishes: {body}");
        assert_clean("an answer", &body);
    }
    let stats = sim.sim.stats();
    let in_flight: Vec<_> = stats
        .requests
        .iter()
        .filter(|r| r.query.contains("n=10"))
        .collect();
    assert_eq!(in_flight.len(), 4);
    for r in in_flight {
        let auth = r.authorization.clone().unwrap_or_default();
        assert!(auth.contains(SYSTEM_TOKEN), "started with the old token");
    }

    sim.sim.set_faults(Faults::default());
    let after = format!("{url}{}", templates_path(200));
    assert_eq!(get(&after).await.status(), 200);
    assert!(last_token(&sim, "message_templates").contains(ROTATED_TOKEN));
    let r = get_with(&after, NEW_KEY).await;
    assert_eq!(r.status(), 200, "the new client is served");
    assert_clean("an answer", &r.text().await.unwrap());
    assert!(spawned.rss_kib() > 0, "still running");
}

// A rotated admin token file: the old token is refused and the new one admitted within seconds,
// without a signal.
#[tokio::test]
async fn a_rotated_admin_token_file_takes_over_within_seconds() {
    const OLD: &str = "admin-OLD-SECRET-token-1";
    const NEW: &str = "admin-NEW-SECRET-token-2";
    let sim = sim().await;
    let gg = start_from_file(
        TestProxy::builder(&sim.url).set("server.admin_token_file", "admin_token"),
        |dir| std::fs::write(dir.join("admin_token"), OLD).unwrap(),
    )
    .await;
    let status = async |token| {
        admin_get(&gg.admin, "/admin/status", Some(token))
            .await
            .status()
            .as_u16()
    };
    assert_eq!((status(OLD).await, status(NEW).await), (200, 401));
    write_atomically(&gg.dir.path().join("admin_token"), NEW);
    eventually("the new admin token admitted", async || {
        status(NEW).await == 200
    })
    .await;
    assert_eq!(status(OLD).await, 401);
    let logs = logs().text();
    assert!(
        !logs.contains(OLD) && !logs.contains(NEW),
        "admin tokens never logged"
    );
}

// A WABA whose token owner changes (its file added, then removed) has its cached answers dropped
// each time: the answer cached under the app's token is not served again once the WABA's own
// token came and went.
#[tokio::test]
async fn cached_answers_are_dropped_when_a_wabas_token_owner_changes() {
    let sim = sim().await;
    let gg = start_from_file(
        TestProxy::builder(&sim.url).set("app[0].waba_token_dir", "tokens"),
        |dir| std::fs::create_dir(dir.join("tokens")).unwrap(),
    )
    .await;
    // The standard config lists WABA without a token of its own: the app's token is used.
    let url = format!("{}/v19.0/{WABA}/message_templates", gg.url);
    let x_cache = async || {
        let r = get(&url).await;
        assert_eq!(r.status(), 200);
        r.headers()["x-cache"].to_str().unwrap().to_string()
    };
    assert_eq!(x_cache().await, "MISS");
    assert_eq!(x_cache().await, "HIT");
    let file = gg.dir.path().join("tokens").join(WABA);
    write_atomically(&file, ROTATED_TOKEN);
    eventually("the WABA's own token in use", async || {
        x_cache().await == "MISS" && last_token(&sim, WABA).contains(ROTATED_TOKEN)
    })
    .await;
    std::fs::remove_file(&file).unwrap();
    eventually("the app's token in use again", async || {
        let fresh = x_cache().await == "MISS";
        fresh && last_token(&sim, WABA).contains(SYSTEM_TOKEN)
    })
    .await;
    assert_eq!(x_cache().await, "HIT");
    assert_clean("the logs", &logs().text());
}

// A rotated Redis password: Redis's `requirepass` changes and `limits.redis_password_file` is
// rewritten. The replica connects with the new password within seconds (its file is watched like
// a token's), so calls keep being admitted through Redis (`reject`: without Redis they would get
// 503) even after Redis drops every connection; the passwords never show in the logs.
#[tokio::test]
async fn a_rotated_redis_password_file_is_used_without_a_restart() {
    const OLD_PW: &str = "redis-pw-OLD-7b1e";
    const NEW_PW: &str = "redis-pw-NEW-93fa";
    let redis = RedisServer::with_args(&["--requirepass", OLD_PW]);
    let sim = sim().await;
    let gg = start_from_file(
        TestProxy::builder(&sim.url)
            .cache(false)
            .redis(&redis.url(), "rotation")
            .set("limits.on_backend_error", "reject")
            .set("limits.redis_password_file", "redis-password"),
        |dir| std::fs::write(dir.join("redis-password"), OLD_PW).unwrap(),
    )
    .await;
    let templates = format!("{}{}", gg.url, templates_path(1));
    eventually("admitted through Redis", async || {
        get(&templates).await.status() == 200
    })
    .await;

    assert_eq!(
        redis.cli(&["-a", OLD_PW, "CONFIG", "SET", "requirepass", NEW_PW]),
        "OK"
    );
    write_atomically(&gg.dir.path().join("redis-password"), NEW_PW);
    let started = Instant::now();
    eventually("calls admitted with the new password", async || {
        // Redis keeps connections made with the old password: drop them, so only the new one works.
        redis.cli(&["-a", NEW_PW, "CLIENT", "KILL", "TYPE", "normal"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        get(&templates).await.status() == 200 && get(&templates).await.status() == 200
    })
    .await;
    eprintln!("new Redis password in use after {:?}", started.elapsed());
    let logs = logs().text();
    assert!(logs.contains("Redis credentials changed"), "logged");
    for pw in [OLD_PW, NEW_PW] {
        assert!(!logs.contains(pw), "a Redis password in the logs");
    }
}
