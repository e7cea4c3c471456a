//! The route table: which handler serves which path, and the subprotocols it speaks.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, RouteKind};
use crate::plugin::{PluginEngine, PluginRoute, RouteSettings};

/// What serves a route's messages.
#[derive(Debug)]
pub enum Handler {
    /// Native echo: every message goes back to its sender (no Wasm). The conformance and
    /// performance baseline.
    Echo,
    /// A Wasm plugin.
    Plugin(PluginRoute),
}

/// One mounted route.
#[derive(Debug)]
pub struct Route {
    pub path: String,
    pub handler: Handler,
    /// Subprotocols the route speaks, in preference order.
    pub subprotocols: Vec<String>,
}

impl Route {
    /// The subprotocol to answer with: the route's most preferred one that the client offered.
    pub fn choose_subprotocol(&self, offered: &[String]) -> Option<String> {
        self.subprotocols.iter().find(|p| offered.iter().any(|o| o == *p)).cloned()
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
        let mut by_path = HashMap::new();
        for route in &config.routes {
            let r = route.get_ref();
            let handler = match (&r.kind, &r.plugin) {
                (Some(RouteKind::Echo), _) => Handler::Echo,
                (None, Some(file)) => {
                    let plugin = PluginEngine::global().load(&config.resolve(file))?;
                    tracing::info!(path = %r.path, plugin = %plugin.path.display(), size = plugin.size, compile_ms = plugin.compile_time.as_millis() as u64, "plugin loaded");
                    let settings = RouteSettings {
                        path: r.path.clone(),
                        instances: r.instances,
                        sandbox: r.sandbox.clone(),
                        max_message_size: config.limits.max_message_size,
                        subprotocols: r.subprotocols.clone(),
                    };
                    Handler::Plugin(PluginRoute::start(plugin, settings)?)
                }
                (None, None) => anyhow::bail!("route {} has no handler", r.path),
            };
            by_path.insert(
                r.path.clone(),
                Arc::new(Route { path: r.path.clone(), handler, subprotocols: r.subprotocols.clone() }),
            );
        }
        Ok(Self { by_path })
    }

    pub fn get(&self, path: &str) -> Option<&Arc<Route>> {
        self.by_path.get(path)
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
        let route = Route { path: "/x".into(), handler: Handler::Echo, subprotocols: vec!["b".into(), "a".into()] };
        assert_eq!(route.choose_subprotocol(&["a".into(), "b".into()]).as_deref(), Some("b"));
        assert_eq!(route.choose_subprotocol(&["a".into()]).as_deref(), Some("a"));
        assert_eq!(route.choose_subprotocol(&["c".into()]), None);
    }
}
