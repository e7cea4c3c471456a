//! `wsplug connect URL`: a line-based WebSocket client for trying a route, so that a plugin author
//! needs no other tool (it works like `websocat`).
//!
//! Each line read from stdin is sent as a text message; each text message received is printed as
//! a line on stdout (a binary one as `<binary: N bytes>` and its hex). Pings are answered. The
//! handshake, the server's close and anything unexpected are reported on stderr. At the end of
//! stdin the client closes with 1000 and waits for the server's close. It speaks the server's own
//! protocol crate, in client mode: masked frames, the accept key checked.

use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::close::{CloseCode, CloseFrame, close_payload};
use crate::protocol::frame::encode_client_frame;
use crate::protocol::handshake::accept_key;
use crate::protocol::{Decoder, Event, Limits, Message};

/// How long to wait for the server's close after ours.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A `ws://` URL taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port` to connect to (port 80 when the URL has none).
    pub authority: String,
    /// The request target: path and query.
    pub resource: String,
}

/// Parses `ws://HOST[:PORT][/PATH][?QUERY]`.
pub fn parse_url(url: &str) -> Result<Target, String> {
    if url.starts_with("wss://") {
        return Err("wss:// is not supported yet: this server has no TLS (use ws://)".into());
    }
    let rest = url.strip_prefix("ws://").ok_or_else(|| format!("{url:?} is not a ws:// URL"))?;
    let (authority, resource) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
    let authority = if has_port { authority.to_owned() } else { format!("{authority}:80") };
    Ok(Target { authority, resource })
}

/// Random bytes from the standard library's per-process hashing keys (a client's key and masks
/// need to be unpredictable to intermediaries, not cryptographically strong).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}

fn mask() -> [u8; 4] {
    (random_u64() as u32).to_ne_bytes()
}

/// Connects, then relays stdin lines and the server's messages until either side closes. The
/// result is the process's exit: Ok when the connection closed normally (1000 or 1001).
pub async fn run(url: &str, protocols: &[String]) -> anyhow::Result<()> {
    let target = parse_url(url).map_err(anyhow::Error::msg)?;
    let mut stream = TcpStream::connect(&target.authority)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", target.authority))?;
    let key = base64::engine::general_purpose::STANDARD
        .encode([random_u64().to_ne_bytes(), random_u64().to_ne_bytes()].concat());
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        target.resource, target.authority
    );
    if !protocols.is_empty() {
        request.push_str(&format!("Sec-WebSocket-Protocol: {}\r\n", protocols.join(", ")));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;

    // The response head, then whatever frames came with it.
    let mut buf = BytesMut::with_capacity(8192);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 || stream.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("the server closed the connection during the handshake: {}", String::from_utf8_lossy(&buf));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.1 101 ") {
        let mut body = buf[head_end..].to_vec();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut body)).await;
        anyhow::bail!("handshake refused: {status_line}: {}", String::from_utf8_lossy(&body).trim());
    }
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    if header("sec-websocket-accept").as_deref() != Some(accept_key(&key).as_str()) {
        anyhow::bail!("the server's Sec-WebSocket-Accept does not match the key: not a WebSocket server?");
    }
    let _ = buf.split_to(head_end);
    match header("sec-websocket-protocol") {
        Some(p) => eprintln!("connected to {url} (subprotocol {p}); type lines to send, end with Ctrl-D"),
        None => eprintln!("connected to {url}; type lines to send, end with Ctrl-D"),
    }

    let (mut reader, mut writer) = stream.into_split();
    let mut decoder = Decoder::client(Limits::default());
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut close_deadline: Option<tokio::time::Instant> = None;
    loop {
        // Everything already buffered first.
        loop {
            let event = decoder.decode(&mut buf).map_err(|e| anyhow::anyhow!("the server broke the protocol: {e}"))?;
            match event {
                None => break,
                Some(Event::Message(Message::Text(text))) => println!("{}", String::from_utf8_lossy(&text)),
                Some(Event::Message(Message::Binary(data))) => {
                    let hex: String = data.iter().take(64).map(|b| format!("{b:02x}")).collect();
                    println!("<binary: {} bytes> {hex}{}", data.len(), if data.len() > 64 { "…" } else { "" });
                }
                Some(Event::Ping(payload)) => {
                    writer.write_all(&encode_client_frame(true, 0xA, &payload, mask())).await?
                }
                Some(Event::Pong(_)) => {}
                Some(Event::Close(frame)) => {
                    let code = frame.as_ref().map_or(1005, |f| f.code.0);
                    let reason = frame.as_ref().map(|f| f.reason.as_str()).unwrap_or("");
                    eprintln!("closed by the server: {code} {reason}");
                    if close_deadline.is_none() {
                        let echo = close_payload(frame.as_ref().filter(|f| f.code.is_allowed_on_wire()));
                        let _ = writer.write_all(&encode_client_frame(true, 0x8, &echo, mask())).await;
                    }
                    return match code {
                        1000 | 1001 | 1005 => Ok(()),
                        _ => Err(anyhow::anyhow!("the connection closed with {code} {reason}")),
                    };
                }
            }
        }
        tokio::select! {
            read = reader.read_buf(&mut buf) => {
                if read? == 0 {
                    anyhow::bail!("the server closed TCP without a close frame");
                }
            }
            line = stdin.next_line(), if stdin_open => match line? {
                Some(line) => writer.write_all(&encode_client_frame(true, 0x1, line.as_bytes(), mask())).await?,
                None => {
                    stdin_open = false;
                    let bye = close_payload(Some(&CloseFrame { code: CloseCode::NORMAL, reason: String::new() }));
                    writer.write_all(&encode_client_frame(true, 0x8, &bye, mask())).await?;
                    close_deadline = Some(tokio::time::Instant::now() + CLOSE_WAIT);
                }
            },
            _ = tokio::time::sleep_until(close_deadline.unwrap_or_else(tokio::time::Instant::now)), if close_deadline.is_some() => {
                anyhow::bail!("the server did not answer our close within {CLOSE_WAIT:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_taken_apart() {
        let t = parse_url("ws://127.0.0.1:8080/chat?nick=ada").unwrap();
        assert_eq!(t, Target { authority: "127.0.0.1:8080".into(), resource: "/chat?nick=ada".into() });
        assert_eq!(parse_url("ws://example.com").unwrap().authority, "example.com:80");
        assert_eq!(parse_url("ws://example.com?x=1").unwrap().resource, "/?x=1");
        assert_eq!(parse_url("ws://[::1]:9000/e").unwrap().authority, "[::1]:9000");
        assert_eq!(parse_url("ws://[::1]/e").unwrap().authority, "[::1]:80");
        assert!(parse_url("wss://example.com").unwrap_err().contains("not supported"));
        assert!(parse_url("http://example.com").is_err());
        assert!(parse_url("ws:///x").is_err());
    }
}
