//! A real `redis-server` on a free loopback port, for the shared-state tests: plain, on a TLS port
//! (with a CA and certificate made at test time, [`TestCa`]), with `requirepass` or an ACL user
//! (any extra arguments), as a replica, or as a Sentinel (`redis-server --sentinel`, what Debian's
//! redis-sentinel runs). It is never skipped: without the binary the test fails and says how to
//! install it (scripts/test does).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Arguments beyond port, bind and no persistence (TLS, a password, replicaof...).
    extra: Vec<String>,
    /// A Sentinel: the config file it runs from (it rewrites it).
    sentinel_conf: Option<String>,
    tls: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::with_args(&[])
    }

    /// A server with extra `redis-server` arguments (e.g. `["--requirepass", "..."]`).
    pub fn with_args(extra: &[&str]) -> RedisServer {
        RedisServer::spawn(extra.iter().map(|s| s.to_string()).collect(), None, false)
    }

    /// A server that speaks only TLS, with `ca`'s server certificate (clients need none).
    pub fn tls(ca: &TestCa, extra: &[&str]) -> RedisServer {
        let mut args: Vec<String> = vec!["--tls-cert-file".into(), path(&ca.cert)];
        args.extend(["--tls-key-file".into(), path(&ca.key)]);
        args.extend(["--tls-ca-cert-file".into(), path(&ca.ca)]);
        args.extend(["--tls-auth-clients".into(), "optional".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        RedisServer::spawn(args, None, true)
    }

    /// A replica of `master` (with `extra`, e.g. the master's password as `--masterauth`).
    pub fn replica_of(master: &RedisServer, extra: &[&str]) -> RedisServer {
        let mut args = vec![
            "--replicaof".to_string(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        RedisServer::spawn(args, None, false)
    }

    /// A Sentinel monitoring `master` as `name` (quorum 2), quick to act: the master is down after
    /// `down_after_ms` without an answer.
    pub fn sentinel(master: &RedisServer, name: &str, down_after_ms: u64) -> RedisServer {
        let conf = format!(
            "sentinel monitor {name} 127.0.0.1 {mp} 2\n\
             sentinel down-after-milliseconds {name} {down_after_ms}\n\
             sentinel failover-timeout {name} 3000\n\
             sentinel parallel-syncs {name} 1\n",
            mp = master.port
        );
        RedisServer::spawn(Vec::new(), Some(conf), false)
    }

    fn spawn(extra: Vec<String>, sentinel_conf: Option<String>, tls: bool) -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra,
            sentinel_conf,
            tls,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `host:port`, as `limits.redis_sentinels` names a Sentinel.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = &self.sentinel_conf {
            let file = self.dir.path().join("sentinel.conf");
            std::fs::write(&file, conf).unwrap();
            cmd.arg(&file).arg("--sentinel");
        }
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &port]);
        } else {
            cmd.args(["--port", &port]);
        }
        cmd.args(["--bind", "127.0.0.1"]);
        if self.sentinel_conf.is_none() {
            cmd.args(["--save", "", "--appendonly", "no"]);
        }
        let child = cmd
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}): install it with `apt-get install -y redis-server` (scripts/test does)"));
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Hangs the server (SIGSTOP): connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A command through `redis-cli` (plain TCP servers only), its output trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// A certificate authority made at test time, and a server certificate it signed for
/// `localhost` and `127.0.0.1`, as PEM files in a temporary directory.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client certificate and key the CA signed, for `--tls-auth-clients yes`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // OpenSSL (redis-server checking a client certificate) wants an issuer with a name.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "graphgate test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["graphgate".to_string()])
            .unwrap()
            .signed_by(&client_key, &ca, &ca_key)
            .unwrap();
        let write = |name: &str, pem: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        TestCa {
            ca: write("ca.pem", ca.pem()),
            cert: write("server.pem", cert.pem()),
            key: write("server.key", key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            _dir: dir,
        }
    }
}
