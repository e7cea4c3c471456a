//! RFC 6455 as pure functions and state machines over byte slices.
//!
//! Nothing here touches a socket, reads a clock or uses tokio (time is an input): bytes go in, events and bytes come out. That
//! keeps every rule of the RFC testable with plain arrays, property tests and fuzzers, and lets the
//! same code serve the server and the test clients.
//!
//! Layering follows the RFC:
//! - [`handshake`]: the opening handshake (§4.2): request parsing, validation, the 101 response.
//! - [`frame`]: opcodes and the frame header codec (§5.2), frame encoding for the server side.
//! - [`mask`]: the masking transform (§5.3).
//! - [`utf8`]: an incremental UTF-8 validator that fails as soon as bytes can no longer be valid.
//! - [`close`]: close codes and close frame payloads (§5.5.1, §7.4).
//! - [`decoder`]: the receive side of a connection: frames → messages and control events, with
//!   every sequencing rule, limit and validation.
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation, and compressing and decompressing
//!   one message at a time, bounded.
//! - [`session`]: the session above the decoder: pings, timeouts, the closing handshake, as a
//!   state machine whose clock is an input.

pub mod close;
pub mod decoder;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod session;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use decoder::{Decoder, Event, Limits, Message, ProtocolError};
pub use frame::{FrameHeader, OpCode};
