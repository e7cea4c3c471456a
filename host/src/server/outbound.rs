//! A connection's outbound side: one queue state under one lock, and one way of writing.
//!
//! Every frame for a connection (its own replies, fan-out from others, control frames, the close
//! frame) goes into [`Outbound`]'s queue. Whoever holds the lock may write: bytes leave only through
//! a non-blocking vectored `try_write` of the queue's front, made under the lock, so frames are never
//! interleaved, never reordered, and nothing is ever written after the close frame (it is the last
//! frame the queue accepts). There is no writer task: a producer that finishes a batch calls
//! [`Outbound::flush`] (the session after a read batch, a plugin instance after its batch of
//! events), and when the socket cannot take more, the connection's session waits for it to become
//! writable and flushes the rest. A frame's payload is never copied: the queue holds the encoded
//! header and the payload's `Bytes` (shared by every receiver of a broadcast), written with
//! `writev`.
//!
//! Bounds (the README's per-connection formula rests on them):
//! - Fan-out from other connections ([`Outbound::deliver`]) is refused once the queue holds
//!   `max_frames` frames or `max_bytes` bytes (one larger frame still fits an empty queue): the
//!   caller closes that slow consumer with 1013, and is never blocked by it.
//! - The connection's own traffic (its replies, pongs) is admitted by the session only while the
//!   queue and its events at the handler stay under `max_bytes` ([`Outbound::try_begin_event`]),
//!   so it is flow-controlled at the source: the session stops reading. One reply may pass the
//!   bound by at most `max_message_size`; past `max_bytes + max_message_size` the connection is
//!   closed with 1013 (only a plugin that sends a connection far more than it is sent can get
//!   there).
//! - `write_timeout` is "no progress": a queue whose writes have all hit `WouldBlock` for that long
//!   is given up ([`Outbound::stalled_since`]).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::socket::Writer;
use crate::metrics::RouteMetrics;
use crate::protocol::close::close_payload;
use crate::protocol::deflate::{self, DeflateParams, Deflater};
use crate::protocol::frame::{OpCode, encode_compressed_frame, encode_frame};
use crate::protocol::{CloseCode, CloseFrame};

/// The longest server frame header: 2 bytes and a 64-bit length (server frames are not masked).
const MAX_HEADER: usize = 10;
/// Slices handed to one `writev` (well under IOV_MAX).
const MAX_SLICES: usize = 64;
/// Writes up to this size are copied into one buffer and sent with one `send` rather than `writev`.
const GATHER: usize = 2048;

thread_local! {
    /// The buffer small writes are gathered in (see [`Outbound::write_slices`]).
    static GATHERED: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(GATHER));
}

/// The bounds of one connection's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
    /// How far one message may take the queue past `max_bytes` (the route's max_message_size).
    pub max_message_size: usize,
    /// Events of this connection at its handler at once, at most.
    pub max_in_flight: usize,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue is at its bound: the receiver is slow.
    Full,
    /// The connection is closing or gone: nothing more is written.
    Closed,
}

/// What the session reads of its queue before a step (see [`Outbound::session_view`]).
#[derive(Debug)]
pub struct SessionView {
    pub close_notice: Option<CloseFrame>,
    pub failed: bool,
    pub room: bool,
}

/// Where the queue stands after a flush (see [`Outbound::flush_and_view`]).
#[derive(Debug, Clone, Copy)]
pub struct AfterFlush {
    /// The connection's own traffic may go on.
    pub room: bool,
    /// Bytes queued and at the handler.
    pub held: usize,
    /// Since when the unwritten bytes have made no progress (the socket is full), if they have not.
    pub stalled_since: Option<Instant>,
}

/// One frame waiting to be written: its encoded header and its payload (or a whole pre-encoded
/// frame, with no header of its own).
struct Frame {
    header: [u8; MAX_HEADER],
    header_len: u8,
    payload: Bytes,
}

impl Frame {
    fn data(opcode: OpCode, payload: Bytes) -> Self {
        let mut header = [0u8; MAX_HEADER];
        header[0] = 0x80 | opcode.as_u8();
        let header_len = match payload.len() {
            n @ 0..=125 => {
                header[1] = n as u8;
                2
            }
            n @ 126..=0xFFFF => {
                header[1] = 126;
                header[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                4
            }
            n => {
                header[1] = 127;
                header[2..10].copy_from_slice(&(n as u64).to_be_bytes());
                10
            }
        };
        Self { header, header_len, payload }
    }

    /// A message compressed by permessage-deflate: RSV1 set.
    fn compressed(opcode: OpCode, payload: Bytes) -> Self {
        let mut frame = Self::data(opcode, payload);
        frame.header[0] |= 0x40;
        frame
    }

    fn encoded(bytes: Bytes) -> Self {
        Self { header: [0; MAX_HEADER], header_len: 0, payload: bytes }
    }

    fn len(&self) -> usize {
        usize::from(self.header_len) + self.payload.len()
    }

    fn is_close(&self) -> bool {
        self.header_len > 0 && self.header[0] & 0x0F == OpCode::Close.as_u8()
    }
}

/// Where the close frame stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// Queued as the last frame; nothing is accepted after it.
    Queued,
    /// On the wire.
    Written,
}

struct State {
    frames: VecDeque<Frame>,
    /// Bytes of the front frame already written.
    front_written: usize,
    /// Bytes queued (headers and payloads, the front frame's written part included).
    bytes: usize,
    closing: Closing,
    /// The close frame queued by someone other than the session, not yet seen by it.
    close_notice: Option<CloseFrame>,
    /// A write failed: the peer is gone. Nothing more is queued or written.
    failed: bool,
    /// Since when every write attempt has met a full socket (None: not blocked).
    blocked_since: Option<Instant>,
    /// Queued since the last flush.
    dirty: bool,
    /// Events of this connection handed to its handler and not yet handled, and their bytes.
    in_flight: usize,
    in_flight_bytes: usize,
    /// The session has stopped reading and wants to hear when room or credit comes back.
    session_waiting: bool,
    /// The session's task, kept across its waits (registered again only if it changes), so a
    /// wake-up is a flag ([`Inner::attention`]) and one `wake_by_ref`.
    session_waker: Option<Waker>,
    /// The compressor this connection keeps (permessage-deflate with server context takeover):
    /// messages are compressed under this lock, so in the order they are queued.
    deflater: Option<Deflater>,
}

/// How a connection's data messages are compressed (permessage-deflate, when negotiated).
#[derive(Debug, Clone, Copy)]
struct Compression {
    threshold: usize,
    window_bits: u8,
}

/// A message for many connections (broadcast, publish), encoded at most once per form its
/// receivers need: plain, and compressed once per window size for receivers that agreed to
/// permessage-deflate without server context takeover (receivers that keep a context compress
/// it themselves). Every receiver of a form shares its bytes.
pub struct SharedMessage {
    opcode: OpCode,
    payload: Bytes,
    plain: OnceLock<Bytes>,
    compressed: [OnceLock<Bytes>; 7],
}

impl SharedMessage {
    pub fn new(opcode: OpCode, payload: Bytes) -> Self {
        Self { opcode, payload, plain: OnceLock::new(), compressed: Default::default() }
    }

    pub fn opcode(&self) -> OpCode {
        self.opcode
    }

    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    fn plain(&self) -> Bytes {
        self.plain.get_or_init(|| encode_frame(self.opcode, &self.payload)).clone()
    }

    fn compressed(&self, window_bits: u8) -> Bytes {
        let slot = &self.compressed[usize::from(window_bits.clamp(9, 15) - 9)];
        slot.get_or_init(|| encode_compressed_frame(self.opcode, &deflate::compress(&self.payload, window_bits)))
            .clone()
    }
}

/// What fan-out hands a connection's queue.
pub enum Outgoing<'a> {
    /// A message for this connection alone (a plugin's `send` to it).
    One(OpCode, Bytes),
    /// A message shared with other receivers.
    Shared(&'a SharedMessage),
}

impl Outgoing<'_> {
    fn len(&self) -> usize {
        match self {
            Self::One(_, payload) => payload.len(),
            Self::Shared(m) => m.payload.len(),
        }
    }
}

struct Inner {
    socket: Arc<Writer>,
    state: Mutex<State>,
    /// Something needs the session's attention (see [`Outbound::poll_attention`]): a close queued
    /// by someone else, a write that met a full socket, room or credit come back. Set under the
    /// state's lock, read by the session without it.
    attention: AtomicBool,
    limits: QueueLimits,
    compression: Option<Compression>,
    /// The route's counters of frames and bytes queued (none in unit tests).
    metrics: Option<Arc<RouteMetrics>>,
}

/// A connection's outbound queue. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Outbound(Arc<Inner>);

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Outbound").field("frames", &st.frames.len()).field("bytes", &st.bytes).finish()
    }
}

impl Outbound {
    /// A connection's queue: its data messages compressed as `deflate` says (when
    /// permessage-deflate was agreed), what it queues counted in its route's `metrics`.
    pub fn for_connection(
        socket: Arc<Writer>,
        limits: QueueLimits,
        deflate: Option<&DeflateParams>,
        metrics: Option<Arc<RouteMetrics>>,
    ) -> Self {
        let out = Self::new_inner(socket, limits, deflate, metrics);
        if let Some(p) = deflate.filter(|p| !p.server_no_context_takeover) {
            out.lock().deflater = Some(Deflater::new(p.server_window_bits));
        }
        out
    }

    pub fn new(socket: Arc<Writer>, limits: QueueLimits) -> Self {
        Self::new_inner(socket, limits, None, None)
    }

    fn new_inner(
        socket: Arc<Writer>,
        limits: QueueLimits,
        deflate: Option<&DeflateParams>,
        metrics: Option<Arc<RouteMetrics>>,
    ) -> Self {
        Self(Arc::new(Inner {
            socket,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                front_written: 0,
                bytes: 0,
                closing: Closing::Open,
                close_notice: None,
                failed: false,
                blocked_since: None,
                dirty: false,
                in_flight: 0,
                in_flight_bytes: 0,
                session_waiting: false,
                session_waker: None,
                deflater: None,
            }),
            attention: AtomicBool::new(false),
            limits,
            compression: deflate.map(|p| Compression { threshold: p.threshold, window_bits: p.server_window_bits }),
            metrics,
        }))
    }

    /// A data message as this connection sends it: compressed when permessage-deflate was agreed
    /// and the message is not below the threshold. Control frames are never compressed (§6.1).
    fn frame_for(&self, st: &mut State, opcode: OpCode, payload: Bytes) -> Frame {
        match self.0.compression {
            Some(c) if !opcode.is_control() && payload.len() >= c.threshold => {
                let compressed = match &mut st.deflater {
                    Some(deflater) => deflater.compress(&payload),
                    None => deflate::compress(&payload, c.window_bits),
                };
                Frame::compressed(opcode, compressed)
            }
            _ => Frame::data(opcode, payload),
        }
    }

    /// A shared message as this connection sends it (see [`SharedMessage`]).
    fn shared_frame_for(&self, st: &mut State, message: &SharedMessage) -> Frame {
        match self.0.compression {
            Some(c) if message.payload.len() >= c.threshold => match st.deflater {
                Some(_) => self.frame_for(st, message.opcode, message.payload.clone()),
                None => Frame::encoded(message.compressed(c.window_bits)),
            },
            _ => Frame::encoded(message.plain()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the state consistent before it can panic; recover the guard.
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether two handles are the same queue.
    pub fn same(&self, other: &Outbound) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Queues bytes already encoded (the 101 response, which precedes every frame).
    pub fn push_encoded(&self, bytes: Bytes) -> Result<bool, QueueError> {
        let mut st = self.lock();
        self.accept(&mut st, Frame::encoded(bytes))
    }

    /// Queues a frame of the connection's own (a reply to its event, a pong, a ping). Refused only
    /// when closing, or when the queue and the events at the handler would pass the hard bound
    /// (`max_bytes + max_message_size`), in which case the connection is closed with 1013. Returns whether the queue became dirty (needs a flush).
    pub fn reply(&self, opcode: OpCode, payload: Bytes) -> Result<bool, QueueError> {
        let mut st = self.lock();
        self.reply_locked(&mut st, opcode, payload)
    }

    /// [`Outbound::reply`] for several frames in order under one lock (a batch's replies): stops
    /// at the first refusal and returns it.
    pub fn replies(&self, frames: impl IntoIterator<Item = (OpCode, Bytes)>) -> Result<bool, QueueError> {
        let mut st = self.lock();
        let mut dirtied = false;
        for (opcode, payload) in frames {
            dirtied |= self.reply_locked(&mut st, opcode, payload)?;
        }
        Ok(dirtied)
    }

    fn reply_locked(&self, st: &mut State, opcode: OpCode, payload: Bytes) -> Result<bool, QueueError> {
        let limits = self.0.limits;
        let held = st.bytes + st.in_flight_bytes;
        if held > 0 && held + payload.len() > limits.max_bytes + limits.max_message_size {
            let frame = CloseFrame { code: CloseCode::TRY_AGAIN_LATER, reason: "outbound queue full".into() };
            if let Some(m) = &self.0.metrics {
                m.queue_full.inc();
            }
            self.close_now_locked(st, frame);
            return Err(QueueError::Full);
        }
        if st.closing != Closing::Open || st.failed {
            return Err(QueueError::Closed); // before compressing what would be dropped
        }
        let frame = self.frame_for(st, opcode, payload);
        self.accept(st, frame)
    }

    /// Queues fan-out from another connection: refused with [`QueueError::Full`] when the queue is
    /// at its bounds.
    pub fn deliver(&self, message: Outgoing<'_>) -> Result<bool, QueueError> {
        let mut st = self.lock();
        let limits = self.0.limits;
        if st.closing != Closing::Open || st.failed {
            return Err(QueueError::Closed);
        }
        if st.frames.len() >= limits.max_frames || (st.bytes > 0 && st.bytes + message.len() > limits.max_bytes) {
            return Err(QueueError::Full);
        }
        let frame = match message {
            Outgoing::One(opcode, payload) => self.frame_for(&mut st, opcode, payload),
            Outgoing::Shared(shared) => self.shared_frame_for(&mut st, shared),
        };
        self.accept(&mut st, frame)
    }

    fn accept(&self, st: &mut State, frame: Frame) -> Result<bool, QueueError> {
        if st.closing != Closing::Open || st.failed {
            return Err(QueueError::Closed);
        }
        if let Some(m) = &self.0.metrics {
            m.messages_out.inc();
            m.bytes_out.inc_by(frame.len() as u64);
        }
        st.bytes += frame.len();
        st.frames.push_back(frame);
        Ok(!std::mem::replace(&mut st.dirty, true))
    }

    /// Queues the close frame after everything queued; nothing is accepted after it. A second
    /// close is ignored. `by_session`: the session itself decided (it needs no notice).
    pub fn close(&self, frame: Option<CloseFrame>, by_session: bool) {
        let mut st = self.lock();
        self.queue_close(&mut st, frame, by_session);
    }

    fn queue_close(&self, st: &mut State, frame: Option<CloseFrame>, by_session: bool) {
        if st.closing != Closing::Open || st.failed {
            return;
        }
        let payload = close_payload(frame.as_ref());
        let encoded = Frame::data(OpCode::Close, payload);
        st.bytes += encoded.len();
        st.frames.push_back(encoded);
        st.closing = Closing::Queued;
        st.dirty = true;
        if !by_session {
            st.close_notice = frame;
            self.wake(st);
        }
    }

    /// Closes ahead of the queue (the queue itself is the problem: a slow consumer): frames not yet
    /// started are dropped, a frame half written is finished first, then the close frame.
    pub fn close_now(&self, frame: CloseFrame) {
        let mut st = self.lock();
        self.close_now_locked(&mut st, frame);
    }

    fn close_now_locked(&self, st: &mut State, frame: CloseFrame) {
        if st.closing != Closing::Open || st.failed {
            return;
        }
        let keep = usize::from(st.front_written > 0);
        while st.frames.len() > keep {
            let dropped = st.frames.pop_back().expect("len checked");
            st.bytes -= dropped.len();
        }
        self.queue_close(st, Some(frame), false);
    }

    /// Writes as much of the queue as the socket takes now, without waiting. When the socket is full
    /// the session is woken to wait for it. Err when the connection is gone.
    pub fn flush(&self) -> Result<(), QueueError> {
        let mut st = self.lock();
        self.flush_locked(&mut st)
    }

    fn flush_locked(&self, st: &mut State) -> Result<(), QueueError> {
        st.dirty = false;
        if st.failed {
            return Err(QueueError::Closed);
        }
        let was_blocked = st.blocked_since.is_some();
        let before = st.bytes;
        let result = self.write_locked(st);
        if st.blocked_since.is_some() && !was_blocked {
            self.wake(st); // the session waits for writability from here on
        }
        if st.session_waiting && st.bytes < before && st.bytes < self.0.limits.max_bytes {
            st.session_waiting = false;
            self.wake(st); // room came back
        }
        result
    }

    fn write_locked(&self, st: &mut State) -> Result<(), QueueError> {
        while !st.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            let mut skip = st.front_written;
            for frame in &st.frames {
                for part in [&frame.header[..usize::from(frame.header_len)], &frame.payload[..]] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    slices[n] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    n += 1;
                }
                if n + 2 > MAX_SLICES {
                    break;
                }
            }
            match self.write_slices(&slices[..n]) {
                Ok(0) => return Err(self.fail(st)),
                Ok(written) => {
                    st.blocked_since = None;
                    Self::advance(st, written);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    st.blocked_since.get_or_insert_with(Instant::now);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "write failed");
                    return Err(self.fail(st));
                }
            }
        }
        // With TLS, records may still wait in the session: not written yet either.
        match self.0.socket.flush_pending() {
            Ok(()) => {
                st.blocked_since = None;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                st.blocked_since.get_or_insert_with(Instant::now);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, "write failed");
                Err(self.fail(st))
            }
        }
    }

    /// One non-blocking write of `slices`. Small frames (a chat message, an echo, a batch of them)
    /// are gathered into one buffer and sent with `send`: on Linux a `writev` of a few small
    /// slices costs more, in the kernel, than copying them.
    fn write_slices(&self, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
        let total: usize = slices.iter().map(|s| s.len()).sum();
        match slices {
            [one] => self.0.socket.try_write(one),
            _ if total <= GATHER => GATHERED.with_borrow_mut(|gathered| {
                gathered.clear();
                for slice in slices {
                    gathered.extend_from_slice(slice);
                }
                self.0.socket.try_write(gathered)
            }),
            _ => self.0.socket.try_write_vectored(slices),
        }
    }

    /// Takes `written` bytes off the front of the queue.
    fn advance(st: &mut State, mut written: usize) {
        st.bytes -= written;
        while written > 0 {
            let front = st.frames.front().expect("wrote more than was queued");
            let rest = front.len() - st.front_written;
            if written < rest {
                st.front_written += written;
                return;
            }
            written -= rest;
            st.front_written = 0;
            if front.is_close() {
                st.closing = Closing::Written;
            }
            st.frames.pop_front();
        }
    }

    fn fail(&self, st: &mut State) -> QueueError {
        st.failed = true;
        st.frames.clear();
        st.bytes = 0;
        st.front_written = 0;
        self.wake(st);
        QueueError::Closed
    }

    /// Whether the close frame is on the wire (or can never be: the peer is gone).
    pub fn close_done(&self) -> bool {
        let st = self.lock();
        st.failed || (st.closing == Closing::Written && st.blocked_since.is_none())
    }

    /// Whether a close frame is queued or written.
    pub fn is_closing(&self) -> bool {
        self.lock().closing != Closing::Open
    }

    /// When the unwritten bytes last made progress, if the socket is full; the session gives up
    /// after `write_timeout` of that.
    pub fn stalled_since(&self) -> Option<Instant> {
        let st = self.lock();
        if st.frames.is_empty() { None } else { st.blocked_since }
    }

    /// Whether the connection's own traffic may go on: its queue and its events at the handler
    /// are under the bounds. Otherwise the session is marked as waiting, to be woken when that
    /// changes.
    pub fn has_room(&self) -> bool {
        let mut st = self.lock();
        let room = self.room_locked(&st);
        st.session_waiting = !room;
        room
    }

    fn room_locked(&self, st: &State) -> bool {
        let limits = self.0.limits;
        st.frames.len() < limits.max_frames
            && st.bytes + st.in_flight_bytes < limits.max_bytes
            && st.in_flight < limits.max_in_flight
    }

    /// Counts an event of `len` bytes handed to the handler (checked with [`has_room`] first).
    ///
    /// [`has_room`]: Self::has_room
    /// Returns whether the connection's own traffic may still go on (see [`Self::has_room`]).
    pub fn begin_event(&self, len: usize) -> bool {
        let mut st = self.lock();
        st.in_flight += 1;
        st.in_flight_bytes += len;
        let room = self.room_locked(&st);
        st.session_waiting = !room;
        room
    }

    /// The handler has taken an event of `len` bytes off the books (after its call, before its
    /// actions are queued): credit comes back to the session.
    pub fn end_event(&self, len: usize) {
        self.end_events(1, len);
    }

    /// [`Self::end_event`] for `count` events of `bytes` bytes together.
    pub fn end_events(&self, count: usize, bytes: usize) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(count);
        st.in_flight_bytes = st.in_flight_bytes.saturating_sub(bytes);
        if st.session_waiting && self.room_locked(&st) {
            st.session_waiting = false;
            self.wake(&mut st);
        }
    }

    /// Tells the session that something needs its attention.
    fn wake(&self, st: &mut State) {
        self.0.attention.store(true, Ordering::Release);
        if let Some(waker) = &st.session_waker {
            waker.wake_by_ref();
        }
    }

    /// Registers the session's task, to be woken when something needs its attention.
    fn register(st: &mut State, waker: &Waker) {
        match &mut st.session_waker {
            Some(kept) => kept.clone_from(waker),
            none => *none = Some(waker.clone()),
        }
    }

    /// Ready once something needs the session's attention since it last looked: a close queued by
    /// someone else, a write that met a full socket, room or credit come back. Only the session
    /// polls this (one waker is kept). `registered`: the waker last given to
    /// [`Self::flush_and_view`] (when it is this task's, polling costs one atomic swap).
    pub fn poll_attention(&self, cx: &mut Context<'_>, registered: &Waker) -> Poll<()> {
        if !cx.waker().will_wake(registered) {
            Self::register(&mut self.lock(), cx.waker());
        }
        self.take_attention()
    }

    /// Ready (once) if something asked for the session's attention.
    fn take_attention(&self) -> Poll<()> {
        match self.0.attention.swap(false, Ordering::AcqRel) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }

    /// Waits until something needs the session's attention (see [`Self::poll_attention`]).
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| {
            Self::register(&mut self.lock(), cx.waker());
            self.take_attention()
        })
        .await
    }

    /// What the session reads of its queue before each step, under one lock: the close frame
    /// someone else queued (taken, once), whether the peer is gone, and whether the connection's
    /// own traffic may go on (see [`Self::has_room`]).
    pub fn session_view(&self) -> SessionView {
        let mut st = self.lock();
        let room = self.room_locked(&st);
        st.session_waiting = !room;
        SessionView { close_notice: st.close_notice.take(), failed: st.failed, room }
    }

    /// Writes what the socket takes now (see [`Self::flush`]) and says where the queue stands
    /// after it, under the same lock.
    /// `waker` is the session's task, registered for [`Self::poll_attention`].
    pub fn flush_and_view(&self, waker: &Waker) -> Result<AfterFlush, QueueError> {
        let mut st = self.lock();
        Self::register(&mut st, waker);
        self.flush_locked(&mut st)?;
        let room = self.room_locked(&st);
        st.session_waiting = !room;
        Ok(AfterFlush {
            room,
            held: st.bytes + st.in_flight_bytes,
            stalled_since: if st.frames.is_empty() { None } else { st.blocked_since },
        })
    }
}

/// Queues touched by one producer's batch, flushed together at its end, so that replies to
/// pipelined events leave in one write per connection.
#[derive(Default)]
pub struct Batch {
    dirty: Vec<Outbound>,
}

impl Batch {
    /// Notes the result of a push: a queue that became dirty is flushed at the end of the batch.
    pub fn note(&mut self, out: &Outbound, pushed: Result<bool, QueueError>) -> Result<(), QueueError> {
        if pushed? {
            self.dirty.push(out.clone());
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.dirty.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dirty.is_empty()
    }

    /// Writes every dirty queue.
    pub fn flush(&mut self) {
        for out in self.dirty.drain(..) {
            let _ = out.flush();
        }
    }
}

/// The close frame sent for a code and reason.
pub fn close_frame(code: CloseCode, reason: impl Into<String>) -> CloseFrame {
    CloseFrame { code, reason: reason.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Decoder, Event, Limits};
    use bytes::BytesMut;
    use tokio::io::AsyncReadExt;

    fn limits() -> QueueLimits {
        QueueLimits { max_frames: 8, max_bytes: 1000, max_message_size: 4000, max_in_flight: 4 }
    }

    async fn pair() -> (Outbound, tokio::net::TcpStream) {
        pair_with(limits()).await
    }

    async fn pair_with(limits: QueueLimits) -> (Outbound, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_, writer) = server.into_split();
        (Outbound::new(Arc::new(Writer::Plain(writer)), limits), client)
    }

    /// Reads frames until the close frame (or EOF); returns (opcode, payload) pairs.
    async fn read_all(client: &mut tokio::net::TcpStream) -> Vec<(OpCode, Vec<u8>)> {
        let mut decoder = Decoder::client(Limits::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        loop {
            while let Some(event) = decoder.decode(&mut buf).unwrap() {
                match event {
                    Event::Message(m) => out.push((m.opcode(), m.payload().to_vec())),
                    Event::Close(_) => {
                        out.push((OpCode::Close, vec![]));
                        return out;
                    }
                    Event::Ping(p) => out.push((OpCode::Ping, p.to_vec())),
                    Event::Pong(p) => out.push((OpCode::Pong, p.to_vec())),
                }
            }
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), client.read_buf(&mut buf));
            if read.await.unwrap().unwrap() == 0 {
                return out;
            }
        }
    }

    #[test]
    fn a_shared_message_is_compressed_once_per_window_size() {
        let message = SharedMessage::new(OpCode::Text, Bytes::from("a broadcast ".repeat(100)));
        let (a, b) = (message.compressed(15), message.compressed(15));
        assert_eq!(a.as_ptr(), b.as_ptr(), "receivers with the same window share one compression");
        assert_ne!(message.compressed(10).as_ptr(), a.as_ptr(), "another window, another form");
        assert_eq!(a[0], 0x80 | 0x40 | OpCode::Text.as_u8(), "FIN, RSV1, text");
        assert!(a.len() < 200, "{} bytes", a.len());
        assert_eq!(message.plain().as_ptr(), message.plain().as_ptr());
    }

    #[tokio::test]
    async fn compressed_replies_and_fan_out_leave_in_order_with_and_without_context() {
        let limits = QueueLimits { max_frames: 64, max_bytes: 1 << 20, max_message_size: 1 << 20, max_in_flight: 4 };
        let offer = |o: &str| crate::protocol::deflate::negotiate([o], &Default::default()).unwrap();
        for params in [
            offer("permessage-deflate"),
            crate::protocol::deflate::negotiate(
                ["permessage-deflate"],
                &crate::protocol::deflate::DeflateConfig { server_context_takeover: true, ..Default::default() },
            )
            .unwrap(),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let out =
                Outbound::for_connection(Arc::new(Writer::Plain(server.into_split().1)), limits, Some(&params), None);
            let big = || Bytes::from("compressible ".repeat(200));
            out.reply(OpCode::Text, big()).unwrap();
            out.reply(OpCode::Text, Bytes::from_static(b"small")).unwrap();
            out.deliver(Outgoing::Shared(&SharedMessage::new(OpCode::Binary, big()))).unwrap();
            out.reply(OpCode::Text, big()).unwrap();
            out.close(None, true);
            out.flush().unwrap();
            // A client decoder that follows the agreement inflates all of it, in order.
            let mut decoder = Decoder::client(Limits::default()).with_deflate(Some(&params.as_client()));
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            while got.len() < 4 {
                while let Some(event) = decoder.decode(&mut buf).unwrap() {
                    got.push(event);
                }
                if got.len() < 4 {
                    client.read_buf(&mut buf).await.unwrap();
                }
            }
            let text = |b: Bytes| Event::Message(crate::protocol::Message::Text(b));
            assert_eq!(got[0], text(big()), "context kept: {}", !params.server_no_context_takeover);
            assert_eq!(got[1], text(Bytes::from_static(b"small")));
            assert_eq!(got[2], Event::Message(crate::protocol::Message::Binary(big())));
            assert_eq!(got[3], text(big()));
        }
    }

    #[tokio::test]
    async fn frames_leave_in_order_and_nothing_after_close() {
        let (out, mut client) = pair().await;
        out.reply(OpCode::Text, Bytes::from_static(b"one")).unwrap();
        out.deliver(Outgoing::Shared(&SharedMessage::new(OpCode::Binary, Bytes::from_static(b"two")))).unwrap();
        out.close(Some(close_frame(CloseCode::NORMAL, "bye")), false);
        assert_eq!(out.reply(OpCode::Text, Bytes::from_static(b"late")), Err(QueueError::Closed));
        assert_eq!(out.session_view().close_notice.map(|f| f.code), Some(CloseCode::NORMAL));
        out.flush().unwrap();
        assert!(out.close_done());
        let got = read_all(&mut client).await;
        assert_eq!(
            got,
            vec![(OpCode::Text, b"one".to_vec()), (OpCode::Binary, b"two".to_vec()), (OpCode::Close, vec![])]
        );
    }

    #[tokio::test]
    async fn a_run_of_replies_is_queued_in_order_and_stops_at_the_hard_bound() {
        let (out, mut client) = pair().await;
        let run = [(OpCode::Text, &b"a"[..]), (OpCode::Binary, b"b"), (OpCode::Text, b"c")];
        assert_eq!(out.replies(run.iter().map(|(op, p)| (*op, Bytes::copy_from_slice(p)))), Ok(true));
        out.flush().unwrap();
        // The hard bound is 1000 + 4000: the second frame passes it, so the connection closes with
        // 1013 (what is queued dropped ahead of it) and the third is never looked at.
        let big = [(OpCode::Binary, vec![1u8; 3000]), (OpCode::Binary, vec![2u8; 3000]), (OpCode::Text, vec![b'x'])];
        assert_eq!(out.replies(big.into_iter().map(|(op, p)| (op, Bytes::from(p)))), Err(QueueError::Full));
        assert_eq!(out.session_view().close_notice.map(|f| f.code), Some(CloseCode::TRY_AGAIN_LATER));
        out.flush().unwrap();
        let got = read_all(&mut client).await;
        assert_eq!(
            got,
            vec![
                (OpCode::Text, b"a".to_vec()),
                (OpCode::Binary, b"b".to_vec()),
                (OpCode::Text, b"c".to_vec()),
                (OpCode::Close, vec![])
            ]
        );
    }

    #[tokio::test]
    async fn fan_out_is_refused_at_the_bounds_but_one_big_frame_fits_an_empty_queue() {
        let (out, _client) = pair().await;
        assert_eq!(out.deliver(Outgoing::One(OpCode::Binary, Bytes::from(vec![0u8; 5000]))), Ok(true));
        assert_eq!(out.deliver(Outgoing::One(OpCode::Binary, Bytes::from(vec![0u8; 1]))), Err(QueueError::Full));
        let (out, _client) = pair().await;
        for _ in 0..8 {
            out.deliver(Outgoing::One(OpCode::Text, Bytes::from_static(b"x"))).unwrap();
        }
        assert_eq!(out.deliver(Outgoing::One(OpCode::Text, Bytes::from_static(b"x"))), Err(QueueError::Full));
    }

    #[tokio::test]
    async fn replies_past_the_hard_bound_close_with_1013() {
        let (out, mut client) = pair().await;
        out.reply(OpCode::Binary, Bytes::from(vec![1u8; 3000])).unwrap();
        out.reply(OpCode::Binary, Bytes::from(vec![2u8; 1500])).unwrap();
        // 4500 queued; the hard bound is 1000 + 4000.
        assert_eq!(out.reply(OpCode::Binary, Bytes::from(vec![3u8; 600])), Err(QueueError::Full));
        assert_eq!(out.session_view().close_notice.map(|f| f.code), Some(CloseCode::TRY_AGAIN_LATER));
        out.flush().unwrap();
        let got = read_all(&mut client).await;
        assert_eq!(got, vec![(OpCode::Close, vec![])], "queued frames are dropped ahead of the 1013");
    }

    #[tokio::test]
    async fn credit_counts_events_and_their_bytes() {
        let (out, _client) = pair().await;
        assert!(out.has_room());
        out.begin_event(600);
        assert!(out.has_room());
        out.begin_event(600);
        assert!(!out.has_room(), "1200 bytes at the handler");
        out.end_event(600);
        assert!(out.has_room());
        for _ in 0..3 {
            out.begin_event(1);
        }
        assert!(!out.has_room(), "four events in flight");
    }

    #[tokio::test]
    async fn a_full_socket_stalls_the_queue_and_a_reader_resumes_it() {
        let roomy = QueueLimits { max_bytes: 1 << 30, ..limits() };
        let (out, mut client) = pair_with(roomy).await;
        let big = Bytes::from(vec![9u8; 1 << 20]);
        let mut queued = 0;
        // Fill the socket buffers until writes block.
        while out.stalled_since().is_none() {
            out.reply(OpCode::Binary, big.clone()).unwrap();
            out.flush().unwrap();
            queued += 1;
            assert!(queued < 200, "the socket never filled");
        }
        let reader = tokio::spawn(async move { read_all(&mut client).await.len() });
        out.close(None, true);
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !out.close_done() {
            assert!(Instant::now() < deadline, "did not drain");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            out.flush().unwrap();
        }
        assert_eq!(reader.await.unwrap(), queued + 1, "every frame whole, then the close");
    }
}
