//! `graphgate demo`: the Graph simulator and the proxy in one process, with a generated demo app
//! token (known only to the two of them) and a printed demo client key, so a newcomer can try
//! graphgate with curl and no Meta account.
//!
//! It must never print the system-user token or the app secret: only the client key is shown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{self, Active, App, AuthMode, Client, Config, ProofMode, Secret, Waba};
use crate::sim::{self, Access, Sim, SimConfig, SimToken};

pub const DEMO_APP_ID: &str = "1000000000000001";

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The demo's proxy config: one app on the simulator, one client with every right.
pub fn demo_config(
    listen: SocketAddr,
    upstream: &str,
    token: &Secret,
    app_secret: &Secret,
    client_key: &str,
) -> Config {
    Config {
        server: config::Server {
            listen,
            public_url: None,
            max_body: config::DEFAULT_MAX_BODY,
            max_form_body: config::DEFAULT_MAX_FORM_BODY,
            max_rewrite_body: config::DEFAULT_MAX_REWRITE_BODY,
            max_uri: config::DEFAULT_MAX_URI,
            max_headers: config::DEFAULT_MAX_HEADERS,
            max_header_bytes: config::DEFAULT_MAX_HEADER_BYTES,
            shutdown_grace: Duration::from_secs(5),
            tls: None,
            access_log: true,
        },
        upstream: config::Upstream {
            url: upstream
                .parse()
                .expect("the simulator's address is a valid URI"),
            connect_timeout: config::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Duration::from_secs(10),
            pool_idle_timeout: config::DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle_per_host: config::DEFAULT_POOL_MAX_IDLE,
        },
        auth: AuthMode::Keys,
        apps: vec![App {
            name: "demo".into(),
            id: DEMO_APP_ID.into(),
            token: token.clone(),
            app_secret: Some(app_secret.clone()),
            proof: ProofMode::Timestamped,
            wabas: vec![
                Waba {
                    id: sim::seed::WABA_ID.into(),
                    active: Active::Auto,
                    token: None,
                    phone_numbers: vec![sim::seed::PHONE_NUMBER_ID.into()],
                },
                Waba {
                    id: sim::seed::INACTIVE_WABA_ID.into(),
                    active: Active::Auto,
                    token: None,
                    phone_numbers: vec![],
                },
            ],
        }],
        clients: vec![Client {
            name: "demo-client".into(),
            key_sha256: config::key_digest(client_key),
            app: 0,
            wabas: None,
            methods: None,
            allow_no_cache: true,
        }],
        cache: config::Cache::default(),
    }
}

/// Runs the demo until `shutdown` resolves.
pub async fn run(
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = Secret::new(format!("demo-system-user-{}", random_hex(16)));
    let app_secret = Secret::new(random_hex(16));
    let client_key = format!("gg-demo-{}", random_hex(12));

    let sim = Sim::new(SimConfig {
        tokens: vec![SimToken {
            token: token.expose().to_string(),
            app_id: DEMO_APP_ID.into(),
            app_secret: Some(app_secret.expose().to_string()),
            access: Access::All,
        }],
        ..SimConfig::default()
    });
    let sim_listener = TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = sim_listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sim_task = tokio::spawn(sim::serve(sim_listener, sim, async move {
        let _ = stop_rx.await;
    }));

    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let config = demo_config(
        addr,
        &format!("http://{sim_addr}"),
        &token,
        &app_secret,
        &client_key,
    );
    print_banner(addr, sim_addr, &client_key);
    let result = crate::run(listener, config, shutdown).await;
    let _ = stop_tx.send(());
    let _ = sim_task.await;
    result
}

fn print_banner(addr: SocketAddr, sim_addr: SocketAddr, key: &str) {
    let base = format!("http://{addr}");
    let waba = sim::seed::WABA_ID;
    println!(
        r#"
graphgate demo
  proxy       {base}   (forwards to the built-in Graph simulator at http://{sim_addr})
  client key  {key}

Try:
  # 1. The WABA with its templates and phone numbers (our system-user token is injected upstream)
  curl -s '{base}/v19.0/{waba}?fields=id,name,message_templates,phone_numbers' -H 'Authorization: Bearer {key}'

  # 2. Templates, two per page: paging.next points back at graphgate, with no token in it
  curl -s '{base}/v19.0/{waba}/message_templates?limit=2' -H 'Authorization: Bearer {key}'

  # 3. No key: a Graph-shaped 401 (code 190), and nothing reaches the upstream
  curl -s -i '{base}/v19.0/{waba}/phone_numbers'

Stop with Ctrl-C.
"#
    );
}
