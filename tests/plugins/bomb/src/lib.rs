//! A test plugin that tries to make the host hold unbounded memory through the platform of
//! contract 0.2.0: every text command loops on one host call that the host must bound.
//!
//! - `kv`: sets 64 KiB values under new keys until the store refuses (the call's pending writes
//!   are bounded by the store's quota);
//! - `attach`: attaches 16 KiB to its own connection 20,000 times (one value is kept);
//! - `cancel`: cancels 100,000 timers that do not exist (nothing is kept);
//! - `timers`: sets timers under new names until the instance's limit refuses.

use wsplug_sdk::{Action, ConnectionId, Message, Plugin, attachments, kv, timers};

struct Bomb;

impl Plugin for Bomb {
    fn on_message(conn: ConnectionId, msg: Message) -> Vec<Action> {
        let answer = match msg.as_text() {
            Some("kv") => {
                let value = vec![0x55; 64 << 10];
                let mut n = 0;
                loop {
                    if let Err(e) = kv::set(&format!("key-{n}"), &value) {
                        break format!("kv refused after {n}: {e}");
                    }
                    n += 1;
                }
            }
            Some("attach") => {
                let value = vec![0xAA; 16 << 10];
                for _ in 0..20_000 {
                    attachments::set(conn, &value).expect("attach");
                }
                "attached".into()
            }
            Some("cancel") => {
                for i in 0..100_000 {
                    timers::cancel(&format!("never-{i:0>120}"));
                }
                "cancelled".into()
            }
            Some("timers") => {
                let mut n = 0;
                loop {
                    if let Err(e) = timers::set(&format!("t{n}"), 60_000, None) {
                        break format!("timers refused after {n}: {e}");
                    }
                    n += 1;
                }
            }
            _ => "say: kv, attach, cancel, timers".into(),
        };
        vec![Action::reply_text(answer)]
    }
}

wsplug_sdk::export_plugin!(Bomb);
