//! `graphgate healthcheck`: the container's HEALTHCHECK. One HTTP/1.1 GET of `/healthz` (or
//! `/readyz`) on this process's own admin listener, whose address comes from the config, answered
//! 200 or not within a deadline.
//!
//! It owns only that probe, so the runtime image needs no shell or curl. It must never wait past
//! its deadline, never read more than a bounded head, and never print the admin token.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;

/// The whole probe (connect, send, read the status line) gives up after this long by default:
/// under Docker's `--timeout=3s` for the HEALTHCHECK.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The most of the answer that is read: the status line is all that counts.
const MAX_HEAD: usize = 1024;

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("server.admin_listen is \"off\": there is no admin listener to probe")]
    NoAdminListener,
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("{0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("{addr}{path} answered `{status_line}`")]
    NotOk {
        addr: SocketAddr,
        path: &'static str,
        status_line: String,
    },
}

/// Where a process on this host reaches the admin listener: a wildcard bind (`0.0.0.0`, `::`) is
/// reached on loopback.
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Probes `/healthz` (or `/readyz` with `ready`) on the admin listener `config` names; `Ok` when
/// it answered 200 within `timeout`. `/readyz` carries the admin token when one is set.
pub async fn probe(config: &Config, ready: bool, timeout: Duration) -> Result<(), ProbeError> {
    let listen = config
        .server
        .admin_listen
        .ok_or(ProbeError::NoAdminListener)?;
    let addr = probe_address(listen);
    let path = if ready { "/readyz" } else { "/healthz" };
    let token = ready
        .then_some(config.server.admin_token.as_ref())
        .flatten()
        .map(|t| t.expose().to_string());
    match tokio::time::timeout(timeout, get(addr, path, token.as_deref())).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(addr, timeout)),
    }
}

async fn get(addr: SocketAddr, path: &'static str, token: Option<&str>) -> Result<(), ProbeError> {
    let io = |e| ProbeError::Io(addr, e);
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut head = Vec::with_capacity(MAX_HEAD);
    while !head.contains(&b'\n') && head.len() < MAX_HEAD {
        let mut chunk = [0u8; 256];
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n.min(MAX_HEAD - head.len())]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let status_line = String::from_utf8_lossy(line).trim().to_string();
    let mut words = status_line.split(' ');
    let ok = words.next().is_some_and(|v| v.starts_with("HTTP/1.")) && words.next() == Some("200");
    if ok {
        Ok(())
    } else {
        Err(ProbeError::NotOk {
            addr,
            path,
            status_line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A wildcard bind is probed on loopback; a specific address as it is.
    #[test]
    fn wildcard_admin_addresses_are_probed_on_loopback() {
        let p = |s: &str| probe_address(s.parse().unwrap()).to_string();
        assert_eq!(p("0.0.0.0:9090"), "127.0.0.1:9090");
        assert_eq!(p("[::]:9090"), "[::1]:9090");
        assert_eq!(p("10.1.2.3:9091"), "10.1.2.3:9091");
    }
}
