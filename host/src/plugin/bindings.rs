//! Host bindings generated from `wit/wsplug.wit` (world `plugin`).

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    // Exports are called with `call_async`: a call runs on a fiber, so it can yield to the
    // connection's executor at every epoch tick (CPU deadlines without a thread per instance), and
    // WASI's async host functions run on the caller's Tokio runtime. The `host` import stays sync.
    exports: { default: async },
});
