//! Sockets and tasks: the listener, one task per connection, graceful shutdown.
//!
//! - [`Listener`] binds, accepts, bounds the number of connections (503 when full) and, on
//!   shutdown, stops accepting, asks every connection to close with 1001 and waits a bounded time
//!   for them.
//! - [`handler`]: the route-handler boundary (admission, events, effects) that plugin routes
//!   implement; this layer knows nothing of Wasm.
//! - [`budget`]: the server-wide memory budget every connection accounts against.
//! - `connection`: one connection from handshake to close (drives `protocol::session`).
//! - [`fairness`]: what one connection may use of its route (message and byte rates, a share of
//!   the handler's time).
//! - `outbound`: a connection's bounded outbound queue, and the one way bytes are written.
//! - [`hub`]: a route's live connections and topics, and fan-out to their queues.
//! - `routes`: which handler serves which path.
//! - `static_files`: the demo's static files on non-route paths.

pub mod budget;
mod connection;
pub mod fairness;
pub mod handler;
mod handshakes;
pub mod hub;
mod outbound;
mod routes;
pub mod socket;
pub mod static_files;
pub mod tls;

pub use outbound::{Batch, Outbound, Outgoing, QueueError, QueueLimits, SharedMessage};
pub use routes::{Handler, Route, Routes};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::{Config, Limits};

/// What hot reload can change, swapped as a whole.
pub(crate) struct Live {
    pub routes: Routes,
    pub static_dir: Option<PathBuf>,
}

/// State every connection task shares.
pub(crate) struct Shared {
    pub limits: Arc<Limits>,
    /// Bytes held by all connections, against `limits.memory_budget`.
    pub budget: budget::Budget,
    live: RwLock<Arc<Live>>,
    /// Flips to true when the server shuts down; sessions then close with 1001.
    pub shutdown: watch::Receiver<bool>,
    next_id: AtomicU64,
    /// Refused sockets being drained before they close (see `connection::refuse`), at most
    /// `limits.max_handshakes` at once.
    pub lingering: std::sync::atomic::AtomicUsize,
    /// The listener's certificate, when it speaks TLS.
    pub tls: Option<tls::TlsCerts>,
}

impl Shared {
    /// The current routes and static directory (a consistent snapshot; cheap to take).
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_live(&self, live: Live) {
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
    }

    /// The TLS acceptor, when the listener speaks TLS.
    pub fn tls(&self) -> Option<&tokio_rustls::TlsAcceptor> {
        self.tls.as_ref().map(tls::TlsCerts::acceptor)
    }

    /// A connection id, unique for the life of the process.
    pub fn next_connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Triggers a graceful shutdown of a running [`Listener`].
#[derive(Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A bound, not yet running, listener and the connections it will serve.
pub struct Listener {
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown_tx: Arc<watch::Sender<bool>>,
    /// Bounds open WebSocket connections; a permit is taken once a request asks for a route and
    /// travels with the connection task.
    slots: Arc<Semaphore>,
    /// Handshakes in progress, a pool of their own (see `handshakes`).
    handshakes: Arc<handshakes::Handshakes>,
}

impl Listener {
    /// Binds the listening socket; `routes` is the route table it starts with.
    pub async fn bind(config: &Config, routes: Routes) -> anyhow::Result<Self> {
        let listener = listen(config.listen, config.limits.listen_backlog)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let static_dir = config.static_dir.as_ref().map(|d| config.resolve(d));
        let tls = match &config.tls {
            Some(t) => Some(tls::TlsCerts::load(&config.resolve(&t.cert), &config.resolve(&t.key))?),
            None => None,
        };
        let shared = Arc::new(Shared {
            limits: Arc::new(config.limits.clone()),
            budget: budget::Budget::new(config.limits.memory_budget),
            live: RwLock::new(Arc::new(Live { routes, static_dir })),
            shutdown: shutdown_rx,
            next_id: AtomicU64::new(1),
            lingering: std::sync::atomic::AtomicUsize::new(0),
            tls,
        });
        Ok(Self {
            listener,
            slots: Arc::new(Semaphore::new(config.limits.max_connections)),
            handshakes: handshakes::Handshakes::new(
                config.limits.max_handshakes,
                config.limits.max_handshakes_per_address,
            ),
            shared,
            shutdown_tx: Arc::new(shutdown_tx),
        })
    }

    /// The state connections share, for the layers above (hot reload swaps its routes).
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown_tx.clone())
    }

    /// Accepts connections until shut down, then closes them gracefully (bounded by
    /// `limits.shutdown_timeout`).
    pub async fn run(self) -> anyhow::Result<()> {
        let Self { listener, shared, shutdown_tx, slots, handshakes } = self;
        let mut shutdown = shared.shutdown.clone();
        // Every connection task holds a clone; when all are dropped, every connection has ended.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        for path in shared.live().routes.paths() {
            tracing::info!(path, "route mounted");
        }
        let scheme = if shared.tls.is_some() { "wss" } else { "ws" };
        tracing::info!(addr = %listener.local_addr()?, scheme, "listening");
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Some(pass) = handshakes.enter(peer.ip()) else {
                            tracing::warn!(%peer, "no room for another handshake (the pool, or this address's share of it, is full of handshakes in progress): 503");
                            // Over TLS an HTTP answer would need a TLS handshake first: closed instead.
                            if shared.tls.is_none() {
                                tokio::spawn(over_capacity(stream));
                            }
                            continue;
                        };
                        let shared = shared.clone();
                        let slots = slots.clone();
                        let alive = alive_tx.clone();
                        tokio::spawn(async move {
                            connection::serve(stream, peer, shared, pass, slots).await;
                            drop(alive);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors or a transient error: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
        drop(listener);
        shutdown_tx.send_replace(true);
        drop(alive_tx);
        let open = shared.limits.max_connections - slots.available_permits();
        tracing::info!(open, "shutting down: closing connections with 1001");
        if tokio::time::timeout(shared.limits.shutdown_timeout, alive_rx.recv()).await.is_err() {
            tracing::warn!("shutdown timeout: dropping connections still open");
        }
        Ok(())
    }
}

/// Binds a listening socket with the configured accept backlog (the kernel caps it at
/// `net.core.somaxconn`).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Answers a connection the handshake pool has no room for with 503 and closes it.
async fn over_capacity(mut stream: TcpStream) {
    let resp = handshakes::busy_response();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        stream.write_all(&resp).await?;
        stream.shutdown().await
    })
    .await;
}
