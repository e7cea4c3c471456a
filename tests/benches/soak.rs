//! Soak: the release server under mixed traffic for 10 minutes, its plugins reloaded every 30 s,
//! with a few clients misbehaving throughout. Every message carries a sequence number that its
//! receivers check: nothing may be lost or reordered. Every 10 s the window's figures are printed
//! (messages, echo latency p50/p99, server RSS); at the end, the RSS slope after warm-up and the
//! p99 of each minute.
//!
//! Traffic (of `WSPLUG_SOAK_CONNS`, default 5,000 connections):
//! - 60% echo clients, half on the native route, half on the echo plugin: every second, three
//!   messages pipelined, whose echoes must come back whole and in order;
//! - 30% chat clients in rooms of 30 (the chat plugin): each says a numbered line every 5 s, and
//!   every member checks that it hears each other member's lines in order, none missing;
//! - 10% listeners of a broadcaster (the probe plugin) that broadcasts a numbered line 10 times a
//!   second: each listener must get every one, in order;
//! - misbehaving, 5 of each, over and over: clients that send 64 KiB messages and never read the
//!   echoes (the server must stop reading them), clients that send invalid UTF-8 (1007), request
//!   heads that never finish (408).
//!
//! Every 30 s one of the three plugin files is replaced (a new version: the same component with
//! another custom section), so each is hot-reloaded every 90 s, with its state handed over.
//!
//!     cargo build --release && cargo bench -p wsplug-tests --bench soak
//!     WSPLUG_SOAK_SECS=120 WSPLUG_SOAK_CONNS=2000 cargo bench -p wsplug-tests --bench soak

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use wsplug_tests::{TempDir, plugin_path, upgrade_request, with_custom_section, write_atomically};

const WINDOW: Duration = Duration::from_secs(10);
const RELOAD_EVERY: Duration = Duration::from_secs(30);
const ROOM_SIZE: usize = 30;

/// What every client reports into.
#[derive(Default)]
struct Stats {
    /// Data messages received and checked.
    received: AtomicU64,
    /// A message out of order, missing, or not what was sent.
    violations: AtomicU64,
    /// Connections that ended unexpectedly (well-behaved clients only).
    dropped: AtomicU64,
    /// Misbehaving clients that got the documented close code.
    answered: AtomicU64,
    /// Echo round trips of this window, in microseconds.
    latencies: Mutex<Vec<u32>>,
    reloads: AtomicU64,
}

impl Stats {
    fn violation(&self, what: String) {
        if self.violations.fetch_add(1, Relaxed) < 20 {
            eprintln!("VIOLATION: {what}");
        }
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn wsplug_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/soak-HASH → target/release/wsplug
    let binary = exe.parent().and_then(Path::parent).unwrap().join("wsplug");
    assert!(binary.is_file(), "{} not found: run `cargo build --release` first", binary.display());
    binary
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
            * 1024
    }
}

fn start_server(dir: &TempDir) -> Server {
    for name in ["echo", "chat", "probe"] {
        std::fs::copy(plugin_path(name), dir.join(&format!("{name}.wasm"))).unwrap();
    }
    let config = dir.join("soak.toml");
    std::fs::write(
        &config,
        "[limits]\nmax_connections = 20000\nmax_handshakes = 2048\nmax_handshakes_per_address = 2048\n\
         handshake_timeout = \"2s\"\noutbound_queue_bytes = \"256KiB\"\n\
         [[routes]]\npath = \"/native\"\nkind = \"echo\"\n\
         [[routes]]\npath = \"/echo\"\nplugin = \"echo.wasm\"\n\
         [[routes]]\npath = \"/chat\"\nplugin = \"chat.wasm\"\n\
         [[routes]]\npath = \"/probe\"\nplugin = \"probe.wasm\"\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(wsplug_binary())
        .arg("--config")
        .arg(&config)
        .args(["--listen", &addr.to_string()])
        .env("WSPLUG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, addr }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr, path: &str) -> Ws {
    for attempt in 0.. {
        match tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await {
            Ok((ws, _)) => return ws,
            Err(e) if attempt < 50 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connect {path}: {e}"),
        }
    }
    unreachable!()
}

/// Three messages pipelined every second; their echoes must come back whole and in order.
async fn echo_client(addr: SocketAddr, path: &'static str, id: usize, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let mut ws = connect(addr, path).await;
    tokio::time::sleep(Duration::from_millis((id % 1000) as u64)).await;
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        let started = Instant::now();
        for k in 0..3 {
            if ws.send(Message::text(format!("e{id}:{}", seq + k))).await.is_err() {
                stats.dropped.fetch_add(1, Relaxed);
                return;
            }
        }
        for k in 0..3 {
            let want = format!("e{id}:{}", seq + k);
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == want => {
                    stats.received.fetch_add(1, Relaxed);
                }
                Ok(Some(Ok(other))) => stats.violation(format!("{path} client {id}: wanted {want}, got {other:?}")),
                other => {
                    stats.violation(format!("{path} client {id}: wanted {want}, got {other:?}"));
                    stats.dropped.fetch_add(1, Relaxed);
                    return;
                }
            }
        }
        stats.latencies.lock().await.push(started.elapsed().as_micros() as u32);
        seq += 3;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Says a numbered line every 5 s and checks every member's lines arrive in order, none missing.
async fn chat_client(addr: SocketAddr, id: usize, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let room = id / ROOM_SIZE;
    let ws = connect(addr, &format!("/chat?nick=u{id}&room=r{room}")).await;
    let (mut tx, mut rx) = ws.split();
    let reader_stats = stats.clone();
    let reader = tokio::spawn(async move {
        let mut last: HashMap<String, u64> = HashMap::new();
        while let Some(Ok(message)) = rx.next().await {
            let Message::Text(text) = message else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                reader_stats.violation(format!("chat {id}: not JSON: {text}"));
                continue;
            };
            if v["type"] != "message" {
                continue; // welcome (also after a reload), join, leave
            }
            let (Some(nick), Some(line)) = (v["nick"].as_str(), v["text"].as_str()) else { continue };
            let Some(seq) = line.rsplit(':').next().and_then(|s| s.parse::<u64>().ok()) else { continue };
            if let Some(prev) = last.insert(nick.to_owned(), seq)
                && seq != prev + 1
            {
                reader_stats.violation(format!("chat {id}: from {nick} got {seq} after {prev}"));
            }
            reader_stats.received.fetch_add(1, Relaxed);
        }
    });
    tokio::time::sleep(Duration::from_millis((id * 7 % 5000) as u64)).await;
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        if tx.send(Message::text(format!("c{id}:{seq}"))).await.is_err() {
            stats.dropped.fetch_add(1, Relaxed);
            break;
        }
        seq += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let _ = tx.close().await;
    reader.abort();
}

/// Gets every broadcast line, in order.
async fn listener(addr: SocketAddr, id: usize, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let mut ws = connect(addr, "/probe").await;
    let mut last: Option<u64> = None;
    while !stop.load(Relaxed) {
        match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Text(t)))) => {
                let Some(seq) = t.strip_prefix("b:").and_then(|s| s.parse::<u64>().ok()) else { continue };
                if let Some(prev) = last
                    && seq != prev + 1
                {
                    stats.violation(format!("listener {id}: broadcast {seq} after {prev}"));
                }
                last = Some(seq);
                stats.received.fetch_add(1, Relaxed);
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => {
                stats.dropped.fetch_add(1, Relaxed);
                return;
            }
        }
    }
}

async fn broadcaster(addr: SocketAddr, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let ws = connect(addr, "/probe").await;
    let (mut tx, mut rx) = ws.split();
    tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Relaxed) {
        tick.tick().await;
        if tx.send(Message::text(format!("broadcast b:{seq}"))).await.is_err() {
            stats.dropped.fetch_add(1, Relaxed);
            return;
        }
        seq += 1;
    }
}

/// Misbehaves in one of three ways, over and over, and counts the documented answers.
async fn misbehaving(addr: SocketAddr, kind: usize, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    while !stop.load(Relaxed) {
        let mut socket = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let answered = match kind {
            // Sends 64 KiB messages and never reads the echoes: the server must stop reading it
            // (a write stalls) rather than buffer; then it goes away.
            0 => {
                let _ = socket.write_all(upgrade_request("/echo").as_bytes()).await;
                let frame = wsplug::protocol::frame::encode_client_frame(true, 0x2, &[7; 64 << 10], [1, 2, 3, 4]);
                let mut stalled = false;
                for _ in 0..2000 {
                    match tokio::time::timeout(Duration::from_secs(2), socket.write_all(&frame)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            stalled = true;
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                stalled
            }
            // Invalid UTF-8 in a text frame: 1007.
            1 => {
                let _ = socket.write_all(upgrade_request("/echo").as_bytes()).await;
                let frame = wsplug::protocol::frame::encode_client_frame(true, 0x1, &[0xC0, 0xAF], [1, 2, 3, 4]);
                let _ = socket.write_all(&frame).await;
                let mut all = Vec::new();
                let read = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut all);
                let ok = tokio::time::timeout(Duration::from_secs(10), read).await.is_ok();
                tokio::time::sleep(Duration::from_secs(5)).await;
                let close = all.windows(2).rposition(|w| w[0] == 0x88);
                ok && close.is_some_and(|at| all.get(at + 2..at + 4) == Some(&[0x03, 0xEF][..]))
            }
            // A head that never ends: 408 after handshake_timeout.
            _ => {
                let _ = socket.write_all(b"GET /native HTTP/1.1\r\nHost: x\r\nX-Slow: a").await;
                let mut all = Vec::new();
                let read = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut all);
                let ok = tokio::time::timeout(Duration::from_secs(10), read).await.is_ok();
                ok && all.starts_with(b"HTTP/1.1 408 ")
            }
        };
        if answered {
            stats.answered.fetch_add(1, Relaxed);
        }
    }
}

/// Replaces one plugin file every 30 s with a new version (another custom section).
async fn reloader(dir: PathBuf, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let originals: Vec<(PathBuf, Vec<u8>)> = ["echo", "chat", "probe"]
        .iter()
        .map(|name| (dir.join(format!("{name}.wasm")), std::fs::read(plugin_path(name)).unwrap()))
        .collect();
    let mut n = 0usize;
    loop {
        let until = Instant::now() + RELOAD_EVERY;
        while Instant::now() < until {
            if stop.load(Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (path, bytes) = &originals[n % originals.len()];
        write_atomically(path, &with_custom_section(bytes, format!("soak version {n}").as_bytes()));
        stats.reloads.fetch_add(1, Relaxed);
        n += 1;
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    f64::from(sorted[((sorted.len() - 1) as f64 * p).round() as usize]) / 1000.0
}

fn main() {
    let secs = env_or("WSPLUG_SOAK_SECS", 600);
    let conns = env_or("WSPLUG_SOAK_CONNS", 5000) as usize;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = TempDir::new("soak");
    let server = start_server(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr;
    let (echoes, chats) = (conns * 6 / 10, conns * 3 / 10 / ROOM_SIZE * ROOM_SIZE);
    let listeners = conns - echoes - chats;
    println!(
        "soak: {secs} s, {echoes} echo + {chats} chat + {listeners} broadcast listeners + 15 misbehaving, reload every {} s",
        RELOAD_EVERY.as_secs()
    );

    rt.block_on(async {
        let mut tasks = Vec::new();
        for id in 0..echoes {
            let path = if id % 2 == 0 { "/native" } else { "/echo" };
            tasks.push(tokio::spawn(echo_client(addr, path, id, stats.clone(), stop.clone())));
            if id % 200 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for id in 0..chats {
            tasks.push(tokio::spawn(chat_client(addr, id, stats.clone(), stop.clone())));
        }
        for id in 0..listeners {
            tasks.push(tokio::spawn(listener(addr, id, stats.clone(), stop.clone())));
        }
        tasks.push(tokio::spawn(broadcaster(addr, stats.clone(), stop.clone())));
        for i in 0..15 {
            tasks.push(tokio::spawn(misbehaving(addr, i % 3, stats.clone(), stop.clone())));
        }
        let plugin_dir = dir.0.clone();
        tasks.push(tokio::spawn(reloader(plugin_dir, stats.clone(), stop.clone())));

        let start = Instant::now();
        let mut rows: Vec<(f64, u64, f64, f64, u64)> = Vec::new(); // t, msgs, p50, p99, rss
        let mut received = 0;
        println!("{:>6} {:>10} {:>9} {:>9} {:>10} {:>8} {:>10}", "t (s)", "msgs/s", "p50 ms", "p99 ms", "RSS MiB", "reloads", "violations");
        while start.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(WINDOW).await;
            let mut lat = std::mem::take(&mut *stats.latencies.lock().await);
            lat.sort_unstable();
            let now = stats.received.load(Relaxed);
            let row = (start.elapsed().as_secs_f64(), now - received, percentile(&lat, 0.5), percentile(&lat, 0.99), server.rss());
            received = now;
            println!(
                "{:>6.0} {:>10.0} {:>9.2} {:>9.2} {:>10.1} {:>8} {:>10}",
                row.0,
                row.1 as f64 / WINDOW.as_secs_f64(),
                row.2,
                row.3,
                row.4 as f64 / (1 << 20) as f64,
                stats.reloads.load(Relaxed),
                stats.violations.load(Relaxed)
            );
            rows.push(row);
        }
        stop.store(true, Relaxed);
        for t in tasks {
            t.abort();
        }

        // RSS slope after warm-up (the first fifth), by least squares, in KiB per minute.
        let warm: Vec<&(f64, u64, f64, f64, u64)> = rows.iter().skip(rows.len() / 5).collect();
        let n = warm.len() as f64;
        let (mx, my) = (warm.iter().map(|r| r.0).sum::<f64>() / n, warm.iter().map(|r| r.4 as f64).sum::<f64>() / n);
        let cov: f64 = warm.iter().map(|r| (r.0 - mx) * (r.4 as f64 - my)).sum();
        let var: f64 = warm.iter().map(|r| (r.0 - mx).powi(2)).sum();
        let slope = if var > 0.0 { cov / var * 60.0 / 1024.0 } else { 0.0 };
        let p99s: Vec<String> = rows.chunks(6).map(|c| format!("{:.1}", c.iter().map(|r| r.3).fold(0.0, f64::max))).collect();
        println!(
            "\nsummary: {} messages checked, {} violations (lost, reordered or altered), {} well-behaved connections dropped, \
             {} misbehaving clients answered as documented, {} reloads",
            stats.received.load(Relaxed),
            stats.violations.load(Relaxed),
            stats.dropped.load(Relaxed),
            stats.answered.load(Relaxed),
            stats.reloads.load(Relaxed)
        );
        println!("RSS after warm-up: mean {:.1} MiB, slope {slope:+.0} KiB/min", my / (1 << 20) as f64);
        println!("echo p99 per minute (worst window, ms): {}", p99s.join(" "));
        if stats.violations.load(Relaxed) > 0 || stats.dropped.load(Relaxed) > 0 {
            std::process::exit(1);
        }
    });
}
