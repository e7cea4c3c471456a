//! Close codes and close frame payloads (RFC 6455 §5.5.1, §7.4).

use bytes::{BufMut, Bytes, BytesMut};

/// A close status code (§7.4). Only the codes the server itself sends have names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the server is going away (shutdown, route removed, idle).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: no code was present in the close frame (never sent on the wire).
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: the connection ended without a close frame (never sent on the wire).
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: a text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: a policy was violated.
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: a frame or message exceeded the configured size limit.
    pub const TOO_BIG: Self = Self(1009);
    /// 1011: the server hit an unexpected condition (e.g. the plugin trapped).
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1012: the service is restarting (a route was reconfigured): reconnect.
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1013: try again later (the server is overloaded, e.g. a slow consumer's queue is full).
    pub const TRY_AGAIN_LATER: Self = Self(1013);

    /// Whether this code may appear in a close frame on the wire (§7.4.1, §7.4.2 and the IANA
    /// registry): 1000–1003, 1007–1014, and 3000–4999 for libraries, frameworks and applications.
    pub fn is_allowed_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A decoded close frame payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: CloseCode,
    pub reason: String,
}

/// Why a received close payload is invalid, mapped to the close code the server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CloseFrameError {
    #[error("close frame payload of 1 byte")]
    OneBytePayload,
    #[error("close code {0} is not allowed on the wire")]
    ForbiddenCode(u16),
    #[error("close reason is not valid UTF-8")]
    InvalidReason,
}

/// Parses a close frame payload. `Ok(None)` is a close without a status code (answered as 1005).
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame>, CloseFrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(CloseFrameError::OneBytePayload),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_allowed_on_wire() {
                return Err(CloseFrameError::ForbiddenCode(code.0));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| CloseFrameError::InvalidReason)?;
            Ok(Some(CloseFrame { code, reason: reason.to_owned() }))
        }
    }
}

/// Encodes a close frame payload; the reason is cut at a character boundary to fit the 125-byte
/// control frame limit.
pub fn close_payload(frame: Option<&CloseFrame>) -> Bytes {
    let Some(frame) = frame else {
        return Bytes::new();
    };
    let reason = truncate_reason(&frame.reason);
    let mut buf = BytesMut::with_capacity(2 + reason.len());
    buf.put_u16(frame.code.0);
    buf.put_slice(reason.as_bytes());
    buf.freeze()
}

/// The longest prefix of `reason` that fits a close frame (123 bytes) without splitting a character.
pub fn truncate_reason(reason: &str) -> &str {
    truncate_utf8(reason, 123)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7_4_codes_allowed_on_wire() {
        for code in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999] {
            assert!(CloseCode(code).is_allowed_on_wire(), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert!(!CloseCode(code).is_allowed_on_wire(), "{code}");
        }
    }

    #[test]
    fn rfc_5_5_1_one_byte_payload_is_protocol_error() {
        assert_eq!(parse_close_payload(&[0x03]), Err(CloseFrameError::OneBytePayload));
    }

    #[test]
    fn empty_payload_has_no_code() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
    }

    #[test]
    fn code_and_reason_round_trip() {
        let frame = CloseFrame { code: CloseCode(4001), reason: "bye ✓".into() };
        let payload = close_payload(Some(&frame));
        assert_eq!(parse_close_payload(&payload), Ok(Some(frame)));
    }

    #[test]
    fn forbidden_code_and_bad_reason_are_rejected() {
        assert_eq!(parse_close_payload(&[0x03, 0xED]), Err(CloseFrameError::ForbiddenCode(1005)));
        assert_eq!(parse_close_payload(&[0x03, 0xE8, 0xFF]), Err(CloseFrameError::InvalidReason));
    }

    #[test]
    fn long_reason_is_cut_at_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let cut = truncate_reason(&reason);
        assert!(cut.len() <= 123 && cut.len() >= 122);
        assert!(reason.starts_with(cut));
    }
}
