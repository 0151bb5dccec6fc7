//! The deployment files (Dockerfile, deploy/): what can be checked without a Docker engine. The
//! compose file and the Prometheus and Grafana provisioning parse and point at files that exist;
//! the config the compose file mounts passes `graphgate check-config` with the compose environment;
//! the Grafana dashboard queries only metrics (and labels) graphgate serves; the Dockerfile keeps
//! its promises (locked build, non-root, health check).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;
use serde_norway::Value as Yaml;

mod support;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

struct Metric {
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
}

const fn m(name: &'static str, kind: Kind, labels: &'static [&'static str]) -> Metric {
    Metric { name, kind, labels }
}

/// Every metric the admin listener's `/metrics` serves, with its labels, as issue #5 names them.
/// The dashboard may query only these. `metrics_list_equals_real_metrics_output_after_scripted_traffic`
/// keeps this list and real `/metrics` output equal. The histogram has no labels of its own, so the
/// dashboard aggregates it by `le` only.
const METRICS: &[Metric] = &[
    m(
        "graphgate_requests_total",
        Kind::Counter,
        &["app", "client", "class", "method", "status", "cache"],
    ),
    m(
        "graphgate_upstream_requests_total",
        Kind::Counter,
        &["app", "class", "status"],
    ),
    m(
        "graphgate_upstream_request_duration_seconds",
        Kind::Histogram,
        &[],
    ),
    m(
        "graphgate_ratelimit_rejected_total",
        Kind::Counter,
        &["app", "bucket"],
    ),
    m("graphgate_ratelimit_waiting", Kind::Gauge, &[]),
    m("graphgate_limits_backend_up", Kind::Gauge, &[]),
    m("graphgate_limits_unshared_calls", Kind::Gauge, &[]),
    m("graphgate_degraded", Kind::Gauge, &["reason"]),
    m(
        "graphgate_config_reloads_total",
        Kind::Counter,
        &["outcome"],
    ),
    m("graphgate_config_info", Kind::Gauge, &["hash"]),
    m("graphgate_waba_token_dir_wabas", Kind::Gauge, &["app"]),
    m("graphgate_bucket_used", Kind::Gauge, &["app", "bucket"]),
    m("graphgate_bucket_limit", Kind::Gauge, &["app", "bucket"]),
    m(
        "graphgate_upstream_usage_percent",
        Kind::Gauge,
        &["app", "object", "type", "metric"],
    ),
    m(
        "graphgate_upstream_throttled_total",
        Kind::Counter,
        &["app", "code"],
    ),
    m("graphgate_cache_entries", Kind::Gauge, &[]),
    m("graphgate_cache_bytes", Kind::Gauge, &[]),
    m("graphgate_cache_requests_total", Kind::Counter, &["result"]),
    m(
        "graphgate_build_info",
        Kind::Gauge,
        &["version", "revision"],
    ),
    m(
        "graphgate_request_duration_seconds",
        Kind::Histogram,
        &["class", "cache"],
    ),
    m("graphgate_requests_in_flight", Kind::Gauge, &[]),
    m("graphgate_responses_cut_total", Kind::Counter, &["reason"]),
    m("process_cpu_seconds_total", Kind::Counter, &[]),
    m("process_resident_memory_bytes", Kind::Gauge, &[]),
    m("process_virtual_memory_bytes", Kind::Gauge, &[]),
    m("process_open_fds", Kind::Gauge, &[]),
    m("process_max_fds", Kind::Gauge, &[]),
    m("process_start_time_seconds", Kind::Gauge, &[]),
];

// ---------------------------------------------------------------- helpers

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Yaml {
    serde_norway::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn compose() -> Yaml {
    yaml(&deploy().join("docker-compose.yml"))
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &compose["services"][name];
    assert!(s.is_mapping(), "docker-compose.yml has no service `{name}`");
    s
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|seq| {
            seq.iter()
                .map(|x| x.as_str().expect("a string entry").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Compose's `${VAR:-default}` interpolation, as `docker compose` applies it with VAR unset.
fn interpolate(v: &str) -> String {
    let mut out = v.to_string();
    while let Some(start) = out.find("${") {
        let end = start + out[start..].find('}').expect("closing brace");
        let inner = &out[start + 2..end];
        let default = inner.split_once(":-").map_or("", |(_, d)| d).to_string();
        out.replace_range(start..=end, &default);
    }
    out
}

/// A service's `environment`, in list (`K=V`) or map form, interpolated with no variable set.
fn environment(service: &Yaml) -> Vec<(String, String)> {
    let vars: Vec<(String, String)> = match &service["environment"] {
        Yaml::Sequence(items) => items
            .iter()
            .map(|i| {
                let s = i.as_str().expect("environment entries are strings");
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Yaml::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Yaml::String(s) => s.clone(),
                    other => serde_norway::to_string(other).unwrap().trim().to_string(),
                };
                (k.as_str().unwrap().to_string(), v)
            })
            .collect(),
        _ => Vec::new(),
    };
    vars.into_iter()
        .map(|(k, v)| (k, interpolate(&v)))
        .collect()
}

/// A service's short-syntax volumes as (source, target); sources starting with `.` are bind mounts
/// relative to deploy/, others are named volumes.
fn volumes(service: &Yaml) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .into_iter()
        .map(|v| {
            let mut parts = v.splitn(3, ':');
            let src = parts.next().unwrap().to_string();
            let dst = parts.next().expect("volume has a target").to_string();
            (src, dst)
        })
        .collect()
}

fn mount_source(service: &Yaml, target: &str) -> PathBuf {
    let (src, _) = volumes(service)
        .into_iter()
        .find(|(_, dst)| dst == target)
        .unwrap_or_else(|| panic!("nothing is mounted at {target}"));
    deploy().join(src)
}

/// A service's secrets (short syntax: names; long syntax: `source`).
fn secrets(service: &Yaml) -> Vec<String> {
    service["secrets"]
        .as_sequence()
        .map(|seq| {
            seq.iter()
                .map(|s| match s {
                    Yaml::String(name) => name.clone(),
                    long => long["source"].as_str().expect("secret source").to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn deploy_config() -> toml::Table {
    read(&deploy().join("graphgate.toml"))
        .parse()
        .expect("deploy/graphgate.toml is TOML")
}

fn graphgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_graphgate"));
    // Only the environment this test chooses may override the config.
    for (k, _) in std::env::vars() {
        if k.starts_with("GRAPHGATE_") {
            c.env_remove(k);
        }
    }
    c
}

// ---------------------------------------------------------------- compose

// The compose file parses and has graphgate (built from the repo), Redis 7, Prometheus and Grafana,
// each from a pinned image.
#[test]
fn compose_file_parses_with_graphgate_redis_prometheus_and_grafana() {
    let c = compose();
    let gg = service(&c, "graphgate");
    let context = deploy().join(gg["build"]["context"].as_str().expect("build context"));
    let dockerfile = gg["build"]["dockerfile"].as_str().unwrap_or("Dockerfile");
    assert!(
        context.join(dockerfile).is_file(),
        "build context {} has no {dockerfile}",
        context.display()
    );
    assert!(context.join("Cargo.lock").is_file());
    assert_eq!(
        context.canonicalize().unwrap(),
        repo().canonicalize().unwrap()
    );
    let redis = service(&c, "redis")["image"].as_str().unwrap();
    assert!(redis.starts_with("redis:7"), "{redis}");
    for name in ["redis", "prometheus", "grafana"] {
        let image = service(&c, name)["image"].as_str().unwrap();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "{name} image {image} is not pinned"
        );
    }
}

// Every bind mount's source is a file or folder in the repo, and every named volume is declared.
#[test]
fn compose_bind_mounts_point_at_files_in_the_repo() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let mut checked = 0;
    for (name, s) in services {
        for (src, dst) in volumes(s) {
            if src.starts_with('.') || src.starts_with('/') {
                let path = deploy().join(&src);
                assert!(
                    path.exists(),
                    "service {}: {src} (mounted at {dst}) does not exist",
                    name.as_str().unwrap()
                );
                checked += 1;
            } else {
                assert!(
                    c["volumes"].get(&src).is_some(),
                    "named volume {src} is not declared"
                );
            }
        }
    }
    assert!(checked >= 5, "only {checked} bind mounts found");
}

// Secrets are compose secrets read from files under deploy/secrets/ (which are never in the image's
// build context), and the Graph token secret is the file deploy/graphgate.toml reads.
#[test]
fn compose_secrets_are_files_under_deploy_secrets_and_feed_the_config() {
    let c = compose();
    let declared = c["secrets"].as_mapping().expect("top-level secrets");
    for (name, s) in declared {
        let file = s["file"].as_str().expect("file secret");
        assert!(
            file.starts_with("./secrets/"),
            "secret {} is not under deploy/secrets/: {file}",
            name.as_str().unwrap()
        );
    }
    for (name, s) in c["services"].as_mapping().unwrap() {
        for secret in secrets(s) {
            assert!(
                declared.get(&secret).is_some(),
                "service {} uses undeclared secret {secret}",
                name.as_str().unwrap()
            );
        }
    }

    let config = deploy_config();
    let token_file = config["app"][0]["token_file"].as_str().expect("token_file");
    let secret = token_file
        .strip_prefix("/run/secrets/")
        .expect("the token is read from /run/secrets");
    assert!(
        secrets(service(&c, "graphgate")).contains(&secret.to_string()),
        "graphgate does not get the secret {secret} that token_file names"
    );

    let ignore = read(&repo().join(".dockerignore"));
    assert!(
        ignore.lines().any(|l| l.trim() == "deploy/"),
        ".dockerignore must keep deploy/ (and its secrets) out of the build context"
    );
}

// The config is mounted where the image's default command reads it.
#[test]
fn compose_mounts_the_config_where_the_image_reads_it() {
    let c = compose();
    let src = mount_source(service(&c, "graphgate"), "/etc/graphgate/graphgate.toml");
    assert_eq!(
        src.canonicalize().unwrap(),
        deploy().join("graphgate.toml").canonicalize().unwrap()
    );
    let dockerfile = read(&repo().join("Dockerfile"));
    assert!(dockerfile.contains(r#"CMD ["--config", "/etc/graphgate/graphgate.toml"]"#));
}

// graphgate shares its buckets through the redis service, starts only once Redis answers its
// health check, and its replica count defaults to 1 (GRAPHGATE_REPLICAS sets it for --scale).
#[test]
fn compose_wires_graphgate_to_the_redis_service() {
    let c = compose();
    let env = environment(service(&c, "graphgate"));
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("GRAPHGATE_LIMITS__BACKEND").as_deref(), Some("redis"));
    assert_eq!(
        get("GRAPHGATE_LIMITS__REDIS_URL").as_deref(),
        Some("redis://redis:6379")
    );
    assert!(
        c["services"]["redis"].is_mapping(),
        "the redis service exists"
    );
    assert_eq!(get("GRAPHGATE_LIMITS__REPLICAS").as_deref(), Some("1"));
    let gg = service(&c, "graphgate");
    assert_eq!(
        gg["depends_on"]["redis"]["condition"].as_str(),
        Some("service_healthy")
    );
    let health = strings(&service(&c, "redis")["healthcheck"]["test"]);
    assert_eq!(health, ["CMD", "redis-cli", "ping"]);
}

// `--scale graphgate=N` can work: no graphgate port is fixed on the host (the admin port is an
// ephemeral one on loopback), and the `front` service publishes the proxy port and forwards to the
// service name, re-resolved through Docker's DNS. (`nginx -t` on that config passed by hand; nginx
// is not among the test dependencies.)
#[test]
fn compose_scales_graphgate_behind_the_front_proxy() {
    let c = compose();
    let gg = service(&c, "graphgate");
    for p in strings(&gg["ports"]) {
        let parts: Vec<&str> = p.split(':').collect();
        let host_port = match parts.len() {
            1 => "",
            2 => parts[0],
            _ => parts[parts.len() - 2],
        };
        assert!(
            host_port.is_empty(),
            "graphgate publishes a fixed host port: {p}"
        );
    }
    let front = service(&c, "front");
    assert_eq!(strings(&front["ports"]), ["8080:8080"]);
    let conf_path = mount_source(front, "/etc/nginx/nginx.conf");
    let conf = read(&conf_path);
    assert!(conf.contains("set $graphgate graphgate:8080;"), "{conf}");
    assert!(conf.contains("proxy_pass http://$graphgate;"));
    assert!(conf.contains("resolver 127.0.0.11"));
}

// With a read-only root, graphgate's one writable place is the `graphgate-state` volume on
// /var/lib/graphgate, the directory the image makes for uid 10001; every path the deploy config
// writes (limits.state_file, webhooks.queue_dir) is under it.
#[test]
fn compose_gives_the_read_only_root_a_writable_state_volume() {
    let c = compose();
    let gg = service(&c, "graphgate");
    assert_eq!(gg["read_only"].as_bool(), Some(true));
    let state = volumes(gg)
        .into_iter()
        .find(|(_, dst)| dst == "/var/lib/graphgate")
        .expect("a volume on /var/lib/graphgate");
    assert_eq!(state.0, "graphgate-state");
    assert!(c["volumes"].get("graphgate-state").is_some());
    let dockerfile = read(&repo().join("Dockerfile"));
    assert!(dockerfile.contains("--chown=10001:10001 /rootfs/var/lib/graphgate /var/lib/graphgate"));
    assert!(dockerfile.contains(r#"VOLUME ["/var/lib/graphgate"]"#));
    let text = read(&deploy().join("graphgate.toml"));
    let mut written = 0;
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        for key in ["state_file", "queue_dir"] {
            if let Some(v) = l.strip_prefix(key).and_then(|r| r.trim().strip_prefix('=')) {
                let v = v.trim().trim_matches('"');
                assert!(v.starts_with("/var/lib/graphgate/"), "{key} = {v}");
                written += 1;
            }
        }
    }
    assert!(
        written >= 2,
        "deploy/graphgate.toml names no state_file and queue_dir"
    );
}

// Prometheus scrapes /metrics on every graphgate replica's admin port over the compose network
// (found by DNS), from the config file that is mounted where its command reads it, and loads the
// alert rules mounted beside it.
#[test]
fn prometheus_scrapes_graphgate_admin_port() {
    let c = compose();
    let prom = service(&c, "prometheus");
    let config_arg = strings(&prom["command"])
        .into_iter()
        .find_map(|a| a.strip_prefix("--config.file=").map(str::to_string))
        .expect("--config.file");
    let path = mount_source(prom, &config_arg);
    assert_eq!(
        path.canonicalize().unwrap(),
        deploy()
            .join("prometheus/prometheus.yml")
            .canonicalize()
            .unwrap()
    );
    let p = yaml(&path);
    let jobs = p["scrape_configs"].as_sequence().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("graphgate"))
        .expect("a graphgate job");
    assert_eq!(
        job["metrics_path"].as_str().unwrap_or("/metrics"),
        "/metrics"
    );
    // Every replica (DNS service discovery on the compose service name), not one static target.
    assert!(job.get("static_configs").is_none(), "a static target");
    let sd = &job["dns_sd_configs"][0];
    assert_eq!(strings(&sd["names"]), ["graphgate"]);
    assert_eq!(sd["type"].as_str(), Some("A"));
    assert_eq!(sd["port"].as_u64(), Some(9090));
    service(&c, "graphgate");
    // The alert rules are loaded, from a file mounted beside the config.
    let rules = strings(&p["rule_files"]);
    assert_eq!(rules, ["alerts.yml"]);
    let dir = Path::new(&config_arg).parent().unwrap();
    assert_eq!(
        mount_source(prom, dir.join("alerts.yml").to_str().unwrap())
            .canonicalize()
            .unwrap(),
        deploy()
            .join("prometheus/alerts.yml")
            .canonicalize()
            .unwrap()
    );
}

// Grafana gets the Prometheus service as its datasource (with the uid the dashboard uses) and loads
// dashboards from the folder compose mounts deploy/grafana/dashboards at.
#[test]
fn grafana_provisioning_points_at_prometheus_and_the_mounted_dashboards() {
    let c = compose();
    let grafana = service(&c, "grafana");
    let ds_dir = mount_source(grafana, "/etc/grafana/provisioning/datasources");
    let sources = yaml(&ds_dir.join("prometheus.yml"));
    let ds = &sources["datasources"][0];
    assert_eq!(ds["type"].as_str(), Some("prometheus"));
    assert_eq!(ds["url"].as_str(), Some("http://prometheus:9090"));
    let uid = ds["uid"].as_str().expect("datasource uid");

    let dash_dir = mount_source(grafana, "/etc/grafana/provisioning/dashboards");
    let providers = yaml(&dash_dir.join("graphgate.yml"));
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let json_dir = mount_source(grafana, path);
    assert_eq!(
        json_dir.canonicalize().unwrap(),
        deploy().join("grafana/dashboards").canonicalize().unwrap()
    );

    let dashboard = dashboard();
    let mut uids = BTreeSet::new();
    collect_datasource_uids(&dashboard, &mut uids);
    assert_eq!(uids, BTreeSet::from([uid.to_string()]));
}

fn collect_datasource_uids(v: &Json, out: &mut BTreeSet<String>) {
    match v {
        Json::Object(map) => {
            if let Some(uid) = map.get("datasource").and_then(|d| d["uid"].as_str()) {
                out.insert(uid.to_string());
            }
            map.values().for_each(|x| collect_datasource_uids(x, out));
        }
        Json::Array(items) => items.iter().for_each(|x| collect_datasource_uids(x, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------- the mounted config

// deploy/graphgate.toml passes `graphgate check-config` with the graphgate service's GRAPHGATE_*
// environment from the compose file, the token secret standing in as a temp file.
#[test]
fn deploy_config_passes_check_config_with_the_compose_environment() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("graph_token");
    std::fs::write(&token, "EAAGdeployTESTtoken\n").unwrap();
    let overrides: Vec<(String, String)> = environment(service(&compose(), "graphgate"))
        .into_iter()
        .filter(|(k, _)| k.starts_with("GRAPHGATE_"))
        .collect();
    let out = graphgate()
        .args(["check-config", "--config"])
        .arg(deploy().join("graphgate.toml"))
        .envs(overrides)
        .env("GRAPHGATE_APP__0__TOKEN_FILE", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(stdout.contains("graph.facebook.com"), "{stdout}");
}

// The container config listens on every interface, reaches Meta, and keeps secrets out of the file:
// the token is a file under /run/secrets and the client is known by its key's sha256.
#[test]
fn deploy_config_listens_publicly_and_takes_secrets_from_run_secrets() {
    let config = deploy_config();
    assert_eq!(config["server"]["listen"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(
        config["upstream"]["url"].as_str(),
        Some("https://graph.facebook.com")
    );
    let app = &config["app"][0];
    assert!(app.get("token_env").is_none());
    assert!(app["token_file"]
        .as_str()
        .unwrap()
        .starts_with("/run/secrets/"));
    let client = &config["client"][0];
    let digest = client["key_sha256"].as_str().unwrap();
    assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(client.get("key_env").is_none());
}

// ---------------------------------------------------------------- dashboard

fn dashboard() -> Json {
    let path = deploy().join("grafana/dashboards/graphgate.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// One PromQL query from the dashboard and the legend drawn for it.
struct Query {
    expr: String,
    legend: String,
}

/// Every query in the dashboard: panel targets' `expr` and template variables' `query`.
fn queries(v: &Json, out: &mut Vec<Query>) {
    match v {
        Json::Object(map) => {
            if let Some(expr) = map.get("expr").and_then(Json::as_str) {
                let legend = map.get("legendFormat").and_then(Json::as_str);
                out.push(Query {
                    expr: expr.to_string(),
                    legend: legend.unwrap_or_default().to_string(),
                });
            }
            for key in ["query", "definition"] {
                if let Some(q) = map.get(key).and_then(Json::as_str) {
                    out.push(Query {
                        expr: q.to_string(),
                        legend: String::new(),
                    });
                }
            }
            map.values().for_each(|x| queries(x, out));
        }
        Json::Array(items) => items.iter().for_each(|x| queries(x, out)),
        _ => {}
    }
}

/// The webhook series: served only when `[webhooks]` is configured (so not in METRICS, which equals
/// a scrape without it); the dashboard may query them too.
const WEBHOOK_METRICS: &[Metric] = &[
    m("graphgate_webhook_events_total", Kind::Counter, &["field"]),
    m(
        "graphgate_webhook_signature_failures_total",
        Kind::Counter,
        &[],
    ),
    m(
        "graphgate_webhook_deliveries_total",
        Kind::Counter,
        &["subscriber", "outcome"],
    ),
    m(
        "graphgate_webhook_queue_depth",
        Kind::Gauge,
        &["subscriber"],
    ),
];

/// The metric a name refers to: itself, or for `_bucket`/`_sum`/`_count` the histogram it belongs to.
fn metric(name: &str) -> Option<&'static Metric> {
    if let Some(m) = METRICS
        .iter()
        .chain(WEBHOOK_METRICS)
        .find(|m| m.name == name)
    {
        return Some(m);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find_map(|base| {
            METRICS
                .iter()
                .find(|m| m.name == base && m.kind == Kind::Histogram)
        })
}

/// The metric names (`graphgate_*`) and label names a PromQL expression uses: labels in selectors
/// `{label="..."}`, in `by (...)`/`without (...)`, and `label_values(metric, label)`. Quoted strings
/// are skipped, so label values never count as names.
fn names_in(expr: &str) -> (Vec<String>, Vec<String>) {
    let chars: Vec<char> = expr.chars().collect();
    let mut metrics = Vec::new();
    let mut labels = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // The identifiers in chars[from..] up to `close`, skipping quoted strings.
    let idents_until = |from: usize, close: char| {
        let mut out = Vec::new();
        let mut j = from;
        let mut word = String::new();
        while j < chars.len() && chars[j] != close {
            match chars[j] {
                '"' | '\'' | '`' => {
                    let q = chars[j];
                    j += 1;
                    while j < chars.len() && chars[j] != q {
                        j += if chars[j] == '\\' { 2 } else { 1 };
                    }
                }
                c if ident(c) && !(word.is_empty() && c.is_ascii_digit()) => word.push(c),
                _ => {
                    if !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                }
            }
            j += 1;
        }
        if !word.is_empty() {
            out.push(word);
        }
        (out, j)
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if c == '[' {
            // A range like [5m] or [$__rate_interval]: no names inside.
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            continue;
        }
        if !ident(c) || c.is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let after = next_non_space(i);
        let at = |ch: char| after < chars.len() && chars[after] == ch;
        if word.starts_with("graphgate_") {
            metrics.push(word);
            if at('{') {
                // Selector: the label names are the identifiers before each matcher's operator.
                let (words, end) = idents_until(after + 1, '}');
                labels.extend(words);
                i = end + 1;
            }
        } else if (word == "by" || word == "without") && at('(') {
            let (words, end) = idents_until(after + 1, ')');
            labels.extend(words);
            i = end + 1;
        } else if word == "label_values" && at('(') {
            let (words, end) = idents_until(after + 1, ')');
            metrics.extend(
                words
                    .iter()
                    .filter(|w| w.starts_with("graphgate_"))
                    .cloned(),
            );
            labels.extend(words.into_iter().filter(|w| !w.starts_with("graphgate_")));
            i = end + 1;
        }
    }
    (metrics, labels)
}

// The dashboard is valid JSON and every metric its queries use is one graphgate serves (histogram
// series by their base name), with labels that metric has.
#[test]
fn dashboard_queries_only_metrics_and_labels_graphgate_serves() {
    let mut qs = Vec::new();
    queries(&dashboard(), &mut qs);
    assert!(qs.len() >= 10, "only {} queries found", qs.len());
    for q in &qs {
        let (names, labels) = names_in(&q.expr);
        // Prometheus adds the target's own labels to every series.
        let mut allowed: BTreeSet<&str> = BTreeSet::from(["instance", "job"]);
        for name in &names {
            let m = metric(name)
                .unwrap_or_else(|| panic!("`{name}` in `{}` is not a graphgate metric", q.expr));
            allowed.extend(m.labels);
            if m.kind == Kind::Histogram {
                allowed.insert("le");
            }
        }
        let legend_labels = q
            .legend
            .split("{{")
            .skip(1)
            .filter_map(|s| s.split_once("}}"))
            .map(|(l, _)| l.trim().to_string());
        for label in labels.into_iter().chain(legend_labels) {
            assert!(
                allowed.contains(label.as_str()),
                "label `{label}` in `{}` (legend `{}`) is not a label of {names:?}",
                q.expr,
                q.legend
            );
        }
    }
}

// The dashboard shows what ops people read: budget used per WABA, rate-limit rejections, Meta's
// usage percentages, throttling, cache hit ratio, latency percentiles, request rate by status,
// Redis health, webhook deliveries and queue depth, and the process's memory.
#[test]
fn dashboard_shows_budgets_rejections_usage_cache_latency_and_status() {
    let mut qs = Vec::new();
    queries(&dashboard(), &mut qs);
    let exprs: Vec<String> = qs
        .iter()
        .map(|q| q.expr.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let has = |needle: &str| exprs.iter().any(|e| e.contains(needle));
    assert!(has(
        "graphgate_bucket_used{app=~\"$app\"} / graphgate_bucket_limit"
    ));
    assert!(has("rate(graphgate_ratelimit_rejected_total"));
    assert!(has("graphgate_upstream_usage_percent"));
    assert!(has("graphgate_upstream_throttled_total"));
    assert!(has("graphgate_cache_requests_total{result=\"hit\"}"));
    for q in ["0.5", "0.95", "0.99"] {
        assert!(
            has(&format!(
                "histogram_quantile({q}, sum by (le) (rate(graphgate_upstream_request_duration_seconds_bucket"
            )),
            "no p{q} latency query"
        );
    }
    assert!(has("sum by (status) (rate(graphgate_requests_total"));
    // Redis health per replica, webhook deliveries and queue, callers' latency, process figures.
    assert!(has("graphgate_limits_backend_up"));
    assert!(has("rate(graphgate_webhook_deliveries_total"));
    assert!(has("graphgate_webhook_queue_depth"));
    assert!(has("graphgate_request_duration_seconds_bucket"));
    assert!(has("process_resident_memory_bytes"));
}

// The query scanner itself: label values and ranges are not names; histogram series map to their
// base metric; an unknown metric or label is caught.
#[test]
fn dashboard_query_scanner_finds_metrics_and_labels() {
    let (names, labels) = names_in(
        r#"sum by (app, bucket) (rate(graphgate_ratelimit_rejected_total{app=~"graphgate_fake|x"}[$__rate_interval]))"#,
    );
    assert_eq!(names, ["graphgate_ratelimit_rejected_total"]);
    assert_eq!(labels, ["app", "bucket", "app"]);
    let (names, labels) = names_in("label_values(graphgate_bucket_limit, app)");
    assert_eq!(
        (names, labels),
        (vec!["graphgate_bucket_limit".into()], vec!["app".into()])
    );
    assert!(metric("graphgate_upstream_request_duration_seconds_bucket").is_some());
    assert!(metric("graphgate_requests_total_count").is_none());
    assert!(metric("graphgate_request_total").is_none());
}

// ---------------------------------------------------------------- real /metrics output

// Scripted traffic that touches every metric (a miss and a hit, Meta's usage headers, a throttling
// error from Meta, a local refusal) against the real proxy and simulator: every metric in METRICS
// has a sample with exactly its labels and its type, and /metrics serves nothing METRICS lacks.
#[tokio::test]
async fn metrics_list_equals_real_metrics_output_after_scripted_traffic() {
    use support::{CLIENT_KEY, WABA};
    let sim = support::start_sim(graphgate::sim::SimConfig {
        waba_limit: 3,
        active_waba_limit: 3,
        ..support::sim_config()
    })
    .await;
    let proxy = support::TestProxy::builder(&sim.url).admin().start().await;
    let admin = proxy.admin_url();
    let c = support::client();
    let get = |path: String| {
        c.get(format!("{}{path}", proxy.url))
            .bearer_auth(CLIENT_KEY)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(get(format!("/v19.0/{WABA}")).await.unwrap().status(), 200);
    }
    // Another consumer of the app spends the rest of Meta's budget; Meta then throttles us (80008)
    // and graphgate refuses the next call itself.
    let proof = graphgate::sim::appsecret_proof(support::APP_SECRET, support::SYSTEM_TOKEN, None);
    for _ in 0..2 {
        let r = c
            .get(format!("{}/v19.0/{WABA}?appsecret_proof={proof}", sim.url))
            .bearer_auth(support::SYSTEM_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = get(format!("/v19.0/{WABA}/message_templates"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "Meta's throttling error is relayed");
    let r = get(format!("/v19.0/{WABA}/phone_numbers")).await.unwrap();
    assert_eq!(r.status(), 429);

    let text = support::admin_get(&admin, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    let samples = support::parse_metrics(&text);
    let mut types: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    types.sort();
    let mut want: Vec<(String, String)> = METRICS
        .iter()
        .map(|m| {
            let t = match m.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            (m.name.to_string(), t.to_string())
        })
        .collect();
    want.sort();
    assert_eq!(types, want, "METRICS and /metrics disagree:\n{text}");
    for m in METRICS {
        let series = match m.kind {
            Kind::Histogram => format!("{}_bucket", m.name),
            _ => m.name.to_string(),
        };
        let mut labels: BTreeSet<&str> = m.labels.iter().copied().collect();
        if m.kind == Kind::Histogram {
            labels.insert("le");
        }
        let found = samples.iter().any(|s| {
            s.name == series
                && s.labels.keys().map(String::as_str).collect::<BTreeSet<_>>() == labels
        });
        assert!(
            found,
            "no `{series}` sample with labels {labels:?} in:\n{text}"
        );
    }
}

// ---------------------------------------------------------------- Dockerfile

// The Dockerfile builds in one stage with locked dependencies and runs in another as a non-root
// user, with a health check by `graphgate healthcheck` and the documented entrypoint.
#[test]
fn dockerfile_builds_locked_runs_non_root_and_checks_health() {
    let ins = support::dockerfile_instructions(&read(&repo().join("Dockerfile")));
    let with = |kw: &str| -> Vec<&String> {
        ins.iter()
            .filter(|i| i.split_whitespace().next() == Some(kw))
            .collect()
    };
    assert!(with("FROM").len() >= 2, "not a multi-stage build");
    let runs = with("RUN");
    let builds: Vec<_> = runs.iter().filter(|r| r.contains("cargo build")).collect();
    assert!(!builds.is_empty());
    for b in builds {
        assert!(b.contains("--release") && b.contains("--locked"), "{b}");
    }
    let users = with("USER");
    let user = users.last().expect("a USER instruction");
    let who = user.split_whitespace().nth(1).unwrap();
    assert!(
        !matches!(who.split(':').next(), Some("root" | "0")),
        "runs as {who}"
    );
    let last_from = ins.iter().rposition(|i| i.starts_with("FROM")).unwrap();
    let user_at = ins.iter().rposition(|i| i.starts_with("USER")).unwrap();
    assert!(user_at > last_from, "USER is not set in the runtime stage");
    let health = with("HEALTHCHECK");
    assert_eq!(health.len(), 1);
    // The binary probes itself (tests/image.rs runs it as the image would).
    assert!(health[0].contains(r#"CMD ["graphgate", "healthcheck"]"#));
    assert!(with("EXPOSE")
        .iter()
        .any(|e| e.contains("8080") && e.contains("9090")));
    assert_eq!(with("ENTRYPOINT"), [r#"ENTRYPOINT ["graphgate"]"#]);
    assert_eq!(
        with("CMD"),
        [r#"CMD ["--config", "/etc/graphgate/graphgate.toml"]"#]
    );
}
