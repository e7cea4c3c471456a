//! `wsplug new` as a newcomer uses it, in every language: a project scaffolded into a temporary
//! folder outside the repository, built with the one command its README gives (`./build.sh`),
//! then run through its own script (`wsplug test`), served by `wsplug --route` and talked to over
//! a WebSocket and through `wsplug connect`.
//! For the languages whose mistakes only show when the plugin runs (JavaScript, Python), a
//! wrongly shaped return is then built in, and the client of a `dev = true` route must be told
//! which action and field are wrong; in TypeScript the same mistake must stop the build.
//!
//! These tests are `#[ignore]`d in a plain `cargo test`: the first build of a language installs
//! its toolchain (npm, pip, Go, the C toolchain by apt), which needs the package registries and
//! minutes. `.ci/run` runs them, after plugins/build-all.sh. The JavaScript and TypeScript
//! projects install their toolchain into target/scaffold-cache/ (as `XDG_CACHE_HOME`, so the
//! scaffolds' default cache path is the one exercised); Python, C and Go share target/toolchains/
//! with the repository's own plugins (`WSPLUG_TOOLCHAINS`: the same pins, installed once per CI
//! run); the Rust project builds into target/scaffold-rust/.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{Answer, Served};

/// A scaffolded project in a temporary folder outside the repository (removed when dropped).
struct Project {
    lang: String,
    root: PathBuf,
    dir: PathBuf,
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// `wsplug new shout --lang LANG --dir DIR`: checks what it prints.
fn scaffold(lang: &str) -> Project {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("wsplug-scaffold-{}-{lang}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    assert!(!root.starts_with(repo()), "the project must be outside the repository");
    let dir = root.join("shout");
    let output = Command::new(env!("CARGO_BIN_EXE_wsplug"))
        .args(["new", "shout", "--lang", lang, "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        out.contains("build.sh") && out.contains(&format!("wsplug --route /shout={}/shout.wasm", dir.display())),
        "{out}"
    );
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains("./build.sh") && readme.contains("wsplug --route /shout=shout.wasm"), "{readme}");
    Project { lang: lang.to_owned(), root, dir }
}

/// Runs the project's `./build.sh` (the README's command): Ok(seconds) or Err(its output).
fn build(project: &Project) -> Result<f64, String> {
    let started = Instant::now();
    let mut command = Command::new("bash");
    command
        .arg(project.dir.join("build.sh"))
        .current_dir(&project.dir)
        .env("XDG_CACHE_HOME", repo().join("target/scaffold-cache"))
        .env("CARGO_TARGET_DIR", repo().join("target/scaffold-rust"));
    match project.lang.as_str() {
        "js" | "ts" => command.env_remove("WSPLUG_TOOLCHAINS"),
        _ => command.env("WSPLUG_TOOLCHAINS", repo().join("target/toolchains")),
    };
    let output = command.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        return Err(text);
    }
    assert!(project.dir.join("shout.wasm").exists(), "build.sh succeeded but wrote no shout.wasm:\n{text}");
    Ok(started.elapsed().as_secs_f64())
}

/// Serves the project's component at /shout (with `dev = true` when asked).
fn serve(project: &Project, dev: bool) -> Served {
    let config = project.dir.join("wsplug.toml");
    std::fs::write(&config, format!("[[routes]]\npath = \"/shout\"\nplugin = \"shout.wasm\"\ndev = {dev}\n")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_wsplug"));
    command.args(["--no-watch", "--listen", "127.0.0.1:0", "--config"]).arg(&config);
    Served::start(command)
}

/// The starter answers every text in upper case (over a WebSocket and through `wsplug connect`)
/// and sends binary back unchanged.
fn check_starter(lang: &str) {
    let project = scaffold(lang);
    let seconds = build(&project).unwrap_or_else(|out| panic!("{lang}: ./build.sh failed:\n{out}"));
    eprintln!("{lang}: built in {seconds:.1} s");
    // The project's own script, as its README says to run it.
    let output = Command::new(env!("CARGO_BIN_EXE_wsplug"))
        .args(["test", "shout.wasm", "shout.test"])
        .current_dir(&project.dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && report.contains("steps as expected"),
        "{lang}: {report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let server = serve(&project, false);
    assert_eq!(
        common::answer(server.addr, "/shout", None, 0x1, "hello, wsplug".as_bytes()),
        Answer::Text("HELLO, WSPLUG".into()),
        "{}",
        server.log_text()
    );
    assert_eq!(
        common::answer(server.addr, "/shout", None, 0x2, &[0, 1, 254, 255]),
        Answer::Binary(vec![0, 1, 254, 255])
    );
    let (ok, out, err) = common::wsplug_connect(&format!("ws://{}/shout", server.addr), "one\ntwo three\n", &[]);
    assert!(ok, "{err}");
    assert_eq!(out, "ONE\nTWO THREE\n", "{err}");
    // The starter logs each connection through the SDK's logging.
    assert!(server.log_text().contains("opened"), "{}", server.log_text());
}

/// Replaces `from` (which must be there) by `to` in the project's file.
fn edit(project: &Project, file: &str, from: &str, to: &str) {
    let path = project.dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// A return of the wrong shape, built in: a `dev` route's client is told which action and field.
fn check_wrong_shape(lang: &str, file: &str, from: &str, to: &str, expected: &[&str]) {
    let project = scaffold(lang);
    edit(&project, file, from, to);
    build(&project).unwrap_or_else(|out| panic!("{lang}: ./build.sh failed:\n{out}"));
    let server = serve(&project, true);
    let answer = common::answer(server.addr, "/shout", None, 0x1, b"hello");
    let Answer::Close(1011, reason) = &answer else { panic!("{lang}: expected a 1011 close, got {answer:?}") };
    for needle in expected {
        assert!(reason.contains(needle), "{lang}: the close reason {reason:?} does not say {needle:?}");
    }
    // The server's ERROR line says it too (in full: with the traceback or the stack). The log is
    // read from the server's stderr by another thread: it may come a moment after the close.
    let logged =
        |log: &str| log.lines().any(|l| l.contains("ERROR") && l.contains("wrong shape") && l.contains(expected[1]));
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !logged(&server.log_text()) && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(logged(&server.log_text()), "{}", server.log_text());
}

#[test]
#[ignore = "installs language toolchains: run by .ci/run"]
fn rust_scaffold_builds_and_answers() {
    check_starter("rust");
}

/// The Rust project keeps the size profile outside any workspace (the starter is about 74 KB with
/// it, over 100 KB without), and a manifest that lost `crate-type = ["cdylib"]` (cargo then
/// builds no .wasm at all) fails the build with that line named.
#[test]
#[ignore = "installs language toolchains: run by .ci/run"]
fn a_rust_project_is_small_and_a_lost_cdylib_is_named() {
    let project = scaffold("rust");
    build(&project).unwrap_or_else(|out| panic!("./build.sh failed:\n{out}"));
    let size = std::fs::metadata(project.dir.join("shout.wasm")).unwrap().len();
    assert!(size < 100_000, "shout.wasm is {size} bytes: the size profile is not applied");
    std::fs::remove_file(project.dir.join("shout.wasm")).unwrap();
    edit(&project, "Cargo.toml", "crate-type = [\"cdylib\"]", "");
    let out = build(&project).expect_err("a crate without cdylib has no component to copy");
    assert!(out.contains("crate-type = [\"cdylib\"]"), "{out}");
}

#[test]
#[ignore = "installs language toolchains: run by .ci/run"]
fn javascript_scaffold_builds_and_answers() {
    check_starter("js");
}

#[test]
#[ignore = "installs language toolchains: run by .ci/run"]
fn typescript_scaffold_builds_and_answers() {
    check_starter("ts");
}

#[test]
#[ignore = "installs language toolchains: run by .ci/run"]
fn python_scaffold_builds_and_answers() {
    check_starter("python");
}

#[test]
#[ignore = "installs language toolchains: run by .ci/run"]
fn c_scaffold_builds_and_answers() {
    check_starter("c");
}

#[test]
#[ignore = "installs language toolchains: run by .ci/run"]
fn go_scaffold_builds_and_answers() {
    check_starter("go");
}

#[test]
#[ignore = "installs language toolchains: run by .ci/run"]
fn a_javascript_action_of_the_wrong_shape_is_named_with_its_index_and_field() {
    check_wrong_shape(
        "js",
        "plugin.js",
        "[reply(text(msg.val.toUpperCase()))]",
        r#"[reply(text("fine")), { tag: "send", val: { to: "room", message: text("x") } }]"#,
        &["onMessage returned a wrong shape", "action 1 (send)", "field \"to\""],
    );
}

#[test]
#[ignore = "installs language toolchains: run by .ci/run"]
fn a_python_action_of_the_wrong_shape_is_named_with_its_index_and_field() {
    check_wrong_shape(
        "python",
        "app.py",
        "return [reply(text(msg.value.upper()))]",
        r#"return [reply(text("fine")), wsplug.send("room", text("x"))]"#,
        &["on_message returned a wrong shape", "action 1 (send)", "field 'to'"],
    );
}

#[test]
#[ignore = "installs language toolchains: run by .ci/run"]
fn a_typescript_action_of_the_wrong_shape_stops_the_build() {
    let project = scaffold("ts");
    edit(
        &project,
        "plugin.ts",
        "[reply(text(msg.val.toUpperCase()))]",
        r#"[{ tag: "send", val: { to: "room", message: text("x") } }]"#,
    );
    let out = build(&project).expect_err("a wrongly shaped action must not type-check");
    assert!(out.contains("plugin.ts") && out.contains("error TS"), "{out}");
    assert!(!project.dir.join("shout.wasm").exists());
}
