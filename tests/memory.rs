//! Memory bounds under hostile clients (README, "Memory bounds"), measured on a real server
//! process: its RSS is read from /proc while clients that send large messages and never read, and
//! clients that leave messages unfinished, do their worst on the native and the plugin route. A
//! bystander on each route must be served meanwhile.
//!
//! The server runs in a child process (this test binary, re-executed with `child_server`), so that
//! its RSS is its own; like the `wsplug` binary it uses mimalloc.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use wsplug::protocol::Event;
use wsplug::protocol::frame::encode_client_frame;
use wsplug_tests::{RawClient, Seen, ServerProcess, assert_echo, plugin_path};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHILD_ENV: &str = "WSPLUG_MEMORY_TEST_CONFIG";
const MIB: usize = 1 << 20;
/// The limits every server here runs with: M (max_message_size) and Q (outbound_queue_bytes).
const M: usize = MIB;
const Q: usize = 256 << 10;
/// The per-connection worst case of the README: (M + 512 KiB) + (Q + M) + 8 KiB, and 8 KiB more
/// for what the allocator keeps around each connection's buffers.
const PER_CONNECTION: usize = (M + (512 << 10)) + (Q + M) + (16 << 10);

/// Not a test: the server process the tests below measure, run when they re-execute this binary
/// with `CHILD_ENV` naming a config file.
#[tokio::test]
#[ignore = "the child server process of the memory tests"]
async fn child_server() {
    wsplug_tests::run_child_server(CHILD_ENV).await;
}

/// A server process with the limits every test here runs with, and `limits` added.
fn start_server(limits: &str) -> ServerProcess {
    let config = format!(
        "listen = \"127.0.0.1:0\"\n[limits]\nmax_message_size = \"1MiB\"\nmax_frame_size = \"1MiB\"\n\
         outbound_queue_bytes = \"256KiB\"\nwrite_timeout = \"60s\"\n{limits}\n\
         [[routes]]\npath = \"/native\"\nkind = \"echo\"\n\
         [[routes]]\npath = \"/plugin\"\nplugin = {:?}\n",
        plugin_path("echo").display().to_string()
    );
    ServerProcess::start(&config, CHILD_ENV)
}

/// A client that sends `count` messages of M bytes and never reads; returns the close code it was
/// sent, if any arrives before the end.
fn hoarder(addr: SocketAddr, path: &'static str, count: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = RawClient::connect(addr, path).await;
        let frame = encode_client_frame(true, 0x2, &vec![0x5A; M], [1, 2, 3, 4]);
        for _ in 0..count {
            // The server stops reading once this client's queue is full: writes then block.
            let sent = tokio::time::timeout(Duration::from_secs(3), client.stream.write_all(&frame)).await;
            if !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
        // Hold the connection (and whatever the server holds for it) until aborted.
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
}

/// A client that starts a message of 12 × 64 KiB fragments and never finishes it, pinging every
/// half second; returns the close code the server sends.
fn unfinished(addr: SocketAddr, path: &'static str) -> tokio::task::JoinHandle<Option<u16>> {
    tokio::spawn(async move {
        let mut client = RawClient::connect(addr, path).await;
        let chunk = vec![0x33u8; 64 << 10];
        client.send_frame(false, 0x2, &chunk).await;
        for _ in 1..12 {
            client.send_frame(false, 0x0, &chunk).await;
        }
        let end = Instant::now() + Duration::from_secs(8);
        while Instant::now() < end {
            client.send_frame(true, 0x9, b"still here").await;
            let seen = tokio::time::timeout(Duration::from_millis(500), client.next()).await;
            match seen {
                Ok(Seen::Event(Event::Close(frame))) => return frame.map(|f| f.code.0),
                Ok(Seen::Eof) => return None,
                _ => {}
            }
        }
        None
    })
}

/// Round trips on both routes, each bounded: the bystanders are served.
async fn bystanders_are_served(addr: SocketAddr, rounds: usize) -> Duration {
    let url = |path: &str| format!("ws://{addr}{path}");
    let (mut native, _) = tokio_tungstenite::connect_async(url("/native")).await.unwrap();
    let (mut plugin, _) = tokio_tungstenite::connect_async(url("/plugin")).await.unwrap();
    let mut worst = Duration::ZERO;
    for i in 0..rounds {
        for ws in [&mut native, &mut plugin] {
            let start = Instant::now();
            tokio::time::timeout(Duration::from_secs(5), assert_echo(ws, Message::text(format!("bystander {i}"))))
                .await
                .expect("a bystander waited over 5 s");
            worst = worst.max(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worst
}

#[tokio::test]
async fn hostile_clients_stay_within_the_per_connection_formula_and_memory_returns() {
    let server = start_server("message_timeout = \"2s\"");
    bystanders_are_served(server.addr, 2).await;
    let baseline = server.rss();

    let mut hoarders = Vec::new();
    for path in ["/native", "/plugin"] {
        for _ in 0..16 {
            hoarders.push(hoarder(server.addr, path, 6));
        }
    }
    let unfinished: Vec<_> = ["/native", "/plugin"]
        .into_iter()
        .flat_map(|p| (0..8).map(move |_| p))
        .map(|p| unfinished(server.addr, p))
        .collect();
    let hostile = hoarders.len() + unfinished.len();

    let (worst, peak) = tokio::join!(bystanders_are_served(server.addr, 20), server.peak_rss(Duration::from_secs(2)));
    // The plugin instance copies one message in and one reply out at a time: 2 M more.
    let bound = hostile * PER_CONNECTION + 2 * M + 8 * MIB;
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "{hostile} hostile connections: RSS +{} KiB at peak (bound {} KiB: {} KiB each); worst bystander round trip {worst:?}",
        grown >> 10,
        bound >> 10,
        PER_CONNECTION >> 10
    );
    assert!(grown <= bound, "RSS grew by {grown} bytes, over the bound of {bound}");

    for task in unfinished {
        let code = tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
        assert_eq!(code, Some(1008), "an unfinished message is closed with 1008 at message_timeout");
    }
    for task in &hoarders {
        task.abort();
    }
    // Memory goes back to the OS once the hoarders are gone.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let rss = server.rss();
        if rss <= baseline + 16 * MIB {
            break;
        }
        assert!(
            Instant::now() < end,
            "RSS stayed at {} KiB after the spike (baseline {} KiB)",
            rss >> 10,
            baseline >> 10
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_server_wide_budget_sheds_large_holders_and_serves_the_rest() {
    // 4 MiB: each of the 24 holds at least one 256 KiB read buffer before the budget can pause it
    // (small holders are never paused), so together they must pass the budget (24 × 256 KiB =
    // 6 MiB) and some must be shed, however the reads interleave. (With 8 MiB, pausing at 6 MiB
    // could hold them all just under the budget, and whether any was shed depended on timing.)
    let server = start_server("memory_budget = \"4MiB\"");
    bystanders_are_served(server.addr, 2).await;
    let baseline = server.rss();
    // 24 clients that would hold about 2 MiB each: 48 MiB against a budget of 4 MiB.
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let closed = closed.clone();
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut client = RawClient::connect(addr, "/native").await;
            let frame = encode_client_frame(true, 0x2, &vec![0x5A; M], [1, 2, 3, 4]);
            for _ in 0..6 {
                let sent = tokio::time::timeout(Duration::from_secs(2), client.stream.write_all(&frame)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
            }
            // Read what comes back until the close frame: the 1013 of a shed connection.
            let end = Instant::now() + Duration::from_secs(4);
            while Instant::now() < end {
                match tokio::time::timeout(Duration::from_millis(500), client.next()).await {
                    Ok(Seen::Event(Event::Close(Some(f)))) if f.code.0 == 1013 => {
                        closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    Ok(Seen::Eof) | Ok(Seen::Event(Event::Close(_))) => return,
                    _ => {}
                }
            }
        }));
    }
    let (worst, peak) = tokio::join!(bystanders_are_served(server.addr, 20), server.peak_rss(Duration::from_secs(2)));
    let grown = peak.saturating_sub(baseline);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    let shed = closed.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "budget 4 MiB: RSS +{} KiB at peak; {shed} of 24 large holders shed with 1013; worst bystander {worst:?}",
        grown >> 10
    );
    // How many are shed depends on timing (once some are gone the rest fit); that some are, and
    // what the total stays under, does not.
    assert!(shed >= 1, "no large holder was shed");
    // Without the budget these 24 would be allowed 24 × PER_CONNECTION (about 60 MiB); with it, the
    // budget plus what is read between two checks.
    assert!(grown <= 4 * MIB + 16 * MIB, "RSS grew by {} KiB", grown >> 10);
}

#[tokio::test]
async fn idle_connections_cost_a_few_kib_each() {
    const IDLE: usize = 4_000;
    for route in ["/native", "/plugin"] {
        // A server of its own for each route: memory freed by the first would be reused.
        let server = start_server("");
        // Warm up the allocator and the runtime, then measure what idle connections add.
        let warm: Vec<_> =
            futures_util::future::join_all((0..50).map(|_| RawClient::connect(server.addr, route))).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = server.rss();
        let mut idle = Vec::with_capacity(IDLE);
        for _ in 0..IDLE / 100 {
            idle.extend(futures_util::future::join_all((0..100).map(|_| RawClient::connect(server.addr, route))).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let each = server.rss().saturating_sub(before) / IDLE;
        eprintln!("{IDLE} idle connections on {route}: {each} bytes of server RSS each");
        // The README's figure: at most 4 KiB in the release binary (the efficiency benchmark
        // measures 3.5 KiB native, 3.9 KiB plugin). This debug build measures about 3.6 and 4.1 KiB
        // (4,000 connections; less each with more): the plugin route also keeps the request's
        // headers (on-open sees them again when a connection is re-attached).
        let bound = if route == "/native" { 4 << 10 } else { 4608 };
        assert!(each <= bound, "an idle connection on {route} costs {each} bytes (bound {bound})");
        drop((warm, idle));
    }
}
