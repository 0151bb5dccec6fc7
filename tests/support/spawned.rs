//! The real graphgate binary as its own process, for tests that measure it from outside (its RSS
//! from `/proc/<pid>/status`, a lowered open-file limit) rather than in the test's process.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{env, ProxyBuilder};

/// A graphgate binary serving a test config, killed when dropped.
pub struct Spawned {
    child: Child,
    pub addr: SocketAddr,
    pub admin: String,
    /// Every line it logged so far (JSON).
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts `builder`'s config on a free port, with at most `nofile` open files when given.
    pub fn start(builder: ProxyBuilder, nofile: Option<u32>) -> Spawned {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("graphgate.toml");
        let toml = builder
            .set("server.listen", addr.to_string())
            .set("server.admin_listen", "127.0.0.1:0")
            .toml();
        std::fs::write(&path, toml).unwrap();
        let bin = env!("CARGO_BIN_EXE_graphgate");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["--log-format", "json", "--config"])
            .arg(&path)
            .envs(env())
            .env("TEST_VERIFY_TOKEN", "verify-me")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = logs.clone();
        // Reads every line (so the pipe never fills), keeps it, and reports the admin address.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(a) = v["admin"].as_str() {
                    let _ = tx.send(a.to_string());
                }
                kept.lock().unwrap().push(line);
            }
        });
        let admin = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the spawned proxy logs its admin address");
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "proxy listens");
            std::thread::sleep(Duration::from_millis(20));
        }
        Spawned {
            child,
            addr,
            admin: format!("http://{admin}"),
            logs,
            _dir: dir,
        }
    }

    /// Sends `signal` (a `kill -s` name: TERM, INT) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {signal} failed");
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits, at most 5 s, until `/readyz` answers 503 (the drain has begun).
    /// Returns when the signal was sent.
    pub async fn term_until_draining(&self) -> Instant {
        let sent = Instant::now();
        self.signal("TERM");
        while super::admin_get(&self.admin, "/readyz", None)
            .await
            .status()
            != 503
        {
            assert!(sent.elapsed() < Duration::from_secs(5), "never draining");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    }

    /// Waits (off the runtime) up to `within` for the process to exit, and asserts it exited with
    /// status 0; gives the process back (for its log).
    pub async fn exits_cleanly(mut self, within: Duration) -> Spawned {
        let (p, status) = tokio::task::spawn_blocking(move || {
            let s = self.wait_exit(within);
            (self, s)
        })
        .await
        .unwrap();
        assert_eq!(status.map(|s| s.code()), Some(Some(0)), "exit status");
        p
    }

    /// The process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file it was started with (a test may rewrite it and reload).
    pub fn config_file(&self) -> std::path::PathBuf {
        self._dir.path().join("graphgate.toml")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process's resident set, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
