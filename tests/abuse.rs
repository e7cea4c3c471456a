//! The abuse suite (README, "Memory bounds" and "What the server answers"): what an attacker on the
//! internet would try, each against a server process of its own on loopback, bounded in count and
//! time. Each test checks three things: the attacker gets the documented answer, the server's RSS
//! stays within the bound the README writes down for that case, and a well-behaved client on the
//! side keeps getting its echo within [`BYSTANDER_P99`] (at the 99th percentile) throughout.
//!
//! The server is this test binary re-executed (`child_server`), so its RSS and CPU are its own. The
//! bystander runs on a thread and runtime of its own, so that the attackers' client-side work does
//! not delay it. The tests take [`HEAVY`] one at a time: together they would exceed the file limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use wsplug::protocol::Event;
use wsplug::protocol::frame::encode_client_frame;
use wsplug_tests::{RawClient, STEP, Seen, ServerProcess, plugin_path, upgrade_request};

const CHILD_ENV: &str = "WSPLUG_ABUSE_TEST_CONFIG";
const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// M (max_message_size) and Q (outbound_queue_bytes) of every server here.
const M: usize = MIB;
const Q: usize = 256 * KIB;
/// The README's per-connection worst case, (M + 512 KiB) + (Q + M) + ~4 KiB, with 12 KiB more for
/// what the allocator keeps around a connection's buffers.
const PER_CONNECTION: usize = (M + 512 * KIB) + (Q + M) + 16 * KIB;
/// What a handshake in progress may hold: its request head (max_head_size) and its task.
const PER_HANDSHAKE: usize = 8 * KIB + 2 * KIB;
/// Allocator and runtime noise a measurement of RSS growth allows for.
const SLACK: usize = 16 * MIB;
/// The service promised to a well-behaved client while the attack runs (debug build, 2 cores
/// shared with the attackers).
const BYSTANDER_P99: Duration = Duration::from_millis(250);

static HEAVY: Mutex<()> = Mutex::const_new(());

async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    let guard = HEAVY.lock().await;
    wsplug_tests::raise_file_limit(12_000);
    guard
}

/// Not a test: the server process the tests below attack.
#[tokio::test]
#[ignore = "the child server process of the abuse tests"]
async fn child_server() {
    wsplug_tests::run_child_server(CHILD_ENV).await;
}

/// A server with M, Q and `limits` (TOML lines for `[limits]`), a native echo route and the probe
/// plugin's route.
fn start_server(limits: &str) -> ServerProcess {
    let config = format!(
        "listen = \"127.0.0.1:0\"\n[limits]\nmax_message_size = \"1MiB\"\nmax_frame_size = \"1MiB\"\n\
         outbound_queue_bytes = \"256KiB\"\nhandshake_timeout = \"2s\"\n{limits}\n\
         [[routes]]\npath = \"/native\"\nkind = \"echo\"\n\
         [[routes]]\npath = \"/probe\"\nplugin = {:?}\n",
        plugin_path("probe").display().to_string()
    );
    ServerProcess::start(&config, CHILD_ENV)
}

/// A client that echoes a short message every 20 ms on `path` from 127.0.0.2 (so per-address limits
/// on 127.0.0.1 do not touch it), on its own thread, until stopped.
struct Bystander {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Duration>>,
}

impl Bystander {
    fn start(server: SocketAddr, path: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
                let stream = socket.connect(server).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let url = format!("ws://{server}{path}");
                let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("bystander handshake");
                ready_tx.send(()).unwrap();
                let mut rounds = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let text = format!("bystander {}", rounds.len());
                    ws.send(Message::text(text.clone())).await.unwrap();
                    match tokio::time::timeout(STEP, ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), text),
                        other => panic!("the bystander's echo did not come: {other:?}"),
                    }
                    rounds.push(started.elapsed());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                rounds
            })
        });
        ready_rx.recv_timeout(STEP).expect("the bystander connects");
        Self { stop, thread }
    }

    /// Stops it and checks its service: at least `min_rounds` echoes, p99 within [`BYSTANDER_P99`].
    fn check(self, min_rounds: usize) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        let mut rounds = self.thread.join().expect("the bystander was served throughout");
        rounds.sort();
        eprintln!(
            "bystander: {} echoes, median {:?}, max {:?}",
            rounds.len(),
            rounds.get(rounds.len() / 2),
            rounds.last()
        );
        assert!(rounds.len() >= min_rounds, "the bystander got only {} echoes", rounds.len());
        let p99 = rounds[rounds.len() * 99 / 100];
        assert!(p99 <= BYSTANDER_P99, "bystander p99 {p99:?} (max {:?})", rounds.last().unwrap());
        p99
    }
}

/// Samples the server's RSS every 50 ms while `attack` runs; returns its result and the peak.
async fn peak_during<T>(server: &ServerProcess, attack: impl std::future::Future<Output = T>) -> (T, usize) {
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(server.rss()));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid_rss) = (peak.clone(), done.clone(), server.rss_reader());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(pid_rss(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let result = attack.await;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    (result, peak.load(Ordering::Relaxed).max(server.rss()))
}

/// Reports a peak of RSS and checks it against `bound` above `base`.
fn check_rss(attack: &str, base: usize, peak: usize, bound: usize) {
    eprintln!("{attack}: RSS {} → peak {} KiB (bound +{} KiB)", base / KIB, peak / KIB, bound / KIB);
    assert!(peak <= base + bound, "{attack}: RSS grew by {} KiB, bound {} KiB", (peak - base) / KIB, bound / KIB);
}

/// Reads a socket to its end (bounded by `wait`); the bytes the server sent.
async fn read_to_end(mut socket: TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    tokio::time::timeout(wait, socket.read_to_end(&mut all)).await.ok()?.ok()?;
    Some(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_request_heads_that_never_finish() {
    let _heavy = heavy().await;
    let server = start_server("");
    let bystander = Bystander::start(server.addr, "/native");
    let base = server.rss();
    let ((answers, real_client), peak) = peak_during(&server, async {
        let mut sockets = Vec::new();
        for _ in 0..5_000 {
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            // A head that is never finished: the last header line never ends.
            s.write_all(b"GET /native HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a").await.unwrap();
            sockets.push(s);
        }
        // Meanwhile a real client from another address gets in.
        let real = RawClient::connect_from([127, 0, 0, 3], server.addr, "/native").await;
        let answers = futures_util::future::join_all(sockets.into_iter().map(|s| read_to_end(s, 3 * STEP))).await;
        (answers, real)
    })
    .await;
    drop(real_client);
    // Every one ends: cut off at handshake_timeout (408) or refused for the address's quota (503).
    for answer in &answers {
        let answer = answer.as_ref().expect("a slow head is never held past handshake_timeout");
        let head = String::from_utf8_lossy(answer);
        assert!(head.starts_with("HTTP/1.1 408 ") || head.starts_with("HTTP/1.1 503 "), "{head}");
    }
    // At most max_handshakes (1024) are held at once, and as many refused ones drain at once.
    let bound = 2 * 1024 * PER_HANDSHAKE + SLACK;
    check_rss("5,000 slow heads", base, peak, bound);
    bystander.check(20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_announcing_2_pow_63_bytes_are_refused_from_the_header() {
    let _heavy = heavy().await;
    let server = start_server("max_connections = 4000");
    let bystander = Bystander::start(server.addr, "/native");
    let base = server.rss();
    let (codes, peak) = peak_during(&server, async {
        let mut clients = Vec::new();
        for i in 0..1_000 {
            let path = if i % 2 == 0 { "/native" } else { "/probe" };
            let mut raw = RawClient::connect(server.addr, path).await;
            // 2^63 − 1 (too big: 1009) and 2^63 (the top bit is reserved: 1002), masked, no payload.
            let head: [u8; 10] = if i % 4 < 2 {
                [0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
            } else {
                [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0]
            };
            raw.send_raw(&[&head[..], &[1, 2, 3, 4]].concat()).await;
            clients.push((i, raw));
        }
        let mut codes = Vec::new();
        for (i, mut raw) in clients {
            codes.push((i, raw.expect_close().await));
        }
        codes
    })
    .await;
    for (i, code) in codes {
        assert_eq!(code, Some(if i % 4 < 2 { 1009 } else { 1002 }), "client {i}");
    }
    // Nothing of the announced payload is buffered: each holds at most one read's worth.
    let bound = 1_000 * (16 * KIB) + SLACK;
    check_rss("1,000 × 2^63", base, peak, bound);
    bystander.check(5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_100_000_one_byte_fragments_is_joined_and_echoed() {
    let _heavy = heavy().await;
    let server = start_server("");
    let bystander = Bystander::start(server.addr, "/native");
    let base = server.rss();
    let text: Vec<u8> = (0..100_000).map(|i| b'a' + (i % 26) as u8).collect();
    let mut stream = Vec::with_capacity(text.len() * 7);
    for (i, byte) in text.iter().enumerate() {
        let opcode = if i == 0 { 0x1 } else { 0x0 };
        stream.extend_from_slice(&encode_client_frame(i == text.len() - 1, opcode, &[*byte], [9, 8, 7, 6]));
    }
    let (_, peak) = peak_during(&server, async {
        for path in ["/native", "/probe"] {
            let mut raw = RawClient::connect(server.addr, path).await;
            raw.send_raw(&stream).await;
            match raw.next().await {
                Seen::Event(Event::Message(m)) => assert!(m.payload()[..] == text[..], "{path}: echo differs"),
                other => panic!("{path}: expected the echo, got {other:?}"),
            }
        }
    })
    .await;
    // Two connections, one after the other, each within the per-connection bound.
    let bound = 2 * PER_CONNECTION + SLACK;
    check_rss("100,000 fragments", base, peak, bound);
    bystander.check(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_floods_from_clients_that_never_read_the_pongs() {
    let _heavy = heavy().await;
    let server = start_server("write_timeout = \"60s\"");
    let bystander = Bystander::start(server.addr, "/native");
    let base = server.rss();
    const FLOODERS: usize = 20;
    let (written, peak) = peak_during(&server, async {
        let ping = encode_client_frame(true, 0x9, &[0x70; 125], [1, 2, 3, 4]).repeat(64);
        let floods = (0..FLOODERS).map(|i| {
            let ping = ping.clone();
            let addr = server.addr;
            tokio::spawn(async move {
                let path = if i % 2 == 0 { "/native" } else { "/probe" };
                let mut raw = RawClient::connect(addr, path).await;
                let mut written = 0usize;
                let end = Instant::now() + Duration::from_secs(3);
                // Write pings for 3 s and never read; a write that stalls for 300 ms means the
                // server has stopped reading us.
                while Instant::now() < end {
                    match tokio::time::timeout(Duration::from_millis(300), raw.stream.write_all(&ping)).await {
                        Ok(Ok(())) => written += ping.len(),
                        _ => break,
                    }
                }
                (written, raw)
            })
        });
        let mut out = Vec::new();
        for f in futures_util::future::join_all(floods).await {
            out.push(f.unwrap());
        }
        out
    })
    .await;
    // The pongs wait in each flooder's queue (Q); once it is full the server stops reading that
    // client, so what a flooder can push is its queue plus the socket buffers, not 3 s of pings.
    for (written, _) in &written {
        assert!(
            *written < 32 * MIB,
            "the server kept reading {} MiB of pings from a client that never reads",
            written / MIB
        );
    }
    let bound = FLOODERS * PER_CONNECTION + SLACK;
    let most = written.iter().map(|w| w.0).max().unwrap() / KIB;
    check_rss(&format!("{FLOODERS} ping flooders (at most {most} KiB written each)"), base, peak, bound);
    drop(written);
    bystander.check(5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_storm_past_max_connections_gets_503_within_bounds() {
    let _heavy = heavy().await;
    let server = start_server("max_connections = 100");
    let bystander = Bystander::start(server.addr, "/native");
    let mut held = Vec::new();
    for _ in 0..99 {
        held.push(RawClient::connect(server.addr, "/native").await);
    }
    let base = server.rss();
    let (statuses, peak) = peak_during(&server, async {
        let mut statuses = Vec::new();
        // 5,000 handshakes, 500 at a time.
        for _ in 0..10 {
            let wave = (0..500).map(|_| async {
                let mut s = TcpStream::connect(server.addr).await.unwrap();
                s.write_all(upgrade_request("/native").as_bytes()).await.unwrap();
                let answer = read_to_end(s, STEP).await.expect("a refused handshake is answered and closed");
                wsplug_tests::status_of(&String::from_utf8_lossy(&answer))
            });
            statuses.extend(futures_util::future::join_all(wave).await);
        }
        statuses
    })
    .await;
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(refused, statuses.len(), "every handshake past the cap gets 503: {:?}", &statuses[..20]);
    // At most max_handshakes (1024) in progress, and as many refused ones draining, at once.
    let bound = 2 * 1024 * PER_HANDSHAKE + SLACK;
    check_rss("5,000 handshakes past the cap", base, peak, bound);
    // The connections already in are still served.
    for raw in held.iter_mut().take(10) {
        raw.send_frame(true, 0x1, b"still here").await;
        assert!(matches!(raw.next().await, Seen::Event(Event::Message(_))));
    }
    bystander.check(5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_read_during_a_broadcast_are_shed() {
    let _heavy = heavy().await;
    let server = start_server("");
    let bystander = Bystander::start(server.addr, "/native");
    const STALLED: usize = 50;
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        // Tiny receive buffers, never read: the server's queues fill soon.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(server.addr).await.unwrap();
        s.write_all(upgrade_request("/probe").as_bytes()).await.unwrap();
        stalled.push(s);
    }
    let mut reader = RawClient::connect(server.addr, "/probe").await;
    let mut sender = RawClient::connect(server.addr, "/probe").await;
    let base = server.rss();
    let payload = "x".repeat(64 * KIB);
    let (received, peak) = peak_during(&server, async {
        let mut received = 0;
        for i in 0..200 {
            sender.send_frame(true, 0x1, format!("broadcast {i:03}{payload}").as_bytes()).await;
            // The reader reads everything, in order; the sender reads its own copy.
            for raw in [&mut reader, &mut sender] {
                match raw.next().await {
                    Seen::Event(Event::Message(m)) => assert!(m.payload().starts_with(format!("{i:03}").as_bytes())),
                    other => panic!("broadcast {i}: {other:?}"),
                }
            }
            received += 1;
        }
        received
    })
    .await;
    assert_eq!(received, 200);
    // Each stalled reader is closed with 1013 once its queue is full: past its 101 and the frames
    // its socket took, the last thing it finds is that close frame.
    for s in stalled {
        let answer = read_to_end(s, STEP).await.expect("a stalled reader is closed");
        let close = answer.windows(2).rposition(|w| w[0] == 0x88).expect("a close frame");
        assert_eq!(u16::from_be_bytes([answer[close + 2], answer[close + 3]]), 1013);
    }
    let bound = STALLED * (Q + 2 * 64 * KIB) + 2 * PER_CONNECTION + SLACK;
    check_rss(&format!("{STALLED} stalled readers"), base, peak, bound);
    bystander.check(5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_aborted_mid_frame_by_rst_and_by_fin_are_cleaned_up() {
    let _heavy = heavy().await;
    let server = start_server("");
    let bystander = Bystander::start(server.addr, "/native");
    // The probe plugin tells everyone left on its route `closed ID CODE` when a connection ends.
    let mut watcher = RawClient::connect(server.addr, "/probe").await;
    let base = server.rss();
    const ABORTED: usize = 400;
    let half_frame = &encode_client_frame(true, 0x2, &[5; 1000], [1, 2, 3, 4])[..508];
    for i in 0..ABORTED {
        let mut raw = RawClient::connect(server.addr, "/probe").await;
        raw.send_raw(half_frame).await;
        if i % 2 == 0 {
            raw.stream.set_zero_linger().unwrap(); // dropped: RST
        } else {
            raw.stream.shutdown().await.unwrap(); // FIN, then dropped
        }
    }
    let mut closed = 0;
    while closed < ABORTED {
        match watcher.next().await {
            Seen::Event(Event::Message(m)) if m.payload().starts_with(b"closed ") => closed += 1,
            Seen::Event(_) => {}
            Seen::Eof => panic!("the watcher was closed"),
        }
    }
    // Every aborted connection ended on the server (the plugin saw each close); their memory went.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss();
    eprintln!("{ABORTED} aborted mid-frame: RSS {} → {} KiB after", base / KIB, after / KIB);
    assert!(
        after <= base + SLACK,
        "RSS after the aborts: {} KiB over the baseline",
        (after.saturating_sub(base)) / KIB
    );
    bystander.check(5);
}
