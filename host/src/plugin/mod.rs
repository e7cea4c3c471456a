//! The Wasm plugin runtime: wasmtime with the component model and WASI preview 2.
//!
//! - `bindings`: host bindings generated from `wit/wsplug.wit`.
//! - [`engine`]: the shared engine and linker; loading and checking plugin files.
//! - [`sandbox`]: what an instance may use (WASI without files, sockets or env), its memory cap and
//!   per-call limits; plugin stdout/stderr and `log` into the host's log.
//! - [`instance`]: one instantiated plugin; calls bounded by the CPU deadline; failures classified.
//! - [`platform`]: contract 0.2.0's timers and attachments, and the route grants that allow them.
//! - [`actions`]: the contract's rules on what a call returns (checked before anything is done).
//! - [`script`]: `wsplug test`, a scripted conversation with a plugin, without a server.
//! - [`recovery`]: checkpoints of a plugin's state, the rebuild backoff and the circuit breaker.
//! - [`route`]: a plugin route's instances, each in a slot that the connections' tasks take in
//!   turn to call it (no thread or queue of its own), validate and carry out its actions through
//!   the route's hub, and rebuild it after a failure.
//!
//! A plugin route is a route handler ([`crate::server::handler`]): this layer knows nothing of
//! sockets, frames or the handshake, and speaks to connections only through the hub and their
//! outbound queues.

pub mod actions;
pub mod bindings;
pub mod engine;
pub mod instance;
pub mod platform;
pub mod recovery;
pub mod route;
pub mod sandbox;
pub mod script;

pub use engine::{LoadedPlugin, PluginEngine, check_report};
pub use recovery::Checkpoints;
pub use route::{InstanceSlot, PluginRoute, RouteSettings};
pub use sandbox::SandboxLimits;
