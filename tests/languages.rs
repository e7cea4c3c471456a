//! The example plugins in other languages (built by `plugins/build-all.sh`, which `.ci/run` runs
//! first): each echo plugin round-trips text, binary and a 1 MiB message and never sees invalid
//! UTF-8; each chat plugin broadcasts to its room and counts, rather than names, the members of a
//! large room.
//!
//! These tests are `#[ignore]`d in a plain `cargo test` (the toolchains are not part of the two
//! README commands); `.ci/run` runs them with `--include-ignored` after building, and there a
//! missing component fails the test.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wsplug_tests::{TestServer, assert_echo, check_chat_large_rooms, next_message, plugin_path};

async fn server_for(lang: &str, kinds: &[&str]) -> TestServer {
    for kind in kinds {
        let path = plugin_path(&format!("{kind}-{lang}"));
        assert!(path.exists(), "{} is missing: run plugins/build-all.sh", path.display());
    }
    let routes: String = kinds
        .iter()
        .map(|k| format!("[[routes]]\npath = \"/{k}\"\nplugin = \"target/plugins/{k}-{lang}.wasm\"\n"))
        .collect();
    TestServer::start(&routes).await
}

async fn echo_round_trips(server: &TestServer) {
    let mut ws = server.connect("/echo").await;
    assert_echo(&mut ws, Message::text("hello")).await;
    assert_echo(&mut ws, Message::text("κόσμε 🌍")).await;
    assert_echo(&mut ws, Message::text("")).await;
    assert_echo(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;
    let big: Vec<u8> = (0..1 << 20).map(|i: usize| (i * 7) as u8).collect();
    assert_echo(&mut ws, Message::binary(big)).await;
}

async fn invalid_utf8_never_reaches_the_plugin(server: &TestServer) {
    let mut raw = server.raw("/echo").await;
    raw.send_frame(true, 0x1, &[b'o', b'k', 0xC0, 0xAF]).await;
    assert_eq!(raw.expect_close().await, Some(1007));
    // The plugin is unharmed: a new connection is served.
    let mut ws = server.connect("/echo").await;
    assert_echo(&mut ws, Message::text("still fine")).await;
}

async fn chat_broadcasts(server: &TestServer, lang: &str) {
    let mut ada = server.connect("/chat?nick=ada&room=lobby").await;
    let mut bob = server.connect("/chat?nick=bob&room=lobby").await;
    let text = |m: Message| m.into_text().map(|t| t.to_string()).unwrap_or_default();
    assert!(text(next_message(&mut ada).await).contains("\"welcome\""));
    assert!(text(next_message(&mut bob).await).contains("\"welcome\""));
    assert!(text(next_message(&mut ada).await).contains("\"join\""));
    tokio::time::timeout(Duration::from_secs(10), ada.send(Message::text("hi \"bob\""))).await.unwrap().unwrap();
    for ws in [&mut ada, &mut bob] {
        let line = text(next_message(ws).await);
        assert!(line.contains("\"message\"") && line.contains("\"nick\":\"ada\""), "{lang}: {line}");
        assert!(line.contains(r#"hi \"bob\""#), "{lang}: JSON escaping: {line}");
    }
}

macro_rules! language {
    ($name:ident, $lang:literal) => {
        /// One server per language (compiling a Python or JavaScript component takes seconds).
        #[tokio::test]
        #[ignore = "needs plugins/build-all.sh (run by .ci/run)"]
        async fn $name() {
            let server = server_for($lang, &["echo", "chat"]).await;
            echo_round_trips(&server).await;
            invalid_utf8_never_reaches_the_plugin(&server).await;
            chat_broadcasts(&server, $lang).await;
            check_chat_large_rooms(&server, $lang).await;
        }
    };
}

language!(javascript_echo_and_chat, "js");
language!(python_echo_and_chat, "python");
language!(c_echo_and_chat, "c");
language!(go_echo_and_chat, "go");

/// The text of the next message that is a `welcome`, skipping others (joins and leaves).
async fn next_welcome(ws: &mut wsplug_tests::Client, within: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // Not `next_message`: its own 10 s bound is shorter than a Python component's first compile.
        let message = tokio::time::timeout_at(deadline, ws.next()).await.expect("a welcome in time");
        let message = message.expect("the stream ended").expect("a read error");
        let value: serde_json::Value = serde_json::from_str(message.to_text().unwrap_or_default()).unwrap_or_default();
        if value["type"] == "welcome" {
            return value;
        }
    }
}

/// The Rust, JavaScript, Python, Go and C chats share one snapshot format: a hot reload from one to
/// another keeps every connection's nick and room, and the rooms' history.
#[tokio::test]
#[ignore = "needs plugins/build-all.sh (run by .ci/run)"]
async fn chat_state_survives_reloads_from_one_language_to_another() {
    let dir = wsplug_tests::TempDir::new("chat-handover");
    let plugin = dir.join("chat.wasm");
    std::fs::copy(plugin_path("chat-js"), &plugin).unwrap();
    let config = dir.join("wsplug.toml");
    std::fs::write(&config, "[[routes]]\npath = \"/chat\"\nplugin = \"chat.wasm\"\n").unwrap();
    let server = TestServer::from_file(&config, true).await;
    let mut ada = server.connect("/chat?nick=ada&room=lobby").await;
    next_welcome(&mut ada, Duration::from_secs(10)).await;
    ada.send(Message::text("/join kitchen")).await.unwrap();
    assert_eq!(next_welcome(&mut ada, Duration::from_secs(10)).await["room"], "kitchen");
    // Quotes, a backslash, HTML's specials (Go escapes them), a control character, non-ASCII and
    // an astral character (a surrogate pair in JSON): every snapshot writer and reader must agree.
    let said = "said in \"JavaScript\" \\ <&> \t é 🎉";
    ada.send(Message::text(said)).await.unwrap();
    for (step, next) in ["chat-python", "chat-go", "chat-c", "chat", "chat-js"].into_iter().enumerate() {
        let staged = dir.join("staged.wasm");
        std::fs::copy(plugin_path(next), &staged).unwrap();
        std::fs::rename(&staged, &plugin).unwrap();
        // Compiling a Python component takes seconds (the compile cache usually has it).
        let welcome = next_welcome(&mut ada, Duration::from_secs(60)).await;
        assert_eq!(welcome["resumed"], true, "{next}: {welcome}");
        assert_eq!((&welcome["nick"], &welcome["room"]), (&"ada".into(), &"kitchen".into()), "{next}: {welcome}");
        let mut bob = server.connect(&format!("/chat?nick=bob{step}&room=kitchen")).await;
        let history = next_welcome(&mut bob, Duration::from_secs(10)).await["history"].clone();
        let texts: Vec<&str> = history.as_array().unwrap().iter().filter_map(|l| l["text"].as_str()).collect();
        assert!(texts.contains(&said), "{next}: the history was lost or changed: {history}");
        bob.close(None).await.unwrap();
    }
}
