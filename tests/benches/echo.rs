//! Echo throughput and latency: wsplug's native echo route, its echo *plugin* route (a Wasm call per
//! message), and a tokio-tungstenite echo server as the peer, all measured in the same run with the
//! same load generator. Prints messages per second, p50/p99 round-trip latency, and ratios; then
//! the idle memory per plugin instance.
//!
//!     cargo bench -p wsplug-tests --bench echo            # default: a quick run
//!     WSPLUG_BENCH_SECS=10 cargo bench -p wsplug-tests --bench echo
//!
//! Everything runs in one process on loopback; absolute numbers depend on the machine, the ratios
//! are what to compare.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsplug::protocol::frame::encode_client_frame;
use wsplug::protocol::{Decoder, Event, Limits};
use wsplug_tests::{TestServer, upgrade_request};

struct Scenario {
    name: &'static str,
    connections: usize,
    in_flight: usize,
    payload: usize,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario { name: "64 B, 50 conns, 1 in flight", connections: 50, in_flight: 1, payload: 64 },
    Scenario { name: "64 B, 50 conns, 16 in flight", connections: 50, in_flight: 16, payload: 64 },
    Scenario { name: "16 KiB, 50 conns, 1 in flight", connections: 50, in_flight: 1, payload: 16 << 10 },
];

#[derive(Default)]
struct Result {
    messages: u64,
    latencies_us: Vec<u32>,
    secs: f64,
}

impl Result {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.secs
    }
    fn pct(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us.get(i).copied().unwrap_or(0) as f64
    }
}

/// One client: keeps `in_flight` messages outstanding for `duration`, timing each round trip.
async fn client(addr: SocketAddr, path: &str, in_flight: usize, payload: usize, duration: Duration) -> Result {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(upgrade_request(path).as_bytes()).await.unwrap();
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        stream.read_buf(&mut buf).await.unwrap();
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let _ = buf.split_to(i + 4);
            break;
        }
    }
    let frame = encode_client_frame(true, 0x2, &vec![0x42; payload], [1, 2, 3, 4]);
    let mut decoder = Decoder::client(Limits::default());
    let mut sent_at = std::collections::VecDeque::with_capacity(in_flight);
    let mut result = Result::default();
    let start = Instant::now();
    let end = start + duration;
    let mut batch = Vec::with_capacity(frame.len() * in_flight);
    for _ in 0..in_flight {
        batch.extend_from_slice(&frame);
        sent_at.push_back(Instant::now());
    }
    stream.write_all(&batch).await.unwrap();
    while !sent_at.is_empty() {
        while let Some(event) = decoder.decode(&mut buf).unwrap() {
            if let Event::Message(_) = event {
                let t0 = sent_at.pop_front().unwrap();
                result.latencies_us.push(t0.elapsed().as_micros() as u32);
                result.messages += 1;
                if Instant::now() < end {
                    sent_at.push_back(Instant::now());
                    stream.write_all(&frame).await.unwrap();
                }
            }
        }
        if sent_at.is_empty() {
            break;
        }
        if stream.read_buf(&mut buf).await.unwrap() == 0 {
            break;
        }
    }
    result.secs = start.elapsed().as_secs_f64();
    result
}

async fn run(addr: SocketAddr, path: &str, s: &Scenario, duration: Duration) -> Result {
    let tasks: Vec<_> = (0..s.connections)
        .map(|_| {
            let path = path.to_owned();
            let (in_flight, payload) = (s.in_flight, s.payload);
            tokio::spawn(async move { client(addr, &path, in_flight, payload, duration).await })
        })
        .collect();
    let mut total = Result::default();
    for t in tasks {
        let r = t.await.unwrap();
        total.messages += r.messages;
        total.latencies_us.extend(r.latencies_us);
        total.secs = total.secs.max(r.secs);
    }
    total
}

/// The peer: a plain tokio-tungstenite echo server (8 KiB read buffer, the better setting measured
/// in ../shared/NOTES.md).
async fn tungstenite_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let config =
                    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 << 10);
                let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}

fn main() {
    let secs: f64 = std::env::var("WSPLUG_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let duration = Duration::from_secs_f64(secs);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let server = TestServer::start(
            "[[routes]]\npath = \"/native\"\nkind = \"echo\"\n\n[[routes]]\npath = \"/plugin\"\nplugin = \"target/plugins/echo.wasm\"\n",
        )
        .await;
        let peer = tungstenite_echo().await;
        println!("echo benchmark, {secs} s per run (one process, loopback; compare ratios)\n");
        println!("{:<32} {:<22} {:>12} {:>9} {:>9} {:>10}", "scenario", "server", "msgs/s", "p50 µs", "p99 µs", "vs peer");
        for s in &SCENARIOS {
            let mut peer_r = run(peer, "/", s, duration).await;
            let mut native = run(server.addr, "/native", s, duration).await;
            let mut plugin = run(server.addr, "/plugin", s, duration).await;
            let base = peer_r.rate();
            for (name, r) in [("tokio-tungstenite 0.30", &mut peer_r), ("wsplug native echo", &mut native), ("wsplug echo plugin", &mut plugin)] {
                println!("{:<32} {:<22} {:>12.0} {:>9.0} {:>9.0} {:>9.2}x", s.name, name, r.rate(), r.pct(0.5), r.pct(0.99), r.rate() / base);
            }
            println!("{:<32} {:<22} {:>12} {:>9} {:>9} {:>9.2}x  (plugin / native)", "", "", "", "", "", plugin.rate() / native.rate());
        }

        // Plugins in other languages (when plugins/build-all.sh has built them): size, compile time
        // without the cache, and echo throughput against the Rust echo plugin and the native route.
        let languages: Vec<(&str, std::path::PathBuf)> = [("Rust", "echo"), ("C", "echo-c"), ("JavaScript", "echo-js"), ("Python", "echo-python"), ("Go", "echo-go")]
            .into_iter()
            .map(|(lang, file)| (lang, wsplug_tests::plugin_path(file)))
            .filter(|(_, path)| path.exists())
            .collect();
        let lang_scenario = &SCENARIOS[0];
        println!("\nplugin languages ({}; compile without the cache):", lang_scenario.name);
        println!("{:<12} {:>12} {:>12} {:>12} {:>10} {:>12} {:>14}", "language", "size bytes", "compile ms", "msgs/s", "p99 µs", "vs Rust", "vs native");
        let mut routes = String::from("[[routes]]\npath = \"/native\"\nkind = \"echo\"\n");
        for (i, (_, path)) in languages.iter().enumerate() {
            routes.push_str(&format!("[[routes]]\npath = \"/l{i}\"\nplugin = \"{}\"\n", path.display()));
        }
        let lang_server = TestServer::start(&routes).await;
        let native = run(lang_server.addr, "/native", lang_scenario, duration).await.rate();
        let mut rust_rate = None;
        for (i, (lang, path)) in languages.iter().enumerate() {
            let compile = wsplug::plugin::PluginEngine::global().load(path, None).unwrap().compile_time;
            let size = std::fs::metadata(path).unwrap().len();
            let mut r = run(lang_server.addr, &format!("/l{i}"), lang_scenario, duration).await;
            let rate = r.rate();
            let rust = *rust_rate.get_or_insert(rate);
            println!(
                "{lang:<12} {size:>12} {:>12.0} {rate:>12.0} {:>10.0} {:>11.2}x {:>13.2}x",
                compile.as_secs_f64() * 1e3,
                r.pct(0.99),
                rate / rust,
                rate / native
            );
        }

        // Idle memory per plugin instance: a route with 1 instance, then one with 1 + n; the
        // difference of the two deltas removes the cost of compiling the component.
        let n = 63;
        let before = rss_bytes();
        let one = TestServer::start("[[routes]]\npath = \"/one\"\nplugin = \"target/plugins/echo.wasm\"\n").await;
        let mid = rss_bytes();
        let many = TestServer::start(&format!("[[routes]]\npath = \"/many\"\nplugin = \"target/plugins/echo.wasm\"\ninstances = {}\n", n + 1)).await;
        let after = rss_bytes();
        let per = (after.saturating_sub(mid)).saturating_sub(mid.saturating_sub(before)) as f64 / n as f64;
        println!("\nidle memory per echo plugin instance: {:.1} KiB (RSS +{:.1} MiB for a 1-instance route, +{:.1} MiB for a {}-instance route)", per / 1024.0, (mid - before) as f64 / 1048576.0, (after - mid) as f64 / 1048576.0, n + 1);
        drop(one);
        drop(many);
    });
}
