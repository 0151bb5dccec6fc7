//! The `[server]` and `[upstream]` checks: listen and admin addresses, body and header bounds, TLS
//! files, public and upstream base URLs, upstream timeouts and trusted CA roots.
//!
//! It must never echo a URL's credentials (`user:password@`): they would be a secret.

use std::net::SocketAddr;
use std::path::Path;

use super::super::check::Validator;
use super::super::raw::{RawServer, RawUpstream};
use super::super::{
    AuthMode, Server, TlsFiles, Upstream, DEFAULT_ADMIN_LISTEN, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_LISTEN, DEFAULT_MAX_BODY, DEFAULT_MAX_FORM_BODY, DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_REWRITE_BODY, DEFAULT_MAX_URI, DEFAULT_POOL_IDLE_TIMEOUT,
    DEFAULT_POOL_MAX_IDLE, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SHUTDOWN_GRACE, DEFAULT_UPSTREAM,
};
use super::super::{DEFAULT_BODY_TIMEOUT, DEFAULT_PREAUTH_BODY_TIMEOUT, DEFAULT_PREAUTH_READS};
use super::super::{DEFAULT_DRAIN_DELAY, MAX_DRAIN_DELAY};
use super::super::{
    DEFAULT_FIRST_BYTE_TIMEOUT, DEFAULT_H2_PING_INTERVAL, DEFAULT_H2_PING_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEPALIVE_TIMEOUT,
};
use super::super::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IN_FLIGHT};
use super::super::{DEFAULT_UPSTREAM_BODY_IDLE_TIMEOUT, DEFAULT_UPSTREAM_BODY_TIMEOUT};

impl Validator<'_> {
    pub(super) fn server(&mut self, r: RawServer) -> (Server, AuthMode) {
        let listen = match r.listen.as_deref().unwrap_or(DEFAULT_LISTEN).parse() {
            Ok(a) => a,
            Err(_) => {
                self.problem(
                    "server.listen",
                    "must be an address like 127.0.0.1:8080 or [::]:8080",
                );
                DEFAULT_LISTEN
                    .parse()
                    .expect("default listen address parses")
            }
        };
        let public_url = r
            .public_url
            .filter(|s| !s.is_empty())
            .and_then(|s| match base_url(&s) {
                Ok(u) => Some(u),
                Err(m) => {
                    self.problem("server.public_url", m);
                    None
                }
            });
        let auth = match r.auth.as_deref() {
            None | Some("keys") => AuthMode::Keys,
            Some("none") => AuthMode::None,
            Some(_) => {
                self.problem("server.auth", "must be \"keys\" or \"none\"");
                AuthMode::Keys
            }
        };
        let tls = match (r.tls_cert_file, r.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: self.base.join(cert),
                key: self.base.join(key),
            }),
            (None, None) => None,
            _ => {
                self.problem(
                    "server.tls_cert_file",
                    "tls_cert_file and tls_key_file must be set together",
                );
                None
            }
        };
        let max_headers = self
            .int_in("server.max_headers", r.max_headers, 1, 10_000)
            .map_or(DEFAULT_MAX_HEADERS, |n| n as usize);
        let server = Server {
            listen,
            public_url,
            max_body: self.positive_size("server.max_body", r.max_body, DEFAULT_MAX_BODY),
            max_form_body: self.positive_size(
                "server.max_form_body",
                r.max_form_body,
                DEFAULT_MAX_FORM_BODY,
            ),
            max_rewrite_body: self.positive_size(
                "server.max_rewrite_body",
                r.max_rewrite_body,
                DEFAULT_MAX_REWRITE_BODY,
            ),
            max_uri: self.positive_size("server.max_uri", r.max_uri, DEFAULT_MAX_URI),
            max_headers,
            max_header_bytes: self.positive_size(
                "server.max_header_bytes",
                r.max_header_bytes,
                DEFAULT_MAX_HEADER_BYTES,
            ),
            shutdown_grace: r
                .shutdown_grace
                .map(|d| d.0)
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            drain_delay: self.drain_delay(r.drain_delay),
            tls,
            access_log: r.access_log.unwrap_or(true),
            worker_threads: self
                .int_in("server.worker_threads", r.worker_threads, 1, 1024)
                .map(|n| n as usize),
            admin_listen: self.admin_listen(r.admin_listen.as_deref(), listen),
            admin_token: self.secret(
                "server.admin_token",
                r.admin_token.is_some(),
                r.admin_token_env,
                r.admin_token_file,
                false,
            ),
            first_byte_timeout: self.positive_duration(
                "server.first_byte_timeout",
                r.first_byte_timeout,
                DEFAULT_FIRST_BYTE_TIMEOUT,
            ),
            header_timeout: self.positive_duration(
                "server.header_timeout",
                r.header_timeout,
                DEFAULT_HEADER_TIMEOUT,
            ),
            keepalive_timeout: self.positive_duration(
                "server.keepalive_timeout",
                r.keepalive_timeout,
                DEFAULT_KEEPALIVE_TIMEOUT,
            ),
            h2_ping_interval: self.positive_duration(
                "server.h2_ping_interval",
                r.h2_ping_interval,
                DEFAULT_H2_PING_INTERVAL,
            ),
            h2_ping_timeout: self.positive_duration(
                "server.h2_ping_timeout",
                r.h2_ping_timeout,
                DEFAULT_H2_PING_TIMEOUT,
            ),
            body_timeout: self.positive_duration(
                "server.body_timeout",
                r.body_timeout,
                DEFAULT_BODY_TIMEOUT,
            ),
            preauth_body_timeout: self.positive_duration(
                "server.preauth_body_timeout",
                r.preauth_body_timeout,
                DEFAULT_PREAUTH_BODY_TIMEOUT,
            ),
            preauth_reads: self
                .int_in("server.preauth_reads", r.preauth_reads, 1, 100_000)
                .map_or(DEFAULT_PREAUTH_READS, |n| n as usize),
            max_connections: self
                .int_in("server.max_connections", r.max_connections, 1, 1_000_000)
                .map_or(DEFAULT_MAX_CONNECTIONS, |n| n as usize),
            max_in_flight: self
                .int_in("server.max_in_flight", r.max_in_flight, 1, 1_000_000)
                .map_or(DEFAULT_MAX_IN_FLIGHT, |n| n as usize),
        };
        (server, auth)
    }

    /// `server.drain_delay`: zero (stop accepting at once) up to [`MAX_DRAIN_DELAY`].
    fn drain_delay(&mut self, raw: Option<super::super::scalar::Dur>) -> std::time::Duration {
        match raw {
            None => DEFAULT_DRAIN_DELAY,
            Some(d) if d.0 > MAX_DRAIN_DELAY => {
                self.problem(
                    "server.drain_delay",
                    format!(
                        "must be at most {}s: load balancers stop routing within seconds",
                        MAX_DRAIN_DELAY.as_secs()
                    ),
                );
                DEFAULT_DRAIN_DELAY
            }
            Some(d) => d.0,
        }
    }

    /// `server.admin_listen`: an address, or `"off"`/empty for no admin listener. It may not share
    /// the proxy's address (the proxy port never serves admin paths).
    fn admin_listen(&mut self, raw: Option<&str>, listen: SocketAddr) -> Option<SocketAddr> {
        let raw = raw.unwrap_or(DEFAULT_ADMIN_LISTEN).trim();
        if raw.is_empty() || raw.eq_ignore_ascii_case("off") {
            return None;
        }
        match raw.parse::<SocketAddr>() {
            Ok(a) if a == listen && a.port() != 0 => {
                self.problem(
                    "server.admin_listen",
                    "must differ from server.listen: admin paths are never served on the proxy port",
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    "server.admin_listen",
                    "must be an address like 127.0.0.1:9090, or \"off\"",
                );
                None
            }
        }
    }

    pub(super) fn upstream(&mut self, r: RawUpstream) -> Upstream {
        let url = match base_url(r.url.as_deref().unwrap_or(DEFAULT_UPSTREAM)) {
            Ok(u) => u,
            Err(m) => {
                self.problem("upstream.url", m);
                DEFAULT_UPSTREAM.parse().expect("default upstream parses")
            }
        };
        let pool_max_idle_per_host = self
            .int_in(
                "upstream.pool_max_idle_per_host",
                r.pool_max_idle_per_host,
                0,
                100_000,
            )
            .map_or(DEFAULT_POOL_MAX_IDLE, |n| n as usize);
        Upstream {
            url,
            connect_timeout: self.positive_duration(
                "upstream.connect_timeout",
                r.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            ),
            request_timeout: self.positive_duration(
                "upstream.request_timeout",
                r.request_timeout,
                DEFAULT_REQUEST_TIMEOUT,
            ),
            pool_idle_timeout: self.positive_duration(
                "upstream.pool_idle_timeout",
                r.pool_idle_timeout,
                DEFAULT_POOL_IDLE_TIMEOUT,
            ),
            pool_max_idle_per_host,
            body_idle_timeout: self.positive_duration(
                "upstream.body_idle_timeout",
                r.body_idle_timeout,
                DEFAULT_UPSTREAM_BODY_IDLE_TIMEOUT,
            ),
            body_timeout: self.positive_duration(
                "upstream.body_timeout",
                r.body_timeout,
                DEFAULT_UPSTREAM_BODY_TIMEOUT,
            ),
            ca_roots: r.ca_file.map(|f| self.ca_roots(&f)).unwrap_or_default(),
        }
    }

    /// The PEM certificates of `upstream.ca_file`, read now so a bad file fails the load.
    fn ca_roots(&mut self, file: &Path) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        use rustls_pki_types::pem::PemObject;
        let path = self.base.join(file);
        let read = rustls_pki_types::CertificateDer::pem_file_iter(&path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>());
        match read {
            Ok(certs) if !certs.is_empty() => certs,
            Ok(_) => {
                self.problem(
                    "upstream.ca_file",
                    format!("{}: no PEM certificate found", path.display()),
                );
                Vec::new()
            }
            Err(e) => {
                self.problem(
                    "upstream.ca_file",
                    format!("{}: cannot read certificates: {e}", path.display()),
                );
                Vec::new()
            }
        }
    }
}

/// Parses an absolute http(s) base URL with no query, and drops a trailing slash.
fn base_url(s: &str) -> Result<http::Uri, String> {
    let u: http::Uri = s
        .trim_end_matches('/')
        .parse()
        .map_err(|_| format!("`{s}` is not a URL"))?;
    match u.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{s}` must start with http:// or https://")),
    }
    match u.authority() {
        None => return Err(format!("`{s}` has no host")),
        // Not echoed: the part before `@` would be a password. It would also go out in `Host`.
        Some(a) if a.as_str().contains('@') => {
            return Err("must not carry credentials (user:password@)".to_string())
        }
        Some(_) => {}
    }
    if u.query().is_some() {
        return Err(format!("`{s}` must not have a query"));
    }
    Ok(u)
}
