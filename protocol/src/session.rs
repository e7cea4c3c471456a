//! The WebSocket session after the handshake, as a state machine without I/O (RFC 6455 §5.5, §7):
//! what to do with each decoded event, when to ping, when a silent peer or an unfinished message is
//! given up on, and the closing handshake in each of its variants.
//!
//! Inputs: bytes read (through [`Session::next_event`] over the connection's read buffer), the
//! passing of time ([`Session::tick`], with the instant supplied by the caller), a close asked
//! for by the server ([`Session::close`]), back-pressure ([`Session::set_paused`]) and the end of
//! the TCP stream. Outputs: [`Output`]s (a control frame to send, a message for the route's
//! handler, our close frame, the end of the session) and [`Session::next_deadline`].
//!
//! Phases: `Open` → `ClosingByUs` (our close frame is sent; we wait for the peer's until
//! `close_timeout`) → `Closed`. When the peer closes first, we answer and the session is over at
//! once (the server closes TCP first, §7.1.1), so "closing by the peer" needs no phase of its own.
//! A stream that can no longer be parsed is failed (§7.1.7): our close frame, then the end.
//! Every way out is one of these transitions, so the caller has exactly one close sequence.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::close::{CloseCode, CloseFrame};
use super::decoder::{Decoder, Event, Message};
use super::frame::OpCode;

/// The timeouts of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Silence this long (no byte from the peer) → we ping.
    pub ping_interval: Duration,
    /// Silence this long → close 1001 "idle timeout".
    pub idle_timeout: Duration,
    /// After our close frame, how long the peer has to answer with its own.
    pub close_timeout: Duration,
    /// A message (all its frames) must be received within this long of its first byte → else
    /// close 1008, so that a client cannot pin a half-sent message's memory forever.
    pub message_timeout: Duration,
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a control frame: a pong answering a ping, or our keepalive ping.
    Control(OpCode, Bytes),
    /// Hand a complete data message to the route's handler.
    Message(Message),
    /// Send our close frame after whatever the handler has already queued (`None`: a close frame
    /// without a code, answering one without). With `finish`, the session is over once it is sent
    /// (the peer closed first, or the stream failed); otherwise keep reading until the peer's close
    /// frame or [`Output::Finish`].
    Close { frame: Option<CloseFrame>, finish: bool },
    /// The session is over: flush up to our close frame, half-close, drain.
    Finish,
}

/// How a session ended, as the route's handler is told (`on-close`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The code of the close frame received, or of ours when we closed first; 1005 when the peer's
    /// frame had no code; 1006 when there was no close handshake at all.
    pub code: u16,
    pub reason: String,
}

impl Ending {
    pub fn abnormal() -> Self {
        Self { code: CloseCode::ABNORMAL.0, reason: String::new() }
    }

    fn of(frame: &CloseFrame) -> Self {
        Self { code: frame.code.0, reason: frame.reason.clone() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Our close frame is out; the peer has until `deadline` to answer.
    ClosingByUs {
        deadline: Instant,
    },
    Closed,
}

/// One WebSocket session's protocol state.
#[derive(Debug)]
pub struct Session {
    decoder: Decoder,
    timing: Timing,
    phase: Phase,
    /// When the peer last sent any byte (a large frame trickling in is not silence).
    last_heard: Instant,
    /// Our keepalive ping is out and unanswered by any byte.
    pinged: bool,
    /// When the message now being received began to arrive.
    message_since: Option<Instant>,
    /// The caller stopped reading (back-pressure): silence is ours, not the peer's.
    paused: bool,
    ending: Ending,
}

impl Session {
    pub fn new(decoder: Decoder, timing: Timing, now: Instant) -> Self {
        Self {
            decoder,
            timing,
            phase: Phase::Open,
            last_heard: now,
            pinged: false,
            message_since: None,
            paused: false,
            ending: Ending::abnormal(),
        }
    }

    /// How the session ended (meaningful once it is over).
    pub fn ending(&self) -> &Ending {
        &self.ending
    }

    /// Whether messages are still delivered and frames other than our close may be sent.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The decoder, to size reads and count the bytes a message in progress holds.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Bytes arrived from the peer.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.pinged = false;
    }

    /// Decodes the next event buffered in `buf` and says what to do with it; `None` when more bytes
    /// are needed (or the session is over).
    pub fn next_event(&mut self, buf: &mut BytesMut, now: Instant) -> Option<Output> {
        while self.phase != Phase::Closed {
            let event = match self.decoder.decode(buf) {
                Ok(Some(event)) => event,
                Ok(None) => {
                    if self.decoder.mid_message() || !buf.is_empty() {
                        self.message_since.get_or_insert(now);
                    } else {
                        self.message_since = None;
                    }
                    return None;
                }
                Err(error) => {
                    // The stream can no longer be parsed: fail the connection (§7.1.7).
                    let was_open = self.phase == Phase::Open;
                    self.phase = Phase::Closed;
                    if !was_open {
                        return Some(Output::Finish);
                    }
                    let frame = CloseFrame { code: error.close_code(), reason: error.to_string() };
                    self.ending = Ending::of(&frame);
                    return Some(Output::Close { frame: Some(frame), finish: true });
                }
            };
            match (event, self.phase) {
                (Event::Close(frame), Phase::Open) => {
                    self.phase = Phase::Closed;
                    self.ending = match &frame {
                        Some(f) => Ending::of(f),
                        None => Ending { code: CloseCode::NO_STATUS.0, reason: String::new() },
                    };
                    // Echo the peer's code (§5.5.1); a close without a code is answered without one.
                    let echo = frame.map(|f| CloseFrame { code: f.code, reason: String::new() });
                    return Some(Output::Close { frame: echo, finish: true });
                }
                (Event::Close(_), _) => {
                    // The answer to ours: the closing handshake is complete.
                    self.phase = Phase::Closed;
                    return Some(Output::Finish);
                }
                // After our close frame nothing else is sent and data is no longer delivered.
                (_, Phase::ClosingByUs { .. } | Phase::Closed) => continue,
                (Event::Ping(payload), Phase::Open) => return Some(Output::Control(OpCode::Pong, payload)),
                (Event::Pong(_), Phase::Open) => continue,
                (Event::Message(message), Phase::Open) => {
                    self.message_since = None;
                    return Some(Output::Message(message));
                }
            }
        }
        None
    }

    /// The server closes the session (shutdown, idle, the handler's wish, a slow consumer…).
    /// `None` when it is already closing.
    pub fn close(&mut self, frame: CloseFrame, now: Instant) -> Option<Output> {
        if self.phase != Phase::Open {
            return None;
        }
        self.ending = Ending::of(&frame);
        self.phase = Phase::ClosingByUs { deadline: now + self.timing.close_timeout };
        Some(Output::Close { frame: Some(frame), finish: false })
    }

    /// The TCP stream ended (or failed): the session is over, with 1006 unless a close frame was
    /// already exchanged or sent.
    pub fn end_of_stream(&mut self) -> Output {
        self.phase = Phase::Closed;
        Output::Finish
    }

    /// Back-pressure: while paused the caller does not read, so silence is not the peer's fault:
    /// no ping, idle close or message deadline runs; they start afresh on resuming.
    pub fn set_paused(&mut self, paused: bool, now: Instant) {
        if self.paused && !paused {
            self.last_heard = now;
            if let Some(since) = &mut self.message_since {
                *since = now;
            }
        }
        self.paused = paused;
    }

    /// The next instant at which [`tick`](Self::tick) has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closed => None,
            Phase::ClosingByUs { deadline } => Some(deadline),
            Phase::Open if self.paused => None,
            Phase::Open => {
                let silence = if self.pinged { self.timing.idle_timeout } else { self.timing.ping_interval };
                let idle = self.last_heard + silence;
                Some(match self.message_since {
                    Some(since) => idle.min(since + self.timing.message_timeout),
                    None => idle,
                })
            }
        }
    }

    /// Time has passed: ping a silent peer, close an idle one or one that does not finish its
    /// message, end a closing handshake the peer never answered.
    pub fn tick(&mut self, now: Instant) -> Option<Output> {
        match self.phase {
            Phase::Closed => None,
            Phase::ClosingByUs { deadline } if now >= deadline => {
                self.phase = Phase::Closed;
                Some(Output::Finish)
            }
            Phase::ClosingByUs { .. } => None,
            Phase::Open if self.paused => None,
            Phase::Open => {
                if let Some(since) = self.message_since
                    && now >= since + self.timing.message_timeout
                {
                    let frame = CloseFrame {
                        code: CloseCode::POLICY_VIOLATION,
                        reason: "message not completed in time".into(),
                    };
                    return self.close(frame, now);
                }
                if now >= self.last_heard + self.timing.idle_timeout {
                    let frame = CloseFrame { code: CloseCode::GOING_AWAY, reason: "idle timeout".into() };
                    return self.close(frame, now);
                }
                if !self.pinged && now >= self.last_heard + self.timing.ping_interval {
                    self.pinged = true;
                    return Some(Output::Control(OpCode::Ping, Bytes::from_static(b"keepalive")));
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;
    use crate::frame::encode_client_frame;

    const KEY: [u8; 4] = [1, 2, 3, 4];

    fn timing() -> Timing {
        Timing {
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            close_timeout: Duration::from_secs(5),
            message_timeout: Duration::from_secs(20),
        }
    }

    fn session(now: Instant) -> Session {
        Session::new(Decoder::server(Limits::default()), timing(), now)
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        encode_client_frame(fin, opcode, payload, KEY)
    }

    fn feed(s: &mut Session, bytes: &[u8], now: Instant) -> Vec<Output> {
        let mut buf = BytesMut::from(bytes);
        s.heard(now);
        std::iter::from_fn(|| s.next_event(&mut buf, now)).collect()
    }

    fn code_of(output: &Output) -> u16 {
        match output {
            Output::Close { frame: Some(f), .. } => f.code.0,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[test]
    fn silence_brings_a_ping_then_close_1001() {
        let t0 = Instant::now();
        let mut s = session(t0);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(30)));
        assert_eq!(s.tick(t0 + Duration::from_secs(29)), None);
        let ping = s.tick(t0 + Duration::from_secs(30));
        assert!(matches!(ping, Some(Output::Control(OpCode::Ping, _))), "{ping:?}");
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(75)));
        let close = s.tick(t0 + Duration::from_secs(75)).expect("idle close");
        assert_eq!(code_of(&close), 1001);
        assert_eq!(s.ending().reason, "idle timeout");
        // The peer never answers our close: the session ends after close_timeout.
        assert_eq!(s.tick(t0 + Duration::from_secs(79)), None);
        assert_eq!(s.tick(t0 + Duration::from_secs(80)), Some(Output::Finish));
        assert!(s.is_closed());
    }

    #[test]
    fn a_pong_or_any_byte_answers_the_keepalive() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.tick(t0 + Duration::from_secs(30));
        let t1 = t0 + Duration::from_secs(40);
        assert_eq!(feed(&mut s, &frame(true, 0xA, b"keepalive"), t1), vec![]);
        assert_eq!(s.next_deadline(), Some(t1 + Duration::from_secs(30)));
    }

    #[test]
    fn a_large_frame_arriving_slowly_is_not_idle() {
        let t0 = Instant::now();
        let slow = Timing { message_timeout: Duration::from_secs(600), ..timing() };
        let mut s = Session::new(Decoder::server(Limits::default()), slow, t0);
        let big = frame(true, 0x2, &vec![7u8; 100_000]);
        let mut buf = BytesMut::new();
        // A fifth of the frame every 20 s: 100 s in all, past the idle timeout (75 s), yet the peer
        // is never silent for the ping interval (30 s).
        for (i, chunk) in big.chunks(20_003).enumerate() {
            let now = t0 + Duration::from_secs(20 * (i as u64 + 1));
            assert_eq!(s.tick(now), None, "chunk {i}");
            buf.extend_from_slice(chunk);
            s.heard(now);
            let out: Vec<_> = std::iter::from_fn(|| s.next_event(&mut buf, now)).collect();
            if i == 4 {
                assert!(matches!(&out[..], [Output::Message(Message::Binary(p))] if p.len() == 100_000));
            } else {
                assert!(out.is_empty());
            }
        }
        assert!(s.is_open());
    }

    #[test]
    fn an_unfinished_message_is_closed_with_1008_at_its_deadline() {
        let t0 = Instant::now();
        let mut s = session(t0);
        // One fragment of a message, then only pings: the message never completes.
        assert!(feed(&mut s, &frame(false, 0x1, b"part"), t0).is_empty());
        for i in 1..4 {
            let now = t0 + Duration::from_secs(5 * i);
            let out = feed(&mut s, &frame(true, 0x9, b"still here"), now);
            assert!(matches!(&out[..], [Output::Control(OpCode::Pong, _)]));
            assert_eq!(s.tick(now), None);
        }
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(20)));
        let close = s.tick(t0 + Duration::from_secs(20)).expect("deadline");
        assert_eq!(code_of(&close), 1008);
    }

    #[test]
    fn while_paused_nothing_times_out() {
        let t0 = Instant::now();
        let mut s = session(t0);
        assert!(feed(&mut s, &frame(false, 0x2, b"half"), t0).is_empty());
        s.set_paused(true, t0);
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.tick(t0 + Duration::from_secs(500)), None);
        let t1 = t0 + Duration::from_secs(600);
        s.set_paused(false, t1);
        assert_eq!(s.next_deadline(), Some(t1 + Duration::from_secs(20)));
    }

    #[test]
    fn peer_close_is_echoed_and_ends_the_session_7_1_1() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let out = feed(&mut s, &frame(true, 0x8, &payload), t0);
        let [Output::Close { frame: Some(echo), finish: true }] = &out[..] else { panic!("{out:?}") };
        assert_eq!(echo.code.0, 4000);
        assert_eq!(s.ending(), &Ending { code: 4000, reason: "bye".into() });
        assert!(s.is_closed());
    }

    #[test]
    fn close_without_code_is_answered_without_one_and_reported_as_1005() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let out = feed(&mut s, &frame(true, 0x8, b""), t0);
        assert_eq!(out, vec![Output::Close { frame: None, finish: true }]);
        assert_eq!(s.ending().code, 1005);
    }

    #[test]
    fn after_our_close_data_and_pings_get_nothing_5_5_1() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let frame_ = CloseFrame { code: CloseCode::NORMAL, reason: "done".into() };
        assert!(matches!(s.close(frame_.clone(), t0), Some(Output::Close { finish: false, .. })));
        assert_eq!(s.close(frame_, t0), None, "one close only");
        let mut bytes = frame(true, 0x1, b"late");
        bytes.extend(frame(true, 0x9, b"ping"));
        bytes.extend(frame(true, 0x8, &1000u16.to_be_bytes()));
        assert_eq!(feed(&mut s, &bytes, t0), vec![Output::Finish]);
        assert_eq!(s.ending().code, 1000);
    }

    #[test]
    fn a_protocol_violation_fails_the_connection_with_its_code_7_1_7() {
        let t0 = Instant::now();
        let mut s = session(t0);
        let out = feed(&mut s, &[0x81, 0x05, b'h', b'e', b'l', b'l', b'o'], t0); // unmasked
        assert_eq!(out.len(), 1);
        assert_eq!(code_of(&out[0]), 1002);
        assert!(matches!(out[0], Output::Close { finish: true, .. }));
        assert!(s.is_closed());
    }

    #[test]
    fn end_of_stream_without_handshake_is_1006() {
        let t0 = Instant::now();
        let mut s = session(t0);
        assert_eq!(s.end_of_stream(), Output::Finish);
        assert_eq!(s.ending().code, 1006);
    }
}
