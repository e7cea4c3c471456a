//! Three wsplug nodes sharing topics through a real `nats-server` (JetStream on), all on loopback:
//! messages published on one node reach the subscribers of every node exactly once and in order;
//! a node killed loses only its own connections and presence converges without it; a broker
//! restart is survived, and recovery tells what the broker lost.
//!
//! Ignored by default (they need `nats-server`, from Debian's package): `.ci/run` installs it and
//! runs them with `cargo test -p wsplug-tests --test cluster -- --ignored`. Each node is a child
//! process (the test binary re-executed), so that it can be killed like a real one.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use wsplug_tests::{Client, STEP, ServerProcess, TempDir, ask, ask_until, next_text as text, plugin_path, say};

const CHILD: &str = "WSPLUG_CLUSTER_CHILD";

#[tokio::test]
#[ignore = "a child server process, started by the other tests"]
async fn child_server() {
    wsplug_tests::run_child_server(CHILD).await;
}

/// A `nats-server` with JetStream, on a loopback port, its store in a folder of the test's.
struct Broker {
    child: Option<Child>,
    port: u16,
    store: std::path::PathBuf,
}

impl Broker {
    fn start(dir: &TempDir) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut broker = Self { child: None, port, store: dir.join("jetstream") };
        broker.restart();
        broker
    }

    fn restart(&mut self) {
        self.stop();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian's package `nats-server`) must be installed for the cluster tests");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + STEP;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nats-server did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node of the cluster `name` on `broker`: `/ps` keeps history (100 per topic) and presence
/// (members, every 100 ms); `/plain` has neither.
fn node(broker: &Broker, cluster: &str, name: &str) -> ServerProcess {
    let plugin = plugin_path("pubsub");
    ServerProcess::start(
        &format!(
            "listen = \"127.0.0.1:0\"\n[cluster]\nnats = \"nats://127.0.0.1:{port}\"\nnode = \"{name}\"\nname = \"{cluster}\"\n\
             [[routes]]\npath = \"/ps\"\nplugin = \"{p}\"\n[routes.topics]\nhistory = 100\npresence = \"members\"\n\
             presence_interval = \"100ms\"\n\
             [[routes]]\npath = \"/plain\"\nplugin = \"{p}\"\n",
            port = broker.port,
            p = plugin.display()
        ),
        CHILD,
    )
}

/// A broker and three nodes (a, b, c) of the cluster `name`, in a folder of their own (dropped
/// last: the tuple's fields drop in reverse).
fn three_nodes(name: &str) -> (TempDir, Broker, ServerProcess, ServerProcess, ServerProcess) {
    let dir = TempDir::new(&format!("cluster-{name}"));
    let broker = Broker::start(&dir);
    let (a, b, c) = (node(&broker, name, "a"), node(&broker, name, "b"), node(&broker, name, "c"));
    (dir, broker, a, b, c)
}

async fn connect(node: &ServerProcess, path: &str) -> Client {
    let url = format!("ws://{}{path}", node.addr);
    let (ws, _) =
        tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url)).await.expect("connect in time").unwrap();
    ws
}

async fn until(ws: &mut Client, line: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
    ask_until(ws, line, within, done).await
}

/// The text of a message: an envelope's `text`, or the message itself (routes without history).
fn body(message: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(message) {
        Ok(v) if v.get("offset").is_some() => v["text"].as_str().unwrap_or_default().to_owned(),
        _ => message.to_owned(),
    }
}

/// Publishes `ready-N` from `publisher` until every subscriber got one (each node then follows
/// the topic on the broker), then lets the stragglers arrive and drops them.
async fn wait_until_following(publisher: &mut Client, subscribers: &mut [&mut Client], topic: &str) {
    let deadline = tokio::time::Instant::now() + STEP;
    let mut ready = vec![false; subscribers.len()];
    let mut n = 0;
    while !ready.iter().all(|r| *r) {
        assert!(tokio::time::Instant::now() < deadline, "subscribers never all followed {topic}: {ready:?}");
        say(publisher, &format!("pub {topic} ready-{n}")).await;
        n += 1;
        for (i, s) in subscribers.iter_mut().enumerate() {
            while let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_millis(30), s.next()).await {
                ready[i] |= body(&t).starts_with("ready-");
            }
        }
    }
    // Whatever ready-* is still on its way.
    for s in subscribers.iter_mut() {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(300), s.next()).await {}
    }
}

#[tokio::test]
#[ignore = "needs nats-server: run by .ci/run"]
async fn messages_published_on_one_node_reach_every_node_exactly_once_in_order() {
    let (_dir, _broker, a, b, c) = three_nodes("order");
    for path in ["/ps", "/plain"] {
        let mut on_a = connect(&a, &format!("{path}?sub=room")).await;
        let mut on_b = connect(&b, &format!("{path}?sub=room")).await;
        let mut on_c = connect(&c, &format!("{path}?sub=room")).await;
        let mut pub_a = connect(&a, path).await;
        let mut pub_c = connect(&c, path).await;
        // From both publishers' nodes: without history a node delivers its own publications
        // locally, so only another node's messages show that it follows the topic on the broker.
        wait_until_following(&mut pub_a, &mut [&mut on_a, &mut on_b, &mut on_c], "room").await;
        wait_until_following(&mut pub_c, &mut [&mut on_a, &mut on_b, &mut on_c], "room").await;

        const N: usize = 200;
        for i in 0..N {
            say(&mut pub_a, &format!("pub room a-{i}")).await;
            say(&mut pub_c, &format!("pub room c-{i}")).await;
        }
        let mut orders = Vec::new();
        for (name, ws) in [("a", &mut on_a), ("b", &mut on_b), ("c", &mut on_c)] {
            let mut got: Vec<String> = Vec::new();
            let mut offsets = Vec::new();
            while got.len() < 2 * N {
                // On a timeout, say what is missing (a lost message, or a late one).
                let message = match tokio::time::timeout(STEP, ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                    other => {
                        let missing: Vec<String> = (0..N)
                            .flat_map(|i| [format!("a-{i}"), format!("c-{i}")])
                            .filter(|m| !got.contains(m))
                            .collect();
                        let extra: Vec<&String> = got.iter().filter(|m| !m.starts_with(['a', 'c'])).collect();
                        panic!(
                            "{path}: node {name}: {other:?} after {} of {} messages; missing {missing:?}, unexpected {extra:?}",
                            got.len(),
                            2 * N
                        )
                    }
                };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&message)
                    && let Some(o) = v["offset"].as_u64()
                {
                    offsets.push(o);
                }
                got.push(body(&message));
            }
            // Exactly once: nothing more comes.
            let extra = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
            assert!(extra.is_err(), "{path}: node {name} got more than {} messages: {extra:?}", 2 * N);
            for publisher in ["a", "c"] {
                let mine: Vec<&String> = got.iter().filter(|m| m.starts_with(&format!("{publisher}-"))).collect();
                let expected: Vec<String> = (0..N).map(|i| format!("{publisher}-{i}")).collect();
                assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "{path}: node {name}, publisher {publisher}");
            }
            if path == "/ps" {
                assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{path}: node {name}: offsets increase");
                orders.push(got);
            }
        }
        // With history, one order for everyone (the broker's).
        if path == "/ps" {
            assert!(orders.windows(2).all(|w| w[0] == w[1]), "every node delivers in the stream's order");
        }
        // A route-wide broadcast crosses nodes too, once.
        say(&mut pub_a, &format!("all hello-{}", &path[1..])).await;
        for ws in [&mut on_b, &mut on_c, &mut pub_c, &mut on_a] {
            assert_eq!(text(ws).await, format!("hello-{}", &path[1..]));
        }
    }
}

#[tokio::test]
#[ignore = "needs nats-server: run by .ci/run"]
async fn a_killed_node_loses_only_its_connections_and_presence_converges() {
    let (_dir, _broker, a, b, c) = three_nodes("kill");
    let mut members: HashMap<&str, Vec<Client>> = HashMap::new();
    for (name, n) in [("a", &a), ("b", &b), ("c", &c)] {
        for _ in 0..2 {
            members.entry(name).or_default().push(connect(n, "/ps?sub=lobby").await);
        }
    }
    let mut watcher = connect(&a, "/ps").await;
    until(&mut watcher, "count lobby", STEP, |r| r == "count 6").await;
    let list = ask(&mut watcher, "members lobby").await;
    for name in ["a", "b", "c"] {
        assert_eq!(list.matches(&format!("{name}/")).count(), 2, "{list}");
    }
    let events = until(&mut watcher, "events", STEP, |r| r.contains("b/")).await;
    assert!(events.starts_with("lobby "), "{events}");

    drop(b); // killed: no goodbye to anyone
    for ws in members.get_mut("b").unwrap() {
        let end = tokio::time::timeout(STEP, ws.next()).await.expect("B's clients see the end");
        assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    }
    // Presence forgets B within a few intervals (3 × 100 ms + 2 s of grace).
    until(&mut watcher, "count lobby", STEP, |r| r == "count 4").await;
    let list = ask(&mut watcher, "members lobby").await;
    assert!(!list.contains("b/"), "{list}");
    let events = until(&mut watcher, "events", STEP, |r| r.contains("-b/")).await;
    assert!(events.lines().any(|l| l.starts_with("lobby 4 ")), "{events}");
    // A and C still serve their connections, and each other's messages.
    let mut pub_a = connect(&a, "/ps").await;
    say(&mut pub_a, "pub lobby after").await;
    for name in ["a", "c"] {
        for ws in members.get_mut(name).unwrap() {
            assert_eq!(body(&text(ws).await), "after", "node {name}");
        }
    }
}

#[tokio::test]
#[ignore = "needs nats-server: run by .ci/run"]
async fn a_broker_restart_is_survived_and_recovery_tells_what_was_lost() {
    let (_dir, mut broker, a, b, c) = three_nodes("restart");
    let mut publisher = connect(&a, "/ps").await;
    let mut reader = connect(&b, "/ps?sub=news").await;
    wait_until_following(&mut publisher, &mut [&mut reader], "news").await;
    for i in 0..3 {
        say(&mut publisher, &format!("pub news before-{i}")).await;
    }
    let mut last = serde_json::Value::Null;
    for i in 0..3 {
        last = serde_json::from_str(&text(&mut reader).await).unwrap();
        assert_eq!(last["text"], format!("before-{i}"));
    }
    let (epoch, seen) = (last["epoch"].as_str().unwrap().to_owned(), last["offset"].as_u64().unwrap());
    drop(reader); // gone before the restart, it comes back after

    // The broker restarts with its store: nodes reconnect by themselves and resubscribe.
    broker.restart();
    let mut follower = connect(&c, "/ps?sub=news").await;
    let mut n = 0;
    loop {
        say(&mut publisher, &format!("pub news after-{n}")).await;
        n += 1;
        if let Ok(Some(Ok(Message::Text(_)))) = tokio::time::timeout(Duration::from_millis(200), follower.next()).await
        {
            break;
        }
        assert!(n < 100, "messages never flowed again after the broker restarted");
    }
    // Recovery across the restart, on another node: everything after `seen`, in order.
    let mut back = connect(&c, &format!("/ps?sub=news&recover=news:{epoch}:{seen}")).await;
    let notice: serde_json::Value = serde_json::from_str(&text(&mut back).await).unwrap();
    assert_eq!(notice["recovered"], true, "{notice}");
    let missed = notice["missed"].as_u64().unwrap();
    let mut texts = Vec::new();
    for _ in 0..missed {
        let m: serde_json::Value = serde_json::from_str(&text(&mut back).await).unwrap();
        texts.push(m["text"].as_str().unwrap().to_owned());
    }
    assert!(texts.iter().all(|t| t.starts_with("ready-") || t.starts_with("after-")), "{texts:?}");
    assert!(texts.iter().any(|t| t.starts_with("after-")), "{texts:?}");

    // The broker comes back without its store: the history is lost, and a recovering client is
    // told so (a new epoch), while messages flow again.
    broker.stop();
    std::fs::remove_dir_all(&broker.store).unwrap();
    broker.restart();
    let mut fresh = connect(&a, "/ps?sub=news").await;
    let mut n = 0;
    loop {
        say(&mut publisher, &format!("pub news reborn-{n}")).await;
        n += 1;
        if let Ok(Some(Ok(Message::Text(_)))) = tokio::time::timeout(Duration::from_millis(200), fresh.next()).await {
            break;
        }
        assert!(n < 100, "messages never flowed again after the broker lost its store");
    }
    let mut lost = connect(&b, &format!("/ps?sub=news&recover=news:{epoch}:{seen}")).await;
    let notice: serde_json::Value = serde_json::from_str(&text(&mut lost).await).unwrap();
    assert_eq!(notice["recovered"], false, "{notice}");
    assert!(notice["reason"].as_str().unwrap().contains("epoch"), "{notice}");
    assert_ne!(notice["epoch"], epoch.as_str());
}

#[tokio::test]
#[ignore = "needs nats-server: run by .ci/run"]
async fn a_client_recovers_on_another_node_what_it_missed() {
    let (_dir, _broker, a, b, c) = three_nodes("recover");
    let mut publisher = connect(&a, "/ps").await;
    let mut reader = connect(&b, "/ps?sub=feed").await;
    wait_until_following(&mut publisher, &mut [&mut reader], "feed").await;
    say(&mut publisher, "pub feed one").await;
    let seen: serde_json::Value = serde_json::from_str(&text(&mut reader).await).unwrap();
    drop(reader);
    for i in 0..20 {
        say(&mut publisher, &format!("pub feed missed-{i}")).await;
    }
    // C follows nobody's "feed" yet: it loads the history from the broker for this client.
    let url = format!("/ps?sub=feed&recover=feed:{}:{}", seen["epoch"].as_str().unwrap(), seen["offset"]);
    let deadline = tokio::time::Instant::now() + STEP;
    let _back = loop {
        let mut back = connect(&c, &url).await;
        let notice: serde_json::Value = serde_json::from_str(&text(&mut back).await).unwrap();
        assert_eq!(notice["recovered"], true, "{notice}");
        if notice["missed"] == 20 {
            for i in 0..20 {
                let m: serde_json::Value = serde_json::from_str(&text(&mut back).await).unwrap();
                assert_eq!(m["text"], format!("missed-{i}"));
            }
            say(&mut publisher, "pub feed live").await;
            let m: serde_json::Value = serde_json::from_str(&text(&mut back).await).unwrap();
            assert_eq!(m["text"], "live");
            break back;
        }
        // The last publishes may still be on their way to the broker.
        assert!(tokio::time::Instant::now() < deadline, "{notice}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A presence count includes everyone, on every node: nobody is left on B.
    let mut watcher = connect(&b, "/ps").await;
    until(&mut watcher, "count feed", STEP, |r| r == "count 1").await;
}

/// A node keeps following a topic for a moment after its last subscriber leaves
/// (`UNFOLLOW_AFTER`): a connection that leaves a topic and joins it again (what a hot reload's
/// re-attachment does) gets every message published once it is back, with no reload gap.
#[tokio::test]
#[ignore = "needs nats-server: run by .ci/run"]
async fn a_topic_left_and_joined_again_misses_nothing_after_the_join() {
    let (_dir, _broker, a, b, _c) = three_nodes("grace");
    let mut publisher = connect(&a, "/ps").await;
    let mut reader = connect(&b, "/ps?sub=tick").await;
    wait_until_following(&mut publisher, &mut [&mut reader], "tick").await;
    let published = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    const N: usize = 600;
    let sending = {
        let published = published.clone();
        tokio::spawn(async move {
            for i in 0..N {
                say(&mut publisher, &format!("pub tick m{i}")).await;
                published.store(i + 1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            publisher
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    say(&mut reader, "unsub tick").await;
    let mut got = Vec::new();
    // Drain what was on its way, up to the "ok" of the unsubscription.
    loop {
        let m = text(&mut reader).await;
        if m == "ok" {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    say(&mut reader, "sub tick").await;
    let mut back_at = None;
    while got.last() != Some(&(N - 1)) {
        let m = text(&mut reader).await;
        if m == "ok" {
            back_at = Some(published.load(std::sync::atomic::Ordering::SeqCst));
            continue;
        }
        let i: usize = body(&m).trim_start_matches('m').parse().unwrap();
        if back_at.is_some() {
            got.push(i);
        }
    }
    sending.await.unwrap();
    let back_at = back_at.expect("the subscription was confirmed");
    assert!(back_at < N, "the stream ended before the test joined again");
    // Every message published after the join came back, once, in order.
    let after: Vec<usize> = got.into_iter().filter(|i| *i >= back_at).collect();
    let missing: Vec<usize> = (back_at..N).filter(|i| !after.contains(i)).collect();
    assert!(missing.is_empty(), "joined again when {back_at} were published; missed {missing:?}");
    assert!(after.windows(2).all(|w| w[0] + 1 == w[1]), "every message once, in order");
}
