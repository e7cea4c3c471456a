//! Host bindings generated from the plugin contract: the world `plugin-host` of
//! `wit/platform/wsplug.wit` (version 0.2.0), which includes the 0.1.0 world `plugin` of
//! `wit/wsplug.wit` and adds the imports of 0.2.0 (`timers`, `attachments`). Components of either
//! version are run by these bindings: 0.2.0 only adds interfaces, so every 0.1.0 item keeps its
//! name and type. The optional exports (`state`, `timer-handler`, `presence-handler`) are looked up
//! by name; `batch` and `packed-batch` through bindings of their own (see [`batch`], [`packed`]).

wasmtime::component::bindgen!({
    world: "plugin-host",
    path: "../wit/platform",
    // Exports are called with `call_async`: a call runs on a fiber, so it can yield to the
    // connection's executor at every epoch tick (CPU deadlines without a thread per instance), and
    // WASI's async host functions run on the caller's Tokio runtime. The host imports stay sync.
    exports: { default: async },
    // Messages and connections are lent to a call (copied once, into the guest), not copied into
    // owned values first; what a plugin returns is owned (`MessageResult`).
    ownership: Borrowing { duplicate_if_necessary: true },
});

/// The struct of the world (its exports `handler`, and the linker of every import).
pub use self::PluginHost as Plugin;
pub use self::PluginHostPre as PluginPre;
/// The interfaces of version 0.1.0 (`types`, `host`) and of 0.2.0 (`timers`, `attachments`): the
/// generated modules carry the version, since the contract's package has two.
pub use self::wsplug::plugin0_1_0 as v1;
pub use self::wsplug::plugin0_2_0 as v2;

/// Bindings of a world `NAME-host` that adds one optional export to `plugin-host`: its generated
/// call lends the messages to the guest (copied once), where a call through a typed function looked
/// up by name would need owned values. Every other interface is the one generated above.
macro_rules! optional_export {
    ($world:literal) => {
        wasmtime::component::bindgen!({
            world: $world,
            path: "../wit/platform",
            exports: { default: async },
            ownership: Borrowing { duplicate_if_necessary: true },
            with: {
                "wsplug:plugin/types@0.1.0": super::v1::types,
                "wsplug:plugin/host@0.1.0": super::v1::host,
                "wsplug:plugin/timers@0.2.0": super::v2::timers,
                "wsplug:plugin/attachments@0.2.0": super::v2::attachments,
                "wsplug:plugin/kv@0.2.0": super::v2::kv,
                "wsplug:plugin/topics@0.2.0": super::v2::topics,
            },
        });
    };
}

/// The optional `batch` export (`on-messages`: a connection's messages as a list).
pub mod batch {
    optional_export!("batch-host");
}

/// The optional `packed-batch` export (`on-packed`: a connection's messages in one buffer, the
/// replies out in one).
pub mod packed {
    optional_export!("packed-host");
}
