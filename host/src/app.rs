//! The server as a whole: the route table mounted from the config (plugins loaded and started),
//! the listener serving it, and the reloader that swaps changes in live. This is the one place
//! that knows every layer; the layers below know only those beneath them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::config::{Config, RouteKind};
use crate::plugin::{PluginEngine, PluginRoute, RouteSettings};
use crate::reload::{ReloadHandle, Reloader, Trigger};
use crate::server::{Handler, Listener, Route, Routes, ShutdownHandle};

/// A bound, not yet running, server.
pub struct Server {
    listener: Listener,
    /// Applies plugin and config changes while the server runs.
    reloader: Reloader,
    reload_tx: mpsc::UnboundedSender<Trigger>,
    reload_rx: mpsc::UnboundedReceiver<Trigger>,
    /// The admin listener (`admin` in the config), bound with the main one.
    admin: Option<tokio::net::TcpListener>,
}

impl Server {
    /// Mounts the config's routes (loading, checking and starting every plugin) and binds the
    /// listener.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        if let Some(cluster) = &config.cluster {
            crate::topics::nats::install(cluster).await?;
        }
        let routes = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || mount(&config)).await??
        };
        let listener = Listener::bind(config, routes).await?;
        let admin = match config.admin {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin listener (admin = \"{addr}\")"))?,
            ),
            None => None,
        };
        let (reload_tx, reload_rx) = mpsc::unbounded_channel();
        let reloader = Reloader::new(listener.shared(), config.clone(), None, reload_tx.clone());
        Ok(Self { listener, reloader, reload_tx, reload_rx, admin })
    }

    /// Where the admin listener is bound, if the config asked for one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Names the config file the server was started from, so that reloads re-read it.
    pub fn with_config_file(mut self, path: &Path) -> Self {
        self.reloader.set_config_path(path);
        self
    }

    /// Watches the config file and every plugin file for changes and applies them live.
    pub fn watch(&mut self) -> anyhow::Result<()> {
        self.reloader.watch()
    }

    /// A handle that triggers a full reload (what SIGHUP does).
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle(self.reload_tx.clone())
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.listener.shutdown_handle()
    }

    /// Serves until shut down (see [`Listener::run`]), applying reloads meanwhile.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self { listener, reloader, reload_rx, admin, .. } = self;
        let reloading = tokio::spawn(reloader.run(reload_rx));
        let admin = admin.map(|admin| {
            if let Ok(addr) = admin.local_addr() {
                tracing::info!(%addr, "admin listener: /metrics, /healthz, /readyz");
            }
            tokio::spawn(crate::admin::serve(admin, listener.shared().shutdown.clone()))
        });
        // On a worker, not on the thread that called `run` (`block_on`'s): connections are spawned
        // where they are accepted, so a new connection costs no wake-up of another thread.
        let result = match tokio::spawn(listener.run()).await {
            Ok(result) => result,
            Err(e) => Err(anyhow::anyhow!("the listener task failed: {e}")),
        };
        reloading.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
        result
    }
}

/// Builds the route table from a checked config, loading (compiling, checking, instantiating)
/// every plugin. Blocking: call it off the async workers.
fn mount(config: &Config) -> anyhow::Result<Routes> {
    let mut routes = Vec::new();
    for (index, route) in config.routes.iter().enumerate() {
        let r = route.get_ref();
        let file = r.plugin.as_ref().map(|f| crate::reload::normalize(&config.resolve(f)));
        let handler = match (&r.kind, &file) {
            (Some(RouteKind::Echo), _) => Handler::Echo,
            (None, Some(file)) => {
                // The error names the file as resolved, and where the config asked for it.
                let origin = || {
                    let named = r.plugin.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                    format!("route {} (plugin = {named:?}, {})", r.path, config.route_origin(index))
                };
                let plugin =
                    PluginEngine::global().load(file, config.effective_cache_dir().as_deref()).with_context(origin)?;
                tracing::info!(path = %r.path, plugin = %plugin.path.display(), size = plugin.size, compile_ms = plugin.compile_time.as_millis() as u64, cached = plugin.from_cache, "plugin loaded");
                let settings = RouteSettings::new(r, config);
                Handler::Events(Arc::new(PluginRoute::start_blocking(plugin, settings)?))
            }
            (None, None) => anyhow::bail!("route {} has no handler", r.path),
        };
        routes.push(Arc::new(Route::configured(r, handler, file)));
    }
    Ok(Routes::from_routes(routes))
}
