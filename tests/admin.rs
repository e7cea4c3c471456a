//! The admin listener (`admin = "..."`): `/metrics` is scraped while connections open and close,
//! messages flow, a plugin traps and the config is reloaded, and its figures follow; `/healthz`
//! and `/readyz` answer, and `/readyz` turns 503 when the server shuts down.
//!
//! The registry is process-wide, so this test uses route paths of its own, and compares global
//! figures (refusals, reloads) before and after rather than with fixed values.

use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use wsplug_tests::{TempDir, TestServer, assert_echo, http_exchange, next_message, status_of};

/// The value of one sample (`name{labels}`) in a scrape; 0 when absent.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn get(server: &TestServer, path: &str) -> (u16, String) {
    let admin = server.admin.expect("admin listener bound");
    let response = http_exchange(admin, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status_of(&response), body)
}

/// Scrapes until `series` reaches `want` (the server counts a close after the client has seen it).
async fn wait_for(server: &TestServer, series: &str, want: f64) -> String {
    for _ in 0..100 {
        let (_, scrape) = get(server, "/metrics").await;
        if sample(&scrape, series) == want {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, scrape) = get(server, "/metrics").await;
    panic!("{series} never reached {want}: {}", sample(&scrape, series));
}

#[tokio::test]
async fn metrics_follow_connections_messages_traps_and_reloads() {
    let dir = TempDir::new("admin");
    let config = dir.join("wsplug.toml");
    let hostile = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/hostile.wasm");
    std::fs::write(
        &config,
        format!(
            "admin = \"127.0.0.1:0\"\n\n[[routes]]\npath = \"/admin-echo\"\nkind = \"echo\"\n\n\
             [[routes]]\npath = \"/admin-hostile\"\nplugin = {:?}\n",
            hostile.display().to_string()
        ),
    )
    .unwrap();
    let server = TestServer::from_file(&config, false).await;
    assert_eq!(get(&server, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(&server, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(get(&server, "/nothing").await.0, 404);
    let (status, before) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    assert!(before.contains("# TYPE wsplug_connections_open gauge"), "{before}");

    // Connections and messages.
    let mut ws = server.connect("/admin-echo").await;
    for text in ["one", "two", "three"] {
        assert_echo(&mut ws, Message::text(text)).await;
    }
    let scrape = wait_for(&server, r#"wsplug_messages_in_total{route="/admin-echo"}"#, 3.0).await;
    assert_eq!(sample(&scrape, r#"wsplug_connections_open{route="/admin-echo"}"#), 1.0);
    assert_eq!(sample(&scrape, r#"wsplug_connections_total{route="/admin-echo"}"#), 1.0);
    assert_eq!(sample(&scrape, r#"wsplug_bytes_in_total{route="/admin-echo"}"#), 11.0);
    // The 101 and three echoes.
    assert_eq!(sample(&scrape, r#"wsplug_messages_out_total{route="/admin-echo"}"#), 4.0);
    ws.close(None).await.unwrap();
    let scrape = wait_for(&server, r#"wsplug_connections_open{route="/admin-echo"}"#, 0.0).await;
    assert_eq!(sample(&scrape, r#"wsplug_closes_total{route="/admin-echo",code="1005"}"#), 1.0, "{scrape}");

    // A refused handshake, by status.
    let refused = r#"wsplug_handshake_refusals_total{status="404"}"#;
    let was = sample(&scrape, refused);
    http_exchange(server.addr, wsplug_tests::upgrade_request("/no-such-route").as_bytes()).await;
    assert!(sample(&get(&server, "/metrics").await.1, refused) > was);

    // A trap: counted by kind, then the rebuild for the next event, and the calls.
    let mut ws = server.connect("/admin-hostile").await;
    ws.send(Message::text("panic")).await.unwrap();
    assert!(matches!(next_message(&mut ws).await, Message::Close(Some(f)) if u16::from(f.code) == 1011));
    let mut ws = server.connect("/admin-hostile").await;
    assert_echo(&mut ws, Message::text("after")).await;
    let scrape = get(&server, "/metrics").await.1;
    assert_eq!(sample(&scrape, r#"wsplug_plugin_failures_total{route="/admin-hostile",kind="trap"}"#), 1.0);
    assert_eq!(sample(&scrape, r#"wsplug_plugin_rebuilds_total{route="/admin-hostile"}"#), 1.0);
    assert!(sample(&scrape, r#"wsplug_plugin_calls_total{route="/admin-hostile"}"#) >= 4.0, "2 opens, 2 messages");
    assert!(sample(&scrape, r#"wsplug_plugin_batch_seconds_count{route="/admin-hostile"}"#) >= 2.0);

    // Reloads, by outcome: a good config, then a broken one.
    let (ok, refused) = (r#"wsplug_reloads_total{outcome="ok"}"#, r#"wsplug_reloads_total{outcome="refused"}"#);
    let (ok_before, refused_before) = (sample(&scrape, ok), sample(&scrape, refused));
    server.reload.as_ref().unwrap().reload_all();
    wait_for(&server, ok, ok_before + 1.0).await;
    std::fs::write(&config, "[[routes]]\npath = \"bad\"\n").unwrap();
    server.reload.as_ref().unwrap().reload_all();
    wait_for(&server, refused, refused_before + 1.0).await;

    // Shutting down: not ready any more, still alive while it drains.
    server.shutdown.shutdown();
    for _ in 0..50 {
        if get(&server, "/readyz").await.0 == 503 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("/readyz still 200 after shutdown");
}
