//! Secrets at load (#14): a token, key or secret that an HTTP header cannot carry (a line break, a
//! control character, a space, anything outside visible ASCII) is refused by the loader, so by
//! `check-config` and at start (exit 2), naming the key and never the value. Before, a token with
//! a newline loaded and was sent to Meta as `Bearer invalid`.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{ProxyBuilder, TestProxy};

const UPSTREAM: &str = "http://127.0.0.1:9";

/// Bad values, each with a marker that must never be echoed.
const BAD: [&str; 6] = [
    "EAAGmarkerLINE\nbreak",
    "EAAGmarkerCR\rx",
    "EAAGmarkerTAB\tx",
    "EAAGmarker SPACE",
    "EAAGmarkerDEL\u{7f}x",
    "EAAGmarkerNONASCII\u{e9}x",
];

fn problems(b: &ProxyBuilder) -> Vec<(String, String)> {
    match b.load() {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems
            .iter()
            .map(|p| (p.key.clone(), p.to_string()))
            .collect(),
    }
}

/// The one problem `b` loads with, checked to name `key` and `var` and to hold no part of `value`.
fn refused(b: ProxyBuilder, key: &str, var: &str, value: &str) {
    let ps = problems(&b);
    assert_eq!(ps.len(), 1, "{value:?}: {ps:?}");
    let (k, text) = &ps[0];
    assert_eq!(k, key, "{text}");
    assert!(text.contains(var), "names where it came from: {text}");
    assert!(text.contains("HTTP header"), "{text}");
    let marker = value
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap();
    assert!(!text.contains(marker), "echoes the value: {text}");
}

// Every kind of secret read from the environment: the app's token, its app secret, a WABA's own
// token, the admin token, and a client key; each bad character is refused, naming the key.
#[test]
fn secrets_a_header_cannot_carry_are_refused_naming_the_key() {
    for value in BAD {
        let cases: [(ProxyBuilder, &str, &str); 5] = [
            (
                TestProxy::builder(UPSTREAM).env("TEST_SYSTEM_TOKEN", value),
                "app[0].token_env",
                "TEST_SYSTEM_TOKEN",
            ),
            (
                TestProxy::builder(UPSTREAM).env("TEST_APP_SECRET", value),
                "app[0].app_secret_env",
                "TEST_APP_SECRET",
            ),
            (
                TestProxy::builder(UPSTREAM).env("TEST_WABA_TOKEN", value),
                "app[0].waba[1].token_env",
                "TEST_WABA_TOKEN",
            ),
            (
                TestProxy::builder(UPSTREAM)
                    .set("server.admin_token_env", "TEST_ADMIN")
                    .env("TEST_ADMIN", value),
                "server.admin_token_env",
                "TEST_ADMIN",
            ),
            (
                TestProxy::builder(UPSTREAM)
                    .remove("client[0].key_sha256")
                    .set("client[0].key_env", "TEST_KEY")
                    .env("TEST_KEY", &format!("{value}-long-enough")),
                "client[0].key_env",
                "TEST_KEY",
            ),
        ];
        for (b, key, var) in cases {
            refused(b, key, var, value);
        }
    }
}

// Surrounding whitespace (a trailing newline in a secret file) is trimmed, not refused; every
// visible ASCII character is allowed.
#[test]
fn trimmed_and_visible_ascii_secrets_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "EAAG~!#$%&'()*+,-./0189:;<=>?@AZ[\\]^_`az{|}\n").unwrap();
    let b = TestProxy::builder(UPSTREAM)
        .remove("app[0].token_env")
        .set("app[0].token_file", file.display().to_string())
        .env("TEST_APP_SECRET", "  padded-secret \n");
    assert!(problems(&b).is_empty(), "{:?}", problems(&b));
}

// A token file with a line break inside is refused naming the file key and the file, not the value.
#[test]
fn a_token_file_with_a_line_break_inside_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "EAAGmarkerFILE\nsecond-line\n").unwrap();
    let b = TestProxy::builder(UPSTREAM)
        .remove("app[0].token_env")
        .set("app[0].token_file", file.display().to_string());
    refused(
        b,
        "app[0].token_file",
        &file.display().to_string(),
        "EAAGmarkerFILE",
    );
}

// The binary: `check-config` exits 2 naming the key, and `serve` refuses to start (exit 2, within
// a bound), neither printing the value.
#[test]
fn check_config_and_serve_refuse_a_token_with_a_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("graphgate.toml");
    std::fs::write(&path, TestProxy::builder(UPSTREAM).toml()).unwrap();
    let value = "EAAGmarkerBINARY\ninjected: header";
    let run = |args: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_graphgate"))
            .args(args)
            .arg("--config")
            .arg(&path)
            .env_remove("GRAPHGATE_CONFIG")
            .envs(support::env())
            .env("TEST_SYSTEM_TOKEN", value)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?} did not exit within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    for args in [&["check-config"][..], &["serve"][..]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let all = format!("{err}{}", String::from_utf8_lossy(&out.stdout));
        assert!(
            err.contains("app[0].token_env") && err.contains("TEST_SYSTEM_TOKEN"),
            "{args:?}: {err}"
        );
        assert!(!all.contains("EAAGmarkerBINARY"), "{args:?}: {all}");
        assert!(!all.contains("injected"), "{args:?}: {all}");
    }
}

// `waba_token_dir`: check-config loads the good file, warns about each bad one by name and reason,
// never by content; a directory that cannot be read is a problem naming the key and exits 2.
#[test]
fn check_config_names_bad_token_dir_files_and_refuses_a_missing_dir() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    std::fs::write(tokens.join("102290129340398"), "EAAGgoodDIRtoken\n").unwrap();
    std::fs::write(tokens.join("waba-7"), "EAAGmarkerNAME").unwrap();
    std::fs::write(tokens.join("111"), "EAAGmarkerSPACE x").unwrap();
    std::fs::write(tokens.join("222"), "").unwrap();
    std::fs::write(tokens.join("333"), "EAAGmarkerBIG".repeat(1000)).unwrap();
    std::fs::write(tokens.join(".hidden"), "EAAGmarkerHIDDEN").unwrap();
    let path = dir.path().join("graphgate.toml");
    let check = |toml: String| {
        std::fs::write(&path, toml).unwrap();
        Command::new(env!("CARGO_BIN_EXE_graphgate"))
            .args(["check-config", "--config"])
            .arg(&path)
            .env_remove("GRAPHGATE_CONFIG")
            .envs(support::env())
            .output()
            .unwrap()
    };
    let b = TestProxy::builder(UPSTREAM).set("app[0].waba_token_dir", tokens.display().to_string());
    let out = check(b.toml());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    for (name, why) in [
        ("waba-7", "not a WABA id"),
        ("111", "a space"),
        ("222", "empty"),
        ("333", "larger than 4096 bytes"),
    ] {
        assert!(
            err.contains(&format!(
                "app[0].waba_token_dir: skipped the file `{name}`: "
            )) && err.contains(why),
            "{name}: {err}"
        );
    }
    assert!(!err.contains(".hidden"), "hidden files are ignored: {err}");
    assert!(!err.contains("EAAG"), "no content: {err}");
    let config = b.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.apps[0].waba_tokens.len(), 1);

    let out = check(
        TestProxy::builder(UPSTREAM)
            .set("app[0].waba_token_dir", "no-such-dir")
            .toml(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("app[0].waba_token_dir: cannot read the directory"),
        "{err}"
    );
}
