//! `meridian`: the command-line entry point.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meridian_server::{serve, Config, LogFormat, ServeArgs};
use tracing_subscriber::EnvFilter;

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
    Serve(ServeArgs),
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
        Command::Serve(args) => {
            let config = match Config::resolve(args) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("meridian: {err}");
                    return ExitCode::from(2);
                }
            };
            init_logging(config.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
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
                    "meridian listening; running alone (no --certs: no peer listener, no replication)"
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
