//! The Wasm plugin runtime: wasmtime with the component model and WASI preview 2.
//!
//! - `bindings`: host bindings generated from `wit/wsplug.wit`.
//! - [`engine`]: the shared engine and linker; loading and checking plugin files.
//! - [`sandbox`]: what an instance may use (WASI without files, sockets or env), its memory cap and
//!   per-call limits; plugin stdout/stderr and `log` into the host's log.
//! - [`instance`]: one instantiated plugin; calls bounded by the CPU deadline; failures classified.
//! - [`actor`]: the thread that owns an instance, serializes its events, validates and carries out
//!   its actions through the route's hub, and rebuilds it after a failure.
//!
//! This layer knows nothing of sockets or frames: it speaks to connections only through the hub and
//! their outbound queues.

mod actor;
pub mod bindings;
pub mod engine;
pub mod instance;
pub mod sandbox;

pub use actor::{Admit, Command, OpenRequest, PluginRoute, RouteSettings};
pub use engine::{LoadedPlugin, PluginEngine, check_report};
pub use sandbox::SandboxLimits;
