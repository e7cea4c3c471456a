//! Hot reload: plugin files and the config file are watched and swapped in live, without a restart,
//! without dropping a connection, and without losing or reordering a message.
//!
//! - A watcher (crate `notify`) watches the directories that hold the config file and every plugin
//!   file it names, so that every way a file really changes is seen: written in place, truncated then
//!   written, written elsewhere then renamed over, deleted and recreated. Only events on the files
//!   the config names count (a log written beside a plugin is ignored). A file renamed into place,
//!   or closed by its writer, is complete: it is reloaded at once. Other events (a file created or
//!   written and still open) wait until that file has been quiet for [`DEBOUNCE`], and never more
//!   than [`MAX_DEBOUNCE`] after the first, so a file written without end cannot postpone reloads.
//! - A plugin file whose content hash is unchanged is left alone. A changed one is compiled and
//!   checked off the async workers; only a good version is handed to the route's instances, each
//!   swapped while its slot is held (see `plugin::route`): events before it go to the old version,
//!   events after it to the new one, and live connections are re-attached (`on-open`, `resumed: true`),
//!   with the plugin's state handed over when both versions speak the `state` interface.
//! - A broken version (not Wasm, wrong world, a trap when instantiated or restored) is refused and
//!   logged with the file and the reason; the running version keeps serving and the next write is
//!   picked up. A deleted plugin file keeps the last good version serving, with a warning.
//! - A changed config is checked as a whole (every plugin it names is loaded first) and refused as a
//!   whole if anything is wrong. Otherwise new routes are mounted, removed routes' connections are
//!   closed with 1001, and changed routes are swapped like plugins (a route whose `instances` or
//!   kind changes is replaced, its connections closed with 1012 so that clients reconnect).
//! - SIGHUP (see `main.rs`) re-reads everything through [`ReloadHandle::reload_all`], for
//!   deployments that do not want file watching.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::Watcher as _;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::plugin::{LoadedPlugin, PluginEngine, PluginRoute, RouteSettings};
use crate::protocol::{CloseCode, CloseFrame};
use crate::server::{Handler, Live, Route, Routes, Shared};

/// How long a file still being written must be quiet before it is reloaded.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// The longest a reload waits for files being written, from the first event.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// What asks for a reload.
#[derive(Debug)]
pub(crate) enum Trigger {
    /// These paths changed (from the watcher); `complete`: the change is whole (renamed into
    /// place, or closed by its writer), nothing more is coming.
    Changed { paths: Vec<PathBuf>, complete: bool },
    /// Re-read the config and every plugin (SIGHUP).
    All,
}

/// The changes gathered for one reload.
#[derive(Default)]
struct Pending {
    all: bool,
    /// Changed files the config names, and whether each is complete.
    files: HashMap<PathBuf, bool>,
}

impl Pending {
    /// Whether a changed file may still be mid-write.
    fn waiting(&self) -> bool {
        !self.all && self.files.values().any(|complete| !complete)
    }
}

/// Asks a running server to reload.
#[derive(Clone)]
pub struct ReloadHandle(pub(crate) mpsc::UnboundedSender<Trigger>);

impl ReloadHandle {
    /// Re-reads the config file (if the server has one) and every plugin file.
    pub fn reload_all(&self) {
        let _ = self.0.send(Trigger::All);
    }
}

/// Owns the watcher and applies changes to the server's live routes.
pub(crate) struct Reloader {
    shared: Arc<Shared>,
    config: Config,
    config_path: Option<PathBuf>,
    tx: mpsc::UnboundedSender<Trigger>,
    watcher: Option<notify::RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    /// The files whose changes count: the config file and its plugin files, normalized (the
    /// watcher reports paths under the canonical directories it watches, so they compare as is).
    relevant: HashSet<PathBuf>,
}

impl Reloader {
    pub fn new(
        shared: Arc<Shared>,
        config: Config,
        config_path: Option<PathBuf>,
        tx: mpsc::UnboundedSender<Trigger>,
    ) -> Self {
        Self {
            shared,
            config,
            config_path: config_path.map(|p| normalize(&p)),
            tx,
            watcher: None,
            watched: HashSet::new(),
            relevant: HashSet::new(),
        }
    }

    pub fn set_config_path(&mut self, path: &Path) {
        self.config_path = Some(normalize(path));
    }

    /// Starts watching the config file's and the plugins' directories.
    pub fn watch(&mut self) -> anyhow::Result<()> {
        let tx = self.tx.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            use notify::EventKind::{Access, Modify};
            use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
            match event {
                Ok(event) => {
                    let complete = matches!(
                        event.kind,
                        Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
                            | Access(AccessKind::Close(AccessMode::Write))
                    );
                    if complete || !matches!(event.kind, Access(_)) {
                        let _ = tx.send(Trigger::Changed { paths: event.paths, complete });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "file watcher error"),
            }
        })?;
        self.watcher = Some(watcher);
        self.rewatch();
        Ok(())
    }

    /// Watches exactly the directories the current config needs.
    fn rewatch(&mut self) {
        let tls_files = self.shared.tls.iter().flat_map(|t| t.files().map(normalize));
        self.relevant =
            plugin_files(&self.config).into_iter().chain(self.config_path.clone()).chain(tls_files).collect();
        let Some(watcher) = self.watcher.as_mut() else { return };
        // The directories of exactly those files.
        let wanted: HashSet<PathBuf> = self.relevant.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect();
        for dir in self.watched.difference(&wanted) {
            let _ = watcher.unwatch(dir);
        }
        for dir in wanted.difference(&self.watched) {
            match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => tracing::info!(dir = %dir.display(), "watching for plugin and config changes"),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch this directory: reload with SIGHUP")
                }
            }
        }
        self.watched = wanted;
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Trigger>) {
        while let Some(first) = rx.recv().await {
            let mut pending = Pending::default();
            if !self.gather(&mut pending, first) {
                continue; // not a file the config names: no reload, no wait
            }
            let cap = tokio::time::Instant::now() + MAX_DEBOUNCE;
            let mut quiet_at = tokio::time::Instant::now() + DEBOUNCE;
            loop {
                // Take what is already queued (the rest of a rename's events) without waiting.
                while let Ok(t) = rx.try_recv() {
                    if self.gather(&mut pending, t) {
                        quiet_at = tokio::time::Instant::now() + DEBOUNCE;
                    }
                }
                if !pending.waiting() {
                    break;
                }
                match tokio::time::timeout_at(quiet_at.min(cap), rx.recv()).await {
                    Ok(Some(t)) => {
                        if self.gather(&mut pending, t) {
                            quiet_at = tokio::time::Instant::now() + DEBOUNCE;
                        }
                    }
                    Ok(None) => return,
                    Err(_) => break, // quiet, or waited long enough
                }
            }
            let tls_changed = self.shared.tls.as_ref().is_some_and(|t| {
                pending.all || t.files().into_iter().any(|f| pending.files.contains_key(&normalize(f)))
            });
            if tls_changed {
                self.reload_tls();
            }
            if pending.all || self.config_path.as_ref().is_some_and(|c| pending.files.contains_key(c)) {
                self.reload_config().await;
            } else {
                let files: Vec<PathBuf> =
                    plugin_files(&self.config).into_iter().filter(|f| pending.files.contains_key(f)).collect();
                for file in files {
                    self.reload_plugin_file(&file).await;
                }
            }
        }
    }

    /// Adds a trigger's changes to `pending`, keeping only the files the config names (the config
    /// file and its plugins). True when it changed anything.
    fn gather(&self, pending: &mut Pending, trigger: Trigger) -> bool {
        match trigger {
            Trigger::All => {
                pending.all = true;
                true
            }
            Trigger::Changed { paths, complete } => {
                let mut relevant = false;
                for path in paths {
                    if self.relevant.contains(&path) {
                        // The latest event decides: a file written again after a rename is not
                        // complete until that writer is done too.
                        pending.files.insert(path, complete);
                        relevant = true;
                    }
                }
                relevant
            }
        }
    }

    /// Loads the TLS certificate and key again (new connections get them; open ones keep theirs).
    fn reload_tls(&self) {
        let Some(tls) = &self.shared.tls else { return };
        match tls.reload() {
            Ok(()) => {
                tracing::info!(cert = %tls.files()[0].display(), "TLS certificate reloaded");
                crate::metrics::metrics().reload(true);
            }
            Err(e) => {
                tracing::error!("TLS certificate reload refused: {e:#}; the previous certificate stays in service");
                crate::metrics::metrics().reload(false);
            }
        }
    }

    /// Swaps a changed plugin file into every route that uses it.
    async fn reload_plugin_file(&self, file: &Path) {
        let picked_up = Instant::now();
        let live = self.shared.live();
        let routes: Vec<&Arc<Route>> =
            live.routes.iter().filter(|r| r.plugin_file().is_some_and(|f| f == file)).collect();
        let Some(loaded) = load_if_changed(
            file,
            routes.iter().map(|r| plugin_of(r).expect("plugin route")),
            self.config.effective_cache_dir(),
        )
        .await
        else {
            return;
        };
        for route in routes {
            let plugin = plugin_of(route).expect("plugin route");
            swap(&route.path, plugin, loaded.clone(), None, picked_up).await;
        }
    }

    /// Re-reads the config file and applies the difference, or refuses it as a whole.
    async fn reload_config(&mut self) {
        let ok = self.apply_config().await;
        crate::metrics::metrics().reload(ok);
    }

    /// [`Reloader::reload_config`]'s work: whether the new configuration is in service.
    async fn apply_config(&mut self) -> bool {
        let new = match &self.config_path {
            Some(path) => {
                let path = path.clone();
                match tokio::task::spawn_blocking(move || Config::from_file(&path)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tracing::error!("config reload refused: {e}; the running configuration stays");
                        return false;
                    }
                    Err(e) => {
                        tracing::error!("config reload failed: {e}");
                        return false;
                    }
                }
            }
            None => self.config.clone(),
        };
        if new.listen != self.config.listen {
            tracing::warn!(running = %self.config.listen, wanted = %new.listen, "a new listen address takes a restart; still listening on the old one");
        }
        if new.limits != self.config.limits {
            tracing::warn!("[limits] changes take a restart; the running limits stay");
        }
        if new.tls != self.config.tls || new.admin != self.config.admin {
            tracing::warn!("`tls` and `admin` changes take a restart (the certificate files themselves reload live)");
        }
        if new.cluster != self.config.cluster {
            tracing::warn!("[cluster] changes take a restart; this node stays on its broker");
        }

        // Plan against the running routes: keep, swap, replace, mount, remove. Every plugin the new
        // config names is loaded (compiled, checked) before anything changes.
        let picked_up = Instant::now();
        let live = self.shared.live();
        let mut loaded: HashMap<PathBuf, Option<LoadedPlugin>> = HashMap::new();
        for route in &new.routes {
            let r = route.get_ref();
            let Some(file) = r.plugin.as_ref().map(|f| normalize(&new.resolve(f))) else { continue };
            if loaded.contains_key(&file) {
                continue;
            }
            let running =
                live.routes.iter().filter(|x| x.plugin_file().is_some_and(|f| f == file)).filter_map(|x| plugin_of(x));
            let running: Vec<&PluginRoute> = running.collect();
            // A file some route already serves is compiled only if its content changed.
            let result = if running.is_empty() {
                load(&file, new.effective_cache_dir()).await.map(Some)
            } else {
                load_if_changed_checked(&file, running.iter().copied(), new.effective_cache_dir()).await
            };
            match result {
                Ok(l) => {
                    loaded.insert(file, l);
                }
                Err(e) => {
                    tracing::error!("config reload refused: {e:#}; the running configuration stays");
                    return false;
                }
            }
        }

        let mut routes = Vec::new();
        let mut swaps = Vec::new();
        let mut retired = Vec::new();
        for route in &new.routes {
            let r = route.get_ref();
            let file = r.plugin.as_ref().map(|f| normalize(&new.resolve(f)));
            let settings = RouteSettings::new(r, &new);
            let old = live.routes.get(&r.path).cloned();
            let reusable = old.as_ref().is_some_and(|o| match (plugin_of(o), &file) {
                // History and presence belong to the hub: a change of them makes the route anew.
                (Some(p), Some(_)) => p.instances() == r.instances && p.settings().topics == r.topics,
                (None, None) => o.subprotocols == r.subprotocols,
                _ => false,
            });
            match (old, reusable) {
                (Some(old), true) => {
                    if let (Some(plugin_route), Some(file)) = (plugin_of(&old), &file) {
                        let plugin = loaded.get(file).cloned().flatten();
                        let file_changed = old.plugin_file().as_deref() != Some(file.as_path());
                        let settings_changed = plugin_route.settings() != settings;
                        if plugin.is_some() || file_changed || settings_changed {
                            let plugin = plugin.unwrap_or_else(|| plugin_route.current());
                            swaps.push((old.clone(), plugin, settings, file.clone()));
                        }
                    }
                    old.set_connection_limits(r.connection.clone());
                    old.set_deflate(r.deflate.as_ref().and_then(|d| d.config()));
                    routes.push(old);
                }
                (old, _) => {
                    let handler = match &file {
                        None => Handler::Echo,
                        Some(f) => {
                            let plugin = match loaded.get(f).cloned().flatten() {
                                Some(p) => p,
                                None => match load(f, new.effective_cache_dir()).await {
                                    Ok(p) => p,
                                    Err(e) => {
                                        tracing::error!(
                                            "config reload refused: {e:#}; the running configuration stays"
                                        );
                                        return false;
                                    }
                                },
                            };
                            match PluginRoute::start(plugin, settings).await {
                                Ok(p) => Handler::Events(Arc::new(p)),
                                Err(e) => {
                                    tracing::error!("config reload refused: {e:#}; the running configuration stays");
                                    return false;
                                }
                            }
                        }
                    };
                    if let Some(old) = old {
                        retired.push((
                            old,
                            CloseFrame {
                                code: CloseCode::SERVICE_RESTART,
                                reason: "route reconfigured: reconnect".into(),
                            },
                        ));
                    }
                    routes.push(Arc::new(Route::configured(r, handler, file)));
                }
            }
        }
        for old in live.routes.iter() {
            if !new.routes.iter().any(|r| r.get_ref().path == old.path) {
                retired.push((old.clone(), CloseFrame { code: CloseCode::GOING_AWAY, reason: "route removed".into() }));
            }
        }

        // Apply: the new table first (new connections see it at once), then swaps and closes.
        let static_dir = new.static_dir.as_ref().map(|d| new.resolve(d));
        self.shared.set_live(Live { routes: Routes::from_routes(routes), static_dir });
        for (route, plugin, settings, file) in swaps {
            let plugin_route = plugin_of(&route).expect("plugin route");
            if swap(&route.path, plugin_route, plugin, Some(settings), picked_up).await {
                route.set_plugin_file(file);
            }
        }
        for (route, frame) in retired {
            tracing::info!(path = %route.path, reason = %frame.reason, "closing the route's connections");
            route.retire(frame);
        }
        tracing::info!(config = ?self.config_path, "configuration reloaded");
        self.config = new;
        self.rewatch();
        true
    }
}

/// The plugin route behind a route, if a plugin serves it.
pub(crate) fn plugin_of(route: &Route) -> Option<&PluginRoute> {
    route.events()?.as_any().downcast_ref::<PluginRoute>()
}

/// Hands a checked plugin to a route's instances; logs the outcome, with the time since the change
/// was picked up (`ms`: compiling included) and the swap's own share. True when every instance
/// took it.
async fn swap(
    path: &str,
    route: &PluginRoute,
    plugin: LoadedPlugin,
    settings: Option<RouteSettings>,
    picked_up: Instant,
) -> bool {
    let started = Instant::now();
    let file = plugin.path.display().to_string();
    let compile_ms = plugin.compile_time.as_millis() as u64;
    match route.swap(plugin, settings).await {
        Ok(()) => {
            let (ms, swap_ms) = (picked_up.elapsed().as_millis() as u64, started.elapsed().as_millis() as u64);
            tracing::info!(route = path, plugin = %file, ms, compile_ms, swap_ms, "plugin reloaded: new version in service");
            crate::metrics::metrics().reload(true);
            true
        }
        Err(e) => {
            tracing::error!(route = path, plugin = %file, "plugin reload refused: {e}; the running version keeps serving");
            crate::metrics::metrics().reload(false);
            false
        }
    }
}

/// Loads a plugin file off the async workers.
async fn load(file: &Path, cache: Option<PathBuf>) -> anyhow::Result<LoadedPlugin> {
    let file = file.to_path_buf();
    tokio::task::spawn_blocking(move || PluginEngine::global().load(&file, cache.as_deref())).await?
}

/// Reads a plugin file and, if its content differs from what `running` serves, loads it. Logs and
/// returns `None` when there is nothing to swap (unchanged, deleted, or broken).
async fn load_if_changed<'a>(
    file: &Path,
    running: impl Iterator<Item = &'a PluginRoute>,
    cache: Option<PathBuf>,
) -> Option<LoadedPlugin> {
    match load_if_changed_checked(file, running, cache).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("plugin reload refused: {e:#}; the running version keeps serving");
            crate::metrics::metrics().reload(false);
            None
        }
    }
}

async fn load_if_changed_checked<'a>(
    file: &Path,
    running: impl Iterator<Item = &'a PluginRoute>,
    cache: Option<PathBuf>,
) -> anyhow::Result<Option<LoadedPlugin>> {
    let read = if crate::builtin::name_of(file).is_some() {
        crate::plugin::engine::read_plugin(file).map(|b| b.into_owned()).map_err(std::io::Error::other)
    } else {
        tokio::fs::read(file).await
    };
    let bytes = match read {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(plugin = %file.display(), "plugin file removed: the last good version keeps serving");
            return Ok(None);
        }
        Err(e) => anyhow::bail!("plugin {}: cannot read the file: {e}", file.display()),
    };
    let hash = crate::plugin::engine::content_hash(&bytes);
    let hashes: Vec<u64> = running.map(|p| p.current().hash).collect();
    if !hashes.is_empty() && hashes.iter().all(|h| *h == hash) {
        tracing::debug!(plugin = %file.display(), "plugin file touched but unchanged: no swap");
        return Ok(None);
    }
    let file = file.to_path_buf();
    let name = crate::plugin::engine::plugin_name(&file);
    // Compiling can take seconds (a JavaScript or Python component): say so before, not only after.
    tracing::info!(plugin = %file.display(), bytes = bytes.len(), "new version: compiling (or loading it from the compile cache)");
    let loaded =
        tokio::task::spawn_blocking(move || PluginEngine::global().load_bytes(&file, &name, &bytes, cache.as_deref()))
            .await??;
    Ok(Some(loaded))
}

/// Every plugin file a config names, normalized (builtins are not files: they never change).
fn plugin_files(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config
        .routes
        .iter()
        .filter_map(|r| r.get_ref().plugin.as_ref())
        .filter(|f| crate::builtin::name_of(f).is_none())
        .map(|f| normalize(&config.resolve(f)))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// A path with its directory made canonical (the file itself may not exist right now), so that
/// paths from the config and from the watcher compare equal.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    if crate::builtin::name_of(path).is_some() {
        return path.to_path_buf();
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return path.to_path_buf() };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    match dir.canonicalize() {
        Ok(dir) => dir.join(name),
        Err(_) => path.to_path_buf(),
    }
}
