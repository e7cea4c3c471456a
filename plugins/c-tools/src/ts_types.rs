//! TypeScript declarations of a world, for plugins built with componentize-qjs: the types of its
//! interfaces as that tool maps them to JavaScript values (variants are `{ tag, val }` objects,
//! records are objects with camelCase keys, `option<T>` is `T | null`, `list<u8>` is a
//! `Uint8Array`, integers are numbers, a function returning `result<_, E>` throws E), and one
//! TypeScript interface per interface of the world, with its functions as camelCase methods.
//!
//! The SDK's `contract.d.ts` (plugins/sdk-js) is this output for the world `stateful-plugin`;
//! `.ci/run` regenerates it and fails if the committed file differs.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::Path;

use anyhow::Result;
use wit_parser::{Docs, Function, Handle, Resolve, Type, TypeDefKind, TypeId, TypeOwner, WorldItem, WorldKey};

/// The declarations of `world` (of the WIT at `wit`), as a TypeScript module.
pub fn generate(wit: &Path, world: &str) -> Result<String> {
    let (resolve, world_id) = crate::load_world(wit, world)?;
    let world = &resolve.worlds[world_id];
    let mut out = String::new();
    writeln!(
        out,
        "// The plugin contract ({}, world `{}`) as componentize-qjs presents it to JavaScript.\n\
         // Generated from the WIT by `wsplug-c-tools ts-types`: do not edit.\n",
        resolve.packages[world.package.expect("a world of a package")].name,
        world.name
    )?;
    let mut interfaces = Vec::new();
    for (key, item) in world.imports.iter().map(|i| (i, "import")).chain(world.exports.iter().map(|e| (e, "export"))) {
        if let ((WorldKey::Interface(_) | WorldKey::Name(_), WorldItem::Interface { id, .. }), how) = (key, item) {
            interfaces.push((*id, how));
        }
    }
    // Types first, each once (a `use` of another interface's type is the same type).
    let mut written = BTreeSet::new();
    for (id, _) in &interfaces {
        for (_, &ty) in &resolve.interfaces[*id].types {
            let def = &resolve.types[ty];
            if let TypeDefKind::Type(Type::Id(other)) = def.kind
                && resolve.types[other].name == def.name
            {
                continue;
            }
            if written.insert(def.name.clone()) {
                write_type(&mut out, &resolve, ty)?;
            }
        }
    }
    for (id, how) in &interfaces {
        let iface = &resolve.interfaces[*id];
        let Some(name) = &iface.name else { continue };
        if iface.functions.is_empty() {
            continue;
        }
        docs(&mut out, &iface.docs, "")?;
        if iface.docs.contents.is_none() {
            let verb = if *how == "import" { "imports" } else { "exports" };
            writeln!(out, "/** The interface `{name}`, which the world {verb}. */")?;
        }
        writeln!(out, "export interface {} {{", pascal(name))?;
        for (_, func) in &iface.functions {
            write_function(&mut out, &resolve, func)?;
        }
        writeln!(out, "}}\n")?;
    }
    Ok(out.trim_end().to_owned() + "\n")
}

fn write_type(out: &mut String, resolve: &Resolve, ty: TypeId) -> Result<()> {
    let def = &resolve.types[ty];
    let name = pascal(def.name.as_deref().unwrap_or("anonymous"));
    docs(out, &def.docs, "")?;
    match &def.kind {
        TypeDefKind::Record(record) => {
            writeln!(out, "export interface {name} {{")?;
            for field in &record.fields {
                docs(out, &field.docs, "  ")?;
                writeln!(out, "  {}: {};", camel(&field.name), ts(resolve, &field.ty))?;
            }
            writeln!(out, "}}\n")?;
        }
        TypeDefKind::Variant(variant) => {
            writeln!(out, "export type {name} =")?;
            for case in &variant.cases {
                docs(out, &case.docs, "  ")?;
                match &case.ty {
                    Some(ty) => writeln!(out, "  | {{ tag: \"{}\"; val: {} }}", case.name, ts(resolve, ty))?,
                    None => writeln!(out, "  | {{ tag: \"{}\" }}", case.name)?,
                }
            }
            out.pop();
            writeln!(out, ";\n")?;
        }
        TypeDefKind::Enum(e) => {
            let cases: Vec<String> = e.cases.iter().map(|c| format!("\"{}\"", c.name)).collect();
            writeln!(out, "export type {name} = {};\n", cases.join(" | "))?;
        }
        TypeDefKind::Flags(flags) => {
            writeln!(out, "export interface {name} {{")?;
            for flag in &flags.flags {
                writeln!(out, "  {}?: boolean;", camel(&flag.name))?;
            }
            writeln!(out, "}}\n")?;
        }
        other => writeln!(out, "export type {name} = {};\n", ts_kind(resolve, other))?,
    }
    Ok(())
}

fn write_function(out: &mut String, resolve: &Resolve, func: &Function) -> Result<()> {
    docs(out, &func.docs, "  ")?;
    let params: Vec<String> =
        func.params.iter().map(|p| format!("{}: {}", camel(&p.name), ts(resolve, &p.ty))).collect();
    let result = match &func.result {
        None => "void".to_owned(),
        // componentize-qjs: `ok` is the return value, `err` is thrown.
        Some(Type::Id(id)) if matches!(resolve.types[*id].kind, TypeDefKind::Result(_)) => {
            let TypeDefKind::Result(r) = &resolve.types[*id].kind else { unreachable!() };
            r.ok.as_ref().map_or("void".to_owned(), |ok| ts(resolve, ok))
        }
        Some(ty) => ts(resolve, ty),
    };
    writeln!(out, "  {}({}): {result};", camel(&func.name), params.join(", "))?;
    Ok(())
}

fn ts(resolve: &Resolve, ty: &Type) -> String {
    match ty {
        Type::Bool => "boolean".into(),
        Type::U8 | Type::U16 | Type::U32 | Type::U64 | Type::S8 | Type::S16 | Type::S32 | Type::S64 => "number".into(),
        Type::F32 | Type::F64 => "number".into(),
        Type::Char | Type::String => "string".into(),
        Type::ErrorContext => "unknown".into(),
        Type::Id(id) => {
            let def = &resolve.types[*id];
            match (&def.name, def.owner) {
                (Some(name), TypeOwner::Interface(_) | TypeOwner::World(_)) => pascal(name),
                _ => ts_kind(resolve, &def.kind),
            }
        }
    }
}

fn ts_kind(resolve: &Resolve, kind: &TypeDefKind) -> String {
    match kind {
        TypeDefKind::List(Type::U8) => "Uint8Array".into(),
        TypeDefKind::List(ty) => format!("{}[]", wrap(ts(resolve, ty))),
        TypeDefKind::Tuple(t) => {
            format!("[{}]", t.types.iter().map(|ty| ts(resolve, ty)).collect::<Vec<_>>().join(", "))
        }
        TypeDefKind::Option(ty) => format!("{} | null", ts(resolve, ty)),
        TypeDefKind::Result(r) => {
            let ok = r.ok.as_ref().map_or("undefined".into(), |t| ts(resolve, t));
            let err = r.err.as_ref().map_or("undefined".into(), |t| ts(resolve, t));
            format!("{{ tag: \"ok\"; val: {ok} }} | {{ tag: \"err\"; val: {err} }}")
        }
        TypeDefKind::Type(ty) => ts(resolve, ty),
        TypeDefKind::Handle(Handle::Own(_) | Handle::Borrow(_)) | TypeDefKind::Resource => "unknown".into(),
        _ => "unknown".into(),
    }
}

/// `T[]` needs parentheses around a union.
fn wrap(ty: String) -> String {
    if ty.contains(" | ") { format!("({ty})") } else { ty }
}

fn docs(out: &mut String, docs: &Docs, indent: &str) -> Result<()> {
    let Some(text) = &docs.contents else { return Ok(()) };
    writeln!(out, "{indent}/**")?;
    for line in text.trim_end().lines() {
        let line = line.replace("*/", "*\\/");
        if line.is_empty() {
            writeln!(out, "{indent} *")?;
        } else {
            writeln!(out, "{indent} * {line}")?;
        }
    }
    writeln!(out, "{indent} */")?;
    Ok(())
}

fn words(name: &str) -> impl Iterator<Item = &str> {
    name.split(['-', '_']).filter(|w| !w.is_empty())
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

fn pascal(name: &str) -> String {
    words(name).map(capitalised).collect()
}

fn camel(name: &str) -> String {
    let mut out = String::new();
    for (i, word) in words(name).enumerate() {
        out.push_str(&if i == 0 { word.to_owned() } else { capitalised(word) });
    }
    out
}
