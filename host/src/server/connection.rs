//! One TCP connection, from its first byte to its last: the opening handshake (bounded in time and
//! size), then the WebSocket session: reading and decoding frames, answering pings, handing
//! messages to the route's handler, and the closing handshake in every variant (peer-initiated,
//! server-initiated, protocol failure, shutdown, idle, abrupt disconnect).
//!
//! Every way out of a session ends the same way: the writer flushes what is queued up to its close
//! frame and half-closes the socket (the server closes TCP first, RFC 6455 §7.1.1), then the reader
//! drains until the peer closes too or `close_timeout` passes, so the peer never loses our close
//! frame to a reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

use super::Shared;
use super::hub::ConnInfo;
use super::outbound::{OutFrame, Outbound, WriterHandle, close_frame, spawn_writer};
use super::routes::{Handler, Route};
use crate::plugin::{Admit, Command, OpenRequest};
use crate::protocol::handshake::{self, HandshakeError, HeadLimits, Request};
use crate::protocol::{CloseCode, CloseFrame, Decoder, Event, Limits as FrameLimits};

/// The smallest read buffer; it grows only while a large frame is arriving.
const MIN_READ: usize = 4 << 10;
/// Largest single read reservation, so a huge announced frame does not allocate up front.
const MAX_READ: usize = 1 << 20;

/// A request to a session from outside it (the hub, a plugin's action).
#[derive(Debug)]
pub enum Control {
    /// Close after what is already queued.
    Close(CloseFrame),
    /// Close ahead of what is queued (the queue is the problem: a slow consumer).
    CloseNow(CloseFrame),
}

/// How a session ended, as reported to the route's handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The code of the close frame received (or sent, when the server closed first); 1005 when the
    /// frame had no code; 1006 when there was no close handshake.
    pub code: u16,
    pub reason: String,
}

impl Ending {
    fn abnormal() -> Self {
        Self { code: CloseCode::ABNORMAL.0, reason: String::new() }
    }
}

/// Serves one accepted TCP connection to its end.
pub(crate) async fn serve(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let limits = &shared.limits;
    let mut buf = BytesMut::with_capacity(1024);
    let head_limits = HeadLimits { max_head_size: limits.max_head_size, max_headers: limits.max_headers };
    let (request, head_len) =
        match tokio::time::timeout(limits.handshake_timeout, read_head(&mut stream, &mut buf, head_limits)).await {
            Err(_) => {
                tracing::debug!(%peer, "handshake timed out");
                let resp = handshake::http_response(
                    408,
                    &[],
                    "text/plain; charset=utf-8",
                    b"request head not received in time\n",
                );
                return refuse(stream, &resp).await;
            }
            Ok(Err(HeadError::Io)) => return,
            Ok(Err(HeadError::Handshake(e))) => {
                tracing::debug!(%peer, status = e.status(), error = %e, "bad request head");
                return refuse(stream, &e.response()).await;
            }
            Ok(Ok(head)) => head,
        };
    buf.advance(head_len);

    let live = shared.live();
    let Some(route) = live.routes.get(request.path()).cloned() else {
        if request.method == "GET"
            && !handshake::wants_upgrade(&request)
            && let Some(dir) = &live.static_dir
        {
            let resp = super::static_files::respond(dir, &request).await;
            return refuse(stream, &resp).await;
        }
        return refuse(stream, &HandshakeError::NotFound.response()).await;
    };
    let upgrade = match handshake::validate_upgrade(&request) {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(%peer, path = %request.target, status = e.status(), error = %e, "handshake refused");
            return refuse(stream, &e.response()).await;
        }
    };
    let id = shared.next_connection_id();
    let (reader, writer) = stream.into_split();
    let (out, writer) =
        spawn_writer(writer, limits.outbound_queue_frames, limits.outbound_queue_bytes, limits.write_timeout);
    let (control_tx, control) = mpsc::channel(8);

    // Admission: the native route accepts at once; a plugin decides (and queues the 101 itself, so
    // that its first actions follow the handshake on the wire).
    let info = Arc::new(ConnInfo {
        id,
        target: request.target.clone(),
        headers: request.headers.clone(),
        remote_addr: peer.to_string(),
        protocols: upgrade.protocols.clone(),
    });
    match &route.handler {
        Handler::Echo => {
            let subprotocol = route.choose_subprotocol(&upgrade.protocols);
            let response = handshake::accept_response(&upgrade.key, subprotocol.as_deref());
            if out.send(OutFrame::Encoded(response.into())).await.is_err() {
                return;
            }
            // Registered only so that the route can be closed as a whole (reload, removal).
            route.hub.join(info, out.clone(), control_tx.clone());
        }
        Handler::Plugin(plugin) => {
            let (reply_tx, reply_rx) = oneshot::channel();
            let open = OpenRequest {
                info,
                key: upgrade.key.clone(),
                out: out.clone(),
                control: control_tx.clone(),
                reply: reply_tx,
            };
            let admit = match plugin.instance_for(id).send(Command::Open(open)).await {
                Ok(()) => reply_rx.await.ok(),
                Err(_) => None,
            };
            let (status, body) = match admit {
                Some(Admit::Accepted) => (0, String::new()),
                Some(Admit::Rejected { status, body }) => (status, body),
                None => (503, "plugin unavailable\n".to_owned()),
            };
            if status != 0 {
                tracing::debug!(%peer, path = %request.target, status, "plugin refused the connection");
                let response = handshake::http_response(status, &[], "text/plain; charset=utf-8", body.as_bytes());
                let _ = out.send(OutFrame::Encoded(response.into())).await;
                writer.finish(limits.write_timeout).await;
                return;
            }
        }
    }
    tracing::debug!(%peer, id, path = %request.target, "connection open");

    let session = Session {
        id,
        reader,
        buf,
        decoder: Decoder::server(FrameLimits {
            max_frame_size: limits.max_frame_size,
            max_message_size: limits.max_message_size,
        }),
        out,
        control,
        shared: shared.clone(),
        route: route.clone(),
        in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
    };
    let (ending, mut reader) = session.run(writer).await;
    tracing::debug!(%peer, id, code = ending.code, reason = %ending.reason, "connection closed");
    match &route.handler {
        Handler::Echo => {
            route.hub.leave(id);
        }
        Handler::Plugin(plugin) => {
            // Exactly once per admitted connection, whatever the way it ended.
            let _ =
                plugin.instance_for(id).send(Command::Closed { id, code: ending.code, reason: ending.reason }).await;
        }
    }
    drain(&mut reader, Instant::now() + limits.close_timeout, usize::MAX).await;
}

/// After our half-close, reads and drops what the peer still sends until it closes too, so that
/// closing the socket does not reset the connection under our last bytes; bounded by `until` and
/// `max_bytes`.
async fn drain(reader: &mut (impl AsyncReadExt + Unpin), until: Instant, max_bytes: usize) {
    let mut sink = [0u8; 4096];
    let mut total = 0usize;
    while total < max_bytes {
        match tokio::time::timeout_at(until, reader.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

enum HeadError {
    Handshake(HandshakeError),
    Io,
}

/// Reads until a whole request head is buffered; returns it and its length.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limits: HeadLimits,
) -> Result<(Request, usize), HeadError> {
    loop {
        if let Some(head) = handshake::parse_request(buf, limits).map_err(HeadError::Handshake)? {
            return Ok(head);
        }
        buf.reserve(1024);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(HeadError::Io),
            Ok(_) => {}
        }
    }
}

/// Sends a final HTTP response and closes without resetting the connection under it.
async fn refuse(mut stream: TcpStream, response: &[u8]) {
    let until = Instant::now() + Duration::from_secs(1);
    let sent = tokio::time::timeout_at(until, async {
        stream.write_all(response).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        drain(&mut stream, until, 64 << 10).await;
    }
}

/// An open WebSocket connection.
struct Session {
    id: u64,
    reader: OwnedReadHalf,
    buf: BytesMut,
    decoder: Decoder,
    out: Outbound,
    control: mpsc::Receiver<Control>,
    shared: Arc<Shared>,
    route: Arc<Route>,
    /// Bounds this connection's events queued at or being handled by its plugin.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Events one connection may have in flight at its plugin.
const MAX_IN_FLIGHT: usize = 8;

/// What the read loop does next.
enum Next {
    Continue,
    /// The close handshake is complete, or the connection is failed: flush, half-close, drain.
    Finish,
}

impl Session {
    /// Runs the session to its end; returns how it ended and the read half, still to be drained.
    async fn run(mut self, writer: WriterHandle) -> (Ending, OwnedReadHalf) {
        let limits = self.shared.limits.clone();
        let mut shutdown = self.shared.shutdown.clone();
        let mut last_heard = Instant::now();
        let mut pinged = false;
        // Set once our close frame is queued: the peer has until then to answer with its own.
        let mut close_deadline: Option<Instant> = None;
        let mut ending = Ending::abnormal();

        'session: loop {
            // Handle every event already buffered before reading more.
            loop {
                match self.decoder.decode(&mut self.buf) {
                    Ok(None) => break,
                    Ok(Some(event)) => {
                        last_heard = Instant::now();
                        pinged = false;
                        match self.on_event(event, close_deadline.is_some(), &mut ending).await {
                            Next::Continue => {}
                            Next::Finish => break 'session,
                        }
                    }
                    Err(e) => {
                        tracing::debug!(id = self.id, error = %e, "protocol violation");
                        if close_deadline.is_none() {
                            self.settle().await;
                            let frame = close_frame(e.close_code(), e.to_string());
                            ending = Ending { code: frame.code.0, reason: frame.reason.clone() };
                            let _ = self.out.send(OutFrame::Close(Some(frame))).await;
                        }
                        // The stream can no longer be parsed: fail the connection (§7.1.7).
                        break 'session;
                    }
                }
            }
            if self.buf.is_empty() && self.buf.capacity() > 4 * MAX_READ {
                self.buf = BytesMut::new(); // give back what a large message grew
            }
            let want = self.decoder.bytes_wanted(self.buf.len()).clamp(MIN_READ, MAX_READ);
            self.buf.reserve(want);
            let idle_check = last_heard + if pinged { limits.idle_timeout } else { limits.ping_interval };

            tokio::select! {
                read = self.reader.read_buf(&mut self.buf) => match read {
                    Ok(0) | Err(_) => break 'session, // TCP closed without a close handshake (or after ours timed out)
                    Ok(_) => {}
                },
                Some(control) = self.control.recv(), if close_deadline.is_none() => {
                    let frame = match control {
                        Control::Close(frame) => { let _ = self.out.send(OutFrame::Close(Some(frame.clone()))).await; frame }
                        Control::CloseNow(frame) => { self.out.close_now(frame.clone()); frame }
                    };
                    ending = Ending { code: frame.code.0, reason: frame.reason };
                    close_deadline = Some(Instant::now() + limits.close_timeout);
                }
                changed = shutdown.changed(), if close_deadline.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        self.settle().await;
                        let frame = close_frame(CloseCode::GOING_AWAY, "server shutting down");
                        ending = Ending { code: frame.code.0, reason: frame.reason.clone() };
                        let _ = self.out.send(OutFrame::Close(Some(frame))).await;
                        close_deadline = Some(Instant::now() + limits.close_timeout);
                    }
                }
                _ = sleep_until(idle_check), if close_deadline.is_none() => {
                    if !pinged {
                        pinged = true;
                        let _ = self.out.try_send(OutFrame::Data(crate::protocol::OpCode::Ping, bytes::Bytes::from_static(b"keepalive")));
                    } else {
                        self.settle().await;
                        let frame = close_frame(CloseCode::GOING_AWAY, "idle timeout");
                        ending = Ending { code: frame.code.0, reason: frame.reason.clone() };
                        let _ = self.out.send(OutFrame::Close(Some(frame))).await;
                        close_deadline = Some(Instant::now() + limits.close_timeout);
                    }
                }
                _ = sleep_until(close_deadline.unwrap_or_else(Instant::now)), if close_deadline.is_some() => {
                    break 'session; // the peer never answered our close
                }
            }
            if self.out.is_closed() {
                break 'session; // the writer failed (peer gone or not reading): nothing more can be sent
            }
        }

        // Flush up to the close frame and half-close.
        writer.finish(limits.write_timeout).await;
        (ending, self.reader)
    }

    /// Waits (bounded) until the plugin has handled every event this connection sent before, so
    /// that its replies go out ahead of the close frame the session is about to queue.
    async fn settle(&self) {
        if let Handler::Plugin(plugin) = &self.route.handler {
            let (tx, rx) = oneshot::channel();
            let _ = tokio::time::timeout(self.shared.limits.close_timeout, async {
                if plugin.instance_for(self.id).send(Command::Barrier(tx)).await.is_ok() {
                    let _ = rx.await;
                }
            })
            .await;
        }
    }

    /// Queues the session's own reply; the last one of a read batch may be written at once.
    async fn reply(&self, frame: OutFrame) -> Result<(), super::QueueError> {
        if self.buf.is_empty() { self.out.send_or_write(frame).await } else { self.out.send(frame).await }
    }

    async fn on_event(&mut self, event: Event, closing: bool, ending: &mut Ending) -> Next {
        match event {
            Event::Close(frame) => {
                if !closing {
                    self.settle().await;
                    // Echo the peer's code (§5.5.1); a close without a code is answered without one.
                    let echo = frame.as_ref().map(|f| CloseFrame { code: f.code, reason: String::new() });
                    let _ = self.out.send(OutFrame::Close(echo)).await;
                    *ending = match frame {
                        Some(f) => Ending { code: f.code.0, reason: f.reason },
                        None => Ending { code: CloseCode::NO_STATUS.0, reason: String::new() },
                    };
                }
                Next::Finish
            }
            // After our close frame, nothing else is sent and data is no longer delivered.
            _ if closing => Next::Continue,
            Event::Ping(payload) => {
                if self.reply(OutFrame::Data(crate::protocol::OpCode::Pong, payload)).await.is_err() {
                    return Next::Finish;
                }
                Next::Continue
            }
            Event::Pong(_) => Next::Continue,
            Event::Message(message) => {
                let delivered = match &self.route.handler {
                    Handler::Echo => {
                        self.reply(OutFrame::Data(message.opcode(), message.payload().clone())).await.is_ok()
                    }
                    Handler::Plugin(plugin) => {
                        // Credit-based flow control: forward only when this connection's queue has
                        // room for the replies and few of its events are in flight; and wait while
                        // the plugin's own queue is full. A busy plugin or a client that does not
                        // read its replies slows this reader, nothing else.
                        let Ok(()) = self.out.room().await else { return Next::Finish };
                        let Ok(permit) = self.in_flight.clone().acquire_owned().await else { return Next::Finish };
                        let command = Command::Message { id: self.id, message, permit };
                        plugin.instance_for(self.id).send(command).await.is_ok()
                    }
                };
                if delivered { Next::Continue } else { Next::Finish }
            }
        }
    }
}
