//! permessage-deflate (RFC 7692) end to end, on loopback: negotiation in the handshake, compressed
//! messages both ways on the native and the plugin route, the threshold, a route that does not
//! offer it, and the bounds (RSV1 where it does not belong, a message that inflates past the limit).
//! Autobahn's groups 12 and 13 (in `.ci/run`) cover the parameter combinations in depth.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsplug::protocol::deflate::{self, DeflateParams};
use wsplug::protocol::frame::encode_client_frame;
use wsplug::protocol::{Decoder, Event, FrameHeader, Limits, Message};
use wsplug_tests::{STEP, TestServer};

const CONFIG: &str = r#"
[limits]
max_message_size = "1MiB"
max_frame_size = "1MiB"

[[routes]]
path = "/native"
kind = "echo"
[routes.deflate]
threshold = 32

[[routes]]
path = "/plugin"
plugin = "target/plugins/echo.wasm"
[routes.deflate]
threshold = 32
server_max_window_bits = 12

[[routes]]
path = "/plain"
kind = "echo"
"#;

const KEY: [u8; 4] = [1, 2, 3, 4];

/// A client that offers `offer` and decodes what the server sends with what was agreed.
struct DeflateClient {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    /// The server's `Sec-WebSocket-Extensions` answer, if any.
    agreed: Option<String>,
}

impl DeflateClient {
    async fn connect(server: &TestServer, path: &str, offer: &str) -> Self {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: {offer}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(tokio::time::timeout(STEP, stream.read_buf(&mut buf)).await.unwrap().unwrap() > 0);
        };
        let head = String::from_utf8_lossy(&buf.split_to(end)).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let agreed = head.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: ")).map(str::to_owned);
        // The client's view: what the server's answer means for the server's messages.
        let params =
            agreed.as_deref().map(|value| DeflateParams::from_response(value).expect("a valid answer").as_client());
        let limits = Limits { max_frame_size: 64 << 20, max_message_size: 64 << 20 };
        Self { stream, buf, decoder: Decoder::client(limits).with_deflate(params.as_ref()), agreed }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next event, and whether its (first) frame had RSV1 set.
    async fn next(&mut self) -> (Event, bool) {
        let mut rsv1 = None;
        loop {
            if rsv1.is_none() && !self.decoder.mid_message() {
                rsv1 = FrameHeader::parse_with_rsv1(&self.buf, false, true).ok().flatten().map(|h| h.rsv1);
            }
            if let Some(event) = self.decoder.decode(&mut self.buf).expect("valid frames from the server") {
                return (event, rsv1.unwrap_or(false));
            }
            let n =
                tokio::time::timeout(STEP, self.stream.read_buf(&mut self.buf)).await.expect("read in time").unwrap();
            assert!(n > 0, "server closed the connection");
        }
    }
}

/// A compressed client frame (RSV1 set).
fn compressed(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = encode_client_frame(true, opcode, &deflate::compress(payload, 15), KEY);
    frame[0] |= 0x40;
    frame
}

fn text(payload: &[u8]) -> Event {
    Event::Message(Message::Text(bytes::Bytes::copy_from_slice(payload)))
}

#[tokio::test]
async fn compressed_messages_are_echoed_compressed_on_both_routes() {
    let server = TestServer::start(CONFIG).await;
    for (path, answer) in [
        ("/native", "permessage-deflate; server_no_context_takeover"),
        ("/plugin", "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"),
    ] {
        let mut ws = DeflateClient::connect(&server, path, "permessage-deflate; client_max_window_bits").await;
        assert_eq!(ws.agreed.as_deref(), Some(answer), "{path}");
        let long = "κόσμε, compress me! ".repeat(200);
        ws.send(&compressed(0x1, long.as_bytes())).await;
        let (echo, rsv1) = ws.next().await;
        assert!(echo == text(long.as_bytes()) && rsv1, "{path}: compressed both ways (RSV1 {rsv1})");
        // Below the threshold the server sends it plain, whichever way it came.
        ws.send(&compressed(0x1, b"short")).await;
        assert_eq!(ws.next().await, (text(b"short"), false), "{path}");
        ws.send(&encode_client_frame(true, 0x1, b"plain and short", KEY)).await;
        assert_eq!(ws.next().await, (text(b"plain and short"), false), "{path}");
        // A fragmented compressed message: RSV1 on its first frame only.
        let body: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
        let packed = deflate::compress(&body, 15);
        let (a, b) = packed.split_at(packed.len() / 2);
        let mut first = encode_client_frame(false, 0x2, a, KEY);
        first[0] |= 0x40;
        ws.send(&first).await;
        ws.send(&encode_client_frame(true, 0x0, b, KEY)).await;
        let (echo, rsv1) = ws.next().await;
        assert!(echo == Event::Message(Message::Binary(body.into())) && rsv1, "{path}: fragmented (RSV1 {rsv1})");
    }
}

#[tokio::test]
async fn a_route_without_deflate_declines_it_and_refuses_rsv1() {
    let server = TestServer::start(CONFIG).await;
    let mut ws = DeflateClient::connect(&server, "/plain", "permessage-deflate").await;
    assert_eq!(ws.agreed, None, "no extension header: the connection goes on uncompressed");
    ws.send(&compressed(0x1, b"hello")).await;
    match ws.next().await.0 {
        Event::Close(Some(frame)) => assert_eq!(frame.code.0, 1002),
        other => panic!("expected close 1002, got {other:?}"),
    }
    // A bad offer is declined, not refused.
    let ws = DeflateClient::connect(&server, "/native", "permessage-deflate; server_max_window_bits=8").await;
    assert_eq!(ws.agreed, None);
}

#[tokio::test]
async fn a_message_that_inflates_past_the_limit_is_closed_with_1009() {
    let server = TestServer::start(CONFIG).await;
    for path in ["/native", "/plugin"] {
        let mut ws = DeflateClient::connect(&server, path, "permessage-deflate").await;
        // 8 MiB of zeros in about 8 KiB: the limit is 1 MiB.
        let bomb = compressed(0x2, &vec![0u8; 8 << 20]);
        assert!(bomb.len() < 100 << 10, "{} bytes", bomb.len());
        ws.send(&bomb).await;
        let close = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed in time").0;
        match close {
            Event::Close(Some(frame)) => assert_eq!(frame.code.0, 1009, "{path}"),
            other => panic!("{path}: expected close 1009, got {other:?}"),
        }
    }
}
