//! Server efficiency: wsplug against peer WebSocket servers, each server alone on one core.
//!
//! **What it measures.** Every server runs as a process of its own pinned to CPU 0 (`taskset -c 0`);
//! the load generator is this process, a single-threaded Tokio runtime pinned to CPU 1. The headline
//! figure is work done **per second of server CPU time**: messages echoed (or connections accepted,
//! or broadcast deliveries) divided by the utime + stime the server process spent in the measuring
//! window (`/proc/PID/stat`, read when the window opens and when it closes, after a 0.5 s warm-up).
//! That figure stays fair when the load generator, not the server, is the bottleneck, which on a
//! 2-core machine it often is. Plain rates, p50/p99 latencies and how busy each side was (a side
//! near 100 % is the bottleneck) are printed next to it.
//!
//! Servers (the peers are this same binary re-executed with `--serve KIND PORT`, so nothing else
//! needs building):
//! - `wsplug-native`: `target/release/wsplug`, route `/native-echo` (the built-in echo, no Wasm);
//! - `wsplug-plugin`: the same binary, route `/echo` (the echo plugin: one Wasm call per message),
//!   and `/probe` (the probe test plugin, `broadcast X`) for the broadcast scenario;
//! - `tt`: tokio-tungstenite 0.30 with its default config, the echo server of its examples
//!   (`read.try_filter(data).forward(write)`, which coalesces queued frames into one write);
//! - `tt8k`: the same with an 8 KiB read buffer instead of 128 KiB (the write buffer is allocated
//!   on demand and `write_buffer_size` is only a flush threshold, so it is left alone);
//! - `fws`: fastwebsockets 0.10 behind hyper's HTTP/1 upgrade (its `upgrade` feature, as its
//!   examples do it), `FragmentCollector`, auto close and auto pong;
//! - `tt-broadcast`: tokio-tungstenite (default config) relaying every text message to every
//!   connected client, the sender included (like wsplug's `broadcast`): a task per connection, an
//!   unbounded mpsc per client, clones of one `Message` (shared bytes).
//!
//! The peers run on a current-thread runtime; wsplug's multi-thread runtime gets one worker, since
//! it sees one CPU. Every server is started fresh for each run and killed after it.
//!
//! Scenarios (each against every echo server; repetitions interleaved: run 1 of every server, then
//! run 2, ...; the tables show medians):
//! - `64B-1`: 64 B text, 50 connections, 1 message in flight per connection;
//! - `64B-16`: 64 B text, 50 connections, 16 in flight (pipelined: write 16, keep 16 outstanding);
//! - `16KiB`: 16 KiB binary, 50 connections, 1 in flight;
//! - `1MiB`: 1 MiB binary, 4 connections, 1 in flight;
//! - `idle`: open 10,000 connections, 200 handshakes at a time, as fast as the client can: accepts
//!   per second of wall time (and of server CPU), handshake latency, and server RSS per connection
//!   ((VmRSS after all are open and 1 s of quiet − VmRSS before) / 10,000, from `/proc/PID/status`);
//! - `broadcast`: 1,000 receivers and one sender on `wsplug-plugin` (`/probe`, text
//!   `broadcast <64 B>`) and `tt-broadcast` (the 64 B text). The sender sends one message and waits
//!   until all 1,000 receivers have it before sending the next (lock-step: every server does the
//!   same 1-in, 1,000-out work, and none gains by coalescing a backlog); rounds of 100 messages
//!   repeat for the measuring time (one round alone is too short for the 10 ms CPU clock). Reported:
//!   deliveries (messages × receivers) per second of server CPU, and the fan-out time of one message
//!   (send → the last receiver has it). The sender gets its own copy too (it is on the route); that
//!   copy is read but not counted.
//!
//! Every message carries its sequence number; each connection checks that every echo (or delivery)
//! is exactly what was sent, in order, and panics with the difference otherwise.
//!
//! **How to run** (Linux only; needs 2 CPUs and `taskset`):
//!
//!     cargo build --release                                   # target/release/wsplug + plugins
//!     cargo bench -p wsplug-tests --bench efficiency          # everything: about 5 minutes
//!     cargo bench -p wsplug-tests --bench efficiency -- 64B-16 idle        # some scenarios
//!     cargo bench -p wsplug-tests --bench efficiency -- 64B-1 tt8k wsplug-native  # and servers
//!     WSPLUG_BENCH_SECS=10 WSPLUG_BENCH_REPS=5 cargo bench -p wsplug-tests --bench efficiency
//!
//! `WSPLUG_BENCH_SECS` is the measuring window of each run (default 3), `WSPLUG_BENCH_REPS` the
//! number of repetitions (default 3). Output: one markdown table per scenario, then a summary.
//!
//! **How to read it.** Absolute numbers depend on the machine and on whatever else runs on it;
//! compare the ratios: "vs best peer" is a server's efficiency over the best of `tt`, `tt8k` and
//! `fws` in the same run (above 1: more work per CPU-second than the best peer), and
//! "plugin / native" is what a Wasm call per message costs. For memory, "vs leanest peer" is RSS per
//! connection over the smallest peer's (below 1 is better).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as TtMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wsplug::protocol::frame::encode_client_frame;
use wsplug::protocol::{Decoder, Event, Limits, Message};
use wsplug_tests::pinned::{CLK_TCK, Pinned, TASKSET, cpu_secs, free_port};
use wsplug_tests::{TempDir, plugin_path, upgrade_request};

/// The longest any single step (a connect, a handshake, an echo, a delivery) may take.
const STEP: Duration = Duration::from_secs(10);
/// Load before the measuring window opens (connections warm, caches and allocators settled).
const WARM_UP: Duration = Duration::from_millis(500);
/// The server's CPU and the load generator's.
const SERVER_CPU: &str = "0";
const LOAD_CPU: usize = 1;
/// Every payload starts with its sequence number in hex; the rest is filler.
const TAG: usize = 16;
/// The masking key of every client frame.
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x8e];

// ---------------------------------------------------------------------------------------------
// Servers and scenarios
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    WsplugNative,
    WsplugPlugin,
    Tt,
    Tt8k,
    Fws,
    TtBroadcast,
}

impl Server {
    const ALL: [Server; 6] =
        [Self::WsplugNative, Self::WsplugPlugin, Self::Tt, Self::Tt8k, Self::Fws, Self::TtBroadcast];
    const ECHO: [Server; 5] = [Self::WsplugNative, Self::WsplugPlugin, Self::Tt, Self::Tt8k, Self::Fws];
    const BROADCAST: [Server; 2] = [Self::WsplugPlugin, Self::TtBroadcast];

    fn name(self) -> &'static str {
        match self {
            Self::WsplugNative => "wsplug-native",
            Self::WsplugPlugin => "wsplug-plugin",
            Self::Tt => "tt",
            Self::Tt8k => "tt8k",
            Self::Fws => "fws",
            Self::TtBroadcast => "tt-broadcast",
        }
    }

    fn is_wsplug(self) -> bool {
        matches!(self, Self::WsplugNative | Self::WsplugPlugin)
    }

    /// The request path of this server's route for a workload.
    fn path(self, workload: &Workload) -> &'static str {
        match (self, workload) {
            (Self::WsplugNative, _) => "/native-echo",
            (Self::WsplugPlugin, Workload::Broadcast { .. }) => "/probe",
            (Self::WsplugPlugin, _) => "/echo",
            _ => "/",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Workload {
    Echo { payload: usize, binary: bool, connections: usize, in_flight: usize },
    Idle { connections: usize, concurrency: usize },
    Broadcast { receivers: usize, messages: usize, payload: usize },
}

struct Scenario {
    name: &'static str,
    about: &'static str,
    workload: Workload,
}

impl Scenario {
    fn servers(&self) -> &'static [Server] {
        match self.workload {
            Workload::Broadcast { .. } => &Server::BROADCAST,
            _ => &Server::ECHO,
        }
    }

    /// What one unit of work is, and what the latency columns time.
    fn units(&self) -> (&'static str, &'static str) {
        match self.workload {
            Workload::Echo { .. } => ("msg", "round trip"),
            Workload::Idle { .. } => ("accepts", "handshake"),
            Workload::Broadcast { .. } => ("deliveries", "fan-out of one message"),
        }
    }
}

const SCENARIOS: [Scenario; 6] = [
    Scenario {
        name: "64B-1",
        about: "64 B text echo, 50 connections, 1 in flight",
        workload: Workload::Echo { payload: 64, binary: false, connections: 50, in_flight: 1 },
    },
    Scenario {
        name: "64B-16",
        about: "64 B text echo, 50 connections, 16 in flight",
        workload: Workload::Echo { payload: 64, binary: false, connections: 50, in_flight: 16 },
    },
    Scenario {
        name: "16KiB",
        about: "16 KiB binary echo, 50 connections, 1 in flight",
        workload: Workload::Echo { payload: 16 << 10, binary: true, connections: 50, in_flight: 1 },
    },
    Scenario {
        name: "1MiB",
        about: "1 MiB binary echo, 4 connections, 1 in flight",
        workload: Workload::Echo { payload: 1 << 20, binary: true, connections: 4, in_flight: 1 },
    },
    Scenario {
        name: "idle",
        about: "10,000 connections opened 200 at a time, then idle",
        workload: Workload::Idle { connections: 10_000, concurrency: 200 },
    },
    Scenario {
        name: "broadcast",
        about: "64 B text to 1,000 receivers, one message at a time",
        workload: Workload::Broadcast { receivers: 1_000, messages: 100, payload: 64 },
    },
];

// ---------------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` to every bench binary.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let result = match args.first().map(String::as_str) {
        Some("--serve") => serve(&args[1..]),
        _ => bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("efficiency: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Everything a run needs from the file system.
struct Env {
    /// This binary, re-executed with `--serve` for the peers.
    exe: PathBuf,
    wsplug: PathBuf,
    /// Holds the wsplug config and every server's stderr log.
    dir: TempDir,
    config: PathBuf,
    window: Duration,
    reps: usize,
}

impl Env {
    fn prepare() -> Result<Self, String> {
        let window = env_number("WSPLUG_BENCH_SECS", 3.0)?;
        let reps = env_number("WSPLUG_BENCH_REPS", 3.0)? as usize;
        if window.is_nan() || window <= 0.0 || reps == 0 {
            return Err("WSPLUG_BENCH_SECS and WSPLUG_BENCH_REPS must be above 0".into());
        }
        if !Path::new(TASKSET).exists() {
            return Err(format!("{TASKSET} not found: it pins the servers to CPU 0 (Debian: util-linux)"));
        }
        let exe = std::env::current_exe().map_err(|e| format!("locating this binary: {e}"))?;
        // target/release/deps/efficiency-HASH → target/release/wsplug
        let wsplug = exe.parent().and_then(Path::parent).map(|release| release.join("wsplug")).unwrap_or_default();
        if !wsplug.is_file() {
            return Err(format!("{} not found: run `cargo build --release` first", wsplug.display()));
        }
        let mut plugins = Vec::new();
        for name in ["echo", "probe"] {
            let path = plugin_path(name);
            let path = path
                .canonicalize()
                .map_err(|e| format!("{}: {e}: run `cargo build --release` first", path.display()))?;
            plugins.push(path);
        }
        let dir = TempDir::new("efficiency");
        let config = dir.join("wsplug.toml");
        // Limits high enough that no scenario meets one; pings and idle closes out of the way.
        let text = format!(
            "listen = \"127.0.0.1:0\"\n\n\
             [limits]\nmax_connections = 20000\nping_interval = \"10m\"\nidle_timeout = \"20m\"\n\
             handshake_timeout = \"30s\"\noutbound_queue_frames = 1024\noutbound_queue_bytes = \"64MiB\"\n\n\
             [[routes]]\npath = \"/native-echo\"\nkind = \"echo\"\n\n\
             [[routes]]\npath = \"/echo\"\nplugin = {:?}\n\n\
             [[routes]]\npath = \"/probe\"\nplugin = {:?}\n",
            plugins[0].display().to_string(),
            plugins[1].display().to_string(),
        );
        std::fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
        Ok(Self { exe, wsplug, dir, config, window: Duration::from_secs_f64(window), reps })
    }
}

fn env_number(name: &str, default: f64) -> Result<f64, String> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn bench(args: &[String]) -> Result<(), String> {
    let mut scenarios: Vec<&Scenario> = Vec::new();
    let mut servers: Vec<Server> = Vec::new();
    for arg in args {
        if let Some(s) = SCENARIOS.iter().find(|s| s.name == arg) {
            scenarios.push(s);
        } else if let Some(s) = Server::ALL.into_iter().find(|s| s.name() == arg) {
            servers.push(s);
        } else {
            let names: Vec<_> = SCENARIOS.iter().map(|s| s.name).chain(Server::ALL.map(Server::name)).collect();
            return Err(format!("unknown scenario or server {arg:?}; known: {}", names.join(", ")));
        }
    }
    if scenarios.is_empty() {
        scenarios = SCENARIOS.iter().collect();
    }
    let env = Env::prepare()?;

    if !core_affinity::set_for_current(core_affinity::CoreId { id: LOAD_CPU }) {
        return Err(format!("could not pin the load generator to CPU {LOAD_CPU} (this bench needs 2 CPUs)"));
    }
    let fds = rlimit::increase_nofile_limit(u64::MAX).map_err(|e| format!("raising the open-file limit: {e}"))?;
    if fds < 10_100 {
        eprintln!("efficiency: warning: open-file limit {fds}: the idle scenario needs 10,100 (ulimit -n)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;

    println!("# wsplug efficiency: work per second of server CPU\n");
    println!(
        "Each server alone on CPU 0, the load generator on CPU 1; {:.1} s measured per run after a {:.1} s \
         warm-up; {} runs per server, interleaved; medians. Compare the ratios, not the absolute figures.\n",
        env.window.as_secs_f64(),
        WARM_UP.as_secs_f64(),
        env.reps
    );
    let mut summary = Vec::new();
    for scenario in scenarios {
        let chosen: Vec<Server> =
            scenario.servers().iter().copied().filter(|s| servers.is_empty() || servers.contains(s)).collect();
        if chosen.is_empty() {
            continue;
        }
        let mut runs: Vec<Vec<Result<Sample, String>>> = vec![Vec::new(); chosen.len()];
        for rep in 1..=env.reps {
            for (i, &server) in chosen.iter().enumerate() {
                let started = Instant::now();
                let run = runtime.block_on(run_once(&env, scenario, server));
                match &run {
                    Ok(s) => eprintln!(
                        "{} run {rep}/{}: {:<14} {:>10} {} per CPU-s ({:.1} s)",
                        scenario.name,
                        env.reps,
                        server.name(),
                        count(s.efficiency()),
                        scenario.units().0,
                        started.elapsed().as_secs_f64()
                    ),
                    Err(e) => eprintln!("{} run {rep}/{}: {:<14} FAILED: {e}", scenario.name, env.reps, server.name()),
                }
                runs[i].push(run);
            }
        }
        let table = Table::new(scenario, chosen.into_iter().zip(runs).collect());
        table.print();
        summary.extend(table.summary_rows());
    }
    print_summary(&summary);
    Ok(())
}

/// One run: a fresh server process, the workload, the process killed.
async fn run_once(env: &Env, scenario: &Scenario, server: Server) -> Result<Sample, String> {
    let process = ServerProcess::start(env, server).await?;
    let path = server.path(&scenario.workload);
    let result = match scenario.workload {
        Workload::Echo { payload, binary, connections, in_flight } => {
            let load = EchoLoad { payload, binary, in_flight };
            run_echo(env, &process, path, connections, load).await
        }
        Workload::Idle { connections, concurrency } => run_idle(&process, path, connections, concurrency).await,
        Workload::Broadcast { receivers, messages, payload } => {
            let prefix: &[u8] = if server.is_wsplug() { b"broadcast " } else { b"" };
            run_broadcast(env, &process, path, prefix, receivers, messages, payload).await
        }
    };
    result.map_err(|e| process.explain(e))
}

// ---------------------------------------------------------------------------------------------
// Server processes and what /proc says about them
// ---------------------------------------------------------------------------------------------

/// A server process pinned to CPU 0, killed when dropped.
struct ServerProcess;

impl ServerProcess {
    async fn start(env: &Env, server: Server) -> Result<Pinned, String> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = env.dir.join(&format!("{}-{port}.log", server.name()));
        Pinned::start(server.name(), SERVER_CPU, addr, log, |command| {
            if server.is_wsplug() {
                command.arg(&env.wsplug).arg("--config").arg(&env.config).arg("--listen").arg(addr.to_string());
                command.arg("--no-watch").env("WSPLUG_LOG", "warn");
            } else {
                command.arg(&env.exe).args(["--serve", server.name(), &port.to_string()]);
            }
        })
        .await
    }
}

fn own_cpu_secs() -> Result<f64, String> {
    cpu_secs(std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

/// What one run measured in its window.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    /// Units of work done in the window: echoes, accepted connections or deliveries.
    work: f64,
    /// Wall-clock seconds of the window.
    wall: f64,
    /// CPU seconds the server process spent in the window.
    server_cpu: f64,
    /// CPU seconds the load generator (this process) spent in the window.
    client_cpu: f64,
    p50_us: f64,
    p99_us: f64,
    /// Idle only: server RSS per open connection, in bytes.
    rss_per_conn: f64,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.work / self.wall
    }

    /// Work per second of server CPU (one clock tick at least, so a tiny window cannot divide by 0).
    fn efficiency(&self) -> f64 {
        self.work / self.server_cpu.max(1.0 / CLK_TCK)
    }

    fn with_latencies(mut self, latencies_us: &mut [u32]) -> Self {
        latencies_us.sort_unstable();
        let pct = |p: f64| match latencies_us.len() {
            0 => 0.0,
            n => latencies_us[((n - 1) as f64 * p).round() as usize] as f64,
        };
        self.p50_us = pct(0.5);
        self.p99_us = pct(0.99);
        self
    }

    fn figures(&self) -> Figures {
        Figures {
            rate: self.rate(),
            server_cpu: self.server_cpu,
            efficiency: self.efficiency(),
            p50_us: self.p50_us,
            p99_us: self.p99_us,
            server_busy: self.server_cpu / self.wall,
            client_busy: self.client_cpu / self.wall,
            rss_per_conn: self.rss_per_conn,
        }
    }
}

/// What the tables show of a run; over several runs, each figure is its own median.
#[derive(Clone, Copy, Debug)]
struct Figures {
    /// Work per second of wall time.
    rate: f64,
    server_cpu: f64,
    /// Work per second of server CPU.
    efficiency: f64,
    p50_us: f64,
    p99_us: f64,
    /// Server and load-generator CPU time over wall time (1.0: a whole core).
    server_busy: f64,
    client_busy: f64,
    rss_per_conn: f64,
}

impl Figures {
    fn median(runs: &[Figures]) -> Option<Self> {
        let of = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
        (!runs.is_empty()).then(|| Self {
            rate: of(|f| f.rate),
            server_cpu: of(|f| f.server_cpu),
            efficiency: of(|f| f.efficiency),
            p50_us: of(|f| f.p50_us),
            p99_us: of(|f| f.p99_us),
            server_busy: of(|f| f.server_busy),
            client_busy: of(|f| f.client_busy),
            rss_per_conn: of(|f| f.rss_per_conn),
        })
    }
}

/// Resource readings at the edges of a measuring window.
struct Window {
    started: Instant,
    server_cpu: f64,
    client_cpu: f64,
}

impl Window {
    fn open(server: &Pinned) -> Result<Self, String> {
        Ok(Self { started: Instant::now(), server_cpu: server.cpu_secs()?, client_cpu: own_cpu_secs()? })
    }

    fn close(self, server: &Pinned, work: f64) -> Result<Sample, String> {
        Ok(Sample {
            work,
            wall: self.started.elapsed().as_secs_f64(),
            server_cpu: server.cpu_secs()? - self.server_cpu,
            client_cpu: own_cpu_secs()? - self.client_cpu,
            ..Sample::default()
        })
    }
}

/// The phases of an echo run, shared with its connections.
const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPING: u8 = 2;

// ---------------------------------------------------------------------------------------------
// The load generator: raw frames out, wsplug's own decoder in
// ---------------------------------------------------------------------------------------------

/// Connects and completes the opening handshake; returns the stream, the bytes read past the
/// response head, and how long the handshake took.
async fn handshake(addr: SocketAddr, request: &str) -> Result<(TcpStream, BytesMut, Duration), String> {
    let started = Instant::now();
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("set_nodelay: {e}"))?;
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("sending the upgrade request: {e}"))?;
        let mut buf = BytesMut::with_capacity(512);
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if !buf.starts_with(b"HTTP/1.1 101 ") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    return Err(format!("handshake refused: {head:?}"));
                }
                buf.advance(end + 4);
                return Ok((stream, buf));
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Err("server closed the connection during the handshake".to_string()),
                Ok(_) => {}
                Err(e) => return Err(format!("reading the handshake response: {e}")),
            }
        }
    };
    let (stream, buf) =
        tokio::time::timeout(STEP, exchange).await.map_err(|_| format!("handshake took over {STEP:?}"))??;
    Ok((stream, buf, started.elapsed()))
}

/// Opens `n` WebSocket connections, `concurrency` handshakes at a time.
async fn open_connections(
    addr: SocketAddr,
    path: &str,
    n: usize,
    concurrency: usize,
) -> Result<Vec<(TcpStream, BytesMut, Duration)>, String> {
    let request = upgrade_request(path);
    futures_util::stream::iter(0..n)
        .map(|_| handshake(addr, &request))
        .buffer_unordered(concurrency)
        .try_collect()
        .await
}

/// The payload tag of message `seq`: its sequence number in hex (ASCII, so valid text too).
fn tag(seq: u64) -> [u8; TAG] {
    let mut tag = [0; TAG];
    for (i, digit) in tag.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((seq >> (60 - 4 * i)) & 0xf) as usize];
    }
    tag
}

/// Panics unless `msg` is message `seq` as sent: the kind, the length, the tag and the filler.
fn check_message(what: &str, msg: &Message, seq: u64, filler: &[u8], binary: bool) {
    let payload = msg.payload();
    let kind = |binary: bool| if binary { "binary" } else { "text" };
    let got_binary = matches!(msg, Message::Binary(_));
    let ok = got_binary == binary
        && payload.len() == filler.len()
        && payload[..TAG] == tag(seq)
        && payload[TAG..] == filler[TAG..];
    assert!(
        ok,
        "{what}: wrong message: expected #{seq} ({} B {}, tag {:?}), got {} B {} starting {:?}",
        filler.len(),
        kind(binary),
        String::from_utf8_lossy(&tag(seq)),
        payload.len(),
        kind(got_binary),
        String::from_utf8_lossy(&payload[..payload.len().min(40)]),
    );
}

/// Reads more bytes into `buf`, sized for the frame in progress; an error on EOF or timeout.
async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut, decoder: &Decoder, what: &str) -> Result<(), String> {
    let wanted = decoder.bytes_wanted(buf.len()).max(16 << 10);
    if buf.capacity() - buf.len() < wanted.min(64 << 10) {
        buf.reserve(wanted.max(64 << 10));
    }
    match tokio::time::timeout(STEP, stream.read_buf(buf)).await {
        Err(_) => Err(format!("{what}: nothing from the server for {STEP:?}")),
        Ok(Ok(0)) => Err(format!("{what}: the server closed the connection")),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: read: {e}")),
    }
}

#[derive(Clone, Copy)]
struct EchoLoad {
    payload: usize,
    binary: bool,
    in_flight: usize,
}

/// An echo run: the connections open, warm up, then the window; echoes counted in the window.
async fn run_echo(
    env: &Env,
    server: &Pinned,
    path: &str,
    connections: usize,
    load: EchoLoad,
) -> Result<Sample, String> {
    let streams = open_connections(server.addr, path, connections, connections).await?;
    let phase = Arc::new(AtomicU8::new(WARMING));
    let mut tasks = JoinSet::new();
    for (conn, (stream, buf, _)) in streams.into_iter().enumerate() {
        tasks.spawn(echo_connection(conn, stream, buf, load, phase.clone()));
    }
    tokio::time::sleep(WARM_UP).await;
    let window = Window::open(server)?;
    phase.store(MEASURING, Ordering::Relaxed);
    tokio::time::sleep(env.window).await;
    phase.store(STOPPING, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let sample = window.close(server, 0.0)?;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(connection)) => latencies.extend(connection),
            Ok(Err(e)) => return Err(e),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(format!("connection task: {e}")),
        }
    }
    Ok(Sample { work: latencies.len() as f64, ..sample }.with_latencies(&mut latencies))
}

/// One echo connection: keeps `in_flight` messages outstanding until the run stops, checks every
/// echo, and returns the round-trip times (µs) of the echoes received in the window.
async fn echo_connection(
    conn: usize,
    mut stream: TcpStream,
    mut buf: BytesMut,
    load: EchoLoad,
    phase: Arc<AtomicU8>,
) -> Result<Vec<u32>, String> {
    let what = format!("echo connection {conn}");
    let filler = vec![b'.'; load.payload];
    // One encoded frame, its tag patched in place (masked) for each message.
    let mut frame = encode_client_frame(true, if load.binary { 0x2 } else { 0x1 }, &filler, MASK);
    let tag_at = frame.len() - load.payload;
    let mut out = Vec::with_capacity(frame.len() * load.in_flight);
    let mut decoder = Decoder::client(Limits::default());
    let mut sent_at = VecDeque::with_capacity(load.in_flight);
    let mut latencies = Vec::with_capacity(1 << 14);
    let (mut next, mut expected) = (0u64, 0u64);
    loop {
        if phase.load(Ordering::Relaxed) != STOPPING && sent_at.len() < load.in_flight {
            let now = Instant::now();
            while sent_at.len() < load.in_flight {
                for (i, (byte, digit)) in frame[tag_at..tag_at + TAG].iter_mut().zip(tag(next)).enumerate() {
                    *byte = digit ^ MASK[i % 4];
                }
                out.extend_from_slice(&frame);
                sent_at.push_back(now);
                next += 1;
            }
            match tokio::time::timeout(STEP, stream.write_all(&out)).await {
                Ok(Ok(())) => out.clear(),
                Ok(Err(e)) => return Err(format!("{what}: write: {e}")),
                Err(_) => return Err(format!("{what}: write blocked for {STEP:?}")),
            }
        }
        if sent_at.is_empty() {
            return Ok(latencies);
        }
        read_more(&mut stream, &mut buf, &decoder, &what).await?;
        let now = Instant::now();
        let measuring = phase.load(Ordering::Relaxed) == MEASURING;
        while let Some(event) = decoder.decode(&mut buf).map_err(|e| format!("{what}: invalid frame: {e}"))? {
            match event {
                Event::Message(msg) => {
                    check_message(&what, &msg, expected, &filler, load.binary);
                    expected += 1;
                    let sent = sent_at.pop_front().unwrap_or_else(|| panic!("{what}: an echo of a message never sent"));
                    if measuring {
                        latencies.push((now - sent).as_micros().min(u32::MAX as u128) as u32);
                    }
                }
                Event::Ping(_) | Event::Pong(_) => {}
                Event::Close(close) => return Err(format!("{what}: the server closed the connection: {close:?}")),
            }
        }
    }
}

/// The idle run: open every connection as fast as the client can, then let them sit for a second.
async fn run_idle(server: &Pinned, path: &str, connections: usize, concurrency: usize) -> Result<Sample, String> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = server.rss_bytes()?;
    let window = Window::open(server)?;
    let open = open_connections(server.addr, path, connections, concurrency).await?;
    let sample = window.close(server, open.len() as f64)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = server.rss_bytes()?;
    let mut latencies: Vec<u32> = open.iter().map(|(_, _, t)| t.as_micros().min(u32::MAX as u128) as u32).collect();
    let rss_per_conn = rss_after.saturating_sub(rss_before) as f64 / connections as f64;
    Ok(Sample { rss_per_conn, ..sample }.with_latencies(&mut latencies))
}

/// Delivery progress of a broadcast run, shared by the receivers and the sender.
struct Fanout {
    delivered: AtomicU64,
    /// The delivery count at which the message in flight has reached every receiver.
    target: AtomicU64,
    all_delivered: Notify,
}

/// The broadcast run: receivers and a sender connect; one warm-up round of `messages`, then rounds
/// until the window is over, each message sent only once the previous one reached everybody.
async fn run_broadcast(
    env: &Env,
    server: &Pinned,
    path: &str,
    prefix: &[u8],
    receivers: usize,
    messages: usize,
    payload: usize,
) -> Result<Sample, String> {
    let filler = Arc::new(vec![b'.'; payload]);
    let fanout =
        Arc::new(Fanout { delivered: AtomicU64::new(0), target: AtomicU64::new(0), all_delivered: Notify::new() });
    let mut tasks = JoinSet::new();
    for (n, (stream, buf, _)) in open_connections(server.addr, path, receivers, 200).await?.into_iter().enumerate() {
        tasks.spawn(receiver(n, stream, buf, filler.clone(), fanout.clone()));
    }
    let (sender, _, _) = handshake(server.addr, &upgrade_request(path)).await?;
    let (mut sender_in, mut sender_out) = sender.into_split();
    // The sender is on the route too and gets every message back: read and drop.
    tasks.spawn(async move {
        let mut sink = vec![0; 64 << 10];
        while matches!(sender_in.read(&mut sink).await, Ok(n) if n > 0) {}
        Ok(())
    });

    let mut seq = 0;
    let mut text = Vec::with_capacity(prefix.len() + payload);
    let mut send_round = async |latencies: &mut Vec<u32>| -> Result<(), String> {
        for _ in 0..messages {
            text.clear();
            text.extend_from_slice(prefix);
            text.extend_from_slice(&tag(seq));
            text.extend_from_slice(&filler[TAG..]);
            let frame = encode_client_frame(true, 0x1, &text, MASK);
            let target = fanout.delivered.load(Ordering::Relaxed) + receivers as u64;
            fanout.target.store(target, Ordering::Relaxed);
            let started = Instant::now();
            match tokio::time::timeout(STEP, sender_out.write_all(&frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("sender: write: {e}")),
                Err(_) => return Err(format!("sender: write blocked for {STEP:?}")),
            }
            let everyone = async {
                loop {
                    let notified = fanout.all_delivered.notified();
                    if fanout.delivered.load(Ordering::Relaxed) >= target {
                        return;
                    }
                    notified.await;
                }
            };
            if tokio::time::timeout(STEP, everyone).await.is_err() {
                let missing = target - fanout.delivered.load(Ordering::Relaxed);
                return Err(format!(
                    "message #{seq} still missing at {missing} of {receivers} receivers after {STEP:?}"
                ));
            }
            latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
            seq += 1;
        }
        Ok(())
    };
    let outcome = async {
        send_round(&mut Vec::new()).await?;
        let window = Window::open(server)?;
        let mut latencies = Vec::new();
        let mut rounds = 0;
        while rounds == 0 || window.started.elapsed() < env.window {
            send_round(&mut latencies).await?;
            rounds += 1;
        }
        let deliveries = (rounds * messages * receivers) as f64;
        Ok(window.close(server, deliveries)?.with_latencies(&mut latencies))
    };
    let result = tokio::select! {
        result = outcome => result,
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err("a connection ended early".to_string()),
            Ok(Err(e)) => Err(e),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(format!("connection task: {e}")),
        },
    };
    // Receivers go before the sender: wsplug's probe tells everyone left when a connection closes.
    tasks.shutdown().await;
    drop(sender_out);
    result
}

/// One broadcast receiver: checks that it gets every message in order, and counts it.
async fn receiver(
    n: usize,
    mut stream: TcpStream,
    mut buf: BytesMut,
    filler: Arc<Vec<u8>>,
    fanout: Arc<Fanout>,
) -> Result<(), String> {
    let what = format!("broadcast receiver {n}");
    let mut decoder = Decoder::client(Limits::default());
    let mut expected = 0;
    loop {
        // No timeout here: the sender times each delivery, and the run ends this task.
        buf.reserve(4 << 10);
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err(format!("{what}: the server closed the connection")),
            Ok(_) => {}
            Err(e) => return Err(format!("{what}: read: {e}")),
        }
        while let Some(event) = decoder.decode(&mut buf).map_err(|e| format!("{what}: invalid frame: {e}"))? {
            match event {
                Event::Message(msg) => {
                    check_message(&what, &msg, expected, &filler, false);
                    expected += 1;
                    let delivered = fanout.delivered.fetch_add(1, Ordering::Relaxed) + 1;
                    if delivered == fanout.target.load(Ordering::Relaxed) {
                        fanout.all_delivered.notify_one();
                    }
                }
                Event::Ping(_) | Event::Pong(_) => {}
                Event::Close(close) => return Err(format!("{what}: the server closed the connection: {close:?}")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------

/// Medians over the runs of one server in one scenario.
struct Row {
    server: Server,
    /// None when every run failed.
    median: Option<Figures>,
    ok_runs: usize,
    runs: usize,
    first_error: Option<String>,
}

struct Table<'a> {
    scenario: &'a Scenario,
    rows: Vec<Row>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

impl<'a> Table<'a> {
    fn new(scenario: &'a Scenario, runs: Vec<(Server, Vec<Result<Sample, String>>)>) -> Self {
        let rows = runs
            .into_iter()
            .map(|(server, results)| {
                let ok: Vec<Figures> = results.iter().filter_map(|r| r.as_ref().ok().map(Sample::figures)).collect();
                Row {
                    server,
                    median: Figures::median(&ok),
                    ok_runs: ok.len(),
                    runs: results.len(),
                    first_error: results.into_iter().find_map(Result::err),
                }
            })
            .collect();
        Self { scenario, rows }
    }

    /// The median efficiency of a server, when it has one.
    fn efficiency(&self, server: Server) -> Option<f64> {
        self.rows.iter().find(|r| r.server == server).and_then(|r| r.median).map(|m| m.efficiency)
    }

    /// The best peer by a figure (highest, or lowest when `lower_is_better`).
    fn best_peer(&self, figure: fn(&Figures) -> f64, lower_is_better: bool) -> Option<(Server, f64)> {
        self.rows
            .iter()
            .filter(|r| !r.server.is_wsplug())
            .filter_map(|r| r.median.as_ref().map(|m| (r.server, figure(m))))
            .reduce(|a, b| {
                let better = if lower_is_better { b.1 < a.1 } else { b.1 > a.1 };
                if better { b } else { a }
            })
    }

    fn is_idle(&self) -> bool {
        matches!(self.scenario.workload, Workload::Idle { .. })
    }

    fn print(&self) {
        let (unit, latency) = self.scenario.units();
        println!("## {}: {}\n", self.scenario.name, self.scenario.about);
        let best = self.best_peer(|f| f.efficiency, false);
        let leanest = self.best_peer(|f| f.rss_per_conn, true);
        let mut header = format!(
            "| server | {unit}/s | server CPU-s | {unit} per CPU-s | p50 µs | p99 µs | server CPU | load-gen CPU |"
        );
        if self.is_idle() {
            header.push_str(" RSS per conn |");
        }
        header.push_str(" vs best peer |");
        if self.is_idle() {
            header.push_str(" RSS vs leanest peer |");
        }
        println!("{header}");
        let columns = header.matches('|').count() - 1;
        println!("|{}", " --- |".repeat(columns));
        for row in &self.rows {
            let mut name = row.server.name().to_string();
            if row.ok_runs < row.runs {
                name.push_str(&format!(" ({}/{} runs ok)", row.ok_runs, row.runs));
            }
            let Some(m) = &row.median else {
                let error = row.first_error.as_deref().unwrap_or("no run").replace('|', "/");
                println!("| {name} | failed: {error} |{}", " |".repeat(columns - 2));
                continue;
            };
            let mut line = format!(
                "| {name} | {} | {:.2} | {} | {:.0} | {:.0} | {:.0} % | {:.0} % |",
                count(m.rate),
                m.server_cpu,
                count(m.efficiency),
                m.p50_us,
                m.p99_us,
                100.0 * m.server_busy,
                100.0 * m.client_busy,
            );
            if self.is_idle() {
                line.push_str(&format!(" {} |", bytes(m.rss_per_conn)));
            }
            line.push_str(&format!(" {} |", ratio(Some(m.efficiency), best.map(|b| b.1))));
            if self.is_idle() {
                line.push_str(&format!(" {} |", ratio(Some(m.rss_per_conn), leanest.map(|b| b.1))));
            }
            println!("{line}");
        }
        let plugin_vs_native = ratio(self.efficiency(Server::WsplugPlugin), self.efficiency(Server::WsplugNative));
        if matches!(self.scenario.workload, Workload::Broadcast { .. }) {
            println!("\nLatency: {latency} (send → the last receiver has it).\n");
        } else {
            println!("\nLatency: {latency}. wsplug-plugin / wsplug-native ({unit} per CPU-s): {plugin_vs_native}.\n");
        }
    }

    /// Rows of the summary: the scenario's figures for the best peer and for wsplug's two routes.
    fn summary_rows(&self) -> Vec<[String; 4]> {
        let (unit, _) = self.scenario.units();
        let name = self.scenario.name;
        let mut figures = vec![Figure {
            label: format!("{name} ({unit} per CPU-s)"),
            value: |f| f.efficiency,
            show: count,
            lower_is_better: false,
        }];
        if self.is_idle() {
            figures.push(Figure {
                label: format!("{name} (accepts/s)"),
                value: |f| f.rate,
                show: count,
                lower_is_better: false,
            });
            figures.push(Figure {
                label: format!("{name} (RSS per conn)"),
                value: |f| f.rss_per_conn,
                show: bytes,
                lower_is_better: true,
            });
        }
        figures
            .into_iter()
            .map(|f| {
                let best = self.best_peer(f.value, f.lower_is_better);
                let best_cell = best.map_or("n/a".to_string(), |(s, v)| format!("{} {}", s.name(), (f.show)(v)));
                let cell =
                    |server: Server| match self.rows.iter().find(|r| r.server == server).map(|r| r.median.as_ref()) {
                        None => "n/a".to_string(),
                        Some(None) => "failed".to_string(),
                        Some(Some(m)) => {
                            let v = (f.value)(m);
                            format!("{} ({})", (f.show)(v), ratio(Some(v), best.map(|b| b.1)))
                        }
                    };
                [f.label.clone(), best_cell, cell(Server::WsplugNative), cell(Server::WsplugPlugin)]
            })
            .collect()
    }
}

/// One figure of the summary: which of the median figures, how to print it, which way is better.
struct Figure {
    label: String,
    value: fn(&Figures) -> f64,
    show: fn(f64) -> String,
    lower_is_better: bool,
}

fn print_summary(rows: &[[String; 4]]) {
    if rows.is_empty() {
        return;
    }
    println!("## Summary (medians; in parentheses: / the best peer's figure)\n");
    println!("| scenario | best peer | wsplug native | wsplug plugin |");
    println!("| --- | --- | --- | --- |");
    for [scenario, peer, native, plugin] in rows {
        println!("| {scenario} | {peer} | {native} | {plugin} |");
    }
    println!();
}

/// A count or a rate, to three significant figures.
fn count(x: f64) -> String {
    match x {
        x if !x.is_finite() => "n/a".to_string(),
        x if x >= 1e6 => format!("{:.3}M", x / 1e6),
        x if x >= 1e5 => format!("{:.0}k", x / 1e3),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

fn bytes(x: f64) -> String {
    if x >= 1024.0 { format!("{:.1} KiB", x / 1024.0) } else { format!("{x:.0} B") }
}

fn ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 && v.is_finite() => format!("{:.2}×", v / b),
        _ => "n/a".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The peers (`--serve KIND PORT`), each on a current-thread runtime
// ---------------------------------------------------------------------------------------------

fn serve(args: &[String]) -> Result<(), String> {
    let [kind, port] = args else { return Err("usage: --serve tt|tt8k|fws|tt-broadcast PORT".into()) };
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let listener =
            TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
        match kind.as_str() {
            "tt" => serve_tt(listener, WebSocketConfig::default()).await,
            "tt8k" => serve_tt(listener, WebSocketConfig::default().read_buffer_size(8 << 10)).await,
            "fws" => serve_fws(listener).await,
            "tt-broadcast" => serve_tt_broadcast(listener).await,
            other => Err(format!("unknown peer {other:?}")),
        }
    })
}

/// Accepts the next connection, riding out transient errors (e.g. out of file descriptors).
async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// tokio-tungstenite's example echo server.
async fn serve_tt(listener: TcpListener, config: WebSocketConfig) -> Result<(), String> {
    loop {
        let stream = accept(&listener).await;
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else { return };
            let (write, read) = ws.split();
            let _ = read.try_filter(|m| std::future::ready(m.is_text() || m.is_binary())).forward(write).await;
        });
    }
}

/// fastwebsockets behind hyper's HTTP/1 upgrade, as its examples do it.
async fn serve_fws(listener: TcpListener) -> Result<(), String> {
    use fastwebsockets::{FragmentCollector, OpCode, WebSocketError};
    use hyper::body::Incoming;

    async fn echo(upgrade: fastwebsockets::upgrade::UpgradeFut) -> Result<(), WebSocketError> {
        let mut ws = upgrade.await?;
        ws.set_auto_close(true);
        ws.set_auto_pong(true);
        let mut ws = FragmentCollector::new(ws);
        loop {
            let frame = ws.read_frame().await?;
            match frame.opcode {
                OpCode::Close => return Ok(()),
                OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
                _ => {}
            }
        }
    }

    loop {
        let stream = accept(&listener).await;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|mut request: hyper::Request<Incoming>| async move {
                let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut request)?;
                tokio::spawn(async move {
                    let _ = echo(upgrade).await;
                });
                Ok::<_, WebSocketError>(response)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades().await;
        });
    }
}

/// Every text message from any client goes to every connected client, the sender included.
async fn serve_tt_broadcast(listener: TcpListener) -> Result<(), String> {
    type Clients = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<TtMessage>>>>;
    let clients = Clients::default();
    for id in 0u64.. {
        let stream = accept(&listener).await;
        let clients = clients.clone();
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
            let (mut write, mut read) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel();
            clients.lock().unwrap().insert(id, tx);
            let writer = tokio::spawn(async move {
                while let Some(msg) = rx.recv().await {
                    if write.send(msg).await.is_err() {
                        break;
                    }
                }
            });
            while let Some(Ok(msg)) = read.next().await {
                if msg.is_text() {
                    for tx in clients.lock().unwrap().values() {
                        let _ = tx.send(msg.clone());
                    }
                }
            }
            clients.lock().unwrap().remove(&id);
            writer.abort();
        });
    }
    Ok(())
}
