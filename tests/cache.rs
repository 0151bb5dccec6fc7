//! The response cache end to end: the real proxy (with a manual cache clock) in front of the real
//! simulator, whose request log proves when a hit did not reach upstream.

mod support;

use std::sync::Arc;
use std::time::Duration;

use graphgate::cache::{Lookup, ResponseCache};
use graphgate::clock::ManualClock;
use graphgate::sim::{Access, Faults, SimToken};
use graphgate::target::Target;
use graphgate::Gateway;
use serde_json::Value;
use support::*;

const SECOND_APP_ID: &str = "1000000000000002";
const SECOND_TOKEN: &str = "EAAGsecondAPPtokenTESTm3Qv8";
const SECOND_KEY: &str = "ggkey-second-SECRET-0003";
const STINGY_KEY: &str = "ggkey-stingy-SECRET-0004";

struct Env {
    sim: SimServer,
    url: String,
    gw: Gateway,
    clock: Arc<ManualClock>,
    _proxy: TestProxy,
}

impl Env {
    /// Upstream calls whose path ends with `suffix`.
    fn calls(&self, suffix: &str) -> usize {
        self.sim
            .sim
            .stats()
            .requests
            .iter()
            .filter(|r| r.path.ends_with(suffix))
            .count()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.get_as(path, CLIENT_KEY, &[]).await
    }

    async fn get_as(&self, path: &str, key: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut rb = client().get(format!("{}{path}", self.url)).bearer_auth(key);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        rb.send().await.unwrap()
    }
}

fn x_cache(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// The default test config plus a client `stingy` that may not skip the cache, and `cache_toml`
/// (a `[cache]` section and its rules), proxy on a manual clock.
async fn start_with(cache_toml: &str) -> Env {
    let sim = start_sim(sim_config()).await;
    let stingy = format!(
        "name = \"stingy\"\nkey_sha256 = \"{}\"\nallow_no_cache = false",
        hex(STINGY_KEY)
    );
    let proxy = TestProxy::builder(&sim.url)
        .client(&stingy)
        .merge(cache_toml);
    launch(sim, proxy).await
}

/// Starts `proxy` on a manual clock, in front of `sim`.
async fn launch(sim: SimServer, proxy: ProxyBuilder) -> Env {
    let clock = ManualClock::new(1_000_000_000);
    let proxy = proxy.clock(clock.clone()).start().await;
    Env {
        sim,
        url: proxy.url.clone(),
        gw: proxy.gw.clone(),
        clock,
        _proxy: proxy,
    }
}

async fn start_cache() -> Env {
    start_with("").await
}

// A second GET of the same URL is answered from the cache, with Age and the kept Meta headers, and
// never reaches the upstream.
#[tokio::test]
async fn a_repeated_get_is_a_miss_then_a_hit_that_never_reaches_upstream() {
    let e = start_cache().await;
    let path = format!("/v19.0/{WABA}/message_templates?limit=2");
    let first = e.get(&path).await;
    assert_eq!(first.status(), 200);
    assert_eq!(x_cache(&first), "MISS");
    assert_eq!(
        header(&first, "cache-control").unwrap(),
        "private, max-age=60"
    );
    let first_body = first.text().await.unwrap();
    e.clock.advance(Duration::from_secs(7));
    let second = e.get(&path).await;
    assert_eq!(second.status(), 200);
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(header(&second, "age").unwrap(), "7");
    assert_eq!(
        header(&second, "cache-control").unwrap(),
        "private, max-age=53"
    );
    for h in [
        "content-type",
        "facebook-api-version",
        "x-fb-trace-id",
        "x-business-use-case-usage",
    ] {
        assert!(second.headers().contains_key(h), "a hit keeps {h}");
    }
    assert_eq!(second.text().await.unwrap(), first_body);
    assert_eq!(e.calls("/message_templates"), 1);
}

// HEAD is answered from the same entry as GET, with the GET's length and no body.
#[tokio::test]
async fn head_shares_the_get_entry_and_has_no_body() {
    let e = start_cache().await;
    let path = format!("{}/v19.0/{WABA}", e.url);
    let head = client()
        .head(&path)
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(x_cache(&head), "MISS");
    let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    assert!(head.bytes().await.unwrap().is_empty());
    let get = e.get(&format!("/v19.0/{WABA}")).await;
    assert_eq!(x_cache(&get), "HIT");
    assert_eq!(get.bytes().await.unwrap().len(), len);
    let head = client()
        .head(&path)
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(x_cache(&head), "HIT");
    assert_eq!(e.calls(WABA), 1, "one upstream GET served all three");
}

// Parameter order, auth parameters and percent-encoding do not split entries; versions do.
#[tokio::test]
async fn query_order_and_auth_params_share_an_entry_but_versions_do_not() {
    let e = start_cache().await;
    let a = e
        .get(&format!("/v19.0/{WABA}?fields=id%2Cname&limit=5"))
        .await;
    assert_eq!(x_cache(&a), "MISS");
    let b = client()
        .get(format!(
            "{}/v19.0/{WABA}?limit=5&access_token={CLIENT_KEY}&fields=id,name&appsecret_proof=x",
            e.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(b.status(), 200);
    assert_eq!(x_cache(&b), "HIT");
    let c = e
        .get(&format!("/v20.0/{WABA}?fields=id,name&limit=5"))
        .await;
    assert_eq!(x_cache(&c), "MISS", "another version is another entry");
    let d = e
        .get(&format!("/v19.0/{WABA}?fields=id,name&limit=6"))
        .await;
    assert_eq!(x_cache(&d), "MISS", "another value is another entry");
    assert_eq!(e.calls(WABA), 3);
}

// Two apps asking for the same path each get their own answer, fetched with their own token.
#[tokio::test]
async fn apps_never_share_entries() {
    let mut cfg = sim_config();
    cfg.tokens.push(SimToken {
        token: SECOND_TOKEN.into(),
        app_id: SECOND_APP_ID.into(),
        app_secret: None,
        access: Access::All,
    });
    let sim = start_sim(cfg).await;
    let text = format!(
        r#"
[upstream]
url = "{}"
request_timeout = "2s"

[[app]]
name = "main"
id = "{APP_ID}"
token_env = "TEST_SYSTEM_TOKEN"
app_secret_env = "TEST_APP_SECRET"

[[app]]
name = "second"
id = "{SECOND_APP_ID}"
token_env = "TEST_SECOND_TOKEN"

[[client]]
name = "alpha"
key_sha256 = "{}"
app = "main"

[[client]]
name = "second"
key_sha256 = "{}"
app = "second"
"#,
        sim.url,
        hex(CLIENT_KEY),
        hex(SECOND_KEY)
    );
    let proxy = ProxyBuilder::from_toml(&text).env("TEST_SECOND_TOKEN", SECOND_TOKEN);
    let e = launch(sim, proxy).await;
    let path = format!("/v19.0/{WABA}/phone_numbers");
    assert_eq!(x_cache(&e.get_as(&path, CLIENT_KEY, &[]).await), "MISS");
    assert_eq!(x_cache(&e.get_as(&path, SECOND_KEY, &[]).await), "MISS");
    assert_eq!(x_cache(&e.get_as(&path, SECOND_KEY, &[]).await), "HIT");
    assert_eq!(x_cache(&e.get_as(&path, CLIENT_KEY, &[]).await), "HIT");
    let seen = e.sim.sim.stats().tokens_seen;
    assert_eq!(seen.get(SYSTEM_TOKEN), Some(&1));
    assert_eq!(seen.get(SECOND_TOKEN), Some(&1));
}

// An entry fetched with a WABA's own token is keyed by that WABA, never by the app's token.
#[tokio::test]
async fn an_entry_fetched_with_a_wabas_own_token_is_keyed_by_that_waba() {
    let e = start_cache().await;
    let own = e.get(&format!("/v19.0/{OTHER_WABA}/phone_numbers")).await;
    assert_eq!(own.status(), 200);
    let app = e.get(&format!("/v19.0/{WABA}/phone_numbers")).await;
    assert_eq!(app.status(), 200);
    let keys: Vec<String> =
        e.gw.cache()
            .entries()
            .iter()
            .map(|(k, _)| k.text().to_string())
            .collect();
    assert!(keys
        .iter()
        .any(|k| k.starts_with(&format!("{OTHER_WABA}\n")) && k.contains(OTHER_WABA)));
    assert!(keys.iter().any(|k| k.starts_with('\n') && k.contains(WABA)));
}

// Entries expire by the injected clock: the default TTL, a rule's own TTL, and `ttl = "0s"`.
#[tokio::test]
async fn default_and_per_rule_ttls_expire_on_the_injected_clock() {
    let e = start_with(
        r#"
[cache]
default_ttl = "60s"

[[cache.rule]]
path = "/{waba}/message_templates"
ttl = "10s"

[[cache.rule]]
path = "/{waba}/phone_numbers"
ttl = "0s"

[[cache.rule]]
path = "/{id}"
fields = ["message_templates"]
ttl = "5s"
"#,
    )
    .await;
    let templates = format!("/v19.0/{WABA}/message_templates");
    let waba = format!("/v19.0/{WABA}");
    let view = format!("/v19.0/{WABA}?fields=id,message_templates{{name}}");
    let phones = format!("/v19.0/{WABA}/phone_numbers");
    for p in [&templates, &waba, &view] {
        assert_eq!(x_cache(&e.get(p).await), "MISS", "{p}");
    }
    assert_eq!(x_cache(&e.get(&phones).await), "BYPASS");
    assert_eq!(x_cache(&e.get(&phones).await), "BYPASS");
    assert_eq!(e.calls("/phone_numbers"), 2);

    e.clock.advance(Duration::from_secs(6));
    assert_eq!(x_cache(&e.get(&templates).await), "HIT");
    assert_eq!(x_cache(&e.get(&view).await), "MISS", "the fields rule's 5s");
    e.clock.advance(Duration::from_secs(5));
    assert_eq!(x_cache(&e.get(&templates).await), "MISS", "the rule's 10s");
    assert_eq!(x_cache(&e.get(&waba).await), "HIT");
    e.clock.advance(Duration::from_secs(50));
    assert_eq!(x_cache(&e.get(&waba).await), "MISS", "the default 60s");
}

// 100 identical requests arriving together make one upstream call; all get the same answer.
#[tokio::test]
async fn a_hundred_concurrent_identical_misses_make_one_upstream_call() {
    let e = start_cache().await;
    e.sim.sim.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let url = format!("{}/v19.0/{WABA}/message_templates?limit=3", e.url);
    let c = client();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let r = c.get(url).bearer_auth(CLIENT_KEY).send().await.unwrap();
                let label = x_cache(&r);
                (r.status().as_u16(), label, r.text().await.unwrap())
            })
        })
        .collect();
    let mut bodies = std::collections::HashSet::new();
    let mut misses = 0;
    for t in tasks {
        let (status, label, body) = t.await.unwrap();
        assert_eq!(status, 200);
        misses += usize::from(label == "MISS");
        bodies.insert(body);
    }
    assert_eq!(e.calls("/message_templates"), 1);
    assert_eq!(misses, 1, "one caller fetched, the others waited");
    assert_eq!(bodies.len(), 1);
}

// Waiters get the fetch's error too: one upstream call, every caller sees the same 5xx.
#[tokio::test]
async fn concurrent_misses_share_the_upstream_error() {
    let e = start_cache().await;
    e.sim.sim.set_faults(Faults {
        latency_ms: 300,
        fail_next: 1,
        fail_status: 503,
        ..Faults::default()
    });
    let url = format!("{}/v19.0/{WABA}/phone_numbers", e.url);
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get_status(url.clone())))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 503);
    }
    assert_eq!(e.calls("/phone_numbers"), 1);
}

// Creating a template drops the cached template list and the WABA's fields view; deleting one too.
#[tokio::test]
async fn writes_through_the_proxy_invalidate_entries_under_their_object() {
    let e = start_cache().await;
    let list = format!("/v19.0/{WABA}/message_templates?limit=100");
    let view = format!("/v19.0/{WABA}?fields=message_templates");
    let other = format!("/v19.0/{OTHER_WABA}/phone_numbers");
    for p in [&list, &view, &other] {
        assert_eq!(x_cache(&e.get(p).await), "MISS");
        assert_eq!(x_cache(&e.get(p).await), "HIT");
    }
    let created = create_template(&e.url, "cache_probe", "probe").await;
    assert_eq!(created.status(), 200, "{}", created.text().await.unwrap());
    let fresh = e.get(&list).await;
    assert_eq!(x_cache(&fresh), "MISS");
    assert!(fresh.text().await.unwrap().contains("cache_probe"));
    assert_eq!(x_cache(&e.get(&view).await), "MISS");
    assert_eq!(
        x_cache(&e.get(&other).await),
        "HIT",
        "another object is untouched"
    );

    let deleted = client()
        .delete(format!(
            "{}/v19.0/{WABA}/message_templates?name=cache_probe",
            e.url
        ))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200, "{}", deleted.text().await.unwrap());
    let after = e.get(&list).await;
    assert_eq!(x_cache(&after), "MISS");
    assert!(!after.text().await.unwrap().contains("cache_probe"));
}

// A write that fails leaves the entries alone.
#[tokio::test]
async fn a_failed_write_does_not_invalidate() {
    let e = start_cache().await;
    let list = format!("/v19.0/{WABA}/message_templates");
    assert_eq!(x_cache(&e.get(&list).await), "MISS");
    let refused = client()
        .post(format!("{}/v19.0/{WABA}/message_templates", e.url))
        .bearer_auth(CLIENT_KEY)
        .form(&[("language", "en_US")])
        .send()
        .await
        .unwrap();
    assert!(refused.status().is_client_error());
    assert_eq!(x_cache(&e.get(&list).await), "HIT");
}

// The admin purge by app and path prefix counts the matching entries, whatever their version, and
// drops everything under the prefix's object; other objects and apps keep theirs.
#[tokio::test]
async fn purge_by_path_prefix_drops_entries_under_the_object_only() {
    let e = start_cache().await;
    let list = format!("/v19.0/{WABA}/message_templates");
    let waba = format!("/v20.0/{WABA}");
    let other = format!("/v19.0/{OTHER_WABA}");
    for p in [&list, &waba, &other] {
        assert_eq!(x_cache(&e.get(p).await), "MISS");
    }
    assert_eq!(e.gw.cache().purge(1, "/"), 0, "another app has nothing");
    assert_eq!(x_cache(&e.get(&list).await), "HIT");
    assert_eq!(
        e.gw.cache().purge(0, &format!("/{WABA}/message_templates")),
        1
    );
    assert_eq!(x_cache(&e.get(&list).await), "MISS");
    assert_eq!(x_cache(&e.get(&other).await), "HIT");
    assert_eq!(e.gw.cache().purge(0, &format!("/v19.0/{WABA}")), 2);
    assert_eq!(x_cache(&e.get(&waba).await), "MISS");
    assert_eq!(x_cache(&e.get(&other).await), "HIT");
    e.gw.cache().purge(0, "/");
    assert_eq!(x_cache(&e.get(&other).await), "MISS");
}

// When Meta answers 5xx after expiry, the expired entry answers instead, marked stale.
#[tokio::test]
async fn a_meta_5xx_is_answered_with_the_stale_entry() {
    let e = start_cache().await;
    let path = format!("/v19.0/{WABA}/phone_numbers");
    let first = e.get(&path).await;
    let body = first.text().await.unwrap();
    e.clock.advance(Duration::from_secs(61));
    e.sim.sim.set_faults(Faults {
        fail_next: 1,
        fail_status: 503,
        ..Faults::default()
    });
    let stale = e.get(&path).await;
    assert_eq!(stale.status(), 200);
    assert_eq!(x_cache(&stale), "STALE");
    assert_eq!(header(&stale, "age").unwrap(), "61");
    assert_eq!(
        header(&stale, "warning").unwrap(),
        "110 - \"Response is Stale\""
    );
    assert_eq!(stale.text().await.unwrap(), body);
    assert_eq!(
        e.calls("/phone_numbers"),
        2,
        "the failed refresh was a real call"
    );
    // Meta is back: the next request refreshes the entry.
    assert_eq!(x_cache(&e.get(&path).await), "MISS");
    assert_eq!(x_cache(&e.get(&path).await), "HIT");
}

// A stalled upstream (request_timeout is 2s in the test config) is answered with the stale entry.
#[tokio::test]
async fn a_stalled_upstream_is_answered_with_the_stale_entry() {
    let e = start_cache().await;
    let path = format!("/v19.0/{WABA}");
    assert_eq!(x_cache(&e.get(&path).await), "MISS");
    e.clock.advance(Duration::from_secs(120));
    e.sim.sim.set_faults(Faults {
        stall_ms: 3_000,
        ..Faults::default()
    });
    let stale = e.get(&path).await;
    assert_eq!(stale.status(), 200);
    assert_eq!(x_cache(&stale), "STALE");
}

// Without an entry, or past stale_ttl, or under a rule with stale = false, the failure passes.
#[tokio::test]
async fn failures_pass_through_without_a_usable_stale_entry() {
    let e = start_with(
        r#"
[cache]
stale_ttl = "10m"

[[cache.rule]]
path = "/{waba}/message_templates"
stale = false
"#,
    )
    .await;
    let fail = |n| Faults {
        fail_next: n,
        fail_status: 502,
        ..Faults::default()
    };
    let phones = format!("/v19.0/{WABA}/phone_numbers");
    e.sim.sim.set_faults(fail(1));
    let r = e.get(&phones).await;
    assert_eq!(r.status(), 502);
    assert_eq!(x_cache(&r), "MISS");

    assert_eq!(x_cache(&e.get(&phones).await), "MISS");
    e.clock.advance(Duration::from_secs(60 + 601));
    e.sim.sim.set_faults(fail(1));
    assert_eq!(e.get(&phones).await.status(), 502, "past stale_ttl");

    let templates = format!("/v19.0/{WABA}/message_templates");
    assert_eq!(x_cache(&e.get(&templates).await), "MISS");
    e.clock.advance(Duration::from_secs(61));
    e.sim.sim.set_faults(fail(1));
    assert_eq!(
        e.get(&templates).await.status(),
        502,
        "the rule forbids stale"
    );
}

// no-cache fetches fresh (a counted call) and refreshes the entry; max-age bounds the age accepted;
// only-if-cached answers from the cache or with a Graph-shaped 504.
#[tokio::test]
async fn callers_control_the_cache_with_cache_control() {
    let e = start_cache().await;
    let path = format!("/v19.0/{WABA}/phone_numbers");
    let only_if_cached = [("cache-control", "only-if-cached")];
    let miss = e.get_as(&path, CLIENT_KEY, &only_if_cached).await;
    assert_eq!(miss.status(), 504);
    assert_eq!(x_cache(&miss), "MISS");
    let body: Value = miss.json().await.unwrap();
    graph_error(&body);
    assert_eq!(e.calls("/phone_numbers"), 0);

    assert_eq!(x_cache(&e.get(&path).await), "MISS");
    assert_eq!(
        x_cache(&e.get_as(&path, CLIENT_KEY, &only_if_cached).await),
        "HIT"
    );
    let fresh = e
        .get_as(&path, CLIENT_KEY, &[("cache-control", "no-cache")])
        .await;
    assert_eq!(x_cache(&fresh), "BYPASS");
    assert_eq!(e.calls("/phone_numbers"), 2, "no-cache is a real call");

    e.clock.advance(Duration::from_secs(20));
    let old = e
        .get_as(&path, CLIENT_KEY, &[("cache-control", "max-age=30")])
        .await;
    assert_eq!(x_cache(&old), "HIT");
    let young = e
        .get_as(&path, CLIENT_KEY, &[("cache-control", "max-age=10")])
        .await;
    assert_eq!(x_cache(&young), "MISS");
    assert_eq!(e.calls("/phone_numbers"), 3);
    assert_eq!(header(&e.get(&path).await, "age").unwrap(), "0");
}

// A client configured with allow_no_cache = false is served from the cache despite no-cache.
#[tokio::test]
async fn a_client_denied_no_cache_is_served_from_the_cache() {
    let e = start_cache().await;
    let path = format!("/v19.0/{WABA}");
    assert_eq!(x_cache(&e.get(&path).await), "MISS");
    let r = e
        .get_as(&path, STINGY_KEY, &[("cache-control", "no-cache")])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(e.calls(WABA), 1);
}

// Graph errors and non-200 answers are never stored: each repeat goes upstream again.
#[tokio::test]
async fn errors_and_non_200_answers_are_never_cached() {
    let e = start_cache().await;
    // An object the simulator does not know: a Graph error (400).
    let unknown = "/v19.0/999999999999/phone_numbers";
    for _ in 0..2 {
        let r = e.get(unknown).await;
        assert!(r.status().is_client_error());
        assert_eq!(x_cache(&r), "MISS");
    }
    assert_eq!(e.calls("999999999999/phone_numbers"), 2);
    // A 5xx without an entry.
    let phones = format!("/v19.0/{WABA}/phone_numbers");
    e.sim.sim.set_faults(Faults {
        fail_next: 1,
        fail_status: 500,
        ..Faults::default()
    });
    assert_eq!(e.get(&phones).await.status(), 500);
    assert_eq!(x_cache(&e.get(&phones).await), "MISS");
    assert!(e
        .gw
        .cache()
        .entries()
        .iter()
        .all(|(k, _)| !k.path().contains("999999999999")));
    // A refused caller's GET never reaches the cache step.
    let r = e.get_as(&phones, "wrong-key-000000000", &[]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(x_cache(&r), "BYPASS");
}

// No token, app secret or client key is kept in any entry's key, headers or body.
#[tokio::test]
async fn no_token_or_key_is_stored_in_any_entry() {
    let e = start_cache().await;
    let c = client();
    for p in [
        format!("/v19.0/{WABA}/message_templates?limit=1&access_token={CLIENT_KEY}"),
        format!("/v19.0/{WABA}?fields=id,name,message_templates,phone_numbers"),
        format!("/v19.0/{OTHER_WABA}/phone_numbers?appsecret_proof=abc"),
        format!("/v19.0/{PHONE}"),
    ] {
        let r = c
            .get(format!("{}{p}", e.url))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{p}");
    }
    let entries = e.gw.cache().entries();
    assert!(entries.len() >= 3, "{} entries", entries.len());
    for (k, v) in entries {
        assert_no_secrets("a cache key", k.text());
        for (name, value) in v.headers() {
            assert_no_secrets("a cached header", &format!("{name}: {value:?}"));
        }
        assert_no_secrets("a cached body", &String::from_utf8_lossy(v.body()));
    }
}

// 100,000 distinct URLs through the cache stay within max_bytes; moka evicts the rest.
#[tokio::test]
async fn a_flood_of_distinct_urls_stays_within_max_bytes() {
    let cfg = graphgate::config::Cache {
        max_bytes: 4 * 1024 * 1024,
        ..Default::default()
    };
    let cache = ResponseCache::new(&cfg, 1, 16 << 20, ManualClock::new(0));
    let token = graphgate::auth::Token::new(graphgate::config::Secret::new(SYSTEM_TOKEN));
    let headers = http::HeaderMap::new();
    let body = bytes::Bytes::from(vec![b'x'; 2048]);
    for i in 0..100_000u32 {
        let target = Target::parse(&format!("/v19.0/{i}"), Some("fields=id")).unwrap();
        let plan = cache.plan(&Lookup {
            app: 0,
            method: &http::Method::GET,
            headers: &headers,
            target: &target,
            token_owner: None,
            token: &token,
            link_host: "",
            allow_no_cache: true,
        });
        let body = body.clone();
        let resp = cache
            .serve(plan, || async move {
                Ok(http::Response::builder()
                    .status(200)
                    .header("content-type", "text/plain")
                    .body(axum::body::Body::from(body))
                    .unwrap())
            })
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let (entries, bytes) = cache.usage();
    eprintln!("after 100000 distinct URLs: {entries} entries, {bytes} weighed bytes");
    assert!(bytes <= cfg.max_bytes, "{bytes} > {}", cfg.max_bytes);
    assert!(entries > 1000, "the cache still holds entries ({entries})");
}
