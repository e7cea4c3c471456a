//! Test support: start a real server on loopback from inline TOML, and talk to it either with an
//! independent client (tokio-tungstenite) or byte for byte over a raw `TcpStream`.
//!
//! Every helper is bounded in time: a test that would hang fails instead.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsplug::Server;
use wsplug::config::Config;
use wsplug::protocol::frame::encode_client_frame;
use wsplug::protocol::{Decoder, Event, Limits};
use wsplug::reload::ReloadHandle;
use wsplug::server::ShutdownHandle;

pub mod pinned;

/// The longest any single step of a test may take.
pub const STEP: Duration = Duration::from_secs(10);

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server running in this process on an ephemeral loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: ShutdownHandle,
    /// The server's run loop; its error, if any, rendered as text.
    pub task: tokio::task::JoinHandle<Result<(), String>>,
    /// Triggers a full reload (what SIGHUP does), for servers started from a file.
    pub reload: Option<ReloadHandle>,
    /// The admin listener, when the config sets `admin`.
    pub admin: Option<SocketAddr>,
}

impl TestServer {
    /// Starts a server from TOML config text (its `listen` is replaced by 127.0.0.1:0).
    pub async fn start(toml: &str) -> Self {
        let base = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut config = Config::parse(toml, "test config", base).expect("valid test config");
        config.listen = "127.0.0.1:0".parse().unwrap();
        let server = Server::bind(&config).await.expect("bind");
        let addr = server.local_addr().unwrap();
        let admin = server.admin_addr();
        let shutdown = server.shutdown_handle();
        let task = tokio::spawn(async move { server.run().await.map_err(|e| format!("{e:#}")) });
        Self { addr, shutdown, task, reload: None, admin }
    }

    /// Starts a server from a config file (its `listen` replaced by 127.0.0.1:0), optionally
    /// watching its files for hot reload.
    pub async fn from_file(path: &std::path::Path, watch: bool) -> Self {
        let mut config = Config::from_file(path).expect("valid test config file");
        config.listen = "127.0.0.1:0".parse().unwrap();
        let mut server = Server::bind(&config).await.expect("bind").with_config_file(path);
        if watch {
            server.watch().expect("watch");
        }
        let addr = server.local_addr().unwrap();
        let admin = server.admin_addr();
        let shutdown = server.shutdown_handle();
        let reload = server.reload_handle();
        let task = tokio::spawn(async move { server.run().await.map_err(|e| format!("{e:#}")) });
        Self { addr, shutdown, task, reload: Some(reload), admin }
    }

    /// A server with one native echo route at /echo and the given extra TOML.
    pub async fn echo(extra: &str) -> Self {
        Self::start(&format!("{extra}\n[[routes]]\npath = \"/echo\"\nkind = \"echo\"\n")).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Connects with tokio-tungstenite, allowing messages up to 64 MiB.
    pub async fn connect(&self, path: &str) -> Client {
        self.try_connect(path).await.expect("handshake")
    }

    pub async fn try_connect(&self, path: &str) -> Result<Client, tungstenite::Error> {
        let config = WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(64 << 20));
        let (ws, _) = tokio::time::timeout(
            STEP,
            tokio_tungstenite::connect_async_with_config(self.url(path), Some(config), false),
        )
        .await
        .expect("connect timed out")?;
        Ok(ws)
    }

    /// Opens a raw WebSocket connection (handshake done by hand) for byte-level tests.
    pub async fn raw(&self, path: &str) -> RawClient {
        RawClient::connect(self.addr, path).await
    }
}

/// A TLS client configuration that trusts only `certs` (the tests' own certificates), with ALPN
/// `http/1.1`; ring, like the server (host/src/server/tls.rs).
pub fn tls_client_config(
    certs: &[&tokio_rustls::rustls::pki_types::CertificateDer<'static>],
) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add((*cert).clone()).expect("a certificate made by the test");
    }
    #[allow(deprecated)] // ring has no post-quantum key exchange; the server uses it too
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(config)
}

/// A `wss://` client over a TLS stream made by the test (tokio-rustls).
pub type TlsClient = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Receives the next data or close message, skipping pings/pongs.
pub async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Message {
    loop {
        let msg = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("message timed out")
            .expect("stream ended")
            .expect("read error");
        if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return msg;
        }
    }
}

/// Sends a message and expects the same back.
pub async fn assert_echo<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, msg: Message) {
    tokio::time::timeout(STEP, ws.send(msg.clone())).await.expect("send timed out").expect("send");
    assert_eq!(next_message(ws).await, msg);
}

/// Sends a request head and returns everything the server answers until it closes.
pub async fn http_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut out)).await.expect("response timed out").ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of an HTTP response.
pub fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {response:?}"))
}

/// A valid upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A WebSocket client that writes raw frames and decodes the server's frames with wsplug's own
/// decoder in client mode.
pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
}

/// What a raw client saw next.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Event(Event),
    /// The server closed TCP.
    Eof,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::handshake(stream, path).await
    }

    /// [`RawClient::connect`] from another loopback address (outside 127.0.0.1's per-address limits).
    pub async fn connect_from(local: [u8; 4], addr: SocketAddr, path: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((local, 0))).unwrap();
        let stream = tokio::time::timeout(STEP, socket.connect(addr)).await.expect("connect in time").unwrap();
        Self::handshake(stream, path).await
    }

    async fn handshake(mut stream: TcpStream, path: &str) -> Self {
        stream.write_all(upgrade_request(path).as_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tokio::time::timeout(STEP, stream.read_buf(&mut buf)).await.expect("handshake timed out").unwrap();
            assert!(n > 0, "server closed during handshake");
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let _ = buf.split_to(head_end);
        Self { stream, buf, decoder: Decoder::client(Limits { max_frame_size: 64 << 20, max_message_size: 64 << 20 }) }
    }

    /// Sends one masked frame (raw opcode, so invalid ones can be sent too).
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_raw(&encode_client_frame(fin, opcode, payload, [0x12, 0x34, 0x56, 0x78])).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes)).await.expect("write timed out").unwrap();
    }

    /// The next frame-level event from the server, or EOF.
    pub async fn next(&mut self) -> Seen {
        loop {
            if let Some(e) = self.decoder.decode(&mut self.buf).expect("server sent an invalid frame") {
                return Seen::Event(e);
            }
            match tokio::time::timeout(STEP, self.stream.read_buf(&mut self.buf)).await.expect("read timed out") {
                Ok(0) | Err(_) => return Seen::Eof,
                Ok(_) => {}
            }
        }
    }

    /// The text messages that arrive until one contains `needle` (included), or `within` passes,
    /// or the server closes TCP.
    pub async fn texts_until_seen(&mut self, needle: &str, within: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut texts = Vec::new();
        loop {
            while let Some(e) = self.decoder.decode(&mut self.buf).expect("server sent an invalid frame") {
                if let Event::Message(wsplug::protocol::Message::Text(t)) = e {
                    texts.push(String::from_utf8(t.to_vec()).expect("text is UTF-8"));
                    if texts.last().is_some_and(|t| t.contains(needle)) {
                        return texts;
                    }
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return texts,
            }
        }
    }

    /// Reads until the server's close frame; returns its code (None: no code), and checks that the
    /// server then closes TCP.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Seen::Event(Event::Close(frame)) => {
                    let code = frame.map(|f| f.code.0);
                    // Answer like a well-behaved client, then the server must close TCP.
                    let _ = self
                        .stream
                        .write_all(&encode_client_frame(true, 0x8, &code.unwrap_or(1000).to_be_bytes(), [1, 2, 3, 4]))
                        .await;
                    assert_eq!(self.next().await, Seen::Eof, "server must close TCP after the close handshake");
                    return code;
                }
                Seen::Event(_) => continue,
                Seen::Eof => panic!("server closed TCP without a close frame"),
            }
        }
    }
}

/// A component with an extra custom section appended: the same behaviour, another content hash
/// (a "new version" for hot-reload tests).
pub fn with_custom_section(component: &[u8], payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"wsplug-test";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(payload);
    let mut out = component.to_vec();
    out.push(0); // custom section
    leb(body.len(), &mut out);
    out.extend(body);
    out
}

/// The path of a built plugin component (target/plugins/NAME.wasm).
pub fn plugin_path(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins").join(format!("{name}.wasm"))
}

/// A fresh temporary directory for one test (removed when dropped).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wsplug-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The probe test plugin with its version tag patched (`v0000` → `vNNNN`): distinguishable versions
/// of one build, for hot-reload tests and benchmarks.
pub fn probe_version(n: u32) -> Vec<u8> {
    plugin_version("probe", n)
}

/// A test plugin that carries a version tag (`probe`, `hostile`) with the tag patched to `vNNNN`.
pub fn plugin_version(name: &str, n: u32) -> Vec<u8> {
    let mut bytes = std::fs::read(plugin_path(name)).unwrap();
    let marker = b"wsplug-tag:v0000";
    let at = bytes.windows(marker.len()).position(|w| w == marker).expect("the plugin carries its tag");
    bytes[at + 11..at + 16].copy_from_slice(format!("v{n:04}").as_bytes());
    bytes
}

/// Writes a file the way deploy tools do: to a temporary name, then renamed over.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A server in a child process, so that its memory and CPU time are its own: the calling test
/// binary re-executed to run its `child_server` test (ignored otherwise), which calls
/// [`run_child_server`] with the same `env` variable naming the config file.
pub struct ServerProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl ServerProcess {
    /// Starts the child with `config` (TOML; its `listen` should be "127.0.0.1:0"), passed through
    /// the environment variable `env`, and waits until it listens.
    pub fn start(config: &str, env: &str) -> Self {
        use std::io::BufRead;
        let dir = TempDir::new("child-server");
        let path = dir.join("wsplug.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["child_server", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(env, &path)
            .stdout(std::process::Stdio::piped())
            // WSPLUG_CHILD_LOG (a log filter, e.g. "warn") shows the child's log on the test's stderr.
            .stderr(match std::env::var_os("WSPLUG_CHILD_LOG") {
                Some(_) => std::process::Stdio::inherit(),
                None => std::process::Stdio::null(),
            })
            .spawn()
            .expect("start the child server");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("child server exited").unwrap();
            // libtest's "test child_server ... " precedes it on the same line.
            if let Some((_, addr)) = line.split_once("listening ") {
                break addr.trim().parse().unwrap();
            }
        };
        Self { child, addr, _dir: dir }
    }

    /// Its resident memory now.
    pub fn rss(&self) -> usize {
        (self.rss_reader())()
    }

    /// A function that reads its resident memory, for a task that samples it (0 once it is gone).
    pub fn rss_reader(&self) -> impl Fn() -> usize + Send + 'static {
        let path = format!("/proc/{}/status", self.child.id());
        move || {
            let Ok(status) = std::fs::read_to_string(&path) else { return 0 };
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
        }
    }

    /// The highest RSS seen over `span`.
    pub async fn peak_rss(&self, span: Duration) -> usize {
        let end = std::time::Instant::now() + span;
        let mut peak = 0;
        while std::time::Instant::now() < end {
            peak = peak.max(self.rss());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    }

    /// The user and system CPU time it has used.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // After the command name (which ends with ')'), utime and stime are the 12th and 13th fields.
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of a test binary's `child_server` test: when `env` names a config file, prints
/// `listening ADDR` and serves until killed; otherwise returns at once.
pub async fn run_child_server(env: &str) {
    let Ok(path) = std::env::var(env) else { return };
    if let Ok(filter) = std::env::var("WSPLUG_CHILD_LOG") {
        let filter = tracing_subscriber::EnvFilter::new(filter);
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let config = Config::from_file(std::path::Path::new(&path)).expect("child config");
    let server = Server::bind(&config).await.expect("bind");
    println!("listening {}", server.local_addr().unwrap());
    server.run().await.expect("server run");
}

/// Raises the open-file limit as far as the system allows (a child server inherits it); panics if
/// that is below `needed`.
pub fn raise_file_limit(needed: u64) {
    let fds = rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-file limit");
    assert!(fds >= needed, "these tests need an open-file limit of {needed} (ulimit -n is {fds})");
}

/// How many of `sockets` (connected, never sent a byte) the server dropped within `wait`: with
/// 408, or with 503 and Retry-After when dropped from the handshake pool before it had been
/// silent a second; any other answer fails the test. The sockets are read concurrently.
pub async fn dropped_silent(sockets: Vec<TcpStream>, wait: Duration) -> usize {
    let answers = futures_util::future::join_all(sockets.into_iter().map(|mut socket| async move {
        let mut answer = Vec::new();
        tokio::time::timeout(wait, socket.read_to_end(&mut answer)).await.ok().map(|_| answer)
    }))
    .await;
    let mut dropped = 0;
    for answer in answers.into_iter().flatten() {
        let text = String::from_utf8_lossy(&answer);
        let busy = text.starts_with("HTTP/1.1 503 ") && text.contains("\r\nRetry-After: ");
        assert!(text.starts_with("HTTP/1.1 408 ") || busy, "{text:?}");
        dropped += 1;
    }
    dropped
}

/// The chat protocol's large rooms (`plugins/chat/src/lib.rs`, "Large rooms"), checked against the
/// chat plugin at `/chat` of `server`, in any language: joins are named up to 50 members, then only
/// counted (`presence`: at once when the room turns large or the count moved by an eighth, else at
/// most once a second, with the next event); a `welcome` lists 50 members and counts them all;
/// shrinking back to 50 sends the whole list as `members`.
pub async fn check_chat_large_rooms(server: &TestServer, lang: &str) {
    let field = |t: &str, key: &str| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(t).unwrap_or_else(|e| panic!("{lang}: bad JSON {t:?}: {e}"));
        v.get(key).map(|f| f.as_str().map(str::to_owned).unwrap_or_else(|| f.to_string()))
    };
    let kind = |t: &str| field(t, "type").unwrap_or_default();
    // Each read waits for the message it expects (a loaded machine may be slow), bounded.
    let within = Duration::from_secs(10);
    let mut members = Vec::new();
    for i in 0..60 {
        members.push(server.raw(&format!("/chat?nick=m{i:02}&room=big")).await);
    }
    // The last one's welcome: the first 50 nicks, and the count of all.
    let last = members[59].texts_until_seen(r#""type":"welcome""#, within).await;
    let welcome: serde_json::Value = serde_json::from_str(last.last().expect("a welcome")).unwrap();
    assert_eq!(welcome["type"], "welcome", "{lang}: {last:?}");
    assert_eq!(welcome["count"], 60, "{lang}: {welcome}");
    assert_eq!(welcome["members"].as_array().map(Vec::len), Some(50), "{lang}: {welcome}");
    // The first one heard m01..m49 join by name, then the room turn large: a count, 51.
    let first = members[0].texts_until_seen(r#""type":"presence""#, within).await;
    let joined: Vec<String> = first.iter().filter(|t| kind(t) == "join").filter_map(|t| field(t, "nick")).collect();
    let expected: Vec<String> = (1..50).map(|i| format!("m{i:02}")).collect();
    assert_eq!(joined, expected, "{lang}: joins named");
    assert_eq!(first.last().and_then(|t| field(t, "count")).as_deref(), Some("51"), "{lang}: {first:?}");
    // A second on, the next event brings the count out; `/who` lists everyone.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    members[0].send_frame(true, 0x1, b"/who").await;
    let after = members[0].texts_until_seen(r#""type":"members""#, within).await;
    let who: serde_json::Value = serde_json::from_str(after.last().expect("a /who answer")).unwrap();
    assert_eq!(who["members"].as_array().map(Vec::len), Some(60), "{lang}: {who}");
    let presences = after.iter().filter(|t| kind(t) == "presence").count();
    assert!(presences <= 3, "{lang}: a presence per join: {after:?}");
    let heard = members[1].texts_until_seen(r#""count":60"#, within).await;
    assert_eq!(heard.last().and_then(|t| field(t, "type")).as_deref(), Some("presence"), "{lang}: {heard:?}");
    // Ten leave: at 50 the room hears its whole list again; then leaves are named.
    for mut gone in members.drain(50..) {
        gone.send_frame(true, 0x8, &1000u16.to_be_bytes()).await;
    }
    let shrunk = members[0].texts_until_seen(r#""type":"members""#, within).await;
    let list: serde_json::Value = serde_json::from_str(shrunk.last().expect("the whole list")).unwrap();
    assert_eq!(list["type"], "members", "{lang}: {shrunk:?}");
    assert_eq!(list["members"].as_array().map(Vec::len), Some(50), "{lang}: {list}");
    members[49].send_frame(true, 0x8, &1000u16.to_be_bytes()).await;
    let named = members[0].texts_until_seen(r#""nick":"m49""#, within).await;
    assert!(named.last().is_some_and(|t| kind(t) == "leave"), "{lang}: {named:?}");
}

/// The next text message (skipping pings), within a step.
pub async fn next_text(ws: &mut Client) -> String {
    match tokio::time::timeout(STEP, next_message(ws)).await.expect("a message in time") {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Sends a line of text (the test plugins' line protocols).
pub async fn say(ws: &mut Client, line: &str) {
    ws.send(Message::text(line)).await.unwrap();
}

/// Sends a command that replies, and returns the reply.
pub async fn ask(ws: &mut Client, line: &str) -> String {
    say(ws, line).await;
    next_text(ws).await
}

/// Asks `line` until its reply satisfies `done`, within `within` (for what the server reports
/// periodically, like presence).
pub async fn ask_until(ws: &mut Client, line: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let reply = ask(ws, line).await;
        if done(&reply) {
            return reply;
        }
        assert!(tokio::time::Instant::now() < deadline, "{line}: last reply {reply:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
