//! A connection's outbound queue and the writer task that drains it onto the socket.
//!
//! The queue is bounded twice: in frames (`outbound_queue_frames`) and in payload bytes
//! (`outbound_queue_bytes`, a semaphore whose permits are released once a frame is written), so a
//! client that stops reading pins a bounded amount of memory. The writer coalesces whatever is
//! queued into one buffer and one write, which is what keeps pipelined traffic cheap. Frames are
//! never interleaved mid-frame; after a close frame nothing else is written.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

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
    /// A frame already encoded (header and payload), shared by many receivers of one broadcast.
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

struct Queued {
    frame: OutFrame,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Why a frame could not be queued without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue is at its frame or byte bound: the receiver is slow.
    Full,
    /// The writer has stopped: the connection is closing or gone.
    Closed,
}

/// The sending side of a connection's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    budget_total: usize,
    urgent: Arc<Urgent>,
}

/// A close that skips the queue (used when the queue itself is the problem).
#[derive(Default)]
struct Urgent {
    frame: Mutex<Option<CloseFrame>>,
    notify: Notify,
}

impl Outbound {
    fn permits_for(&self, frame: &OutFrame) -> u32 {
        // A frame larger than the whole budget takes all of it: it passes, alone.
        frame.payload_len().min(self.budget_total) as u32
    }

    /// Queues a frame, waiting while the queue is full (backpressure on the caller).
    pub async fn send(&self, frame: OutFrame) -> Result<(), QueueError> {
        let n = self.permits_for(&frame);
        let permit = if n > 0 {
            Some(self.budget.clone().acquire_many_owned(n).await.map_err(|_| QueueError::Closed)?)
        } else {
            None
        };
        self.tx.send(Queued { frame, _permit: permit }).await.map_err(|_| QueueError::Closed)
    }

    /// Queues a frame if there is room now.
    pub fn try_send(&self, frame: OutFrame) -> Result<(), QueueError> {
        let n = self.permits_for(&frame);
        let permit = if n > 0 {
            match self.budget.clone().try_acquire_many_owned(n) {
                Ok(p) => Some(p),
                Err(tokio::sync::TryAcquireError::NoPermits) => return Err(QueueError::Full),
                Err(tokio::sync::TryAcquireError::Closed) => return Err(QueueError::Closed),
            }
        } else {
            None
        };
        self.tx.try_send(Queued { frame, _permit: permit }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => QueueError::Full,
            mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
        })
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
    let (tx, rx) = mpsc::channel(frames);
    let (finish_tx, finish_rx) = oneshot::channel();
    let urgent = Arc::new(Urgent::default());
    let budget = Arc::new(Semaphore::new(bytes));
    let outbound = Outbound { tx, budget: budget.clone(), budget_total: bytes, urgent: urgent.clone() };
    let writer = Writer { socket, rx, urgent, budget, write_timeout, buf: BytesMut::new(), closed: false };
    let task = tokio::spawn(writer.run(finish_rx));
    (outbound, WriterHandle { finish: Some(finish_tx), task })
}

struct Writer {
    socket: OwnedWriteHalf,
    rx: mpsc::Receiver<Queued>,
    urgent: Arc<Urgent>,
    budget: Arc<Semaphore>,
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
                        while let Ok(q) = self.rx.try_recv() {
                            self.push(q.frame);
                            if self.buf.len() >= BATCH_BYTES { self.flush().await?; }
                        }
                        self.flush().await?;
                        return Ok(());
                    }
                    item = self.rx.recv() => {
                        let Some(q) = item else { return Ok(()) };
                        self.write_item(q).await?;
                        // Coalesce whatever else is already queued into the same write.
                        while self.buf.len() < BATCH_BYTES {
                            let Ok(q) = self.rx.try_recv() else { break };
                            self.write_item(q).await?;
                        }
                        self.flush().await?;
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "writer stopped");
        }
        // Refuse further frames and release any sender waiting for budget.
        self.rx.close();
        self.budget.close();
        let _ = tokio::time::timeout(self.write_timeout, self.socket.shutdown()).await;
    }

    async fn write_item(&mut self, q: Queued) -> std::io::Result<()> {
        if let OutFrame::Data(op, payload) = &q.frame
            && payload.len() > COPY_THRESHOLD
            && !self.closed
        {
            encode_header(&mut self.buf, true, *op, payload.len());
            self.flush().await?;
            return self.write(payload).await;
        }
        self.push(q.frame);
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
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
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
        match tokio::time::timeout(self.write_timeout, self.socket.write_all(bytes)).await {
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
