//! Host bindings generated from `wit/wsplug.wit` (world `plugin`).

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
});
