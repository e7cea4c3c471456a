//! The byte stream under a connection: plain TCP, or TLS over TCP, behind the two handles the rest
//! of the server uses: a [`Reader`] (the connection's task) and a shared [`Writer`] (the outbound
//! queue, written from whichever task flushes it).
//!
//! Plain TCP goes straight to tokio's halves, as before TLS existed: no extra lock, copy or
//! syscall. TLS keeps one rustls session per connection under a mutex, shared by both handles:
//! reads decrypt into the connection's buffer, writes encrypt into the session's buffer and push
//! records to TCP without blocking. The session's buffer is bounded ([`TLS_BUFFER`]): when TCP
//! does not take its records, writes report `WouldBlock`, exactly like a full TCP socket, so the
//! outbound queue's bounds and `write_timeout` hold as they do for plain connections. Records
//! still in the session after the queue is empty are reported by [`Writer::flush_pending`], so the
//! connection waits for them as for any unwritten byte.

use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, BytesMut};
use rustls::ServerConnection;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Most plaintext a TLS session buffers (as records not yet written to TCP) before writes to it
/// say "would block".
const TLS_BUFFER: usize = 64 << 10;
/// Ciphertext read from TCP at once.
const TLS_READ: usize = 16 << 10;

/// A TLS session and its TCP stream.
pub struct Tls {
    tcp: TcpStream,
    session: Mutex<ServerConnection>,
}

impl Tls {
    /// Wraps a session whose handshake is complete (tokio-rustls's acceptor did it).
    pub fn new(tcp: TcpStream, mut session: ServerConnection) -> Arc<Self> {
        session.set_buffer_limit(Some(TLS_BUFFER));
        Arc::new(Self { tcp, session: Mutex::new(session) })
    }

    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether decrypted bytes wait to be read (readiness of TCP says nothing about them).
    fn has_plaintext(&self) -> bool {
        let mut session = self.lock();
        session.process_new_packets().is_ok_and(|state| state.plaintext_bytes_to_read() > 0)
    }

    /// Reads decrypted bytes into `buf` (at most `limit`), reading and decrypting TCP as needed.
    /// `Ok(0)` at the end of the stream; `WouldBlock` when TCP has nothing.
    fn read_into(&self, buf: &mut BytesMut, limit: usize) -> io::Result<usize> {
        let mut session = self.lock();
        let mut chunk = [0u8; TLS_READ];
        loop {
            let want = limit.min(chunk.len());
            match session.reader().read(&mut chunk[..want]) {
                Ok(n) => {
                    buf.put_slice(&chunk[..n]);
                    return Ok(n); // 0: the peer's close_notify
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if session.read_tls(&mut TcpIo(&self.tcp))? == 0 {
                return Ok(0);
            }
            if let Err(e) = session.process_new_packets() {
                let _ = session.write_tls(&mut TcpIo(&self.tcp)); // its alert, if it can go out
                return Err(io::Error::new(ErrorKind::InvalidData, e));
            }
            // What the session answers by itself (key updates, alerts) goes out now if it can.
            let _ = flush(&mut session, &self.tcp);
        }
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut session = self.lock();
        match flush(&mut session, &self.tcp) {
            Err(e) if e.kind() != ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        let n = session.writer().write_vectored(bufs)?;
        match flush(&mut session, &self.tcp) {
            Err(e) if e.kind() != ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(ErrorKind::WouldBlock.into()); // its buffer is full and TCP takes nothing
        }
        Ok(n)
    }

    fn flush_pending(&self) -> io::Result<()> {
        flush(&mut self.lock(), &self.tcp)
    }

    /// Sends close_notify (best effort: what TCP does not take now is dropped with the socket).
    fn close_notify(&self) {
        let mut session = self.lock();
        session.send_close_notify();
        let _ = flush(&mut session, &self.tcp);
    }
}

/// Writes the session's records to TCP until it has none or TCP is full (`WouldBlock`).
fn flush(session: &mut ServerConnection, tcp: &TcpStream) -> io::Result<()> {
    while session.wants_write() {
        session.write_tls(&mut TcpIo(tcp))?;
    }
    Ok(())
}

/// Non-blocking `Read` and `Write` over a shared TCP stream, for rustls.
struct TcpIo<'a>(&'a TcpStream);

impl Read for TcpIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for TcpIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The connection's reading side.
pub enum Reader {
    Plain(OwnedReadHalf),
    Tls(Arc<Tls>),
}

/// The connection's writing side, shared by its outbound queue.
pub enum Writer {
    Plain(OwnedWriteHalf),
    Tls(Arc<Tls>),
}

/// Splits a plain TCP stream.
pub fn plain(tcp: TcpStream) -> (Reader, Arc<Writer>) {
    let (r, w) = tcp.into_split();
    (Reader::Plain(r), Arc::new(Writer::Plain(w)))
}

/// The two sides of a TLS connection.
pub fn tls(tls: Arc<Tls>) -> (Reader, Arc<Writer>) {
    (Reader::Tls(tls.clone()), Arc::new(Writer::Tls(tls)))
}

impl Reader {
    /// Ready when a read may find something. Only the connection's task polls this (tokio keeps
    /// one waker per direction: no waiter list, no clone of an unchanged waker).
    pub fn poll_readable(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        match self {
            Self::Plain(r) => r.as_ref().poll_read_ready(cx),
            Self::Tls(t) if t.has_plaintext() => std::task::Poll::Ready(Ok(())),
            Self::Tls(t) => t.tcp.poll_read_ready(cx),
        }
    }

    /// Waits until a read may find something.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Self::Plain(r) => r.readable().await,
            Self::Tls(t) if t.has_plaintext() => Ok(()),
            Self::Tls(t) => t.tcp.readable().await,
        }
    }

    /// The TCP stream (for draining after the close, and socket options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(r) => r.as_ref(),
            Self::Tls(t) => &t.tcp,
        }
    }

    /// One read without waiting, of at most `limit` bytes: `Ready(Ok(0))` at the end of the
    /// stream, `Pending` when there was nothing after all.
    pub fn read_now(&mut self, buf: &mut BytesMut, limit: usize) -> std::task::Poll<io::Result<usize>> {
        use std::future::Future;
        match self {
            Self::Plain(r) => {
                // Through `AsyncRead` rather than `try_read`: a short read clears the socket's
                // readiness, which saves a `recv` that would only say "would block" before the
                // next wait.
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                let mut limited = buf.limit(limit);
                std::pin::pin!(tokio::io::AsyncReadExt::read_buf(r, &mut limited)).poll(&mut cx)
            }
            Self::Tls(t) => match t.read_into(buf, limit) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::task::Poll::Pending,
                result => std::task::Poll::Ready(result),
            },
        }
    }
}

impl Writer {
    /// Ready when the socket takes bytes again (polled by the connection's task only).
    pub fn poll_writable(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        self.tcp().poll_write_ready(cx)
    }

    pub async fn writable(&self) -> io::Result<()> {
        self.tcp().writable().await
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(w) => w.as_ref(),
            Self::Tls(t) => &t.tcp,
        }
    }

    /// Writes what it can of `bytes` now (`send`); `WouldBlock` when nothing could go.
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(w) => w.try_write(bytes),
            Self::Tls(t) => t.write_vectored(&[IoSlice::new(bytes)]),
        }
    }

    /// Writes what it can now; `WouldBlock` when nothing could go.
    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Self::Plain(w) => w.try_write_vectored(bufs),
            Self::Tls(t) => t.write_vectored(bufs),
        }
    }

    /// For TLS, pushes records still in the session to TCP: `WouldBlock` while some remain.
    pub fn flush_pending(&self) -> io::Result<()> {
        match self {
            Self::Plain(_) => Ok(()),
            Self::Tls(t) => t.flush_pending(),
        }
    }

    /// Writes all of `bytes`, waiting for room (a refused request's final HTTP response).
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.try_write_vectored(&[IoSlice::new(bytes)]) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.writable().await?,
                Err(e) => return Err(e),
            }
        }
        loop {
            match self.flush_pending() {
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.writable().await?,
                result => return result,
            }
        }
    }

    /// Ends our side: TLS close_notify, then a TCP half-close (the peer sees end of stream).
    pub fn half_close(&self) {
        if let Self::Tls(t) = self {
            t.close_notify();
        }
        let _ = socket2::SockRef::from(self.tcp()).shutdown(std::net::Shutdown::Write);
    }
}
