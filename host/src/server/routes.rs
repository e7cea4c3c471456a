//! The route table: which handler serves which path, the subprotocols it speaks, and the hub of
//! its live connections. The table is immutable; hot reload builds a new one and swaps it in
//! (`Shared::set_live`), while connections keep the `Arc<Route>` they were admitted on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::hub::Hub;
use crate::config::{Config, RouteKind};
use crate::plugin::{PluginEngine, PluginRoute, RouteSettings};
use crate::protocol::CloseFrame;

/// What serves a route's messages.
#[derive(Debug)]
pub enum Handler {
    /// Native echo: every message goes back to its sender (no Wasm). The conformance and
    /// performance baseline.
    Echo,
    /// A Wasm plugin.
    Plugin(Box<PluginRoute>),
}

/// One mounted route.
#[derive(Debug)]
pub struct Route {
    pub path: String,
    pub handler: Handler,
    /// Subprotocols the route speaks, in preference order.
    pub subprotocols: Vec<String>,
    /// The route's live connections (and, for plugins, their topics).
    pub hub: Arc<Hub>,
    /// The plugin file it serves (normalized), for hot reload.
    plugin_file: Mutex<Option<PathBuf>>,
}

impl Route {
    pub fn new(path: String, handler: Handler, subprotocols: Vec<String>, plugin_file: Option<PathBuf>) -> Self {
        let hub = match &handler {
            Handler::Plugin(p) => p.hub.clone(),
            Handler::Echo => Arc::new(Hub::new(&path)),
        };
        Self { path, handler, subprotocols, hub, plugin_file: Mutex::new(plugin_file) }
    }

    /// The subprotocol to answer with: the route's most preferred one that the client offered.
    pub fn choose_subprotocol(&self, offered: &[String]) -> Option<String> {
        self.subprotocols.iter().find(|p| offered.iter().any(|o| o == *p)).cloned()
    }

    pub fn plugin(&self) -> Option<&PluginRoute> {
        match &self.handler {
            Handler::Plugin(p) => Some(p),
            Handler::Echo => None,
        }
    }

    pub fn plugin_file(&self) -> Option<PathBuf> {
        self.plugin_file.lock().expect("plugin file lock").clone()
    }

    pub(crate) fn set_plugin_file(&self, file: PathBuf) {
        *self.plugin_file.lock().expect("plugin file lock") = Some(file);
    }

    /// Closes every connection on the route (after what is queued for each).
    pub fn close_all(&self, frame: CloseFrame) {
        self.hub.close_where(|_| true, frame);
    }
}

/// Routes by path (without the query).
#[derive(Debug, Default)]
pub struct Routes {
    by_path: HashMap<String, Arc<Route>>,
}

impl Routes {
    /// Builds the table from a checked config, loading (compiling, checking, instantiating) every
    /// plugin. Blocking: call it off the async workers.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let mut routes = Vec::new();
        for route in &config.routes {
            let r = route.get_ref();
            let file = r.plugin.as_ref().map(|f| crate::reload::normalize(&config.resolve(f)));
            let handler = match (&r.kind, &file) {
                (Some(RouteKind::Echo), _) => Handler::Echo,
                (None, Some(file)) => {
                    let plugin = PluginEngine::global().load(file, config.effective_cache_dir().as_deref())?;
                    tracing::info!(path = %r.path, plugin = %plugin.path.display(), size = plugin.size, compile_ms = plugin.compile_time.as_millis() as u64, cached = plugin.from_cache, "plugin loaded");
                    Handler::Plugin(Box::new(PluginRoute::start_blocking(
                        plugin,
                        RouteSettings::new(r, &config.limits),
                    )?))
                }
                (None, None) => anyhow::bail!("route {} has no handler", r.path),
            };
            routes.push(Arc::new(Route::new(r.path.clone(), handler, r.subprotocols.clone(), file)));
        }
        Ok(Self::from_routes(routes))
    }

    pub fn from_routes(routes: Vec<Arc<Route>>) -> Self {
        Self { by_path: routes.into_iter().map(|r| (r.path.clone(), r)).collect() }
    }

    pub fn get(&self, path: &str) -> Option<&Arc<Route>> {
        self.by_path.get(path)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_path.values()
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.by_path.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_preference_decides_the_subprotocol() {
        let route = Route::new("/x".into(), Handler::Echo, vec!["b".into(), "a".into()], None);
        assert_eq!(route.choose_subprotocol(&["a".into(), "b".into()]).as_deref(), Some("b"));
        assert_eq!(route.choose_subprotocol(&["a".into()]).as_deref(), Some("a"));
        assert_eq!(route.choose_subprotocol(&["c".into()]), None);
    }
}
