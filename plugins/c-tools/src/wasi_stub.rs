//! An inert stand-in for the WASI preview 1 adapter, for modules whose runtime calls WASI during
//! its own initialisation (Go's `_initialize`), where the real adapter cannot allocate its state:
//! it would call back into the module's `cabi_realloc` before the runtime is ready, and the
//! `memory.grow` alternative hands the adapter pages that Go's allocator later reuses as its heap.
//!
//! The stub keeps no state in linear memory and imports nothing, so the component has no WASI
//! imports at all: no arguments or environment, writes to any descriptor are accepted and
//! discarded, the clocks are a counter that advances 1 µs per reading (and by the timeout of a
//! poll), random bytes come from a fixed-seed xorshift generator (deterministic: Go's map seeds
//! are predictable), `poll_oneoff` reports every subscription ready, `proc_exit` traps, and any
//! other function answers ENOSYS.

use anyhow::Result;
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, EntityType, ExportKind, ExportSection, Function, FunctionSection, GlobalSection,
    GlobalType, ImportSection, MemArg, MemoryType, Module, TypeSection, ValType,
};
use wit_component::{StringEncoding, embed_component_metadata};
use wit_parser::Resolve;

/// A function's name, parameters and results.
type Signature = (String, Vec<ValType>, Vec<ValType>);

/// The preview 1 functions `module` imports, with their types.
fn wasi_imports(module: &[u8]) -> Result<Vec<Signature>> {
    let mut types = Vec::new();
    let mut imports = Vec::new();
    let val = |t: &wasmparser::ValType| match t {
        wasmparser::ValType::I32 => ValType::I32,
        wasmparser::ValType::I64 => ValType::I64,
        wasmparser::ValType::F32 => ValType::F32,
        wasmparser::ValType::F64 => ValType::F64,
        _ => ValType::I32,
    };
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        match payload? {
            wasmparser::Payload::TypeSection(reader) => {
                for ty in reader.into_iter_err_on_gc_types() {
                    let ty = ty?;
                    types.push((ty.params().iter().map(val).collect(), ty.results().iter().map(val).collect()));
                }
            }
            wasmparser::Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    if let (true, wasmparser::TypeRef::Func(idx)) =
                        (import.module == "wasi_snapshot_preview1", import.ty)
                    {
                        let (params, results): &(Vec<ValType>, Vec<ValType>) = &types[idx as usize];
                        imports.push((import.name.to_string(), params.clone(), results.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(imports)
}

fn mem(offset: u64, align: u32) -> MemArg {
    MemArg { offset, align, memory_index: 0 }
}

const CLOCK: u32 = 0;
const RNG: u32 = 1;
const ENOSYS: i32 = 52;

/// The body of preview 1 function `name`.
fn body(name: &str, results: &[ValType]) -> Function {
    let mut f;
    match name {
        "sched_yield" | "args_get" | "environ_get" => {
            f = Function::new([]);
            f.instructions().i32_const(0);
        }
        "args_sizes_get" | "environ_sizes_get" => {
            f = Function::new([]);
            f.instructions()
                .local_get(0)
                .i32_const(0)
                .i32_store(mem(0, 2))
                .local_get(1)
                .i32_const(0)
                .i32_store(mem(0, 2))
                .i32_const(0);
        }
        "clock_time_get" => {
            // (id, precision, out): the counter, 1 µs further on.
            f = Function::new([]);
            f.instructions()
                .global_get(CLOCK)
                .i64_const(1000)
                .i64_add()
                .global_set(CLOCK)
                .local_get(2)
                .global_get(CLOCK)
                .i64_store(mem(0, 3))
                .i32_const(0);
        }
        "fd_write" => {
            // (fd, iovs, iovs_len, nwritten): everything written, nothing kept.
            f = Function::new([(1, ValType::I32)]);
            f.instructions()
                .block(BlockType::Empty)
                .loop_(BlockType::Empty)
                .local_get(2)
                .i32_eqz()
                .br_if(1)
                .local_get(4)
                .local_get(1)
                .i32_load(mem(4, 2))
                .i32_add()
                .local_set(4)
                .local_get(1)
                .i32_const(8)
                .i32_add()
                .local_set(1)
                .local_get(2)
                .i32_const(1)
                .i32_sub()
                .local_set(2)
                .br(0)
                .end()
                .end()
                .local_get(3)
                .local_get(4)
                .i32_store(mem(0, 2))
                .i32_const(0);
        }
        "random_get" => {
            // (buf, len): xorshift64 bytes.
            f = Function::new([]);
            let mut i = f.instructions();
            i.block(BlockType::Empty).loop_(BlockType::Empty).local_get(1).i32_eqz().br_if(1);
            for (shift, left) in [(13, true), (7, false), (17, true)] {
                i.global_get(RNG).global_get(RNG).i64_const(shift);
                if left {
                    i.i64_shl();
                } else {
                    i.i64_shr_u();
                }
                i.i64_xor().global_set(RNG);
            }
            i.local_get(0)
                .global_get(RNG)
                .i32_wrap_i64()
                .i32_store8(mem(0, 0))
                .local_get(0)
                .i32_const(1)
                .i32_add()
                .local_set(0)
                .local_get(1)
                .i32_const(1)
                .i32_sub()
                .local_set(1)
                .br(0)
                .end()
                .end()
                .i32_const(0);
        }
        "poll_oneoff" => {
            // (in, out, nsubscriptions, nevents): every subscription (48 bytes) ready at once, as
            // an event (32 bytes: userdata, errno 0, its type); a relative clock timeout moves
            // the clock on.
            f = Function::new([(1, ValType::I32)]);
            f.instructions()
                .local_get(3)
                .local_get(2)
                .i32_store(mem(0, 2))
                .block(BlockType::Empty)
                .loop_(BlockType::Empty)
                .local_get(4)
                .local_get(2)
                .i32_ge_u()
                .br_if(1)
                // event.userdata = subscription.userdata
                .local_get(1)
                .local_get(0)
                .i64_load(mem(0, 3))
                .i64_store(mem(0, 3))
                // event.error = 0, event.type = subscription.tag, the rest zero
                .local_get(1)
                .i32_const(0)
                .i32_store16(mem(8, 1))
                .local_get(1)
                .local_get(0)
                .i32_load8_u(mem(8, 0))
                .i32_store8(mem(10, 0))
                .local_get(1)
                .i64_const(0)
                .i64_store(mem(16, 3))
                .local_get(1)
                .i64_const(0)
                .i64_store(mem(24, 3))
                // a clock subscription (tag 0) with relative timeout (flags 0): time passes
                .block(BlockType::Empty)
                .local_get(0)
                .i32_load8_u(mem(8, 0))
                .br_if(0)
                .local_get(0)
                .i32_load16_u(mem(40, 1))
                .br_if(0)
                .global_get(CLOCK)
                .local_get(0)
                .i64_load(mem(24, 3))
                .i64_add()
                .global_set(CLOCK)
                .end()
                .local_get(0)
                .i32_const(48)
                .i32_add()
                .local_set(0)
                .local_get(1)
                .i32_const(32)
                .i32_add()
                .local_set(1)
                .local_get(4)
                .i32_const(1)
                .i32_add()
                .local_set(4)
                .br(0)
                .end()
                .end()
                .i32_const(0);
        }
        _ => {
            f = Function::new([]);
            if results == [ValType::I32] {
                f.instructions().i32_const(ENOSYS);
            } else {
                f.instructions().unreachable();
            }
        }
    }
    f.instructions().end();
    f
}

/// The stub adapter for the preview 1 imports of `module`.
pub fn adapter(module: &[u8]) -> Result<Vec<u8>> {
    let imports = wasi_imports(module)?;
    let mut types = TypeSection::new();
    let mut functions = FunctionSection::new();
    let mut exports = ExportSection::new();
    let mut code = CodeSection::new();
    for (i, (name, params, results)) in imports.iter().enumerate() {
        types.ty().function(params.iter().copied(), results.iter().copied());
        functions.function(i as u32);
        exports.export(name, ExportKind::Func, i as u32);
        code.function(&body(name, results));
    }
    let mut import_section = ImportSection::new();
    import_section.import(
        "env",
        "memory",
        EntityType::Memory(MemoryType {
            minimum: 0,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        }),
    );
    let mut globals = GlobalSection::new();
    let global = GlobalType { val_type: ValType::I64, mutable: true, shared: false };
    globals.global(global, &ConstExpr::i64_const(0));
    globals.global(global, &ConstExpr::i64_const(0x2545_f491_4f6c_dd1d));
    let mut adapter = Module::new();
    adapter
        .section(&types)
        .section(&import_section)
        .section(&functions)
        .section(&globals)
        .section(&exports)
        .section(&code);
    let mut bytes = adapter.finish();
    // An adapter carries a world too: an empty one.
    let mut resolve = Resolve::default();
    let pkg = resolve.push_str("wasi-stub.wit", "package wsplug:wasi-stub; world stub {}")?;
    let world = resolve.select_world(&[pkg], Some("stub"))?;
    embed_component_metadata(&mut bytes, &resolve, world, StringEncoding::UTF8, false)?;
    Ok(bytes)
}
