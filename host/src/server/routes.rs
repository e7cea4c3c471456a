//! The route table: which handler serves which path, the subprotocols it speaks, and the hub of
//! its live connections. The table is immutable; hot reload builds a new one and swaps it in
//! (`Shared::set_live`), while connections keep the `Arc<Route>` they were admitted on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::fairness::ConnectionLimits;
use super::handler::EventRoute;
use super::hub::Hub;
use crate::config::RouteConfig;
use crate::protocol::CloseFrame;
use crate::protocol::deflate::DeflateConfig;

/// What serves a route's messages.
#[derive(Debug)]
pub enum Handler {
    /// Native echo: every message goes back to its sender (no Wasm). The conformance and
    /// performance baseline.
    Echo,
    /// An event handler (a Wasm plugin route, built by the layers above).
    Events(Arc<dyn EventRoute>),
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
    /// The file its handler was loaded from (normalized), for hot reload.
    plugin_file: Mutex<Option<PathBuf>>,
    /// What one connection may use (taken by each connection when it opens; a config reload
    /// replaces it for the connections that open after).
    connection_limits: Mutex<Arc<ConnectionLimits>>,
    /// permessage-deflate, if the route offers it (replaced by a config reload, like the limits).
    deflate: Mutex<Option<DeflateConfig>>,
}

impl Route {
    pub fn new(path: String, handler: Handler, subprotocols: Vec<String>, plugin_file: Option<PathBuf>) -> Self {
        let hub = match &handler {
            Handler::Events(e) => e.hub().clone(),
            Handler::Echo => Arc::new(Hub::new(&path)),
        };
        Self {
            path,
            handler,
            subprotocols,
            hub,
            plugin_file: Mutex::new(plugin_file),
            connection_limits: Mutex::default(),
            deflate: Mutex::default(),
        }
    }

    /// The route a config entry describes, served by `handler` (loaded from `plugin_file`).
    pub fn configured(config: &RouteConfig, handler: Handler, plugin_file: Option<PathBuf>) -> Self {
        let route = Self::new(config.path.clone(), handler, config.subprotocols.clone(), plugin_file);
        route.set_connection_limits(config.connection.clone());
        route.set_deflate(config.deflate.as_ref().and_then(|d| d.config()));
        route
    }

    /// What permessage-deflate the route agrees to, if any (for connections opening now).
    pub fn deflate(&self) -> Option<DeflateConfig> {
        *self.deflate.lock().expect("deflate lock")
    }

    pub(crate) fn set_deflate(&self, deflate: Option<DeflateConfig>) {
        *self.deflate.lock().expect("deflate lock") = deflate;
    }

    pub fn connection_limits(&self) -> Arc<ConnectionLimits> {
        self.connection_limits.lock().expect("connection limits lock").clone()
    }

    pub(crate) fn set_connection_limits(&self, limits: ConnectionLimits) {
        *self.connection_limits.lock().expect("connection limits lock") = Arc::new(limits);
    }

    /// The subprotocol to answer with: the route's most preferred one that the client offered.
    pub fn choose_subprotocol(&self, offered: &[String]) -> Option<String> {
        self.subprotocols.iter().find(|p| offered.iter().any(|o| o == *p)).cloned()
    }

    pub fn events(&self) -> Option<&Arc<dyn EventRoute>> {
        match &self.handler {
            Handler::Events(e) => Some(e),
            Handler::Echo => None,
        }
    }

    pub fn plugin_file(&self) -> Option<PathBuf> {
        self.plugin_file.lock().expect("plugin file lock").clone()
    }

    pub(crate) fn set_plugin_file(&self, file: PathBuf) {
        *self.plugin_file.lock().expect("plugin file lock") = Some(file);
    }

    /// Retires the route (removed or replaced): closes every connection on it, after what is
    /// queued for each, and any connection that was being admitted to it meanwhile.
    pub fn retire(&self, frame: CloseFrame) {
        self.hub.retire(frame);
    }
}

/// Routes by path (without the query).
#[derive(Debug, Default)]
pub struct Routes {
    by_path: HashMap<String, Arc<Route>>,
}

impl Routes {
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
