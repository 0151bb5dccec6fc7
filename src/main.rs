//! The `graphgate` binary: parses the command line, loads config, starts tracing, binds, and hands
//! over to the library. Nothing else lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
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
    /// Start the Graph simulator and the proxy in one process, with a demo app and client.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run the Graph API simulator alone.
    Sim(graphgate::sim::SimArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
                let listener = match tokio::net::TcpListener::bind(config.server.listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("graphgate: cannot listen on {}: {e}", config.server.listen);
                        return ExitCode::FAILURE;
                    }
                };
                tracing::info!(
                    listen = %config.server.listen,
                    upstream = %config.upstream.url,
                    apps = config.apps.len(),
                    clients = config.clients.len(),
                    connect_timeout = ?config.upstream.connect_timeout,
                    request_timeout = ?config.upstream.request_timeout,
                    max_body = config.server.max_body,
                    shutdown_grace = ?config.server.shutdown_grace,
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
                let gw = graphgate::Gateway::new(config);
                match graphgate::run_with_admin(listener, admin, gw, graphgate::server::signal())
                    .await
                {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("graphgate: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Demo { listen } => {
            telemetry::init(if matches!(cli.log_format, LogFormat::Auto) {
                Format::Text
            } else {
                format
            });
            runtime.block_on(async move {
                match graphgate::demo::run(listen, graphgate::server::signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("graphgate demo: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
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
