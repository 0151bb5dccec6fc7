//! Shared set-up of the fuzz targets: one config, gateway and runtime per process (built once,
//! never per input), and the splitting of one input into parts. Nothing here listens on a port;
//! the upstream is a closed local port, so a request that gets that far fails fast.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use graphgate::config::Config;
use graphgate::Gateway;

pub const TOKEN: &str = "EAAGfuzzSYSTEMtoken0001";
pub const APP_SECRET: &str = "fuzzappsecret0001";
pub const CLIENT_KEY: &str = "ggkey-fuzz-client-0001";
pub const WABA: &str = "102290129340398";
pub const WEBHOOK_PATH: &str = "/meta/webhooks";

pub fn env() -> HashMap<String, String> {
    HashMap::from([
        ("FUZZ_TOKEN".to_string(), TOKEN.to_string()),
        ("FUZZ_APP_SECRET".to_string(), APP_SECRET.to_string()),
        ("FUZZ_CLIENT_KEY".to_string(), CLIENT_KEY.to_string()),
        ("FUZZ_VERIFY".to_string(), "fuzz-verify-token".to_string()),
    ])
}

/// One app with a secret, one WABA, a client, webhooks without subscribers; upstream on port 9.
pub const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "off"
access_log = false

[upstream]
url = "http://127.0.0.1:9"
connect_timeout = "100ms"
request_timeout = "200ms"

[webhooks]
path = "/meta/webhooks"
verify_token_env = "FUZZ_VERIFY"

[[app]]
name = "main"
id = "1000000000000001"
token_env = "FUZZ_TOKEN"
app_secret_env = "FUZZ_APP_SECRET"

[[app.waba]]
id = "102290129340398"
active = true

[[client]]
name = "fuzz"
key_env = "FUZZ_CLIENT_KEY"
"#;

pub fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        Config::from_toml(CONFIG, "fuzz.toml", Path::new("."), &env())
            .unwrap_or_else(|e| panic!("the fuzz config does not load: {e}"))
    })
}

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static R: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    R.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

pub fn gateway() -> &'static Gateway {
    static G: OnceLock<Gateway> = OnceLock::new();
    G.get_or_init(|| {
        let _in = runtime().enter();
        Gateway::new(config().clone())
    })
}

/// Splits `data` at the first `sep` bytes into `n` parts (the last takes the rest); missing parts
/// are empty.
pub fn parts(data: &[u8], sep: u8, n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |b| *b == sep).collect();
    out.resize(n, &[]);
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
