//! Builds the example plugins (`plugins/`) and the test-only plugins (`tests/plugins/`) as
//! `wasm32-wasip2` components and copies them to `target/plugins/NAME.wasm`, so that `cargo run`
//! and `cargo test` work on a fresh checkout with nothing but the Rust toolchain.
//!
//! The plugin workspaces are built by a nested `cargo` with their own target directory (no lock
//! contention with the outer build). The wasm target is added with rustup when missing. Set
//! `WSPLUG_SKIP_PLUGIN_BUILD=1` to skip all of this (e.g. when only the host library is wanted).

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    println!("cargo:rerun-if-env-changed=WSPLUG_SKIP_PLUGIN_BUILD");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    // The Rust plugin workspaces only: the other languages' plugins have build scripts of their own.
    for watched in [
        "wit",
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
        "plugins/sdk",
        "plugins/echo",
        "plugins/chat",
        "plugins/guard",
        "plugins/game",
        "plugins/counter",
        "tests/plugins",
    ] {
        watch_tree(&root.join(watched));
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target_dir = if target_dir.is_absolute() { target_dir } else { root.join(target_dir) };
    let build_dir = target_dir.join("wasm-build");
    let out_dir = target_dir.join("plugins");
    if std::env::var_os("WSPLUG_SKIP_PLUGIN_BUILD").is_some_and(|v| v == "1") {
        embed_builtins(&out_dir);
        return;
    }

    ensure_wasm_target();
    for workspace in ["plugins/Cargo.toml", "tests/plugins/Cargo.toml"] {
        build_workspace(&root.join(workspace), &build_dir);
    }
    std::fs::create_dir_all(&out_dir).expect("create target/plugins");
    let release = build_dir.join(TARGET).join("release");
    for name in ["echo", "chat", "guard", "game", "counter", "hostile", "probe", "bomb", "pubsub"] {
        let from = release.join(format!("{name}.wasm"));
        let to = out_dir.join(format!("{name}.wasm"));
        copy_if_changed(&from, &to);
    }
    embed_builtins(&out_dir);
}

/// Copies the plugins the binary carries (`builtin:echo`, `builtin:chat`, see `src/builtin.rs`)
/// into OUT_DIR for `include_bytes!`. A plugin that was not built is embedded empty, and the binary
/// says so when a config asks for it.
fn embed_builtins(plugins: &Path) {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for name in ["echo", "chat"] {
        let bytes = std::fs::read(plugins.join(format!("{name}.wasm"))).unwrap_or_default();
        let to = out.join(format!("builtin-{name}.wasm"));
        if std::fs::read(&to).ok() != Some(bytes.clone()) {
            std::fs::write(&to, bytes).expect("write an embedded plugin");
        }
    }
}

/// Reruns this script when `path`, or anything under it, changes (skipping build output).
fn watch_tree(dir: &Path) {
    if dir.is_file() {
        println!("cargo:rerun-if-changed={}", dir.display());
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            watch_tree(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

fn ensure_wasm_target() {
    let libdir = Command::new(rustc()).args(["--print", "target-libdir", "--target", TARGET]).output();
    let installed = libdir
        .as_ref()
        .is_ok_and(|o| o.status.success() && Path::new(String::from_utf8_lossy(&o.stdout).trim()).exists());
    if installed {
        return;
    }
    println!("cargo:warning=installing the {TARGET} target with rustup (once)");
    let status = Command::new("rustup").args(["target", "add", TARGET]).status();
    if !status.is_ok_and(|s| s.success()) {
        panic!("the {TARGET} target is missing and `rustup target add {TARGET}` failed: install it by hand");
    }
}

fn rustc() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

fn build_workspace(manifest: &Path, build_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--target", TARGET, "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(build_dir);
    // The outer build's settings are for the host, not for Wasm guests (clippy's wrapper, host
    // rustflags, the outer profile): keep them out of the nested build.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run cargo for {}: {e}", manifest.display()));
    if !output.status.success() {
        panic!("building the plugins in {} failed:\n{}", manifest.display(), String::from_utf8_lossy(&output.stderr));
    }
}

fn copy_if_changed(from: &Path, to: &Path) {
    let new = std::fs::read(from).unwrap_or_else(|e| panic!("{} was not built: {e}", from.display()));
    if std::fs::read(to).ok().as_deref() != Some(&new[..]) {
        // Write then rename, so a running server watching the file never sees half a component.
        let tmp = to.with_extension("wasm.tmp");
        std::fs::write(&tmp, &new).expect("write plugin");
        std::fs::rename(&tmp, to).expect("rename plugin");
    }
}
