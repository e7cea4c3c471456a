//! Limits that keep one client from hurting the others: the connection cap, a frame header that
//! claims 2^63 bytes, a never-ending request head (in handshake.rs), and a client that stops
//! reading while the server writes. In each case other connections keep being served.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use wsplug_tests::{TestServer, assert_echo, http_exchange, status_of, upgrade_request};

#[tokio::test]
async fn connection_limit_answers_503_and_frees_slots() {
    let server = TestServer::echo("[limits]\nmax_connections = 2").await;
    let mut a = server.connect("/echo").await;
    let b = server.connect("/echo").await;
    let resp = http_exchange(server.addr, upgrade_request("/echo").as_bytes()).await;
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert!(resp.contains("Retry-After:"), "{resp}");
    assert_echo(&mut a, Message::text("still served")).await;
    drop(b);
    // The slot comes back once the dropped connection's task has ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match server.try_connect("/echo").await {
            Ok(mut c) => {
                assert_echo(&mut c, Message::text("new slot")).await;
                break;
            }
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("slot never freed: {e}"),
        }
    }
}

/// Sockets that connect and never send hold places in the handshake pool, not connection slots,
/// and the oldest of them make room for newcomers (408, or 503 if younger than a second): however many there are, real clients get
/// in, and the open connections are served meanwhile.
#[tokio::test]
async fn silent_sockets_cannot_lock_out_real_clients() {
    let server = TestServer::echo("[limits]\nmax_connections = 40\nmax_handshakes = 16").await;
    let mut first = server.connect("/echo").await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let mut clients = Vec::new();
    for _ in 0..30 {
        clients.push(server.connect("/echo").await);
    }
    assert_echo(&mut first, Message::text("served throughout")).await;
    for client in &mut clients {
        assert_echo(client, Message::text("got in")).await;
    }
    // The silent sockets that made room were answered 408 (or 503) and closed: all but the few (at most
    // `max_handshakes`) still waiting in the pool.
    let dropped = wsplug_tests::dropped_silent(silent, Duration::from_millis(300)).await;
    assert!(dropped >= 200 - 16, "only {dropped} silent sockets were dropped");
}

#[tokio::test]
async fn header_claiming_2_pow_63_bytes_is_refused_without_buffering() {
    let server = TestServer::echo("").await;
    let mut other = server.connect("/echo").await;
    let mut raw = server.raw("/echo").await;
    // 64-bit length 0x7FFF_FFFF_FFFF_FFFF, masked, no payload.
    raw.send_raw(&[0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4]).await;
    assert_eq!(raw.expect_close().await, Some(1009));
    // And with the top bit set it is a protocol error.
    let mut raw = server.raw("/echo").await;
    raw.send_raw(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]).await;
    assert_eq!(raw.expect_close().await, Some(1002));
    assert_echo(&mut other, Message::text("unaffected")).await;
}

#[tokio::test]
async fn client_that_stops_reading_is_backpressured_not_buffered() {
    let server = TestServer::echo("[limits]\noutbound_queue_bytes = \"1MiB\"\nwrite_timeout = \"2s\"").await;
    let mut other = server.connect("/echo").await;
    let mut raw = server.raw("/echo").await;
    // Send 64 KiB messages and never read the echoes. The server must stop reading once its queue
    // and the socket buffers are full, so our writes stall long before we have pushed 256 MiB.
    let frame = wsplug::protocol::frame::encode_client_frame(true, 0x2, &vec![7u8; 64 << 10], [1, 2, 3, 4]);
    let mut sent = 0usize;
    while sent < 256 << 20 {
        match tokio::time::timeout(Duration::from_millis(500), raw.stream.write_all(&frame)).await {
            Ok(Ok(())) => sent += frame.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    assert!(sent < 128 << 20, "server kept reading {} MiB from a client that never reads", sent >> 20);
    // Everyone else is served meanwhile.
    assert_echo(&mut other, Message::text("unaffected")).await;
    // The stuck writer gives up after write_timeout and the connection is dropped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut sink = vec![0u8; 1 << 20];
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        loop {
            match raw.stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "connection ends after the write timeout");
}
