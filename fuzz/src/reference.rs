//! A reference decoder for client-to-server frames, written from RFC 6455 §5 for clarity, not
//! speed: it sees the whole stream at once, copies freely, and re-validates text from the start of
//! the message every time. It returns what the server decoder must find in the same bytes: the
//! events, and the close code of the violation that ends the stream (§7.4.1), if any.
//!
//! One rule is the server's choice rather than the RFC's word, and is mirrored here: text is
//! checked as it arrives, so a frame cut short still fails with 1007 once its bytes so far can
//! never be valid UTF-8 (§8.1 allows failing "as soon as" invalid data is seen).

use bytes::Bytes;
use wsplug_protocol::decoder::{Event, Limits, Message};
use wsplug_protocol::{CloseCode, CloseFrame};

const PROTOCOL: Option<u16> = Some(1002);
const TOO_BIG: Option<u16> = Some(1009);
const BAD_TEXT: Option<u16> = Some(1007);

/// Decodes `stream`; see the module doc.
pub fn decode(stream: &[u8], limits: Limits) -> (Vec<Event>, Option<u16>) {
    let mut events = Vec::new();
    // A fragmented message in progress: is it text, and its payload so far.
    let mut message: Option<(bool, Vec<u8>)> = None;
    let mut pos = 0;
    loop {
        let rest = &stream[pos..];
        if rest.len() < 2 {
            return (events, None);
        }
        let (b0, b1) = (rest[0], rest[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x70 != 0 || !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
            return (events, PROTOCOL);
        }
        let control = opcode >= 0x8;
        let len7 = u64::from(b1 & 0x7F);
        if control && (!fin || len7 > 125) {
            return (events, PROTOCOL);
        }
        if b1 & 0x80 == 0 {
            return (events, PROTOCOL); // §5.1: client frames are masked
        }
        let (len, mut at) = match len7 {
            126 if rest.len() < 4 => return (events, None),
            126 => (u64::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 if rest.len() < 10 => return (events, None),
            127 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()), 10),
            n => (n, 2),
        };
        // §5.2: the high bit of a 64-bit length is 0, and lengths use the fewest bytes.
        if (len7 == 127 && (len >> 63 != 0 || len < 65536)) || (len7 == 126 && len < 126) {
            return (events, PROTOCOL);
        }
        if rest.len() < at + 4 {
            return (events, None);
        }
        let key = [rest[at], rest[at + 1], rest[at + 2], rest[at + 3]];
        at += 4;

        // §5.4: fragments of one message are not interleaved with other data frames.
        let text = match (opcode, &message) {
            (0x0, None) | (0x1 | 0x2, Some(_)) => return (events, PROTOCOL),
            (0x0, Some((text, _))) => *text,
            (op, _) => op == 0x1,
        };
        if !control {
            let so_far = message.as_ref().map_or(0, |(_, d)| d.len() as u64);
            if len > limits.max_frame_size as u64 || so_far + len > limits.max_message_size as u64 {
                return (events, TOO_BIG);
            }
        }

        // The payload, unmasked (§5.3), as much of it as has arrived.
        let len = len as usize;
        let arrived = (rest.len() - at).min(len);
        let payload: Vec<u8> = rest[at..at + arrived].iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
        if text && !control {
            let mut so_far = message.as_ref().map(|(_, d)| d.clone()).unwrap_or_default();
            so_far.extend_from_slice(&payload);
            if std::str::from_utf8(&so_far).is_err_and(|e| e.error_len().is_some()) {
                return (events, BAD_TEXT);
            }
        }
        if arrived < len {
            return (events, None);
        }
        pos += at + len;

        match opcode {
            0x8 => match close(&payload) {
                Ok(frame) => events.push(Event::Close(frame)),
                Err(code) => return (events, Some(code)),
            },
            0x9 => events.push(Event::Ping(Bytes::from(payload))),
            0xA => events.push(Event::Pong(Bytes::from(payload))),
            _ => {
                let mut data = message.take().map(|(_, d)| d).unwrap_or_default();
                data.extend_from_slice(&payload);
                if !fin {
                    message = Some((text, data));
                } else if !text {
                    events.push(Event::Message(Message::Binary(Bytes::from(data))));
                } else if std::str::from_utf8(&data).is_ok() {
                    events.push(Event::Message(Message::Text(Bytes::from(data))));
                } else {
                    return (events, BAD_TEXT); // ends inside a code point
                }
            }
        }
    }
}

/// §5.5.1 and §7.4: a close payload is empty, or a code allowed on the wire and a UTF-8 reason.
fn close(payload: &[u8]) -> Result<Option<CloseFrame>, u16> {
    match payload {
        [] => Ok(None),
        [_] => Err(1002),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(1002);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| 1007u16)?;
            Ok(Some(CloseFrame { code: CloseCode(code), reason: reason.to_owned() }))
        }
    }
}
