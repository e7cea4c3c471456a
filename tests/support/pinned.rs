//! For the benchmarks: a server process pinned to one CPU, and what `/proc` says about its CPU
//! time and memory. The benchmarks count work per second of *server* CPU, so a server that hands
//! work to another thread pays for it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `taskset`, which pins the servers.
pub const TASKSET: &str = "/usr/bin/taskset";
/// `sysconf(_SC_CLK_TCK)`: the unit of utime/stime in `/proc/PID/stat`; 100 on every Linux.
pub const CLK_TCK: f64 = 100.0;

/// A free loopback port (bound and let go: the server binds it a moment later).
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// A server process pinned to a CPU, killed when dropped.
pub struct Pinned {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Pinned {
    /// Runs `program args` pinned to `cpu`, its stderr in `log`, and waits until it accepts TCP
    /// connections on `addr` (30 s at most).
    pub async fn start(
        name: &str,
        cpu: &str,
        addr: SocketAddr,
        log: PathBuf,
        command: impl FnOnce(&mut Command),
    ) -> Result<Self, String> {
        let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut c = Command::new(TASKSET);
        c.args(["-c", cpu]);
        command(&mut c);
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        let mut process = Self { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(process.explain(format!("{name} exited with {status} before listening")));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(process);
            }
            if Instant::now() > deadline {
                return Err(process.explain(format!("{name} not listening on {addr} after 30 s")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_secs(&self) -> Result<f64, String> {
        cpu_secs(self.pid())
    }

    pub fn rss_bytes(&self) -> Result<u64, String> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| format!("{path}: no VmRSS"))
    }

    /// An error with the tail of the server's log, when it has one.
    pub fn explain(&self, error: String) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        if tail.is_empty() {
            error
        } else {
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{error} (server log: {})", tail.join(" / "))
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of a process (all its threads, live and gone), in seconds.
pub fn cpu_secs(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    // Field 3 (state) comes first after it; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 1)..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) as f64 / CLK_TCK),
        _ => Err(format!("{path}: unexpected format")),
    }
}
