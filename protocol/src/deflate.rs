//! permessage-deflate (RFC 7692): negotiating it in the opening handshake, and compressing and
//! decompressing one message at a time.
//!
//! A compressed message is a raw DEFLATE stream flushed at the message's end (a sync flush), sent
//! without the flush's trailing `00 00 ff ff`, with RSV1 set on its first frame (§7.2). Each side
//! may keep its LZ77 window from one message to the next ("context takeover") unless the other
//! asked it not to; keeping it compresses better and costs memory for as long as the connection
//! lives:
//! - a compressor keeps zlib's state, 2^(w+2) + 128 KiB (window bits w: 256 KiB at 15, 130 KiB
//!   at 9), so the server keeps none by default: it answers `server_no_context_takeover` and
//!   compresses with a compressor per thread ([`compress`]), reset after every message;
//! - a decompressor keeps about 7 KiB plus its window, 2^w (32 KiB at 15): held by a connection
//!   whose client keeps its context, from its first compressed message on ([`Inflater`]), and
//!   dropped after every message when the client agreed to `client_no_context_takeover`.
//!
//! Decompression is bounded: a message that inflates past the message size limit fails with
//! [`InflateError::TooBig`] as soon as it does (close 1009), so a small message cannot inflate
//! into gigabytes.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::handshake::is_token;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const NAME: &str = "permessage-deflate";
/// What a sync flush ends with, and what a message's compressed payload leaves out (§7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The window sizes zlib can work with for raw DEFLATE (it cannot do 8: a client asking the server
/// for 8 is declined).
pub const WINDOW_BITS: std::ops::RangeInclusive<u8> = 9..=15;

/// What a server is willing to agree to (a route's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Messages smaller than this are sent uncompressed.
    pub threshold: usize,
    /// The largest window the server compresses with (9–15); a client may ask for less.
    pub server_max_window_bits: u8,
    /// The largest window the server lets a client compress with (9–15), when the client says it
    /// can be limited (`client_max_window_bits` in its offer).
    pub client_max_window_bits: u8,
    /// Whether the server keeps its compression context between messages (better ratios, a
    /// compressor held per connection), unless the client asks it not to.
    pub server_context_takeover: bool,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self { threshold: 1024, server_max_window_bits: 15, client_max_window_bits: 15, server_context_takeover: false }
    }
}

/// What was agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message (so the server need not keep a
    /// decompressor between messages).
    pub client_no_context_takeover: bool,
    /// The window the server compresses with.
    pub server_window_bits: u8,
    /// The largest window the client compresses with.
    pub client_window_bits: u8,
    /// Whether the response names `server_max_window_bits` / `client_max_window_bits`.
    server_bits_in_response: bool,
    client_bits_in_response: bool,
    /// Messages smaller than this are sent uncompressed (from the server's configuration).
    pub threshold: usize,
}

impl DeflateParams {
    /// The agreement a server's `Sec-WebSocket-Extensions` answer states, read by a client: what
    /// is not named is the default (contexts kept, 15-bit windows). `None` if it is not a valid
    /// permessage-deflate answer.
    pub fn from_response(value: &str) -> Option<Self> {
        let offers = split_offers(value);
        let [answer] = offers.as_slice() else { return None };
        if answer.name != NAME {
            return None;
        }
        let mut params = Self {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_window_bits: 15,
            client_window_bits: 15,
            server_bits_in_response: false,
            client_bits_in_response: false,
            threshold: 0,
        };
        for (key, value) in &answer.params {
            match (key.as_str(), value.as_deref()) {
                ("server_no_context_takeover", None) => params.server_no_context_takeover = true,
                ("client_no_context_takeover", None) => params.client_no_context_takeover = true,
                ("server_max_window_bits", Some(v)) => {
                    params.server_window_bits = window_bits(v)?;
                    params.server_bits_in_response = true;
                }
                ("client_max_window_bits", Some(v)) => {
                    params.client_window_bits = window_bits(v)?;
                    params.client_bits_in_response = true;
                }
                _ => return None,
            }
        }
        Some(params)
    }

    /// The same agreement as the client sees it, for a client's decoder (its [`Inflater`] then
    /// follows the server's window and context): test clients use it.
    pub fn as_client(&self) -> Self {
        Self {
            client_no_context_takeover: self.server_no_context_takeover,
            client_window_bits: self.server_window_bits,
            ..*self
        }
    }

    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub fn response(&self) -> String {
        let mut value = String::from(NAME);
        if self.server_no_context_takeover {
            value.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            value.push_str("; client_no_context_takeover");
        }
        if self.server_bits_in_response {
            value.push_str(&format!("; server_max_window_bits={}", self.server_window_bits));
        }
        if self.client_bits_in_response {
            value.push_str(&format!("; client_max_window_bits={}", self.client_window_bits));
        }
        value
    }
}

/// Picks the first offer of permessage-deflate that `config` can accept, from the values of the
/// request's `Sec-WebSocket-Extensions` fields (each a comma-separated list of offers, §9.1).
/// Offers of other extensions, and offers with an unknown, repeated or invalid parameter, are
/// declined (§7.1); `None` when none is left: the connection goes on without compression.
pub fn negotiate<'a>(fields: impl IntoIterator<Item = &'a str>, config: &DeflateConfig) -> Option<DeflateParams> {
    fields.into_iter().flat_map(split_offers).find_map(|offer| accept_offer(&offer, config))
}

/// One extension offer: its name and its parameters (with their values, unquoted).
#[derive(Debug, PartialEq, Eq)]
struct Offer {
    name: String,
    params: Vec<(String, Option<String>)>,
}

/// Splits a field value into offers; an offer that does not parse is dropped (declined).
fn split_offers(field: &str) -> Vec<Offer> {
    let mut offers = Vec::new();
    let mut rest = field;
    loop {
        // An offer runs to the next comma outside a quoted string.
        let mut quoted = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    quoted = !quoted;
                }
                c == ',' && !quoted
            })
            .map_or(rest.len(), |(i, _)| i);
        if let Some(offer) = parse_offer(&rest[..end]) {
            offers.push(offer);
        }
        if end == rest.len() {
            return offers;
        }
        rest = &rest[end + 1..];
    }
}

fn parse_offer(text: &str) -> Option<Offer> {
    let mut parts = text.split(';').map(str::trim);
    let name = parts.next().filter(|n| is_token(n))?.to_ascii_lowercase();
    let mut params = Vec::new();
    for part in parts {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (part, None),
        };
        if !is_token(key) {
            return None;
        }
        let value = match value {
            None => None,
            Some(v) if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => Some(v[1..v.len() - 1].to_owned()),
            Some(v) if is_token(v) => Some(v.to_owned()),
            Some(_) => return None,
        };
        params.push((key.to_ascii_lowercase(), value));
    }
    Some(Offer { name, params })
}

/// A window-bits value as §7.1.2 writes it: 8 to 15, decimal, no leading zero.
fn window_bits(value: &str) -> Option<u8> {
    if value.len() > 2 || value.starts_with('0') {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

fn accept_offer(offer: &Offer, config: &DeflateConfig) -> Option<DeflateParams> {
    if offer.name != NAME {
        return None;
    }
    let mut params = DeflateParams {
        server_no_context_takeover: !config.server_context_takeover,
        client_no_context_takeover: false,
        server_window_bits: config.server_max_window_bits,
        client_window_bits: 15,
        server_bits_in_response: config.server_max_window_bits < 15,
        client_bits_in_response: false,
        threshold: config.threshold,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in &offer.params {
        if seen.contains(&key.as_str()) {
            return None; // a parameter given twice declines the offer (§7.1)
        }
        seen.push(key);
        match (key.as_str(), value.as_deref()) {
            ("server_no_context_takeover", None) => params.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => params.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => {
                // The server must compress with at most this window, and say so.
                let bits = window_bits(v)?.min(config.server_max_window_bits);
                if !WINDOW_BITS.contains(&bits) {
                    return None;
                }
                params.server_window_bits = bits;
                params.server_bits_in_response = true;
            }
            ("client_max_window_bits", v) => {
                // The client can be limited: to the configured window, or its own limit if lower.
                let offered = match v {
                    None => 15,
                    Some(v) => window_bits(v)?,
                };
                let bits = offered.min(config.client_max_window_bits);
                params.client_window_bits = bits;
                params.client_bits_in_response = bits < 15 || v.is_some();
            }
            _ => return None, // unknown, or a value where none belongs (or the reverse)
        }
    }
    Some(params)
}

thread_local! {
    /// One compressor per window size and thread, reset after every message: a server without
    /// context takeover holds no compressor per connection.
    static COMPRESSORS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([None, None, None, None, None, None, None]) };
}

/// Compresses one message with a fresh context (no context takeover) and the window `window_bits`
/// (9–15): the payload to send with RSV1 set.
pub fn compress(payload: &[u8], window_bits: u8) -> Bytes {
    let bits = window_bits.clamp(*WINDOW_BITS.start(), *WINDOW_BITS.end());
    COMPRESSORS.with_borrow_mut(|pool| {
        let compressor = pool[usize::from(bits - WINDOW_BITS.start())]
            .get_or_insert_with(|| Compress::new_with_window_bits(Compression::fast(), false, bits));
        let out = compress_with(compressor, payload);
        compressor.reset();
        out
    })
}

/// A compressor kept for one connection (the server's context takeover).
pub struct Deflater {
    compressor: Compress,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").finish_non_exhaustive()
    }
}

impl Deflater {
    pub fn new(window_bits: u8) -> Self {
        let bits = window_bits.clamp(*WINDOW_BITS.start(), *WINDOW_BITS.end());
        Self { compressor: Compress::new_with_window_bits(Compression::fast(), false, bits) }
    }

    /// Compresses the next message, keeping the context for the ones after it.
    pub fn compress(&mut self, payload: &[u8]) -> Bytes {
        compress_with(&mut self.compressor, payload)
    }
}

fn compress_with(compressor: &mut Compress, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    let start_in = compressor.total_in();
    loop {
        let consumed = (compressor.total_in() - start_in) as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        compressor
            .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .expect("compressing into memory cannot fail");
        // Done once every byte is in and the flush fit with room to spare (a full buffer may hide
        // more output).
        if (compressor.total_in() - start_in) as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    if out.is_empty() {
        // An empty message still needs one empty block (§7.2.3.6).
        out.push(0x00);
    }
    Bytes::from(out)
}

/// Why a compressed message could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("compressed message inflates past the limit of {limit} bytes")]
    TooBig { limit: usize },
    #[error("invalid compressed data")]
    Corrupt,
}

/// A connection's decompressor for the messages its client compresses.
pub struct Inflater {
    decompressor: Option<Box<Decompress>>,
    window_bits: u8,
    /// Reset (and its memory given back) after every message.
    no_context_takeover: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("held", &self.decompressor.is_some()).finish()
    }
}

impl Inflater {
    /// For a client that compresses with at most `window_bits`; the state is made at the first
    /// compressed message.
    pub fn new(params: &DeflateParams) -> Self {
        Self {
            decompressor: None,
            window_bits: params.client_window_bits.clamp(*WINDOW_BITS.start(), *WINDOW_BITS.end()),
            no_context_takeover: params.client_no_context_takeover,
        }
    }

    /// Whether a decompressor is held (its memory).
    pub fn is_held(&self) -> bool {
        self.decompressor.is_some()
    }

    /// Inflates the next piece of a compressed message onto `out`, which may not pass `limit`.
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut, limit: usize) -> Result<(), InflateError> {
        let bits = self.window_bits;
        let decompressor =
            self.decompressor.get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, bits)));
        inflate(decompressor, input, out, limit)
    }

    /// Ends a message: inflates the flush tail the sender left out, then forgets the context if
    /// the client does not keep its own.
    pub fn finish(&mut self, out: &mut BytesMut, limit: usize) -> Result<(), InflateError> {
        let result = self.feed(&TAIL, out, limit);
        if self.no_context_takeover || result.is_err() {
            self.decompressor = None;
        }
        result
    }
}

fn inflate(decompressor: &mut Decompress, input: &[u8], out: &mut BytesMut, limit: usize) -> Result<(), InflateError> {
    let start_in = decompressor.total_in();
    loop {
        let consumed = (decompressor.total_in() - start_in) as usize;
        // Room for what is expected, and one byte past the limit to see it crossed.
        let room = (limit + 1).saturating_sub(out.len()).min((input.len() - consumed).max(1024) * 4).max(1);
        let before = out.len();
        out.resize(before + room, 0);
        let before_out = decompressor.total_out();
        let status = decompressor.decompress(&input[consumed..], &mut out[before..], FlushDecompress::Sync);
        let produced = (decompressor.total_out() - before_out) as usize;
        out.truncate(before + produced);
        if out.len() > limit {
            return Err(InflateError::TooBig { limit });
        }
        match status {
            Err(_) => return Err(InflateError::Corrupt),
            // The stream's last block: a sender must not end it (it flushes), but it is valid DEFLATE.
            Ok(Status::StreamEnd) => return Ok(()),
            Ok(_) => {}
        }
        let all_in = (decompressor.total_in() - start_in) as usize == input.len();
        if all_in && produced < room {
            return Ok(());
        }
        if produced == 0 && !all_in && (decompressor.total_in() - start_in) as usize == consumed {
            return Err(InflateError::Corrupt); // no progress: the data is not DEFLATE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(fields: &[&str]) -> Option<DeflateParams> {
        negotiate(fields.iter().copied(), &DeflateConfig::default())
    }

    #[test]
    fn negotiation_accepts_the_first_acceptable_offer() {
        let p = offer(&["permessage-deflate"]).unwrap();
        assert_eq!(p.response(), "permessage-deflate; server_no_context_takeover");
        let p = offer(&["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(p.response(), "permessage-deflate; server_no_context_takeover");
        assert_eq!(p.client_window_bits, 15);
        let p = offer(&["permessage-deflate; client_max_window_bits=10; client_no_context_takeover"]).unwrap();
        assert_eq!(
            p.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=10"
        );
        let p = offer(&["permessage-deflate; server_max_window_bits=9; server_no_context_takeover"]).unwrap();
        assert_eq!((p.server_window_bits, p.server_no_context_takeover), (9, true));
        assert_eq!(p.response(), "permessage-deflate; server_no_context_takeover; server_max_window_bits=9");
        // Quoted values, several offers in one field and over several fields, other extensions.
        let p =
            offer(&["x-webkit-deflate-frame", "permessage-deflate; server_max_window_bits=\"12\", permessage-deflate"]);
        assert_eq!(p.unwrap().server_window_bits, 12);
    }

    #[test]
    fn a_client_reads_the_answer_as_stated() {
        let p = DeflateParams::from_response("permessage-deflate").unwrap();
        assert!(!p.server_no_context_takeover && !p.client_no_context_takeover);
        assert_eq!((p.server_window_bits, p.client_window_bits), (15, 15));
        let p =
            DeflateParams::from_response("permessage-deflate; server_no_context_takeover; client_max_window_bits=10")
                .unwrap();
        assert!(p.server_no_context_takeover);
        assert_eq!(p.client_window_bits, 10);
        // What the server's own negotiation answers reads back as what it agreed.
        let agreed = offer(&["permessage-deflate; client_max_window_bits=9; server_max_window_bits=12"]).unwrap();
        assert_eq!(DeflateParams::from_response(&agreed.response()), Some(DeflateParams { threshold: 0, ..agreed }));
        assert_eq!(DeflateParams::from_response("x-other"), None);
        assert_eq!(DeflateParams::from_response("permessage-deflate, permessage-deflate"), None);
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits=8", // zlib cannot compress with 256 B
            "permessage-deflate; server_max_window_bits=16", // out of range
            "permessage-deflate; server_max_window_bits=010", // leading zero
            "permessage-deflate; server_max_window_bits",   // needs a value
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; unknown_param",
            "permessage-deflate; bad param",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
            let fallback = offer(&[&format!("{bad}, permessage-deflate; client_no_context_takeover")]);
            assert!(fallback.is_some_and(|p| p.client_no_context_takeover), "{bad}, then a good one");
        }
        assert_eq!(offer(&[]), None);
        assert_eq!(offer(&["foo, bar; baz=1"]), None);
    }

    #[test]
    fn the_servers_configuration_bounds_the_agreement() {
        let config = DeflateConfig {
            threshold: 0,
            server_max_window_bits: 10,
            client_max_window_bits: 11,
            server_context_takeover: true,
        };
        let p = negotiate(["permessage-deflate; client_max_window_bits"], &config).unwrap();
        assert_eq!(
            p.response(),
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=11",
            "context kept, both windows limited"
        );
        let p = negotiate(["permessage-deflate; server_max_window_bits=14"], &config).unwrap();
        assert_eq!(p.server_window_bits, 10);
        // A client that cannot be limited keeps its 15.
        let p = negotiate(["permessage-deflate"], &config).unwrap();
        assert_eq!(p.client_window_bits, 15);
    }

    #[test]
    fn messages_round_trip_with_and_without_context() {
        let params = offer(&["permessage-deflate; client_max_window_bits=9"]).unwrap();
        let mut inflater = Inflater::new(&params);
        let mut deflater = Deflater::new(9);
        let messages: Vec<Vec<u8>> = vec![
            b"Hello".to_vec(),
            Vec::new(),
            b"Hello Hello Hello Hello".to_vec(),
            (0..100_000u32).map(|i| (i % 251) as u8).collect(),
        ];
        for m in &messages {
            for compressed in [compress(m, 9), deflater.compress(m)] {
                let mut out = BytesMut::new();
                inflater.feed(&compressed, &mut out, 1 << 20).unwrap();
                inflater.finish(&mut out, 1 << 20).unwrap();
                assert_eq!(&out[..], &m[..]);
            }
        }
        // RFC 7692 §7.2.3.1: "Hello" compressed without context.
        assert_eq!(&compress(b"Hello", 15)[..], &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    }

    #[test]
    fn a_message_that_inflates_past_the_limit_fails_early() {
        let mut best = Compress::new_with_window_bits(Compression::best(), false, 15);
        let bomb = compress_with(&mut best, &vec![0u8; 10 << 20]);
        assert!(bomb.len() < 20_000, "10 MiB of zeros compress to {} bytes", bomb.len());
        let params = offer(&["permessage-deflate"]).unwrap();
        let mut out = BytesMut::new();
        let result = Inflater::new(&params).feed(&bomb, &mut out, 1 << 20);
        assert_eq!(result, Err(InflateError::TooBig { limit: 1 << 20 }));
        assert!(out.len() <= (1 << 20) + 1, "stopped at the limit, not after inflating it all");
        let mut out = BytesMut::new();
        assert_eq!(Inflater::new(&params).feed(&[0xff; 64], &mut out, 1 << 20), Err(InflateError::Corrupt));
    }
}
