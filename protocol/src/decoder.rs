//! The receive side of a connection (RFC 6455 §5, §6.2, §8.1): bytes → frames → messages and
//! control events.
//!
//! [`Decoder::decode`] is called with the connection's read buffer whenever bytes arrive. It applies
//! every rule in the order the RFC gives them: header checks, fragmentation sequencing, size limits
//! decided from the header before a byte of payload is buffered, unmasking in place, and UTF-8
//! validation of text as the payload streams in, so invalid text fails the connection at the first
//! impossible byte rather than at the end of the message. A message that fits one frame is handed out
//! without copying its payload; fragments are joined into one buffer.

use bytes::{Buf, Bytes, BytesMut};

use super::close::{CloseCode, CloseFrame, CloseFrameError, parse_close_payload};
use super::deflate::{DeflateParams, InflateError, Inflater};
use super::frame::{FrameHeader, HeaderError, OpCode};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;

/// Size limits enforced while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of one frame, in bytes.
    pub max_frame_size: usize,
    /// Largest message (all fragments together), in bytes.
    pub max_message_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_frame_size: 16 << 20, max_message_size: 16 << 20 }
    }
}

/// A complete data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the bytes are valid UTF-8 (checked by the decoder).
    Text(Bytes),
    Binary(Bytes),
}

impl Message {
    pub fn payload(&self) -> &Bytes {
        match self {
            Self::Text(b) | Self::Binary(b) => b,
        }
    }

    pub fn opcode(&self) -> OpCode {
        match self {
            Self::Text(_) => OpCode::Text,
            Self::Binary(_) => OpCode::Binary,
        }
    }
}

/// What the decoder found in the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message(Message),
    /// A ping; the connection must answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong (solicited or not).
    Pong(Bytes),
    /// The peer's close frame; `None` when it carried no status code.
    Close(Option<CloseFrame>),
}

/// A violation that fails the connection, with the close code it is answered with (§7.4.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    FrameTooBig { len: u64, limit: usize },
    #[error("message of at least {len} bytes exceeds the limit of {limit}")]
    MessageTooBig { len: u64, limit: usize },
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid close frame: {0}")]
    InvalidClose(#[from] CloseFrameError),
    #[error("compressed message: {0}")]
    Inflate(#[from] InflateError),
}

impl ProtocolError {
    /// The close code this violation is answered with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::FrameTooBig { .. } | Self::MessageTooBig { .. } | Self::Inflate(InflateError::TooBig { .. }) => {
                CloseCode::TOO_BIG
            }
            Self::InvalidUtf8
            | Self::InvalidClose(CloseFrameError::InvalidReason)
            | Self::Inflate(InflateError::Corrupt) => CloseCode::INVALID_PAYLOAD,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// A frame whose header has been read and whose payload is arriving.
#[derive(Debug)]
struct FrameInProgress {
    header: FrameHeader,
    payload_len: usize,
    /// Payload bytes at the front of the read buffer already unmasked and validated.
    processed: usize,
    /// Whether this frame's payload is text to validate.
    text: bool,
}

/// A fragmented message being assembled.
#[derive(Debug)]
struct MessageInProgress {
    text: bool,
    /// Its frames carry compressed data (RSV1 on the first); `data` holds it inflated.
    compressed: bool,
    data: BytesMut,
}

/// The decoding state of one connection.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    require_mask: bool,
    frame: Option<FrameInProgress>,
    message: Option<MessageInProgress>,
    utf8: Utf8Validator,
    /// Set when permessage-deflate was negotiated.
    inflater: Option<Inflater>,
}

impl Decoder {
    /// A decoder for frames sent by a client (masked, as §5.1 requires).
    pub fn server(limits: Limits) -> Self {
        Self { limits, require_mask: true, frame: None, message: None, utf8: Utf8Validator::new(), inflater: None }
    }

    /// Accepts compressed messages (RSV1) as agreed in the handshake (RFC 7692).
    pub fn with_deflate(mut self, params: Option<&DeflateParams>) -> Self {
        self.inflater = params.map(Inflater::new);
        self
    }

    /// A decoder for frames sent by a server (unmasked); used by test clients.
    pub fn client(limits: Limits) -> Self {
        Self { require_mask: false, ..Self::server(limits) }
    }

    /// Whether a frame or a fragmented message has started and not yet completed (its bytes are
    /// held: in the read buffer or in the message being assembled).
    pub fn mid_message(&self) -> bool {
        self.frame.is_some() || self.message.is_some()
    }

    /// Bytes held by a fragmented message being assembled (not counting the read buffer).
    pub fn assembled_bytes(&self) -> usize {
        self.message.as_ref().map_or(0, |m| m.data.capacity())
    }

    /// Whether a decompressor is held between messages (its client keeps its compression context).
    pub fn holds_inflater(&self) -> bool {
        self.inflater.as_ref().is_some_and(Inflater::is_held)
    }

    /// How many more bytes the frame in progress needs, to size the next read (0 when unknown).
    pub fn bytes_wanted(&self, buffered: usize) -> usize {
        self.frame.as_ref().map_or(0, |f| f.payload_len.saturating_sub(buffered))
    }

    /// Decodes the next event from the front of `buf`, consuming what it used. `Ok(None)` means more
    /// bytes are needed; call again after the next read. After an error the decoder must not be used
    /// to decode data again: the connection is failing.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ProtocolError> {
        loop {
            if self.frame.is_none() {
                let Some(header) = FrameHeader::parse_with_rsv1(buf, self.require_mask, self.inflater.is_some())?
                else {
                    return Ok(None);
                };
                self.frame = Some(self.start_frame(header)?);
                buf.advance(header.header_len);
            }
            let frame = self.frame.as_mut().expect("frame in progress");

            // Unmask and validate whatever part of the payload has arrived since the last call.
            let available = buf.len().min(frame.payload_len);
            if available > frame.processed {
                let fresh = &mut buf[frame.processed..available];
                if let Some(key) = frame.header.mask {
                    apply_mask(fresh, key, frame.processed);
                }
                if frame.text {
                    self.utf8.feed(fresh).map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                frame.processed = available;
            }
            if available < frame.payload_len {
                return Ok(None);
            }

            let frame = self.frame.take().expect("frame in progress");
            let payload = buf.split_to(frame.payload_len);
            if let Some(event) = self.finish_frame(frame.header, payload)? {
                return Ok(Some(event));
            }
            // A non-final fragment: carry on with the next frame already in the buffer.
        }
    }

    /// Applies the sequencing and size rules to a new header.
    fn start_frame(&mut self, header: FrameHeader) -> Result<FrameInProgress, ProtocolError> {
        // RSV1 only on the first frame of a data message, and only with permessage-deflate.
        let first_data = matches!(header.opcode, OpCode::Text | OpCode::Binary);
        if header.rsv1 && !(first_data && self.inflater.is_some()) {
            return Err(HeaderError::ReservedBits.into());
        }
        let mut text = false;
        if !header.opcode.is_control() {
            match (header.opcode, &self.message) {
                (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
                (OpCode::Continuation, Some(m)) => text = m.text && !m.compressed,
                (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
                (op, None) => {
                    // A compressed message's text is validated as it inflates, not as it arrives.
                    text = op == OpCode::Text && !header.rsv1;
                    self.utf8.reset();
                }
            }
            let limit = self.limits.max_frame_size;
            if header.payload_len > limit as u64 {
                return Err(ProtocolError::FrameTooBig { len: header.payload_len, limit });
            }
            // A compressed message is measured as it inflates (its wire size says little).
            let compressed = header.rsv1 || self.message.as_ref().is_some_and(|m| m.compressed);
            let so_far = self.message.as_ref().map_or(0, |m| m.data.len()) as u64;
            let limit = self.limits.max_message_size;
            if !compressed && so_far + header.payload_len > limit as u64 {
                return Err(ProtocolError::MessageTooBig { len: so_far + header.payload_len, limit });
            }
        }
        // Control payloads are ≤ 125 (checked by the header parser); data payloads ≤ the limits,
        // which are usize: the cast cannot truncate.
        let payload_len = header.payload_len as usize;
        Ok(FrameInProgress { header, payload_len, processed: 0, text })
    }

    /// Turns a complete frame into an event, or into part of a message (`None`).
    fn finish_frame(&mut self, header: FrameHeader, payload: BytesMut) -> Result<Option<Event>, ProtocolError> {
        let event = match header.opcode {
            OpCode::Ping => Event::Ping(payload.freeze()),
            OpCode::Pong => Event::Pong(payload.freeze()),
            OpCode::Close => Event::Close(parse_close_payload(&payload)?),
            OpCode::Text | OpCode::Binary if header.fin && !header.rsv1 => {
                let text = header.opcode == OpCode::Text;
                self.complete_message(text, payload.freeze())?
            }
            OpCode::Text | OpCode::Binary => {
                let text = header.opcode == OpCode::Text;
                if !header.rsv1 {
                    self.message = Some(MessageInProgress { text, compressed: false, data: payload });
                    return Ok(None);
                }
                let mut message = MessageInProgress { text, compressed: true, data: BytesMut::new() };
                self.inflate(&mut message, &payload)?;
                if !header.fin {
                    self.message = Some(message);
                    return Ok(None);
                }
                self.finish_compressed(message)?
            }
            OpCode::Continuation => {
                let mut message = self.message.take().expect("checked in start_frame");
                if message.compressed {
                    self.inflate(&mut message, &payload)?;
                } else {
                    message.data.extend_from_slice(&payload);
                }
                if !header.fin {
                    self.message = Some(message);
                    return Ok(None);
                }
                if message.compressed {
                    self.finish_compressed(message)?
                } else {
                    self.complete_message(message.text, message.data.freeze())?
                }
            }
        };
        Ok(Some(event))
    }

    /// Inflates a compressed frame's payload onto its message, validating text as it comes out.
    fn inflate(&mut self, message: &mut MessageInProgress, payload: &[u8]) -> Result<(), ProtocolError> {
        let inflater = self.inflater.as_mut().expect("RSV1 is accepted only with an inflater");
        let before = message.data.len();
        inflater.feed(payload, &mut message.data, self.limits.max_message_size)?;
        if message.text {
            self.utf8.feed(&message.data[before..]).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(())
    }

    /// Ends a compressed message: the flush tail the sender left out, then the usual checks.
    fn finish_compressed(&mut self, mut message: MessageInProgress) -> Result<Event, ProtocolError> {
        let inflater = self.inflater.as_mut().expect("RSV1 is accepted only with an inflater");
        let before = message.data.len();
        inflater.finish(&mut message.data, self.limits.max_message_size)?;
        if message.text {
            self.utf8.feed(&message.data[before..]).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        self.complete_message(message.text, message.data.freeze())
    }

    fn complete_message(&mut self, text: bool, data: Bytes) -> Result<Event, ProtocolError> {
        if text {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Event::Message(Message::Text(data)))
        } else {
            Ok(Event::Message(Message::Binary(data)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_client_frame;

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Event>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut events = Vec::new();
        while let Some(e) = decoder.decode(&mut buf)? {
            events.push(e);
        }
        Ok(events)
    }

    fn server() -> Decoder {
        Decoder::server(Limits { max_frame_size: 1 << 20, max_message_size: 2 << 20 })
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        encode_client_frame(fin, op, payload, KEY)
    }

    /// A client frame with RSV1 set (a compressed message's first frame).
    fn compressed_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = frame(fin, op, payload);
        bytes[0] |= 0x40;
        bytes
    }

    fn deflating() -> Decoder {
        let params = crate::deflate::negotiate(["permessage-deflate"], &Default::default()).unwrap();
        server().with_deflate(Some(&params))
    }

    #[test]
    fn rfc_7692_compressed_messages_whole_and_fragmented() {
        // §7.2.3.1: "Hello" without context, then the same fragmented in two.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mut bytes = compressed_frame(true, 0x1, &hello);
        bytes.extend(compressed_frame(false, 0x1, &hello[..3]));
        bytes.extend(frame(true, 0x9, b"between"));
        bytes.extend(frame(true, 0x0, &hello[3..]));
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8).collect();
        bytes.extend(compressed_frame(true, 0x2, &crate::deflate::compress(&big, 15)));
        bytes.extend(frame(true, 0x1, b"plain"));
        let events = decode_all(&mut deflating(), &bytes).unwrap();
        let text = |t: &'static [u8]| Event::Message(Message::Text(Bytes::from_static(t)));
        assert_eq!(
            events,
            vec![
                text(b"Hello"),
                Event::Ping(Bytes::from_static(b"between")),
                text(b"Hello"),
                Event::Message(Message::Binary(Bytes::from(big))),
                text(b"plain"),
            ]
        );
    }

    #[test]
    fn rfc_7692_rsv1_is_refused_where_it_does_not_belong() {
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        // Not negotiated.
        let err = decode_all(&mut server(), &compressed_frame(true, 0x1, &hello)).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
        // On a continuation frame, and on a control frame.
        let mut bytes = compressed_frame(false, 0x1, &hello[..3]);
        bytes.extend(compressed_frame(true, 0x0, &hello[3..]));
        assert_eq!(decode_all(&mut deflating(), &bytes).unwrap_err().close_code(), CloseCode::PROTOCOL_ERROR);
        let err = decode_all(&mut deflating(), &compressed_frame(true, 0x9, b"")).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rfc_7692_bad_compressed_messages_fail_with_the_right_code() {
        // Inflating past the message limit (2 MiB): 1009, from a frame far under it.
        let bomb = crate::deflate::compress(&vec![b'a'; 3 << 20], 15);
        assert!(bomb.len() < 100 << 10);
        let err = decode_all(&mut deflating(), &compressed_frame(true, 0x2, &bomb)).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::TOO_BIG);
        // Text that inflates to invalid UTF-8: 1007; data that is not DEFLATE: 1007.
        let bad_text = crate::deflate::compress(&[b'o', b'k', 0xC0, 0xAF], 15);
        let err = decode_all(&mut deflating(), &compressed_frame(true, 0x1, &bad_text)).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidUtf8);
        let err = decode_all(&mut deflating(), &compressed_frame(true, 0x2, &[0xff; 16])).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn rfc_5_7_single_frame_masked_text() {
        let bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let events = decode_all(&mut server(), &bytes).unwrap();
        assert_eq!(events, vec![Event::Message(Message::Text(Bytes::from_static(b"Hello")))]);
    }

    #[test]
    fn rfc_5_7_fragmented_text_hel_lo() {
        let mut bytes = frame(false, 0x1, b"Hel");
        bytes.extend(frame(true, 0x0, b"lo"));
        let events = decode_all(&mut server(), &bytes).unwrap();
        assert_eq!(events, vec![Event::Message(Message::Text(Bytes::from_static(b"Hello")))]);
    }

    #[test]
    fn rfc_5_4_control_frames_between_fragments() {
        let mut bytes = frame(false, 0x1, b"Hel");
        bytes.extend(frame(true, 0x9, b"ping!"));
        bytes.extend(frame(true, 0x0, b"lo"));
        let events = decode_all(&mut server(), &bytes).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Ping(Bytes::from_static(b"ping!")),
                Event::Message(Message::Text(Bytes::from_static(b"Hello")))
            ]
        );
    }

    #[test]
    fn rfc_5_6_binary_and_empty_messages() {
        let mut bytes = frame(true, 0x2, &[0, 1, 2, 255]);
        bytes.extend(frame(true, 0x1, b""));
        bytes.extend(frame(true, 0x2, b""));
        let events = decode_all(&mut server(), &bytes).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Message(Message::Binary(Bytes::from_static(&[0, 1, 2, 255]))),
                Event::Message(Message::Text(Bytes::new())),
                Event::Message(Message::Binary(Bytes::new())),
            ]
        );
    }

    #[test]
    fn rfc_5_5_2_and_5_5_3_ping_and_pong_events() {
        let mut bytes = frame(true, 0x9, b"abc");
        bytes.extend(frame(true, 0xA, b"unsolicited"));
        let events = decode_all(&mut server(), &bytes).unwrap();
        assert_eq!(
            events,
            vec![Event::Ping(Bytes::from_static(b"abc")), Event::Pong(Bytes::from_static(b"unsolicited"))]
        );
    }

    #[test]
    fn rfc_5_4_continuation_without_start_is_1002() {
        let err = decode_all(&mut server(), &frame(true, 0x0, b"x")).unwrap_err();
        assert_eq!(err, ProtocolError::UnexpectedContinuation);
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rfc_5_4_new_message_inside_fragmented_message_is_1002() {
        let mut bytes = frame(false, 0x1, b"a");
        bytes.extend(frame(true, 0x2, b"b"));
        let err = decode_all(&mut server(), &bytes).unwrap_err();
        assert_eq!(err, ProtocolError::ExpectedContinuation);
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rfc_5_1_unmasked_frame_is_1002() {
        let err = decode_all(&mut server(), &[0x81, 0x01, b'a']).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rfc_8_1_invalid_utf8_is_1007() {
        let err = decode_all(&mut server(), &frame(true, 0x1, &[0xCE, 0xBA, 0xFF])).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidUtf8);
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn rfc_8_1_utf8_split_across_fragments_is_valid() {
        let euro = "€".as_bytes();
        let mut bytes = frame(false, 0x1, &euro[..1]);
        bytes.extend(frame(false, 0x0, &euro[1..2]));
        bytes.extend(frame(true, 0x0, &euro[2..]));
        let events = decode_all(&mut server(), &bytes).unwrap();
        assert_eq!(events, vec![Event::Message(Message::Text(Bytes::from_static("€".as_bytes())))]);
    }

    #[test]
    fn rfc_8_1_truncated_utf8_at_message_end_is_1007() {
        let err = decode_all(&mut server(), &frame(true, 0x1, &[0xE2, 0x82])).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidUtf8);
    }

    #[test]
    fn rfc_8_1_invalid_utf8_fails_before_the_frame_is_complete() {
        // A 100-byte text frame whose 3rd byte makes it invalid: only 4 payload bytes have arrived.
        let mut payload = vec![b'a'; 100];
        payload[2] = 0xFF;
        let bytes = frame(true, 0x1, &payload);
        let mut buf = BytesMut::from(&bytes[..6 + 4]);
        assert_eq!(server().decode(&mut buf), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn invalid_utf8_fails_before_the_message_is_complete() {
        let mut bytes = frame(false, 0x1, b"fine");
        bytes.extend(frame(false, 0x0, &[0xF4, 0x90, 0x80, 0x80]));
        // The final fragment never arrives.
        let err = decode_all(&mut server(), &bytes).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidUtf8);
    }

    #[test]
    fn binary_is_not_utf8_checked() {
        let events = decode_all(&mut server(), &frame(true, 0x2, &[0xFF, 0xFE])).unwrap();
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn frame_over_limit_is_1009_from_header_alone() {
        let mut d = Decoder::server(Limits { max_frame_size: 10, max_message_size: 100 });
        // Header claims 11 bytes; no payload has arrived.
        let mut buf = BytesMut::from(&[0x82u8, 0x8B, 1, 2, 3, 4][..]);
        let err = d.decode(&mut buf).unwrap_err();
        assert_eq!(err, ProtocolError::FrameTooBig { len: 11, limit: 10 });
        assert_eq!(err.close_code(), CloseCode::TOO_BIG);
    }

    #[test]
    fn header_claiming_2_pow_63_minus_1_bytes_is_1009_without_buffering() {
        let mut d = server();
        let mut buf = BytesMut::from(&[0x82u8, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4][..]);
        assert_eq!(d.decode(&mut buf).unwrap_err().close_code(), CloseCode::TOO_BIG);
    }

    #[test]
    fn message_over_limit_is_1009_at_the_fragment_that_crosses_it() {
        let mut d = Decoder::server(Limits { max_frame_size: 10, max_message_size: 15 });
        let mut bytes = frame(false, 0x2, &[0; 10]);
        bytes.extend(frame(true, 0x0, &[0; 6]));
        let err = decode_all(&mut d, &bytes).unwrap_err();
        assert_eq!(err, ProtocolError::MessageTooBig { len: 16, limit: 15 });
    }

    #[test]
    fn message_at_exactly_the_limit_is_accepted() {
        let mut d = Decoder::server(Limits { max_frame_size: 10, max_message_size: 15 });
        let mut bytes = frame(false, 0x2, &[0; 10]);
        bytes.extend(frame(true, 0x0, &[0; 5]));
        assert_eq!(decode_all(&mut d, &bytes).unwrap().len(), 1);
    }

    #[test]
    fn rfc_5_5_1_close_frames() {
        let events = decode_all(&mut server(), &frame(true, 0x8, &[0x03, 0xE8, b'o', b'k'])).unwrap();
        assert_eq!(events, vec![Event::Close(Some(CloseFrame { code: CloseCode::NORMAL, reason: "ok".into() }))]);
        assert_eq!(decode_all(&mut server(), &frame(true, 0x8, &[])).unwrap(), vec![Event::Close(None)]);
        let err = decode_all(&mut server(), &frame(true, 0x8, &[0x03])).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
        let err = decode_all(&mut server(), &frame(true, 0x8, &[0x03, 0xEE])).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR, "1006 must not be on the wire");
        let err = decode_all(&mut server(), &frame(true, 0x8, &[0x03, 0xE8, 0xFF])).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn byte_at_a_time_decodes_the_same() {
        let mut bytes = frame(false, 0x1, "héllo ".as_bytes());
        bytes.extend(frame(true, 0x9, b"p"));
        bytes.extend(frame(true, 0x0, "wörld".as_bytes()));
        bytes.extend(frame(true, 0x2, &[7; 300]));
        let whole = decode_all(&mut server(), &bytes).unwrap();
        let mut d = server();
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for b in bytes {
            buf.extend_from_slice(&[b]);
            while let Some(e) = d.decode(&mut buf).unwrap() {
                events.push(e);
            }
        }
        assert_eq!(events, whole);
        assert_eq!(events.len(), 3);
    }
}
