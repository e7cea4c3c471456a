//! A connection's outbound queue and the writer task that drains it onto the socket.
//!
//! The queue is bounded in frames (`outbound_queue_frames`) and in payload bytes
//! (`outbound_queue_bytes`), so a client that stops reading pins a bounded amount of memory. Three
//! ways in, for three kinds of producer:
//! - [`Outbound::send`] waits for room: the connection's own session (echo, pongs, close).
//! - [`Outbound::try_send`] fails when full: fan-out from other connections (the hub then closes
//!   the slow consumer), which must never block on one slow target.
//! - [`Outbound::reply`] never fails for being full: a plugin's replies to the connection whose
//!   event it is handling. Those are flow-controlled upstream instead: the session forwards
//!   an event to the plugin only once this queue is below its bounds ([`Outbound::room`]), with a
//!   small number of events in flight, so the overshoot is bounded by what those events return.
//!
//! The writer coalesces whatever is queued into one buffer and one write, which is what keeps
//! pipelined traffic cheap. When nothing at all is queued or being written,
//! [`Outbound::send_or_write`] writes a small frame itself with a non-blocking `try_write` (the request/response case), which
//! saves waking the writer task for every reply. Frames are never interleaved mid-frame; after a
//! close frame nothing else is written.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::protocol::close::close_payload;
use crate::protocol::frame::{OpCode, encode_header};
use crate::protocol::{CloseCode, CloseFrame};

/// Payloads up to this size are copied into the coalescing buffer; larger ones are written from
/// their own buffer after flushing, to avoid one more copy of a big message.
const COPY_THRESHOLD: usize = 16 << 10;
/// The coalescing buffer is flushed once it holds this much.
const BATCH_BYTES: usize = 64 << 10;

/// Something to write.
#[derive(Debug, Clone)]
pub enum OutFrame {
    /// A frame to encode: opcode and payload.
    Data(OpCode, Bytes),
    /// Bytes already encoded (a frame shared by many receivers of one broadcast, or the 101
    /// response that precedes all frames).
    Encoded(Bytes),
    /// A close frame; the writer sends nothing after it.
    Close(Option<CloseFrame>),
}

impl OutFrame {
    fn payload_len(&self) -> usize {
        match self {
            Self::Data(_, p) | Self::Encoded(p) => p.len(),
            Self::Close(_) => 0,
        }
    }
}

/// Why a frame could not be queued without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue is at its frame or byte bound: the receiver is slow.
    Full,
    /// The writer has stopped: the connection is closing or gone.
    Closed,
}

/// What is queued, against the bounds.
struct Level {
    frames: AtomicUsize,
    bytes: AtomicUsize,
    max_frames: usize,
    max_bytes: usize,
    /// Signalled whenever the writer takes frames off the queue, or stops.
    drained: Notify,
}

impl Level {
    /// Room for one more frame of `len` bytes? A frame larger than the whole byte bound fits into
    /// an empty queue, alone.
    fn has_room(&self, len: usize) -> bool {
        let bytes = self.bytes.load(Ordering::Acquire);
        self.frames.load(Ordering::Acquire) < self.max_frames && (bytes == 0 || bytes + len <= self.max_bytes)
    }
}

/// The socket's write half, shared by the writer task and the senders' fast path.
struct WriteSide {
    socket: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Frames queued or taken by the writer but not yet written. The fast path may only write
    /// when this is 0, which keeps every producer's frames in order.
    unwritten: AtomicUsize,
    /// A close frame has been written: nothing more goes out.
    closed: AtomicBool,
    /// The unwritten end of a frame the fast path wrote only partly: written before anything else.
    remainder: Mutex<Option<Bytes>>,
}

/// Frames up to this payload size may take the fast path.
const FAST_PATH_MAX: usize = 4 << 10;

/// The sending side of a connection's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<OutFrame>,
    level: Arc<Level>,
    urgent: Arc<Urgent>,
    side: Arc<WriteSide>,
}

/// A close that skips the queue (used when the queue itself is the problem).
#[derive(Default)]
struct Urgent {
    frame: Mutex<Option<CloseFrame>>,
    notify: Notify,
}

impl Outbound {
    fn push(&self, frame: OutFrame) -> Result<(), QueueError> {
        self.side.unwritten.fetch_add(1, Ordering::AcqRel);
        self.level.frames.fetch_add(1, Ordering::AcqRel);
        self.level.bytes.fetch_add(frame.payload_len(), Ordering::AcqRel);
        self.tx.send(frame).map_err(|_| QueueError::Closed)
    }

    /// Waits until a frame of `len` bytes fits (or the writer has stopped).
    async fn wait_for(&self, len: usize) -> Result<(), QueueError> {
        // The common case, room at once, takes no lock (registering a waiter does).
        if self.tx.is_closed() {
            return Err(QueueError::Closed);
        }
        if self.level.has_room(len) {
            return Ok(());
        }
        loop {
            let drained = self.level.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.tx.is_closed() {
                return Err(QueueError::Closed);
            }
            if self.level.has_room(len) {
                return Ok(());
            }
            drained.await;
        }
    }

    /// Queues a frame, waiting while the queue is full (backpressure on the caller).
    pub async fn send(&self, frame: OutFrame) -> Result<(), QueueError> {
        self.wait_for(frame.payload_len()).await?;
        self.push(frame)
    }

    /// Like [`send`](Self::send), but a small frame on an idle connection is written at once. For
    /// the last reply of a batch only: replies to pipelined messages are better queued, so that the
    /// writer coalesces them into one write.
    pub async fn send_or_write(&self, frame: OutFrame) -> Result<(), QueueError> {
        if let OutFrame::Data(op, payload) = &frame
            && let Some(done) = self.write_now(*op, payload)
        {
            return done;
        }
        self.send(frame).await
    }

    /// The fast path: when nothing is queued or being written, write a small frame directly, without
    /// waiting (usable from any thread). `None` means "not possible now, queue it".
    fn write_now(&self, op: OpCode, payload: &[u8]) -> Option<Result<(), QueueError>> {
        if payload.len() > FAST_PATH_MAX
            || self.side.unwritten.load(Ordering::Acquire) != 0
            || self.side.closed.load(Ordering::Acquire)
        {
            return None;
        }
        let socket = self.side.socket.try_lock().ok()?;
        // Checked again under the lock: the writer takes it for every write it makes.
        if self.side.unwritten.load(Ordering::Acquire) != 0 || self.tx.is_closed() {
            return None;
        }
        let mut buf = BytesMut::with_capacity(payload.len() + 10);
        encode_header(&mut buf, true, op, payload.len());
        buf.extend_from_slice(payload);
        match socket.try_write(&buf) {
            Ok(n) if n == buf.len() => Some(Ok(())),
            Ok(n) => {
                // Part of the frame is out: the rest goes before anything else the writer writes
                // (it takes the remainder first, under the same lock); an empty frame wakes it.
                // Queued before the socket is released, so no other fast path can slip in between.
                *self.side.remainder.lock().expect("remainder lock") = Some(buf.freeze().slice(n..));
                let woken = self.push(OutFrame::Encoded(Bytes::new()));
                drop(socket);
                Some(woken)
            }
            Err(_) => None, // would block, or an error the writer will meet and stop on
        }
    }

    /// A reply to the connection's own event: written at once when `now` (the last reply of a
    /// batch) and the connection is idle, else queued past the bounds if need be (see the module
    /// docs for why that stays bounded).
    pub fn reply(&self, frame: OutFrame, now: bool) -> Result<(), QueueError> {
        if now
            && let OutFrame::Data(op, payload) = &frame
            && let Some(done) = self.write_now(*op, payload)
        {
            return done;
        }
        self.push(frame)
    }

    /// Waits until the queue is below its bounds: the session calls this before handing the next
    /// event to a plugin, so that the plugin's replies find room.
    pub async fn room(&self) -> Result<(), QueueError> {
        self.wait_for(0).await
    }

    /// Queues a frame if there is room now.
    pub fn try_send(&self, frame: OutFrame) -> Result<(), QueueError> {
        if self.tx.is_closed() {
            return Err(QueueError::Closed);
        }
        if !self.level.has_room(frame.payload_len()) {
            return Err(QueueError::Full);
        }
        self.push(frame)
    }

    /// Sends a close frame ahead of everything queued, which is dropped.
    pub fn close_now(&self, frame: CloseFrame) {
        *self.urgent.frame.lock().expect("urgent close lock") = Some(frame);
        self.urgent.notify.notify_one();
    }

    /// Whether the writer has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Handle the connection keeps to end its writer.
pub struct WriterHandle {
    finish: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl WriterHandle {
    /// Lets the writer flush what is queued (up to its close frame), half-close the socket and stop;
    /// waits at most `timeout`.
    pub async fn finish(mut self, timeout: Duration) {
        drop(self.finish.take());
        if tokio::time::timeout(timeout, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

/// Starts the writer task for a connection's write half.
pub fn spawn_writer(
    socket: OwnedWriteHalf,
    frames: usize,
    bytes: usize,
    write_timeout: Duration,
) -> (Outbound, WriterHandle) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (finish_tx, finish_rx) = oneshot::channel();
    let urgent = Arc::new(Urgent::default());
    let level = Arc::new(Level {
        frames: AtomicUsize::new(0),
        bytes: AtomicUsize::new(0),
        max_frames: frames,
        max_bytes: bytes,
        drained: Notify::new(),
    });
    let side = Arc::new(WriteSide {
        socket: tokio::sync::Mutex::new(socket),
        unwritten: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        remainder: Mutex::new(None),
    });
    let outbound = Outbound { tx, level: level.clone(), urgent: urgent.clone(), side: side.clone() };
    let writer = Writer { side, rx, urgent, level, write_timeout, buf: BytesMut::new(), closed: false, taken: 0 };
    let task = tokio::spawn(writer.run(finish_rx));
    (outbound, WriterHandle { finish: Some(finish_tx), task })
}

struct Writer {
    side: Arc<WriteSide>,
    rx: mpsc::UnboundedReceiver<OutFrame>,
    /// Frames taken off the queue since the last completed write.
    taken: usize,
    urgent: Arc<Urgent>,
    level: Arc<Level>,
    write_timeout: Duration,
    buf: BytesMut,
    /// A close frame has been written: nothing more goes out.
    closed: bool,
}

impl Writer {
    async fn run(mut self, mut finish: oneshot::Receiver<()>) {
        let result: std::io::Result<()> = async {
            loop {
                tokio::select! {
                    biased;
                    _ = self.urgent.notify.notified() => {
                        let frame = self.urgent.frame.lock().expect("urgent close lock").take();
                        if !self.closed {
                            self.buf.clear();
                            self.push(OutFrame::Close(frame));
                            self.flush().await?;
                        }
                    }
                    _ = &mut finish => {
                        // Drain what is already queued, then stop.
                        while let Ok(frame) = self.rx.try_recv() {
                            self.taken(&frame);
                            self.push(frame);
                            if self.buf.len() >= BATCH_BYTES { self.flush().await?; }
                        }
                        self.flush().await?;
                        return Ok(());
                    }
                    item = self.rx.recv() => {
                        let Some(frame) = item else { return Ok(()) };
                        self.taken(&frame);
                        self.write_item(frame).await?;
                        // Coalesce whatever else is already queued into the same write.
                        while self.buf.len() < BATCH_BYTES {
                            let Ok(frame) = self.rx.try_recv() else { break };
                            self.taken(&frame);
                            self.write_item(frame).await?;
                        }
                        self.flush().await?;
                        // Every frame taken is now on the wire: the fast path may resume.
                        self.side.unwritten.fetch_sub(std::mem::take(&mut self.taken), Ordering::AcqRel);
                        self.level.drained.notify_waiters();
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "writer stopped");
        }
        // Refuse further frames and wake any sender waiting for room.
        self.rx.close();
        self.level.drained.notify_waiters();
        let _ =
            tokio::time::timeout(self.write_timeout, async { self.side.socket.lock().await.shutdown().await }).await;
    }

    /// Accounts for a frame taken off the queue.
    fn taken(&mut self, frame: &OutFrame) {
        self.taken += 1;
        self.level.frames.fetch_sub(1, Ordering::AcqRel);
        self.level.bytes.fetch_sub(frame.payload_len(), Ordering::AcqRel);
    }

    async fn write_item(&mut self, frame: OutFrame) -> std::io::Result<()> {
        if let OutFrame::Data(op, payload) = &frame
            && payload.len() > COPY_THRESHOLD
            && !self.closed
        {
            encode_header(&mut self.buf, true, *op, payload.len());
            self.flush().await?;
            return self.write(payload).await;
        }
        self.push(frame);
        Ok(())
    }

    /// Appends a frame to the coalescing buffer (nothing after a close frame).
    fn push(&mut self, frame: OutFrame) {
        if self.closed {
            return;
        }
        match frame {
            OutFrame::Data(op, payload) => {
                encode_header(&mut self.buf, true, op, payload.len());
                self.buf.extend_from_slice(&payload);
            }
            OutFrame::Encoded(bytes) => self.buf.extend_from_slice(&bytes),
            OutFrame::Close(frame) => {
                let payload = close_payload(frame.as_ref());
                encode_header(&mut self.buf, true, OpCode::Close, payload.len());
                self.buf.extend_from_slice(&payload);
                self.closed = true;
                self.side.closed.store(true, Ordering::Release);
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() && self.side.remainder.lock().expect("remainder lock").is_none() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        self.write(&buf).await?;
        // Keep a modest buffer for the next batch; give back what a burst of big frames grew.
        self.buf = buf;
        self.buf.clear();
        if self.buf.capacity() > 4 * BATCH_BYTES {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let side = self.side.clone();
        let result = tokio::time::timeout(self.write_timeout, async move {
            let mut socket = side.socket.lock().await;
            let remainder = side.remainder.lock().expect("remainder lock").take();
            if let Some(rest) = remainder {
                socket.write_all(&rest).await?;
            }
            socket.write_all(bytes).await
        })
        .await;
        match result {
            Ok(r) => r,
            Err(_) => {
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write made no progress (peer not reading)"))
            }
        }
    }
}

/// The close frame sent for a code and reason.
pub fn close_frame(code: CloseCode, reason: impl Into<String>) -> CloseFrame {
    CloseFrame { code, reason: reason.into() }
}
