//! # wsplug
//!
//! A WebSocket server whose behaviour lives in sandboxed, hot-reloaded WebAssembly plugins.
//!
//! The crate is layered so that each folder owns one concern and knows nothing of the ones above:
//!
//! | module | owns | knows nothing of |
//! | --- | --- | --- |
//! | [`protocol`] | RFC 6455 as pure functions and state machines over byte slices (the crate `wsplug-protocol`, in `protocol/`) | sockets, plugins |
//! | [`server`] | the listener (plain or TLS), connection tasks, outbound queues, the hub, shutdown, routes | Wasm |
//! | [`plugin`] | wasmtime: engine, bindings from `wit/`, sandbox, instances and the slots connections call them through, the platform of contract 0.2.0 (timers, attachments, grants), `wsplug test` | sockets, frames |
//! | [`config`] | the TOML configuration, its defaults and checks | |
//! | [`reload`] | watching plugin and config files, swapping changes in live | sockets, frames |
//! | [`app`] | the whole server: routes mounted from the config, the listener, the reloader | |
//! | [`builtin`] | the example plugins and the chat page, embedded in the binary | |
//! | [`connect`] | `wsplug connect`: a line-based client for trying a route | the server |
//! | [`scaffold`] | `wsplug new`: plugin projects in every SDK language, from the embedded templates and SDKs | everything else |
//! | [`topics`] | what topics are beyond local subscribers: history and recovery, presence, the NATS cluster engine | sockets, Wasm |
//! | [`storage`] | the key-value stores plugins are granted (redb files under `data_dir`) | sockets, Wasm |
//! | [`metrics`] | the process's counters, gauges and histograms (Prometheus) | everything else |
//! | [`admin`] | the admin listener: `/metrics`, `/healthz`, `/readyz` | routes, plugins |
//!
//! Imports point one way: `protocol` ← `server` ← `plugin` (a route handler behind
//! [`server::handler`]) ← `reload` ← `app` ← `main.rs`, the command line around them.

#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod builtin;
pub mod config;
pub mod connect;
pub mod metrics;
pub mod plugin;
pub use wsplug_protocol as protocol;
pub mod reload;
pub mod scaffold;
pub mod server;
pub mod storage;
pub mod topics;

pub use app::Server;
