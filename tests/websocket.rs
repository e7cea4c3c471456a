//! Messages and every close path over real loopback connections, driven by an independent client
//! (tokio-tungstenite) and, where bytes matter, by a raw client.

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsplug::protocol::Event;
use wsplug_tests::{Seen, TestServer, assert_echo, next_message};

#[tokio::test]
async fn text_and_binary_of_boundary_sizes_echo() {
    let server = TestServer::echo("").await;
    let mut ws = server.connect("/echo").await;
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 100_000] {
        let text: String = "é".repeat(len / 2) + &"x".repeat(len % 2);
        assert_echo(&mut ws, Message::text(text)).await;
        let binary: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
        assert_echo(&mut ws, Message::binary(binary)).await;
    }
}

#[tokio::test]
async fn sixteen_mib_message_echoes() {
    let server = TestServer::echo("").await;
    let mut ws = server.connect("/echo").await;
    let big: Vec<u8> = (0..16 << 20).map(|i: usize| (i ^ (i >> 8)) as u8).collect();
    assert_echo(&mut ws, Message::binary(big)).await;
}

#[tokio::test]
async fn fragmented_message_with_ping_between_fragments() {
    let server = TestServer::echo("").await;
    let mut raw = server.raw("/echo").await;
    raw.send_frame(false, 0x1, "frag".as_bytes()).await;
    raw.send_frame(true, 0x9, b"mid").await;
    raw.send_frame(false, 0x0, &"mënt".as_bytes()[..2]).await;
    raw.send_frame(true, 0x0, &"mënt".as_bytes()[2..]).await;
    assert_eq!(raw.next().await, Seen::Event(Event::Pong(Bytes::from_static(b"mid"))));
    assert_eq!(raw.next().await, Seen::Event(Event::Message(wsplug::protocol::Message::Text(Bytes::from("fragmënt")))));
}

#[tokio::test]
async fn rfc_5_5_2_ping_is_answered_with_same_payload() {
    let server = TestServer::echo("").await;
    let mut ws = server.connect("/echo").await;
    ws.send(Message::Ping(Bytes::from_static(b"are you there"))).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut ws))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::Pong(Bytes::from_static(b"are you there")));
}

#[tokio::test]
async fn rfc_5_5_3_unsolicited_pong_is_ignored() {
    let server = TestServer::echo("").await;
    let mut ws = server.connect("/echo").await;
    ws.send(Message::Pong(Bytes::from_static(b"hi"))).await.unwrap();
    assert_echo(&mut ws, Message::text("still here")).await;
}

#[tokio::test]
async fn rfc_7_client_close_is_echoed_and_tcp_closed() {
    let server = TestServer::echo("").await;
    let mut raw = server.raw("/echo").await;
    raw.send_frame(true, 0x8, &[0x0F, 0xA0, b'b', b'y', b'e']).await; // 4000 "bye"
    match raw.next().await {
        Seen::Event(Event::Close(Some(f))) => assert_eq!(f.code.0, 4000),
        other => panic!("expected the echoed close, got {other:?}"),
    }
    assert_eq!(raw.next().await, Seen::Eof);
}

#[tokio::test]
async fn close_without_code_is_answered_without_code() {
    let server = TestServer::echo("").await;
    let mut raw = server.raw("/echo").await;
    raw.send_frame(true, 0x8, &[]).await;
    assert_eq!(raw.next().await, Seen::Event(Event::Close(None)));
    assert_eq!(raw.next().await, Seen::Eof);
}

#[tokio::test]
async fn messages_before_close_are_delivered_first() {
    let server = TestServer::echo("").await;
    let mut ws = server.connect("/echo").await;
    ws.send(Message::text("last words")).await.unwrap();
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "done".into() }))).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("last words"));
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("expected close, got {other:?}"),
    }
}

#[tokio::test]
async fn protocol_violations_get_their_close_codes() {
    let server = TestServer::echo("").await;
    let cases: [(&str, Vec<u8>, u16); 10] = [
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        (
            "reserved bit",
            wsplug::protocol::frame::encode_client_frame(true, 0x1, b"x", [1, 2, 3, 4])
                .into_iter()
                .enumerate()
                .map(|(i, b)| if i == 0 { b | 0x40 } else { b })
                .collect(),
            1002,
        ),
        ("unknown opcode", wsplug::protocol::frame::encode_client_frame(true, 0x3, b"", [1, 2, 3, 4]), 1002),
        ("continuation first", wsplug::protocol::frame::encode_client_frame(true, 0x0, b"x", [1, 2, 3, 4]), 1002),
        ("fragmented ping", wsplug::protocol::frame::encode_client_frame(false, 0x9, b"x", [1, 2, 3, 4]), 1002),
        ("invalid utf-8", wsplug::protocol::frame::encode_client_frame(true, 0x1, &[0xC0, 0xAF], [1, 2, 3, 4]), 1007),
        ("close with 1 byte", wsplug::protocol::frame::encode_client_frame(true, 0x8, &[3], [1, 2, 3, 4]), 1002),
        (
            "close with code 1006",
            wsplug::protocol::frame::encode_client_frame(true, 0x8, &[0x03, 0xEE], [1, 2, 3, 4]),
            1002,
        ),
        // §5.2: lengths in their minimal encoding only (5 in the 16-bit form, 300 in the 64-bit form).
        ("non-minimal 16-bit length", [&[0x81, 0xFE, 0, 5, 0, 0, 0, 0][..], b"hello"].concat(), 1002),
        (
            "non-minimal 64-bit length",
            [&[0x82, 0xFF, 0, 0, 0, 0, 0, 0, 1, 44, 0, 0, 0, 0][..], &[0; 300]].concat(),
            1002,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut raw = server.raw("/echo").await;
        raw.send_raw(&bytes).await;
        assert_eq!(raw.expect_close().await, Some(code), "{name}");
    }
}

#[tokio::test]
async fn oversize_message_is_1009() {
    let server = TestServer::echo("[limits]\nmax_frame_size = \"64KiB\"\nmax_message_size = \"100KiB\"").await;
    let mut raw = server.raw("/echo").await;
    raw.send_frame(true, 0x2, &vec![0; 65 << 10]).await;
    assert_eq!(raw.expect_close().await, Some(1009));
    let mut raw = server.raw("/echo").await;
    raw.send_frame(false, 0x2, &vec![0; 60 << 10]).await;
    raw.send_frame(true, 0x0, &vec![0; 60 << 10]).await;
    assert_eq!(raw.expect_close().await, Some(1009));
}

#[tokio::test]
async fn idle_connection_is_pinged_then_closed_with_1001() {
    let server = TestServer::echo("[limits]\nping_interval = \"150ms\"\nidle_timeout = \"400ms\"").await;
    let mut raw = server.raw("/echo").await;
    assert!(matches!(raw.next().await, Seen::Event(Event::Ping(_))), "keepalive ping first");
    assert_eq!(raw.expect_close().await, Some(1001));
}

#[tokio::test]
async fn answering_pings_keeps_the_connection_alive() {
    let server = TestServer::echo("[limits]\nping_interval = \"100ms\"\nidle_timeout = \"250ms\"").await;
    let mut ws = server.connect("/echo").await;
    // tokio-tungstenite answers pings while we read; after well over the idle timeout it still echoes.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
    while tokio::time::Instant::now() < deadline {
        assert_echo(&mut ws, Message::text("tick")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn graceful_shutdown_closes_clients_with_1001() {
    let server = TestServer::echo("").await;
    let mut a = server.connect("/echo").await;
    let mut b = server.raw("/echo").await;
    assert_echo(&mut a, Message::text("before")).await;
    server.shutdown.shutdown();
    match next_message(&mut a).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected 1001, got {other:?}"),
    }
    assert_eq!(b.expect_close().await, Some(1001));
    drop(a);
    let result =
        tokio::time::timeout(Duration::from_secs(10), server.task).await.expect("server stops in bounded time");
    assert_eq!(result.unwrap(), Ok(()));
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err(), "listener is closed");
}

/// Replies are written as soon as the socket takes them and queued (then written partly, with
/// `writev`, as the socket drains) while the client is not reading. Whatever the mix, the client
/// must see every frame whole and in order.
#[tokio::test]
async fn replies_stay_whole_and_ordered_while_the_socket_fills() {
    let server = TestServer::echo("").await;
    let mut raw = server.raw("/echo").await;
    const N: usize = 1500;
    for i in 0..N {
        let mut payload = vec![b'.'; 4000];
        payload[..8].copy_from_slice(format!("{i:08}").as_bytes());
        raw.send_frame(true, 0x2, &payload).await;
        if i % 4 == 0 {
            // Separate reads on the server side, so that most replies take the fast path.
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    for i in 0..N {
        match raw.next().await {
            Seen::Event(Event::Message(wsplug::protocol::Message::Binary(p))) => {
                assert_eq!(p.len(), 4000);
                assert_eq!(&p[..8], format!("{i:08}").as_bytes(), "reply {i} in order");
            }
            other => panic!("reply {i}: {other:?}"),
        }
    }
}
