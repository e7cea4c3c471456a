//! Plugin routes end to end: real compiled components (built by host/build.rs into
//! target/plugins/) behind the real server, driven over loopback. Covers every action kind,
//! admission (reject, subprotocols), on-close exactly once, per-connection ordering under
//! concurrent load, topics, the example plugins, and hostile plugins that panic, loop, hog memory,
//! flood, or break the contract — each of which must hurt only its own connection.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use wsplug_tests::{
    Client, TestServer, assert_echo, check_chat_large_rooms, http_exchange, next_message, status_of, upgrade_request,
};

const CONFIG: &str = r#"
static_dir = "examples/static"

[[routes]]
path = "/probe"
plugin = "target/plugins/probe.wasm"
subprotocols = ["probe.v1"]

[[routes]]
path = "/probe2"
plugin = "target/plugins/probe.wasm"
instances = 2

[[routes]]
path = "/hostile"
plugin = "target/plugins/hostile.wasm"
[routes.sandbox]
memory = "32MiB"
cpu_deadline = "300ms"

[[routes]]
path = "/chat"
plugin = "target/plugins/chat.wasm"

[[routes]]
path = "/guard"
plugin = "target/plugins/guard.wasm"

[[routes]]
path = "/native"
kind = "echo"
"#;

async fn server() -> TestServer {
    TestServer::start(CONFIG).await
}

async fn say(ws: &mut Client, text: &str) {
    tokio::time::timeout(Duration::from_secs(10), ws.send(Message::text(text))).await.expect("send timed out").unwrap();
}

async fn text(ws: &mut Client) -> String {
    match next_message(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn id_of(ws: &mut Client) -> u64 {
    say(ws, "id").await;
    loop {
        // Skip the probe's on-close notices about other connections.
        let line = text(ws).await;
        if !line.starts_with("closed ") {
            return line.parse().unwrap();
        }
    }
}

/// `id_of` for a raw client.
async fn raw_id_of(raw: &mut wsplug_tests::RawClient) -> u64 {
    raw.send_frame(true, 0x1, b"id").await;
    loop {
        match raw.next().await {
            wsplug_tests::Seen::Event(wsplug::protocol::Event::Message(m)) => {
                let line = std::str::from_utf8(m.payload()).unwrap();
                if !line.starts_with("closed ") {
                    return line.parse().unwrap();
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Asserts that nothing arrived before a marker the client asks to have echoed.
async fn assert_nothing_pending(ws: &mut Client) {
    say(ws, "reply marker").await;
    assert_eq!(text(ws).await, "marker");
}

async fn expect_close(ws: &mut Client) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("no close within 10 s") {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed without a close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

#[tokio::test]
async fn every_action_kind_reaches_its_targets() {
    let server = server().await;
    let (mut a, mut b, mut c) =
        (server.connect("/probe").await, server.connect("/probe").await, server.connect("/probe").await);
    let b_id = id_of(&mut b).await;
    let _ = id_of(&mut a).await;
    let _ = id_of(&mut c).await;

    say(&mut a, "reply r1").await;
    assert_eq!(text(&mut a).await, "r1");
    say(&mut a, "sender s1").await;
    assert_eq!(text(&mut a).await, "s1");

    for kind in ["broadcast", "everyone"] {
        say(&mut a, &format!("{kind} all")).await;
        for ws in [&mut a, &mut b, &mut c] {
            assert_eq!(text(ws).await, "all", "{kind}");
        }
    }

    say(&mut a, "others not-me").await;
    assert_eq!(text(&mut b).await, "not-me");
    assert_eq!(text(&mut c).await, "not-me");
    assert_nothing_pending(&mut a).await;

    say(&mut a, &format!("to {b_id} just-b")).await;
    assert_eq!(text(&mut b).await, "just-b");
    assert_nothing_pending(&mut a).await;
    assert_nothing_pending(&mut c).await;

    // Topics: only subscribers receive; unsubscribing stops delivery.
    say(&mut b, "sub news").await;
    assert_eq!(text(&mut b).await, "ok");
    say(&mut c, "sub news").await;
    assert_eq!(text(&mut c).await, "ok");
    say(&mut a, "pub news extra").await;
    assert_eq!(text(&mut b).await, "extra");
    assert_eq!(text(&mut c).await, "extra");
    assert_nothing_pending(&mut a).await;
    say(&mut c, "unsub news").await;
    assert_eq!(text(&mut c).await, "ok");
    say(&mut a, "pub news late").await;
    assert_eq!(text(&mut b).await, "late");
    assert_nothing_pending(&mut c).await;

    // Binary goes through as binary.
    assert_echo(&mut a, Message::binary(vec![0u8, 1, 2, 255])).await;

    // Close with the plugin's code and reason.
    say(&mut a, "close 4001 bye now").await;
    assert_eq!(expect_close(&mut a).await, (4001, "bye now".into()));
}

/// The actions of one call keep their order on the wire even when one of them is refused: the
/// replies before a contract violation are written before its 1011.
#[tokio::test]
async fn replies_before_a_refused_action_are_written_before_its_close() {
    let server = server().await;
    let mut a = server.connect("/probe").await;
    say(&mut a, "reply-then-close 1005").await;
    assert_eq!(text(&mut a).await, "before");
    assert_eq!(expect_close(&mut a).await.0, 1011);
}

#[tokio::test]
async fn first_actions_follow_the_handshake() {
    let server = server().await;
    let mut a = server.connect("/probe?greet=1").await;
    // The welcome was queued by on-open: it is the first message, ahead of anything asked for.
    let welcome = text(&mut a).await;
    let id = id_of(&mut a).await;
    assert_eq!(welcome, format!("welcome {id}"));
}

#[tokio::test]
async fn reject_answers_with_the_plugins_status() {
    let server = server().await;
    match server.try_connect("/probe?reject=401").await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401);
            assert_eq!(resp.body().as_deref(), Some(&b"rejected by probe"[..]));
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // A status outside 400-599 is a contract violation: 500.
    assert_eq!(status_of(&http_exchange(server.addr, upgrade_request("/probe?reject=200").as_bytes()).await), 500);
}

async fn connect_offering(
    server: &TestServer,
    path: &str,
    protocols: &str,
) -> Result<(Client, Option<String>), tungstenite::Error> {
    let mut request = server.url(path).into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    let (ws, resp) =
        tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(request)).await.unwrap()?;
    let chosen = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_owned());
    Ok((ws, chosen))
}

#[tokio::test]
async fn subprotocol_is_the_plugins_choice_or_the_routes() {
    let server = server().await;
    let (_, chosen) = connect_offering(&server, "/probe?proto=b", "a, b").await.unwrap();
    assert_eq!(chosen.as_deref(), Some("b"));
    // The plugin picks none: the route's configured preference applies.
    let (_, chosen) = connect_offering(&server, "/probe", "x, probe.v1").await.unwrap();
    assert_eq!(chosen.as_deref(), Some("probe.v1"));
    // A subprotocol the client did not offer is refused (the client would fail anyway); the plugin
    // had admitted the connection, so it still gets the connection's on-close, once (probe tells
    // everyone on the route).
    let mut observer = server.connect("/probe").await;
    let req = upgrade_request("/probe?proto=zzz").replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: a\r\n\r\n");
    assert_eq!(status_of(&http_exchange(server.addr, req.as_bytes()).await), 500);
    let line = text(&mut observer).await;
    assert!(line.starts_with("closed ") && line.ends_with(" 1006"), "{line}");
    assert_nothing_pending(&mut observer).await;
    // The chat example speaks chat.v1, so browsers that offer it can connect.
    let (_, chosen) = connect_offering(&server, "/chat?nick=ada", "chat.v1").await.unwrap();
    assert_eq!(chosen.as_deref(), Some("chat.v1"));
}

#[tokio::test]
async fn on_close_is_called_exactly_once_per_connection() {
    let server = server().await;
    let mut observer = server.connect("/probe").await;
    let _ = id_of(&mut observer).await;

    // Clean close (1000), plugin close (4002), protocol error (1002), abrupt TCP drop (1006).
    let mut clean = server.connect("/probe").await;
    let clean_id = id_of(&mut clean).await;
    clean.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await.unwrap();
    let mut closer = server.connect("/probe").await;
    let closer_id = id_of(&mut closer).await;
    say(&mut closer, "close 4002 done").await;
    let mut bad = server.raw("/probe").await;
    let bad_id = raw_id_of(&mut bad).await;
    bad.send_raw(&[0x81, 0x01, b'x']).await; // unmasked
    let mut dropped = server.raw("/probe").await;
    let dropped_id = raw_id_of(&mut dropped).await;
    drop(dropped);

    let expected: HashMap<u64, u16> = [(clean_id, 1000), (closer_id, 4002), (bad_id, 1002), (dropped_id, 1006)].into();
    let mut seen: HashMap<u64, u16> = HashMap::new();
    while seen.len() < expected.len() {
        let line = text(&mut observer).await;
        let mut parts = line.split(' ');
        assert_eq!(parts.next(), Some("closed"), "{line}");
        let id: u64 = parts.next().unwrap().parse().unwrap();
        let code: u16 = parts.next().unwrap().parse().unwrap();
        assert!(seen.insert(id, code).is_none(), "on-close twice for {id}");
    }
    assert_eq!(seen, expected);
    // And no second on-close for anyone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_nothing_pending(&mut observer).await;
}

#[tokio::test]
async fn each_connections_messages_stay_in_order_under_concurrent_load() {
    let server = server().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let ws = server.connect("/probe2").await;
        tasks.push(tokio::spawn(async move {
            const N: usize = 400;
            let (mut tx, mut rx) = ws.split();
            let sender = tokio::spawn(async move {
                for i in 0..N {
                    tx.send(Message::text(format!("reply {i}"))).await.unwrap();
                }
                tx
            });
            let mut i = 0;
            while i < N {
                let msg = tokio::time::timeout(Duration::from_secs(20), rx.next()).await.unwrap().unwrap().unwrap();
                // Skip the probe's on-close notices of connections that finished first.
                if msg.to_text().is_ok_and(|t| t.starts_with("closed ")) {
                    continue;
                }
                assert_eq!(msg, Message::text(i.to_string()));
                i += 1;
            }
            drop(sender.await.unwrap());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn chat_broadcasts_to_the_room() {
    let server = server().await;
    let mut ada = server.connect("/chat?nick=ada&room=lobby").await;
    assert!(text(&mut ada).await.contains(r#""type":"welcome""#));
    let mut bob = server.connect("/chat?nick=bob&room=lobby").await;
    assert!(text(&mut bob).await.contains(r#""type":"welcome""#));
    assert!(text(&mut ada).await.contains(r#""type":"join""#));
    let mut eve = server.connect("/chat?nick=eve&room=elsewhere").await;
    assert!(text(&mut eve).await.contains(r#""type":"welcome""#));
    say(&mut ada, "hello <b>room</b>").await;
    for ws in [&mut ada, &mut bob] {
        let line = text(ws).await;
        assert!(line.contains(r#""type":"message""#) && line.contains(r#""nick":"ada""#), "{line}");
        assert!(line.contains("hello <b>room</b>"), "{line}");
    }
    // Another room hears nothing: its next message is its own.
    say(&mut eve, "only here").await;
    assert!(text(&mut eve).await.contains("only here"));
}

#[tokio::test]
async fn chat_counts_rather_than_names_the_members_of_a_large_room() {
    check_chat_large_rooms(&server().await, "rust").await;
}

#[tokio::test]
async fn guard_checks_tokens_and_rate_limits() {
    let server = server().await;
    assert_eq!(status_of(&http_exchange(server.addr, upgrade_request("/guard").as_bytes()).await), 401);
    assert_eq!(status_of(&http_exchange(server.addr, upgrade_request("/guard?token=nope").as_bytes()).await), 401);
    let mut ws = server.connect("/guard?token=let-me-in").await;
    assert_echo(&mut ws, Message::text("hi")).await;
    for i in 0..40 {
        if ws.send(Message::text(format!("spam {i}"))).await.is_err() {
            break;
        }
    }
    assert_eq!(expect_close(&mut ws).await.0, 1008);
}

#[tokio::test]
async fn static_files_are_served_without_traversal() {
    let server = server().await;
    let resp = http_exchange(server.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains("Content-Type: text/html; charset=utf-8\r\n"));
    assert!(resp.contains("<html") || resp.contains("<!doctype html") || resp.contains("<!DOCTYPE html"));
    for path in ["/../Cargo.toml", "/%2e%2e/Cargo.toml", "/..%2fCargo.toml", "/nope.html"] {
        let resp = http_exchange(server.addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
        assert_eq!(status_of(&resp), 404, "{path}");
    }
}

/// A hostile message closes its own connection with 1011; a neighbour on the same route keeps
/// working within a bounded time, and other routes never notice.
async fn survive(server: &TestServer, command: &str) {
    let mut neighbour = server.connect("/hostile").await;
    assert_echo(&mut neighbour, Message::text("before")).await;
    let mut other_route = server.connect("/native").await;
    let mut culprit = server.connect("/hostile").await;
    say(&mut culprit, command).await;
    let (code, _) = expect_close(&mut culprit).await;
    assert_eq!(code, 1011, "{command}");
    assert_echo(&mut neighbour, Message::text("after")).await;
    assert_echo(&mut other_route, Message::text("untouched")).await;
    let mut fresh = server.connect("/hostile").await;
    assert_echo(&mut fresh, Message::text("new connections too")).await;
}

#[tokio::test]
async fn hostile_panic() {
    survive(&server().await, "panic").await;
}

#[tokio::test]
async fn hostile_infinite_loop() {
    survive(&server().await, "loop").await;
}

#[tokio::test]
async fn hostile_memory_bomb() {
    survive(&server().await, "alloc").await;
}

#[tokio::test]
async fn hostile_100k_actions() {
    survive(&server().await, "flood").await;
}

#[tokio::test]
async fn hostile_100_mib_message() {
    survive(&server().await, "huge").await;
}

#[tokio::test]
async fn hostile_forbidden_close_code() {
    survive(&server().await, "close-bad").await;
}

/// A plugin call runs on its connection's own task, but yields at every epoch tick: while one
/// call runs to its CPU deadline, the server's other routes are served, and so are the pings of
/// the busy instance's other connections; their messages are handled right after it, in order.
#[tokio::test]
async fn a_call_running_to_its_deadline_holds_up_only_its_instance() {
    let server = TestServer::start(
        r#"
[[routes]]
path = "/slow"
plugin = "target/plugins/hostile.wasm"
[routes.sandbox]
cpu_deadline = "2s"

[[routes]]
path = "/native"
kind = "echo"
"#,
    )
    .await;
    let mut neighbour = server.connect("/slow").await;
    assert_echo(&mut neighbour, Message::text("before")).await;
    let mut other_route = server.connect("/native").await;
    let mut culprit = server.connect("/slow").await;
    say(&mut culprit, "loop").await;
    tokio::time::sleep(Duration::from_millis(100)).await; // the loop is running now
    neighbour.send(Message::Ping(b"still there".to_vec().into())).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), neighbour.next()).await.expect("pong timed out") {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"still there"),
        other => panic!("expected the pong, got {other:?}"),
    }
    assert_echo(&mut other_route, Message::text("served meanwhile")).await;
    say(&mut neighbour, "waits for the instance").await;
    // All of that happened while the loop still ran: its connection has not been closed yet.
    if let Ok(got) = tokio::time::timeout(Duration::from_millis(1), culprit.next()).await {
        panic!("the looping call ended before the others were served: {got:?}");
    }
    assert_eq!(expect_close(&mut culprit).await.0, 1011);
    assert_eq!(text(&mut neighbour).await, "waits for the instance");
}

/// Messages that arrive in one read reach a plugin that exports `packed-batch` in one call (the
/// Rust SDK's plugins do): their actions are carried out in order, as if called one by one, text
/// and binary replies alike; a refused action after a reply closes with 1011 after that reply;
/// a failure fails the rest of the batch with the connection (1011), and nothing after it is
/// handled.
#[tokio::test]
async fn pipelined_messages_are_handled_in_order_and_a_failure_ends_the_batch() {
    use wsplug::protocol::frame::encode_client_frame;
    let server = server().await;
    let mut raw = server.raw("/probe").await;
    let mut frames: Vec<u8> = ["reply a", "reply b", "broadcast c", "reply d"]
        .iter()
        .flat_map(|t| encode_client_frame(true, 0x1, t.as_bytes(), [1, 2, 3, 4]))
        .collect();
    frames.extend(encode_client_frame(true, 0x2, &[0xff, 0, 0x80], [1, 2, 3, 4])); // echoed
    frames.extend(encode_client_frame(true, 0x1, b"sub t", [1, 2, 3, 4])); // subscribe, then "ok"
    frames.extend(encode_client_frame(true, 0x1, b"reply-then-close 1005", [1, 2, 3, 4]));
    frames.extend(encode_client_frame(true, 0x1, b"reply never", [1, 2, 3, 4]));
    raw.send_raw(&frames).await; // one write: one read on the server, one batch
    let mut seen = Vec::new();
    loop {
        match raw.next().await {
            wsplug_tests::Seen::Event(wsplug::protocol::Event::Message(m)) => seen.push(m.payload().to_vec()),
            wsplug_tests::Seen::Event(wsplug::protocol::Event::Close(frame)) => {
                // Close code 1005 may not be sent: a contract violation, after the reply before it.
                assert_eq!(frame.map(|f| f.code.0), Some(1011));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let want: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d", &[0xff, 0, 0x80], b"ok", b"before"];
    assert_eq!(seen, want);

    let mut raw = server.raw("/hostile").await;
    let frames: Vec<u8> = ["one", "panic", "after"]
        .iter()
        .flat_map(|t| wsplug::protocol::frame::encode_client_frame(true, 0x1, t.as_bytes(), [1, 2, 3, 4]))
        .collect();
    raw.send_raw(&frames).await;
    loop {
        match raw.next().await {
            // Handled one by one, "one" may come back first; nothing after the failure does.
            wsplug_tests::Seen::Event(wsplug::protocol::Event::Message(m)) => assert_eq!(m.payload().as_ref(), b"one"),
            wsplug_tests::Seen::Event(wsplug::protocol::Event::Close(frame)) => {
                assert_eq!(frame.map(|f| f.code.0), Some(1011));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn hostile_foreign_connection_id_is_dropped_and_the_sender_served() {
    let server = server().await;
    let mut ws = server.connect("/hostile").await;
    say(&mut ws, "foreign").await;
    assert_eq!(text(&mut ws).await, "sent");
    assert_echo(&mut ws, Message::text("fine")).await;
}

/// A failure's reason is the plugin's own words (its stderr: the panic message) with the trap: in
/// the log always, and in the client's close reason and 500 body on a `dev` route only.
#[tokio::test]
async fn a_dev_route_tells_the_client_why_the_plugin_failed() {
    let route = |path: &str, dev: bool| {
        format!("[[routes]]\npath = \"{path}\"\nplugin = \"target/plugins/hostile.wasm\"\ndev = {dev}\n")
    };
    let server = TestServer::start(&(route("/dev", true) + &route("/prod", false))).await;

    let mut ws = server.connect("/dev").await;
    say(&mut ws, "panic").await;
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 1011);
    assert!(reason.starts_with("plugin error: ") && reason.contains("hostile: panic"), "{reason}");
    assert!(reason.len() <= 123, "a close reason fits its frame");
    let mut ws = server.connect("/dev").await;
    say(&mut ws, "close-bad").await;
    let (_, reason) = expect_close(&mut ws).await;
    assert!(reason.contains("1005") && reason.contains("not allowed"), "{reason}");
    let refused = http_exchange(server.addr, upgrade_request("/dev?trap-open=1").as_bytes()).await;
    assert!(status_of(&refused) == 500 && refused.contains("hostile: trap-open"), "{refused}");

    let mut ws = server.connect("/prod").await;
    say(&mut ws, "panic").await;
    assert_eq!(expect_close(&mut ws).await, (1011, "plugin error".to_owned()));
    let refused = http_exchange(server.addr, upgrade_request("/prod?trap-open=1").as_bytes()).await;
    assert!(refused.ends_with("\r\n\r\nplugin error\n"), "{refused}");
}

#[tokio::test]
async fn hostile_trap_in_on_open_refuses_with_500_and_keeps_serving() {
    let server = server().await;
    let mut neighbour = server.connect("/hostile").await;
    assert_eq!(status_of(&http_exchange(server.addr, upgrade_request("/hostile?trap-open=1").as_bytes()).await), 500);
    assert_echo(&mut neighbour, Message::text("still here")).await;
}

#[tokio::test]
async fn a_trap_re_attaches_the_other_connections_before_their_next_message() {
    let server = server().await;
    let mut watcher = server.connect("/probe").await;
    let watcher_id = id_of(&mut watcher).await;
    say(&mut watcher, "sub news").await;
    assert_eq!(text(&mut watcher).await, "ok");
    let mut culprit = server.connect("/probe").await;
    let culprit_id = id_of(&mut culprit).await;
    say(&mut culprit, "panic").await;
    assert_eq!(expect_close(&mut culprit).await.0, 1011);
    drop(culprit);
    // The culprit's on-close still reaches the (rebuilt) plugin, once.
    assert_eq!(text(&mut watcher).await, format!("closed {culprit_id} 1011"));
    // Until the watcher speaks again it keeps its subscriptions: what is published reaches it.
    let mut publisher = server.connect("/probe").await;
    say(&mut publisher, "pub news before-its-turn").await;
    assert_eq!(text(&mut watcher).await, "before-its-turn");
    // Its next message: first re-attached to the new instance with on-open(resumed), then served.
    say(&mut watcher, "reply served by the new instance").await;
    assert_eq!(text(&mut watcher).await, format!("resumed {watcher_id}"));
    assert_eq!(text(&mut watcher).await, "served by the new instance");
    assert_echo(&mut watcher, Message::text("and only resumed once")).await;
    // Re-attached, its subscriptions are the new instance's to decide (probe does not resubscribe).
    say(&mut publisher, "pub news after-rebuild").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_nothing_pending(&mut watcher).await;
}

/// After a trap the instance's other connections are re-attached lazily: each one just before its
/// own next message (so a trap costs O(1) however many connections the instance has), once.
#[tokio::test]
async fn after_a_trap_each_connection_is_resumed_once_before_its_own_next_message() {
    let server = server().await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut conn = server.raw("/probe").await;
        let id = raw_id_of(&mut conn).await;
        idle.push((id, conn));
    }
    let mut culprit = server.connect("/probe").await;
    say(&mut culprit, "panic").await;
    assert_eq!(expect_close(&mut culprit).await.0, 1011);
    for round in 0..2 {
        for (id, conn) in &mut idle {
            conn.send_frame(true, 0x1, b"reply hi").await;
            let mut lines = Vec::new();
            while lines.last().map(String::as_str) != Some("hi") {
                match conn.next().await {
                    wsplug_tests::Seen::Event(wsplug::protocol::Event::Message(m)) => {
                        lines.push(String::from_utf8(m.payload().to_vec()).unwrap())
                    }
                    other => panic!("{other:?}"),
                }
            }
            let resumed: Vec<_> = lines.iter().filter(|l| !l.starts_with("closed ")).collect();
            let expected = format!("resumed {id}");
            match round {
                0 => assert_eq!(resumed, [&expected, "hi"], "{lines:?}"),
                _ => assert_eq!(resumed, ["hi"], "resumed twice: {lines:?}"),
            }
        }
    }
}

#[tokio::test]
async fn bad_plugin_files_stop_start_up_with_the_file_and_reason() {
    let cases = [("target/plugins/does-not-exist.wasm", "cannot read"), ("Cargo.toml", "not a WebAssembly file")];
    for (file, reason) in cases {
        let toml = format!("[[routes]]\npath = \"/x\"\nplugin = \"{file}\"\n");
        let base = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut config = wsplug::config::Config::parse(&toml, "test", base).unwrap();
        config.listen = "127.0.0.1:0".parse().unwrap();
        let err = match wsplug::Server::bind(&config).await {
            Ok(_) => panic!("{file} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(file) && err.contains(reason), "{err}");
    }
}

#[test]
fn compile_cache_serves_a_version_seen_before_and_survives_a_bad_entry() {
    let dir = wsplug_tests::TempDir::new("cache");
    let engine = wsplug::plugin::PluginEngine::global();
    // Bytes of this test's own, so that no other test's load shares its compiled code in memory
    // (a load of bytes already loaded and in use shares them, without the disk cache).
    let echo = dir.join("echo.wasm");
    let bytes = std::fs::read(wsplug_tests::plugin_path("echo")).unwrap();
    std::fs::write(&echo, wsplug_tests::with_custom_section(&bytes, b"compile cache test")).unwrap();
    let cache = dir.join("cache");
    let first = engine.load(&echo, Some(&cache)).unwrap();
    assert!(!first.from_cache, "first load compiles");
    assert!(engine.load(&echo, Some(&cache)).unwrap().from_cache, "a load while the first is in use shares it");
    drop(first);
    let second = engine.load(&echo, Some(&cache)).unwrap();
    assert!(second.from_cache, "second load comes from the cache");
    wsplug::plugin::instance::PluginInstance::new_blocking(&second, &Default::default()).expect("cached code runs");
    drop(second);
    // A damaged entry is not trusted: it is replaced by a fresh compile.
    for entry in std::fs::read_dir(&cache).unwrap() {
        std::fs::write(entry.unwrap().path(), b"not compiled code").unwrap();
    }
    let third = engine.load(&echo, Some(&cache)).unwrap();
    assert!(!third.from_cache, "a bad entry is recompiled");
    wsplug::plugin::instance::PluginInstance::new_blocking(&third, &Default::default()).expect("recompiled code runs");
}

/// A plugin built against another version of the contract is refused in words that say so, not
/// with the linker's "import not found".
#[test]
fn a_plugin_built_for_another_contract_version_is_refused_by_name() {
    let mut bytes = std::fs::read(wsplug_tests::plugin_path("probe")).unwrap();
    let from = b"wsplug:plugin/";
    // Every `wsplug:plugin/NAME@0.x.0` becomes `@0.9.0`: the same component, built for 0.9.0.
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(from.len()).position(|w| w == from) {
        let start = at + i;
        if let Some(j) = bytes[start..].iter().take(64).position(|&b| b == b'@')
            && (bytes[start + j..].starts_with(b"@0.1.0") || bytes[start + j..].starts_with(b"@0.2.0"))
        {
            bytes[start + j + 3] = b'9';
        }
        at = start + from.len();
    }
    let file = std::path::Path::new("probe-0.9.0.wasm");
    let error = wsplug::plugin::PluginEngine::global().load_bytes(file, "probe", &bytes, None).unwrap_err().to_string();
    assert!(
        error.contains("built for the plugin contract wsplug:plugin@0.9.0; this server speaks 0.1.0 and 0.2.0"),
        "{error}"
    );
}

/// A plugin that cannot be loaded at start-up is reported with the path as resolved (from the
/// config file's directory) and the config line that named it.
#[tokio::test]
async fn a_missing_plugin_is_reported_with_its_resolved_path_and_config_line() {
    let dir = wsplug_tests::TempDir::new("missing-plugin");
    let config = dir.join("wsplug.toml");
    std::fs::write(
        &config,
        "[[routes]]\npath = \"/e\"\nkind = \"echo\"\n\n[[routes]]\npath = \"/p\"\nplugin = \"plugins/nope.wasm\"\n",
    )
    .unwrap();
    // A relative config path, as a user types it.
    let relative =
        config.strip_prefix(std::env::current_dir().unwrap()).map(|p| p.to_path_buf()).unwrap_or(config.clone());
    let config = wsplug::config::Config::from_file(&relative).unwrap();
    let error = match wsplug::Server::bind(&config).await {
        Ok(_) => panic!("a missing plugin must stop start-up"),
        Err(e) => format!("{e:#}"),
    };
    let resolved = dir.join("plugins/nope.wasm");
    assert!(error.contains(&resolved.display().to_string()), "{error}");
    assert!(error.contains("plugin = \"plugins/nope.wasm\"") && error.contains("wsplug.toml line 5"), "{error}");
    assert!(error.contains("cannot read the file"), "{error}");
}
