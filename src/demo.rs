//! `graphgate demo`: the Graph simulator and the proxy in one process, with a generated demo app
//! token (known only to the two of them) and a printed demo client key, so a newcomer can try
//! graphgate with curl and no Meta account. The admin listener (status page, `/metrics`,
//! `/healthz`, `/readyz`) is served beside the proxy, so there is something to look at.
//!
//! It must never print the system-user token or the app secret: only the client key is shown.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use tokio::net::TcpListener;

use crate::config::{Config, Secret};
use crate::sim::{self, Access, Sim, SimConfig, SimToken};

pub const DEMO_APP_ID: &str = "1000000000000001";

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The demo's proxy config: one app on the simulator, one client with every right. It goes through
/// the same parser and validation as a config file; the secrets come from a private environment.
pub fn demo_config(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    upstream: &str,
    token: &Secret,
    app_secret: &Secret,
    client_key: &str,
) -> Config {
    let waba = sim::seed::WABA_ID;
    let phone = sim::seed::PHONE_NUMBER_ID;
    let inactive = sim::seed::INACTIVE_WABA_ID;
    let text = format!(
        r#"
[server]
listen = "{listen}"
admin_listen = "{admin_listen}"
shutdown_grace = "5s"
drain_delay = "0s"

[upstream]
url = "{upstream}"
request_timeout = "10s"

[[app]]
name = "demo"
id = "{DEMO_APP_ID}"
token_env = "DEMO_TOKEN"
app_secret_env = "DEMO_APP_SECRET"

[[app.waba]]
id = "{waba}"
active = "auto"
phone_numbers = ["{phone}"]

[[app.waba]]
id = "{inactive}"
active = "auto"

[[client]]
name = "demo-client"
key_env = "DEMO_CLIENT_KEY"
"#
    );
    let env: HashMap<String, String> = HashMap::from([
        ("DEMO_TOKEN".to_string(), token.expose().to_string()),
        (
            "DEMO_APP_SECRET".to_string(),
            app_secret.expose().to_string(),
        ),
        ("DEMO_CLIENT_KEY".to_string(), client_key.to_string()),
    ]);
    Config::from_toml(&text, "demo (built in)", Path::new("."), &env)
        .expect("the built-in demo config is valid")
}

/// Runs the demo until `shutdown` resolves: the proxy on `listen`, the admin listener on
/// `admin_listen`.
pub async fn run(
    listen: SocketAddr,
    admin_listen: SocketAddr,
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
    let admin = TcpListener::bind(admin_listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {admin_listen} (--admin-listen): {e}"),
        )
    })?;
    let admin_addr = admin.local_addr()?;
    let config = demo_config(
        addr,
        admin_addr,
        &format!("http://{sim_addr}"),
        &token,
        &app_secret,
        &client_key,
    );
    print_banner(addr, admin_addr, sim_addr, &client_key);
    tracing::info!(
        version = crate::metrics::VERSION,
        revision = crate::metrics::GIT_REVISION,
        "graphgate demo"
    );
    let gw = crate::Gateway::new(config);
    let result = crate::run_with_admin(listener, Some(admin), gw, shutdown).await;
    let _ = stop_tx.send(());
    let _ = sim_task.await;
    result
}

fn print_banner(addr: SocketAddr, admin: SocketAddr, sim_addr: SocketAddr, key: &str) {
    let base = format!("http://{addr}");
    let admin = format!("http://{admin}");
    let waba = sim::seed::WABA_ID;
    println!(
        r#"
graphgate demo
  proxy       {base}   (forwards to the built-in Graph simulator at http://{sim_addr})
  admin       {admin}   (status page at {admin}/admin; /metrics, /healthz, /readyz)
  client key  {key}

Try:
  # 1. The WABA with its templates and phone numbers (our system-user token is injected upstream)
  curl -s '{base}/v19.0/{waba}?fields=id,name,message_templates,phone_numbers' -H 'Authorization: Bearer {key}'

  # 2. Templates, two per page: paging.next points back at graphgate, with no token in it
  curl -s '{base}/v19.0/{waba}/message_templates?limit=2' -H 'Authorization: Bearer {key}'

  # 3. No key: a Graph-shaped 401 (code 190), and nothing reaches the upstream
  curl -s -i '{base}/v19.0/{waba}/phone_numbers'

  # 4. What graphgate saw: budgets, refusals, cache (open {admin}/admin in a browser for the page)
  curl -s '{admin}/admin/limits'
  curl -s '{admin}/metrics' | grep -E '^graphgate_(requests|cache_requests|bucket_used)'

Stop with Ctrl-C.
"#
    );
}
