//! A hostile plugin, for testing how the host survives plugins that misbehave.
//!
//! It echoes every message (text as text, binary as binary) except these text messages:
//!
//! | message     | what the plugin does                                                     |
//! |-------------|--------------------------------------------------------------------------|
//! | `panic`     | panics (a trap)                                                          |
//! | `loop`      | loops forever (the host must interrupt it: fuel or epoch deadline)      |
//! | `alloc`     | allocates 1 MiB chunks and writes to them, without end (memory limit)   |
//! | `flood`     | answers with 100 000 `reply` actions                                     |
//! | `huge`      | answers with one 100 MiB binary `reply`                                  |
//! | `foreign`   | `send`s to connection 0xFFFF_FFFF_FFFF (which does not exist), then replies `sent` |
//! | `close-bad` | answers with a `close` action with code 1005 (not allowed on the wire)  |
//! | `spin MS`   | runs for MS milliseconds of wall time, then replies `spun MS`            |
//! | `keep X`    | adds X to its state (handed over by `snapshot`/`restore`), replies `kept N` |
//! | `kept`      | replies with its state: the kept strings joined by `,`                   |
//! | `forget`    | empties its state, replies `forgot`                                      |
//! | `tagged`    | replies with this build's version tag (`v0000`; tests patch it, see [`TAG`]) |
//!
//! `restore` refuses a state that holds the string `refuse-restore`.
//!
//! and a connection whose query has `trap-open` (`/hostile?trap-open=1`) makes `on-open` panic.
//!
//! (Wasmtime 48 refuses to lift the `huge` answer by default: the list is more than a store's
//! default "hostcall fuel" allows to be copied out of the guest, so the call fails like a trap.)

use std::cell::RefCell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use wsplug_sdk::{Action, Admission, Connection, ConnectionId, Message, Plugin, Target};

/// How many actions `flood` returns.
const FLOOD: usize = 100_000;
/// The size of the message `huge` returns.
const HUGE: usize = 100 << 20;
/// The chunk `alloc` allocates at a time.
const CHUNK: usize = 1 << 20;
/// A version tag that hot-reload tests patch in the compiled `.wasm` (same length) to make
/// distinguishable versions of one build.
static TAG: &str = "wsplug-tag:v0000";
/// A connection id no connection has.
const FOREIGN: ConnectionId = 0xFFFF_FFFF_FFFF;

thread_local! {
    /// What `keep` kept: the plugin's state, snapshotted by the host.
    static KEPT: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// The plugin.
struct Hostile;

impl Plugin for Hostile {
    fn on_open(conn: Connection) -> Admission {
        if conn.query_param("trap-open").is_some() {
            panic!("hostile: trap-open");
        }
        Admission::accept()
    }

    fn on_message(_conn: ConnectionId, msg: Message) -> Vec<Action> {
        match msg.as_text() {
            Some("panic") => panic!("hostile: panic"),
            Some("loop") => spin(),
            Some("alloc") => hog(),
            Some("flood") => (0..FLOOD).map(|_| Action::reply_text("flood")).collect(),
            Some("huge") => vec![Action::reply_binary(vec![0x55; HUGE])],
            Some("foreign") => {
                vec![Action::send_text(Target::Connection(FOREIGN), "hello, nobody"), Action::reply_text("sent")]
            }
            Some("close-bad") => vec![Action::close(1005, "no status")],
            Some("kept") => vec![Action::reply_text(KEPT.with_borrow(|k| k.join(",")))],
            Some("forget") => {
                KEPT.with_borrow_mut(Vec::clear);
                vec![Action::reply_text("forgot")]
            }
            Some("tagged") => vec![Action::reply_text(&black_box(TAG)[11..])],
            Some(text) if text.starts_with("spin ") => {
                let ms: u64 = text[5..].parse().unwrap_or(0);
                let until = Instant::now() + Duration::from_millis(ms);
                let mut n = 0u64;
                while Instant::now() < until {
                    n = black_box(n.wrapping_add(1));
                }
                vec![Action::reply_text(format!("spun {ms}"))]
            }
            Some(text) if text.starts_with("keep ") => {
                let count = KEPT.with_borrow_mut(|k| {
                    k.push(text[5..].to_owned());
                    k.len()
                });
                vec![Action::reply_text(format!("kept {count}"))]
            }
            _ => vec![Action::Reply(msg)],
        }
    }

    fn snapshot() -> Vec<u8> {
        KEPT.with_borrow(|k| k.join("\n").into_bytes())
    }

    fn restore(snapshot: Vec<u8>) -> Result<(), String> {
        let text = String::from_utf8(snapshot).map_err(|e| e.to_string())?;
        if text.split('\n').any(|kept| kept == "refuse-restore") {
            return Err("this state asks to be refused".into());
        }
        KEPT.set(if text.is_empty() { Vec::new() } else { text.split('\n').map(str::to_owned).collect() });
        Ok(())
    }
}

/// Runs forever; `black_box` keeps the optimiser from proving the loop useless.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Allocates and dirties memory until allocation fails (which aborts: a trap).
fn hog() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for byte in chunk.iter_mut().step_by(4096) {
            *byte = 1;
        }
        chunks.push(black_box(chunk));
    }
}

wsplug_sdk::export_plugin!(Hostile);
