//! Incremental UTF-8 validation (RFC 6455 §8.1).
//!
//! A text message may be split across frames, and a frame across TCP reads, anywhere — even in the
//! middle of a code point. [`Utf8Validator`] is fed the pieces in order and reports an error as soon
//! as the bytes seen so far can no longer be the prefix of valid UTF-8, so a connection sending bad
//! text is failed without waiting for the rest of the message.

/// The bytes can never become valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validates a byte stream piece by piece. Holds at most the three bytes of an unfinished code point.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: usize,
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the next piece of the stream.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            // Finish the code point left over from the last piece, using at most 3 new bytes.
            let take = input.len().min(4 - self.pending_len);
            let mut joined = self.pending;
            joined[self.pending_len..self.pending_len + take].copy_from_slice(&input[..take]);
            let joined_len = self.pending_len + take;
            let valid_up_to = match std::str::from_utf8(&joined[..joined_len]) {
                Ok(_) => joined_len,
                Err(e) if e.valid_up_to() > 0 => e.valid_up_to(),
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {
                    // Still a valid prefix, and the input is used up.
                    self.pending = joined;
                    self.pending_len = joined_len;
                    return Ok(());
                }
            };
            // The pending code point is complete; the rest of `input` is checked below.
            input = &input[valid_up_to - self.pending_len..];
            self.pending_len = 0;
        }
        match std::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let tail = &input[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len();
                Ok(())
            }
        }
    }

    /// Ends the stream: an unfinished code point is an error. Resets the validator.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.pending_len == 0;
        self.pending_len = 0;
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }

    /// Forgets any unfinished code point.
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_everywhere(bytes: &[u8]) -> Vec<Result<(), InvalidUtf8>> {
        (0..=bytes.len())
            .map(|cut| {
                let mut v = Utf8Validator::new();
                v.feed(&bytes[..cut])?;
                v.feed(&bytes[cut..])?;
                v.finish()
            })
            .collect()
    }

    #[test]
    fn valid_text_split_at_every_byte_is_valid() {
        let text = "κόσμε — hello 🌍 ok";
        for result in split_everywhere(text.as_bytes()) {
            assert_eq!(result, Ok(()));
        }
    }

    #[test]
    fn byte_by_byte_valid() {
        let mut v = Utf8Validator::new();
        for b in "a€𝄞z".as_bytes() {
            v.feed(&[*b]).unwrap();
        }
        v.finish().unwrap();
    }

    #[test]
    fn fails_fast_on_impossible_prefix() {
        // 0xF4 0x90 would encode a code point above U+10FFFF: invalid after two bytes.
        let mut v = Utf8Validator::new();
        v.feed(b"ok").unwrap();
        v.feed(&[0xF4]).unwrap();
        assert_eq!(v.feed(&[0x90]), Err(InvalidUtf8));
    }

    #[test]
    fn fails_fast_on_surrogate_and_overlong() {
        assert_eq!(Utf8Validator::new().feed(&[0xED, 0xA0]), Err(InvalidUtf8));
        assert_eq!(Utf8Validator::new().feed(&[0xC0]), Err(InvalidUtf8));
        assert_eq!(Utf8Validator::new().feed(&[0xE0, 0x80]), Err(InvalidUtf8));
        assert_eq!(Utf8Validator::new().feed(&[0xFF]), Err(InvalidUtf8));
    }

    #[test]
    fn truncated_code_point_fails_at_finish() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xE2, 0x82]).unwrap();
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }

    #[test]
    fn invalid_after_pending_completes() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xE2]).unwrap();
        assert_eq!(v.feed(&[0x82, 0xAC, 0xFF]), Err(InvalidUtf8));
    }

    #[test]
    fn agrees_with_std_on_every_split() {
        let samples: [&[u8]; 6] = [
            b"plain",
            &[0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83],
            &[0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xED, 0xA0, 0x80, 0x65],
            &[0xF0, 0x90, 0x80],
            &[0xF0, 0x9D, 0x84, 0x9E, 0x80],
            &[0xEF, 0xBF, 0xBF],
        ];
        for s in samples {
            let expected = std::str::from_utf8(s).is_ok();
            for result in split_everywhere(s) {
                assert_eq!(result.is_ok(), expected, "{s:x?}");
            }
        }
    }
}
