//! The topics engine across nodes: delivery capacity and latency of 1, 2 and 3 wsplug nodes on a
//! NATS broker, against one node with the in-memory engine, in one run.
//!
//!     cargo build --release                              # target/release/wsplug + plugins
//!     cargo bench -p wsplug-tests --bench cluster        # needs nats-server (Debian's package)
//!
//! **What it does.** Each setup starts its nodes (the release `wsplug`, route `/plain`: topics
//! without history, and `/ps`: history of 100 per topic; the `pubsub` test plugin) and, for the
//! NATS setups, a `nats-server -js` of its own. `WSPLUG_BENCH_SUBS` subscribers per node (default
//! 100) subscribe to one topic; one publisher on the first node publishes `WSPLUG_BENCH_RATE`
//! messages a second (default 500) for `WSPLUG_BENCH_SECS` seconds (default 4), each carrying its
//! send time. Every subscriber counts what it gets and the delay from send to receipt.
//!
//! **What it reports**, per setup and route: deliveries per second (wall), p50 and p99 delivery
//! latency, the CPU seconds of the nodes (summed) and of the broker, deliveries per node
//! CPU-second, and the *capacity*: nodes × deliveries per node CPU-second, what the setup delivers
//! when each node has a core of its own. The machine this runs on may have fewer cores than
//! processes (the CI machines have 2): wall figures then share them, CPU figures do not.
//!
//! Every subscriber must get every message exactly once, in order: the run fails otherwise.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use wsplug_tests::pinned::{Pinned, cpu_secs, free_port};
use wsplug_tests::{TempDir, plugin_path};

const STEP: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env_number(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

struct Params {
    subs: usize,
    rate: u64,
    secs: u64,
}

struct Row {
    setup: String,
    route: &'static str,
    nodes: usize,
    deliveries: u64,
    wall: f64,
    p50: f64,
    p99: f64,
    node_cpu: f64,
    broker_cpu: Option<f64>,
}

async fn run() -> Result<(), String> {
    let params = Params {
        subs: env_number("WSPLUG_BENCH_SUBS", 100)? as usize,
        rate: env_number("WSPLUG_BENCH_RATE", 500)?,
        secs: env_number("WSPLUG_BENCH_SECS", 4)?,
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let wsplug = exe.parent().and_then(Path::parent).map(|r| r.join("wsplug")).unwrap_or_default();
    if !wsplug.is_file() {
        return Err(format!("{} not found: run `cargo build --release` first", wsplug.display()));
    }
    let plugin = plugin_path("pubsub").canonicalize().map_err(|e| format!("pubsub.wasm: {e}: build first"))?;
    if Command::new("nats-server").arg("--version").stdout(Stdio::null()).status().is_err() {
        return Err("nats-server not found (Debian's package `nats-server`)".into());
    }
    wsplug_tests::raise_file_limit(4096);
    println!(
        "{} subscribers per node, {} messages/s for {} s, one publisher on the first node\n",
        params.subs, params.rate, params.secs
    );
    let mut rows = Vec::new();
    for (setup, nodes, nats) in [("memory", 1, false), ("nats", 1, true), ("nats", 2, true), ("nats", 3, true)] {
        for route in ["/plain", "/ps"] {
            let row = measure(&wsplug, &plugin, setup, nodes, nats, route, &params).await?;
            println!(
                "{setup}-{nodes} {route}: {:.0} deliveries/s, p99 {:.2} ms, node CPU {:.2} s, broker CPU {}",
                row.deliveries as f64 / row.wall,
                row.p99,
                row.node_cpu,
                row.broker_cpu.map_or("-".into(), |c| format!("{c:.2} s"))
            );
            rows.push(row);
        }
    }
    println!(
        "\n| setup | route | deliveries/s | p50 ms | p99 ms | node CPU-s | broker CPU-s | deliveries per node CPU-s | capacity (× memory-1) |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &rows {
        let per_cpu = row.deliveries as f64 / row.node_cpu.max(0.01);
        let capacity = per_cpu * row.nodes as f64;
        let base = rows.iter().find(|r| r.setup == "memory" && r.route == row.route).unwrap();
        let base_capacity = base.deliveries as f64 / base.node_cpu.max(0.01);
        println!(
            "| {}-{} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.0} | {:.0} ({:.2}×) |",
            row.setup,
            row.nodes,
            row.route,
            row.deliveries as f64 / row.wall,
            row.p50,
            row.p99,
            row.node_cpu,
            row.broker_cpu.map_or("-".into(), |c| format!("{c:.2}")),
            per_cpu,
            capacity,
            capacity / base_capacity
        );
    }
    Ok(())
}

struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    wsplug: &Path,
    plugin: &Path,
    setup: &str,
    count: usize,
    nats: bool,
    route: &'static str,
    params: &Params,
) -> Result<Row, String> {
    let dir = TempDir::new("cluster-bench");
    let broker_port = free_port()?;
    let broker = if nats {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &broker_port.to_string(), "-sd"])
            .arg(dir.join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("nats-server: {e}"))?;
        let deadline = Instant::now() + STEP;
        while std::net::TcpStream::connect(("127.0.0.1", broker_port)).is_err() {
            if Instant::now() > deadline {
                return Err("nats-server did not listen".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(Broker(child))
    } else {
        None
    };
    let mut nodes = Vec::new();
    for i in 0..count {
        let port = free_port()?;
        let cluster = if nats {
            format!("[cluster]\nnats = \"nats://127.0.0.1:{broker_port}\"\nnode = \"n{i}\"\n")
        } else {
            String::new()
        };
        let config = dir.join(&format!("node{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\n{cluster}[limits]\nmax_connections = 20000\noutbound_queue_frames = 4096\n\
                 [[routes]]\npath = \"/plain\"\nplugin = {p:?}\n[routes.connection]\nmessages_per_second = 100000\n\
                 [[routes]]\npath = \"/ps\"\nplugin = {p:?}\n[routes.topics]\nhistory = 100\n\
                 [routes.connection]\nmessages_per_second = 100000\n",
                p = plugin.display().to_string()
            ),
        )
        .map_err(|e| e.to_string())?;
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = dir.join(&format!("node{i}.log"));
        nodes.push(
            Pinned::start(&format!("node {i}"), "0-63", addr, log, |c| {
                c.arg(wsplug).arg("--config").arg(&config).arg("--no-watch");
            })
            .await?,
        );
    }
    // Subscribers: each counts, checks the order, and keeps its latencies.
    let base = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let delivered = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));
    let total = (params.rate * params.secs) as usize;
    let mut tasks = tokio::task::JoinSet::new();
    for node in &nodes {
        for _ in 0..params.subs {
            let url = format!("ws://{}{route}?sub=bench", node.addr);
            let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
                .await
                .map_err(|_| "connect timed out")?
                .map_err(|e| format!("connect: {e}"))?;
            let (latencies, delivered, ready) = (latencies.clone(), delivered.clone(), ready.clone());
            tasks.spawn(async move {
                let mut mine = Vec::with_capacity(total);
                let mut next = 0usize;
                let mut seen_ready = false;
                while next < total {
                    let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(STEP, ws.next()).await else {
                        return Err(format!("a subscriber stopped after {next} of {total} messages"));
                    };
                    let body = match serde_json::from_str::<serde_json::Value>(&t) {
                        Ok(v) if v.get("offset").is_some() => v["text"].as_str().unwrap_or_default().to_owned(),
                        _ => t.to_string(),
                    };
                    if body.starts_with("ready") {
                        if !seen_ready {
                            seen_ready = true;
                            ready.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    let mut parts = body.split(' ');
                    let (seq, sent): (usize, u64) = match (parts.next(), parts.next()) {
                        (Some(s), Some(t)) => (s.parse().unwrap_or(usize::MAX), t.parse().unwrap_or(0)),
                        _ => return Err(format!("unexpected message {body:?}")),
                    };
                    if seq != next {
                        return Err(format!("got message {seq}, expected {next}"));
                    }
                    next += 1;
                    let now = base.elapsed().as_micros() as u64;
                    mine.push(now.saturating_sub(sent) as f64 / 1000.0);
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                latencies.lock().await.extend(mine);
                Ok(())
            });
        }
    }
    let subscribers = (params.subs * nodes.len()) as u64;
    let mut publisher = {
        let url = format!("ws://{}{route}", nodes[0].addr);
        tokio_tungstenite::connect_async(url).await.map_err(|e| e.to_string())?.0
    };
    // Every node follows the topic on the broker before the measured messages go.
    let deadline = Instant::now() + STEP;
    while ready.load(Ordering::Relaxed) < subscribers {
        if Instant::now() > deadline {
            return Err(format!("only {} of {subscribers} subscribers ready", ready.load(Ordering::Relaxed)));
        }
        publisher.send(Message::text("pub bench ready")).await.map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = |nodes: &[Pinned]| nodes.iter().map(|n| n.cpu_secs().unwrap_or(0.0)).sum::<f64>();
    let broker_cpu = |b: &Option<Broker>| b.as_ref().and_then(|b| cpu_secs(b.0.id()).ok());
    let (cpu0, broker0) = (cpu(&nodes), broker_cpu(&broker));
    let started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / params.rate as f64);
    for i in 0..total {
        let due = started + every * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let sent = base.elapsed().as_micros();
        publisher.send(Message::text(format!("pub bench {i} {sent}"))).await.map_err(|e| e.to_string())?;
    }
    while let Some(result) = tasks.join_next().await {
        result.map_err(|e| e.to_string())??;
    }
    let wall = started.elapsed().as_secs_f64();
    let (node_cpu, broker_cpu) = (cpu(&nodes) - cpu0, broker_cpu(&broker).zip(broker0).map(|(a, b)| a - b));
    let mut all = std::mem::take(&mut *latencies.lock().await);
    all.sort_by(f64::total_cmp);
    let pick = |q: f64| all.get(((all.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0.0);
    let deliveries = delivered.load(Ordering::Relaxed);
    if deliveries != subscribers * total as u64 {
        return Err(format!("{deliveries} deliveries, expected {}", subscribers * total as u64));
    }
    drop(nodes);
    drop(broker);
    Ok(Row {
        setup: setup.into(),
        route,
        nodes: count,
        deliveries,
        wall,
        p50: pick(0.5),
        p99: pick(0.99),
        node_cpu,
        broker_cpu,
    })
}
