//! What each fuzz target checks, as plain functions (the targets in `fuzz_targets/` only call
//! them), so that a crash found by the fuzzer is a failed assertion with a reason, not only a panic.
//!
//! - [`frame_decoder`]: the server's frame decoder, fed a byte stream in fuzzer-chosen chunks,
//!   must find the same events and the same close code as [`reference`], a whole-buffer decoder
//!   written from RFC 6455 §5 with no state carried across reads; and chunking must not matter.
//! - [`request_head`]: the request-head parser and upgrade validation never panic, every refusal
//!   is a well-formed HTTP response with its status, an accepted head is strict (CRLF only, no
//!   body) and its 101 response carries the right accept key.
//! - [`deflate_decoder`]: permessage-deflate decoding never hands out more than the message
//!   limit, whatever a message inflates to, and compressed messages round-trip.
//! - [`utf8`]: the incremental validator agrees with `std::str::from_utf8` for every chunking,
//!   and fails at the first chunk after which the bytes can no longer be valid.

pub mod reference;

use bytes::BytesMut;
use wsplug_protocol::decoder::{Decoder, Event, Limits, Message};
use wsplug_protocol::deflate;
use wsplug_protocol::frame::encode_client_frame;
use wsplug_protocol::handshake::{self, HeadLimits};
use wsplug_protocol::utf8::Utf8Validator;

/// Small limits, so that the fuzzer reaches the size checks with small inputs.
pub const LIMITS: Limits = Limits { max_frame_size: 1024, max_message_size: 2048 };

/// Chunk sizes from a seed byte: a deterministic sequence in 1..=max, max picked by the seed.
fn chunks(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    let max = usize::from(seed % 64) + 1;
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % max + 1).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// Runs `decoder` over `pieces` read one after another: the events, and the close code of the
/// error that ended the stream, if any.
pub fn decode_stream(pieces: &[&[u8]], mut decoder: Decoder) -> (Vec<Event>, Option<u16>) {
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(e) => return (events, Some(e.close_code().0)),
            }
        }
    }
    (events, None)
}

/// Fuzz target: input byte 0 picks the chunking; the rest is what a client sends.
pub fn frame_decoder(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else { return };
    let whole = decode_stream(&[stream], Decoder::server(LIMITS));
    let chunked = decode_stream(&chunks(seed, stream), Decoder::server(LIMITS));
    assert_eq!(whole, chunked, "chunking changed the outcome");
    let expected = reference::decode(stream, LIMITS);
    assert_eq!(whole, expected, "the decoder disagrees with the reference decoder");
}

/// Fuzz target: permessage-deflate. Input byte 0 picks the chunking and byte 1 the mode:
/// - even: the rest is a stream for a decoder that negotiated deflate (the client keeps its
///   context): chunking must not matter, and every message it hands out is within the message
///   limit (a compressed one included, whatever it inflates to) and, if text, valid UTF-8;
/// - odd: the rest, split in two, are two messages compressed with a kept context, framed
///   (RSV1 on the first fragment, split where byte 0 says) and decoded back: they must come out
///   as they went in, or fail with 1009 when they are over the limit.
pub fn deflate_decoder(data: &[u8]) {
    let [seed, mode, rest @ ..] = data else { return };
    let params = deflate::negotiate(["permessage-deflate"], &Default::default()).expect("default offer");
    let decode = |pieces: &[&[u8]]| decode_stream(pieces, Decoder::server(LIMITS).with_deflate(Some(&params)));
    if mode % 2 == 0 {
        let whole = decode(&[rest]);
        assert_eq!(whole, decode(&chunks(*seed, rest)), "chunking changed the outcome");
        for event in &whole.0 {
            if let Event::Message(m) = event {
                assert!(m.payload().len() <= LIMITS.max_message_size, "a message over the limit got through");
                if let Message::Text(t) = m {
                    assert!(std::str::from_utf8(t).is_ok(), "invalid UTF-8 handed out as text");
                }
            }
        }
        return;
    }
    let (first, second) = rest.split_at(rest.len() / 2);
    let mut deflater = deflate::Deflater::new(15);
    let mut stream = Vec::new();
    // The messages that fit the limits, until the first that does not (its close code: 1009).
    let (mut expected, mut error) = (Vec::new(), None);
    for payload in [first, second] {
        let packed = deflater.compress(payload);
        let cut = usize::from(*seed) % (packed.len() + 1);
        let (a, b) = packed.split_at(cut);
        if error.is_none() {
            if payload.len() > LIMITS.max_message_size || a.len().max(b.len()) > LIMITS.max_frame_size {
                error = Some(1009);
            } else {
                expected.push(Event::Message(Message::Binary(bytes::Bytes::copy_from_slice(payload))));
            }
        }
        let mut head = encode_client_frame(b.is_empty(), 0x2, a, [1, 2, 3, 4]);
        head[0] |= 0x40;
        stream.extend(head);
        if !b.is_empty() {
            stream.extend(encode_client_frame(true, 0x0, b, [5, 6, 7, 8]));
        }
    }
    assert_eq!(decode(&[&stream]), (expected, error), "compressed messages must come back as they were");
}

/// Fuzz target: a request head as a client sends it.
pub fn request_head(data: &[u8]) {
    let limits = HeadLimits { max_head_size: 1024, max_headers: 16 };
    match handshake::parse_request(data, limits) {
        Ok(None) => assert!(data.len() <= limits.max_head_size, "an oversized head must be refused, not awaited"),
        Err(e) => check_refusal(&e),
        Ok(Some((request, head_len))) => {
            assert!(head_len <= data.len() && head_len <= limits.max_head_size);
            let head = &data[..head_len];
            assert_eq!(handshake::parse_request(head, limits), Ok(Some((request.clone(), head_len))));
            assert_eq!(handshake::parse_request(&head[..head_len - 1], limits), Ok(None), "a cut head is incomplete");
            for (i, &b) in head.iter().enumerate() {
                assert!(b != b'\n' || (i > 0 && head[i - 1] == b'\r'), "bare LF accepted at {i}");
            }
            match handshake::validate_upgrade(&request) {
                Err(e) => check_refusal(&e),
                Ok(upgrade) => {
                    assert!(request.header("transfer-encoding").is_none(), "upgrade with Transfer-Encoding");
                    assert!(request.header_all("content-length").all(|v| v.trim() == "0"), "upgrade with a body");
                    assert_eq!(request.method, "GET");
                    let response =
                        handshake::accept_response(&upgrade.key, upgrade.protocols.first().map(String::as_str), None);
                    let mut headers = [httparse::EMPTY_HEADER; 8];
                    let mut parsed = httparse::Response::new(&mut headers);
                    assert!(parsed.parse(&response).expect("101 parses").is_complete());
                    assert_eq!(parsed.code, Some(101));
                    let accept = parsed.headers.iter().find(|h| h.name == "Sec-WebSocket-Accept").expect("accept");
                    assert_eq!(accept.value, handshake::accept_key(&upgrade.key).as_bytes());
                }
            }
        }
    }
}

/// A refusal is a complete HTTP response with the error's status and a body of the announced length.
fn check_refusal(e: &handshake::HandshakeError) {
    let status = e.status();
    assert!([400, 404, 405, 426, 431, 505].contains(&status), "unexpected status {status}");
    let response = e.response();
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut parsed = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = parsed.parse(&response).expect("refusal parses") else {
        panic!("refusal head incomplete")
    };
    assert_eq!(parsed.code, Some(status));
    let length = parsed.headers.iter().find(|h| h.name == "Content-Length").expect("Content-Length");
    assert_eq!(std::str::from_utf8(length.value).unwrap().parse::<usize>().unwrap(), response.len() - head_len);
}

/// Fuzz target: input byte 0 picks the chunking; the rest is the text.
pub fn utf8(data: &[u8]) {
    let Some((&seed, text)) = data.split_first() else { return };
    let mut validator = Utf8Validator::new();
    let mut fed = 0;
    for piece in chunks(seed, text) {
        fed += piece.len();
        let never_valid = std::str::from_utf8(&text[..fed]).is_err_and(|e| e.error_len().is_some());
        match validator.feed(piece) {
            Ok(()) => assert!(!never_valid, "accepted a prefix that can never be valid ({fed} bytes)"),
            Err(_) => {
                assert!(never_valid, "refused a valid prefix ({fed} bytes)");
                return;
            }
        }
    }
    assert_eq!(validator.finish().is_ok(), std::str::from_utf8(text).is_ok());
}
