//! The platform of contract 0.2.0 over real connections: timers that tick into a room and keep
//! ticking across a hot reload and an instance rebuilt after a trap, attachments that keep a
//! player's name across both, a key-value store shared by a route's instances, bounded by its
//! quota and kept across a restart, grants that refuse a plugin which imports what its route
//! does not allow, and a 0.1.0 plugin served beside a 0.2.0 one.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wsplug_tests::{Client, TempDir, TestServer, next_message, plugin_path, with_custom_section, write_atomically};

const GRANTED: &str = "[routes.grants]\ntimers = true\nattachments = true\n";

/// The next JSON event of `type` (others skipped), within 10 s.
async fn next_event(ws: &mut Client, kind: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event within 10 s"))
            .expect("connection open")
            .expect("a message");
        if let Message::Text(t) = msg
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
            && v["type"] == kind
        {
            return v;
        }
    }
}

#[tokio::test]
async fn timers_tick_and_attachments_hold_across_a_hot_reload_and_a_trap() {
    let dir = TempDir::new("platform");
    let plugin = dir.join("game.wasm");
    let game = std::fs::read(plugin_path("game")).unwrap();
    write_atomically(&plugin, &game);
    let config = dir.join("wsplug.toml");
    std::fs::write(&config, format!("[[routes]]\npath = \"/game\"\nplugin = \"game.wasm\"\n{GRANTED}")).unwrap();
    let server = TestServer::from_file(&config, true).await;

    let mut ada = server.connect("/game?name=ada").await;
    assert_eq!(next_event(&mut ada, "welcome").await["name"], "ada");
    // The timer set by the first on-open ticks on its own, every 100 ms.
    let first = next_event(&mut ada, "tick").await["n"].as_u64().unwrap();
    let second = next_event(&mut ada, "tick").await["n"].as_u64().unwrap();
    assert_eq!(second, first + 1);

    // A hot reload: nobody sets the timer again, yet it keeps ticking, and the count goes on.
    write_atomically(&plugin, &with_custom_section(&game, b"v2"));
    let welcome = next_event(&mut ada, "welcome").await;
    assert_eq!(welcome["name"], "ada", "the attachment survived the reload: {welcome}");
    let after_reload = next_event(&mut ada, "tick").await["n"].as_u64().unwrap();
    assert!(after_reload > second, "the count was handed over: {after_reload} after {second}");

    // A trap rebuilds the instance: the connection that caused it is closed, the other one keeps
    // its name (an attachment, not the plugin's state) and the timer still fires.
    let mut bob = server.connect("/game?name=bob").await;
    next_event(&mut bob, "welcome").await;
    bob.send(Message::text("panic")).await.unwrap();
    let close = next_message(&mut bob).await;
    assert!(matches!(&close, Message::Close(Some(f)) if u16::from(f.code) == 1011), "{close:?}");
    next_event(&mut ada, "tick").await;
    ada.send(Message::text("move east")).await.unwrap();
    let moved = next_event(&mut ada, "moved").await;
    assert_eq!((&moved["name"], &moved["to"]), (&"ada".into(), &"east".into()), "{moved}");
    next_event(&mut ada, "tick").await;

    // The last player leaving cancels the timer: the plugin says so itself.
    ada.send(Message::text("/pause")).await.unwrap();
    ada.send(Message::text("/timers")).await.unwrap();
    loop {
        match next_message(&mut ada).await {
            Message::Text(t) if t.as_str() == "" => break,
            Message::Text(t) if t.starts_with('{') || t.as_str() == "paused" => continue,
            other => panic!("expected no timers, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_plugin_that_imports_an_ungranted_interface_is_refused_naming_the_grant() {
    let route = format!("[[routes]]\npath = \"/game\"\nplugin = \"{}\"\n", plugin_path("game").display());
    for (grants, missing) in [("", "timers = true"), ("[routes.grants]\ntimers = true\n", "attachments = true")] {
        let base = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut config = wsplug::config::Config::parse(&format!("{route}{grants}"), "test config", base).unwrap();
        config.listen = "127.0.0.1:0".parse().unwrap();
        let e = format!("{:#}", wsplug::Server::bind(&config).await.err().expect("refused"));
        assert!(e.contains("game.wasm") && e.contains(missing) && e.contains("[routes.grants]"), "{e}");
    }
    let route = format!("[[routes]]\npath = \"/counter\"\nplugin = \"{}\"\n", plugin_path("counter").display());
    let base = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut config = wsplug::config::Config::parse(&route, "test config", base).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let e = format!("{:#}", wsplug::Server::bind(&config).await.err().expect("refused"));
    assert!(e.contains("wsplug:plugin/kv@0.2.0") && e.contains("kv = \"STORE-NAME\""), "{e}");
}

#[tokio::test]
async fn a_0_1_0_plugin_and_a_0_2_0_plugin_run_side_by_side() {
    let old = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/echo-0.1.0.wasm");
    let loaded = wsplug::plugin::PluginEngine::global().load(&old, None).unwrap();
    assert_eq!(loaded.contract, "0.1.0");
    assert_eq!(wsplug::plugin::PluginEngine::global().load(&plugin_path("game"), None).unwrap().contract, "0.2.0");
    let server = TestServer::start(&format!(
        "[[routes]]\npath = \"/old\"\nplugin = \"{}\"\n[[routes]]\npath = \"/game\"\nplugin = \"{}\"\n{GRANTED}",
        old.display(),
        plugin_path("game").display()
    ))
    .await;
    let mut echo = server.connect("/old").await;
    echo.send(Message::text("built against 0.1.0")).await.unwrap();
    assert_eq!(next_message(&mut echo).await, Message::text("built against 0.1.0"));
    let mut player = server.connect("/game?name=cy").await;
    assert_eq!(next_event(&mut player, "welcome").await["name"], "cy");
    next_event(&mut player, "tick").await;
}

/// Sends one text command and returns the text answer.
async fn ask(ws: &mut Client, command: &str) -> String {
    ws.send(Message::text(command)).await.unwrap();
    match next_message(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("{command}: expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn kv_counters_are_shared_by_instances_and_survive_a_restart() {
    let dir = TempDir::new("kv");
    let config = format!(
        "data_dir = \"{}\"\n[[routes]]\npath = \"/counter\"\nplugin = \"{}\"\ninstances = 2\n\
         [routes.grants]\nkv = \"counters\"\nkv_quota = \"4KiB\"\n",
        dir.0.display(),
        plugin_path("counter").display()
    );
    {
        let server = TestServer::start(&config).await;
        // Connections are pinned to instances by id: two in a row are on different instances.
        let mut a = server.connect("/counter").await;
        let mut b = server.connect("/counter").await;
        assert_eq!(ask(&mut a, "incr visits").await, "visits=1");
        assert_eq!(ask(&mut b, "incr visits").await, "visits=2");
        assert_eq!(ask(&mut a, "get visits").await, "visits=2");
        // The quota (4 KiB of keys and values): a write past it fails its call (1011), and
        // nothing of it is stored.
        let mut refused = None;
        for i in 0..200 {
            a.send(Message::text(format!("incr counter-with-a-long-name-{i:04}"))).await.unwrap();
            match next_message(&mut a).await {
                Message::Text(_) => continue,
                Message::Close(Some(f)) => {
                    assert_eq!(u16::from(f.code), 1011);
                    refused = Some(i);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        // The quota counts keys and values: "count/visits" and "2" take 13 bytes, each long counter
        // 35 + 1, so exactly (4096 - 13) / 36 = 113 of them fit and the 114th is refused.
        let refused = refused.expect("the quota refused a write");
        assert_eq!(refused, (4096 - 13) / 36, "refused at {refused}");
        let name = format!("counter-with-a-long-name-{refused:04}");
        assert_eq!(ask(&mut b, &format!("get {name}")).await, format!("{name}=0"), "the refused write is not stored");
        assert_eq!(ask(&mut b, "get visits").await, "visits=2");
        server.shutdown.shutdown();
        tokio::time::timeout(Duration::from_secs(10), server.task).await.expect("shut down").unwrap().unwrap();
    }
    // A new server on the same data directory: the counters are still there.
    let server = TestServer::start(&config).await;
    let mut c = server.connect("/counter").await;
    assert_eq!(ask(&mut c, "incr visits").await, "visits=3");
    assert!(std::fs::metadata(dir.join("counters.redb")).is_ok_and(|m| m.len() > 0));
}

/// A counter or a histogram's sum/count from the admin listener's `/metrics`, for `route`.
async fn metric(server: &TestServer, name: &str, route: &str) -> f64 {
    let request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let scrape = wsplug_tests::http_exchange(server.admin.expect("an admin listener"), request).await;
    scrape
        .lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("route=\"{route}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_idle_instance_hibernates_and_the_next_message_wakes_it_with_its_state() {
    let server = TestServer::start(&format!(
        "admin = \"127.0.0.1:0\"\n[[routes]]\npath = \"/chat\"\nplugin = \"{}\"\nhibernate_after = \"300ms\"\n",
        plugin_path("chat").display()
    ))
    .await;
    let mut ada = server.connect("/chat?nick=ada").await;
    next_event(&mut ada, "welcome").await;
    ada.send(Message::text("said before sleeping")).await.unwrap();
    next_event(&mut ada, "message").await;

    // Idle: the instance is dropped, its state kept; the connection stays open (pings answered
    // by the server, not the plugin).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&server, "wsplug_plugin_hibernations_total", "/chat").await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no hibernation within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ada.send(Message::Ping(b"still there?".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(10), ada.next()).await.expect("a pong").unwrap().unwrap();
    assert_eq!(pong, Message::Pong(b"still there?".to_vec().into()));

    // A newcomer wakes it: the restored state has ada and her message.
    let mut bob = server.connect("/chat?nick=bob").await;
    let welcome = next_event(&mut bob, "welcome").await;
    assert_eq!(welcome["members"], serde_json::json!(["ada", "bob"]), "{welcome}");
    assert!(welcome["history"].to_string().contains("said before sleeping"), "{welcome}");
    // And ada, never re-attached, is served by the woken instance as before.
    ada.send(Message::text("good morning")).await.unwrap();
    let said = next_event(&mut bob, "message").await;
    assert_eq!((&said["nick"], &said["text"]), (&"ada".into(), &"good morning".into()), "{said}");

    let wakes = metric(&server, "wsplug_plugin_wake_seconds_count", "/chat").await;
    let seconds = metric(&server, "wsplug_plugin_wake_seconds_sum", "/chat").await;
    assert!(wakes >= 1.0, "woken {wakes} times");
    eprintln!("wake latency (instantiate + restore, the Rust chat): {:.0} µs on average", seconds / wakes * 1e6);
    assert_eq!(metric(&server, "wsplug_plugin_rebuilds_total", "/chat").await, 0.0, "a wake is not a rebuild");
}

/// The body of the child servers of the memory test (ignored otherwise).
#[tokio::test]
#[ignore = "the child server of a_hibernated_route_holds_only_its_state"]
async fn child_server() {
    wsplug_tests::run_child_server("WSPLUG_PLATFORM_CHILD").await;
}

/// Hibernation gives an idle route's memory back: 100 chat routes with a connection each, asleep
/// against awake, in two server processes of their own. (`WSPLUG_HIBERNATE_PLUGIN=chat-js`
/// measures another chat, once plugins/build-all.sh has built it.)
#[tokio::test]
async fn a_hibernated_route_holds_only_its_state() {
    const ROUTES: usize = 100;
    let plugin = std::env::var("WSPLUG_HIBERNATE_PLUGIN").unwrap_or_else(|_| "chat".into());
    let config = |hibernate: &str| {
        let mut config = String::from("listen = \"127.0.0.1:0\"\n");
        for i in 0..ROUTES {
            config.push_str(&format!(
                "[[routes]]\npath = \"/chat{i}\"\nplugin = \"{}\"\nhibernate_after = \"{hibernate}\"\n",
                plugin_path(&plugin).display()
            ));
        }
        config
    };
    let mut rss = Vec::new();
    for hibernate in ["0s", "200ms"] {
        let server = wsplug_tests::ServerProcess::start(&config(hibernate), "WSPLUG_PLATFORM_CHILD");
        let mut clients = Vec::new();
        for i in 0..ROUTES {
            let url = format!("ws://{}/chat{i}?nick=n{i}", server.addr);
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
            next_event(&mut ws, "welcome").await;
            clients.push(ws);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rss.push(server.rss());
        // Every room answers after the night (the first message wakes its instance).
        for (i, ws) in clients.iter_mut().enumerate() {
            ws.send(Message::text(format!("morning {i}"))).await.unwrap();
            assert_eq!(next_event(ws, "message").await["text"], format!("morning {i}"));
        }
    }
    let (awake, asleep) = (rss[0], rss[1]);
    eprintln!(
        "{ROUTES} routes of {plugin} with a connection each: {} KiB awake, {} KiB hibernated: {} KiB a route saved",
        awake / 1024,
        asleep / 1024,
        awake.saturating_sub(asleep) / ROUTES / 1024
    );
    assert!(asleep < awake, "hibernation saved nothing: {asleep} bytes asleep, {awake} awake");
}

/// A plugin that loops on the platform's host calls cannot make the server hold memory beyond
/// their bounds: the call's pending writes stay within the store's quota, one attachment per
/// connection, no record of cancelling what was never set, `max_timers` timers. Measured in a
/// server process of its own, with a bystander served meanwhile.
#[tokio::test]
async fn platform_calls_in_a_loop_hold_only_their_bounds() {
    let dir = TempDir::new("bomb");
    let server = wsplug_tests::ServerProcess::start(
        &format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[[routes]]\npath = \"/bomb\"\nplugin = \"{}\"\n\
             [routes.sandbox]\ncpu_deadline = \"10s\"\n[routes.grants]\ntimers = true\nmax_timers = 10\n\
             attachments = true\nkv = \"bomb\"\nkv_quota = \"1MiB\"\n[[routes]]\npath = \"/echo\"\nkind = \"echo\"\n",
            dir.0.display(),
            plugin_path("bomb").display()
        ),
        "WSPLUG_PLATFORM_CHILD",
    );
    let (mut bomb, _) = tokio_tungstenite::connect_async(format!("ws://{}/bomb", server.addr)).await.unwrap();
    let (mut bystander, _) = tokio_tungstenite::connect_async(format!("ws://{}/echo", server.addr)).await.unwrap();
    let before = server.rss();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (rss, done) = (server.rss_reader(), done.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak.max(rss())
        })
    };
    // 1 MiB of quota holds 15 values of 64 KiB and their keys; the 16th is refused.
    assert!(ask(&mut bomb, "kv").await.starts_with("kv refused after 15: this call's writes"));
    assert_eq!(ask(&mut bomb, "attach").await, "attached");
    assert_eq!(ask(&mut bomb, "cancel").await, "cancelled");
    assert!(ask(&mut bomb, "timers").await.starts_with("timers refused after 10: "));
    assert_eq!(ask(&mut bystander, "still served").await, "still served");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    // Unbounded, the attachments alone would have been 320 MB and the cancellations 13 MB (20,000
    // attachments, not more: each copies 16 KiB, and a debug build under a parallel test run must
    // finish them within a step).
    eprintln!("server RSS {} MiB before, {} MiB at the peak", before >> 20, peak >> 20);
    assert!(peak < before + (48 << 20), "peak RSS {} MiB over {} MiB before", peak >> 20, before >> 20);
}
