//! The topics engine on one node (the in-memory engine): history with offsets in envelopes,
//! recovery by `?recover=` and by the plugin (`topics.subscribe-from`), presence counts, members
//! and batched events, all through the `pubsub` test plugin over loopback. Each test runs against
//! the Rust plugin (`tests/plugins/pubsub`) and, ignored unless asked for (`.ci/run` builds it
//! first), its JavaScript twin (`plugins/pubsub-js`, on the SDK's `topics.js`).

use wsplug_tests::{Client, STEP, TestServer, ask, ask_until, next_text as text, plugin_path, say};

fn config(plugin: &str, history: usize, presence: &str) -> String {
    format!(
        "[[routes]]\npath = \"/ps\"\nplugin = \"{}\"\n[routes.topics]\nhistory = {history}\npresence = \"{presence}\"\n\
         presence_interval = \"50ms\"\n",
        plugin_path(plugin).display()
    )
}

/// Each scenario as a test of the Rust plugin, and one of the JavaScript plugin (ignored unless
/// asked for: it is built by `plugins/build-all.sh`).
macro_rules! both {
    ($($name:ident,)*) => {
        mod rust {
            $(#[tokio::test]
            async fn $name() {
                super::$name("pubsub").await
            })*
        }
        mod javascript {
            $(#[tokio::test]
            #[ignore = "needs target/plugins/pubsub-js.wasm: plugins/build-all.sh js"]
            async fn $name() {
                super::$name("pubsub-js").await
            })*
        }
    };
}

both! {
    a_reconnecting_client_gets_every_message_it_missed_in_order,
    a_client_too_far_behind_is_told_it_cannot_be_recovered,
    without_history_topic_messages_go_out_as_published,
    presence_counts_members_and_batched_events,
    count_mode_tells_counts_and_refuses_members,
}

async fn json(ws: &mut Client) -> serde_json::Value {
    serde_json::from_str(&text(ws).await).expect("JSON")
}

async fn until(ws: &mut Client, line: &str, done: impl Fn(&str) -> bool) -> String {
    ask_until(ws, line, STEP, done).await
}

async fn a_reconnecting_client_gets_every_message_it_missed_in_order(plugin: &str) {
    let server = TestServer::start(&config(plugin, 100, "off")).await;
    let mut publisher = server.connect("/ps").await;
    let mut reader = server.connect("/ps?sub=room").await;
    // Subscribed in on-open: a command round trip makes sure it took effect.
    assert_eq!(ask(&mut reader, "pos room").await, "pos none");
    for i in 1..=3 {
        say(&mut publisher, &format!("pub room m{i}")).await;
    }
    let mut last = serde_json::Value::Null;
    for i in 1..=3u64 {
        last = json(&mut reader).await;
        assert_eq!(last["topic"], "room");
        assert_eq!(last["offset"], i);
        assert_eq!(last["text"], format!("m{i}"));
    }
    let epoch = last["epoch"].as_str().unwrap().to_owned();
    // (A call sees the topics as they were before its own actions: `pos` in the same batch as
    // the publishes would not see them yet. Asked from another connection, it does.)
    let mut asker = server.connect("/ps").await;
    assert_eq!(ask(&mut asker, "pos room").await, format!("pos {epoch} 3"));
    reader.close(None).await.unwrap();
    drop(reader);

    // Missed while away: a text and a binary message.
    say(&mut publisher, "pub room m4").await;
    say(&mut publisher, "bin room m5").await;
    until(&mut asker, "pos room", |r| r == format!("pos {epoch} 5")).await;

    let mut back = server.connect(&format!("/ps?sub=room&recover=room:{epoch}:3")).await;
    let notice = json(&mut back).await;
    assert_eq!(
        notice,
        serde_json::json!({"topic": "room", "epoch": epoch, "offset": 5, "recovered": true, "missed": 2})
    );
    let m4 = json(&mut back).await;
    assert_eq!((m4["offset"].as_u64(), m4["text"].as_str()), (Some(4), Some("m4")));
    let m5 = json(&mut back).await;
    assert_eq!((m5["offset"].as_u64(), m5["binary"].as_str()), (Some(5), Some("bTU=")), "binary goes base64");
    // Then live, in order after the recovered ones.
    say(&mut publisher, "pub room m6").await;
    assert_eq!(json(&mut back).await["offset"], 6);

    // A client from another life of the history (a restarted node) is told, not misled.
    let mut stale = server.connect("/ps?sub=room&recover=room:0123abcd:2").await;
    let notice = json(&mut stale).await;
    assert_eq!(notice["recovered"], false);
    assert!(notice["reason"].as_str().unwrap().contains("epoch"), "{notice}");
    assert_eq!(notice["offset"], 6, "and where the topic is now");
}

async fn a_client_too_far_behind_is_told_it_cannot_be_recovered(plugin: &str) {
    let server = TestServer::start(&config(plugin, 3, "off")).await;
    let mut publisher = server.connect("/ps").await;
    for i in 1..=6 {
        say(&mut publisher, &format!("pub t m{i}")).await;
    }
    let mut asker = server.connect("/ps").await;
    let pos = until(&mut asker, "pos t", |r| r.ends_with(" 6")).await;
    let epoch = pos.split(' ').nth(1).unwrap().to_owned();
    // 4, 5, 6 are held: from 3 works, from 2 would hide 3.
    let mut ok = server.connect(&format!("/ps?sub=t&recover=t:{epoch}:3")).await;
    assert_eq!(json(&mut ok).await["missed"], 3);
    let mut late = server.connect(&format!("/ps?sub=t&recover=t:{epoch}:2")).await;
    let notice = json(&mut late).await;
    assert_eq!(notice["recovered"], false, "{notice}");
    // Not recovered, but subscribed: live messages still come.
    say(&mut publisher, "pub t m7").await;
    assert_eq!(json(&mut late).await["offset"], 7);

    // The plugin decides instead of the URL: the same recovery, asked for by a message.
    let mut asked = server.connect("/ps").await;
    say(&mut asked, &format!("from t {epoch} 5")).await;
    let notice = json(&mut asked).await;
    assert_eq!((notice["recovered"].as_bool(), notice["missed"].as_u64()), (Some(true), Some(2)));
    assert_eq!(json(&mut asked).await["text"], "m6");
    assert_eq!(json(&mut asked).await["text"], "m7");
}

async fn without_history_topic_messages_go_out_as_published(plugin: &str) {
    let server = TestServer::start(&config(plugin, 0, "off")).await;
    let mut publisher = server.connect("/ps").await;
    let mut reader = server.connect("/ps?sub=plain&recover=plain:e:1").await;
    assert_eq!(ask(&mut reader, "pos plain").await, "pos none");
    say(&mut publisher, "pub plain hello").await;
    assert_eq!(text(&mut reader).await, "hello", "no envelope, no recovery notice");
}

async fn presence_counts_members_and_batched_events(plugin: &str) {
    let server = TestServer::start(&config(plugin, 0, "members")).await;
    let mut watcher = server.connect("/ps").await;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(server.connect("/ps?sub=lobby").await);
    }
    until(&mut watcher, "count lobby", |r| r == "count 3").await;
    let list = ask(&mut watcher, "members lobby").await;
    let ids: Vec<&str> = list.strip_prefix("members ").unwrap().split(',').collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|m| m.starts_with("local/")), "{list}");
    // The joins came as one event per topic per interval, not one per member (or as few).
    let events = until(&mut watcher, "events", |r| !r.is_empty()).await;
    let joined: usize = events
        .lines()
        .map(|l| l.split(' ').nth(2).unwrap().trim_start_matches('+').split(',').filter(|s| !s.is_empty()).count())
        .sum();
    assert_eq!(joined, 3, "{events}");
    assert!(events.lines().count() <= 3, "{events}");

    drop(members.pop());
    until(&mut watcher, "count lobby", |r| r == "count 2").await;
    let events = until(&mut watcher, "events", |r| r.contains(" -local/")).await;
    assert!(events.starts_with("lobby 2 + -local/"), "{events}");
}

async fn count_mode_tells_counts_and_refuses_members(plugin: &str) {
    let server = TestServer::start(&config(plugin, 0, "count")).await;
    let mut watcher = server.connect("/ps").await;
    let _a = server.connect("/ps?sub=big").await;
    let _b = server.connect("/ps?sub=big").await;
    until(&mut watcher, "count big", |r| r == "count 2").await;
    let reply = ask(&mut watcher, "members big").await;
    assert!(reply.starts_with("error") && reply.contains("count"), "{reply}");
    let events = until(&mut watcher, "events", |r| !r.is_empty()).await;
    assert!(events.lines().all(|l| l.starts_with("big ") && l.contains(" + - ~0")), "{events}");
    assert!(events.lines().last().unwrap().starts_with("big 2 "), "{events}");
}

#[tokio::test]
async fn a_bad_topics_table_is_refused_with_the_route_named() {
    let toml = format!(
        "[[routes]]\npath = \"/ps\"\nplugin = \"{}\"\n[routes.topics]\npresence = \"who\"\n",
        plugin_path("pubsub").display()
    );
    let base = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let err = wsplug::config::Config::parse(&toml, "test config", base.clone()).unwrap_err().to_string();
    assert!(err.contains("presence") && err.contains("who"), "{err}");
    let toml = toml.replace("presence = \"who\"", "history = 2000000");
    let err = wsplug::config::Config::parse(&toml, "test config", base).unwrap_err().to_string();
    assert!(err.contains("/ps") && err.contains("history"), "{err}");
}
