//! The binary alone is the product: a copy of it in an empty directory, run by another user with a
//! home of its own and no source checkout on the machine (see [`start`]), serves the chat page and
//! the example plugins with no config and no files beside it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Standalone {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies the binary into a fresh directory and starts it there. As root, it runs as `nobody` in
/// a mount namespace where the source checkout and the build's target directory are hidden
/// (empty), as on a machine that never saw them.
fn start() -> Standalone {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wsplug-standalone-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let binary = dir.join("wsplug");
    std::fs::copy(env!("CARGO_BIN_EXE_wsplug"), &binary).unwrap();
    let as_root = std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    // Mount namespaces need root and a kernel and container that allow them: try one first.
    let isolate = as_root
        && Path::new("/usr/bin/setpriv").exists()
        && Command::new("/usr/bin/unshare")
            .args(["--mount", "sh", "-c", r#"mount -t tmpfs none "$1""#, "sh"])
            .arg(&dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let mut command = if isolate {
        use std::os::unix::fs::PermissionsExt;
        for path in [&dir, &dir.join("home")] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let checkout = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
        let target = PathBuf::from(env!("CARGO_BIN_EXE_wsplug")).parent().unwrap().parent().unwrap().to_path_buf();
        let mut c = Command::new("/usr/bin/unshare");
        c.args([
            "--mount",
            "sh",
            "-c",
            r#"mount -t tmpfs none "$2" && mount -t tmpfs none "$1" && shift 2 && exec "$@""#,
            "sh",
        ])
        .arg(&checkout)
        .arg(&target)
        .args(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary);
        c
    } else {
        eprintln!("no root or no mount namespace: the copy runs as this user, with the checkout still visible");
        Command::new(&binary)
    };
    // Only a port is chosen; no config, no plugin, no page is given.
    command
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(&dir)
        .env_clear()
        .env("HOME", dir.join("home"))
        .env("WSPLUG_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the copied binary");
    let (addr, _log) = common::wait_listening(child.stderr.take().unwrap());
    Standalone { child, addr, dir }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn a_copied_binary_alone_serves_the_demo() {
    let server = start();
    let page = http_get(server.addr, "/");
    assert!(page.starts_with("HTTP/1.1 200 "), "{page}");
    assert!(page.contains("text/html") && page.contains("<!doctype html"), "{page}");
    let script = http_get(server.addr, "/app.js");
    assert!(script.starts_with("HTTP/1.1 200 ") && script.contains("text/javascript"), "{script}");
    assert!(http_get(server.addr, "/../Cargo.toml").starts_with("HTTP/1.1 404 "));

    assert_eq!(common::exchange(server.addr, "/echo", None, "hello from nowhere"), "hello from nowhere");
    // The chat plugin greets a new member with a JSON event of its own.
    let first =
        common::exchange(server.addr, "/chat", Some("chat.v1"), r#"{"type":"join","nick":"ada","room":"lobby"}"#);
    assert!(first.starts_with('{') && first.contains("\"type\""), "{first}");
}

/// `wsplug connect URL` relays stdin lines as text messages and prints what comes back, one line
/// each, then closes cleanly at the end of stdin; a refused handshake is an error that says why.
#[test]
fn wsplug_connect_talks_to_a_route() {
    let server = start();
    let (ok, out, err) = common::wsplug_connect(&format!("ws://{}/echo", server.addr), "hello\nworld\n", &[]);
    assert!(ok, "{err}");
    assert_eq!(out, "hello\nworld\n");
    assert!(err.contains("connected to") && err.contains("closed by the server: 1000"), "{err}");

    let (ok, out, err) =
        common::wsplug_connect(&format!("ws://{}/chat?nick=ada", server.addr), "hi all\n", &["chat.v1"]);
    assert!(ok && err.contains("subprotocol chat.v1"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("\"welcome\"") && lines[1].contains("\"hi all\""), "{out}");

    let (ok, _, err) = common::wsplug_connect(&format!("ws://{}/nowhere", server.addr), "", &[]);
    assert!(!ok && err.contains("404"), "{err}");
}

/// `wsplug check` reports on a good plugin (after calling each export once) and stores it in the
/// compile cache; a file that is not a component fails with the reason.
#[test]
fn wsplug_check_reports_probes_and_caches() {
    let dir = std::env::temp_dir().join(format!("wsplug-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let plugin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/chat.wasm");
    let check = |file: &Path| {
        let output = Command::new(env!("CARGO_BIN_EXE_wsplug"))
            .arg("check")
            .arg(file)
            .env("WSPLUG_CACHE_DIR", &dir)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = check(&plugin);
    assert!(ok, "{err}");
    assert!(out.contains(": ok") && out.contains("state hand-over on reload: yes"), "{out}");
    assert!(std::fs::read_dir(&dir).is_ok_and(|d| d.count() > 0), "the compiled plugin is cached");
    let (_, out, _) = check(&plugin);
    assert!(out.contains("loaded from the compile cache"), "{out}");
    let (ok, _, err) = check(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml").as_path());
    assert!(!ok && err.contains("not a WebAssembly file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
