//! Opcodes and the frame header codec (RFC 6455 §5.2).
//!
//! [`FrameHeader::parse`] is one linear function that applies the header rules in the RFC's order
//! and decides every limit from the header alone, before a byte of payload is buffered.
//! [`encode_header`] writes the header of an unmasked server frame.

use bytes::{BufMut, Bytes, BytesMut};

/// A frame opcode (§5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Control frames (§5.5) have the high bit of the opcode set.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// The largest payload a control frame may carry (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// The largest possible frame header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1: set on the first frame of a compressed message (permessage-deflate, RFC 7692). The
    /// decoder refuses it unless the extension was negotiated; RSV2 and RSV3 fail here.
    pub rsv1: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// How many bytes the header itself took.
    pub header_len: usize,
}

/// A header that breaks §5.2 or §5.5; every variant fails the connection with 1002.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("fragmented control frame")]
    FragmentedControl,
    #[error("control frame payload of {0} bytes (limit 125)")]
    ControlTooLong(u64),
    #[error("unmasked client frame")]
    Unmasked,
    #[error("64-bit payload length with the most significant bit set")]
    LengthHighBit,
    #[error("payload length {0} not in its minimal encoding")]
    NonMinimalLength(u64),
}

impl FrameHeader {
    /// Parses a header from the start of `buf`. `Ok(None)` means more bytes are needed.
    /// `require_mask`: frames from a client must be masked (§5.1); a client decoder passes false.
    /// Every reserved bit fails (no extension negotiated).
    pub fn parse(buf: &[u8], require_mask: bool) -> Result<Option<Self>, HeaderError> {
        Self::parse_with_rsv1(buf, require_mask, false)
    }

    /// [`FrameHeader::parse`] when permessage-deflate was negotiated (`rsv1_allowed`): RSV1 is
    /// reported in [`FrameHeader::rsv1`] (the decoder checks which frames may carry it).
    pub fn parse_with_rsv1(buf: &[u8], require_mask: bool, rsv1_allowed: bool) -> Result<Option<Self>, HeaderError> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        let reserved = if rsv1_allowed { 0x30 } else { 0x70 };
        if b0 & reserved != 0 {
            return Err(HeaderError::ReservedBits);
        }
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(HeaderError::UnknownOpcode(b0 & 0x0F))?;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        if opcode.is_control() {
            if !fin {
                return Err(HeaderError::FragmentedControl);
            }
            if len7 > 125 {
                // 126/127 announce an extended length, which is already over the limit.
                return Err(HeaderError::ControlTooLong(u64::from(len7)));
            }
        }
        if require_mask && !masked {
            return Err(HeaderError::Unmasked);
        }
        let (payload_len, mut pos) = match len7 {
            126 => {
                let Some(ext) = buf.get(2..4) else {
                    return Ok(None);
                };
                let len = u64::from(u16::from_be_bytes([ext[0], ext[1]]));
                // §5.2: "the minimal number of bytes MUST be used to encode the length".
                if len < 126 {
                    return Err(HeaderError::NonMinimalLength(len));
                }
                (len, 4)
            }
            127 => {
                let Some(ext) = buf.get(2..10) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(ext.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(HeaderError::LengthHighBit);
                }
                if len <= u64::from(u16::MAX) {
                    return Err(HeaderError::NonMinimalLength(len));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            let Some(key) = buf.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        Ok(Some(Self { fin, rsv1, opcode, mask, payload_len, header_len: pos }))
    }
}

/// Appends the header of an unmasked frame (server frames are never masked, §5.1).
pub fn encode_header(buf: &mut BytesMut, fin: bool, opcode: OpCode, payload_len: usize) {
    let b0 = (u8::from(fin) << 7) | opcode.as_u8();
    buf.put_u8(b0);
    match payload_len {
        0..=125 => buf.put_u8(payload_len as u8),
        126..=0xFFFF => {
            buf.put_u8(126);
            buf.put_u16(payload_len as u16);
        }
        _ => {
            buf.put_u8(127);
            buf.put_u64(payload_len as u64);
        }
    }
}

/// A whole unfragmented server frame in one buffer: used when one encoding is shared by many
/// receivers (broadcast) and for control frames.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(MAX_HEADER_LEN + payload.len());
    encode_header(&mut buf, true, opcode, payload.len());
    buf.put_slice(payload);
    buf.freeze()
}

/// [`encode_frame`] for a payload compressed by permessage-deflate: RSV1 set (RFC 7692 §6).
pub fn encode_compressed_frame(opcode: OpCode, compressed: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(MAX_HEADER_LEN + compressed.len());
    encode_header(&mut buf, true, opcode, compressed.len());
    buf[0] |= 0x40;
    buf.put_slice(compressed);
    buf.freeze()
}

/// Encodes a masked frame as a client sends it; `opcode` is the raw 4-bit value so that tests can
/// also produce invalid frames. Used by test clients and property tests.
pub fn encode_client_frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut buf = BytesMut::with_capacity(MAX_HEADER_LEN + payload.len());
    buf.put_u8((u8::from(fin) << 7) | (opcode & 0x0F));
    match payload.len() {
        n @ 0..=125 => buf.put_u8(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            buf.put_u8(0x80 | 126);
            buf.put_u16(n as u16);
        }
        n => {
            buf.put_u8(0x80 | 127);
            buf.put_u64(n as u64);
        }
    }
    buf.put_slice(&key);
    let start = buf.len();
    buf.put_slice(payload);
    crate::mask::apply_mask(&mut buf[start..], key, 0);
    buf.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8]) -> Result<Option<FrameHeader>, HeaderError> {
        FrameHeader::parse(buf, true)
    }

    #[test]
    fn rfc_5_7_unmasked_hello_encoding() {
        assert_eq!(&encode_frame(OpCode::Text, b"Hello")[..], &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    }

    #[test]
    fn rfc_5_7_unmasked_ping_and_pong() {
        assert_eq!(&encode_frame(OpCode::Ping, b"Hello")[..], &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(&encode_frame(OpCode::Pong, b"Hello")[..], &[0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    }

    #[test]
    fn rfc_5_7_256_and_64k_binary_headers() {
        let mut buf = BytesMut::new();
        encode_header(&mut buf, true, OpCode::Binary, 256);
        assert_eq!(&buf[..], &[0x82, 0x7E, 0x01, 0x00]);
        buf.clear();
        encode_header(&mut buf, true, OpCode::Binary, 65536);
        assert_eq!(&buf[..], &[0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]);
    }

    #[test]
    fn rfc_5_7_masked_hello_header() {
        let h = parse(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]).unwrap().unwrap();
        assert_eq!(
            h,
            FrameHeader {
                fin: true,
                rsv1: false,
                opcode: OpCode::Text,
                mask: Some([0x37, 0xfa, 0x21, 0x3d]),
                payload_len: 5,
                header_len: 6
            }
        );
    }

    #[test]
    fn rfc_5_7_fragmented_unmasked_text_headers() {
        // "Hel" then "lo": 0x01 0x03 ... and 0x80 0x02 ... (parsed as a client would, no mask).
        let first = FrameHeader::parse(&[0x01, 0x03], false).unwrap().unwrap();
        assert!(!first.fin && first.opcode == OpCode::Text && first.payload_len == 3);
        let last = FrameHeader::parse(&[0x80, 0x02], false).unwrap().unwrap();
        assert!(last.fin && last.opcode == OpCode::Continuation && last.payload_len == 2);
    }

    #[test]
    fn incomplete_headers_ask_for_more() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&[0x81]), Ok(None));
        assert_eq!(parse(&[0x82, 0xFE, 0x01]), Ok(None));
        assert_eq!(parse(&[0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0]), Ok(None));
        assert_eq!(parse(&[0x81, 0x85, 0x37, 0xfa, 0x21]), Ok(None));
    }

    #[test]
    fn rfc_5_2_reserved_bits_fail() {
        for b0 in [0xC1, 0xA1, 0x91] {
            assert_eq!(parse(&[b0, 0x80, 0, 0, 0, 0]), Err(HeaderError::ReservedBits));
        }
        // With permessage-deflate, RSV1 is reported (RFC 7692 §6); RSV2 and RSV3 still fail.
        assert!(FrameHeader::parse_with_rsv1(&[0xC1, 0x80, 0, 0, 0, 0], true, true).unwrap().unwrap().rsv1);
        assert_eq!(FrameHeader::parse_with_rsv1(&[0xE1, 0x80], true, true), Err(HeaderError::ReservedBits));
    }

    #[test]
    fn rfc_5_2_unknown_opcodes_fail() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(parse(&[0x80 | op, 0x80, 0, 0, 0, 0]), Err(HeaderError::UnknownOpcode(op)));
        }
    }

    #[test]
    fn rfc_5_5_control_frames_must_not_be_fragmented() {
        assert_eq!(parse(&[0x09, 0x80, 0, 0, 0, 0]), Err(HeaderError::FragmentedControl));
    }

    #[test]
    fn rfc_5_5_control_payload_at_most_125() {
        assert_eq!(parse(&[0x89, 0xFE, 0, 126, 0, 0, 0, 0]), Err(HeaderError::ControlTooLong(126)));
        assert!(parse(&[0x89, 0xFD, 0, 0, 0, 0]).unwrap().is_some());
    }

    #[test]
    fn rfc_5_1_client_frames_must_be_masked() {
        assert_eq!(parse(&[0x81, 0x05]), Err(HeaderError::Unmasked));
    }

    #[test]
    fn rfc_5_2_64bit_length_high_bit_fails() {
        assert_eq!(parse(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0]), Err(HeaderError::LengthHighBit));
    }

    #[test]
    fn rfc_5_2_lengths_must_use_the_minimal_encoding() {
        // 16-bit form for a length that fits in 7 bits; 64-bit form for one that fits in 16.
        assert_eq!(parse(&[0x82, 0xFE, 0, 125, 0, 0, 0, 0]), Err(HeaderError::NonMinimalLength(125)));
        assert_eq!(parse(&[0x82, 0xFE, 0, 0, 0, 0, 0, 0]), Err(HeaderError::NonMinimalLength(0)));
        assert_eq!(parse(&[0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]), Err(HeaderError::NonMinimalLength(65535)));
        assert_eq!(parse(&[0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0, 5]), Err(HeaderError::NonMinimalLength(5)));
        // The smallest lengths of each form are accepted.
        assert_eq!(parse(&[0x82, 0xFE, 0, 126, 0, 0, 0, 0]).unwrap().unwrap().payload_len, 126);
        assert_eq!(parse(&[0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap().unwrap().payload_len, 65536);
    }

    #[test]
    fn opcodes_round_trip() {
        for op in [OpCode::Continuation, OpCode::Text, OpCode::Binary, OpCode::Close, OpCode::Ping, OpCode::Pong] {
            assert_eq!(OpCode::from_u8(op.as_u8()), Some(op));
        }
    }
}
