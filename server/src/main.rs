//! `meridian`: the command-line entry point.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meridian_server::{serve, Config, LogFormat, ServeArgs, DEFAULT_LOG_FILTER};
use tracing_subscriber::EnvFilter;

/// glibc's malloc took a quarter of a read's CPU in profiles (short-lived
/// request and response allocations across threads); mimalloc's per-thread
/// free lists cut that (figures in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Meridian: multi-region replicated JSON documents that say how fresh they are.
#[derive(Parser)]
#[command(name = "meridian", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Run a multi-region cluster on this machine (or drive a running one).
    Demo(Box<meridian_server::demo::DemoArgs>),
    /// Exit 0 if a node answers 200 at URL (for container health checks).
    Health {
        /// The URL to probe, e.g. http://127.0.0.1:7070/readyz
        #[arg(long, default_value = "http://127.0.0.1:7070/readyz")]
        url: String,
    },
    /// Make the certificates nodes use to authenticate each other.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    #[command(flatten)]
    Client(meridian_server::cli::ClientCommand),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a cluster CA (ca.pem, ca.key) in a new directory.
    Init {
        /// Directory to create.
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Make whatever is missing: the CA, a certificate per node, and an admin
    /// token file (for one-shot setup jobs; never overwrites).
    Ensure {
        /// Directory for ca.pem, ca.key, node certificates and admin.token.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Node names (repeatable, or comma-separated).
        #[arg(long = "node", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
    /// Issue a node certificate (NAME.pem, NAME.key) signed by the CA in DIR.
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Node name; by default a node uses the certificate named after its region.
        #[arg(long)]
        node: String,
    },
}

fn ensure_certs(dir: &std::path::Path, nodes: &[String]) -> Result<(), meridian_server::certs::CertError> {
    if !dir.join("ca.pem").exists() {
        meridian_server::certs::init(dir)?;
        println!("cluster CA created in {}", dir.display());
    }
    for node in nodes {
        if !dir.join(format!("{node}.pem")).exists() {
            meridian_server::certs::issue(dir, node)?;
            println!("certificate issued for {node}");
        }
    }
    let token = dir.join("admin.token");
    if !token.exists() {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| meridian_server::certs::CertError::Io {
            action: "making an admin token",
            path: token.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&token, text).map_err(|source| meridian_server::certs::CertError::Io {
            action: "writing",
            path: token.clone(),
            source,
        })?;
        println!("admin token written to {}", token.display());
    }
    println!("certificates ready in {}", dir.display());
    Ok(())
}

fn run_certs(command: CertsCommand) -> ExitCode {
    let result = match command {
        CertsCommand::Init { dir } => meridian_server::certs::init(&dir).map(|report| {
            println!("cluster CA created: {} (key: {})", report.ca_cert.display(), report.ca_key.display());
            println!("next: meridian certs issue --dir {} --node <region>", dir.display());
        }),
        CertsCommand::Ensure { dir, nodes } => ensure_certs(&dir, &nodes),
        CertsCommand::Issue { dir, node } => meridian_server::certs::issue(&dir, &node).map(|report| {
            println!("certificate for {}: {} (key: {})", report.node, report.cert.display(), report.key.display());
            println!("start the node with: meridian serve --region {} --certs {}", report.node, dir.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meridian: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    // `RUST_LOG`, when set, replaces the default entirely (see DEFAULT_LOG_FILTER).
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colour only for a person at a terminal; files and collectors get plain text.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Certs { command } => run_certs(command),
        Command::Client(command) => meridian_server::cli::run(command),
        Command::Health { url } => {
            let rest = url.trim_start_matches("http://");
            let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
            match meridian_server::http_client::request(
                host,
                "GET",
                &path,
                &[],
                None,
                std::time::Duration::from_secs(3),
            ) {
                Ok(reply) if reply.status == 200 => ExitCode::SUCCESS,
                Ok(reply) => {
                    eprintln!("meridian health: {url} answered {}", reply.status);
                    ExitCode::FAILURE
                }
                Err(err) => {
                    eprintln!("meridian health: {url}: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => ExitCode::from(meridian_server::demo::run(*args) as u8),
        Command::Serve(args) => {
            let config = match Config::resolve(*args) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("meridian: {err}");
                    return ExitCode::from(2);
                }
            };
            init_logging(config.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("meridian: cannot start the async runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async {
                let listener = match tokio::net::TcpListener::bind(config.listen_http).await {
                    Ok(listener) => listener,
                    Err(err) => {
                        eprintln!("meridian: cannot listen on {} (listen_http): {err}", config.listen_http);
                        return ExitCode::FAILURE;
                    }
                };
                let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                tracing::info!(
                    http = %address,
                    region = %config.region,
                    data_dir = %config.data_dir.display(),
                    replication = if config.replication.is_some() { "on" } else { "off: running alone (no --certs, so no peer listener)" },
                    "meridian listening"
                );
                match serve(config, listener, shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(err) => {
                        eprintln!("meridian: {err}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}
