//! Hot reload over real connections: plugin files replaced in every way files really change, while
//! clients keep sending; state handed over; config changes applied or refused as a whole.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wsplug_tests::{
    Client, TempDir, TestServer, assert_echo, next_message, plugin_path, plugin_version, probe_version,
    with_custom_section, write_atomically,
};

fn write_config(dir: &TempDir, body: &str) -> std::path::PathBuf {
    let path = dir.join("wsplug.toml");
    write_atomically(&path, body.as_bytes());
    path
}

/// The ways editors, compilers and deploy scripts replace a file.
fn replace(path: &Path, bytes: &[u8], style: usize) {
    use std::io::Write;
    match style % 4 {
        0 => write_atomically(path, bytes),        // write elsewhere, rename over
        1 => std::fs::write(path, bytes).unwrap(), // truncate, then write
        2 => {
            // truncate, then write in pieces
            let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
            for chunk in bytes.chunks(bytes.len() / 3 + 1) {
                f.write_all(chunk).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        _ => {
            // delete, then recreate
            std::fs::remove_file(path).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            std::fs::write(path, bytes).unwrap();
        }
    }
}

async fn say(ws: &mut Client, text: &str) {
    tokio::time::timeout(Duration::from_secs(10), ws.send(Message::text(text))).await.unwrap().unwrap();
}

async fn text(ws: &mut Client) -> String {
    match next_message(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Asks for the tag until it is `want` (the swap is asynchronous), skipping other messages.
async fn wait_for_tag(ws: &mut Client, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        say(ws, "tagged probe").await;
        loop {
            let line = text(ws).await;
            if let Some(tag) = line.strip_suffix(" probe") {
                if tag == want {
                    return;
                }
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "version {want} never came into service");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server watching a directory that holds `probe.wasm` (version 1) on route `/tag`, and a client
/// that has seen version 1 answer.
async fn probe_route(tag: &str) -> (TempDir, std::path::PathBuf, TestServer, Client) {
    let dir = TempDir::new(tag);
    let plugin = dir.join("probe.wasm");
    std::fs::write(&plugin, probe_version(1)).unwrap();
    let config = write_config(&dir, "[[routes]]\npath = \"/tag\"\nplugin = \"probe.wasm\"\n");
    let server = TestServer::from_file(&config, true).await;
    let mut ws = server.connect("/tag").await;
    wait_for_tag(&mut ws, "v0001").await;
    (dir, plugin, server, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_swaps_under_load_lose_and_reorder_nothing() {
    let dir = TempDir::new("swap");
    let plugin = dir.join("probe.wasm");
    std::fs::write(&plugin, probe_version(0)).unwrap();
    let config = write_config(&dir, "[[routes]]\npath = \"/tag\"\nplugin = \"probe.wasm\"\n");
    let server = TestServer::from_file(&config, true).await;

    // K clients send numbered messages continuously, 8 in flight each.
    const K: usize = 4;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..K {
        let ws = server.connect("/tag").await;
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<usize>(8);
            let sender = tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    sent_tx.send(i).await.unwrap();
                    tx.send(Message::text(format!("tagged {i}"))).await.unwrap();
                    i += 1;
                }
                drop(sent_tx);
                tx
            });
            let mut tags = Vec::new();
            let mut expected = 0;
            while let Some(i) = sent_rx.recv().await {
                assert_eq!(i, expected);
                let reply = loop {
                    let msg = tokio::time::timeout(Duration::from_secs(20), rx.next()).await.expect("reply in time");
                    match msg.expect("connection stays open").expect("no error") {
                        Message::Text(t) if t.starts_with('v') => break t.to_string(),
                        // Re-attached on a swap; another client finished first.
                        Message::Text(t) if t.starts_with("resumed ") || t.starts_with("closed ") => continue,
                        other => panic!("unexpected {other:?}"),
                    }
                };
                let (tag, n) = reply.split_once(' ').unwrap();
                assert_eq!(n, i.to_string(), "replies in order, exactly one per message");
                if tags.last().map(String::as_str) != Some(tag) {
                    tags.push(tag.to_owned());
                }
                expected += 1;
            }
            let tx = sender.await.unwrap();
            let mut ws = tx.reunite(rx).unwrap();
            ws.close(None).await.ok();
            (expected, tags)
        }));
    }

    let mut monitor = server.connect("/tag").await;
    wait_for_tag(&mut monitor, "v0000").await;
    for version in 1..=6u32 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        if version == 3 {
            // A broken build: half a component. It must never serve.
            let broken = probe_version(3);
            replace(&plugin, &broken[..broken.len() / 2], 0);
            tokio::time::sleep(Duration::from_millis(600)).await;
            wait_for_tag(&mut monitor, "v0002").await;
            continue;
        }
        replace(&plugin, &probe_version(version), version as usize);
        wait_for_tag(&mut monitor, &format!("v{version:04}")).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let versions = ["v0000", "v0001", "v0002", "v0004", "v0005", "v0006"];
    for client in clients {
        let (count, tags) = client.await.unwrap();
        assert!(count > 50, "each client kept sending during the swaps ({count})");
        assert!(!tags.iter().any(|t| t == "v0003"), "the broken version never served: {tags:?}");
        // Tags only move forward through the versions put in service.
        let positions: Vec<usize> =
            tags.iter().map(|t| versions.iter().position(|v| v == t).expect("known tag")).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "tags in swap order: {tags:?}");
        assert_eq!(tags.last().map(String::as_str), Some("v0006"), "{tags:?}");
        assert!(tags.len() >= 3, "the client's messages were served by several versions: {tags:?}");
        eprintln!("client: {count} messages, served by {tags:?}");
    }
}

#[tokio::test]
async fn unchanged_content_does_not_swap_and_a_deleted_file_keeps_serving() {
    let (_dir, plugin, server, mut ws) = probe_route("touch").await;

    // Same bytes written again: no swap, so no re-attach notice.
    replace(&plugin, &probe_version(1), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    say(&mut ws, "reply marker").await;
    assert_eq!(text(&mut ws).await, "marker", "no swap for identical content");

    // Deleted: the last good version keeps serving.
    std::fs::remove_file(&plugin).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    wait_for_tag(&mut ws, "v0001").await;
    let mut fresh = server.connect("/tag").await;
    assert_echo(&mut fresh, Message::text("still served")).await;

    // Recreated with a new version: picked up.
    std::fs::write(&plugin, probe_version(2)).unwrap();
    wait_for_tag(&mut ws, "v0002").await;
}

#[tokio::test]
async fn chat_state_survives_a_reload() {
    let dir = TempDir::new("chat");
    let plugin = dir.join("chat.wasm");
    let original = std::fs::read(plugin_path("chat")).unwrap();
    std::fs::write(&plugin, &original).unwrap();
    let config = write_config(&dir, "[[routes]]\npath = \"/chat\"\nplugin = \"chat.wasm\"\n");
    let server = TestServer::from_file(&config, true).await;

    let mut ada = server.connect("/chat?nick=ada&room=lobby").await;
    assert!(text(&mut ada).await.contains("\"welcome\""));
    let mut bob = server.connect("/chat?nick=bob&room=lobby").await;
    assert!(text(&mut bob).await.contains("\"welcome\""));
    assert!(text(&mut ada).await.contains("\"join\""));
    say(&mut ada, "/nick ada2").await;
    assert!(text(&mut ada).await.contains("\"nick\""));
    assert!(text(&mut bob).await.contains("\"nick\""));
    say(&mut ada, "remember me").await;
    assert!(text(&mut ada).await.contains("remember me"));
    assert!(text(&mut bob).await.contains("remember me"));

    // A new version of the same plugin (another hash): state handed over, connections kept.
    replace(&plugin, &with_custom_section(&original, b"v2"), 0);
    let resumed = text(&mut bob).await;
    assert!(resumed.contains("\"resumed\":true") && resumed.contains("\"nick\":\"bob\""), "{resumed}");
    assert!(resumed.contains("ada2"), "the renamed member survived: {resumed}");

    // A newcomer gets the history the old version recorded.
    let mut carol = server.connect("/chat?nick=carol&room=lobby").await;
    let welcome = text(&mut carol).await;
    assert!(welcome.contains("remember me"), "history survived: {welcome}");
    // And the old connections still chat.
    say(&mut bob, "after the reload").await;
    let mut saw = false;
    for _ in 0..5 {
        if text(&mut ada).await.contains("after the reload") {
            saw = true;
            break;
        }
    }
    assert!(saw, "messages still flow after the swap");
}

#[tokio::test]
async fn config_changes_apply_live_and_a_bad_config_is_refused_whole() {
    let dir = TempDir::new("config");
    std::fs::write(dir.join("probe.wasm"), probe_version(7)).unwrap();
    let config = write_config(&dir, "[[routes]]\npath = \"/a\"\nplugin = \"probe.wasm\"\n");
    let server = TestServer::from_file(&config, true).await;
    let mut a = server.connect("/a").await;
    wait_for_tag(&mut a, "v0007").await;
    assert!(server.try_connect("/b").await.is_err(), "no /b yet");

    // Mount /b, remove /a.
    write_config(&dir, "[[routes]]\npath = \"/b\"\nkind = \"echo\"\n");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), a.next()).await.expect("/a closed in time") {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1001);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a 1001 close, got {other:?}"),
        }
    }
    let mut b = server.connect("/b").await;
    assert_echo(&mut b, Message::text("mounted live")).await;

    // An invalid config (a plugin that does not exist) is refused as a whole: /b stays, no /c.
    write_config(&dir, "[[routes]]\npath = \"/c\"\nplugin = \"missing.wasm\"\n");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_echo(&mut b, Message::text("still here")).await;
    assert!(server.try_connect("/c").await.is_err());
    // A syntax error too.
    write_config(&dir, "[[routes]\npath = ");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut b2 = server.connect("/b").await;
    assert_echo(&mut b2, Message::text("and still")).await;
}

#[tokio::test]
async fn without_watching_changes_wait_for_an_explicit_reload() {
    let dir = TempDir::new("hup");
    let plugin = dir.join("probe.wasm");
    std::fs::write(&plugin, probe_version(1)).unwrap();
    let config = write_config(&dir, "[[routes]]\npath = \"/tag\"\nplugin = \"probe.wasm\"\n");
    let server = TestServer::from_file(&config, false).await;
    let mut ws = server.connect("/tag").await;
    wait_for_tag(&mut ws, "v0001").await;
    replace(&plugin, &probe_version(2), 0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    say(&mut ws, "tagged x").await;
    assert_eq!(text(&mut ws).await, "v0001 x", "not watched: no swap yet");
    server.reload.as_ref().unwrap().reload_all(); // what SIGHUP does
    wait_for_tag(&mut ws, "v0002").await;
}

#[tokio::test]
async fn a_file_written_beside_a_plugin_does_not_postpone_its_reload() {
    let (dir, plugin, _server, mut ws) = probe_route("busy-dir").await;

    // A log beside the plugin, appended to every 10 ms for 15 s (well inside any debounce).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (log, stop) = (dir.join("server.log"), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(log).unwrap();
            let end = std::time::Instant::now() + Duration::from_secs(15);
            while std::time::Instant::now() < end && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writeln!(f, "a line").unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (version, style) in [(2, 0), (3, 1), (4, 2)] {
        replace(&plugin, &probe_version(version), style);
        wait_for_tag(&mut ws, &format!("v{version:04}")).await;
        assert!(!writer.is_finished(), "version {version} came into service only after the log writer stopped");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
}

/// Connections that between them reach every instance of a 2-instance route, each asked `tagged`.
async fn tags(clients: &mut [Client]) -> Vec<String> {
    let mut out = Vec::new();
    for ws in clients.iter_mut() {
        say(ws, "tagged").await;
        out.push(text(ws).await);
    }
    out
}

#[tokio::test]
async fn a_swap_is_all_or_nothing_across_instances() {
    let dir = TempDir::new("all-or-nothing");
    let plugin = dir.join("hostile.wasm");
    std::fs::write(&plugin, plugin_version("hostile", 0)).unwrap();
    let config = write_config(&dir, "[[routes]]\npath = \"/h\"\nplugin = \"hostile.wasm\"\ninstances = 2\n");
    let server = TestServer::from_file(&config, true).await;
    // Ids are handed out in order, so consecutive connections alternate between the instances.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(server.connect("/h").await);
    }
    assert_eq!(tags(&mut clients).await, ["v0000"; 4]);
    // One instance's state will be refused by the next version's `restore`; the other's not.
    say(&mut clients[0], "keep refuse-restore").await;
    assert_eq!(text(&mut clients[0]).await, "kept 1");

    write_atomically(&plugin, &plugin_version("hostile", 1));
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        assert_eq!(tags(&mut clients).await, ["v0000"; 4], "a refused swap must leave every instance as it was");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Once the state is acceptable, the same file written again is tried again, and taken whole.
    say(&mut clients[0], "forget").await;
    assert_eq!(text(&mut clients[0]).await, "forgot");
    write_atomically(&plugin, &plugin_version("hostile", 1));
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = tags(&mut clients).await;
        if now == ["v0001"; 4] {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "the new version never came into service: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
