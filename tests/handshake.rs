//! The opening handshake over real loopback connections (RFC 6455 §4.2): every refusal gets its
//! HTTP status, and a valid request gets 101 with the right accept key.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsplug_tests::{TestServer, http_exchange, status_of, upgrade_request};

#[tokio::test]
async fn rfc_4_2_2_valid_request_gets_101_with_accept_key() {
    let server = TestServer::echo("").await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(upgrade_request("/echo").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]);
    assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{resp}");
    assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{resp}");
}

#[tokio::test]
async fn request_split_over_many_writes_is_accepted() {
    let server = TestServer::echo("").await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for chunk in upgrade_request("/echo").as_bytes().chunks(7) {
        stream.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101 "));
}

async fn status(server: &TestServer, request: &str) -> u16 {
    status_of(&http_exchange(server.addr, request.as_bytes()).await)
}

#[tokio::test]
async fn handshake_errors_get_their_statuses() {
    let server = TestServer::echo("").await;
    let good = upgrade_request("/echo");
    assert_eq!(status(&server, &upgrade_request("/nowhere")).await, 404, "unknown path");
    assert_eq!(status(&server, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await, 426, "plain GET on a route");
    assert_eq!(status(&server, &good.replace("Version: 13", "Version: 8")).await, 426, "wrong version");
    assert_eq!(status(&server, &good.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")).await, 400, "short key");
    assert_eq!(status(&server, &good.replace("Host: 127.0.0.1\r\n", "")).await, 400, "no Host");
    assert_eq!(
        status(&server, &good.replace("Connection: Upgrade", "Connection: close")).await,
        400,
        "no upgrade token"
    );
    assert_eq!(status(&server, &good.replacen("GET", "POST", 1)).await, 405, "POST");
    assert_eq!(status(&server, &good.replacen("HTTP/1.1", "HTTP/1.0", 1)).await, 505, "HTTP/1.0");
    assert_eq!(status(&server, "\x16\x03\x01garbage\r\n\r\n").await, 400, "garbage");
    assert_eq!(status(&server, &good.replace("\r\n", "\n")).await, 400, "bare LF line endings");
    let with_body = |header: &str| good.replacen("\r\n\r\n", &format!("\r\n{header}\r\n\r\n"), 1);
    assert_eq!(status(&server, &with_body("Content-Length: 2")).await, 400, "upgrade with a body");
    assert_eq!(status(&server, &with_body("Transfer-Encoding: chunked")).await, 400, "upgrade with chunked body");
}

#[tokio::test]
async fn wrong_version_response_names_the_supported_version() {
    let server = TestServer::echo("").await;
    let resp =
        http_exchange(server.addr, upgrade_request("/echo").replace("Version: 13", "Version: 7").as_bytes()).await;
    assert!(resp.contains("Sec-WebSocket-Version: 13\r\n"), "{resp}");
}

#[tokio::test]
async fn oversized_head_and_too_many_headers_are_431() {
    let server = TestServer::echo("").await;
    let big = upgrade_request("/echo").replace("\r\n\r\n", &format!("\r\nX-Pad: {}\r\n\r\n", "a".repeat(9000)));
    assert_eq!(status(&server, &big).await, 431);
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = upgrade_request("/echo").replace("\r\n\r\n", &format!("\r\n{many}\r\n"));
    assert_eq!(status(&server, &req).await, 431);
}

#[tokio::test]
async fn never_ending_head_is_cut_off_with_431() {
    let server = TestServer::echo("").await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /echo HTTP/1.1\r\n").await.unwrap();
    // Keep sending header lines; the server must answer 431 and close once 8 KiB have arrived.
    let line = b"X-Forever: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut sent = 0;
    while sent < 1 << 20 {
        if stream.write_all(line).await.is_err() {
            break;
        }
        sent += line.len();
        if sent > 16 << 10 {
            break;
        }
    }
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut resp)).await;
    assert_eq!(status_of(&String::from_utf8_lossy(&resp)), 431);
}

#[tokio::test]
async fn slow_handshake_times_out_with_408() {
    let server = TestServer::echo("[limits]\nhandshake_timeout = \"200ms\"").await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut resp)).await.unwrap().unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&resp)), 408);
}

#[tokio::test]
async fn route_subprotocol_is_chosen_from_the_offer() {
    let server =
        TestServer::start("[[routes]]\npath = \"/p\"\nkind = \"echo\"\nsubprotocols = [\"echo.v2\", \"echo.v1\"]\n")
            .await;
    let req = upgrade_request("/p").replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: other, echo.v1, echo.v2\r\n\r\n");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]);
    assert!(resp.contains("Sec-WebSocket-Protocol: echo.v2\r\n"), "route preference wins: {resp}");
}
