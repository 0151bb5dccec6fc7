//! How the link reaches Redis as ops run it: the server named by `limits.redis_url` (`redis://`,
//! `rediss://` with the bundled web PKI roots or `limits.redis_ca_file`, `unix://`), or the master
//! the Sentinels name; with `limits.redis_username` and the password loaded by `config`. And what
//! a failure was ([`Fault`]): authentication, TLS, a refused or lost connection, a read-only
//! replica, so that it is reported as such and never as "connected".
//!
//! It owns connection setup; what runs on a connection is `redis`'s. It must never put the
//! password, a client key or a URL that could carry either into an error, a log line or a label.

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::config::RedisAccess;

/// What went wrong on the way to (or on) Redis: the label of `graphgate_redis_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Wrong or missing password, unknown user, or a command the ACL user may not run.
    Auth,
    /// The TLS handshake failed: an unknown CA, a wrong name, a server not speaking TLS.
    Tls,
    /// No connection: refused, unreachable, reset, closed.
    Connect,
    /// No answer within `limits.backend_timeout`.
    Timeout,
    /// The server is a replica (a failover moved the master elsewhere).
    ReadOnly,
    /// The Sentinels named no master, or anything else.
    Other,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Auth,
        Fault::Tls,
        Fault::Connect,
        Fault::Timeout,
        Fault::ReadOnly,
        Fault::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Auth => "auth",
            Fault::Tls => "tls",
            Fault::Connect => "connect",
            Fault::Timeout => "timeout",
            Fault::ReadOnly => "readonly",
            Fault::Other => "other",
        }
    }

    /// What an operator reads in the log and in `/readyz`.
    pub fn describe(self) -> &'static str {
        match self {
            Fault::Auth => "authentication failed (check limits.redis_username and the password)",
            Fault::Tls => "the TLS handshake failed (check rediss:// and limits.redis_ca_file)",
            Fault::Connect => "unreachable",
            Fault::Timeout => "not answering in time",
            Fault::ReadOnly => "a read-only replica, not the master",
            Fault::Other => "not usable",
        }
    }

    pub(super) fn index(self) -> usize {
        Fault::ALL.iter().position(|f| *f == self).unwrap_or(5)
    }

    /// Sorts a Redis error: server codes first, then TLS errors found in the cause chain.
    pub fn of(e: &redis::RedisError) -> Fault {
        match e.code() {
            Some("NOAUTH" | "WRONGPASS" | "NOPERM") => return Fault::Auth,
            Some("READONLY") => return Fault::ReadOnly,
            _ => {}
        }
        match e.kind() {
            redis::ErrorKind::AuthenticationFailed => return Fault::Auth,
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) => return Fault::ReadOnly,
            _ => {}
        }
        if is_tls(e) {
            return Fault::Tls;
        }
        if e.is_timeout() {
            Fault::Timeout
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            Fault::Connect
        } else {
            Fault::Other
        }
    }
}

/// Whether a rustls error is somewhere in `e`'s causes (wrapped in `io::Error`s by the
/// handshake).
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // An `io::Error`'s `source` skips the error it wraps: follow `get_ref` instead.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            next = Some(inner);
            continue;
        }
        next = err.source();
    }
    // The connection manager may pass on a failed connect as text only: rustls's own wording.
    let text = e.to_string();
    TLS_WORDS.iter().any(|w| text.contains(w))
}

/// How rustls's errors begin (`rustls::Error`'s `Display`), for a TLS failure passed on as text.
const TLS_WORDS: [&str; 6] = [
    "invalid peer certificate",
    "received corrupt message",
    "received fatal alert",
    "peer is incompatible",
    "peer sent no certificates",
    "peer misbehaved",
];

/// Where the link connects, and as whom.
pub struct Connector {
    /// The server itself (`limits.redis_url`), or `None` with Sentinel.
    direct: Option<ConnectionInfo>,
    sentinels: Vec<(String, u16)>,
    master_name: String,
    /// Credentials and database for the master (with Sentinel).
    settings: RedisConnectionInfo,
    /// The master is reached over TLS (Sentinel with `redis_ca_file`).
    sentinel_tls: bool,
    certs: Option<redis::TlsCertificates>,
    /// A digest of the username and password: a reload swaps the link's credentials only when it
    /// changes (the secrets themselves are compared nowhere else).
    pub(crate) credentials: [u8; 32],
}

impl Connector {
    /// A plain `redis://` (or `rediss://`) URL as is: credentials in it are used.
    pub fn from_url(url: &str) -> Result<Connector, String> {
        Connector::new(url, &RedisAccess::default())
    }

    /// The URL (empty with Sentinel) with the access `config` loaded.
    pub fn new(url: &str, access: &RedisAccess) -> Result<Connector, String> {
        let mut settings = RedisConnectionInfo::default();
        let direct = if access.sentinels.is_empty() {
            // Not echoed: the parser's message may quote the URL.
            let info = url
                .into_connection_info()
                .map_err(|_| "limits.redis_url is not a usable Redis URL".to_string())?;
            settings = info.redis_settings().clone();
            Some(info)
        } else {
            None
        };
        if let Some(u) = &access.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &access.password {
            settings = settings.set_password(p.expose());
        }
        let direct = direct.map(|info| info.set_redis_settings(settings.clone()));
        let certs = if access.ca_pem.is_some() || access.client_cert.is_some() {
            Some(redis::TlsCertificates {
                client_tls: access
                    .client_cert
                    .as_ref()
                    .map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.expose().as_bytes().to_vec(),
                    }),
                root_cert: access.ca_pem.clone(),
            })
        } else {
            None
        };
        let credentials = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(access.username.as_deref().unwrap_or("").as_bytes());
            h.update([0]);
            h.update(
                access
                    .password
                    .as_ref()
                    .map_or("", |p| p.expose())
                    .as_bytes(),
            );
            h.finalize().into()
        };
        Ok(Connector {
            credentials,
            direct,
            sentinels: access.sentinels.clone(),
            master_name: access.master_name.clone(),
            settings,
            sentinel_tls: !access.sentinels.is_empty() && access.ca_pem.is_some(),
            certs,
        })
    }

    pub fn sentinel(&self) -> bool {
        self.direct.is_none()
    }

    /// A client for the master and where it is (`host:port`, never credentials): the server of
    /// the URL, or the master the first Sentinel to answer names, each asked within `timeout`.
    pub async fn master(&self, timeout: Duration) -> redis::RedisResult<(redis::Client, String)> {
        let info = match &self.direct {
            Some(info) => info.clone(),
            None => {
                let (host, port) = self.ask_sentinels(timeout).await?;
                let addr = if self.sentinel_tls {
                    ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host, port)
                };
                addr.into_connection_info()?
                    .set_redis_settings(self.settings.clone())
            }
        };
        let at = where_(info.addr());
        let client = match &self.certs {
            Some(certs) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) => {
                redis::Client::build_with_tls(info, certs.clone())?
            }
            _ => redis::Client::open(info)?,
        };
        Ok((client, at))
    }

    /// `SENTINEL get-master-addr-by-name` at each Sentinel in turn; the first answer wins.
    async fn ask_sentinels(&self, timeout: Duration) -> redis::RedisResult<(String, u16)> {
        let mut last = redis::RedisError::from((redis::ErrorKind::Io, "no Sentinel answered"));
        for (host, port) in &self.sentinels {
            let addr = ConnectionAddr::Tcp(host.clone(), *port);
            let ask = async {
                let client = redis::Client::open(addr)?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master_name)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            match tokio::time::timeout(timeout, ask).await {
                Ok(Ok(Some(addr))) => return Ok(addr),
                Ok(Ok(None)) => {
                    last = redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "the Sentinels do not know limits.redis_master_name",
                    ));
                }
                Ok(Err(e)) => {
                    tracing::debug!(sentinel = %format!("{host}:{port}"), error = %e, "a Sentinel did not answer");
                    last = e;
                }
                Err(_) => {
                    last = redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "a Sentinel did not answer in time",
                    ));
                }
            }
        }
        Err(last)
    }
}

/// `host:port` (or the socket's path), and whether over TLS: never credentials.
fn where_(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (TLS)"),
        ConnectionAddr::Unix(path) => path.display().to_string(),
        _ => "redis".to_string(),
    }
}
