//! The binary alone is the product: a copy of it in an empty directory, run by another user with a
//! home of its own and no source checkout on the machine (see [`start`]), serves the chat page and
//! the example plugins with no config and no files beside it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use wsplug::protocol::decoder::{Decoder, Event, Limits, Message};
use wsplug::protocol::frame::encode_client_frame;

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
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else { panic!("the copied binary exited:\n{}", seen.join("\n")) };
        if let Some((_, rest)) = line.split_once("listening addr=") {
            break rest.split_whitespace().next().unwrap_or_default().parse().unwrap();
        }
        seen.push(line);
    };
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
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

/// Opens a WebSocket on `path`, sends `text`, returns the first text message that comes back.
fn exchange(addr: SocketAddr, path: &str, protocol: Option<&str>, text: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let protocol = protocol.map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    )
    .unwrap();
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let _ = buf.split_to(head_end);
    stream.write_all(&encode_client_frame(true, 0x1, text.as_bytes(), [1, 2, 3, 4])).unwrap();
    let mut decoder = Decoder::client(Limits::default());
    loop {
        match decoder.decode(&mut buf).unwrap() {
            Some(Event::Message(Message::Text(t))) => return String::from_utf8(t.to_vec()).unwrap(),
            Some(other) => panic!("expected a text message, got {other:?}"),
            None => {}
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
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

    assert_eq!(exchange(server.addr, "/echo", None, "hello from nowhere"), "hello from nowhere");
    // The chat plugin greets a new member with a JSON event of its own.
    let first = exchange(server.addr, "/chat", Some("chat.v1"), r#"{"type":"join","nick":"ada","room":"lobby"}"#);
    assert!(first.starts_with('{') && first.contains("\"type\""), "{first}");
}

/// `wsplug connect URL` relays stdin lines as text messages and prints what comes back, one line
/// each, then closes cleanly at the end of stdin; a refused handshake is an error that says why.
#[test]
fn wsplug_connect_talks_to_a_route() {
    let server = start();
    let connect = |url: String, input: &str, protocols: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsplug"))
            .arg("connect")
            .arg(url)
            .args(protocols.iter().flat_map(|p| ["--protocol", p]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = connect(format!("ws://{}/echo", server.addr), "hello\nworld\n", &[]);
    assert!(ok, "{err}");
    assert_eq!(out, "hello\nworld\n");
    assert!(err.contains("connected to") && err.contains("closed by the server: 1000"), "{err}");

    let (ok, out, err) = connect(format!("ws://{}/chat?nick=ada", server.addr), "hi all\n", &["chat.v1"]);
    assert!(ok && err.contains("subprotocol chat.v1"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("\"welcome\"") && lines[1].contains("\"hi all\""), "{out}");

    let (ok, _, err) = connect(format!("ws://{}/nowhere", server.addr), "", &[]);
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
