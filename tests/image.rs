//! The container image, tested up to the container engine (none runs on the CI machine):
//!
//! - the Docker build context compiles: the build stage's COPY sources, filtered by
//!   `.dockerignore`, are copied into an empty directory and `cargo check --locked --offline` runs
//!   there, so a path the manifest needs but the Dockerfile does not copy fails here first;
//! - the binary runs as the runtime stage runs it: in a chroot holding only the binary, its config
//!   and a state directory, as uid 10001, on a root mounted read-only (a private mount namespace,
//!   `unshare`), with `/var/lib/graphgate` the one writable place; `graphgate healthcheck` (the
//!   HEALTHCHECK) passes there while it serves and fails once it has stopped.
//!
//! The chroot test needs root (for `unshare` and `chroot`, as `scripts/test` runs). It uses the
//! test build of the binary and copies the shared libraries it links into the root; set
//! `GRAPHGATE_STATIC_BIN` to a static build (the Dockerfile's) to run that one instead, alone in
//! the root as in `distroless/static`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The sources of the first stage's `COPY` instructions from the build context (no `--from`).
fn build_stage_copy_sources(dockerfile: &str) -> Vec<String> {
    let ins = support::dockerfile_instructions(dockerfile);
    let froms: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, i)| i.starts_with("FROM "))
        .map(|(n, _)| n)
        .collect();
    assert!(froms.len() >= 2, "not a multi-stage build");
    let stage = &ins[froms[0]..froms[1]];
    let mut sources = Vec::new();
    for i in stage.iter().filter(|i| i.starts_with("COPY ")) {
        let words: Vec<&str> = i.split_whitespace().skip(1).collect();
        assert!(
            !words.iter().any(|w| w.starts_with("--from")),
            "the build stage copies from another stage: {i}"
        );
        let args: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
        let (_, srcs) = args.split_last().expect("COPY with a destination");
        sources.extend(srcs.iter().map(|s| s.trim_end_matches('/').to_string()));
    }
    sources
}

/// `.dockerignore` patterns as Docker applies them to the ones used here: `dir/` and `name` match
/// at the root, `**/x` at any depth, `*` within one name.
fn ignored(patterns: &[String], rel: &Path) -> bool {
    let rel = rel.to_string_lossy();
    patterns.iter().any(|p| {
        let p = p.trim_end_matches('/');
        let (any_depth, p) = match p.strip_prefix("**/") {
            Some(rest) => (true, rest),
            None => (false, p),
        };
        let parts: Vec<&str> = rel.split('/').collect();
        let matches_at = |start: usize| {
            let want: Vec<&str> = p.split('/').collect();
            want.len() <= parts.len() - start
                && want
                    .iter()
                    .zip(&parts[start..])
                    .all(|(w, have)| glob(w, have))
        };
        if any_depth {
            (0..parts.len()).any(matches_at)
        } else {
            matches_at(0)
        }
    })
}

fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, post)) => {
            name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post)
        }
    }
}

fn copy_tree(from: &Path, to: &Path, rel: &Path, patterns: &[String]) {
    if ignored(patterns, rel) {
        return;
    }
    let meta = std::fs::metadata(from).unwrap_or_else(|e| {
        panic!(
            "the Dockerfile copies `{}`, which is not in the build context: {e}",
            rel.display()
        )
    });
    if meta.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(
                &entry.path(),
                &to.join(entry.file_name()),
                &rel.join(entry.file_name()),
                patterns,
            );
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

/// The target directory this test was built in (shared, so the dependencies are not rebuilt).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // <target>/<profile>/deps/<this test>
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

// The Dockerfile's build stage copies everything cargo needs: its COPY set, filtered by
// .dockerignore, compiles alone in an empty directory (locked, offline).
#[test]
fn docker_build_context_compiles_from_the_dockerfiles_copy_set_alone() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let sources = build_stage_copy_sources(&dockerfile);
    for need in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(sources.iter().any(|s| s == need), "COPY lacks {need}");
    }
    let patterns: Vec<String> = std::fs::read_to_string(repo().join(".dockerignore"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let ctx = tempfile::tempdir().unwrap();
    for s in &sources {
        assert!(
            !ignored(&patterns, Path::new(s)),
            ".dockerignore drops `{s}`, which the Dockerfile copies"
        );
        copy_tree(
            &repo().join(s),
            &ctx.path().join(s),
            Path::new(s),
            &patterns,
        );
    }
    let out = Command::new(env!("CARGO"))
        .args(["check", "--locked", "--offline", "--bins", "--lib"])
        .current_dir(ctx.path())
        .env("CARGO_TARGET_DIR", target_dir().join("docker-context"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Docker build context does not compile:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// The runtime stage's promises: a distroless or scratch base pinned by digest (no shell, no curl),
// uid 10001, a HEALTHCHECK that runs the binary itself, a static and stripped build, OCI labels,
// and the version and git revision as build arguments.
#[test]
fn dockerfile_runtime_is_pinned_distroless_non_root_and_probes_with_the_binary() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let ins = support::dockerfile_instructions(&text);
    let froms: Vec<&String> = ins.iter().filter(|i| i.starts_with("FROM ")).collect();
    for f in &froms {
        assert!(
            f.contains("@sha256:"),
            "base image not pinned by digest: {f}"
        );
    }
    let runtime = froms.last().unwrap();
    assert!(
        runtime.contains("distroless/static") || runtime.contains("FROM scratch"),
        "{runtime}"
    );
    let last_from = ins.iter().rposition(|i| i.starts_with("FROM ")).unwrap();
    let stage = &ins[last_from..];
    assert!(
        !stage.iter().any(|i| i.starts_with("RUN ")),
        "the runtime stage runs a command: it has no shell"
    );
    assert!(stage.iter().any(|i| i == "USER 10001:10001"));
    let health: Vec<_> = stage
        .iter()
        .filter(|i| i.starts_with("HEALTHCHECK "))
        .collect();
    assert_eq!(health.len(), 1);
    assert!(
        health[0].contains(r#"CMD ["graphgate", "healthcheck"]"#),
        "{}",
        health[0]
    );
    assert!(
        !ins.iter().any(|i| i.contains("curl")),
        "an instruction names curl"
    );
    let build = ins.iter().find(|i| i.contains("cargo build")).unwrap();
    assert!(build.contains("+crt-static") && build.contains("--locked"));
    assert!(build.contains("CARGO_PROFILE_RELEASE_STRIP=symbols"));
    for label in ["version", "revision", "licenses", "title"] {
        let key = format!("org.opencontainers.image.{label}");
        assert!(
            stage
                .iter()
                .any(|i| i.starts_with("LABEL ") && i.contains(&key)),
            "no {key} label"
        );
    }
    for arg in ["ARG VERSION", "ARG GIT_REVISION"] {
        assert!(stage.iter().any(|i| i.starts_with(arg)), "{arg}");
    }
    assert!(build.contains("GRAPHGATE_GIT_REVISION=\"$GIT_REVISION\""));
}

// ---------------------------------------------------------------- a scratch-like root

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The shared libraries `bin` loads (none for a static build), by `ldd`.
fn linked_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

fn chown_10001(path: &Path) {
    let ok = Command::new("chown")
        .args(["-R", "10001:10001"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "chown {}", path.display());
}

/// For `chroot`, `unshare` and `mount` outside the root; nothing inside it has a PATH to use.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn in_root(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("chroot");
    c.arg("--userspec=10001:10001")
        .arg(root)
        .arg("/usr/local/bin/graphgate")
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        // As the image's ENV sets it.
        .env("GRAPHGATE_CONFIG", "/etc/graphgate/graphgate.toml")
        .envs(support::env());
    c
}

// The binary serves as uid 10001 from a root holding only itself (and, for a dynamic test build,
// its libraries), its config and /var/lib/graphgate, with that root mounted read-only: a call is
// proxied, `graphgate healthcheck` passes, the limiter state is saved to the one writable place on
// SIGTERM, and the healthcheck fails once the process is gone.
#[tokio::test]
async fn binary_serves_as_uid_10001_on_a_read_only_root_and_its_healthcheck_passes() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    assert!(
        is_root,
        "this test needs root (unshare, chroot); scripts/test runs as root"
    );
    let sim = support::start_sim(support::sim_config()).await;
    let bin = std::env::var_os("GRAPHGATE_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_graphgate")));

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let state = dir.path().join("state");
    for d in [
        "usr/local/bin",
        "etc/graphgate",
        "var/lib/graphgate",
        "proc",
        "tmp",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir_all(&state).unwrap();
    std::fs::copy(&bin, root.join("usr/local/bin/graphgate")).unwrap();
    let libs = linked_libraries(&bin);
    for lib in &libs {
        let to = root.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    eprintln!(
        "binary {} ({} shared libraries copied into the root)",
        bin.display(),
        libs.len()
    );
    let (port, admin_port) = (free_port(), free_port());
    let config = support::TestProxy::builder(&sim.url)
        .set("server.listen", format!("127.0.0.1:{port}"))
        .set("server.admin_listen", format!("0.0.0.0:{admin_port}"))
        .set("server.shutdown_grace", "2s")
        .set("limits.state_file", "/var/lib/graphgate/limits.json")
        .toml();
    std::fs::write(root.join("etc/graphgate/graphgate.toml"), config).unwrap();
    // The root and everything in it belongs to root and is world-readable, as in the image; only
    // the state directory belongs to 10001.
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status()
        .unwrap();
    chown_10001(&state);

    // A private mount namespace: the root read-only, the state directory mounted writable on
    // /var/lib/graphgate, /proc for the process metrics. The root stays writable to the test.
    let r = root.display();
    let script = format!(
        "set -e
         mount --bind {r} {r}
         mount -o remount,bind,ro {r}
         mount --bind {s} {r}/var/lib/graphgate
         mount -t proc proc {r}/proc
         if touch {r}/written 2>/dev/null; then echo 'the root is writable' >&2; exit 99; fi
         exec chroot --userspec=10001:10001 {r} /usr/local/bin/graphgate \
           --log-format json --config /etc/graphgate/graphgate.toml",
        s = state.display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", PATH)
        .envs(support::env())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Healthy within 20 s, probed by the binary itself from inside the root.
    let started = Instant::now();
    let healthy = loop {
        let probe = in_root(&root, &["healthcheck", "--timeout", "1s"])
            .output()
            .unwrap();
        if probe.status.success() {
            break true;
        }
        if started.elapsed() > Duration::from_secs(20) || child.try_wait().unwrap().is_some() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ready = in_root(&root, &["healthcheck", "--ready", "--timeout", "2s"])
        .status()
        .unwrap();
    let proxied = support::client()
        .get(format!("http://127.0.0.1:{port}/v19.0/{}", support::WABA))
        .bearer_auth(support::CLIENT_KEY)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16());
    let metrics = support::admin_get(&format!("http://127.0.0.1:{admin_port}"), "/metrics", None)
        .await
        .text()
        .await
        .unwrap_or_default();

    // SIGTERM: graphgate saves the limiter state and exits.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let after = in_root(&root, &["healthcheck", "--timeout", "1s"])
        .output()
        .unwrap();

    assert!(healthy, "graphgate healthcheck never passed:\n{stderr}");
    assert!(ready.success(), "graphgate healthcheck --ready failed");
    assert_eq!(proxied.ok(), Some(200), "a call through the chrooted proxy");
    assert!(metrics.contains("graphgate_build_info"), "{metrics}");
    // /proc is mounted in the root, as a container runtime mounts it.
    assert!(
        metrics.contains("\nprocess_resident_memory_bytes ")
            && metrics.contains("\nprocess_open_fds "),
        "process metrics missing:\n{metrics}"
    );
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit {exit:?}:\n{stderr}"
    );
    assert!(
        state.join("limits.json").is_file(),
        "no limiter state written to the writable volume:\n{stderr}"
    );
    assert!(!root.join("written").exists());
    assert!(!after.status.success(), "healthcheck passes with no server");
    assert_eq!(after.status.code(), Some(1));
}
