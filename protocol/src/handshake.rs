//! The opening handshake (RFC 6455 §4.2) over an HTTP/1.1 request head.
//!
//! [`parse_request`] is fed the bytes received so far (the head may arrive over any number of
//! reads) and enforces the head size limits; [`validate_upgrade`] checks the WebSocket rules and
//! extracts what later policy needs (key, offered subprotocols, origin). Every failure maps to the
//! HTTP status the client receives ([`HandshakeError::status`]). Bytes after the head belong to the
//! frame decoder: the caller learns where the head ended.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// The GUID of §1.3, appended to the client's key.
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Limits on the request head (slow or oversized heads are refused with 431).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    pub max_head_size: usize,
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self { max_head_size: 8192, max_headers: 100 }
    }
}

/// A parsed HTTP request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent, query included.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields with lower-cased names, in the order received.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// All values of a header (name in lower case).
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The comma-separated tokens of every occurrence of a header, trimmed.
    pub fn header_tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.header_all(name).flat_map(|v| v.split(',')).map(str::trim).filter(|t| !t.is_empty())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("")
    }
}

/// A valid WebSocket upgrade request, ready to be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub key: String,
    /// Subprotocols offered in Sec-WebSocket-Protocol, in the client's order.
    pub protocols: Vec<String>,
    pub origin: Option<String>,
}

/// Why a handshake was refused; each maps to the HTTP status it is answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request head is larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("request has more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("method {0} is not allowed: a WebSocket handshake uses GET")]
    MethodNotAllowed(String),
    #[error("HTTP/1.1 or later is required")]
    HttpVersion,
    #[error("missing Host header")]
    MissingHost,
    #[error("this resource only speaks WebSocket: send an Upgrade: websocket request")]
    NotUpgrade,
    #[error("the Connection header must include the \"upgrade\" token")]
    ConnectionNotUpgrade,
    #[error("unsupported or missing Sec-WebSocket-Version: this server speaks 13")]
    UnsupportedVersion,
    #[error("invalid Sec-WebSocket-Key: {0}")]
    InvalidKey(&'static str),
    #[error("invalid Sec-WebSocket-Protocol: {0:?} is not a token")]
    InvalidProtocol(String),
    #[error("no WebSocket route at this path")]
    NotFound,
}

impl HandshakeError {
    /// The HTTP status the client receives.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_)
            | Self::MissingHost
            | Self::ConnectionNotUpgrade
            | Self::InvalidKey(_)
            | Self::InvalidProtocol(_) => 400,
            Self::NotFound => 404,
            Self::MethodNotAllowed(_) => 405,
            Self::NotUpgrade | Self::UnsupportedVersion => 426,
            Self::HeadTooLarge(_) | Self::TooManyHeaders(_) => 431,
            Self::HttpVersion => 505,
        }
    }

    /// Header fields the response must carry besides the standard ones.
    pub fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::MethodNotAllowed(_) => &[("Allow", "GET")],
            Self::NotUpgrade => &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
            Self::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
            _ => &[],
        }
    }

    /// The complete HTTP response for this error.
    pub fn response(&self) -> Vec<u8> {
        http_response(self.status(), self.extra_headers(), "text/plain; charset=utf-8", format!("{self}\n").as_bytes())
    }
}

/// Parses the request head at the start of `buf`. `Ok(None)`: incomplete, read more.
/// `Ok(Some((request, head_len)))`: the head took `head_len` bytes; the rest is frame data.
pub fn parse_request(buf: &[u8], limits: HeadLimits) -> Result<Option<(Request, usize)>, HandshakeError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head_size {
                return Err(HandshakeError::HeadTooLarge(limits.max_head_size));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooManyHeaders(limits.max_headers));
        }
        Err(httparse::Error::Version) => return Err(HandshakeError::HttpVersion),
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    if head_len > limits.max_head_size {
        return Err(HandshakeError::HeadTooLarge(limits.max_head_size));
    }
    // httparse tolerates bare LF line endings; HTTP/1.1 (RFC 9112 §2.2) lets a server reject
    // them, and accepting what a front proxy might parse differently invites request smuggling.
    if let Some(at) = bare_lf(&buf[..head_len]) {
        return Err(HandshakeError::Malformed(format!("bare LF line ending at byte {at}: lines end with CRLF")));
    }
    let request = Request {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        minor_version: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
            .collect(),
    };
    Ok(Some((request, head_len)))
}

/// The offset of the first LF not preceded by CR, if any.
fn bare_lf(head: &[u8]) -> Option<usize> {
    head.iter().enumerate().position(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// Whether the request asks for a WebSocket upgrade at all (as opposed to a plain GET).
/// Percent-decodes a part of a request target (`%XX` escapes; with `plus_is_space`, a query
/// value's `+` is a space too). `None` for a malformed escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pub fn wants_upgrade(request: &Request) -> bool {
    request.header_tokens("upgrade").any(|t| t.eq_ignore_ascii_case("websocket"))
}

/// Checks the §4.2.1 rules on a request for a WebSocket route.
pub fn validate_upgrade(request: &Request) -> Result<Upgrade, HandshakeError> {
    if request.method != "GET" {
        return Err(HandshakeError::MethodNotAllowed(request.method.clone()));
    }
    if request.minor_version < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if !request.target.starts_with('/') {
        return Err(HandshakeError::Malformed(format!("request target {:?} is not an absolute path", request.target)));
    }
    match request.header_all("host").count() {
        0 => return Err(HandshakeError::MissingHost),
        1 => {}
        _ => {
            return Err(HandshakeError::Malformed("more than one Host header".into()));
        }
    }
    if !wants_upgrade(request) {
        return Err(HandshakeError::NotUpgrade);
    }
    // An upgrade request has no body (RFC 6455 §4.1 sends a bare GET). Were one announced, its
    // bytes would be read as frames here while an intermediary skips them: refuse it.
    if request.header_all("transfer-encoding").next().is_some() {
        return Err(HandshakeError::Malformed("an upgrade request must not carry Transfer-Encoding".into()));
    }
    if request.header_all("content-length").any(|v| v.trim() != "0") {
        return Err(HandshakeError::Malformed("an upgrade request must not carry a body (Content-Length)".into()));
    }
    if !request.header_tokens("connection").any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    let mut versions = request.header_all("sec-websocket-version");
    if versions.next().map(str::trim) != Some("13") || versions.next().is_some() {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let mut keys = request.header_all("sec-websocket-key");
    let key = keys.next().ok_or(HandshakeError::InvalidKey("missing"))?.trim();
    if keys.next().is_some() {
        return Err(HandshakeError::InvalidKey("sent more than once"));
    }
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        Ok(_) => return Err(HandshakeError::InvalidKey("does not decode to 16 bytes")),
        Err(_) => return Err(HandshakeError::InvalidKey("not base64")),
    }
    let mut protocols = Vec::new();
    for token in request.header_tokens("sec-websocket-protocol") {
        if !is_token(token) {
            return Err(HandshakeError::InvalidProtocol(token.to_owned()));
        }
        protocols.push(token.to_owned());
    }
    Ok(Upgrade { key: key.to_owned(), protocols, origin: request.header("origin").map(str::to_owned) })
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)) (§4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// The 101 response completing the handshake.
pub fn accept_response(key: &str, protocol: Option<&str>, extensions: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if let Some(p) = protocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    if let Some(e) = extensions {
        out.push_str("Sec-WebSocket-Extensions: ");
        out.push_str(e);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A complete HTTP/1.1 response that closes the connection.
pub fn http_response(status: u16, extra_headers: &[(&str, &str)], content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    for (name, value) in extra_headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// 503 with `Retry-After` (whole seconds, at least 1) and a one-line plain-text reason: the
/// answer to a client that the server cannot take now but may later.
pub fn unavailable_response(retry_after: std::time::Duration, reason: &str) -> Vec<u8> {
    let seconds = retry_after.as_secs_f64().ceil().max(1.0).to_string();
    http_response(503, &[("Retry-After", &seconds)], "text/plain; charset=utf-8", format!("{reason}\n").as_bytes())
}

/// The standard reason phrase of the statuses this server sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        s if s < 500 => "Client Error",
        _ => "Server Error",
    }
}

/// An RFC 7230 token: what a subprotocol name must be.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn parse(text: &str) -> Request {
        parse_request(text.as_bytes(), HeadLimits::default()).unwrap().unwrap().0
    }

    fn error_for(text: &str) -> HandshakeError {
        validate_upgrade(&parse(text)).unwrap_err()
    }

    #[test]
    fn rfc_1_3_accept_key_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn rfc_4_2_1_example_request_is_valid() {
        let up = validate_upgrade(&parse(RFC_REQUEST)).unwrap();
        assert_eq!(up.key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(up.protocols, vec!["chat", "superchat"]);
        assert_eq!(up.origin.as_deref(), Some("http://example.com"));
    }

    #[test]
    fn rfc_4_2_2_response_carries_accept_and_protocol() {
        let resp = String::from_utf8(accept_response("dGhlIHNhbXBsZSBub25jZQ==", Some("chat"), None)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(resp.ends_with("\r\n\r\n"));
    }

    #[test]
    fn head_split_over_many_reads_and_trailing_bytes_are_left() {
        let mut bytes = RFC_REQUEST.as_bytes().to_vec();
        bytes.extend_from_slice(&[0x81, 0x80]);
        for cut in 0..RFC_REQUEST.len() {
            assert_eq!(parse_request(&bytes[..cut], HeadLimits::default()), Ok(None), "cut {cut}");
        }
        let (_, head_len) = parse_request(&bytes, HeadLimits::default()).unwrap().unwrap();
        assert_eq!(head_len, RFC_REQUEST.len());
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let req = RFC_REQUEST
            .replace("Upgrade: websocket", "UPGRADE: WebSocket")
            .replace("Connection: Upgrade", "connection: keep-alive, UPGRADE");
        assert!(validate_upgrade(&parse(&req)).is_ok());
    }

    #[test]
    fn rfc_4_2_1_method_must_be_get() {
        let e = error_for(&RFC_REQUEST.replacen("GET", "POST", 1));
        assert_eq!(e.status(), 405);
    }

    #[test]
    fn rfc_4_2_1_http_1_0_is_refused() {
        assert_eq!(error_for(&RFC_REQUEST.replacen("HTTP/1.1", "HTTP/1.0", 1)).status(), 505);
    }

    #[test]
    fn rfc_4_2_1_host_is_required() {
        assert_eq!(error_for(&RFC_REQUEST.replace("Host: server.example.com\r\n", "")), HandshakeError::MissingHost);
    }

    #[test]
    fn rfc_4_2_1_plain_get_is_426() {
        let e = error_for("GET /chat HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(e.status(), 426);
        let resp = String::from_utf8(e.response()).unwrap();
        assert!(resp.contains("Upgrade: websocket\r\n"));
    }

    #[test]
    fn rfc_4_2_1_connection_must_include_upgrade() {
        let e = error_for(&RFC_REQUEST.replace("Connection: Upgrade", "Connection: keep-alive"));
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn rfc_4_4_wrong_version_is_426_with_supported_version() {
        let e = error_for(&RFC_REQUEST.replace("Version: 13", "Version: 8"));
        assert_eq!(e.status(), 426);
        assert!(String::from_utf8(e.response()).unwrap().contains("Sec-WebSocket-Version: 13\r\n"));
        let e = error_for(&RFC_REQUEST.replace("Sec-WebSocket-Version: 13\r\n", ""));
        assert_eq!(e.status(), 426);
    }

    #[test]
    fn rfc_4_2_1_key_must_decode_to_16_bytes() {
        assert_eq!(error_for(&RFC_REQUEST.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")).status(), 400);
        assert_eq!(error_for(&RFC_REQUEST.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!notbase64!!!")).status(), 400);
        assert_eq!(
            error_for(&RFC_REQUEST.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")).status(),
            400
        );
    }

    #[test]
    fn subprotocols_must_be_tokens() {
        let e = error_for(&RFC_REQUEST.replace("chat, superchat", "chat, super chat"));
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn malformed_request_line_is_400() {
        let e = parse_request(b"GET\x01 / HTTP/1.1\r\n\r\n", HeadLimits::default()).unwrap_err();
        assert_eq!(e.status(), 400);
        let resp = e.response();
        let first_line = resp.split(|&b| b == b'\r').next().unwrap();
        assert_eq!(first_line, b"HTTP/1.1 400 Bad Request");
    }

    #[test]
    fn oversized_head_is_431_even_when_incomplete() {
        let limits = HeadLimits { max_head_size: 64, max_headers: 100 };
        let long = format!("GET / HTTP/1.1\r\nX-Long: {}", "a".repeat(100));
        assert_eq!(parse_request(long.as_bytes(), limits).unwrap_err().status(), 431);
    }

    #[test]
    fn too_many_headers_is_431() {
        let limits = HeadLimits { max_head_size: 1 << 20, max_headers: 4 };
        let e = parse_request(RFC_REQUEST.as_bytes(), limits).unwrap_err();
        assert_eq!(e, HandshakeError::TooManyHeaders(4));
        assert_eq!(e.status(), 431);
    }

    #[test]
    fn bare_lf_line_endings_are_400() {
        let lf = RFC_REQUEST.replace("\r\n", "\n");
        let e = parse_request(lf.as_bytes(), HeadLimits::default()).unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
        // One bare LF among CRLFs is enough.
        let one = RFC_REQUEST.replacen("Upgrade: websocket\r\n", "Upgrade: websocket\n", 1);
        assert_eq!(parse_request(one.as_bytes(), HeadLimits::default()).unwrap_err().status(), 400);
    }

    #[test]
    fn upgrade_with_a_body_is_400() {
        let with = |header: &str| {
            RFC_REQUEST.replace("Sec-WebSocket-Version: 13\r\n", &format!("Sec-WebSocket-Version: 13\r\n{header}\r\n"))
        };
        for header in ["Content-Length: 5", "Transfer-Encoding: chunked", "Content-Length: 0\r\nContent-Length: 7"] {
            let e = error_for(&with(header));
            assert_eq!(e.status(), 400, "{header}: {e}");
        }
        // An explicit empty body is harmless.
        assert!(validate_upgrade(&parse(&with("Content-Length: 0"))).is_ok());
    }

    #[test]
    fn path_strips_the_query() {
        let req = parse("GET /chat?nick=ada HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.target, "/chat?nick=ada");
    }
}
