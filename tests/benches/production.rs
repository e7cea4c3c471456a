//! What the production features cost: permessage-deflate and TLS, each against its absence, in one
//! run. Every server runs alone on CPU 0 (`taskset`), the load generator on CPU 1; the figures are
//! work per second of *server* CPU (utime + stime from `/proc`), medians of `WSPLUG_BENCH_REPS`
//! runs (default 3) of `WSPLUG_BENCH_SECS` seconds each (default 3), servers interleaved.
//!
//!     cargo build --release                                  # target/release/wsplug
//!     cargo bench -p wsplug-tests --bench production         # everything: a few minutes
//!     cargo bench -p wsplug-tests --bench production -- json-16KiB tls-accept   # some scenarios
//!
//! Scenarios:
//! - `json-64B`, `json-16KiB`: JSON-like text echo, 50 connections, 1 in flight. Servers: wsplug's
//!   native echo without and with permessage-deflate (threshold 0, its defaults otherwise: no
//!   server context takeover), and Node's `ws` 8 without and with `perMessageDeflate` (threshold
//!   0, its defaults otherwise: context kept). `ws` is installed by this bench with npm into
//!   `target/bench-node/` on first use; without npm (or the registry), the Node rows are skipped
//!   with a warning. When deflate is agreed, the client sends its messages compressed too.
//!   Figures: messages per server CPU-second, and the bytes the server put on the wire per message
//!   (frame headers included) over the payload's size: the compression ratio.
//! - `tls-accept`: connections opened (TCP, TLS, the WebSocket handshake) and dropped, 50 at a
//!   time, against wsplug plain and wsplug over TLS (a certificate made at start, ECDSA P-256):
//!   handshakes per server CPU-second.
//! - `tls-64B`: 64 B text echo, 50 connections, 1 in flight, plain and over TLS.
//!
//! Every echo is checked against what was sent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use wsplug::protocol::deflate::{self, DeflateParams};
use wsplug::protocol::frame::encode_client_frame;
use wsplug::protocol::{Decoder, Event, Limits, Message};
use wsplug_tests::TempDir;
use wsplug_tests::pinned::{Pinned, TASKSET, free_port};

const SERVER_CPU: &str = "0";
const LOAD_CPU: usize = 1;
const WARM_UP: Duration = Duration::from_millis(500);
const STEP: Duration = Duration::from_secs(10);
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x8e];
const CONNECTIONS: usize = 50;
/// Distinct messages each connection sends in turn.
const VARIANTS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Wsplug,
    WsplugDeflate,
    WsplugTls,
    NodeWs,
    NodeWsDeflate,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Self::Wsplug => "wsplug",
            Self::WsplugDeflate => "wsplug-deflate",
            Self::WsplugTls => "wsplug-tls",
            Self::NodeWs => "node-ws",
            Self::NodeWsDeflate => "node-ws-deflate",
        }
    }

    fn deflate(self) -> bool {
        matches!(self, Self::WsplugDeflate | Self::NodeWsDeflate)
    }

    fn is_node(self) -> bool {
        matches!(self, Self::NodeWs | Self::NodeWsDeflate)
    }
}

#[derive(Clone, Copy)]
enum Workload {
    Echo { payload: usize, json: bool },
    Accept,
}

struct Scenario {
    name: &'static str,
    about: &'static str,
    workload: Workload,
    servers: &'static [Server],
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "json-64B",
        about: "64 B JSON-like text echo, 50 connections, 1 in flight",
        workload: Workload::Echo { payload: 64, json: true },
        servers: &[Server::Wsplug, Server::WsplugDeflate, Server::NodeWs, Server::NodeWsDeflate],
    },
    Scenario {
        name: "json-16KiB",
        about: "16 KiB JSON-like text echo, 50 connections, 1 in flight",
        workload: Workload::Echo { payload: 16 << 10, json: true },
        servers: &[Server::Wsplug, Server::WsplugDeflate, Server::NodeWs, Server::NodeWsDeflate],
    },
    Scenario {
        name: "tls-accept",
        about: "TCP + TLS + WebSocket handshakes, 50 at a time, each connection then dropped",
        workload: Workload::Accept,
        servers: &[Server::Wsplug, Server::WsplugTls],
    },
    Scenario {
        name: "tls-64B",
        about: "64 B text echo, 50 connections, 1 in flight",
        workload: Workload::Echo { payload: 64, json: false },
        servers: &[Server::Wsplug, Server::WsplugTls],
    },
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("production: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What every run needs: the binaries, the config, the certificate.
struct Env {
    wsplug: PathBuf,
    dir: TempDir,
    config: PathBuf,
    tls_config: PathBuf,
    cert: CertificateDer<'static>,
    /// `node` and the installed `ws` module, if they could be had.
    node_ws: Option<PathBuf>,
    window: Duration,
    reps: usize,
}

fn number(name: &str, default: f64) -> Result<f64, String> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn prepare() -> Result<Env, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let release = exe.parent().and_then(|p| p.parent()).ok_or("no target dir")?.to_path_buf();
    let wsplug = release.join("wsplug");
    if !wsplug.is_file() {
        return Err(format!("{} not found: run `cargo build --release` first", wsplug.display()));
    }
    if !std::path::Path::new(TASKSET).exists() {
        return Err(format!("{TASKSET} not found: it pins the servers (Debian: util-linux)"));
    }
    let dir = TempDir::new("production");
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("cert.pem"), generated.cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("key.pem"), generated.signing_key.serialize_pem()).map_err(|e| e.to_string())?;
    let routes = "listen = \"127.0.0.1:0\"\n\n[limits]\nmax_connections = 20000\nping_interval = \"10m\"\n\
                  idle_timeout = \"20m\"\n\n[[routes]]\npath = \"/echo\"\nkind = \"echo\"\n\n\
                  [[routes]]\npath = \"/deflate\"\nkind = \"echo\"\n[routes.deflate]\nthreshold = 0\n";
    let config = dir.join("wsplug.toml");
    std::fs::write(&config, routes).map_err(|e| e.to_string())?;
    let tls_config = dir.join("wsplug-tls.toml");
    let tls = format!("tls = {{ cert = \"cert.pem\", key = \"key.pem\" }}\n{routes}");
    std::fs::write(&tls_config, tls).map_err(|e| e.to_string())?;
    let node_ws = install_node_ws(&release.join("..").join("bench-node"), &dir);
    Ok(Env {
        wsplug,
        config,
        tls_config,
        cert: generated.cert.der().clone(),
        node_ws,
        dir,
        window: Duration::from_secs_f64(number("WSPLUG_BENCH_SECS", 3.0)?),
        reps: number("WSPLUG_BENCH_REPS", 3.0)? as usize,
    })
}

/// Installs Node's `ws` into `prefix` (once) and writes the echo server script; `None` (with a
/// warning) when node or npm is missing or the install fails.
fn install_node_ws(prefix: &std::path::Path, dir: &TempDir) -> Option<PathBuf> {
    let module = prefix.join("node_modules").join("ws");
    if !module.is_dir() {
        let _ = std::fs::create_dir_all(prefix);
        let status = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--omit-lockfile-registry-resolved", "ws@8"])
            .current_dir(prefix)
            .stdout(std::process::Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) || !module.is_dir() {
            eprintln!("production: WARNING: could not install Node's ws with npm: the node-ws rows are skipped");
            return None;
        }
    }
    let script = dir.join("ws-echo.js");
    let text = format!(
        "const {{ WebSocketServer }} = require({:?});\n\
         const [port, deflate] = [Number(process.argv[2]), process.argv[3] === 'deflate'];\n\
         const wss = new WebSocketServer({{ host: '127.0.0.1', port, maxPayload: 64 << 20,\n\
           perMessageDeflate: deflate ? {{ threshold: 0 }} : false }});\n\
         wss.on('connection', (ws) => ws.on('message', (data, binary) => ws.send(data, {{ binary }})));\n",
        module.display().to_string()
    );
    std::fs::write(&script, text).ok()?;
    Some(script)
}

async fn start(env: &Env, server: Server) -> Result<Pinned, String> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = env.dir.join(&format!("{}-{port}.log", server.name()));
    let node = env.node_ws.clone();
    Pinned::start(server.name(), SERVER_CPU, addr, log, |c| match server {
        Server::NodeWs | Server::NodeWsDeflate => {
            let script = node.expect("node rows are skipped without ws");
            c.arg("node").arg(script).arg(port.to_string()).arg(if server.deflate() { "deflate" } else { "plain" });
        }
        _ => {
            let config = if server == Server::WsplugTls { &env.tls_config } else { &env.config };
            c.arg(&env.wsplug).arg("--config").arg(config).arg("--listen").arg(addr.to_string());
            c.arg("--no-watch").env("WSPLUG_LOG", "warn");
        }
    })
    .await
}

/// What a run counted in its window.
#[derive(Clone, Copy, Default)]
struct Sample {
    work: f64,
    server_cpu: f64,
    secs: f64,
    /// Bytes the server sent per message, over the payload (echo only).
    wire_ratio: f64,
}

impl Sample {
    fn per_cpu(&self) -> f64 {
        self.work / self.server_cpu.max(0.01)
    }
}

/// Counters the connections share.
#[derive(Default)]
struct Counters {
    work: AtomicU64,
    wire: AtomicU64,
    stop: AtomicBool,
}

fn bench(args: &[String]) -> Result<(), String> {
    let scenarios: Vec<&Scenario> = if args.is_empty() {
        SCENARIOS.iter().collect()
    } else {
        let picked: Vec<&Scenario> = SCENARIOS.iter().filter(|s| args.iter().any(|a| a == s.name)).collect();
        if picked.is_empty() {
            return Err(format!("unknown scenario; known: {}", SCENARIOS.map(|s| s.name).join(", ")));
        }
        picked
    };
    let env = prepare()?;
    if let Some(core) = core_affinity::get_core_ids().and_then(|ids| ids.get(LOAD_CPU).copied()) {
        core_affinity::set_for_current(core);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    for scenario in scenarios {
        let servers: Vec<Server> =
            scenario.servers.iter().copied().filter(|s| !s.is_node() || env.node_ws.is_some()).collect();
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); servers.len()];
        for rep in 0..env.reps {
            for (i, &server) in servers.iter().enumerate() {
                let sample = runtime.block_on(run(&env, scenario, server))?;
                eprintln!(
                    "{} run {}/{}: {:<16} {:>10.0} per CPU-s",
                    scenario.name,
                    rep + 1,
                    env.reps,
                    server.name(),
                    sample.per_cpu()
                );
                samples[i].push(sample);
            }
        }
        print_table(scenario, &servers, &samples);
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn print_table(scenario: &Scenario, servers: &[Server], samples: &[Vec<Sample>]) {
    let echo = matches!(scenario.workload, Workload::Echo { .. });
    println!("\n## {}: {}\n", scenario.name, scenario.about);
    println!(
        "| server | per s | server CPU | per server CPU-s | vs {} |{}",
        servers[0].name(),
        if echo { " wire / payload |" } else { "" }
    );
    println!("| --- | --- | --- | --- | --- |{}", if echo { " --- |" } else { "" });
    let base = median(samples[0].iter().map(Sample::per_cpu).collect());
    for (server, runs) in servers.iter().zip(samples) {
        let per_cpu = median(runs.iter().map(Sample::per_cpu).collect());
        let rate = median(runs.iter().map(|s| s.work / s.secs).collect());
        let cpu = median(runs.iter().map(|s| s.server_cpu / s.secs * 100.0).collect());
        let wire =
            if echo { format!(" {:.3} |", median(runs.iter().map(|s| s.wire_ratio).collect())) } else { String::new() };
        println!("| {} | {rate:.0} | {cpu:.0} % | {per_cpu:.0} | {:.2}× |{wire}", server.name(), per_cpu / base);
    }
}

async fn run(env: &Env, scenario: &Scenario, server: Server) -> Result<Sample, String> {
    let process = start(env, server).await?;
    let counters = Arc::new(Counters::default());
    let tls = (server == Server::WsplugTls).then(|| tls_connector(&env.cert));
    let path = if server == Server::WsplugDeflate {
        "/deflate"
    } else if server.is_node() {
        "/"
    } else {
        "/echo"
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut payload_len = 1;
    match scenario.workload {
        Workload::Echo { payload, json } => {
            payload_len = payload;
            // Messages differ from one to the next (as a real app's do), else a compressor that
            // keeps its context would send each after the first as a back-reference.
            let texts: Vec<Vec<u8>> =
                (0..VARIANTS).map(|v| if json { json_like(payload, v) } else { vec![b'x'; payload] }).collect();
            let text = Arc::new(texts);
            for _ in 0..CONNECTIONS {
                let (tls, counters, text) = (tls.clone(), counters.clone(), text.clone());
                let addr = process.addr;
                let offer = server.deflate();
                tasks.spawn(async move {
                    match tls {
                        None => {
                            let tcp = connect(addr).await?;
                            echo(tcp, path, offer, &text, &counters).await
                        }
                        Some(tls) => {
                            let stream = tls_stream(&tls, addr).await?;
                            echo(stream, path, offer, &text, &counters).await
                        }
                    }
                });
            }
        }
        Workload::Accept => {
            for _ in 0..CONNECTIONS {
                let (tls, counters) = (tls.clone(), counters.clone());
                let addr = process.addr;
                tasks.spawn(async move {
                    while !counters.stop.load(Ordering::Relaxed) {
                        match &tls {
                            None => handshake(connect(addr).await?, path, false).await.map(drop)?,
                            Some(tls) => handshake(tls_stream(tls, addr).await?, path, false).await.map(drop)?,
                        }
                        counters.work.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                });
            }
        }
    }
    tokio::time::sleep(WARM_UP).await;
    let (work0, wire0, cpu0, t0) = (
        counters.work.load(Ordering::Relaxed),
        counters.wire.load(Ordering::Relaxed),
        process.cpu_secs()?,
        Instant::now(),
    );
    tokio::time::sleep(env.window).await;
    let (work1, wire1, cpu1, secs) = (
        counters.work.load(Ordering::Relaxed),
        counters.wire.load(Ordering::Relaxed),
        process.cpu_secs()?,
        t0.elapsed(),
    );
    counters.stop.store(true, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| e.to_string())?.map_err(|e| process.explain(e))?;
    }
    let work = (work1 - work0) as f64;
    Ok(Sample {
        work,
        server_cpu: cpu1 - cpu0,
        secs: secs.as_secs_f64(),
        wire_ratio: (wire1 - wire0) as f64 / work.max(1.0) / payload_len as f64,
    })
}

/// Deterministic JSON-like text of `len` bytes: chat-message objects, as a real app sends;
/// `variant` picks which messages.
fn json_like(len: usize, variant: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "hello", "room", "message", "typing", "online", "deploy", "build", "green", "lunch", "meeting", "ok", "thanks",
    ];
    let mut out = String::from("[");
    let mut i = variant * 1_009;
    while out.len() < len {
        let text: Vec<&str> = (0..6).map(|k| WORDS[(i * 7 + k * 5) % WORDS.len()]).collect();
        out.push_str(&format!(
            "{{\"type\":\"message\",\"room\":\"lobby\",\"nick\":\"user-{}\",\"seq\":{i},\"text\":\"{}\"}},",
            i % 37,
            text.join(" ")
        ));
        i += 1;
    }
    out.truncate(len);
    out.into_bytes()
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let tcp = tokio::time::timeout(STEP, TcpStream::connect(addr)).await.map_err(|_| "connect timed out")?;
    let tcp = tcp.map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

fn tls_connector(cert: &CertificateDer<'static>) -> TlsConnector {
    TlsConnector::from(wsplug_tests::tls_client_config(&[cert]))
}

async fn tls_stream(
    tls: &TlsConnector,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("a DNS name");
    tokio::time::timeout(STEP, tls.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// The WebSocket handshake; returns the stream, the bytes after the response head, and what
/// permessage-deflate was agreed (from the server's answer).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    offer_deflate: bool,
) -> Result<(S, BytesMut, Option<DeflateParams>), String> {
    let offer = if offer_deflate { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("handshake: {e}"))?;
    let mut buf = BytesMut::with_capacity(4096);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(STEP, stream.read_buf(&mut buf)).await.map_err(|_| "handshake timed out")?;
        if n.map_err(|e| format!("handshake: {e}"))? == 0 {
            return Err("closed during the handshake".into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("handshake refused: {}", head.lines().next().unwrap_or_default()));
    }
    buf.advance(end);
    let agreed = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions").then(|| value.trim().to_owned())
    });
    let params = agreed.and_then(|v| DeflateParams::from_response(&v));
    if offer_deflate && params.is_none() {
        return Err("the server declined permessage-deflate".into());
    }
    Ok((stream, buf, params))
}

/// Echoes `text` in lock-step until told to stop, counting messages and the bytes read.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    path: &str,
    offer_deflate: bool,
    texts: &[Vec<u8>],
    counters: &Counters,
) -> Result<(), String> {
    let (mut stream, mut buf, params) = handshake(stream, path, offer_deflate).await?;
    let frames: Vec<Vec<u8>> = texts
        .iter()
        .map(|text| match &params {
            Some(_) => {
                let mut frame = encode_client_frame(true, 0x1, &deflate::compress(text, 15), MASK);
                frame[0] |= 0x40;
                frame
            }
            None => encode_client_frame(true, 0x1, text, MASK),
        })
        .collect();
    let mut turn = 0usize;
    let limits = Limits { max_frame_size: 64 << 20, max_message_size: 64 << 20 };
    let client_view = params.map(|p| p.as_client());
    let mut decoder = Decoder::client(limits).with_deflate(client_view.as_ref());
    while !counters.stop.load(Ordering::Relaxed) {
        let (frame, text) = (&frames[turn % frames.len()], &texts[turn % texts.len()]);
        turn += 1;
        stream.write_all(frame).await.map_err(|e| format!("write: {e}"))?;
        let mut read = buf.len() as u64;
        let message = loop {
            match decoder.decode(&mut buf).map_err(|e| format!("bad frame from the server: {e}"))? {
                Some(Event::Message(m)) => break m,
                Some(_) => continue,
                None => {
                    let n =
                        tokio::time::timeout(STEP, stream.read_buf(&mut buf)).await.map_err(|_| "echo timed out")?;
                    let n = n.map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("the server closed the connection".into());
                    }
                    read += n as u64;
                }
            }
        };
        read -= buf.len() as u64;
        match &message {
            Message::Text(t) if t[..] == text[..] => {}
            other => return Err(format!("wrong echo: {} bytes", other.payload().len())),
        }
        counters.work.fetch_add(1, Ordering::Relaxed);
        counters.wire.fetch_add(read, Ordering::Relaxed);
    }
    Ok(())
}
