//! What the binary's own tests share: starting `wsplug` as a process and talking to it with a
//! small blocking WebSocket client (no async runtime, so a test reads like a user's session).

#![allow(dead_code)] // each test file uses its part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use wsplug::protocol::decoder::{Decoder, Event, Limits, Message};
use wsplug::protocol::frame::encode_client_frame;

/// A `wsplug` process serving on a loopback port; killed when dropped.
pub struct Served {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its log so far (kept, so that a failing test can show it).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Starts `command` (a `wsplug` serving on `--listen 127.0.0.1:0`, stderr piped) and waits for
    /// its "listening" line.
    pub fn start(mut command: Command) -> Served {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start wsplug");
        let (addr, log) = wait_listening(child.stderr.take().unwrap());
        Served { child, addr, log }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// Reads a server's log until its "listening addr=" line; keeps draining (and recording) it after,
/// so that the server never blocks on a full pipe.
pub fn wait_listening(stderr: ChildStderr) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else { panic!("wsplug exited:\n{}", log.lock().unwrap().join("\n")) };
        let found = line
            .split_once("listening addr=")
            .map(|(_, rest)| rest.split_whitespace().next().unwrap_or_default().to_owned());
        log.lock().unwrap().push(line);
        if let Some(addr) = found {
            break addr.parse().expect("a socket address");
        }
    };
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    (addr, log)
}

/// What came back first for a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Text(String),
    Binary(Vec<u8>),
    /// The server closed the connection: its code and reason.
    Close(u16, String),
}

/// Opens a WebSocket on `path`, sends `text`, returns the first text message that comes back.
pub fn exchange(addr: SocketAddr, path: &str, protocol: Option<&str>, text: &str) -> String {
    match answer(addr, path, protocol, 0x1, text.as_bytes()) {
        Answer::Text(t) => t,
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Opens a WebSocket on `path`, sends one message (`opcode` 1 text, 2 binary), returns the first
/// message or the close frame that comes back.
pub fn answer(addr: SocketAddr, path: &str, protocol: Option<&str>, opcode: u8, payload: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
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
    stream.write_all(&encode_client_frame(true, opcode, payload, [1, 2, 3, 4])).unwrap();
    let mut decoder = Decoder::client(Limits::default());
    loop {
        match decoder.decode(&mut buf).unwrap() {
            Some(Event::Message(Message::Text(t))) => return Answer::Text(String::from_utf8(t.to_vec()).unwrap()),
            Some(Event::Message(Message::Binary(b))) => return Answer::Binary(b.to_vec()),
            Some(Event::Close(frame)) => {
                let (code, reason) = frame.map(|f| (f.code.0, f.reason.to_string())).unwrap_or((1005, String::new()));
                return Answer::Close(code, reason);
            }
            Some(_) => {}
            None => {}
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Runs `wsplug connect URL [--protocol P]...` with `input` on stdin: (success, stdout, stderr).
pub fn wsplug_connect(url: &str, input: &str, protocols: &[&str]) -> (bool, String, String) {
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
}
