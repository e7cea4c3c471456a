//! The `wsplug` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wsplug::config::Config;
use wsplug::server::Server;

/// A scriptable WebSocket server.
///
/// With neither --config nor --route, wsplug serves its embedded default configuration
/// (127.0.0.1:8080, a native echo route at /echo).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// A TOML configuration file (see README.md, "Configuration").
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this address instead of the config's, e.g. 0.0.0.0:9000 or [::1]:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Mount a route: PATH=KIND, where KIND is `echo` (repeatable). Added to the config's routes.
    #[arg(long = "route", value_name = "PATH=KIND")]
    routes: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WSPLUG_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsplug: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = match (&cli.config, cli.routes.is_empty()) {
        (Some(path), _) => Config::from_file(path)?,
        (None, true) => Config::embedded_default(),
        (None, false) => Config::empty(),
    };
    for route in &cli.routes {
        config.add_route_arg(route)?;
    }
    if let Some(addr) = cli.listen {
        config.listen = addr;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let server = Server::bind(&config).await?;
        let handle = server.shutdown_handle();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: shutting down");
            handle.shutdown();
        });
        server.run().await
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
