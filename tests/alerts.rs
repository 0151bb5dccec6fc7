//! The metrics alerts rely on, and the shipped alert rules checked against them with promtool
//! (Debian's `prometheus` package; `scripts/test` installs it):
//!
//! - every counter whose labels come from config is in the first scrape, at 0;
//! - a 429 graphgate made itself is not a cache miss; callers' time is a histogram by class and
//!   cache result; requests in flight, build info and process metrics are there;
//! - `deploy/prometheus/alerts.yml` passes `promtool check rules` and its own unit tests, every
//!   alert fires in a promtool test built from two real scrapes (at start, and after Meta
//!   throttled, an upstream failed, a webhook subscriber failed, with Redis away), and every
//!   Grafana dashboard query parses as PromQL.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::{metric_value, parse_metrics, Sample, TestProxy, CLIENT_KEY, OTHER_WABA, WABA};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): apt-get install prometheus, or run scripts/test")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

async fn scrape(admin: &str) -> Vec<Sample> {
    let text = support::admin_get(admin, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    parse_metrics(&text)
}

fn has(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> bool {
    samples.iter().any(|s| {
        s.name == name
            && want
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
    })
}

const VERIFY_TOKEN: &str = "verify-TEST-alerts";

/// A proxy with the admin listener, a webhook subscriber at `subscriber_url` that is tried once,
/// and `extra` config.
fn builder(upstream: &str, subscriber_url: &str) -> support::ProxyBuilder {
    TestProxy::builder(upstream)
        .admin()
        .env("TEST_VERIFY_TOKEN", VERIFY_TOKEN)
        .merge(&format!(
            "[webhooks]\npath = \"/webhooks/meta\"\nverify_token_env = \"TEST_VERIFY_TOKEN\"\n\
             max_attempts = 1\ndelivery_timeout = \"1s\"\n\
             [[webhooks.subscriber]]\nname = \"crm\"\nurl = \"{subscriber_url}\"\n"
        ))
}

fn closed_port_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

// The first scrape, before any request, already has every counter an alert reads at 0: throttles
// per app and code, refusals per configured bucket, upstream failures per app and class, cache
// results, webhook deliveries per subscriber and outcome; plus build info with the revision,
// requests in flight and the process metrics.
#[tokio::test]
async fn alert_series_exist_at_zero_before_any_traffic() {
    let sim = support::start_sim(support::sim_config()).await;
    let proxy = builder(&sim.url, &closed_port_url()).start().await;
    let s = scrape(&proxy.admin_url()).await;
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert!(has(&s, name, labels), "no {name}{labels:?} at start");
        assert_eq!(metric_value(&s, name, labels), 0.0, "{name}{labels:?}");
    };
    for code in ["4", "80007", "80008", "131056", "other"] {
        zero(
            "graphgate_upstream_throttled_total",
            &[("app", "main"), ("code", code)],
        );
    }
    let own = format!("waba:{WABA}");
    for bucket in [own.as_str(), "waba:other", "credit_line", "client_quota"] {
        zero(
            "graphgate_ratelimit_rejected_total",
            &[("app", "main"), ("bucket", bucket)],
        );
    }
    for status in ["5xx", "502", "error", "timeout"] {
        zero(
            "graphgate_upstream_requests_total",
            &[("app", "main"), ("class", "waba"), ("status", status)],
        );
    }
    for result in ["hit", "miss", "stale", "bypass"] {
        zero("graphgate_cache_requests_total", &[("result", result)]);
    }
    for outcome in [
        "delivered",
        "failed_attempt",
        "gave_up",
        "expired",
        "queue_full",
    ] {
        zero(
            "graphgate_webhook_deliveries_total",
            &[("subscriber", "crm"), ("outcome", outcome)],
        );
    }
    zero("graphgate_webhook_queue_depth", &[("subscriber", "crm")]);
    zero("graphgate_requests_in_flight", &[]);
    assert!(has(
        &s,
        "graphgate_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))]
    ));
    assert!(s
        .iter()
        .any(|x| x.name == "graphgate_build_info" && x.labels.contains_key("revision")));
    assert!(metric_value(&s, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(metric_value(&s, "process_open_fds", &[]) >= 3.0);
    assert!(metric_value(&s, "process_start_time_seconds", &[]) > 1.6e9);
    assert!(has(&s, "process_cpu_seconds_total", &[]));
}

// A caller refused by graphgate's own budget (429) is counted as a request with cache "none", not
// as a cache miss, so the hit ratio counts only reads the cache could have answered; every answer
// is in the callers' latency histogram under its class and cache result.
#[tokio::test]
async fn a_local_429_is_not_a_cache_miss_and_callers_time_is_a_histogram() {
    let sim = support::start_sim(support::sim_config()).await;
    let proxy = TestProxy::builder(&sim.url)
        .admin()
        .waba_limit(WABA, 2)
        .start()
        .await;
    let c = support::client();
    let mut statuses = Vec::new();
    for i in 0..5 {
        let r = c
            .get(format!(
                "{}/v19.0/{WABA}/message_templates?n={i}",
                proxy.url
            ))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    // A hit: the first read again.
    let r = c
        .get(format!("{}/v19.0/{WABA}/message_templates?n=0", proxy.url))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    let s = scrape(&proxy.admin_url()).await;
    let cache = |r: &str| metric_value(&s, "graphgate_cache_requests_total", &[("result", r)]);
    assert_eq!((cache("miss"), cache("hit")), (2.0, 1.0));
    let count = |cache: &str| {
        metric_value(
            &s,
            "graphgate_request_duration_seconds_count",
            &[("class", "waba"), ("cache", cache)],
        )
    };
    assert_eq!(
        (count("miss"), count("hit"), count("none")),
        (2.0, 1.0, 3.0)
    );
    let refused = metric_value(
        &s,
        "graphgate_requests_total",
        &[("status", "429"), ("cache", "none")],
    );
    assert_eq!(refused, 3.0);
    assert_eq!(metric_value(&s, "graphgate_requests_in_flight", &[]), 0.0);
}

// `alerts.yml` is valid and passes its own promtool unit tests (`alerts.test.yml`).
#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let out = promtool(
        &["check", "rules", "alerts.yml"],
        &deploy().join("prometheus"),
    );
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    promtool(
        &["test", "rules", "alerts.test.yml"],
        &deploy().join("prometheus"),
    );
    let prom = promtool(
        &["check", "config", "prometheus.yml"],
        &deploy().join("prometheus"),
    );
    assert!(prom.contains("SUCCESS"), "{prom}");
}

/// The metrics the rules read.
const ALERTED: [&str; 7] = [
    "graphgate_upstream_throttled_total",
    "graphgate_bucket_used",
    "graphgate_bucket_limit",
    "graphgate_upstream_usage_percent",
    "graphgate_limits_backend_up",
    "graphgate_upstream_requests_total",
    "graphgate_webhook_deliveries_total",
];

fn series_key(s: &Sample) -> String {
    let labels: Vec<String> = s
        .labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{}{{{}}}", s.name, labels.join(","))
}

fn labels_yaml(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}: \"{v}\""))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

// Two real scrapes, at start and after one of each event (Meta throttles, a bucket fills, an
// upstream call fails, a webhook delivery fails and is given up, Redis is unreachable), become a
// promtool test in which the traffic between them repeats every minute. Every alert of
// alerts.yml that those events should raise fires, with the labels of the series that caused it,
// and nothing else fires. Every series the rules read that the second scrape has, the first had.
#[tokio::test]
async fn every_alert_fires_on_the_first_event_in_real_scrapes() {
    let sim = support::start_sim(graphgate::sim::SimConfig {
        waba_limit: 3,
        active_waba_limit: 3,
        ..support::sim_config()
    })
    .await;
    let proxy = builder(&sim.url, &closed_port_url())
        .waba_limit(WABA, 2)
        // Redis away from the start: each replica admits its own share.
        .limits(&format!(
            "backend = \"redis\"\nredis_url = \"redis://{}\"\nbackend_timeout = \"200ms\"\nwindow = \"3s\"",
            closed_port_url().trim_start_matches("http://")
        ))
        .upstream("request_timeout = \"1s\"")
        .start()
        .await;
    let admin = proxy.admin_url();
    let before = scrape(&admin).await;
    // A replica that starts without Redis admits nothing for a window plus request_timeout (what
    // it spent before a restart is unknown); then from its share.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let c = support::client();
    let get = |path: String| {
        c.get(format!("{}{path}", proxy.url))
            .bearer_auth(CLIENT_KEY)
            .send()
    };
    assert_eq!(get(format!("/v19.0/{WABA}")).await.unwrap().status(), 200);
    // Another consumer spends the rest of Meta's budget; Meta then throttles graphgate's next call.
    let proof = graphgate::sim::appsecret_proof(support::APP_SECRET, support::SYSTEM_TOKEN, None);
    for _ in 0..2 {
        c.get(format!("{}/v19.0/{WABA}?appsecret_proof={proof}", sim.url))
            .bearer_auth(support::SYSTEM_TOKEN)
            .send()
            .await
            .unwrap();
    }
    let r = get(format!("/v19.0/{WABA}/message_templates"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "Meta's throttling error");
    sim.sim.set_faults(graphgate::sim::Faults {
        fail_next: 1,
        fail_status: 502,
        ..Default::default()
    });
    assert_eq!(
        get(format!("/v19.0/{OTHER_WABA}")).await.unwrap().status(),
        502
    );
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"{WABA}","time":1,"changes":[{{"field":"messages","value":{{}}}}]}}]}}"#
    );
    let signed = graphgate::webhooks::signature(support::APP_SECRET.as_bytes(), body.as_bytes());
    let r = c
        .post(format!("{}/webhooks/meta", proxy.url))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signed)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let s = scrape(&admin).await;
        let gave_up = metric_value(
            &s,
            "graphgate_webhook_deliveries_total",
            &[("subscriber", "crm"), ("outcome", "gave_up")],
        );
        if gave_up > 0.0 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let pick = |samples: &[Sample]| -> BTreeMap<String, Sample> {
        samples
            .iter()
            .filter(|s| ALERTED.contains(&s.name.as_str()))
            .map(|s| (series_key(s), s.clone()))
            .collect()
    };
    let (a, b) = (pick(&before), pick(&after));
    let counters_born_late: Vec<&String> = b
        .iter()
        .filter(|(k, s)| s.name.ends_with("_total") && !a.contains_key(*k))
        .map(|(k, _)| k)
        .collect();
    assert!(
        counters_born_late.is_empty(),
        "counters the alerts read that were not exported at start: {counters_born_late:?}"
    );

    // The input: counters go on by (after - before) each minute; gauges hold their last value.
    const MINUTES: usize = 20;
    let mut input = String::new();
    for (key, s) in &b {
        let first = a.get(key).map(|x| x.value);
        let values: Vec<String> = (0..=MINUTES)
            .map(|m| {
                if s.name.ends_with("_total") {
                    let start = first.unwrap_or(0.0);
                    format!("{}", start + m as f64 * (s.value - start))
                } else if m == 0 {
                    first.map_or("_".into(), |v| v.to_string())
                } else {
                    s.value.to_string()
                }
            })
            .collect();
        input.push_str(&format!(
            "      - series: '{key}'\n        values: '{}'\n",
            values.join(" ")
        ));
    }

    // What should fire, from the same numbers.
    let delta = |s: &Sample| s.value - a.get(&series_key(s)).map_or(0.0, |x| x.value);
    let mut want: BTreeMap<&str, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    let with = |l: &BTreeMap<String, String>, severity: &str| {
        let mut l = l.clone();
        l.insert("severity".into(), severity.into());
        l
    };
    for s in b.values() {
        match s.name.as_str() {
            "graphgate_upstream_throttled_total" if delta(s) > 0.0 => want
                .entry("GraphgateThrottledByMeta")
                .or_default()
                .push(with(&s.labels, "warning")),
            "graphgate_bucket_used" => {
                let limit = b.values().find(|l| {
                    l.name == "graphgate_bucket_limit" && l.labels == s.labels && l.value > 0.0
                });
                if limit.is_some_and(|l| s.value / l.value > 0.9) {
                    want.entry("GraphgateBudgetAbove90Percent")
                        .or_default()
                        .push(with(&s.labels, "warning"));
                }
            }
            "graphgate_upstream_usage_percent" if s.value > 90.0 => want
                .entry("GraphgateMetaUsageAbove90Percent")
                .or_default()
                .push(with(&s.labels, "warning")),
            "graphgate_limits_backend_up" if s.value == 0.0 => want
                .entry("GraphgateRedisDown")
                .or_default()
                .push(with(&s.labels, "critical")),
            "graphgate_webhook_deliveries_total"
                if delta(s) > 0.0
                    && ["gave_up", "expired", "queue_full"]
                        .contains(&s.labels["outcome"].as_str()) =>
            {
                want.entry("GraphgateWebhookDeliveriesLost")
                    .or_default()
                    .push(with(&s.labels, "critical"))
            }
            _ => {}
        }
    }
    let mut failed: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for s in b
        .values()
        .filter(|s| s.name == "graphgate_upstream_requests_total")
    {
        let st = &s.labels["status"];
        let bad = st.starts_with('5') || st == "error" || st == "timeout";
        let e = failed.entry(s.labels["app"].clone()).or_default();
        e.1 += delta(s);
        if bad {
            e.0 += delta(s);
        }
    }
    for (app, (bad, all)) in failed {
        if all > 0.0 && bad / all > 0.05 {
            let l = BTreeMap::from([("app".to_string(), app)]);
            want.entry("GraphgateUpstreamErrors")
                .or_default()
                .push(with(&l, "warning"));
        }
    }
    let (mut failing, mut delivered) = (BTreeMap::new(), BTreeSet::new());
    for s in b
        .values()
        .filter(|s| s.name == "graphgate_webhook_deliveries_total" && delta(s) > 0.0)
    {
        let sub = s.labels["subscriber"].clone();
        match s.labels["outcome"].as_str() {
            "failed_attempt" => {
                failing.insert(sub.clone(), ());
            }
            "delivered" => {
                delivered.insert(sub);
            }
            _ => {}
        }
    }
    for sub in failing.keys().filter(|s| !delivered.contains(*s)) {
        let l = BTreeMap::from([("subscriber".to_string(), sub.clone())]);
        want.entry("GraphgateWebhookDeliveriesFailing")
            .or_default()
            .push(with(&l, "warning"));
    }
    // Each event of this test raises its alert; the test would prove nothing otherwise.
    for name in [
        "GraphgateThrottledByMeta",
        "GraphgateBudgetAbove90Percent",
        "GraphgateRedisDown",
        "GraphgateUpstreamErrors",
        "GraphgateWebhookDeliveriesFailing",
        "GraphgateWebhookDeliveriesLost",
    ] {
        assert!(
            want.contains_key(name),
            "the scripted events do not raise {name}:\n{input}"
        );
    }

    // The rules without annotations (their templates are the unit tests' concern), and the test.
    let dir = tempfile::tempdir().unwrap();
    let mut rules: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap(),
    )
    .unwrap();
    let mut names = Vec::new();
    for group in rules["groups"].as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            let m = rule.as_mapping_mut().unwrap();
            m.remove("annotations");
            names.push(m["alert"].as_str().unwrap().to_string());
        }
    }
    std::fs::write(
        dir.path().join("rules.yml"),
        serde_norway::to_string(&rules).unwrap(),
    )
    .unwrap();
    let mut tests = String::new();
    for name in &names {
        tests.push_str(&format!(
            "      - eval_time: 15m\n        alertname: {name}\n        exp_alerts:"
        ));
        match want.get(name.as_str()) {
            None => tests.push_str(" []\n"),
            Some(list) => {
                tests.push('\n');
                for l in list {
                    tests.push_str(&format!("          - exp_labels: {}\n", labels_yaml(l)));
                }
            }
        }
    }
    let test = format!(
        "rule_files:\n  - rules.yml\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    \
         input_series:\n{input}    alert_rule_test:\n{tests}"
    );
    std::fs::write(dir.path().join("test.yml"), &test).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "test.yml"])
        .current_dir(dir.path())
        .output()
        .expect("promtool (apt-get install prometheus, or scripts/test)");
    assert!(
        out.status.success(),
        "{}{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn exprs(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::Object(m) => {
            if let Some(Json::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|x| exprs(x, out));
        }
        Json::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

// Every query of the Grafana dashboard parses as PromQL (promtool, as recording rules), with
// Grafana's variables replaced by values Prometheus accepts.
#[test]
fn every_dashboard_query_parses_as_promql() {
    let text = std::fs::read_to_string(deploy().join("grafana/dashboards/graphgate.json")).unwrap();
    let dashboard: Json = serde_json::from_str(&text).unwrap();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 10, "{} queries", all.len());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in all.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("${app:regex}", ".*")
            .replace("$app", ".*");
        let quoted = serde_json::to_string(&e).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], dir.path());
}
