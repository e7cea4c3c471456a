//! The `wsplug` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wsplug::Server;
use wsplug::config::Config;

/// mimalloc returns freed memory to the OS within milliseconds (glibc's malloc keeps most of a
/// spike's peak: RSS stayed at 25–50% of it), and is faster at the many small allocations of a
/// message path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. With them (the kernel's `always`), the
/// first touch of a fresh region zeroes 2 MiB at once: in a connection storm a third of the
/// server's CPU went to zeroing pages (`clear_page_erms`), and idle connections on a plugin route
/// cost 3.9 KiB each instead of 3.6. Measured (`cargo bench --bench efficiency -- idle`): accepts
/// per CPU-second 0.67-0.76x fastwebsockets' with them, 0.93-1.00x without; the echo scenarios
/// did not change.
fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches none of our memory; on failure
    // (an old kernel) the process simply keeps the system's setting.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// A scriptable WebSocket server whose behaviour lives in sandboxed WebAssembly plugins.
///
/// With neither --config nor --route, wsplug serves its embedded default configuration:
/// 127.0.0.1:8080 with the chat page at /, the echo plugin at /echo, the chat plugin at /chat and
/// the native echo at /native-echo.
#[derive(Parser, Debug)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// A TOML configuration file (see README.md, "Configuration").
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this address instead of the config's, e.g. 0.0.0.0:9000 or [::1]:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Mount a route (repeatable), added to the config's routes: PATH=FILE.wasm for a plugin
    /// (e.g. /chat=chat.wasm) or PATH=echo for the native echo.
    #[arg(long = "route", value_name = "PATH=PLUGIN")]
    routes: Vec<String>,
    /// Do not watch plugin and config files; reload only on SIGHUP.
    #[arg(long)]
    no_watch: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Check that a file is a plugin wsplug can run: that it implements the world, what it
    /// imports and how the sandbox treats each import, its size and compile time. Exits 1 if not.
    /// The compiled plugin is stored in the default compile cache, for the server to reuse.
    Check {
        /// The component to check.
        file: PathBuf,
    },
    /// Run a scripted conversation with a plugin, without a server: connections open, send
    /// messages and close, the plugin is reloaded to another file; each step's actions are
    /// printed and compared with the script's expected lines. Exits 1 with a diff on a difference.
    /// The script's format: `wsplug test --help` and README.md, "Testing a plugin".
    Test {
        /// The component to run.
        plugin: PathBuf,
        /// The script.
        script: PathBuf,
        /// Write the actual lines into the script as its expectations instead of comparing.
        #[arg(long)]
        bless: bool,
    },
    /// Write a new plugin project into a folder of its own (./NAME unless --dir names one): the
    /// starter source, the SDK of the language, the contract, a README and `build.sh`, the one
    /// command that builds NAME.wasm (installing the language's toolchain on first use).
    New {
        /// The plugin's name: a lower-case letter, then lower-case letters, digits and dashes.
        name: String,
        /// The language.
        #[arg(long, value_enum)]
        lang: wsplug::scaffold::Lang,
        /// The folder to write (must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Talk to a WebSocket route: each line of stdin is sent as a text message, each message
    /// received is printed as a line; end stdin (Ctrl-D) to close. E.g.
    /// `wsplug connect ws://127.0.0.1:8080/echo`.
    Connect {
        /// The route's URL: ws://HOST:PORT/PATH?QUERY.
        url: String,
        /// Offer this subprotocol (repeatable), e.g. --protocol chat.v1.
        #[arg(long = "protocol", value_name = "NAME")]
        protocols: Vec<String>,
    },
}

fn main() -> ExitCode {
    without_transparent_huge_pages();
    let cli = Cli::parse();
    // A scripted run prints its own report: the plugin's log lines (each checkpoint's, ...) only
    // when asked for with WSPLUG_LOG.
    let default_level = if matches!(cli.command, Some(Cmd::Test { .. })) { "warn" } else { "info" };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WSPLUG_LOG").unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr);
    match std::env::var("WSPLUG_LOG_FORMAT").as_deref() {
        // One JSON object per line, for a log pipeline.
        Ok("json") => logs.json().init(),
        // Colours for a person at a terminal, plain text for a log file or a journal.
        other => {
            logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
            if let Ok(other) = other.map(str::to_owned)
                && other != "text"
            {
                tracing::warn!("WSPLUG_LOG_FORMAT={other:?} is neither \"json\" nor \"text\": logging plain text");
            }
        }
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsplug: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Cmd::Check { file }) = &cli.command {
        // The compiled artefact goes to the same cache the server uses by default, so that the
        // server does not compile this file again.
        let cache = wsplug::plugin::engine::default_cache_dir();
        let plugin = wsplug::plugin::PluginEngine::global().load(file, cache.as_deref())?;
        // Instantiating runs the component's start-up code under the default sandbox too, and each
        // export is called once, as a short connection would.
        wsplug::plugin::instance::PluginInstance::probe_blocking(&plugin, &Default::default()).map_err(|e| {
            anyhow::anyhow!(
                "plugin {}: {e} (called once as a connection that opens, says one line and closes)",
                file.display()
            )
        })?;
        print!("{}", wsplug::plugin::check_report(&plugin));
        return Ok(());
    }
    if let Some(Cmd::Test { plugin, script, bless }) = &cli.command {
        let outcome = wsplug::plugin::script::run(plugin, script, *bless)?;
        print!("{}", outcome.report);
        if *bless {
            println!("{}: wrote the lines of {} steps", script.display(), outcome.steps);
        } else if outcome.failed > 0 {
            anyhow::bail!("{}: {} of {} steps differ from the script", script.display(), outcome.failed, outcome.steps);
        } else {
            println!("{}: {} steps as expected", script.display(), outcome.steps);
        }
        return Ok(());
    }
    if let Some(Cmd::New { name, lang, dir }) = &cli.command {
        let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
        let created = wsplug::scaffold::create(name, *lang, &dir)?;
        let shown = created.dir.display();
        println!("created {shown}/: a {lang} plugin, {} files (see {shown}/README.md)", created.files);
        println!("build it, then serve it:");
        println!("  {shown}/build.sh");
        println!("  wsplug --route /{name}={shown}/{name}.wasm");
        println!("and talk to it (in another terminal):");
        println!("  wsplug connect ws://127.0.0.1:8080/{name}");
        return Ok(());
    }
    if let Some(Cmd::Connect { url, protocols }) = &cli.command {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return runtime.block_on(wsplug::connect::run(url, protocols));
    }
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
        let mut server = Server::bind(&config).await?;
        if let Some(path) = &cli.config {
            server = server.with_config_file(path);
        }
        if !cli.no_watch {
            server.watch()?;
        }
        let reload = server.reload_handle();
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("SIGHUP handler");
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration and every plugin");
                reload.reload_all();
            }
        });
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
