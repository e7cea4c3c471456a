//! One TCP connection, from its first byte to its last: the opening handshake (bounded in time and
//! size), then the WebSocket session, decided in [`crate::protocol::session`] and driven here. This
//! file owns only the I/O (reading when there is room, waiting for a full socket, timers, shutdown)
//! and the hand-off of messages to the route's handler.
//!
//! One task per connection, and no read buffer held while idle: the task waits for readability,
//! then reads into a buffer sized for what is arriving, and gives the buffer back once it is empty.
//! It reads only while the connection's outbound side has room (its queue and its events at the
//! handler under `outbound_queue_bytes`, see [`Outbound::has_room`]), so a client that does not
//! read, or a busy plugin, slows only this client (TCP back-pressure); time spent waiting so does
//! not count as the client's silence.
//!
//! Every way out of a session ends the same way: our close frame after everything queued before it,
//! a half-close (the server closes TCP first, RFC 6455 §7.1.1), then draining until the peer closes
//! too or `close_timeout` passes, so that the peer never loses our close frame to a reset.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use tokio::net::TcpStream;
use tokio::sync::{OwnedMutexGuard, Semaphore};
use tokio::time::{Instant, sleep_until};

use super::Shared;
use super::budget::Pressure;
use super::fairness::{Fairness, Verdict};
use super::handler::{Admit, HandlerInstance};
use super::handshakes::Pass;
use super::hub::{ConnInfo, HeaderBlock};
use super::outbound::{Outbound, QueueLimits};
use super::routes::{Handler, Route};
use super::socket::{self, Reader, Writer};
use crate::protocol::deflate::{self, DeflateParams};
use crate::protocol::handshake::{self, HandshakeError, HeadLimits, Request};
use crate::protocol::session::{Output, Session, Timing};
use crate::protocol::{CloseCode, CloseFrame, Decoder, Limits as FrameLimits, Message};

/// The smallest read; a read buffer grows past it only while a large frame is arriving.
const MIN_READ: usize = 4 << 10;
/// Largest single read reservation, so a huge announced frame does not allocate up front.
const MAX_READ: usize = 256 << 10;
/// Messages up to this size get room for the whole of the next one like them at once (see
/// `Connection::read`). Larger ones are read MAX_READ at a time: a buffer reserved this large is
/// still kept among the spares, so a client that sent one huge message and then small frames does
/// not make every read allocate and free a huge buffer.
const WHOLE_UP_TO: usize = 2 << 20;
/// Bytes a connection's task reads without waiting before it yields to the other tasks of its
/// thread (tokio's own budget counts polls, not bytes: 128 reads of 256 KiB would hold the thread
/// for tens of milliseconds).
const YIELD_AFTER: usize = 128 << 10;
/// Messages of one connection handed to its handler at once (one read batch), besides the byte
/// bound.
pub(crate) const MAX_IN_FLIGHT: usize = 16;
/// Echo payloads up to this size are copied rather than shared with the read buffer.
const SHARE_ABOVE: usize = 4 << 10;
/// How long a socket dropped from the handshake pool must have sent nothing to be answered 408
/// rather than 503.
const SILENT_FOR: Duration = Duration::from_secs(1);
/// How often a connection paused by memory pressure looks again.
const PRESSURE_RETRY: Duration = Duration::from_millis(20);

/// Serves one accepted TCP connection to its end. `pass` is its place in the handshake pool,
/// given back once the request head is in; `slots` bounds open WebSocket connections.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, pass: Pass, slots: Arc<Semaphore>) {
    // The handshake runs boxed, and its state is freed once the connection is open: a task is as
    // large as its largest state, for its whole life, and an idle connection is mostly its task.
    let Some((mut conn, _slot)) = Box::pin(handshake(stream, peer, &shared, pass, &slots)).await else { return };
    let (id, route, limits) = (conn.id, conn.route.clone(), &shared.limits);
    let metrics = route.hub.metrics().clone();
    conn.run().await;
    let ending = conn.session.ending().clone();
    tracing::debug!(%peer, id, code = ending.code, reason = %ending.reason, "connection closed");
    metrics.connections_open.dec();
    metrics.closed(ending.code);
    match &route.handler {
        Handler::Echo => {
            route.hub.leave(id);
        }
        Handler::Events(events) => {
            // Exactly once per admitted connection, whatever the way it ended.
            let instance = events.instance_for(id);
            Box::pin(async { instance.lock().await.closed(id, ending.code, &ending.reason).await }).await;
        }
    }
    Box::pin(drain(conn.reader.tcp(), Instant::now() + limits.close_timeout, usize::MAX)).await;
}

/// From the accepted socket to an open connection: the TLS handshake, the request head, the
/// route, the upgrade, the admission and the 101. `None` when the client was answered otherwise
/// (or left); else the connection, and its slot under `max_connections`.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    pass: Pass,
    slots: &Arc<Semaphore>,
) -> Option<(Connection, tokio::sync::OwnedSemaphorePermit)> {
    let _ = stream.set_nodelay(true);
    let accepted = Instant::now();
    let limits = &shared.limits;
    // The TLS handshake and the request head, together within `handshake_timeout`.
    let deadline = accepted + limits.handshake_timeout;
    let (mut reader, writer) = match shared.tls() {
        None => socket::plain(stream),
        // Boxed: a TLS handshake's state would otherwise be part of every connection's task,
        // plain or not, for its whole life (the idle cost per connection).
        Some(acceptor) => match Box::pin(accept_tls(stream, acceptor, deadline, &pass)).await {
            Ok(sides) => sides,
            Err(why) => {
                crate::metrics::metrics().tls_failed();
                tracing::debug!(%peer, "TLS handshake failed: {why}");
                return None;
            }
        },
    };
    let mut buf = BytesMut::with_capacity(1024);
    let head_limits = HeadLimits { max_head_size: limits.max_head_size, max_headers: limits.max_headers };
    // `Err(true)`: dropped from the handshake pool to make room (it had sent nothing that this task
    // had read yet); `Err(false)`: not in time.
    // Boxed, like every step that only the handshake takes (reading the head, answering a refusal,
    // a static file): the task's size is that of its largest state, kept for the connection's
    // whole life, so the handshake's states must not outsize the open connection's.
    let head = Box::pin(async {
        tokio::select! {
            head = tokio::time::timeout_at(deadline, read_head(&mut reader, &mut buf, head_limits, &pass)) => head.map_err(|_| false),
            _ = pass.evicted() => Err(true),
        }
    })
    .await;
    drop(pass);
    let (request, head_len) = match head {
        Err(evicted) => {
            // 408 for a slow head, and for a socket dropped after a second of silence. One dropped
            // with bytes waiting (sent, not read yet: a burst of handshakes from one address) or
            // too young to judge was not slow: it gets "busy, retry".
            let sent = evicted
                && (!buf.is_empty() || matches!(reader.read_now(&mut buf, MIN_READ), Poll::Ready(Ok(n)) if n > 0));
            let busy = evicted && (sent || accepted.elapsed() < SILENT_FOR);
            tracing::debug!(%peer, evicted, busy, "handshake timed out, or made room for a newer one");
            let resp = if busy {
                super::handshakes::busy_response()
            } else {
                handshake::http_response(408, &[], "text/plain; charset=utf-8", b"request head not received in time\n")
            };
            refuse(shared, &reader, &writer, &resp).await;
            return None;
        }
        Ok(Err(HeadError::Io)) => return None,
        Ok(Err(HeadError::Handshake(e))) => {
            tracing::debug!(%peer, status = e.status(), error = %e, "bad request head");
            refuse(shared, &reader, &writer, &e.response()).await;
            return None;
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
            let resp = Box::pin(super::static_files::respond(dir, &request)).await;
            refuse(shared, &reader, &writer, &resp).await;
            return None;
        }
        refuse(shared, &reader, &writer, &HandshakeError::NotFound.response()).await;
        return None;
    };
    drop(live);
    let upgrade = match handshake::validate_upgrade(&request) {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(%peer, path = %request.target, status = e.status(), error = %e, "handshake refused");
            refuse(shared, &reader, &writer, &e.response()).await;
            return None;
        }
    };
    // A connection slot, held to the end of the connection.
    let Ok(_slot) = slots.clone().try_acquire_owned() else {
        tracing::warn!(%peer, "connection limit reached: 503");
        let resp = handshake::unavailable_response(Duration::from_secs(1), "server is at its connection limit");
        refuse(shared, &reader, &writer, &resp).await;
        return None;
    };
    let id = shared.next_connection_id();
    // permessage-deflate, when the route offers it and the client's offers allow it.
    let deflate =
        route.deflate().and_then(|config| deflate::negotiate(request.header_all("sec-websocket-extensions"), &config));
    let extensions = deflate.as_ref().map(DeflateParams::response);
    let out = Outbound::for_connection(
        writer.clone(),
        QueueLimits {
            max_frames: limits.outbound_queue_frames,
            max_bytes: limits.outbound_queue_bytes,
            max_message_size: limits.max_message_size,
            max_in_flight: MAX_IN_FLIGHT,
        },
        deflate.as_ref(),
        Some(route.hub.metrics().clone()),
    );

    // Admission: the native route accepts at once; an event handler (a plugin) decides, and has the
    // 101 queued through `accept` before its first effects, so they follow the handshake.
    // What a handler's `open` sees; the native route needs only the id (its headers are not
    // kept: an idle connection's memory is mostly what it keeps).
    let info = |full: bool| {
        Arc::new(ConnInfo {
            id,
            target: request.target.clone(),
            headers: if full {
                HeaderBlock::new(request.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            } else {
                HeaderBlock::default()
            },
            remote_addr: peer,
            protocols: if full { upgrade.protocols.clone() } else { Vec::new() },
        })
    };
    match &route.handler {
        Handler::Echo => {
            let subprotocol = route.choose_subprotocol(&upgrade.protocols);
            let response = handshake::accept_response(&upgrade.key, subprotocol.as_deref(), extensions.as_deref());
            if out.push_encoded(response.into()).is_err() {
                return None;
            }
            // Registered only so that the route can be closed as a whole (reload, removal).
            route.hub.join(info(false), out.clone());
        }
        Handler::Events(events) => {
            let instance = events.instance_for(id);
            let conn = info(true);
            let hub = &route.hub;
            // The handler accepts by asking for the 101 and the registration, before its effects.
            let mut accept = |subprotocol: Option<&str>| {
                let response = handshake::accept_response(&upgrade.key, subprotocol, extensions.as_deref());
                out.push_encoded(response.into()).ok()?;
                hub.join(conn.clone(), out.clone());
                Some(out.clone())
            };
            // Boxed, like every handler call below: a call's state (a plugin's futures) would
            // otherwise be part of every connection task, idle or not, native or not.
            let admit = Box::pin(async { instance.lock().await.open(conn.clone(), &mut accept).await }).await;
            match admit {
                Admit::Accepted => {}
                Admit::Rejected { status, body } => {
                    tracing::debug!(%peer, path = %request.target, status, "handler refused the connection");
                    let response = handshake::http_response(status, &[], "text/plain; charset=utf-8", body.as_bytes());
                    refuse(shared, &reader, &writer, &response).await;
                    return None;
                }
                Admit::Unavailable { retry_after } => {
                    tracing::debug!(%peer, path = %request.target, "handler unavailable (its circuit breaker is open): 503");
                    let response = handshake::unavailable_response(
                        retry_after,
                        "plugin unavailable: it keeps failing; try again later",
                    );
                    refuse(shared, &reader, &writer, &response).await;
                    return None;
                }
            }
        }
    }
    drop(request);
    tracing::debug!(%peer, id, path = %route.path, "connection open");
    let metrics = route.hub.metrics();
    metrics.connections.inc();
    metrics.connections_open.inc();

    let session = Session::new(
        Decoder::server(FrameLimits {
            max_frame_size: limits.max_frame_size,
            max_message_size: limits.max_message_size,
        })
        .with_deflate(deflate.as_ref()),
        Timing {
            ping_interval: limits.ping_interval,
            idle_timeout: limits.idle_timeout,
            close_timeout: limits.close_timeout,
            message_timeout: limits.message_timeout,
        },
        Instant::now().into_std(),
    );
    let fair = route.connection_limits().state(route.events().is_some(), Instant::now());
    let buf_asked = buf.len() + buf.capacity() + head_len;
    let conn = Connection {
        id,
        fair,
        reader,
        writer,
        buf,
        buf_asked,
        last_message: 0,
        read_since_wait: 0,
        room_after_event: None,
        session,
        out,
        shared: shared.clone(),
        route: route.clone(),
        to_handler: Vec::new(),
        waiting: None,
        deferred_close: None,
        accounted: 0,
        heard: false,
    };
    Some((conn, _slot))
}

/// After our half-close, reads and drops what the peer still sends until it closes too, so that
/// closing the socket does not reset the connection under our last bytes; bounded by `until` and
/// `max_bytes`.
async fn drain(socket: &TcpStream, until: Instant, max_bytes: usize) {
    let mut total = 0usize;
    while total < max_bytes {
        if tokio::time::timeout_at(until, socket.readable()).await.is_err() {
            return;
        }
        // Declared after the wait, so that it lives on the stack, not in every connection's task.
        let mut sink = [0u8; 4096];
        match socket.try_read(&mut sink) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// The server's side of a TLS handshake, within `deadline` (dropped if the handshake pool evicts
/// it); the connection's reader and writer over the session.
async fn accept_tls(
    stream: TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    deadline: Instant,
    pass: &Pass,
) -> Result<(Reader, Arc<Writer>), String> {
    // A client whose ClientHello has arrived is not silent (the pool evicts silent ones first).
    let mut first = [0u8; 1];
    let hello = tokio::select! {
        hello = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => hello,
        _ = pass.evicted() => return Err("dropped from the handshake pool".into()),
    };
    if matches!(hello, Ok(Ok(n)) if n > 0) {
        pass.heard();
    }
    let accepted = tokio::select! {
        tls = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => tls,
        _ = pass.evicted() => return Err("dropped from the handshake pool".into()),
    };
    match accepted {
        Ok(Ok(tls)) => {
            let (tcp, session) = tls.into_inner();
            Ok(socket::tls(socket::Tls::new(tcp, session)))
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("not completed in time".into()),
    }
}

enum HeadError {
    Handshake(HandshakeError),
    Io,
}

/// Reads until a whole request head is buffered; returns it and its length. The first byte tells
/// the handshake pool that this client is not silent.
async fn read_head(
    reader: &mut Reader,
    buf: &mut BytesMut,
    limits: HeadLimits,
    pass: &Pass,
) -> Result<(Request, usize), HeadError> {
    loop {
        if let Some(head) = handshake::parse_request(buf, limits).map_err(HeadError::Handshake)? {
            return Ok(head);
        }
        buf.reserve(1024);
        if reader.readable().await.is_err() {
            return Err(HeadError::Io);
        }
        match reader.read_now(buf, limits.max_head_size) {
            Poll::Pending => {}
            Poll::Ready(Ok(0) | Err(_)) => return Err(HeadError::Io),
            Poll::Ready(Ok(_)) => pass.heard(),
        }
    }
}

/// Sends a final HTTP response and closes without resetting the connection under it (the request's
/// remaining bytes are drained, bounded in time and size). Draining keeps the task alive for up to
/// a second, so at most `max_handshakes` refusals drain at once: past that (a storm of refused
/// handshakes), a refused socket is closed at once, at the risk of a reset under its response.
/// Answers a handshake with `response` (see [`refuse_now`]); boxed, so that its state is not part
/// of every connection's task.
async fn refuse(shared: &Shared, reader: &Reader, writer: &Writer, response: &[u8]) {
    Box::pin(refuse_now(shared, reader, writer, response)).await
}

async fn refuse_now(shared: &Shared, reader: &Reader, writer: &Writer, response: &[u8]) {
    // "HTTP/1.1 NNN ...": counted by status.
    if let Some(status) = response.get(9..12).and_then(|s| std::str::from_utf8(s).ok()?.parse().ok()) {
        crate::metrics::metrics().refused(status);
    }
    let until = Instant::now() + Duration::from_secs(1);
    if let Ok(Ok(())) = tokio::time::timeout_at(until, writer.write_all(response)).await {
        writer.half_close();
        let lingering = &shared.lingering;
        if lingering.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < shared.limits.max_handshakes {
            drain(reader.tcp(), until, 64 << 10).await;
        }
        lingering.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An open WebSocket connection.
struct Connection {
    id: u64,
    /// Its standing against the route's per-connection limits (`None`: the route sets none).
    fair: Option<Box<Fairness>>,
    reader: Reader,
    /// The write side, shared with the outbound queue (writes go through [`Outbound`] only).
    writer: Arc<Writer>,
    /// Bytes read and not yet decoded; no capacity while idle.
    buf: BytesMut,
    /// The most bytes `buf` was asked to hold since it was taken (its allocation is at most twice
    /// that: see [`spare`]); 0 while it holds none (taken for a read, given back once empty).
    buf_asked: usize,
    /// Payload bytes of the last message received, up to `WHOLE_UP_TO` (the next read makes room
    /// for as many).
    last_message: u32,
    /// Bytes read since the task last waited (see [`YIELD_AFTER`]).
    read_since_wait: usize,
    /// Whether the outbound side had room after the event just handed over (saves asking again).
    room_after_event: Option<bool>,
    session: Session,
    out: Outbound,
    shared: Arc<Shared>,
    route: Arc<Route>,
    /// Messages of this read batch for the event handler, handed over together (one flush of the
    /// replies per batch). Bounded by the connection's credit.
    to_handler: Vec<Message>,
    /// The handler's instance was busy with another connection's events: its lock, being waited for
    /// (in FIFO order). The connection stops reading meanwhile, and serves everything else.
    waiting: Option<InstanceWait>,
    /// Our close frame, decided while messages before it still wait for the handler: it is queued
    /// after their replies.
    deferred_close: Option<Option<CloseFrame>>,
    /// Bytes this connection has accounted in the server's memory budget.
    accounted: usize,
    /// Bytes came in since the session was last told (it is, at the top of the next turn).
    heard: bool,
}

/// What woke the session's wait.
enum Wake {
    /// The outbound side wants a look (a close queued by someone else, room or credit back, the
    /// socket writable again).
    Attention,
    /// The socket is readable (false: it failed).
    Readable(bool),
    Timer,
    /// The handler's instance, waited for, is this connection's now.
    Instance(OwnedMutexGuard<dyn HandlerInstance>),
    Shutdown,
}

/// What the loop does after an output.
enum Flow {
    Continue,
    Finish,
}

impl Connection {
    /// Runs the session to its end: our close frame is on the wire (or cannot be), TCP is
    /// half-closed.
    ///
    /// Each turn of the loop takes what the outbound side says under one lock, decodes and hands
    /// over what is buffered, flushes (and learns where the queue stands, under the same lock), then
    /// waits for the next thing to do. The wait is one hand-written poll of everything the session
    /// listens to: each source keeps the task's waker between turns (a readiness slot, a waker in
    /// the queue's state, futures made once per session), so a message costs no waiter list
    /// insertion, removal or waker clone.
    async fn run(&mut self) {
        // Two durations, not a copy of every limit: this future is every open connection's.
        let (idle_timeout, write_timeout) = (self.shared.limits.idle_timeout, self.shared.limits.write_timeout);
        let mut shutdown = self.shared.shutdown.clone();
        let shutdown_signal = async move { while shutdown.changed().await.is_ok() && !*shutdown.borrow() {} };
        tokio::pin!(shutdown_signal);
        let mut shutdown_seen = false;
        // One timer for the whole session. Deadlines mostly move later (each byte from the peer
        // pushes the idle deadline back), so the timer is moved only when a deadline comes
        // earlier; when it fires early, the session finds nothing due and it is set again.
        let timer = tokio::time::sleep_until(Instant::now() + idle_timeout);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        // The sources below keep this task's waker once polled; they are polled again only when
        // they may have something (the timer once set, or elapsed; shutdown once signalled).
        let mut timer_registered = false;
        let mut shutdown_registered = false;
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        'session: loop {
            let now = Instant::now();
            if std::mem::take(&mut self.heard) {
                self.session.heard(now.into_std());
            }
            let view = self.out.session_view();
            // A close queued by someone else (the plugin's close action, a slow-consumer 1013).
            if let Some(frame) = view.close_notice {
                self.session.close(frame, now.into_std());
            }
            if view.failed {
                self.session.end_of_stream();
                break;
            }
            // Decode what is buffered, as far as the outbound side has room for (and not while
            // throttled for its share of the handler's time: what it already sent waits too).
            let throttled = self.fair.as_mut().is_some_and(|f| f.throttled(now));
            let mut room = view.room;
            while !throttled && room && self.waiting.is_none() && !self.session.is_closed() {
                let Some(output) = self.session.next_event(&mut self.buf, now.into_std()) else { break };
                if let Flow::Finish = self.apply(output) {
                    break 'session;
                }
                if self.buf.is_empty() {
                    break; // nothing more to decode (the flush below says where the queue stands)
                }
                room = self.room_after_event.take().unwrap_or_else(|| self.out.has_room());
            }
            self.hand_over().await;
            let Ok(after) = self.out.flush_and_view(&waker) else {
                self.session.end_of_stream();
                break;
            };
            if self.session.is_closed() {
                break;
            }
            // Give the buffer back when nothing is pending in it (idle connections hold none).
            if self.buf.is_empty() && self.buf_asked > 0 {
                self.give_back_buffer();
            }
            let mut reading = self.waiting.is_none() && after.room;
            let mut retry = None;
            // Over its byte rate or its share of the handler's time: no reading for a while.
            if let Some(until) = self.fair.as_mut().and_then(|f| f.paused_until(now)) {
                reading = false;
                retry = Some(until);
            }
            match self.account(after.held) {
                Pressure::Normal => {}
                Pressure::Pause => {
                    reading = false;
                    retry = Some(now + PRESSURE_RETRY);
                }
                Pressure::Shed => {
                    if self.session.is_open() {
                        tracing::warn!(
                            id = self.id,
                            held = self.accounted,
                            "memory budget exceeded: closing a large holder with 1013"
                        );
                    }
                    let frame =
                        CloseFrame { code: CloseCode::TRY_AGAIN_LATER, reason: "server memory budget exceeded".into() };
                    if let Some(output) = self.session.close(frame, now.into_std()) {
                        self.apply(output);
                    }
                    reading = false;
                    retry = Some(now + PRESSURE_RETRY);
                }
            }
            self.session.set_paused(!reading, now.into_std());
            let session_deadline = self.session.next_deadline().map(Instant::from_std);
            let write_deadline = after.stalled_since.map(|t| Instant::from_std(t) + write_timeout);
            let deadline = [session_deadline, write_deadline, retry].into_iter().flatten().min();
            if let Some(d) = deadline
                && armed.is_none_or(|a| d < a)
            {
                timer.as_mut().reset(d);
                armed = Some(d);
                timer_registered = false;
            }
            // In this order of priority.
            let wake = std::future::poll_fn(|cx| {
                if self.out.poll_attention(cx, &waker).is_ready() {
                    return Poll::Ready(Wake::Attention);
                }
                if reading && let Poll::Ready(ready) = self.reader.poll_readable(cx) {
                    return Poll::Ready(Wake::Readable(ready.is_ok()));
                }
                if write_deadline.is_some() && self.writer.poll_writable(cx).is_ready() {
                    return Poll::Ready(Wake::Attention);
                }
                if armed.is_some() && (!timer_registered || timer.is_elapsed()) {
                    timer_registered = true;
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Timer);
                    }
                }
                if let Some(wait) = &mut self.waiting
                    && let Poll::Ready(instance) = wait.as_mut().poll(cx)
                {
                    return Poll::Ready(Wake::Instance(instance));
                }
                if !shutdown_seen && (!shutdown_registered || !matches!(self.shared.shutdown.has_changed(), Ok(false)))
                {
                    shutdown_registered = true;
                    if shutdown_signal.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Shutdown);
                    }
                }
                self.read_since_wait = 0; // the task goes to sleep: others get their turn
                Poll::Pending
            })
            .await;
            // A client that keeps the socket readable would keep this task running: past
            // YIELD_AFTER bytes without a wait, it lets the other tasks of its thread run first.
            if self.read_since_wait >= YIELD_AFTER {
                self.read_since_wait = 0;
                tokio::task::yield_now().await;
            }
            match wake {
                Wake::Attention => {}
                Wake::Readable(ready) => {
                    if !ready || !self.read() {
                        self.session.end_of_stream();
                        break;
                    }
                }
                Wake::Timer => {
                    armed = None;
                    let now = Instant::now();
                    if write_deadline.is_some_and(|d| now >= d) {
                        tracing::debug!(id = self.id, "write made no progress (peer not reading): dropping");
                        self.session.end_of_stream();
                        break;
                    }
                    if let Some(output) = self.session.tick(now.into_std())
                        && let Flow::Finish = self.apply(output)
                    {
                        break;
                    }
                }
                Wake::Instance(instance) => {
                    self.waiting = None;
                    self.call_handler(instance).await;
                }
                Wake::Shutdown => {
                    shutdown_seen = true;
                    let frame = CloseFrame { code: CloseCode::GOING_AWAY, reason: "server shutting down".into() };
                    if let Some(output) = self.session.close(frame, Instant::now().into_std()) {
                        self.apply(output);
                    }
                }
            }
        }
        // Messages read before the end still reach the handler, ahead of its `closed`.
        if !self.to_handler.is_empty() {
            let instance = match (self.waiting.take(), &self.route.handler) {
                (Some(wait), _) => Some(wait.await),
                (None, Handler::Events(events)) => Some(events.instance_for(self.id).lock_owned().await),
                (None, Handler::Echo) => None,
            };
            if let Some(instance) = instance {
                self.call_handler(instance).await;
            }
        }
        self.finish().await;
        self.give_back_buffer();
        self.shared.budget.reaccount(self.accounted, 0);
        self.accounted = 0;
    }

    /// Gives the (empty) read buffer back: to this thread's spares if they have room for it, else
    /// to the allocator.
    fn give_back_buffer(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let asked = std::mem::take(&mut self.buf_asked);
        if asked > 0 {
            spare::give_back(buf, asked);
        }
    }

    /// Accounts what this connection holds in the server's memory budget, and says what the
    /// budget allows it.
    fn account(&mut self, queued: usize) -> Pressure {
        let held = self.buf.capacity() + self.session.decoder().assembled_bytes() + queued;
        self.shared.budget.reaccount(self.accounted, held);
        self.accounted = held;
        self.shared.budget.pressure(held)
    }

    /// Reads what the socket has; false at the end of the stream or on an error.
    fn read(&mut self) -> bool {
        // What the frame being received still needs (or, between frames, the size of the last
        // message: clients tend to send alike ones), and room for the start of the next one: a
        // read that fills the buffer leaves the socket marked readable, which costs a `recv` that
        // only says "would block" before the next wait. A stream of small frames is read 4 KiB
        // at a time, so a flood of them is served in small steps.
        let last = self.last_message as usize;
        let frame_rest = self.session.decoder().bytes_wanted(self.buf.len());
        // Room for a whole message no larger than the last one at once: no copy as the buffer
        // grows, and a reused buffer starts again at the front of its allocation (else a partly
        // read message is moved there). A larger frame, which the client has not paid for yet
        // (or one past WHOLE_UP_TO), gets MAX_READ at a time.
        let needed = if frame_rest <= last { frame_rest } else { frame_rest.min(MAX_READ) };
        let want = needed.max(last) + MIN_READ;
        if self.buf_asked == 0 {
            (self.buf, self.buf_asked) = spare::take(want);
        }
        // Remembered so that the spares' memory stays bounded whatever the clients send.
        self.buf_asked = self.buf_asked.max(self.buf.len() + want);
        self.buf.reserve(want);
        let allowance = self.fair.as_mut().and_then(|f| f.read_allowance(Instant::now()));
        // Under a byte rate: no more than its budget (at least MIN_READ), so a burst already in
        // the socket is not read in one go.
        let limit = allowance.map_or(usize::MAX, |cap| cap.max(MIN_READ));
        let read = self.reader.read_now(&mut self.buf, limit);
        match read {
            Poll::Pending => true, // the readiness was stale: wait again
            Poll::Ready(Ok(0)) => false,
            Poll::Ready(Ok(n)) => {
                self.read_since_wait += n;
                self.heard = true; // told to the session at the top of the next turn
                if let Some(fair) = &mut self.fair {
                    fair.read(n, Instant::now());
                }
                true
            }
            Poll::Ready(Err(e)) => e.kind() == ErrorKind::WouldBlock,
        }
    }

    /// Carries out one output of the session.
    fn apply(&mut self, output: Output) -> Flow {
        if matches!(output, Output::Control(..) | Output::Message(_))
            && let Some(fair) = &mut self.fair
            && !fair.allow_message(Instant::now())
        {
            tracing::warn!(id = self.id, route = %self.route.path, "message rate limit exceeded: closing with 1008");
            return self.close_with(CloseCode::POLICY_VIOLATION, "message rate limit exceeded");
        }
        match output {
            Output::Control(opcode, payload) => match self.out.reply(opcode, bytes::Bytes::copy_from_slice(&payload)) {
                Ok(_) => Flow::Continue,
                Err(_) => Flow::Continue, // closing: the session learns it from the queue
            },
            Output::Message(message) => self.deliver(message),
            Output::Close { frame, finish } => {
                self.send_close(frame);
                if finish { Flow::Finish } else { Flow::Continue }
            }
            Output::Finish => Flow::Finish,
        }
    }

    /// Closes the session with our close frame (after the replies to what was handed over).
    fn close_with(&mut self, code: CloseCode, reason: &str) -> Flow {
        let frame = CloseFrame { code, reason: reason.into() };
        match self.session.close(frame, Instant::now().into_std()) {
            Some(output) => self.apply(output),
            None => Flow::Continue,
        }
    }

    /// Hands a message to the route's handler.
    fn deliver(&mut self, message: Message) -> Flow {
        self.last_message = message.payload().len().min(WHOLE_UP_TO) as u32;
        let metrics = self.route.hub.metrics();
        metrics.messages_in.inc();
        metrics.bytes_in.inc_by(message.payload().len() as u64);
        match &self.route.handler {
            Handler::Echo => {
                // A small payload is copied, so that a queued reply does not keep the whole read
                // buffer it arrived in (see the README's memory formula); a large one is shared.
                let payload = match message.payload() {
                    p if p.len() <= SHARE_ABOVE => bytes::Bytes::copy_from_slice(p),
                    p => p.clone(),
                };
                let _ = self.out.reply(message.opcode(), payload);
                Flow::Continue
            }
            Handler::Events(_) => {
                // Counted at once (its bytes are held from now on); handed over with the batch.
                self.room_after_event = Some(self.out.begin_event(message.payload().len()));
                self.to_handler.push(message);
                Flow::Continue
            }
        }
    }

    /// Hands this read batch's messages to the handler's instance: at once, on this task, when the
    /// instance is free; else the connection waits for it (see `waiting`).
    async fn hand_over(&mut self) {
        let Handler::Events(events) = &self.route.handler else { return };
        if self.to_handler.is_empty() || self.waiting.is_some() {
            return;
        }
        let instance = events.instance_for(self.id);
        match instance.clone().try_lock_owned() {
            Ok(instance) => self.call_handler(instance).await,
            Err(_) => self.waiting = Some(Box::pin(instance.lock_owned())),
        }
    }

    /// Calls the handler with the batch's messages, then queues a close frame decided meanwhile
    /// (after their replies).
    async fn call_handler(&mut self, mut instance: OwnedMutexGuard<dyn HandlerInstance>) {
        // Timed only for the route's share-of-time limit (the plugin's own histogram times it too).
        let started = self.fair.is_some().then(Instant::now);
        instance.messages(self.id, &mut self.to_handler, &self.out).await;
        drop(instance);
        if let Some(frame) = self.deferred_close.take() {
            self.out.close(frame, true);
        }
        if let (Some(fair), Some(started)) = (&mut self.fair, started) {
            let now = Instant::now();
            match fair.charge(now - started, now) {
                Verdict::Fine => {}
                Verdict::Throttled => {
                    tracing::info!(id = self.id, route = %self.route.path, "over its share of the plugin's time: throttled");
                }
                Verdict::Close => {
                    tracing::warn!(id = self.id, route = %self.route.path, "over its share of the plugin's time a third time: closing with 1008");
                    self.close_with(CloseCode::POLICY_VIOLATION, "share of plugin time exceeded");
                }
            }
        }
    }

    /// Queues our close frame after everything the handler has queued for this connection: a
    /// plugin's replies to the messages before the close go first.
    fn send_close(&mut self, frame: Option<CloseFrame>) {
        if self.to_handler.is_empty() {
            self.out.close(frame, true);
        } else {
            self.deferred_close = Some(frame);
        }
    }

    /// Writes what is queued, up to our close frame (bounded by `write_timeout` without progress),
    /// then half-closes.
    async fn finish(&mut self) {
        let write_timeout = self.shared.limits.write_timeout;
        loop {
            if self.out.flush().is_err() || self.out.close_done() {
                break;
            }
            // Nothing left that the socket refused: everything queued is written.
            let Some(stalled) = self.out.stalled_since() else { break };
            let give_up = Instant::from_std(stalled) + write_timeout;
            if Instant::now() >= give_up {
                break;
            }
            tokio::select! {
                _ = self.out.notified() => {}
                _ = self.writer.writable() => {}
                _ = sleep_until(give_up) => {}
            }
        }
        self.writer.half_close();
    }
}

/// The wait for a handler instance's lock.
type InstanceWait = Pin<Box<dyn Future<Output = OwnedMutexGuard<dyn HandlerInstance>> + Send>>;

/// Read buffers between reads. Each thread keeps a few spare ones, so that a connection which
/// reads a message and goes quiet again neither frees nor allocates one (for a large message, a
/// fresh allocation costs a page fault per 4 KiB), while an idle connection holds none. At most
/// [`spare::KEEP`] buffers per thread, together asked to hold at most [`spare::BYTES`] (their
/// allocations are at most twice that, `BytesMut` growing by doubling).
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    /// Spare buffers kept per thread.
    pub const KEEP: usize = 4;
    /// The bytes they may have been asked to hold, together.
    pub const BYTES: usize = 8 << 20;

    /// The spares, each with the most it was asked to hold, and their sum.
    struct Spares {
        bufs: Vec<(BytesMut, usize)>,
        asked: usize,
    }

    thread_local! {
        static SPARE: RefCell<Spares> = const { RefCell::new(Spares { bufs: Vec::new(), asked: 0 }) };
    }

    /// A spare buffer and the most it was asked to hold, or an empty one (it allocates on its
    /// first `reserve`). Preferably one that can hold `want` bytes without allocating: a buffer
    /// whose last message is still queued (an echo being written) cannot take its memory back yet.
    pub fn take(want: usize) -> (BytesMut, usize) {
        SPARE
            .with_borrow_mut(|spares| {
                let found = spares.bufs.iter_mut().rposition(|(buf, _)| buf.try_reclaim(want));
                let (buf, asked) = match found {
                    Some(i) => spares.bufs.swap_remove(i),
                    None => spares.bufs.pop()?,
                };
                spares.asked -= asked;
                Some((buf, asked))
            })
            .unwrap_or_default()
    }

    /// Keeps `buf` (asked to hold at most `asked` bytes) for the next read on this thread, if it
    /// is empty and the spares have room for it; else frees it. A buffer whose bytes were all
    /// split off (messages that share it) has no capacity left but still owns its allocation: kept
    /// too, its next `reserve` takes the whole allocation back once those messages are gone.
    pub fn give_back(buf: BytesMut, asked: usize) {
        if !buf.is_empty() {
            return;
        }
        SPARE.with_borrow_mut(|spares| {
            if spares.bufs.len() < KEEP && spares.asked + asked <= BYTES {
                spares.asked += asked;
                spares.bufs.push((buf, asked));
            }
        });
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// How many spares this thread keeps, and the bytes they were asked to hold.
        fn kept() -> (usize, usize) {
            SPARE.with_borrow(|spares| (spares.bufs.len(), spares.asked))
        }

        fn buffer(asked: usize) -> BytesMut {
            BytesMut::with_capacity(asked)
        }

        #[test]
        fn at_most_keep_buffers_and_bytes_are_kept() {
            for _ in 0..KEEP + 2 {
                give_back(buffer(64 << 10), 64 << 10);
            }
            assert_eq!(kept(), (KEEP, KEEP * (64 << 10)));
            while take(0).1 > 0 {}
            assert_eq!(kept(), (0, 0));
            // Two buffers asked for 5 MiB each: the second would pass BYTES.
            give_back(buffer(5 << 20), 5 << 20);
            give_back(buffer(5 << 20), 5 << 20);
            assert_eq!(kept(), (1, 5 << 20));
            // One asked for more than BYTES on its own is never kept.
            let _ = take(0);
            give_back(buffer(BYTES + 1), BYTES + 1);
            assert_eq!(kept(), (0, 0));
        }

        #[test]
        fn a_buffer_with_bytes_pending_is_not_kept() {
            let mut buf = buffer(4096);
            buf.extend_from_slice(b"half a frame");
            give_back(buf, 4096);
            assert_eq!(kept(), (0, 0));
        }

        #[test]
        fn a_spare_that_can_take_its_memory_back_is_preferred() {
            // `shared` lent its bytes to a message still queued; `free` is not lent.
            let mut shared = buffer(64 << 10);
            shared.resize(1000, 7);
            let message = shared.split().freeze();
            let free = buffer(64 << 10);
            let free_ptr = free.as_ptr();
            give_back(free, 64 << 10);
            give_back(shared, 64 << 10); // on top: taken first if it could hold the read
            // More than what `shared` has left after the lent bytes: it would have to allocate.
            let want = 65_000;
            let (buf, asked) = take(want);
            assert_eq!((buf.as_ptr(), asked), (free_ptr, 64 << 10));
            assert!(buf.capacity() >= want);
            assert_eq!(kept(), (1, 64 << 10));
            drop(message);
        }
    }
}
