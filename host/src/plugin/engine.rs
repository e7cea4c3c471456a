//! The wasmtime engine every plugin shares, its linker, and the loading and checking of plugin
//! files.
//!
//! One `Engine` per process (compiled code is shared; an epoch ticker thread drives every
//! instance's CPU deadline) and one `Linker` built once: WASI preview 2 (async) plus the `host`
//! interface of the contract. Calls are async (see `instance`). Loading a file compiles it,
//! type-checks its imports against the linker and its exports against the world, and yields a [`LoadedPlugin`] from which instances
//! are made cheaply (no recompilation, no relinking).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::bindings::{Plugin, PluginPre};
use super::sandbox::PluginState;

/// How often the epoch advances: the resolution of CPU deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The WIT world every plugin implements.
pub const WORLD: &str = "wsplug:plugin/plugin@0.1.0";
/// The newest version of the plugin contract (`wit/`, package `wsplug:plugin`) this server speaks.
pub const CONTRACT_VERSION: &str = "0.2.0";
/// Every version it speaks: 0.2.0 only adds interfaces to 0.1.0.
pub const CONTRACT_VERSIONS: [&str; 2] = ["0.1.0", "0.2.0"];

/// The contract version a component was built for, when it names `wsplug:plugin` interfaces of
/// a version this server does not speak (the linker would only say an import is missing).
fn contract_mismatch(component: &Component, engine: &Engine) -> Option<String> {
    contract_versions(component, engine).into_iter().find(|version| !CONTRACT_VERSIONS.contains(&version.as_str()))
}

/// The versions of `wsplug:plugin` a component's imports and exports name.
fn contract_versions(component: &Component, engine: &Engine) -> Vec<String> {
    let ty = component.component_type();
    let names = ty.imports(engine).map(|(n, _)| n).chain(ty.exports(engine).map(|(n, _)| n));
    let mut versions: Vec<String> = names
        .filter_map(|name| name.strip_prefix("wsplug:plugin/")?.split_once('@').map(|(_, v)| v.to_owned()))
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

/// The shared engine and linker.
pub struct PluginEngine {
    pub engine: Engine,
    pub linker: Linker<PluginState>,
    /// Identifies the engine's configuration and version in cache keys.
    engine_key: u64,
    /// The components loaded and still in use, by content hash: a file loaded again (by another
    /// route, or unchanged by a reload) shares the compiled code instead of holding a copy.
    loaded: Mutex<HashMap<u64, Weak<Component>>>,
}

impl PluginEngine {
    /// The process-wide engine, built on first use.
    pub fn global() -> &'static PluginEngine {
        static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
        ENGINE.get_or_init(|| Self::new().expect("the wasmtime engine configuration is valid"))
    }

    fn new() -> anyhow::Result<Self> {
        let mut config = Config::new();
        // Epochs, not fuel, bound a call's CPU time: they cost 0-5% on compiled guests against
        // 13-30% for fuel on interpreted ones (../shared/NOTES.md).
        // Calls are made with `call_async` (on a fiber, on the connection's own task: no thread hop
        // per message), so a long call can yield at every epoch tick instead of holding its worker.
        config.epoch_interruption(true);
        // WSPLUG_PERFMAP=1: plugins' compiled functions named in /tmp/perf-PID.map, for `perf`.
        if std::env::var_os("WSPLUG_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;
        let ticker = engine.clone();
        std::thread::Builder::new()
            .name("wsplug-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    ticker.increment_epoch();
                }
            })
            .context("spawn the epoch ticker")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Plugin::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
        let engine_key = {
            use std::hash::{DefaultHasher, Hash, Hasher};
            let mut h = DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            env!("CARGO_PKG_VERSION").hash(&mut h);
            h.finish()
        };
        Ok(Self { engine, linker, engine_key, loaded: Mutex::default() })
    }

    /// Compiles a component, or loads its compiled form from the cache in `cache_dir` (created on
    /// first use). Returns whether the cache served it.
    fn compile(&self, bytes: &[u8], cache_dir: Option<&Path>) -> wasmtime::Result<(Arc<Component>, bool)> {
        let hash = content_hash(bytes);
        let mut loaded = self.loaded.lock().expect("loaded components lock");
        if let Some(component) = loaded.get(&hash).and_then(Weak::upgrade) {
            return Ok((component, true));
        }
        loaded.retain(|_, c| c.strong_count() > 0);
        let (component, from_cache) = self.compile_anew(bytes, cache_dir)?;
        let component = Arc::new(component);
        loaded.insert(hash, Arc::downgrade(&component));
        Ok((component, from_cache))
    }

    fn compile_anew(&self, bytes: &[u8], cache_dir: Option<&Path>) -> wasmtime::Result<(Component, bool)> {
        let cached =
            cache_dir.map(|dir| dir.join(format!("{:016x}-{:016x}.cwasm", content_hash(bytes), self.engine_key)));
        if let Some(path) = &cached
            && path.exists()
        {
            match load_precompiled(&self.engine, path) {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(cache = %path.display(), "unusable cache entry, recompiling: {e}");
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let component = Component::new(&self.engine, bytes)?;
        if let Some(path) = cached
            && let Err(e) = store_precompiled(&component, &path)
        {
            tracing::warn!(cache = %path.display(), "cannot write the compile cache: {e}");
        }
        Ok((component, false))
    }

    /// Compiles and checks a plugin file, using the compile cache in `cache_dir` if given. The error
    /// names the file and what is wrong.
    pub fn load(&self, path: &Path, cache_dir: Option<&Path>) -> anyhow::Result<LoadedPlugin> {
        let name = plugin_name(path);
        let bytes = read_plugin(path)?;
        self.load_bytes(path, &name, &bytes, cache_dir)
    }

    /// Compiles and checks plugin bytes read from `path`.
    pub fn load_bytes(
        &self,
        path: &Path,
        name: &str,
        bytes: &[u8],
        cache_dir: Option<&Path>,
    ) -> anyhow::Result<LoadedPlugin> {
        let what = || format!("plugin {}", path.display());
        if !bytes.starts_with(b"\0asm") {
            anyhow::bail!("{}: not a WebAssembly file (no \\0asm header)", what());
        }
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            anyhow::bail!(
                "{}: a core WebAssembly module, not a component: build for wasm32-wasip2 or wrap it with `wasm-tools component new`",
                what()
            );
        }
        let started = Instant::now();
        let (component, from_cache) =
            self.compile(bytes, cache_dir).map_err(|e| {
                let hint = if format!("{e:#}").contains("component model async") {
                    // What componentize-qjs builds without --sync.
                    " (this server runs synchronous components: a JavaScript plugin built with componentize-qjs needs --sync)"
                } else {
                    ""
                };
                anyhow::anyhow!("{}: invalid component: {e:#}{hint}", what())
            })?;
        let compile_time = started.elapsed();
        if cache_dir.is_some() {
            crate::metrics::metrics().compile_cache(from_cache);
        }
        if let Some(version) = contract_mismatch(&component, &self.engine) {
            anyhow::bail!(
                "{}: built for the plugin contract wsplug:plugin@{version}; this server speaks {} \
                 (rebuild the plugin against this server's wit/, or run a server that speaks {version})",
                what(),
                CONTRACT_VERSIONS.join(" and ")
            );
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("{}: needs an import the sandbox does not provide: {e:#}", what()))?;
        let pre = PluginPre::new(pre)
            .map_err(|e| anyhow::anyhow!("{}: does not implement the world {WORLD}: {e:#}", what()))?;
        let imports = component.component_type().imports(&self.engine).map(|(name, _)| name.to_owned()).collect();
        let state = component.get_export_index(None, STATE_INTERFACE).and_then(|iface| {
            Some(StateExports {
                snapshot: component.get_export_index(Some(&iface), "snapshot")?,
                restore: component.get_export_index(Some(&iface), "restore")?,
            })
        });
        let batch = component
            .get_export_index(None, BATCH_INTERFACE)
            .and_then(|iface| component.get_export_index(Some(&iface), "on-messages"));
        let packed = component
            .get_export_index(None, PACKED_INTERFACE)
            .and_then(|iface| component.get_export_index(Some(&iface), "on-packed"));
        let on_timer = component
            .get_export_index(None, super::platform::TIMER_HANDLER_INTERFACE)
            .and_then(|iface| component.get_export_index(Some(&iface), "on-timer"));
        let on_presence = component
            .get_export_index(None, super::platform::PRESENCE_HANDLER_INTERFACE)
            .and_then(|iface| component.get_export_index(Some(&iface), "on-presence"));
        // The newest contract version it names: 0.2.0 when it uses anything of the platform.
        let contract = contract_versions(&component, &self.engine).pop().unwrap_or_else(|| "0.1.0".into());
        Ok(LoadedPlugin {
            component,
            name: name.into(),
            path: path.to_owned(),
            pre,
            size: bytes.len(),
            compile_time,
            imports,
            hash: content_hash(bytes),
            state,
            batch,
            packed,
            on_timer,
            on_presence,
            contract,
            from_cache,
        })
    }
}

/// A compiled, checked plugin, ready to instantiate.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// The compiled code, shared by every load of the same bytes while any is in use.
    pub component: Arc<Component>,
    /// The file's stem, used to tag logs ("chat" for chat.wasm).
    pub name: Arc<str>,
    pub path: PathBuf,
    pub pre: PluginPre<PluginState>,
    pub size: usize,
    pub compile_time: Duration,
    /// The interfaces the component imports.
    pub imports: Vec<String>,
    /// A hash of the file's bytes (to tell versions apart).
    pub hash: u64,
    /// The optional state hand-over interface, when exported.
    pub state: Option<StateExports>,
    /// The optional `batch` interface's `on-messages`, when exported.
    pub batch: Option<ComponentExportIndex>,
    /// The optional `packed-batch` interface's `on-packed` (contract 0.2.0), when exported.
    pub packed: Option<ComponentExportIndex>,
    /// The optional `timer-handler` interface's `on-timer` (contract 0.2.0), when exported.
    pub on_timer: Option<ComponentExportIndex>,
    /// `presence-handler.on-presence`, when exported (contract 0.2.0, topics).
    pub on_presence: Option<ComponentExportIndex>,
    /// The version of the contract it was built against: the newest its interfaces name.
    pub contract: String,
    /// Whether the compiled code came from the artifact cache (then `compile_time` is load time).
    pub from_cache: bool,
}

/// The optional `state` interface (hot reload hand-over).
pub const STATE_INTERFACE: &str = "wsplug:plugin/state@0.1.0";

/// The optional `batch` interface (a connection's pipelined messages in one call).
pub const BATCH_INTERFACE: &str = "wsplug:plugin/batch@0.1.0";

/// The optional `packed-batch` interface (the same, packed into single buffers).
pub const PACKED_INTERFACE: &str = "wsplug:plugin/packed-batch@0.2.0";

/// Where the `state` functions are in a component.
#[derive(Clone, Debug)]
pub struct StateExports {
    pub snapshot: ComponentExportIndex,
    pub restore: ComponentExportIndex,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("size", &self.size)
            .finish()
    }
}

/// A plugin file's bytes; a builtin (`builtin:NAME`) comes from the binary itself.
pub fn read_plugin(path: &Path) -> anyhow::Result<std::borrow::Cow<'static, [u8]>> {
    if let Some(name) = crate::builtin::name_of(path) {
        return crate::builtin::plugin(name).map(std::borrow::Cow::Borrowed).map_err(anyhow::Error::msg);
    }
    let bytes = std::fs::read(path).with_context(|| format!("plugin {}: cannot read the file", path.display()))?;
    Ok(std::borrow::Cow::Owned(bytes))
}

/// The name a plugin's logs carry: the file stem.
pub fn plugin_name(path: &Path) -> String {
    if let Some(name) = crate::builtin::name_of(path) {
        return name.to_owned();
    }
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// A hash of a plugin file's bytes, to tell versions apart (SHA-1, stable across builds, so it
/// can key the on-disk cache).
pub fn content_hash(bytes: &[u8]) -> u64 {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(bytes);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Loads compiled code written by [`store_precompiled`].
#[allow(unsafe_code)]
fn load_precompiled(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime trusts precompiled artifacts to come from a compatible engine (it checks the
    // engine's version and settings in the header, but not that the code is well formed). The
    // cache directory holds only files this process family wrote with `Component::serialize`,
    // written to a temporary name and renamed into place, so a file under a final name is whole.
    // Keep the cache directory private to the server's user. The file is read into memory rather
    // than mapped (`deserialize_file`): a mapped file truncated underneath a running server would
    // crash it with SIGBUS.
    let bytes = std::fs::read(path)?;
    unsafe { Component::deserialize(engine, bytes) }
}

fn store_precompiled(component: &Component, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    // A name no other writer (thread or process) uses, renamed into place once complete.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The default cache directory: `$WSPLUG_CACHE_DIR`, else `$XDG_CACHE_HOME/wsplug`, else
/// `$HOME/.cache/wsplug`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WSPLUG_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("wsplug"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("wsplug"))
}

/// What `wsplug check` reports about a component.
pub fn check_report(plugin: &LoadedPlugin) -> String {
    let mut out = format!(
        "{}: ok\n  implements: {WORLD} (built against the contract {})\n  size: {} bytes\n  compile time: {:.1} ms{}\n  imports:\n",
        plugin.path.display(),
        plugin.contract,
        plugin.size,
        plugin.compile_time.as_secs_f64() * 1000.0,
        if plugin.from_cache { " (loaded from the compile cache)" } else { "" }
    );
    for import in &plugin.imports {
        match super::platform::grant_needed(import) {
            Some(grant) => out.push_str(&format!("    {import} — needs the grant `{grant}`\n")),
            None => out.push_str(&format!("    {import} — {}\n", import_policy(import))),
        }
    }
    out.push_str(match plugin.state {
        Some(_) => "  state hand-over on reload: yes (exports wsplug:plugin/state)\n",
        None => "  state hand-over on reload: no (state is lost when the plugin is reloaded)\n",
    });
    out.push_str(match (plugin.packed, plugin.batch) {
        (Some(_), _) => "  pipelined messages in one call: yes, packed (exports wsplug:plugin/packed-batch)\n",
        (None, Some(_)) => "  pipelined messages in one call: yes (exports wsplug:plugin/batch)\n",
        (None, None) => "  pipelined messages in one call: no (one call per message)\n",
    });
    if plugin.on_timer.is_some() {
        out.push_str("  timer events: yes (exports wsplug:plugin/timer-handler)\n");
    }
    if plugin.on_presence.is_some() {
        out.push_str(
            "  presence events: yes (exports wsplug:plugin/presence-handler; needs [routes.topics] presence)\n",
        );
    }
    let grants: Vec<&str> = plugin.imports.iter().filter_map(|i| super::platform::grant_needed(i)).collect();
    if !grants.is_empty() {
        out.push_str(&format!("  grants its route needs ([routes.grants]): {}\n", grants.join(", ")));
    }
    out
}

/// How the sandbox treats an imported interface (one of 0.2.0 needs a grant: see
/// [`super::platform::grant_needed`]).
pub fn import_policy(import: &str) -> &'static str {
    let iface = import.split('@').next().unwrap_or(import);
    match iface {
        "wsplug:plugin/host" | "wsplug:plugin/types" => "provided (the wsplug contract)",
        i if i.starts_with("wasi:clocks/") || i.starts_with("wasi:random/") => "provided",
        i if i.starts_with("wasi:io/") => "provided",
        "wasi:cli/stdout" | "wasi:cli/stderr" => "provided: lines go to the server log",
        "wasi:cli/environment" => "provided, empty: no variables, no arguments",
        "wasi:cli/exit" => "provided: exiting ends the call like a trap",
        i if i.starts_with("wasi:cli/") => "provided, inert (no stdin, no terminal)",
        i if i.starts_with("wasi:filesystem/") => "linked, denied: no directories are preopened",
        i if i.starts_with("wasi:sockets/") => "linked, denied: no network access",
        _ => "provided by the linker",
    }
}
