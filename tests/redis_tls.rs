//! Redis as managed services run it: TLS (`rediss://` with a private CA made at test time) and a
//! password (`requirepass`, an ACL user), against Debian's real redis-server. What works shares
//! one budget; a wrong CA or a wrong or missing password is reported as what it is (log line,
//! `graphgate_redis_errors_total`, `/readyz` under `reject`), never as "connected", and the
//! password appears in no log line, metric or error.

mod support;

use std::time::{Duration, Instant};

use graphgate::limits::redis::Fault;
use support::redis::{RedisServer, TestCa};
use support::*;

const PASSWORD: &str = "s3cret-REDIS-pw-9f2k";
const WRONG: &str = "not-the-REDIS-pw-7h1x";

/// Two proxies in reject mode with a budget of 3 on the WABA, on `redis` and the extra `limits`.
async fn pair(sim: &str, url: &str, prefix: &str, limits: &[(&str, &str)]) -> Vec<TestProxy> {
    let mut out = Vec::new();
    for _ in 0..2 {
        let mut b = TestProxy::builder(sim)
            .cache(false)
            .admin()
            .redis(url, prefix)
            .set("limits.on_backend_error", "reject")
            .waba_limit(WABA, 3)
            .env("REDIS_PW", PASSWORD)
            .env("REDIS_WRONG_PW", WRONG);
        for (k, v) in limits {
            b = b.set(k, *v);
        }
        out.push(b.start().await);
    }
    out
}

/// Five calls across the two proxies: the shared budget of 3 lets exactly 3 through.
async fn shared_budget_holds(reps: &[TestProxy]) {
    for p in reps {
        let started = Instant::now();
        while p.gw.limiter().backend_state() != "up" {
            let said = logs().text();
            let last = said.lines().rfind(|l| l.contains("cannot use Redis"));
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never connected to Redis: {}",
                last.unwrap_or("")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut ok = 0;
    for i in 0..5 {
        match get_status(format!("{}/v19.0/{WABA}", reps[i % 2].url)).await {
            200 => ok += 1,
            429 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok, 3, "the two proxies did not share one budget");
}

/// The proxy never gets through: its link reports `fault`, `/readyz` says so with a 503, the
/// metric counts it, calls are refused (503), and no log line says it connected to `port`.
async fn refused_as(p: &TestProxy, port: u16, fault: Fault, reason: &str) {
    let link = p.gw.limiter().redis().expect("a Redis link").clone();
    let started = Instant::now();
    while link.fault() != Some(fault) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the failure was never classified as {fault:?}: {:?}; {}",
            link.fault(),
            logs()
                .text()
                .lines()
                .rfind(|l| l.contains("cannot use Redis"))
                .unwrap_or("")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(p.gw.limiter().backend_state(), "up");
    let r = admin_get(&p.admin_url(), "/readyz", None).await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    let said = body["reason"].as_str().unwrap_or_default().to_string();
    assert!(said.contains(reason), "readyz says {said:?}");
    let metrics = admin_get(&p.admin_url(), "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    let samples = parse_metrics(&metrics);
    let n = metric_value(
        &samples,
        "graphgate_redis_errors_total",
        &[("kind", fault.as_str())],
    );
    assert!(
        n >= 1.0,
        "graphgate_redis_errors_total{{kind={}}} is {n}",
        fault.as_str()
    );
    assert_eq!(
        metric_value(&samples, "graphgate_limits_backend_up", &[]),
        0.0
    );
    let status = get_status(format!("{}/v19.0/{WABA}", p.url)).await;
    assert_eq!(status, 503, "a call went on without the shared budget");
    for secret in [PASSWORD, WRONG] {
        assert!(!metrics.contains(secret), "/metrics shows a Redis password");
    }
    let at = format!("127.0.0.1:{port}");
    let text = logs().text();
    let connected = text
        .lines()
        .any(|l| l.contains("connected to Redis") && l.contains(&at));
    assert!(!connected, "a log line says it connected to {at}");
    let warned = text.lines().any(|l| {
        l.contains("cannot use Redis") && l.contains(&format!("\"kind\":\"{}\"", fault.as_str()))
    });
    assert!(warned, "no log line names the {} failure", fault.as_str());
}

fn no_password_in_logs() {
    let text = logs().text();
    for secret in [PASSWORD, WRONG] {
        assert!(!text.contains(secret), "the logs show a Redis password");
    }
}

// Redis on a TLS port with a private CA: with `limits.redis_ca_file` two proxies share one
// budget over `rediss://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_share_a_budget_over_tls_with_a_private_ca() {
    let ca = TestCa::new();
    let redis = RedisServer::tls(&ca, &[]);
    let sim = start_sim(sim_config()).await;
    let ca_file = ca.ca.display().to_string();
    let reps = pair(
        &sim.url,
        &redis.url(),
        "tls1",
        &[("limits.redis_ca_file", &ca_file)],
    )
    .await;
    shared_budget_holds(&reps).await;
}

// The same server trusted through another CA (and through the bundled roots, which do not know a
// private CA): a TLS failure, reported as such, never "connected".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_a_tls_failure_and_never_connected() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let redis = RedisServer::tls(&ca, &[]);
    let sim = start_sim(sim_config()).await;
    let wrong = other.ca.display().to_string();
    let reps = pair(
        &sim.url,
        &redis.url(),
        "tls2",
        &[("limits.redis_ca_file", &wrong)],
    )
    .await;
    refused_as(&reps[0], redis.port, Fault::Tls, "TLS").await;
    let bundled = pair(&sim.url, &redis.url(), "tls3", &[]).await;
    refused_as(&bundled[0], redis.port, Fault::Tls, "TLS").await;
}

// `requirepass`: the password from `redis_password_env` works (over TLS too, with the CA); a
// wrong one and none at all are authentication failures, never "connected"; the password is in
// no log line or metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_works_with_the_password_and_a_wrong_or_missing_one_is_an_auth_failure() {
    let ca = TestCa::new();
    let good = RedisServer::tls(&ca, &["--requirepass", PASSWORD]);
    let sim = start_sim(sim_config()).await;
    let ca_file = ca.ca.display().to_string();
    let reps = pair(
        &sim.url,
        &good.url(),
        "pw1",
        &[
            ("limits.redis_ca_file", &ca_file),
            ("limits.redis_password_env", "REDIS_PW"),
        ],
    )
    .await;
    shared_budget_holds(&reps).await;

    let wrong = RedisServer::with_args(&["--requirepass", PASSWORD]);
    let reps = pair(
        &sim.url,
        &wrong.url(),
        "pw2",
        &[("limits.redis_password_env", "REDIS_WRONG_PW")],
    )
    .await;
    refused_as(&reps[0], wrong.port, Fault::Auth, "authentication").await;

    let missing = RedisServer::with_args(&["--requirepass", PASSWORD]);
    let reps = pair(&sim.url, &missing.url(), "pw3", &[]).await;
    refused_as(&reps[0], missing.port, Fault::Auth, "authentication").await;
    no_password_in_logs();
}

// An ACL user (the default user off): `redis_username` with `redis_password_file` works; the
// wrong user is an authentication failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_a_password_file_works_and_a_wrong_user_is_an_auth_failure() {
    let acl = format!(">{PASSWORD}");
    let redis = RedisServer::with_args(&[
        "--user",
        "graphgate",
        "on",
        &acl,
        "~*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]);
    let sim = start_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("redis-password");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    let pw_file = pw_file.display().to_string();
    let reps = pair(
        &sim.url,
        &redis.url(),
        "acl1",
        &[
            ("limits.redis_username", "graphgate"),
            ("limits.redis_password_file", &pw_file),
        ],
    )
    .await;
    shared_budget_holds(&reps).await;

    let other = RedisServer::with_args(&[
        "--user",
        "graphgate",
        "on",
        &acl,
        "~*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]);
    let reps = pair(
        &sim.url,
        &other.url(),
        "acl2",
        &[
            ("limits.redis_username", "someone"),
            ("limits.redis_password_file", &pw_file),
        ],
    )
    .await;
    refused_as(&reps[0], other.port, Fault::Auth, "authentication").await;
    no_password_in_logs();
}

// A server that requires client certificates: with redis_client_cert_file/_key_file the proxies
// share a budget; without them the handshake fails and that is a TLS failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_when_the_server_asks_for_one() {
    let ca = TestCa::new();
    let redis = RedisServer::tls(&ca, &["--tls-auth-clients", "yes"]);
    let sim = start_sim(sim_config()).await;
    let ca_file = ca.ca.display().to_string();
    let cert = ca.client_cert.display().to_string();
    let key = ca.client_key.display().to_string();
    let reps = pair(
        &sim.url,
        &redis.url(),
        "cc1",
        &[
            ("limits.redis_ca_file", &ca_file),
            ("limits.redis_client_cert_file", &cert),
            ("limits.redis_client_key_file", &key),
        ],
    )
    .await;
    shared_budget_holds(&reps).await;
    let other = RedisServer::tls(&ca, &["--tls-auth-clients", "yes"]);
    let reps = pair(
        &sim.url,
        &other.url(),
        "cc2",
        &[("limits.redis_ca_file", &ca_file)],
    )
    .await;
    refused_as(&reps[0], other.port, Fault::Tls, "TLS").await;
}

// The new keys are checked like the others: Sentinel needs a master name and host:port
// addresses and excludes redis_url; a CA file needs TLS; a client cert needs its key; a password
// needs exactly one of _env and _file.
#[test]
fn the_redis_keys_are_checked_before_serving() {
    let refused = |b: ProxyBuilder, key: &str, words: &str| {
        let text = b.load().expect_err("accepted").to_string();
        assert!(text.contains(key) && text.contains(words), "{key}: {text}");
    };
    let base = || TestProxy::builder("http://127.0.0.1:1").redis("redis://127.0.0.1:6379", "x");
    let sentinel = || {
        TestProxy::builder("http://127.0.0.1:1")
            .set("limits.backend", "redis")
            .set("limits.redis_sentinels", vec!["127.0.0.1:26379"])
    };
    refused(sentinel(), "limits.redis_master_name", "required");
    refused(
        sentinel()
            .set("limits.redis_master_name", "m")
            .set("limits.redis_url", "redis://h:1"),
        "limits.redis_url",
        "not both",
    );
    refused(
        sentinel()
            .set("limits.redis_sentinels", vec!["nohostport"])
            .set("limits.redis_master_name", "m"),
        "limits.redis_sentinels",
        "host:port",
    );
    assert!(sentinel()
        .set("limits.redis_master_name", "m")
        .load()
        .is_ok());
    refused(
        base().set("limits.redis_ca_file", "/etc/hostname"),
        "limits.redis_ca_file",
        "TLS",
    );
    refused(
        base()
            .set("limits.redis_url", "rediss://h:1")
            .set("limits.redis_client_cert_file", "/x.pem"),
        "limits.redis_client_cert_file",
        "together",
    );
    refused(
        base().set("limits.redis_password_env", "NOPE_NOT_SET"),
        "limits.redis_password_env",
        "not set",
    );
    refused(
        base()
            .set("limits.redis_password_env", "A")
            .set("limits.redis_password_file", "/x"),
        "limits.redis_password_env",
        "not both",
    );
}

// A password written into `redis_url` is refused by the config check like any inline secret,
// pointing at redis_password_env/_file, without echoing it.
#[test]
fn a_password_in_the_redis_url_is_refused_without_echoing_it() {
    let url = format!("redis://:{PASSWORD}@127.0.0.1:6379");
    let err = TestProxy::builder("http://127.0.0.1:1")
        .redis(&url, "x")
        .load()
        .expect_err("a password in the URL was accepted");
    let text = err.to_string();
    assert!(text.contains("limits.redis_url"), "{text}");
    assert!(text.contains("redis_password_env"), "{text}");
    assert!(
        !text.contains(PASSWORD),
        "the refusal echoes the password: {text}"
    );
}
