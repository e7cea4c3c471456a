//! `wsplug-c-tools`: the two steps of a C plugin build that are not the C compiler's.
//!
//! ```text
//! wsplug-c-tools bindgen WIT_DIR WORLD OUT_DIR
//!     Writes the C bindings of WORLD (e.g. `plugin`) to OUT_DIR: WORLD.h, WORLD.c and
//!     WORLD_component_type.o (the world's type, to link into the module).
//! wsplug-c-tools componentize [--wasi-stub] CORE.wasm OUT.wasm [WIT_DIR WORLD]
//!     Makes a component of a core module. The module must carry its world's type (from the
//!     linked WORLD_component_type.o), or WIT_DIR and WORLD name it. The WASI preview 1 adapter
//!     is added only when the module imports `wasi_snapshot_preview1`; with --wasi-stub, an inert
//!     stand-in without imports replaces it (see src/wasi_stub.rs; needed for Go).
//! wsplug-c-tools ts-types WIT_DIR WORLD
//!     Prints the TypeScript declarations of WORLD as componentize-qjs presents it to JavaScript
//!     (src/ts_types.rs): the SDK's plugins/sdk-js/contract.d.ts.
//! ```

use std::path::Path;
use std::process::ExitCode;

mod ts_types;
mod wasi_stub;

use anyhow::{Context, Result, bail};
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::Resolve;

const USAGE: &str = "usage:\n  wsplug-c-tools bindgen WIT_DIR WORLD OUT_DIR\n  \
                     wsplug-c-tools componentize [--wasi-stub] CORE.wasm OUT.wasm [WIT_DIR WORLD]\n  \
                     wsplug-c-tools ts-types WIT_DIR WORLD";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let stub = args.iter().position(|a| a == "--wasi-stub").map(|i| args.remove(i)).is_some();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["bindgen", wit, world, out] => bindgen(Path::new(wit), world, Path::new(out)),
        ["componentize", core, out] => componentize(Path::new(core), Path::new(out), None, stub),
        ["componentize", core, out, wit, world] => {
            componentize(Path::new(core), Path::new(out), Some((Path::new(wit), world)), stub)
        }
        ["ts-types", wit, world] => ts_types::generate(Path::new(wit), world).map(|ts| print!("{ts}")),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsplug-c-tools: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_world(wit: &Path, world: &str) -> Result<(Resolve, wit_parser::WorldId)> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_path(wit).with_context(|| format!("reading WIT from {}", wit.display()))?;
    let world = resolve.select_world(&[pkg], Some(world))?;
    Ok((resolve, world))
}

fn bindgen(wit: &Path, world: &str, out: &Path) -> Result<()> {
    let (mut resolve, world) = load_world(wit, world)?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default().build().generate(&mut resolve, world, &mut files)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        // Leave unchanged files alone, so that `make`-style rebuild checks stay quiet.
        if std::fs::read(&path).is_ok_and(|old| old == contents) {
            continue;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn imports_wasi_p1(module: &[u8]) -> Result<bool> {
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        if let wasmparser::Payload::ImportSection(reader) = payload? {
            for import in reader.into_imports() {
                if import?.module == "wasi_snapshot_preview1" {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

fn componentize(core: &Path, out: &Path, wit: Option<(&Path, &str)>, wasi_stub: bool) -> Result<()> {
    let mut module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    if let Some((wit, world)) = wit {
        let (resolve, world) = load_world(wit, world)?;
        embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8, false)?;
    }
    let mut encoder = ComponentEncoder::default();
    encoder.validate(true);
    encoder.module(&module).with_context(|| format!("{} is not a core module with a world's type", core.display()))?;
    if imports_wasi_p1(&module)? {
        if wasi_stub {
            encoder.adapter("wasi_snapshot_preview1", &wasi_stub::adapter(&module)?)?;
        } else {
            encoder.adapter(
                "wasi_snapshot_preview1",
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )?;
        }
    }
    let component = encoder.encode().context("making the component")?;
    if component.is_empty() {
        bail!("empty component");
    }
    let tmp = out.with_extension("wasm.tmp");
    std::fs::write(&tmp, &component).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
