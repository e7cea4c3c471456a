//! Hot-reload cost: the time from a plugin file's rename to the first reply from the new version
//! (median and max over 20 swaps), without and with the compiled-artifact cache, and the p99
//! round-trip latency of a client during the swap burst against steady state, same run.
//!
//!     cargo bench -p wsplug-tests --bench reload

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wsplug_tests::{Client, TempDir, TestServer, probe_version, write_atomically};

const SWAPS: usize = 20;

/// One round trip: sends `tagged i`, returns the tag of the reply and the latency.
async fn round_trip(ws: &mut Client, i: usize) -> (String, Duration) {
    let t0 = Instant::now();
    ws.send(Message::text(format!("tagged {i}"))).await.unwrap();
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) if t.starts_with('v') => {
                let tag = t.split(' ').next().unwrap().to_owned();
                return (tag, t0.elapsed());
            }
            _ => continue, // "resumed" notices from re-attachment
        }
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn run(cache: bool) {
    let dir = TempDir::new(if cache { "bench-cache" } else { "bench-nocache" });
    let plugin = dir.join("probe.wasm");
    let (a, b) = (probe_version(1), probe_version(2));
    std::fs::write(&plugin, &a).unwrap();
    let cache_dir = dir.join("cache");
    let config = dir.join("wsplug.toml");
    std::fs::write(
        &config,
        format!(
            "compile_cache = {cache}\ncache_dir = \"{}\"\n[[routes]]\npath = \"/p\"\nplugin = \"probe.wasm\"\n",
            cache_dir.display()
        ),
    )
    .unwrap();
    if cache {
        // Both versions have been seen before (compiled once, e.g. by an earlier run).
        let engine = wsplug::plugin::PluginEngine::global();
        let b_path = dir.join("b.wasm");
        std::fs::write(&b_path, &b).unwrap();
        engine.load(&plugin, Some(&cache_dir)).unwrap();
        engine.load(&b_path, Some(&cache_dir)).unwrap();
    }
    let server = TestServer::from_file(&config, true).await;
    let mut ws = server.connect("/p").await;

    let mut i = 0;
    let mut steady = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        steady.push(round_trip(&mut ws, i).await.1);
        i += 1;
    }

    let mut swap_times = Vec::new();
    let mut during = Vec::new();
    for k in 0..SWAPS {
        let (bytes, want) = if k % 2 == 0 { (&b, "v0002") } else { (&a, "v0001") };
        let t0 = Instant::now();
        write_atomically(&plugin, bytes);
        loop {
            let (tag, latency) = round_trip(&mut ws, i).await;
            i += 1;
            during.push(latency);
            if tag == want {
                swap_times.push(t0.elapsed());
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "swap {k} never happened");
        }
    }
    let label = if cache { "with compile cache" } else { "without cache" };
    let median = percentile(&mut swap_times.clone(), 0.5);
    let max = *swap_times.iter().max().unwrap();
    println!(
        "{label:<20} rename -> first reply from the new version: median {:.1} ms, max {:.1} ms ({SWAPS} swaps; a rename needs no debounce)",
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
    );
    let (s99, d99) = (percentile(&mut steady, 0.99), percentile(&mut during, 0.99));
    println!(
        "{label:<20} round-trip p99: steady {:.0} µs ({} samples), during the swap burst {:.0} µs ({} samples): {:.1}x",
        s99.as_secs_f64() * 1e6,
        steady.len(),
        d99.as_secs_f64() * 1e6,
        during.len(),
        d99.as_secs_f64() / s99.as_secs_f64()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        run(false).await;
        run(true).await;
    });
}
