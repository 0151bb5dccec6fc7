//! The binary's commands: check-config exit codes and messages, and serving from a config file.

mod support;

use std::process::Command;

/// Nothing listens there: these tests only load the config.
const UPSTREAM: &str = "http://127.0.0.1:9";

fn graphgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_graphgate"));
    c.env_remove("GRAPHGATE_CONFIG");
    c
}

/// `graphgate check-config --config <path>` with the test secrets in the environment.
fn check_config(path: &std::path::Path) -> Command {
    let mut c = graphgate();
    c.args(["check-config", "--config"])
        .arg(path)
        .envs(support::env());
    c
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

// A valid file passes with exit 0.
#[test]
fn check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "ok.toml",
        &support::TestProxy::builder(UPSTREAM).toml(),
    );
    let out = check_config(&p).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

// Problems exit 2 and name the file, the key and (where the parser knows it) the line; secrets
// written inline are refused without being echoed.
#[test]
fn check_config_names_file_key_and_line_and_never_echoes_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let text = support::TestProxy::builder(UPSTREAM)
        .server("listen_addr = \"x\"")
        .toml();
    let p = write(&dir, "typo.toml", &text);
    let out = check_config(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .position(|l| l.starts_with("listen_addr"))
        .unwrap()
        + 1;
    assert!(
        err.contains("typo.toml")
            && err.contains("listen_addr")
            && err.contains(&format!(":{line}")),
        "{err}"
    );

    let text = support::TestProxy::builder(UPSTREAM)
        .remove("app[0].token_env")
        .set("app[0].token", "EAAGinlineSECRETtoken")
        .toml();
    let p = write(&dir, "inline.toml", &text);
    let out = check_config(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("inline.toml") && err.contains("app[0].token") && err.contains("token_env"),
        "{err}"
    );
    assert!(!err.contains("EAAGinlineSECRETtoken"));

    // A missing token variable fails clearly, naming the variable.
    let p = write(
        &dir,
        "noenv.toml",
        &support::TestProxy::builder(UPSTREAM).toml(),
    );
    let out = graphgate()
        .args(["check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TEST_SYSTEM_TOKEN") && err.contains("not set"),
        "{err}"
    );

    // A file that does not exist.
    let out = graphgate()
        .args(["check-config", "--config", "/nonexistent/graphgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/graphgate.toml"));
}

// Serving with a bad config exits 2 before binding anything.
#[test]
fn serve_refuses_a_bad_config_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "bad.toml", "[server]\nmax_body = \"lots\"\n");
    let out = graphgate().arg("--config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("max_body"),
        "{err}"
    );
}

// Environment overrides reach every key, e.g. the upstream URL.
#[test]
fn environment_overrides_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "ok.toml",
        &support::TestProxy::builder(UPSTREAM).toml(),
    );
    let out = check_config(&p)
        .env("GRAPHGATE_UPSTREAM__URL", "http://127.0.0.1:4321")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:4321"));
}

// A TLS certificate or key that cannot be used fails check-config (and serve) before anything
// binds, naming the key; the key file's content never appears in the message.
#[test]
fn check_config_refuses_unusable_tls_files_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let key = write(
        &dir,
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\nbm90YWtleQ==\n-----END PRIVATE KEY-----\n",
    );
    for cert in ["missing.pem", "empty.pem"] {
        if cert == "empty.pem" {
            write(&dir, cert, "no certificate here\n");
        }
        let text = support::TestProxy::builder(UPSTREAM)
            .set(
                "server.tls_cert_file",
                dir.path().join(cert).display().to_string(),
            )
            .set("server.tls_key_file", key.display().to_string())
            .toml();
        let p = write(&dir, "tls.toml", &text);
        let out = check_config(&p).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cert}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("server.tls_cert_file"), "{err}");
        assert!(err.contains(cert), "{err}");
        assert!(!err.contains("bm90YWtleQ"), "{err}");
        // Bounded: a serve that got past the check would run until killed.
        let mut serve = graphgate()
            .args(["serve", "--config"])
            .arg(&p)
            .envs(support::env())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = serve.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = serve.kill();
                panic!("serve did not refuse the TLS files within 10 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(2), "serve refuses it before binding");
    }
}

// `graphgate key` prints a fresh key and the `key_sha256` line that authenticates it; the config
// that line goes into passes check-config, and two runs never print the same key.
#[test]
fn key_prints_a_new_client_key_and_its_key_sha256_line() {
    let run = || {
        let out = graphgate().arg("key").output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 2, "{text}");
        (lines[0].to_string(), lines[1].to_string())
    };
    let (key, line) = run();
    assert!(key.len() >= 64, "{key}");
    assert_eq!(line, format!("key_sha256 = \"{}\"", support::hex(&key)));
    assert_ne!(run().0, key);
    let dir = tempfile::tempdir().unwrap();
    let text = support::TestProxy::builder(UPSTREAM)
        .set("client[0].key_sha256", support::hex(&key))
        .toml();
    let out = check_config(&write(&dir, "key.toml", &text))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// `graphgate demo --config FILE` is refused with exit 2 and says why, instead of silently running
// the built-in config.
#[test]
fn demo_refuses_a_config_file() {
    let out = graphgate()
        .args(["demo", "--config", "config/graphgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--config is not used"), "{err}");
}

// `graphgate healthcheck` exits 1 within its deadline when nothing answers on the config's admin
// address, and when the admin listener is off; the container's HEALTHCHECK relies on both.
#[test]
fn healthcheck_fails_fast_without_an_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (name, admin) in [
        ("closed", format!("127.0.0.1:{port}")),
        ("off", "off".into()),
    ] {
        let text = support::TestProxy::builder(UPSTREAM)
            .set("server.admin_listen", admin)
            .toml();
        let p = write(&dir, &format!("{name}.toml"), &text);
        let started = std::time::Instant::now();
        let out = graphgate()
            .args(["healthcheck", "--timeout", "1s", "--config"])
            .arg(&p)
            .envs(support::env())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert!(String::from_utf8_lossy(&out.stderr).contains("graphgate healthcheck"));
    }
}

/// The `toml` block of README's "Running it for real".
fn readme_snippet() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Running it for real").expect("the section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    section[start..start + section[start..].find("```").unwrap()].to_string()
}

// README's config snippet is config/graphgate.toml as it is: every key it sets has the same value
// there, and every commented key line it shows is a commented line there too.
#[test]
fn readme_config_snippet_agrees_with_the_example_config() {
    let snippet = readme_snippet();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/graphgate.toml"
    ))
    .unwrap();
    let a: toml::Table = snippet.parse().expect("the snippet is TOML");
    let b: toml::Table = example.parse().unwrap();
    fn within(a: &toml::Value, b: &toml::Value, at: &str) {
        match (a, b) {
            (toml::Value::Table(a), toml::Value::Table(b)) => {
                for (k, v) in a {
                    let there = b.get(k).unwrap_or_else(|| {
                        panic!("README sets {at}{k}, config/graphgate.toml does not")
                    });
                    within(v, there, &format!("{at}{k}."));
                }
            }
            (toml::Value::Array(a), toml::Value::Array(b)) if a.iter().all(|x| x.is_table()) => {
                for (i, v) in a.iter().enumerate() {
                    within(v, &b[i], &format!("{at}[{i}]."));
                }
            }
            _ => assert_eq!(a, b, "README and config/graphgate.toml differ at {at}"),
        }
    }
    within(&toml::Value::Table(a), &toml::Value::Table(b), "");
    let example_lines: Vec<&str> = example.lines().map(str::trim).collect();
    for line in snippet.lines().filter(|l| l.starts_with("# ")) {
        // `# key = value   # explanation`: the key line as the example has it.
        let key_line = match line[2..].find(" #") {
            Some(i) => format!("# {}", line[2..2 + i].trim()),
            None => line.trim().to_string(),
        };
        assert!(
            example_lines.contains(&key_line.as_str()),
            "README shows `{key_line}`, config/graphgate.toml has no such line"
        );
    }
}

// The example config passes check-config with its token set, and warns (exit 0) about each id and
// key digest a newcomer must replace; a config with its own ids and a key from `graphgate key` gets
// no warning.
#[test]
fn check_config_warns_about_the_examples_placeholders() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/graphgate.toml");
    let out = graphgate()
        .args(["check-config", "--config", example])
        .env("GRAPHGATE_TOKEN_MAIN", "EAAGexampleTOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "app[0].id",
        "app[0].waba[0].id",
        "app[0].waba[0].phone_numbers",
        "client[0].key_sha256",
    ] {
        assert!(
            err.contains(&format!("warning: {key}")),
            "no warning for {key}:\n{err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let own = std::fs::read_to_string(example)
        .unwrap()
        .replace("1234567890123456", "987654321098765")
        .replace("102290129340398", "111122223333444")
        .replace("106540352242922", "555566667777888")
        .replace(
            "90627e143d783aa76b5ef08996acc6e0262d04d836673ac0031bf6e723ea88e7",
            &support::hex("a-key-made-by-graphgate-key-0001"),
        );
    let out = graphgate()
        .args(["check-config", "--config"])
        .arg(write(&dir, "own.toml", &own))
        .env("GRAPHGATE_TOKEN_MAIN", "EAAGexampleTOKEN")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("warning"), "{err}");
}

// `graphgate demo` serves the proxy and the admin listener and prints both with ready curl lines:
// the printed proxy call answers 200 through the simulator, and the printed admin address serves
// the status page and /metrics, which counts that call.
#[tokio::test]
async fn demo_serves_the_admin_listener_and_prints_it_with_curl_lines() {
    use std::io::BufRead;
    let mut child = graphgate()
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("Stop with Ctrl-C") {
                let _ = tx.send(banner.clone());
            }
        }
    });
    let banner = rx.recv_timeout(std::time::Duration::from_secs(20));
    let word_after = |text: &str, label: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    };
    let result = async {
        let banner = banner.map_err(|_| "no banner within 20 s".to_string())?;
        let proxy = word_after(&banner, "proxy").ok_or("no proxy line")?;
        let admin = word_after(&banner, "admin").ok_or("no admin line")?;
        let key = word_after(&banner, "client key").ok_or("no key line")?;
        if !banner.contains(&format!("curl -s '{admin}/admin/limits'")) {
            return Err(format!("no admin curl line:\n{banner}"));
        }
        let c = support::client();
        let call = c
            .get(format!("{proxy}/v19.0/{}?fields=id,name", support::WABA))
            .bearer_auth(&key)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let page = c
            .get(format!("{admin}/admin"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let metrics = c
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        Ok((call.status().as_u16(), page.status().as_u16(), metrics))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let (call, page, metrics) = result.unwrap();
    assert_eq!((call, page), (200, 200));
    assert!(
        metrics.contains("graphgate_requests_total{app=\"demo\",client=\"demo-client\""),
        "{metrics}"
    );
}
