//! The `graphgate` binary: parses the command line, loads config, starts tracing, binds, and hands
//! over to the library. Nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use graphgate::config::{Config, ProcessEnv};
use graphgate::telemetry::{self, Format};

#[derive(Parser)]
#[command(
    name = "graphgate",
    version,
    about = "Reverse proxy for Meta's Graph API: token injection, exact per-WABA budgets, response cache"
)]
struct Cli {
    /// Config file (TOML).
    #[arg(
        long,
        global = true,
        env = "GRAPHGATE_CONFIG",
        default_value = "config/graphgate.toml"
    )]
    config: PathBuf,
    /// Log format: JSON lines, text, or auto (text on a terminal, JSON otherwise).
    #[arg(long, global = true, value_enum, default_value = "auto")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy (the default).
    Serve,
    /// Validate the config file and exit 0 (valid) or 2 (with every problem listed).
    CheckConfig,
    /// Start the Graph simulator and the proxy in one process, with a demo app and client. It
    /// runs its own built-in config: `--config` is refused.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin listener (status page, /metrics, /healthz, /readyz) listens.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
    /// Probe this config's admin listener: GET /healthz (or /readyz), exit 0 on a 200, 1 otherwise.
    /// The container image's HEALTHCHECK.
    Healthcheck {
        /// Probe /readyz (with the admin token, if set) instead of /healthz.
        #[arg(long)]
        ready: bool,
        /// Give up after this long (e.g. 2s, 500ms).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Make a new client key: prints the key (give it to the service) and the `key_sha256` line
    /// for its `[[client]]` in the config (only the digest is stored).
    Key,
    /// Run the Graph API simulator alone.
    Sim(graphgate::sim::SimArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let config_given = matches.value_source("config") == Some(ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let format = match cli.log_format {
        LogFormat::Auto => Format::Auto,
        LogFormat::Json => Format::Json,
        LogFormat::Text => Format::Text,
    };
    let command = cli.command.unwrap_or(Command::Serve);
    // Serving reads its thread count from config; the other commands use every core.
    let workers = match &command {
        Command::Serve => Config::load(&cli.config, &ProcessEnv)
            .ok()
            .and_then(|c| c.server.worker_threads),
        // A probe or a key needs no more than one thread.
        Command::Healthcheck { .. } | Command::Key => Some(1),
        _ => None,
    };
    let runtime = match build_runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("graphgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::CheckConfig => match Config::load(&cli.config, &ProcessEnv) {
            Ok(c) => {
                for w in placeholder_warnings(&c).iter().chain(&c.warnings) {
                    eprintln!("{}: warning: {w}", cli.config.display());
                }
                println!(
                    "{}: ok ({} app(s), {} client(s), upstream {})",
                    cli.config.display(),
                    c.apps.len(),
                    c.clients.len(),
                    c.upstream.url
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Serve => {
            let config = match Config::load(&cli.config, &ProcessEnv) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            telemetry::init(format);
            runtime.block_on(async move {
                // The first SIGTERM (or Ctrl-C) starts the drain, a second cuts its delay short.
                // Installed first, so an early one is not the default (an abrupt exit).
                let (stop, hurry) = graphgate::server::signals();
                let listener = match tokio::net::TcpListener::bind(config.server.listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("graphgate: cannot listen on {}: {e}", config.server.listen);
                        return ExitCode::FAILURE;
                    }
                };
                tracing::info!(
                    version = graphgate::metrics::VERSION,
                    revision = graphgate::metrics::GIT_REVISION,
                    listen = %config.server.listen,
                    upstream = %config.upstream.url,
                    apps = config.apps.len(),
                    clients = config.clients.len(),
                    connect_timeout = ?config.upstream.connect_timeout,
                    request_timeout = ?config.upstream.request_timeout,
                    max_body = config.server.max_body,
                    shutdown_grace = ?config.server.shutdown_grace,
                    drain_delay = ?config.server.drain_delay,
                    "graphgate listening"
                );
                // The admin listener is bound here too, so a taken port fails start-up at once.
                let admin = match config.server.admin_listen {
                    None => None,
                    Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => Some(l),
                        Err(e) => {
                            eprintln!(
                                "graphgate: cannot listen on {addr} (server.admin_listen): {e}"
                            );
                            return ExitCode::FAILURE;
                        }
                    },
                };
                for w in placeholder_warnings(&config) {
                    tracing::warn!("{w}");
                }
                let gw = graphgate::Gateway::new(config).reloading_from(&cli.config, ProcessEnv);
                // SIGHUP reloads the config (docs/operations.md, Reload) instead of ending the process.
                tokio::spawn(graphgate::gateway::reload_on_sighup(gw.clone()));
                match graphgate::run_draining(listener, admin, gw, stop, hurry).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("graphgate: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Demo {
            listen,
            admin_listen,
        } => {
            if config_given {
                eprintln!(
                    "graphgate demo: --config is not used: the demo runs its own built-in config \
                     and simulator. To serve a file: graphgate --config {}",
                    cli.config.display()
                );
                return ExitCode::from(2);
            }
            telemetry::init(if matches!(cli.log_format, LogFormat::Auto) {
                Format::Text
            } else {
                format
            });
            runtime.block_on(async move {
                match graphgate::demo::run(listen, admin_listen, graphgate::server::signal()).await
                {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("graphgate demo: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Healthcheck { ready, timeout } => {
            let config = match Config::load(&cli.config, &ProcessEnv) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let probe = graphgate::admin::healthcheck::probe(&config, ready, timeout);
            match runtime.block_on(probe) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("graphgate healthcheck: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Key => {
            // 32 random bytes from the OS-seeded CSPRNG, as hex: as strong as the tokens it stands for.
            let key = format!("gg-{}", hex::encode(rand::random::<[u8; 32]>()));
            let digest = hex::encode(graphgate::config::key_digest(&key));
            println!("# The client key: give it to the service (it sends it where a Graph SDK sends a token).");
            println!("{key}");
            println!("# Its [[client]] line in the config (only the digest is stored):");
            println!("key_sha256 = \"{digest}\"");
            ExitCode::SUCCESS
        }
        Command::Sim(args) => {
            telemetry::init(format);
            let (addr, sim_config) = match args.into_config() {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("graphgate sim: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("graphgate sim: cannot listen on {addr}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                eprintln!(
                    "graphgate sim listening on http://{}",
                    listener
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default()
                );
                let sim = graphgate::sim::Sim::new(sim_config);
                match graphgate::sim::serve(listener, sim, graphgate::server::signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("graphgate sim: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

/// Ids and key digests of the shipped examples (config/graphgate.toml, deploy/graphgate.toml, the
/// README): a config that still holds one was copied and not filled in. The WABA and phone number
/// are the simulator's seed objects, which no real app reaches.
const PLACEHOLDER_APP_IDS: [&str; 2] = ["1234567890123456", "1234567890"];
const PLACEHOLDER_OBJECT_IDS: [&str; 2] = ["102290129340398", "106540352242922"];
const PLACEHOLDER_KEY_DIGESTS: [&str; 2] = [
    "90627e143d783aa76b5ef08996acc6e0262d04d836673ac0031bf6e723ea88e7",
    "8dbf5357a63c4fc0e8eae8b91391cd901d448c693b60b4689a5ed520bb05f4a7",
];

/// Warnings (not errors: the config is valid) for every example placeholder left in `c`.
fn placeholder_warnings(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, app) in c.apps.iter().enumerate() {
        if PLACEHOLDER_APP_IDS.contains(&app.id.as_str()) {
            out.push(format!(
                "app[{i}].id = \"{}\" is the example's placeholder: put your Meta app id",
                app.id
            ));
        }
        for (j, w) in app.wabas.iter().enumerate() {
            if PLACEHOLDER_OBJECT_IDS.contains(&w.id.as_str()) {
                out.push(format!(
                    "app[{i}].waba[{j}].id = \"{}\" is the example's (the simulator's) WABA: put your WABA id",
                    w.id
                ));
            }
            for p in w
                .phone_numbers
                .iter()
                .filter(|p| PLACEHOLDER_OBJECT_IDS.contains(&p.as_str()))
            {
                out.push(format!(
                    "app[{i}].waba[{j}].phone_numbers has \"{p}\", the example's (the simulator's) phone number id"
                ));
            }
        }
    }
    for (k, client) in c.clients.iter().enumerate() {
        let digest = hex::encode(client.key_sha256);
        if PLACEHOLDER_KEY_DIGESTS.contains(&digest.as_str()) {
            out.push(format!(
                "client[{k}].key_sha256 is the example's placeholder, whose key nobody knows: run `graphgate key` and put the line it prints there"
            ));
        }
    }
    out
}

/// One worker thread runs tokio's single-threaded scheduler: on one core it serves more requests
/// than the work-stealing one and keeps the tail short with a thousand connections (measured in
/// docs/benchmarks.md). More threads use the multi-threaded scheduler.
fn build_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let n = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if n <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
    }
}

/// jemalloc instead of glibc's allocator: with a thousand connections each request's allocations
/// land in cache-cold memory, and jemalloc's per-size-class runs kept graphgate's hit rate 10-20%
/// higher there, and its miss rate about 25% higher (docs/benchmarks.md). Only the binary sets it;
/// the library leaves the choice to whoever links it.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
