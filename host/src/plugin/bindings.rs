//! Host bindings generated from `wit/wsplug.wit` (world `plugin`).

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    // Exports are called with `call_async`: a call runs on a fiber, so it can yield to the
    // connection's executor at every epoch tick (CPU deadlines without a thread per instance), and
    // WASI's async host functions run on the caller's Tokio runtime. The `host` import stays sync.
    exports: { default: async },
    // Messages and connections are lent to a call (copied once, into the guest), not copied into
    // owned values first; what a plugin returns is owned (`MessageResult`).
    ownership: Borrowing { duplicate_if_necessary: true },
});
