//! Unit tests of config loading: every key's parsing and validation, environment overrides, and
//! that problems are reported together, naming the key and never a secret.

use super::*;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// The token the minimal config reads from `TEST_TOKEN`; no error or dump may ever contain it.
const TOKEN: &str = "EAAtokenSECRET0123456789";
/// The client key the minimal config reads from `TEST_CLIENT_KEY`.
const CLIENT_KEY: &str = "client-key-SECRET-0123456789";

/// One app with one client: the smallest config that loads.
const MINIMAL: &str = r#"
[[app]]
name = "main"
id = "1234567890"
token_env = "TEST_TOKEN"

[[client]]
name = "crm"
key_env = "TEST_CLIENT_KEY"
"#;

fn env_with(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [("TEST_TOKEN", TOKEN), ("TEST_CLIENT_KEY", CLIENT_KEY)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in pairs {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

fn load_in(text: &str, base: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    Config::from_toml(text, "graphgate.toml", base, env)
}

fn load(text: &str) -> Result<Config, ConfigError> {
    load_in(text, Path::new("."), &env_with(&[]))
}

fn load_env(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_in(text, Path::new("."), &env_with(pairs))
}

/// `section` (a `[server]`/`[upstream]` block) followed by the minimal app and client.
fn with(section: &str) -> String {
    format!("{section}\n{MINIMAL}")
}

fn err(r: Result<Config, ConfigError>) -> ConfigError {
    match r {
        Ok(c) => panic!("expected a config error, got {c:?}"),
        Err(e) => e,
    }
}

/// The one problem reported for `key`; fails the test with every problem shown otherwise.
fn problem<'e>(e: &'e ConfigError, key: &str) -> &'e Problem {
    let found: Vec<&Problem> = e.problems.iter().filter(|p| p.key == key).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one problem for `{key}`, got:\n{e}"
    );
    found[0]
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle is in the text")
        + 1
}

// ---------------------------------------------------------------- defaults and parsing

// One app and one client, nothing else: every other setting takes its documented default.
#[test]
fn minimal_config_loads_with_the_documented_defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.server.listen, DEFAULT_LISTEN.parse().unwrap());
    assert!(c.server.public_url.is_none());
    assert_eq!(c.auth, AuthMode::Keys);
    assert_eq!(c.server.max_body, 128 * 1024 * 1024);
    assert_eq!(c.server.max_form_body, 1024 * 1024);
    assert_eq!(c.server.max_rewrite_body, 16 * 1024 * 1024);
    assert_eq!(c.server.max_uri, 8 * 1024);
    assert_eq!(c.server.max_headers, 100);
    assert_eq!(c.server.max_header_bytes, 32 * 1024);
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
    assert!(c.server.tls.is_none());
    assert!(c.server.access_log);
    assert_eq!(c.upstream.url.scheme_str(), Some("https"));
    assert_eq!(c.upstream.url.host(), Some("graph.facebook.com"));
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.upstream.request_timeout, Duration::from_secs(60));
    assert_eq!(c.upstream.pool_idle_timeout, Duration::from_secs(90));
    assert_eq!(c.upstream.pool_max_idle_per_host, 64);

    assert_eq!(c.apps.len(), 1);
    let app = &c.apps[0];
    assert_eq!(app.name, "main");
    assert_eq!(app.id, "1234567890");
    assert_eq!(app.token.expose(), TOKEN);
    assert!(app.app_secret.is_none());
    assert_eq!(app.proof, ProofMode::Timestamped);
    assert!(app.wabas.is_empty());

    assert_eq!(c.clients.len(), 1);
    let client = &c.clients[0];
    assert_eq!(client.name, "crm");
    assert_eq!(
        client.app, 0,
        "a client with one app configured belongs to it"
    );
    assert_eq!(client.key_sha256, key_digest(CLIENT_KEY));
    assert!(client.wabas.is_none() && client.methods.is_none());
    assert_eq!(c.app_by_name("main"), Some(0));
}

// Durations are written the humantime way: 30s, 1h, 500ms.
#[test]
fn durations_parse_in_seconds_hours_and_milliseconds() {
    let c = load(&with(
        r#"
[server]
shutdown_grace = "30s"
[upstream]
connect_timeout = "500ms"
request_timeout = "1h"
pool_idle_timeout = "2m 30s"
"#,
    ))
    .unwrap();
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.upstream.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.upstream.request_timeout, Duration::from_secs(3600));
    assert_eq!(c.upstream.pool_idle_timeout, Duration::from_secs(150));
    assert_eq!(parse_duration(" 5m ").unwrap(), Duration::from_secs(300));
}

// A duration with a made-up unit is refused; the error names the key and its line.
#[test]
fn bad_duration_is_an_error_naming_the_key_and_line() {
    let text = with("[upstream]\nrequest_timeout = \"5 parsecs\"");
    let e = err(load(&text));
    assert_eq!(e.problems.len(), 1, "{e}");
    let p = &e.problems[0];
    assert_eq!(p.key, "upstream.request_timeout");
    assert_eq!(p.line, Some(line_with(&text, "request_timeout")));
    assert!(p.message.contains("not a duration"), "{}", p.message);
}

// A duration written as a bare number (no unit) is refused rather than guessed.
#[test]
fn duration_without_a_unit_is_refused() {
    let e = err(load(&with("[server]\nshutdown_grace = 30")));
    assert!(e.to_string().contains("shutdown_grace"), "{e}");
    assert!(parse_duration("30").is_err());
}

// Sizes take binary units (KiB, MiB, GiB), decimal units (KB, MB, GB) or a plain byte count.
#[test]
fn sizes_parse_with_binary_and_decimal_units_and_plain_integers() {
    let c = load(&with(
        r#"
[server]
max_body = "256MiB"
max_form_body = "1MB"
max_rewrite_body = 1048576
max_uri = "8KiB"
max_header_bytes = "64000B"
"#,
    ))
    .unwrap();
    assert_eq!(c.server.max_body, 256 * 1024 * 1024);
    assert_eq!(c.server.max_form_body, 1_000_000);
    assert_eq!(c.server.max_rewrite_body, 1_048_576);
    assert_eq!(c.server.max_uri, 8 * 1024);
    assert_eq!(c.server.max_header_bytes, 64_000);
    assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
    assert_eq!(parse_size("2 KB").unwrap(), 2_000);
    assert_eq!(parse_size("512").unwrap(), 512);
}

// Unknown units, missing numbers and overflowing sizes are all refused by the size parser.
#[test]
fn bad_sizes_are_refused_by_the_parser() {
    for bad in ["12XB", "MiB", "", "-5MiB", "1.5MiB", "99999999999GiB"] {
        assert!(parse_size(bad).is_err(), "`{bad}` should not parse");
    }
}

// A size with an unknown unit in the file is refused; the error names the key and its line.
#[test]
fn bad_size_is_an_error_naming_the_key_and_line() {
    let text = with("[server]\nmax_body = \"12XB\"");
    let e = err(load(&text));
    assert_eq!(e.problems.len(), 1, "{e}");
    let p = &e.problems[0];
    assert_eq!(p.key, "server.max_body");
    assert_eq!(p.line, Some(line_with(&text, "max_body")));
    assert!(p.message.contains("unknown size unit"), "{}", p.message);
}

// A negative integer size is refused with a message saying so.
#[test]
fn negative_size_is_refused() {
    let e = err(load(&with("[server]\nmax_uri = -1")));
    assert!(e.to_string().contains("max_uri"), "{e}");
}

// ---------------------------------------------------------------- structure errors

// A misspelt key is refused (deny_unknown_fields), naming the key and the line it is on.
#[test]
fn unknown_key_is_an_error_naming_the_key_and_line() {
    let text = with("[server]\nlisten = \"127.0.0.1:9000\"\nmax_bdy = \"1MiB\"");
    let e = err(load(&text));
    assert_eq!(e.problems.len(), 1, "{e}");
    let p = &e.problems[0];
    assert_eq!(p.file, "graphgate.toml");
    assert_eq!(p.key, "server.max_bdy");
    assert_eq!(p.line, Some(line_with(&text, "max_bdy")));
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("graphgate.toml:{}: ", line_with(&text, "max_bdy"))),
        "{shown}"
    );
}

// An unknown key deep inside [[app.waba]] is found too, with its line.
#[test]
fn unknown_key_in_a_waba_table_names_the_key_and_line() {
    let text = MINIMAL.replace(
        "[[client]]",
        "[[app.waba]]\nid = \"1\"\nphone_number = [\"2\"]\n\n[[client]]",
    );
    let e = err(load(&text));
    assert_eq!(e.problems.len(), 1, "{e}");
    let p = &e.problems[0];
    assert_eq!(p.key, "app.waba.phone_number");
    assert_eq!(p.line, Some(line_with(&text, "phone_number")));
}

// A TOML syntax error (an unterminated table header) names its line.
#[test]
fn toml_syntax_error_names_the_line() {
    let text = format!("{MINIMAL}\n[server\nlisten = \"127.0.0.1:1\"\n");
    let e = err(load(&text));
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].line, Some(line_with(&text, "[server")));
    assert_eq!(e.problems[0].file, "graphgate.toml");
}

// A value of the wrong type is refused naming the key, e.g. a string where a number belongs.
#[test]
fn wrong_type_is_an_error_naming_the_key_and_line() {
    let text = with("[server]\naccess_log = \"yes\"");
    let e = err(load(&text));
    let p = &e.problems[0];
    assert_eq!(p.key, "server.access_log", "{e}");
    assert_eq!(p.line, Some(line_with(&text, "access_log")));
}

// ---------------------------------------------------------------- secrets never leak

// A token pasted into [[app]] is refused and the error does not repeat it.
#[test]
fn inline_app_token_is_refused_without_echoing_it() {
    let text = MINIMAL.replace(
        "token_env = \"TEST_TOKEN\"",
        "token = \"EAAinlineAppToken42\"",
    );
    let e = err(load(&text));
    let p = problem(&e, "app[0].token");
    assert!(p.message.contains("token_env"), "{}", p.message);
    assert!(!e.to_string().contains("EAAinlineAppToken42"), "{e}");
    assert!(!format!("{e:?}").contains("EAAinlineAppToken42"));
}

// A token pasted into [[app.waba]] is refused and the error does not repeat it.
#[test]
fn inline_waba_token_is_refused_without_echoing_it() {
    let text = MINIMAL.replace(
        "[[client]]",
        "[[app.waba]]\nid = \"555\"\ntoken = \"EAAinlineWabaToken42\"\n\n[[client]]",
    );
    let e = err(load(&text));
    problem(&e, "app[0].waba[0].token");
    assert!(!e.to_string().contains("EAAinlineWabaToken42"), "{e}");
    assert!(!format!("{e:?}").contains("EAAinlineWabaToken42"));
}

// An app secret pasted into [[app]] is refused and the error does not repeat it.
#[test]
fn inline_app_secret_is_refused_without_echoing_it() {
    let text = MINIMAL.replace(
        "token_env = \"TEST_TOKEN\"",
        "token_env = \"TEST_TOKEN\"\napp_secret = \"0123abcdAppSecret\"",
    );
    let e = err(load(&text));
    let p = problem(&e, "app[0].app_secret");
    assert!(p.message.contains("app_secret_env"), "{}", p.message);
    assert!(!e.to_string().contains("0123abcdAppSecret"), "{e}");
    assert!(!format!("{e:?}").contains("0123abcdAppSecret"));
}

// A client key pasted into [[client]] is refused and the error does not repeat it.
#[test]
fn inline_client_key_is_refused_without_echoing_it() {
    let text = MINIMAL.replace(
        "key_env = \"TEST_CLIENT_KEY\"",
        "key = \"inlineClientKey-0123456789\"",
    );
    let e = err(load(&text));
    let p = problem(&e, "client[0].key");
    assert!(p.message.contains("key_sha256"), "{}", p.message);
    assert!(!e.to_string().contains("inlineClientKey"), "{e}");
    assert!(!format!("{e:?}").contains("inlineClientKey"));
}

// A secret typed into the wrong field (a string where a number belongs) is not quoted back.
#[test]
fn wrong_type_value_holding_a_secret_is_not_echoed() {
    let text = with("[server]\nmax_headers = \"EAAsecretvalue123\"");
    let e = err(load(&text));
    assert_eq!(e.problems.len(), 1, "{e}");
    assert!(e.to_string().contains("max_headers"), "{e}");
    assert!(!e.to_string().contains("EAAsecretvalue123"), "{e}");
    assert!(!format!("{e:?}").contains("EAAsecretvalue123"));
}

// A secret in a field that takes a list or a table is not quoted back either.
#[test]
fn secret_in_a_list_field_is_not_echoed() {
    let text = MINIMAL.replace(
        "key_env = \"TEST_CLIENT_KEY\"",
        "key_env = \"TEST_CLIENT_KEY\"\nmethods = \"EAAsecretvalue123\"",
    );
    let e = err(load(&text));
    assert!(!e.to_string().contains("EAAsecretvalue123"), "{e}");
    assert!(!format!("{e:?}").contains("EAAsecretvalue123"));
}

// A secret holding a quote character (shown escaped by serde) is still blanked out whole.
#[test]
fn secret_with_an_embedded_quote_is_not_echoed() {
    let text = with("[server]\nmax_headers = 'ab\"EAAsecretvalue123'");
    let e = err(load(&text));
    assert!(!e.to_string().contains("EAAsecretvalue123"), "{e}");
    assert!(e.to_string().contains("expected i64"), "{e}");
}

// An unquoted token is a syntax error; the parser's message does not repeat it.
#[test]
fn syntax_error_on_a_secret_line_does_not_echo_it() {
    let text = MINIMAL.replace("token_env = \"TEST_TOKEN\"", "token = EAAbareToken42");
    let e = err(load(&text));
    assert_eq!(e.problems[0].line, Some(line_with(&text, "EAAbareToken42")));
    // The parser's own quote character survives scrubbing, so the hint is complete.
    assert!(e.problems[0].message.contains("expected `\"`"), "{e}");
    assert!(!e.to_string().contains("EAAbareToken42"), "{e}");
    assert!(!format!("{e:?}").contains("EAAbareToken42"));
}

// `{:?}` of a loaded config shows neither tokens, app secrets, nor client keys or their digests.
#[test]
fn debug_of_a_loaded_config_never_shows_secrets() {
    let text = r#"
[[app]]
name = "main"
id = "1"
token_env = "TEST_TOKEN"
app_secret_env = "TEST_APP_SECRET"

[[app.waba]]
id = "2"
token_env = "TEST_WABA_TOKEN"

[[client]]
name = "crm"
key_env = "TEST_CLIENT_KEY"
"#;
    let c = load_env(
        text,
        &[
            ("TEST_APP_SECRET", "appSECRETvalue0123"),
            ("TEST_WABA_TOKEN", "EAAwabaTOKENvalue0123"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.apps[0].app_secret.as_ref().map(Secret::expose),
        Some("appSECRETvalue0123")
    );
    assert_eq!(
        c.apps[0].wabas[0].token.as_ref().map(Secret::expose),
        Some("EAAwabaTOKENvalue0123")
    );
    for dump in [format!("{c:?}"), format!("{c:#?}")] {
        for secret in [
            TOKEN,
            "appSECRETvalue0123",
            "EAAwabaTOKENvalue0123",
            CLIENT_KEY,
        ] {
            assert!(!dump.contains(secret), "{secret} leaked into {dump}");
        }
        assert!(!dump.contains(&hex::encode(key_digest(CLIENT_KEY))));
        assert!(dump.contains("<redacted>"));
    }
}

// ---------------------------------------------------------------- secret sources

// A token env var that is not set is reported naming the variable.
#[test]
fn missing_token_env_var_is_named_in_the_error() {
    let mut env = env_with(&[]);
    env.remove("TEST_TOKEN");
    let e = err(load_in(MINIMAL, Path::new("."), &env));
    let p = problem(&e, "app[0].token_env");
    assert!(p.message.contains("TEST_TOKEN"), "{}", p.message);
    assert!(p.message.contains("not set"), "{}", p.message);
}

// A token env var set to whitespace counts as empty and is refused.
#[test]
fn empty_token_env_var_is_refused() {
    let e = err(load_env(MINIMAL, &[("TEST_TOKEN", "  ")]));
    let p = problem(&e, "app[0].token_env");
    assert!(p.message.contains("TEST_TOKEN is empty"), "{}", p.message);
}

// An app with neither token_env nor token_file is refused.
#[test]
fn app_without_a_token_is_refused() {
    let e = err(load(&MINIMAL.replace("token_env = \"TEST_TOKEN\"", "")));
    let p = problem(&e, "app[0].token_env");
    assert!(p.message.contains("missing"), "{}", p.message);
}

// A token file relative to the config's directory is read, and its trailing newline dropped.
#[test]
fn token_file_is_read_relative_to_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "EAAfileTOKEN0123\n").unwrap();
    std::fs::write(dir.path().join("secret"), "fileAPPsecret\n").unwrap();
    let text = MINIMAL.replace(
        "token_env = \"TEST_TOKEN\"",
        "token_file = \"token\"\napp_secret_file = \"secret\"\nappsecret_proof = \"classic\"",
    );
    let c = load_in(&text, dir.path(), &env_with(&[])).unwrap();
    assert_eq!(c.apps[0].token.expose(), "EAAfileTOKEN0123");
    assert_eq!(
        c.apps[0].app_secret.as_ref().map(Secret::expose),
        Some("fileAPPsecret")
    );
    assert_eq!(c.apps[0].proof, ProofMode::Classic);
}

// An empty token file (a common mount mistake) is refused naming the key and the path.
#[test]
fn empty_token_file_is_refused() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(b"\n").unwrap();
    let path = f.path().display().to_string();
    let text = MINIMAL.replace(
        "token_env = \"TEST_TOKEN\"",
        &format!("token_file = {}", toml::Value::String(path.clone())),
    );
    let e = err(load(&text));
    let p = problem(&e, "app[0].token_file");
    assert!(p.message.contains(&path), "{}", p.message);
    assert!(p.message.contains("empty"), "{}", p.message);
}

// A token file that does not exist is refused naming the path.
#[test]
fn missing_token_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = MINIMAL.replace("token_env = \"TEST_TOKEN\"", "token_file = \"nope\"");
    let e = err(load_in(&text, dir.path(), &env_with(&[])));
    let p = problem(&e, "app[0].token_file");
    assert!(p.message.contains("cannot read"), "{}", p.message);
}

// token_env and token_file together are ambiguous and refused.
#[test]
fn token_env_and_token_file_together_are_refused() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let text = MINIMAL.replace(
        "token_env = \"TEST_TOKEN\"",
        &format!(
            "token_env = \"TEST_TOKEN\"\ntoken_file = {}",
            toml::Value::String(f.path().display().to_string())
        ),
    );
    let e = err(load(&text));
    let p = problem(&e, "app[0].token_env");
    assert!(p.message.contains("not both"), "{}", p.message);
}

// An unknown appsecret_proof mode is refused.
#[test]
fn unknown_appsecret_proof_mode_is_refused() {
    let text = MINIMAL.replace(
        "token_env = \"TEST_TOKEN\"",
        "token_env = \"TEST_TOKEN\"\nappsecret_proof = \"sometimes\"",
    );
    problem(&err(load(&text)), "app[0].appsecret_proof");
}

// ---------------------------------------------------------------- client keys

// key_sha256 holds the hex digest of the key; it is decoded to the same bytes as key_digest.
#[test]
fn key_sha256_is_the_hex_digest_of_the_key() {
    let hex = hex::encode(key_digest("some-long-client-key"));
    let text = MINIMAL.replace(
        "key_env = \"TEST_CLIENT_KEY\"",
        &format!("key_sha256 = \"{hex}\""),
    );
    let c = load(&text).unwrap();
    assert_eq!(c.clients[0].key_sha256, key_digest("some-long-client-key"));
    // `printf %s abc | sha256sum`
    assert_eq!(
        hex::encode(key_digest("abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

// key_sha256 that is short, long or not hex is refused.
#[test]
fn key_sha256_that_is_not_64_hex_digits_is_refused() {
    let good = hex::encode(key_digest("x"));
    for bad in [
        &good[..62],
        &format!("{good}00"),
        &good.replacen('a', "g", 1),
    ] {
        let text = MINIMAL.replace(
            "key_env = \"TEST_CLIENT_KEY\"",
            &format!("key_sha256 = \"{bad}\""),
        );
        let e = err(load(&text));
        let p = problem(&e, "client[0].key_sha256");
        assert!(p.message.contains("64 hex digits"), "{}", p.message);
    }
}

// A key from key_env shorter than 16 characters is too guessable and refused; the key is not shown.
#[test]
fn key_env_shorter_than_16_characters_is_refused() {
    let e = err(load_env(MINIMAL, &[("TEST_CLIENT_KEY", "short-key-15chr")]));
    let p = problem(&e, "client[0].key_env");
    assert!(p.message.contains("shorter than 16"), "{}", p.message);
    assert!(!e.to_string().contains("short-key-15chr"), "{e}");
}

// A key_env naming an unset variable is refused naming the variable.
#[test]
fn key_env_that_is_not_set_is_refused() {
    let mut env = env_with(&[]);
    env.remove("TEST_CLIENT_KEY");
    let e = err(load_in(MINIMAL, Path::new("."), &env));
    let p = problem(&e, "client[0].key_env");
    assert!(p.message.contains("TEST_CLIENT_KEY"), "{}", p.message);
}

// key_sha256 and key_env together are refused; so is a client with neither.
#[test]
fn client_needs_exactly_one_of_key_sha256_and_key_env() {
    let hex = hex::encode(key_digest(CLIENT_KEY));
    let both = MINIMAL.replace(
        "key_env = \"TEST_CLIENT_KEY\"",
        &format!("key_env = \"TEST_CLIENT_KEY\"\nkey_sha256 = \"{hex}\""),
    );
    let p = problem(&err(load(&both)), "client[0].key_sha256").clone();
    assert!(p.message.contains("not both"), "{}", p.message);

    let neither = MINIMAL.replace("key_env = \"TEST_CLIENT_KEY\"", "");
    let p = problem(&err(load(&neither)), "client[0].key_sha256").clone();
    assert!(p.message.contains("missing"), "{}", p.message);
}

// A client's method and WABA allowlists are parsed; an unknown method is refused.
#[test]
fn client_methods_and_wabas_are_parsed_and_checked() {
    let text = MINIMAL.replace(
        "key_env = \"TEST_CLIENT_KEY\"",
        "key_env = \"TEST_CLIENT_KEY\"\nmethods = [\"get\", \"POST\"]\nwabas = [\"10\", 20]",
    );
    let c = load(&text).unwrap();
    let methods = c.clients[0].methods.as_ref().unwrap();
    assert!(methods.contains(&Method::GET) && methods.contains(&Method::POST));
    assert_eq!(methods.len(), 2);
    let wabas = c.clients[0].wabas.as_ref().unwrap();
    assert!(wabas.contains("10") && wabas.contains("20"));

    let bad = MINIMAL.replace(
        "key_env = \"TEST_CLIENT_KEY\"",
        "key_env = \"TEST_CLIENT_KEY\"\nmethods = [\"PATCH\"]\nwabas = [\"abc\"]",
    );
    let e = err(load(&bad));
    assert!(problem(&e, "client[0].methods").message.contains("PATCH"));
    problem(&e, "client[0].wabas");
}

// ---------------------------------------------------------------- apps, WABAs and clients

// A client naming an app that does not exist is refused naming the app.
#[test]
fn client_naming_an_unknown_app_is_refused() {
    let text = MINIMAL.replace(
        "key_env = \"TEST_CLIENT_KEY\"",
        "key_env = \"TEST_CLIENT_KEY\"\napp = \"mian\"",
    );
    let e = err(load(&text));
    assert!(problem(&e, "client[0].app").message.contains("mian"));
}

/// Two apps, `main` and `other`, and one client whose `app` line is `client_app`.
fn two_apps(client_app: &str) -> String {
    format!(
        r#"
[[app]]
name = "main"
id = "1"
token_env = "TEST_TOKEN"

[[app]]
name = "other"
id = "2"
token_env = "TEST_TOKEN"

[[client]]
name = "crm"
key_env = "TEST_CLIENT_KEY"
{client_app}
"#
    )
}

// With two apps a client must say which one it belongs to; when it does, the index is right.
#[test]
fn two_apps_need_each_client_to_name_its_app() {
    let e = err(load(&two_apps("")));
    assert!(problem(&e, "client[0].app").message.contains("missing"));

    let c = load(&two_apps("app = \"other\"")).unwrap();
    assert_eq!(c.clients[0].app, 1);
    assert_eq!(c.apps[c.clients[0].app].name, "other");
}

// Two apps with the same name are refused, since clients pick apps by name.
#[test]
fn duplicate_app_names_are_refused() {
    let text = two_apps("app = \"main\"").replace("name = \"other\"", "name = \"main\"");
    let e = err(load(&text));
    assert!(problem(&e, "app[1].name").message.contains("used twice"));
}

// No [[app]] at all is refused.
#[test]
fn config_without_apps_is_refused() {
    let e = err(load("[server]\nauth = \"none\"\n"));
    problem(&e, "app");
}

// An app id must be numeric; a name or an empty string is refused.
#[test]
fn non_numeric_app_id_is_refused() {
    let e = err(load(&MINIMAL.replace("\"1234567890\"", "\"my-app\"")));
    problem(&e, "app[0].id");
}

// The same WABA listed twice in one app is refused.
#[test]
fn duplicate_waba_ids_in_an_app_are_refused() {
    let text = MINIMAL.replace(
        "[[client]]",
        "[[app.waba]]\nid = \"555\"\n[[app.waba]]\nid = 555\n\n[[client]]",
    );
    let e = err(load(&text));
    assert!(problem(&e, "app[0].waba[1].id")
        .message
        .contains("listed twice"));
}

/// The minimal config with one WABA whose `active` line is `active`.
fn waba_active(active: &str) -> Result<Config, ConfigError> {
    load(&MINIMAL.replace(
        "[[client]]",
        &format!("[[app.waba]]\nid = \"555\"\n{active}\n\n[[client]]"),
    ))
}

// `active` takes true, false or "auto", and defaults to auto.
#[test]
fn waba_active_accepts_true_false_and_auto() {
    let active = |line: &str| waba_active(line).unwrap().apps[0].wabas[0].active;
    assert_eq!(active("active = true"), Active::Yes);
    assert_eq!(active("active = false"), Active::No);
    assert_eq!(active("active = \"auto\""), Active::Auto);
    assert_eq!(active(""), Active::Auto);
}

// Any other `active` word (even "true" in quotes) is refused naming the key.
#[test]
fn waba_active_other_values_are_refused() {
    for line in ["active = \"yes\"", "active = \"true\""] {
        let e = err(waba_active(line));
        problem(&e, "app[0].waba[0].active");
    }
    let e = err(waba_active("active = 1"));
    assert_eq!(e.problems.len(), 1, "{e}");
}

// Phone numbers must be numeric ids; a phone number in +E.164 form is refused.
#[test]
fn waba_phone_numbers_must_be_graph_ids() {
    let text = MINIMAL.replace(
        "[[client]]",
        "[[app.waba]]\nid = \"555\"\nphone_numbers = [\"+15551234567\"]\n\n[[client]]",
    );
    let e = err(load(&text));
    problem(&e, "app[0].waba[0].phone_numbers");
}

// Graph ids written as TOML integers (app, WABA, phone number, client allowlist) are accepted.
#[test]
fn ids_written_as_toml_integers_are_accepted() {
    let text = r#"
[[app]]
name = "main"
id = 1234567890
token_env = "TEST_TOKEN"

[[app.waba]]
id = 102290129340398
phone_numbers = [106540352242922, "106540352242923"]

[[client]]
name = "crm"
key_env = "TEST_CLIENT_KEY"
wabas = [102290129340398]
"#;
    let c = load(text).unwrap();
    assert_eq!(c.apps[0].id, "1234567890");
    assert_eq!(c.apps[0].wabas[0].id, "102290129340398");
    assert_eq!(
        c.apps[0].wabas[0].phone_numbers,
        ["106540352242922", "106540352242923"]
    );
    assert!(c.clients[0]
        .wabas
        .as_ref()
        .unwrap()
        .contains("102290129340398"));
}

// ---------------------------------------------------------------- server and upstream checks

// Zero sizes and zero timeouts would refuse every request; each is refused naming its key.
#[test]
fn zero_sizes_and_timeouts_are_refused() {
    let text = with(
        r#"
[server]
max_body = 0
max_form_body = "0KiB"
max_rewrite_body = "0B"
max_uri = 0
max_headers = 0
max_header_bytes = 0
[upstream]
connect_timeout = "0s"
request_timeout = "0ms"
pool_idle_timeout = "0s"
"#,
    );
    let e = err(load(&text));
    for key in [
        "server.max_body",
        "server.max_form_body",
        "server.max_rewrite_body",
        "server.max_uri",
        "server.max_headers",
        "server.max_header_bytes",
        "upstream.connect_timeout",
        "upstream.request_timeout",
        "upstream.pool_idle_timeout",
    ] {
        problem(&e, key);
    }
    assert_eq!(e.problems.len(), 9, "{e}");
}

// A zero shutdown grace is allowed: it means "stop at once".
#[test]
fn zero_shutdown_grace_is_allowed() {
    let c = load(&with("[server]\nshutdown_grace = \"0s\"")).unwrap();
    assert_eq!(c.server.shutdown_grace, Duration::ZERO);
}

// pool_max_idle_per_host may be 0 (no pooling) but not negative.
#[test]
fn pool_max_idle_per_host_may_be_zero_but_not_negative() {
    let c = load(&with("[upstream]\npool_max_idle_per_host = 0")).unwrap();
    assert_eq!(c.upstream.pool_max_idle_per_host, 0);
    let e = err(load(&with("[upstream]\npool_max_idle_per_host = -1")));
    problem(&e, "upstream.pool_max_idle_per_host");
}

// max_headers above 10000 is refused.
#[test]
fn max_headers_above_the_limit_is_refused() {
    problem(
        &err(load(&with("[server]\nmax_headers = 10001"))),
        "server.max_headers",
    );
}

// A listen value that is not ip:port (a bare hostname) is refused.
#[test]
fn listen_must_be_an_ip_and_port() {
    problem(
        &err(load(&with("[server]\nlisten = \"localhost:8080\""))),
        "server.listen",
    );
    let c = load(&with("[server]\nlisten = \"[::]:9000\"")).unwrap();
    assert_eq!(c.server.listen.port(), 9000);
}

// TLS needs both the certificate and the key; relative paths resolve against the config's dir.
#[test]
fn tls_cert_and_key_must_be_set_together() {
    let e = err(load(&with("[server]\ntls_cert_file = \"cert.pem\"")));
    problem(&e, "server.tls_cert_file");

    let text = with("[server]\ntls_cert_file = \"cert.pem\"\ntls_key_file = \"/abs/key.pem\"");
    let c = load_in(&text, Path::new("/etc/graphgate"), &env_with(&[])).unwrap();
    let tls = c.server.tls.unwrap();
    assert_eq!(tls.cert, Path::new("/etc/graphgate/cert.pem"));
    assert_eq!(tls.key, Path::new("/abs/key.pem"));
}

// server.auth = "none" with two apps cannot know which app a caller means, so it is refused.
#[test]
fn auth_none_with_two_apps_is_refused() {
    let text = format!("[server]\nauth = \"none\"\n{}", two_apps("app = \"main\""));
    let e = err(load(&text));
    assert_eq!(e.problems.len(), 1, "{e}");
    problem(&e, "server.auth");
}

// server.auth = "none" with one app and no clients is the trusted-network setup and loads.
#[test]
fn auth_none_with_one_app_and_no_clients_is_accepted() {
    let text =
        "[server]\nauth = \"none\"\n".to_string() + &MINIMAL[..MINIMAL.find("[[client]]").unwrap()];
    let c = load(&text).unwrap();
    assert_eq!(c.auth, AuthMode::None);
    assert!(c.clients.is_empty());
}

// An unknown auth mode is refused.
#[test]
fn unknown_auth_mode_is_refused() {
    problem(
        &err(load(&with("[server]\nauth = \"basic\""))),
        "server.auth",
    );
}

// With auth by keys (the default) and no [[client]], nobody could call; that is refused.
#[test]
fn auth_keys_without_clients_is_refused() {
    let text = &MINIMAL[..MINIMAL.find("[[client]]").unwrap()];
    let e = err(load(text));
    assert_eq!(e.problems.len(), 1, "{e}");
    problem(&e, "client");
}

// public_url without a scheme is refused; a trailing slash is dropped.
#[test]
fn public_url_without_a_scheme_is_refused() {
    let e = err(load(&with("[server]\npublic_url = \"gate.example.com\"")));
    assert!(problem(&e, "server.public_url").message.contains("http://"));

    let c = load(&with(
        "[server]\npublic_url = \"https://gate.example.com/graph/\"",
    ))
    .unwrap();
    let u = c.server.public_url.unwrap();
    assert_eq!(u.host(), Some("gate.example.com"));
    assert_eq!(u.path(), "/graph");
}

// public_url with a query string is refused; an empty public_url means "not set".
#[test]
fn public_url_with_a_query_is_refused() {
    let e = err(load(&with(
        "[server]\npublic_url = \"https://gate.example.com/?x=1\"",
    )));
    assert!(problem(&e, "server.public_url").message.contains("query"));
    let c = load(&with("[server]\npublic_url = \"\"")).unwrap();
    assert!(c.server.public_url.is_none());
}

// upstream.url must be http(s) with a host and no query.
#[test]
fn upstream_url_without_a_scheme_or_with_a_query_is_refused() {
    for bad in [
        "graph.facebook.com",
        "ftp://graph.facebook.com",
        "https://graph.facebook.com/?v=1",
    ] {
        let e = err(load(&with(&format!("[upstream]\nurl = \"{bad}\""))));
        problem(&e, "upstream.url");
    }
    let c = load(&with("[upstream]\nurl = \"http://127.0.0.1:9999/\"")).unwrap();
    assert_eq!(c.upstream.url.port_u16(), Some(9999));
}

// Credentials in upstream.url are refused (they would go out in `Host`), and not echoed.
#[test]
fn upstream_url_with_credentials_is_refused_without_echoing_them() {
    let e = err(load(&with(
        "[upstream]\nurl = \"https://user:pa55word@graph.facebook.com:8443\"",
    )));
    problem(&e, "upstream.url");
    assert!(!e.to_string().contains("pa55word"), "{e}");
}

// Every problem in a file is reported in one go, each naming its key.
#[test]
fn several_problems_are_reported_at_once() {
    let text = r#"
[server]
listen = "nowhere"
max_body = 0

[upstream]
url = "graph.facebook.com"

[[app]]
name = "main"
id = "abc"
token_env = "UNSET_TOKEN"

[[client]]
name = "crm"
key_sha256 = "beef"
"#;
    let e = err(load(text));
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.listen",
            "server.max_body",
            "upstream.url",
            "app[0].id",
            "app[0].token_env",
            "client[0].key_sha256",
        ],
        "{e}"
    );
    assert_eq!(e.to_string().lines().count(), 6, "one line per problem");
    assert!(e.problems.iter().all(|p| p.file == "graphgate.toml"));
}

// An [[app]] with a bad id is reported once: its client still finds it by name and it still counts.
#[test]
fn a_bad_app_causes_no_follow_on_problems() {
    let text = MINIMAL.replace("\"1234567890\"", "\"not-an-id\"").replace(
        "key_env = \"TEST_CLIENT_KEY\"",
        "key_env = \"TEST_CLIENT_KEY\"\napp = \"main\"",
    );
    let e = err(load(&text));
    assert_eq!(e.problems.len(), 1, "{e}");
    problem(&e, "app[0].id");
}

// A [[client]] with a bad key is reported once, not also as "at least one [[client]] is required".
#[test]
fn a_bad_client_causes_no_follow_on_problems() {
    let text = MINIMAL.replace("key_env = \"TEST_CLIENT_KEY\"", "key_sha256 = \"beef\"");
    let e = err(load(&text));
    assert_eq!(e.problems.len(), 1, "{e}");
    problem(&e, "client[0].key_sha256");
}

// A duplicate app name is reported at its index in the file even when an earlier app is invalid.
#[test]
fn duplicate_app_name_index_counts_invalid_apps() {
    let text = format!(
        "[[app]]\nname = \"broken\"\nid = \"x\"\ntoken_env = \"TEST_TOKEN\"\n{}",
        two_apps("app = \"main\"").replace("name = \"other\"", "name = \"main\"")
    );
    let e = err(load(&text));
    assert_eq!(e.problems.len(), 2, "{e}");
    problem(&e, "app[0].id");
    problem(&e, "app[2].name");
}

// ---------------------------------------------------------------- environment overrides

// GRAPHGATE_SERVER__LISTEN replaces server.listen.
#[test]
fn env_override_sets_server_listen() {
    let c = load_env(
        &with("[server]\nlisten = \"127.0.0.1:8080\""),
        &[("GRAPHGATE_SERVER__LISTEN", "0.0.0.0:9090")],
    )
    .unwrap();
    assert_eq!(c.server.listen, "0.0.0.0:9090".parse().unwrap());
}

// GRAPHGATE_UPSTREAM__REQUEST_TIMEOUT=2s sets a key the file does not mention.
#[test]
fn env_override_sets_upstream_request_timeout() {
    let c = load_env(MINIMAL, &[("GRAPHGATE_UPSTREAM__REQUEST_TIMEOUT", "2s")]).unwrap();
    assert_eq!(c.upstream.request_timeout, Duration::from_secs(2));
}

// GRAPHGATE_APP__0__ID=123 sets the first app's id, which stays the string "123".
#[test]
fn env_override_of_an_app_id_keeps_it_a_string() {
    let c = load_env(MINIMAL, &[("GRAPHGATE_APP__0__ID", "123")]).unwrap();
    assert_eq!(c.apps[0].id, "123");

    let no_id = MINIMAL.replace("id = \"1234567890\"", "");
    let c = load_env(&no_id, &[("GRAPHGATE_APP__0__ID", "123")]).unwrap();
    assert_eq!(c.apps[0].id, "123");
}

// Numbers and booleans in overrides are read as TOML values, e.g. access_log and max_headers.
#[test]
fn env_overrides_read_numbers_and_booleans() {
    let c = load_env(
        MINIMAL,
        &[
            ("GRAPHGATE_SERVER__ACCESS_LOG", "false"),
            ("GRAPHGATE_SERVER__MAX_HEADERS", "50"),
            ("GRAPHGATE_SERVER__MAX_BODY", "1MiB"),
        ],
    )
    .unwrap();
    assert!(!c.server.access_log);
    assert_eq!(c.server.max_headers, 50);
    assert_eq!(c.server.max_body, 1 << 20);
}

// An override with a value of the wrong type is reported naming the variable, without its value.
#[test]
fn env_override_that_breaks_a_type_names_the_variable() {
    let e = err(load_env(
        MINIMAL,
        &[("GRAPHGATE_SERVER__MAX_HEADERS", "EAAsecretvalue123")],
    ));
    assert_eq!(e.problems.len(), 1, "{e}");
    let shown = e.to_string();
    assert!(shown.contains("GRAPHGATE_SERVER__MAX_HEADERS"), "{shown}");
    assert!(!shown.contains("EAAsecretvalue123"), "{shown}");
}

// An override naming a key that does not exist is refused like a misspelt key in the file.
#[test]
fn env_override_of_an_unknown_key_is_refused() {
    let e = err(load_env(
        MINIMAL,
        &[("GRAPHGATE_SERVER__LISTN", "0.0.0.0:1")],
    ));
    let shown = e.to_string();
    assert!(shown.contains("listn"), "{shown}");
    assert!(shown.contains("GRAPHGATE_SERVER__LISTN"), "{shown}");
}

// An override index that skips array entries (APP__5 with one app) is refused naming the variable.
#[test]
fn env_override_index_past_the_end_is_refused() {
    let e = err(load_env(MINIMAL, &[("GRAPHGATE_APP__5__ID", "1")]));
    assert!(e.to_string().contains("GRAPHGATE_APP__5__ID"), "{e}");
}

// Variables without a double underscore (like the token's own env var) are not overrides.
#[test]
fn env_vars_without_a_double_underscore_are_not_overrides() {
    let c = load_env(MINIMAL, &[("GRAPHGATE_TOKEN_MAIN", "EAAx")]).unwrap();
    assert_eq!(c.apps[0].name, "main");
}

// ---------------------------------------------------------------- the shipped example

// config/graphgate.toml, the documented example, loads with the env vars it names.
#[test]
fn example_config_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/graphgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let env = env_with(&[
        ("GRAPHGATE_TOKEN_MAIN", "EAAexampleToken0123"),
        ("GRAPHGATE_APP_SECRET_MAIN", "exampleAppSecret"),
    ]);
    let c = Config::from_toml(&text, "config/graphgate.toml", path.parent().unwrap(), &env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.apps.len(), 1);
    let app = &c.apps[0];
    assert_eq!(app.token.expose(), "EAAexampleToken0123");
    assert_eq!(app.wabas[0].id, "102290129340398");
    assert_eq!(app.wabas[0].phone_numbers, ["106540352242922"]);
    assert!(!c.clients.is_empty());
}

// ---------------------------------------------------------------- [cache]

// Without a [cache] section the cache is on with the documented defaults; clients may send no-cache.
#[test]
fn cache_defaults_apply_without_a_section() {
    let c = load(MINIMAL).unwrap();
    assert!(c.cache.enabled);
    assert_eq!(c.cache.default_ttl, DEFAULT_CACHE_TTL);
    assert_eq!(c.cache.stale_ttl, DEFAULT_CACHE_STALE_TTL);
    assert_eq!(c.cache.max_bytes, DEFAULT_CACHE_MAX_BYTES);
    assert!(c.cache.rules.is_empty());
    assert!(c.clients[0].allow_no_cache);
}

// Rules keep their order, take the default ttl when they give none, and allow stale by default.
#[test]
fn cache_rules_load_in_order_with_their_defaults() {
    let c = load(&with(
        r#"
[cache]
default_ttl = "30s"
stale_ttl = "2h"
max_bytes = "64MiB"

[[cache.rule]]
path = "/{waba}/message_templates"
ttl = "5m"

[[cache.rule]]
path = "/{id}"
fields = ["message_templates"]
stale = false

[[cache.rule]]
path = "/{waba}/phone_numbers"
ttl = "0s"
"#,
    ))
    .unwrap();
    let r = &c.cache.rules;
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].ttl, Duration::from_secs(300));
    assert!(r[0].stale && r[0].fields.is_empty());
    assert_eq!(r[1].ttl, Duration::from_secs(30));
    assert_eq!(r[1].fields, vec!["message_templates".to_string()]);
    assert!(!r[1].stale);
    assert!(r[2].ttl.is_zero());
    assert_eq!(c.cache.stale_ttl, Duration::from_secs(7200));
    assert_eq!(c.cache.max_bytes, 64 << 20);
}

// Bad rules and sizes are reported together, each naming its key.
#[test]
fn bad_cache_settings_are_reported_by_key() {
    let e = err(load(&with(
        r#"
[cache]
max_bytes = 0

[[cache.rule]]
path = "/v19.0/{waba}"

[[cache.rule]]
ttl = "1s"

[[cache.rule]]
path = "/{id}"
fields = ["a,b"]
"#,
    )));
    assert!(problem(&e, "cache.max_bytes")
        .message
        .contains("greater than zero"));
    assert!(problem(&e, "cache.rule[0].path")
        .message
        .contains("version"));
    assert!(problem(&e, "cache.rule[1].path")
        .message
        .contains("missing"));
    assert!(problem(&e, "cache.rule[2].fields")
        .message
        .contains("one field"));
}

// allow_no_cache is read per client; unknown keys under [cache] are errors.
#[test]
fn allow_no_cache_is_per_client_and_cache_keys_are_checked() {
    let c = load(&format!("{MINIMAL}allow_no_cache = false\n")).unwrap();
    assert!(!c.clients[0].allow_no_cache);
    let e = err(load(&with("[cache]\nttl = \"1s\"\n")));
    assert!(e.to_string().contains("ttl"), "{e}");
}

// A Redis URL that starts right but cannot be parsed fails the check (serve would otherwise run
// without sharing), and the message never echoes it: it carries a password.
#[test]
fn an_unparsable_redis_url_is_refused_without_echoing_it() {
    for url in [
        "redis://:s3cretpass@redis-host:99999999",
        "redis://:s3cretpass@redis-host:6379/notadb",
    ] {
        let text = with(&format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"{url}\""
        ));
        let e = err(load(&text));
        let p = problem(&e, "limits.redis_url");
        assert!(p.message.contains("not a usable Redis URL"), "{e}");
        assert!(!e.to_string().contains("s3cretpass"), "{e}");
    }
    let ok = with("[limits]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/2\"");
    assert!(load(&ok).is_ok());
    // A password in the URL is an inline secret (issue #16): refused, pointing at _env/_file.
    let inline =
        with("[limits]\nbackend = \"redis\"\nredis_url = \"redis://:pw@127.0.0.1:6379/2\"");
    let e = err(load(&inline));
    let p = problem(&e, "limits.redis_url");
    assert!(p.message.contains("redis_password_env"), "{e}");
}
