//! `wsplug test PLUGIN SCRIPT` as a plugin author runs it: the example plugins' scripts pass, a
//! wrong expectation fails with a diff that names the line, `--bless` writes what a run produced,
//! and a malformed script is refused with its line.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `wsplug test` (extra arguments after the script): (success, stdout, stderr).
fn wsplug_test(plugin: &Path, script: &Path, extra: &[&str]) -> (bool, String, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_wsplug")).arg("test").arg(plugin).arg(script).args(extra).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsplug-scripts-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_example_scripts_pass() {
    for (plugin, script, steps) in [("echo", "plugins/echo/echo.test", 8), ("chat", "plugins/chat/chat.test", 17)] {
        let (ok, out, err) =
            wsplug_test(&repo().join(format!("target/plugins/{plugin}.wasm")), &repo().join(script), &[]);
        assert!(ok, "{plugin}: {out}{err}");
        assert!(out.contains(&format!("{steps} steps as expected")), "{plugin}: {out}");
        // The report shows each step and what it produced.
        assert!(out.contains("text 1 hello") && out.contains("  reply "), "{out}");
    }
}

#[test]
fn a_wrong_expectation_fails_with_a_diff_and_bless_rewrites_it() {
    let dir = scratch("wrong");
    let script = dir.join("echo.test");
    std::fs::write(&script, "open 1 /echo\n> accept\ntext 1 hello\n> reply text \"HELLO\"\nclose 1 1000\n").unwrap();
    let echo = repo().join("target/plugins/echo.wasm");
    let (ok, out, err) = wsplug_test(&echo, &script, &[]);
    assert!(!ok, "a wrong expectation must fail: {out}");
    assert!(out.contains("differs from the script (line 3)"), "{out}");
    assert!(out.contains("  - reply text \"HELLO\"\n  + reply text \"hello\""), "{out}");
    assert!(err.contains("1 of 3 steps differ"), "{err}");

    let (ok, out, _) = wsplug_test(&echo, &script, &["--bless"]);
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read_to_string(&script).unwrap(),
        "open 1 /echo\n> accept\ntext 1 hello\n> reply text \"hello\"\nclose 1 1000\n"
    );
    let (ok, out, err) = wsplug_test(&echo, &script, &[]);
    assert!(ok, "{out}{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_call_is_reported_and_the_others_reattached() {
    // The hostile test plugin panics on "panic" (its words are the telling line), and the
    // instance is rebuilt: the other open connection is re-attached.
    let dir = scratch("failing");
    let script = dir.join("hostile.test");
    std::fs::write(&script, "open 1 /h\nopen 2 /h\ntext 1 panic\n").unwrap();
    let hostile = repo().join("target/plugins/hostile.wasm");
    let (_, out, _) = wsplug_test(&hostile, &script, &["--bless"]);
    let written = std::fs::read_to_string(&script).unwrap();
    assert!(written.contains("text 1 panic\n> failed: trapped: "), "{out}\n{written}");
    assert!(written.contains("> conn 2: accept"), "the other connection is re-attached: {written}");
    assert!(!written.contains("> conn 1:"), "the failed call's connection is closed: {written}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_malformed_script_is_refused_with_its_line() {
    let dir = scratch("malformed");
    let script = dir.join("bad.test");
    std::fs::write(&script, "open 1 /echo\n> accept\ndance 1 wildly\n").unwrap();
    let (ok, _, err) = wsplug_test(&repo().join("target/plugins/echo.wasm"), &script, &[]);
    assert!(!ok);
    assert!(err.contains("bad.test") && err.contains("line 3") && err.contains("unknown step \"dance\""), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
